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

#include "daemon/base/fd.h"
#include "proto/result.h"

namespace tiersync::sync {

namespace fs = std::filesystem;

// The descriptor and the folder walk live in the base library (daemon/base/fd.h).
using base::errno_message;
using base::open_dir_beneath;
using base::UniqueFd;
using base::use_openat2;

/// Reads a whole regular file (no symlink followed at the last component) of at most `max_bytes`.
Result<std::string> read_file(const fs::path& path, std::size_t max_bytes);

/// Streams a file (the last component is not followed) into `sink` in 1 MiB reads; stops at the
/// first error, the sink's included.
Status stream_file(const fs::path& path,
                   const std::function<Status(const char* data, std::size_t size)>& sink);
/// stream_file() of an open file, from its first byte whatever its offset (pread: a file just
/// written is read back whole); `what` names it in errors.
Status stream_fd(int fd, const fs::path& what,
                 const std::function<Status(const char* data, std::size_t size)>& sink);

/// Writes `bytes` to a temporary file beside `path`, optionally fsyncs it, renames it over `path`
/// and fsyncs the folder: readers see the old or the new content, never a mix.
Status write_file_atomic(const fs::path& path, std::string_view bytes, mode_t mode = 0644,
                         bool durable = true);

/// Creates `dir` and its parents (mode 0755); for trusted locations (the tree, state_dir).
Status make_dirs(const fs::path& dir);

/// fsync of a folder (after renames in it).
Status fsync_dir(const fs::path& dir);

/// syncfs(2) of the file system holding `path`: one flush for a whole batch of writes.
Status sync_filesystem(const fs::path& path);

/// Removes a path recursively; a missing path is not an error.
Status remove_tree(const fs::path& path);

/// lstat that reports ENOENT as "absent" (returns false) and other errors as errors.
Result<bool> lstat_path(const fs::path& path, struct stat& st);

/// A tree operated on without ever following a symlink it holds: every path is relative to the
/// tree, its folder opened with open_dir_beneath() and the last component handled with the *at()
/// calls and AT_SYMLINK_NOFOLLOW. A path below a symlink, a file or nothing is "absent": an
/// operation never reaches through it to what a symlink points at. For the engine's apply; not
/// thread-safe (the folder of the last path is kept open for the next one).
class TreeFs {
 public:
  static Result<TreeFs> open(const fs::path& root);

  const fs::path& root() const { return root_; }

  /// lstat of `rel`: false when it is missing, or something on the way is not a folder.
  Result<bool> lstat(std::string_view rel, struct stat& st) const;
  /// Opens `rel` with `flags` (O_NOFOLLOW and O_CLOEXEC added); errno set when invalid.
  UniqueFd open_file(std::string_view rel, int flags, mode_t mode = 0) const;
  /// Removes the file or symlink `rel`; a missing one (or one below a non-folder) is no error,
  /// nor is a folder standing there (returned false, left alone). True when something went.
  Result<bool> unlink(std::string_view rel) const;
  /// Removes the folder `rel` if it is empty; true when it went. Anything else is left.
  bool rmdir_if_empty(std::string_view rel) const;
  /// Removes `rel` and, when it is a folder, everything in it (symlinks as links, never their
  /// targets); a missing `rel` is no error.
  Status remove_tree(std::string_view rel) const;
  /// Creates the folder `rel` and its parents (mode 0755) and opens it. With `replace_blockers`,
  /// a file or symlink standing where a folder must be is removed (`before_mutation` is called
  /// before each such removal, for crash tests); otherwise that is an error.
  Result<UniqueFd> make_dirs(std::string_view rel, bool replace_blockers,
                             const std::function<void()>& before_mutation = {}) const;
  /// Renames `from` (an absolute path outside the tree's content, e.g. staging) over `rel`, whose
  /// folder must exist. False, with nothing changed, when a folder stands at `rel` (a file or a
  /// symlink there is replaced).
  Result<bool> rename_into(const fs::path& from, std::string_view rel) const;

 private:
  /// The folder holding `rel`'s last component (owned by the object; -1 with errno set), and that
  /// component.
  int parent(std::string_view rel, std::string& leaf) const;
  /// Drops the kept folder and the missing one: called after a folder is removed or made.
  void forget_folders() const;

  fs::path root_;
  UniqueFd fd_;
  mutable std::string cached_dir_;
  mutable UniqueFd cached_fd_;
  /// The last folder found absent, and why (errno): an initial sync looks up every path of a
  /// folder that does not exist yet, and asks once.
  mutable std::string missing_dir_;
  mutable int missing_errno_ = 0;
};

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
