#include "daemon/sync/scan.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <mutex>
#include <thread>

#include "daemon/sync/crash.h"
#include "daemon/sync/fs.h"
#include "proto/path.h"

namespace tiersync::sync {

namespace {

// Walks folders from a shared queue on a few threads: a no-op rescan is one lstat per file, and
// on a tree of tens of thousands of files those calls are the whole cost.
class Walker {
 public:
  Walker(int root_fd, fs::path root) : root_fd_(root_fd), root_(std::move(root)) {}

  void run(unsigned threads) {
    queue_.push_back("");
    pending_ = 1;
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < threads; ++i) pool.emplace_back([this] { work(); });
    work();
    for (auto& t : pool) t.join();
  }

  ScanResult out;
  std::string error;

 private:
  void work() {
    ScanResult local;
    while (true) {
      std::string dir;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty() || pending_ == 0 || !error.empty(); });
        if (queue_.empty() || !error.empty()) break;
        dir = std::move(queue_.back());
        queue_.pop_back();
      }
      std::vector<std::string> subdirs;
      std::string err = walk_one(dir, local, subdirs);
      std::lock_guard lock(mu_);
      if (!err.empty() && error.empty()) error = std::move(err);
      for (auto& s : subdirs) queue_.push_back(std::move(s));
      pending_ += subdirs.size();
      --pending_;
      cv_.notify_all();
    }
    std::lock_guard lock(mu_);
    for (auto& f : local.files) out.files.push_back(std::move(f));
    for (auto& w : local.skipped) out.skipped.push_back(std::move(w));
  }

  // Reads one folder (relative path `prefix`, "" at the top); returns an error message or "".
  std::string walk_one(const std::string& prefix, ScanResult& local,
                       std::vector<std::string>& subdirs) {
    int fd = prefix.empty() ? ::dup(root_fd_)
                            : ::openat(root_fd_, prefix.c_str(),
                                       O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? "" : errno_message(root_ / prefix, errno);
    DIR* dir = ::fdopendir(fd);
    if (!dir) {
      ::close(fd);
      return errno_message(root_ / prefix, errno);
    }
    std::string result;
    while (true) {
      errno = 0;
      dirent* de = ::readdir(dir);
      if (!de) {
        if (errno != 0) result = errno_message(root_ / prefix, errno);
        break;
      }
      std::string_view name = de->d_name;
      if (name == "." || name == "..") continue;
      if (prefix.empty() && (name == proto::kMetaDir || name == ".tiersync-busy")) continue;
      std::string rel = prefix.empty() ? std::string(name) : prefix + "/" + std::string(name);
      struct stat st;
      if (::fstatat(::dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;  // removed while we walk
        result = errno_message(root_ / rel, errno);
        break;
      }
      if (S_ISDIR(st.st_mode)) {
        subdirs.push_back(std::move(rel));
        continue;
      }
      if (auto err = proto::path_error(rel)) {
        local.skipped.push_back(*err);
        continue;
      }
      ScannedFile f;
      f.size = static_cast<std::uint64_t>(st.st_size);
      f.mtime_ns =
          static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
      f.ino = st.st_ino;
      f.dev = st.st_dev;
      f.mode = st.st_mode & 07777;
      if (S_ISLNK(st.st_mode)) {
        std::string target(static_cast<std::size_t>(st.st_size) + 1, '\0');
        ssize_t n = ::readlinkat(::dirfd(dir), de->d_name, target.data(), target.size());
        if (n < 0 || static_cast<std::size_t>(n) >= target.size()) {
          local.skipped.push_back(rel + ": symlink could not be read");
          continue;
        }
        target.resize(static_cast<std::size_t>(n));
        if (auto err = proto::link_target_error(rel, target)) {
          local.skipped.push_back(*err);
          continue;
        }
        f.link = true;
        f.size = 0;
        f.target = std::move(target);
      } else if (!S_ISREG(st.st_mode)) {
        local.skipped.push_back(rel + ": not a regular file, symlink or folder");
        continue;
      }
      f.path = std::move(rel);
      local.files.push_back(std::move(f));
    }
    ::closedir(dir);
    return result;
  }

  int root_fd_;
  fs::path root_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> queue_;
  std::size_t pending_ = 0;  // folders queued or being read
};

}  // namespace

