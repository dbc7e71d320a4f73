#include "daemon/ops/notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace tiersync::ops {

bool notify_systemd(std::string_view state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || (path[0] != '/' && path[0] != '@')) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::size_t len = std::strlen(path);
  if (len >= sizeof addr.sun_path) return false;
  std::memcpy(addr.sun_path, path, len);
  if (path[0] == '@') addr.sun_path[0] = '\0';  // an abstract socket
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const auto addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  const bool sent =
      ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr),
               addr_len) == static_cast<ssize_t>(state.size());
  ::close(fd);
  return sent;
}

namespace {
std::atomic<std::uint64_t> g_progress{0};
}  // namespace

void note_progress() {
  g_progress.fetch_add(1, std::memory_order_relaxed);
}

std::uint64_t progress() {
  return g_progress.load(std::memory_order_relaxed);
}

std::chrono::microseconds watchdog_interval() {
  const char* usec = std::getenv("WATCHDOG_USEC");
  if (!usec) return {};
  if (const char* pid = std::getenv("WATCHDOG_PID"); pid && std::atol(pid) != ::getpid()) return {};
  const long long v = std::atoll(usec);
  return std::chrono::microseconds(v > 0 ? v : 0);
}

}  // namespace tiersync::ops
