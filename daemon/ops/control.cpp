#include "daemon/ops/control.h"

#include <poll.h>
#include <sys/eventfd.h>
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

Result<std::unique_ptr<ControlSocket>> ControlSocket::start(const std::filesystem::path& path,
                                                            ControlHandler handler,
                                                            std::stop_token stop) {
  auto addr = address_of(path);
  if (!addr) return addr.error();
  auto fail = [&](const std::string& why) {
    return make_error("control socket " + path.string() + ": " + why);
  };
  // A socket someone answers on belongs to a running daemon (another state_dir's, configured
  // with the same path): never taken over. One nobody answers on is a dead daemon's.
  if (control_request(path, "ping"))
    return fail("another tiersyncd answers on it; not taking it over");
  std::unique_ptr<ControlSocket> self(new ControlSocket());
  self->path_ = path;
  self->handler_ = std::move(handler);
  self->daemon_stop_ = std::move(stop);
  self->listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  self->wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (self->listen_fd_ < 0 || self->wake_fd_ < 0) return fail(std::strerror(errno));
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
  // Only the daemon's user may talk to it: the socket is created 0600.
  mode_t old = ::umask(0177);
  int rc = ::bind(self->listen_fd_, reinterpret_cast<sockaddr*>(&*addr), sizeof *addr);
  ::umask(old);
  if (rc != 0 || ::listen(self->listen_fd_, 8) != 0) return fail(std::strerror(errno));
  if (::lstat(path.c_str(), &st) == 0) {
    self->dev_ = st.st_dev;
    self->ino_ = st.st_ino;
  }
  self->thread_ = std::jthread([raw = self.get()](std::stop_token own) { raw->serve(own); });
  return self;
}

ControlSocket::~ControlSocket() {
  if (thread_.joinable()) {
    thread_.request_stop();
    thread_.join();
  }
  struct stat st;
  if (ino_ != 0 && ::lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_)
    ::unlink(path_.c_str());
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void ControlSocket::serve(std::stop_token own) {
  auto wake = [this] {
    const std::uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
  };
  std::stop_callback on_own(own, wake);
  std::stop_callback on_daemon(daemon_stop_, wake);
  while (!own.stop_requested() && !daemon_stop_.stop_requested()) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;  // cannot happen with valid descriptors
    }
    if (fds[1].revents) continue;  // stop requested: the loop's condition ends it
    int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) {
      // Out of descriptors: the client stays queued; look again in a moment, not in a spin.
      if (errno == EMFILE || errno == ENFILE) {
        pollfd w{wake_fd_, POLLIN, 0};
        ::poll(&w, 1, 100);
      }
      continue;  // EAGAIN, ECONNABORTED: poll again
    }
    // A client that sends nothing holds this thread one second at most (stop waits for it).
    set_timeout(client, 1);
    const std::string command = read_line(client);
    std::string reply = (command == "ping" ? std::string("ok") : handler_(command)) + "\n";
    (void)!::write(client, reply.data(), reply.size());
    ::close(client);
  }
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
