#include "daemon/sync/fs.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

namespace tiersync::sync {

std::string errno_message(const fs::path& path, int err) {
  return path.string() + ": " + std::strerror(err);
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

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
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  static thread_local std::vector<char> buf(1 << 20);
  while (true) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(errno_message(path, errno));
    if (n == 0) return {};
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

Status make_dirs_below(const fs::path& base, std::string_view rel, bool replace_blockers) {
  std::string cur = base.string();
  std::size_t start = 0;
  while (start < rel.size()) {
    std::size_t slash = rel.find('/', start);
    if (slash == std::string_view::npos) slash = rel.size();
    cur.push_back('/');
    cur.append(rel.substr(start, slash - start));
    start = slash + 1;
    struct stat st;
    auto exists = lstat_path(cur, st);
    if (!exists) return exists.error();
    if (*exists && S_ISDIR(st.st_mode)) continue;
    if (*exists) {
      if (!replace_blockers)
        return make_error(cur + ": not a folder (" +
                          (S_ISLNK(st.st_mode) ? "a symlink" : "a file") + " stands there)");
      if (::unlink(cur.c_str()) != 0) return make_error(errno_message(cur, errno));
    }
    if (::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
      return make_error(errno_message(cur, errno));
  }
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
