#include "daemon/sync/fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace tiersync::sync {

Result<std::string> read_file(const fs::path& path, std::size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return make_error(errno_message(path, errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return make_error(errno_message(path, errno));
  if (!S_ISREG(st.st_mode)) return make_error(path.string() + ": not a regular file");
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes)
    return make_error(path.string() + ": larger than the limit of " + std::to_string(max_bytes) +
                      " bytes");
  std::string out;
  out.resize(static_cast<std::size_t>(st.st_size));
  std::size_t done = 0;
  while (true) {
    if (done == out.size()) {
      // The file may have grown since fstat; read on, within the limit.
      if (out.size() >= max_bytes) break;
      out.resize(std::min(max_bytes, out.size() + 65536));
    }
    ssize_t n = ::read(fd.get(), out.data() + done, out.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_error(errno_message(path, errno));
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  out.resize(done);
  return out;
}

Status stream_file(const fs::path& path,
                   const std::function<Status(const char* data, std::size_t size)>& sink) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return make_error(errno_message(path, errno));
  return stream_fd(fd.get(), path, sink);
}

Status stream_fd(int fd, const fs::path& what,
                 const std::function<Status(const char* data, std::size_t size)>& sink) {
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  static thread_local std::vector<char> buf(1 << 20);
  for (off_t offset = 0;;) {  // ends where the file ends
    ssize_t n = ::pread(fd, buf.data(), buf.size(), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(errno_message(what, errno));
    if (n == 0) return {};
    offset += n;
    if (auto st = sink(buf.data(), static_cast<std::size_t>(n)); !st) return st;
  }
}

Status fsync_dir(const fs::path& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid() || ::fsync(fd.get()) != 0) return make_error(errno_message(dir, errno));
  return {};
}

Status write_file_atomic(const fs::path& path, std::string_view bytes, mode_t mode, bool durable) {
  static std::atomic<unsigned> counter{0};
  fs::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd.valid()) return make_error(errno_message(tmp, errno));
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::unlink(tmp.c_str());
      return make_error(errno_message(tmp, err));
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fchmod(fd.get(), mode) != 0 || (durable && ::fsync(fd.get()) != 0)) {
    int err = errno;
    ::unlink(tmp.c_str());
    return make_error(errno_message(tmp, err));
  }
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return make_error(errno_message(path, err));
  }
  if (durable) return fsync_dir(path.parent_path().empty() ? fs::path(".") : path.parent_path());
  return {};
}

Result<bool> lstat_path(const fs::path& path, struct stat& st) {
  if (::lstat(path.c_str(), &st) == 0) return true;
  if (errno == ENOENT || errno == ENOTDIR) return false;
  return make_error(errno_message(path, errno));
}

Status make_dirs(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error(dir.string() + ": " + ec.message());
  return {};
}

Status sync_filesystem(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid() || ::syncfs(fd.get()) != 0) return make_error(errno_message(path, errno));
  return {};
}

Status remove_tree(const fs::path& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) return make_error(path.string() + ": " + ec.message());
  return {};
}

namespace {

// The locks this process took with Sharing::kProcess, by file identity (device, inode).
struct SharedLocks {
  std::mutex mu;
  std::map<std::pair<dev_t, ino_t>, std::weak_ptr<const UniqueFd>> held;  // guarded by mu
};
SharedLocks& shared_locks() {
  static SharedLocks locks;
  return locks;
}

// The pid a holder wrote into its lock file ("" when it has not, yet).
std::string holder_pid(int fd) {
  char buf[32] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string pid;
  for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; ++i) pid.push_back(buf[i]);
  return pid;
}

}  // namespace

Result<TreeFs> TreeFs::open(const fs::path& root) {
  UniqueFd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return make_error(errno_message(root, errno));
  TreeFs t;
  t.root_ = root;
  t.fd_ = std::move(fd);
  return t;
}

namespace {
// Errors that mean "nothing of that name here, or not reachable without following a symlink".
bool absent_errno(int err) {
  return err == ENOENT || err == ENOTDIR || err == ELOOP;
}
}  // namespace

