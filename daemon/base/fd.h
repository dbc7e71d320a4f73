#pragma once
/// Owned file descriptors and the one folder walk that never follows a symlink: the base below
/// sync/, serve/ and transport/ (docs/architecture.md).

#include <filesystem>
#include <string>
#include <string_view>

namespace tiersync::base {

/// "PATH: strerror(err)".
std::string errno_message(const std::filesystem::path& path, int err);

/// An owned file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

/// Opens the folder `rel` (a relative path, "" for `dir_fd` itself) below the folder `dir_fd`
/// without following any symlink on the way, the last component included: one
/// openat2(RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH) where the kernel has it, else openat(O_NOFOLLOW |
/// O_DIRECTORY) component by component. The one folder walk of tiersync (the engine's TreeFs and
/// the server's folder cache walk with it). Invalid with errno set when it fails: ELOOP or ENOTDIR
/// where a symlink or a file stands on the way, ENOENT where nothing does.
UniqueFd open_dir_beneath(int dir_fd, std::string_view rel);
/// Tests: with false, open_dir_beneath() walks component by component even where openat2 exists.
void use_openat2(bool on);

}  // namespace tiersync::base