Result<ScanResult> scan_tree(const fs::path& root, bool sorted) {
  UniqueFd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return make_error(errno_message(root, errno));
  Walker w(fd.get(), root);
  w.run(std::clamp(std::thread::hardware_concurrency(), 1u, 4u));
  if (!w.error.empty()) return make_error(w.error);
  if (sorted) sort_scan(w.out);
  return std::move(w.out);
}

void sort_scan(ScanResult& scan) {
  std::sort(scan.files.begin(), scan.files.end(),
            [](const ScannedFile& a, const ScannedFile& b) { return a.path < b.path; });
  std::sort(scan.skipped.begin(), scan.skipped.end());
}

namespace {

Status write_all_at(int fd, const char* data, std::size_t size, loff_t offset,
                    const fs::path& what) {
  while (size > 0) {  // bounded: size shrinks every turn that writes
    ssize_t n = ::pwrite(fd, data, size, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(errno_message(what, errno));
    data += n;
    offset += n;
    size -= static_cast<std::size_t>(n);
  }
  return {};
}

}  // namespace

bool same_file(const struct stat& st, const ScannedFile& f) {
  return S_ISREG(st.st_mode) && st.st_ino == f.ino && st.st_dev == f.dev &&
         static_cast<std::uint64_t>(st.st_size) == f.size &&
         static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec ==
             f.mtime_ns;
}

namespace {
// splitmix64's finaliser: spreads every input bit over the output.
std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

std::string scan_fingerprint(const ScanResult& scan, std::string_view salt) {
  // Two lanes summed over the files: the sum does not depend on the order of the walk.
  std::uint64_t lane_a = 0, lane_b = 0;
  std::hash<std::string_view> hash;
  for (const auto& f : scan.files) {
    std::uint64_t h = hash(f.path);
    h = mix(h ^ f.size);
    h = mix(h ^ static_cast<std::uint64_t>(f.mtime_ns));
    h = mix(h ^ f.ino);
    h = mix(h ^ (std::uint64_t{f.mode} << 1 | (f.link ? 1 : 0)));
    if (f.link) h = mix(h ^ hash(f.target));
    lane_a += h;
    lane_b += mix(h ^ 0x9e3779b97f4a7c15ull) ^ hash(f.path) * 31;
  }
  char buf[80];
  std::snprintf(buf, sizeof buf, "%016llx%016llx-%zu-%016llx",
                static_cast<unsigned long long>(lane_a), static_cast<unsigned long long>(lane_b),
                scan.files.size(), static_cast<unsigned long long>(hash(salt)));
  return buf;
}

Result<proto::Digest> hash_file(const fs::path& path, std::uint64_t* size_out) {
  proto::Sha256 h;
  std::uint64_t total = 0;
  auto st = stream_file(path, [&](const char* data, std::size_t size) -> Status {
    h.update(data, size);
    total += size;
    return {};
  });
  if (!st) return st.error();
  if (size_out) *size_out = total;
  return h.finish();
}

Result<UniqueFd> open_file_beneath(int dir_fd, std::string_view rel, const fs::path& shown) {
  const std::size_t slash = rel.rfind('/');
  const std::string_view folder = slash == std::string_view::npos ? "" : rel.substr(0, slash);
  const std::string leaf(slash == std::string_view::npos ? rel : rel.substr(slash + 1));
  UniqueFd dir = open_dir_beneath(dir_fd, folder);
  if (!dir.valid()) return make_error(errno_message(shown / folder, errno));
  // O_NONBLOCK: a FIFO swapped in must not block the publish; it is refused as not regular.
  UniqueFd fd(::openat(dir.get(), leaf.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd.valid()) return make_error(errno_message(shown / rel, errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return make_error(errno_message(shown / rel, errno));
  if (!S_ISREG(st.st_mode)) return make_error((shown / rel).string() + ": not a regular file");
  return fd;
}

Result<CopiedFile> copy_and_hash(int in_fd, int out_fd, const fs::path& out_path,
                                 std::uint64_t max_bytes) {
  CopiedFile out;
  // A reflink shares the source's extents (btrfs, xfs, bcachefs): nothing is copied, and a later
  // write to either file copies the extent it touches, so the copy never changes with the source.
  out.cloned = ::ioctl(out_fd, FICLONE, in_fd) == 0;
  if (!out.cloned) {
    loff_t in_off = 0, out_off = 0;
    bool by_kernel = true;
    while (static_cast<std::uint64_t>(out_off) < max_bytes) {  // bounded: max_bytes
      const std::size_t want = static_cast<std::size_t>(
          std::min<std::uint64_t>(max_bytes - static_cast<std::uint64_t>(out_off), 1u << 30));
      ssize_t n = -1;
      if (by_kernel) {
        n = ::copy_file_range(in_fd, &in_off, out_fd, &out_off, want, 0);
        if (n < 0 &&
            (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP ||
             errno == EBADF) &&
            out_off == 0) {
          by_kernel = false;  // not across these file systems: through user space instead
          continue;
        }
      } else {
        static thread_local std::vector<char> buf(1 << 20);
        n = ::pread(in_fd, buf.data(), std::min(want, buf.size()), in_off);
        if (n > 0) {
          if (auto st =
                  write_all_at(out_fd, buf.data(), static_cast<std::size_t>(n), out_off, out_path);
              !st)
            return st.error();
          in_off += n;
          out_off += n;
        }
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return make_error(errno_message(out_path, errno));
      if (n == 0) break;
    }
  }
  proto::Sha256 h;
  auto st = stream_fd(out_fd, out_path, [&](const char* data, std::size_t size) -> Status {
    h.update(data, size);
    out.size += size;
    return {};
  });
  if (!st) return st.error();
  out.sha256 = h.finish();
  return out;
}

// Binary format: "TSHC1\n", then per record: u32 path length, path, u64 size, i64 mtime_ns,
// u64 inode, 32-byte digest. Host byte order: the cache never leaves the machine.
namespace {
constexpr std::string_view kMagic = "TSHC1\n";

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}
template <class T>
bool get(std::string_view& in, T& v) {
  if (in.size() < sizeof v) return false;
  std::copy_n(in.data(), sizeof v, reinterpret_cast<char*>(&v));
  in.remove_prefix(sizeof v);
  return true;
}
}  // namespace

HashCache HashCache::load(const fs::path& file, std::string* warning) {
  HashCache cache;
  struct stat st;
  if (::lstat(file.c_str(), &st) != 0) return cache;
  auto bytes = read_file(file, std::size_t{4} << 30);
  if (bytes) cache.bytes_ = std::move(*bytes);
  std::string_view in = cache.bytes_;
  bool ok = bytes && in.starts_with(kMagic);
  if (ok) in.remove_prefix(kMagic.size());
  while (ok && !in.empty()) {
    std::uint32_t len;
    Record r{};
    ok = get(in, len) && in.size() >= len;
    if (!ok) break;
    r.path = in.substr(0, len);
    in.remove_prefix(len);
    ok = get(in, r.size) && get(in, r.mtime_ns) && get(in, r.ino) && get(in, r.digest);
    if (ok) cache.records_.push_back(r);
  }
  if (!ok) {
    cache.records_.clear();
    cache.dirty_ = true;
    if (warning) *warning = file.string() + ": damaged hash cache ignored; files will be re-read";
  }
  auto by_path = [](const Record& a, const Record& b) { return a.path < b.path; };
  if (!std::is_sorted(cache.records_.begin(), cache.records_.end(), by_path))
    std::sort(cache.records_.begin(), cache.records_.end(), by_path);
  cache.sorted_ = cache.records_.size();
  return cache;
}

Status HashCache::save(const fs::path& file) const {
  std::vector<const Record*> sorted;
  sorted.reserve(records_.size());
  for (const auto& r : records_) sorted.push_back(&r);
  std::sort(sorted.begin(), sorted.end(),
            [](const Record* a, const Record* b) { return a->path < b->path; });
  std::string out(kMagic);
  out.reserve(records_.size() * 100);
  for (const Record* rp : sorted) {
    const Record& r = *rp;
    if (!r.used) continue;  // files gone from the tree leave the cache
    put(out, static_cast<std::uint32_t>(r.path.size()));
    out += r.path;
    put(out, r.size);
    put(out, r.mtime_ns);
    put(out, r.ino);
    put(out, r.digest);
  }
  // The cache is an optimisation: it need not survive a power loss.
  crash_point();
  return write_file_atomic(file, out, 0600, /*durable=*/false);
}

HashCache::Record* HashCache::find(std::string_view path) {
  // Loaded records are sorted; the few stored in this run are indexed on the side.
  auto end = records_.begin() + static_cast<std::ptrdiff_t>(sorted_);
  auto it = std::lower_bound(records_.begin(), end, path,
                             [](const Record& r, std::string_view p) { return r.path < p; });
  if (it != end && it->path == path) return &*it;
  auto st = stored_.find(path);
  return st == stored_.end() ? nullptr : &records_[st->second];
}

std::optional<proto::Digest> HashCache::lookup(const ScannedFile& f) {
  Record* r = find(f.path);
  if (!r || r->size != f.size || r->mtime_ns != f.mtime_ns || r->ino != f.ino) return std::nullopt;
  if (!r->used) ++used_;
  r->used = true;
  return r->digest;
}

void HashCache::store(const ScannedFile& f, const proto::Digest& digest) {
  dirty_ = true;
  ++used_;
  if (Record* r = find(f.path)) {
    if (r->used) --used_;
    *r = Record{r->path, f.size, f.mtime_ns, f.ino, digest, true};
    return;
  }
  owned_.push_back(std::make_unique<std::string>(f.path));
  records_.push_back(Record{*owned_.back(), f.size, f.mtime_ns, f.ino, digest, true});
  stored_.emplace(records_.back().path, records_.size() - 1);
}

void HashCache::forget(std::string_view path) {
  Record* r = find(path);
  if (!r) return;
  if (r->used) --used_;
  r->used = false;
  r->size = ~std::uint64_t{0};  // matches no file: lookup() misses until store()
  dirty_ = true;
}

Result<proto::Digest> HashCache::digest_of(const fs::path& root, const ScannedFile& f) {
  if (auto d = lookup(f)) return *d;
  // Opened with no symlink followed, and hashed only if it is still the file the scan saw: a
  // builder swapping a folder for a symlink cannot make tier0 hash (and so sign) another file.
  UniqueFd dir(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid()) return make_error(errno_message(root, errno));
  auto fd = open_file_beneath(dir.get(), f.path, root);
  if (!fd) return fd.error();
  struct stat st;
  if (::fstat(fd->get(), &st) != 0) return make_error(errno_message(root / f.path, errno));
  if (!same_file(st, f)) return make_error((root / f.path).string() + ": changed while scanned");
  proto::Sha256 h;
  std::uint64_t size = 0;
  auto read = stream_fd(fd->get(), root / f.path, [&](const char* data, std::size_t n) -> Status {
    h.update(data, n);
    size += n;
    return {};
  });
  if (!read) return read.error();
  ++hashed_;
  if (size != f.size) return make_error((root / f.path).string() + ": changed while being read");
  const proto::Digest d = h.finish();
  store(f, d);
  return d;
}

}  // namespace tiersync::sync