int TreeFs::parent(std::string_view rel, std::string& leaf) const {
  const std::size_t slash = rel.rfind('/');
  leaf.assign(slash == std::string_view::npos ? rel : rel.substr(slash + 1));
  const std::string_view dir =
      slash == std::string_view::npos ? std::string_view() : rel.substr(0, slash);
  if (dir.empty()) return fd_.get();
  // Paths come sorted: consecutive ones mostly share their folder.
  if (cached_fd_.valid() && cached_dir_ == dir) return cached_fd_.get();
  if (missing_errno_ != 0 && missing_dir_ == dir) {
    errno = missing_errno_;
    return -1;
  }
  cached_dir_.clear();
  cached_fd_ = open_dir_beneath(fd_.get(), dir);
  if (!cached_fd_.valid()) {
    const int err = errno;
    if (absent_errno(err)) {
      missing_dir_.assign(dir);
      missing_errno_ = err;
    }
    errno = err;
    return -1;
  }
  cached_dir_.assign(dir);
  return cached_fd_.get();
}

void TreeFs::forget_folders() const {
  const int saved = errno;
  cached_fd_.reset();
  cached_dir_.clear();
  missing_dir_.clear();
  missing_errno_ = 0;
  errno = saved;
}

Result<bool> TreeFs::lstat(std::string_view rel, struct stat& st) const {
  std::string leaf;
  const int dir = parent(rel, leaf);
  if (dir < 0) {
    if (absent_errno(errno)) return false;
    return make_error(errno_message(root_ / rel, errno));
  }
  if (::fstatat(dir, leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) return true;
  if (absent_errno(errno)) return false;
  return make_error(errno_message(root_ / rel, errno));
}

UniqueFd TreeFs::open_file(std::string_view rel, int flags, mode_t mode) const {
  std::string leaf;
  const int dir = parent(rel, leaf);
  if (dir < 0) return UniqueFd();
  return UniqueFd(::openat(dir, leaf.c_str(), flags | O_NOFOLLOW | O_CLOEXEC, mode));
}

Result<bool> TreeFs::unlink(std::string_view rel) const {
  std::string leaf;
  const int dir = parent(rel, leaf);
  if (dir < 0) {
    if (absent_errno(errno)) return false;
    return make_error(errno_message(root_ / rel, errno));
  }
  if (::unlinkat(dir, leaf.c_str(), 0) == 0) return true;
  if (errno == ENOENT || errno == EISDIR) return false;
  return make_error(errno_message(root_ / rel, errno));
}

bool TreeFs::rmdir_if_empty(std::string_view rel) const {
  std::string leaf;
  const int dir = parent(rel, leaf);
  if (dir < 0 || ::unlinkat(dir, leaf.c_str(), AT_REMOVEDIR) != 0) return false;
  forget_folders();  // the cached one may be this one
  return true;
}

namespace {

// Empties the folder `fd` (every entry removed, folders recursively, symlinks as links).
Status empty_folder(int fd, const fs::path& what) {
  UniqueFd own(::openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!own.valid()) return make_error(errno_message(what, errno));
  DIR* d = ::fdopendir(own.get());
  if (!d) return make_error(errno_message(what, errno));
  own.release();
  std::unique_ptr<DIR, int (*)(DIR*)> dir(d, ::closedir);
  std::vector<std::string> names;
  while (const dirent* de = ::readdir(d)) {
    std::string_view n = de->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
  }
  for (const auto& n : names) {
    if (::unlinkat(fd, n.c_str(), 0) == 0 || errno == ENOENT) continue;
    if (errno != EISDIR && errno != EPERM) return make_error(errno_message(what / n, errno));
    UniqueFd sub(::openat(fd, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub.valid()) return make_error(errno_message(what / n, errno));
    if (auto st = empty_folder(sub.get(), what / n); !st) return st;
    if (::unlinkat(fd, n.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT)
      return make_error(errno_message(what / n, errno));
  }
  return {};
}

}  // namespace

Status TreeFs::remove_tree(std::string_view rel) const {
  std::string leaf;
  const int dir = parent(rel, leaf);
  const fs::path what = root_ / rel;
  if (dir < 0) {
    if (absent_errno(errno)) return {};
    return make_error(errno_message(what, errno));
  }
  if (::unlinkat(dir, leaf.c_str(), 0) == 0 || errno == ENOENT) return {};
  if (errno != EISDIR && errno != EPERM) return make_error(errno_message(what, errno));
  UniqueFd sub(::openat(dir, leaf.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!sub.valid()) return make_error(errno_message(what, errno));
  if (auto st = empty_folder(sub.get(), what); !st) return st;
  const bool removed = ::unlinkat(dir, leaf.c_str(), AT_REMOVEDIR) == 0 || errno == ENOENT;
  forget_folders();  // the cached one may have been inside
  if (!removed) return make_error(errno_message(what, errno));
  return {};
}

Result<UniqueFd> TreeFs::make_dirs(std::string_view rel, bool replace_blockers,
                                   const std::function<void()>& before_mutation) const {
  // Most folders exist: one open settles it.
  UniqueFd cur = open_dir_beneath(fd_.get(), rel);
  if (cur.valid()) return cur;
  forget_folders();  // the missing one may be made below
  cur = UniqueFd(::openat(fd_.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cur.valid()) return make_error(errno_message(root_, errno));
  std::size_t start = 0;
  while (start < rel.size()) {
    std::size_t slash = rel.find('/', start);
    if (slash == std::string_view::npos) slash = rel.size();
    const std::string name(rel.substr(start, slash - start));
    const fs::path what = root_ / rel.substr(0, slash);
    start = slash + 1;
    constexpr int kFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
    UniqueFd next(::openat(cur.get(), name.c_str(), kFlags));
    if (!next.valid()) {
      if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP)
        return make_error(errno_message(what, errno));
      struct stat st;
      const bool exists = ::fstatat(cur.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
      if (!exists && errno != ENOENT) return make_error(errno_message(what, errno));
      if (!exists || !S_ISDIR(st.st_mode)) {
        if (exists) {
          if (!replace_blockers)
            return make_error(what.string() + ": not a folder (" +
                              (S_ISLNK(st.st_mode) ? "a symlink" : "a file") + " stands there)");
          if (before_mutation) before_mutation();
          if (::unlinkat(cur.get(), name.c_str(), 0) != 0 && errno != ENOENT)
            return make_error(errno_message(what, errno));
        }
        if (::mkdirat(cur.get(), name.c_str(), 0755) != 0 && errno != EEXIST)
          return make_error(errno_message(what, errno));
      }
      next = UniqueFd(::openat(cur.get(), name.c_str(), kFlags));
      if (!next.valid()) return make_error(errno_message(what, errno));
    }
    cur = std::move(next);
  }
  return cur;
}

Result<bool> TreeFs::rename_into(const fs::path& from, std::string_view rel) const {
  std::string leaf;
  const int dir = parent(rel, leaf);
  if (dir < 0)
    return make_error("installing " + (root_ / rel).string() + ": " +
                      errno_message(root_ / rel, errno));
  if (::renameat(AT_FDCWD, from.c_str(), dir, leaf.c_str()) == 0) return true;
  if (errno == EISDIR) return false;  // rename(2): a folder is never replaced by a non-folder
  return make_error("installing " + (root_ / rel).string() + ": " + errno_message(from, errno));
}

Result<FileLock> FileLock::acquire(const fs::path& path, Sharing sharing) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd.valid()) return make_error(errno_message(path, errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return make_error(errno_message(path, errno));
  auto& shared = shared_locks();
  std::lock_guard guard(shared.mu);
  const auto key = std::make_pair(st.st_dev, st.st_ino);
  if (auto it = shared.held.find(key); it != shared.held.end()) {
    if (auto held = it->second.lock()) {
      FileLock lock;
      lock.fd_ = std::move(held);
      return lock;
    }
    shared.held.erase(it);
  }
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      const std::string pid = holder_pid(fd.get());
      return make_error(path.string() + ": held by another tiersyncd" +
                        (pid.empty() ? std::string() : " (pid " + pid + ")") +
                        "; one daemon per state_dir");
    }
    return make_error(errno_message(path, errno));
  }
  // Ours now: the pid is for the message above, in another process.
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd.get(), 0) != 0 ||
      ::pwrite(fd.get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size()))
    return make_error(errno_message(path, errno));
  FileLock lock;
  lock.fd_ = std::make_shared<const UniqueFd>(std::move(fd));
  if (sharing == Sharing::kProcess) shared.held[key] = lock.fd_;
  return lock;
}

}  // namespace tiersync::sync
