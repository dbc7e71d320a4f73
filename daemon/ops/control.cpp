#include "daemon/ops/control.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

namespace tiersync::ops {

namespace {

constexpr std::size_t kMaxLine = 4096;

Result<sockaddr_un> address_of(const std::filesystem::path& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.native().size() >= sizeof addr.sun_path)
    return make_error("control socket " + path.string() + ": path too long for a Unix socket");
  std::memcpy(addr.sun_path, path.c_str(), path.native().size());
  return addr;
}

// Reads one line (bounded) with a receive timeout already set on `fd`.
std::string read_line(int fd) {
  std::string line;
  char c;
  while (line.size() < kMaxLine && ::read(fd, &c, 1) == 1 && c != '\n') line.push_back(c);
  return line;
}

void set_timeout(int fd, int seconds) {
  timeval tv{seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

}  // namespace

Status serve_control_socket(const std::filesystem::path& path, ControlHandler handler) {
  auto addr = address_of(path);
  if (!addr) return addr.error();
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("control socket " + path.string() + ": " + std::strerror(errno));
  ::unlink(path.c_str());  // a stale socket of a daemon that died
  // Only the daemon's user may talk to it: the socket is created 0600.
  mode_t old = ::umask(0177);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&*addr), sizeof *addr);
  ::umask(old);
  if (rc != 0 || ::listen(fd, 8) != 0) {
    std::string err = std::strerror(errno);
    ::close(fd);
    return make_error("control socket " + path.string() + ": " + err);
  }
  std::thread([fd, handler = std::move(handler)] {
    while (true) {
      int client = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      set_timeout(client, 5);  // a client that sends nothing does not block the next one long
      std::string reply = handler(read_line(client)) + "\n";
      (void)!::write(client, reply.data(), reply.size());
      ::close(client);
    }
  }).detach();
  return {};
}

Result<std::string> control_request(const std::filesystem::path& path, const std::string& command) {
  auto addr = address_of(path);
  if (!addr) return addr.error();
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("control socket " + path.string() + ": " + std::strerror(errno));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&*addr), sizeof *addr) != 0) {
    std::string err = std::strerror(errno);
    ::close(fd);
    return make_error("no daemon is listening on the control socket " + path.string() + " (" + err +
                      ")");
  }
  set_timeout(fd, 10);
  std::string line = command + "\n";
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    std::string err = std::strerror(errno);
    ::close(fd);
    return make_error("control socket " + path.string() + ": " + err);
  }
  std::string reply = read_line(fd);
  ::close(fd);
  if (reply.empty()) return make_error("control socket " + path.string() + ": no reply");
  return reply;
}

}  // namespace tiersync::ops
