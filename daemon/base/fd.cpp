#include "daemon/base/fd.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <optional>

namespace tiersync::base {

std::string errno_message(const std::filesystem::path& path, int err) {
  return path.string() + ": " + std::strerror(err);
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

namespace {

// Cleared the first time the kernel (or a seccomp filter) refuses openat2: the walk then goes
// component by component.
std::atomic<bool> g_openat2{true};

// The folder `rel` below `dir_fd` in one call; nullopt when openat2 is not available here.
std::optional<UniqueFd> openat2_dir(int dir_fd, const std::string& rel) {
  if (!g_openat2.load(std::memory_order_relaxed)) return std::nullopt;
  struct open_how how {};
  how.flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH;
  const long fd = ::syscall(SYS_openat2, dir_fd, rel.c_str(), &how, sizeof how);
  if (fd >= 0) return UniqueFd(static_cast<int>(fd));
  if (errno == ENOSYS || errno == EPERM || errno == E2BIG) {
    g_openat2.store(false, std::memory_order_relaxed);
    return std::nullopt;
  }
  if (errno == EAGAIN) return std::nullopt;  // a racing rename: this once, the walk below
  return UniqueFd();                         // errno says why
}

}  // namespace

void use_openat2(bool on) {
  g_openat2.store(on);
}

UniqueFd open_dir_beneath(int dir_fd, std::string_view rel) {
  constexpr int kFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  if (rel.empty()) return UniqueFd(::openat(dir_fd, ".", kFlags));
  std::string name(rel);
  if (auto fd = openat2_dir(dir_fd, name)) return std::move(*fd);
  // Component by component: O_NOFOLLOW refuses a symlink at each one (ELOOP or ENOTDIR).
  UniqueFd cur;
  std::size_t start = 0;
  while (start <= name.size()) {
    std::size_t slash = name.find('/', start);
    if (slash == std::string::npos) slash = name.size();
    if (slash < name.size()) name[slash] = '\0';
    UniqueFd next(::openat(cur.valid() ? cur.get() : dir_fd, name.c_str() + start, kFlags));
    if (!next.valid()) return next;
    cur = std::move(next);
    start = slash + 1;
  }
  return cur;
}

}  // namespace tiersync::base
