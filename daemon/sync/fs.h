#pragma once
/// File-system helpers for the engine: errors as values, atomic writes, directories without
/// following symlinks.

#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "proto/result.h"

namespace tiersync::sync {

namespace fs = std::filesystem;

/// "PATH: strerror(err)".
std::string errno_message(const fs::path& path, int err);

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

/// Reads a whole regular file (no symlink followed at the last component) of at most `max_bytes`.
Result<std::string> read_file(const fs::path& path, std::size_t max_bytes);

/// Streams a file (the last component is not followed) into `sink` in 1 MiB reads; stops at the
/// first error, the sink's included.
Status stream_file(const fs::path& path,
                   const std::function<Status(const char* data, std::size_t size)>& sink);

/// Writes `bytes` to a temporary file beside `path`, optionally fsyncs it, renames it over `path`
/// and fsyncs the folder: readers see the old or the new content, never a mix.
Status write_file_atomic(const fs::path& path, std::string_view bytes, mode_t mode = 0644,
                         bool durable = true);

/// Creates `dir` and its parents (mode 0755); for trusted locations (the tree, state_dir).
Status make_dirs(const fs::path& dir);

/// Creates the folder `rel` (a validated relative path) below `base`, refusing to pass through a
/// symlink. With `replace_blockers`, a file or symlink standing where a folder must be is removed.
Status make_dirs_below(const fs::path& base, std::string_view rel, bool replace_blockers);

/// fsync of a folder (after renames in it).
Status fsync_dir(const fs::path& dir);

/// syncfs(2) of the file system holding `path`: one flush for a whole batch of writes.
Status sync_filesystem(const fs::path& path);

/// Removes a path recursively; a missing path is not an error.
Status remove_tree(const fs::path& path);

/// lstat that reports ENOENT as "absent" (returns false) and other errors as errors.
Result<bool> lstat_path(const fs::path& path, struct stat& st);

/// Exclusive advisory lock (flock) on a file, held while the object (or a copy of it) lives.
/// The holder writes its pid into the file, so that a refusal names it.
class FileLock {
 public:
  /// Whether later `acquire` calls for the same file in this process share the lock.
  enum class Sharing { kNone, kProcess };
  /// Takes the lock, or fails at once naming the holder's pid. With Sharing::kProcess (the
  /// daemon, which holds its state_dir's lock for its whole life), a later `acquire` of the same
  /// file in this process shares it instead of failing: the cycles the daemon runs take "their"
  /// lock as before. Exclusion between threads of that process is the caller's job.
  static Result<FileLock> acquire(const fs::path& path, Sharing sharing = Sharing::kNone);

 private:
  std::shared_ptr<const UniqueFd> fd_;
};

}  // namespace tiersync::sync
