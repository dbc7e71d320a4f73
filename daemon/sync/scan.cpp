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

// The lanes of scan_fingerprint(): summed over the files, so that the sum does not depend on
// the order of the walk.
struct Lanes {
  std::uint64_t a = 0, b = 0, count = 0;
  void add(const ScannedFile& f);
  void add(const Lanes& o) {
    a += o.a;
    b += o.b;
    count += o.count;
  }
  std::string text(std::string_view salt) const;
};

// Walks folders from a shared queue on a few threads: a no-op rescan is one lstat per file, and
// on a tree of tens of thousands of files those calls are the whole cost. Starts at `starts`
// (folders below the root, "" for the root itself); folders of `max_components` components
// (0: no limit) are not entered. With `prints_depth`, keeps no file: only each partition's lanes.
class Walker {
 public:
  Walker(int root_fd, fs::path root) : root_fd_(root_fd), root_(std::move(root)) {}

  void run(unsigned threads, std::vector<std::string> starts = {""}, std::size_t max_components = 0,
           std::optional<std::size_t> prints_depth = {}) {
    max_components_ = max_components;
    prints_depth_ = prints_depth;
    pending_ = starts.size();
    queue_ = std::move(starts);
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < threads; ++i) pool.emplace_back([this] { work(); });
    work();
    for (auto& t : pool) t.join();
  }

  ScanResult out;
  std::map<std::string, Lanes, std::less<>> prints;
  std::string error;

 private:
  struct Local {
    ScanResult scan;
    std::map<std::string, Lanes, std::less<>> prints;
  };

  void work() {
    Local local;
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
    for (auto& f : local.scan.files) out.files.push_back(std::move(f));
    for (auto& w : local.scan.skipped) out.skipped.push_back(std::move(w));
    for (const auto& [name, lanes] : local.prints) prints[name].add(lanes);
  }

  void keep(ScannedFile f, Local& local) {
    if (!prints_depth_) {
      local.scan.files.push_back(std::move(f));
      return;
    }
    const std::string_view part = proto::partition_of(f.path, *prints_depth_);
    auto it = local.prints.find(part);
    if (it == local.prints.end()) it = local.prints.emplace(std::string(part), Lanes{}).first;
    it->second.add(f);
  }

  // Reads one folder (relative path `prefix`, "" at the top); returns an error message or "".
  std::string walk_one(const std::string& prefix, Local& local, std::vector<std::string>& subdirs) {
    int fd = prefix.empty() ? ::dup(root_fd_)
                            : ::openat(root_fd_, prefix.c_str(),
                                       O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? "" : errno_message(root_ / prefix, errno);
    DIR* dir = ::fdopendir(fd);
    if (!dir) {
      ::close(fd);
      return errno_message(root_ / prefix, errno);
    }
    const std::size_t components = prefix.empty() ? 0 : proto::path_depth(prefix);
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
        if (max_components_ == 0 || components + 1 < max_components_)
          subdirs.push_back(std::move(rel));
        continue;
      }
      if (auto err = proto::path_error(rel)) {
        local.scan.skipped.push_back(*err);
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
          local.scan.skipped.push_back(rel + ": symlink could not be read");
          continue;
        }
        target.resize(static_cast<std::size_t>(n));
        if (auto err = proto::link_target_error(rel, target)) {
          local.scan.skipped.push_back(*err);
          continue;
        }
        f.link = true;
        f.size = 0;
        f.target = std::move(target);
      } else if (!S_ISREG(st.st_mode)) {
        local.scan.skipped.push_back(rel + ": not a regular file, symlink or folder");
        continue;
      }
      f.path = std::move(rel);
      keep(std::move(f), local);
    }
    ::closedir(dir);
    return result;
  }

  int root_fd_;
  fs::path root_;
  std::size_t max_components_ = 0;
  std::optional<std::size_t> prints_depth_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> queue_;
  std::size_t pending_ = 0;  // folders queued or being read
};

unsigned walker_threads() {
  return std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
}

}  // namespace

Result<ScanResult> scan_tree(const fs::path& root, bool sorted) {
  UniqueFd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return make_error(errno_message(root, errno));
  Walker w(fd.get(), root);
  w.run(walker_threads());
  if (!w.error.empty()) return make_error(w.error);
  if (sorted) sort_scan(w.out);
  return std::move(w.out);
}

Result<ScanResult> scan_partitions(const fs::path& root, std::size_t depth,
                                   const std::set<std::string>& partitions,
                                   const std::set<std::string>& subtrees) {
  UniqueFd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return make_error(errno_message(root, errno));
  // The root partition: the folders above the partitions' (a folder of `depth` components is a
  // partition, not entered).
  Walker top(fd.get(), root);
  top.run(1, {""}, depth);
  if (!top.error.empty()) return make_error(top.error);
  // Each partition and subtree from its folder, reached with no symlink followed; one inside a
  // subtree that is walked anyway is not walked twice.
  auto under_subtree = [&](const std::string& path) {
    for (const auto& s : subtrees)
      if (path.size() > s.size() && path.starts_with(s) && path[s.size()] == '/') return true;
    return false;
  };
  std::vector<std::string> starts;
  auto add_start = [&](const std::string& path) {
    const bool meta = path.starts_with(proto::kMetaDir) && (path.size() == proto::kMetaDir.size() ||
                                                            path[proto::kMetaDir.size()] == '/');
    if (meta || under_subtree(path) || proto::path_error(path)) return;  // never content
    if (open_dir_beneath(fd.get(), path).valid()) starts.push_back(path);
  };
  for (const auto& p : partitions)
    if (p != proto::kRootPartition && proto::path_depth(p) == depth) add_start(p);
  for (const auto& s : subtrees)
    if (proto::path_depth(s) < depth) add_start(s);
  ScanResult out = std::move(top.out);
  if (!starts.empty()) {
    Walker below(fd.get(), root);
    below.run(walker_threads(), std::move(starts));
    if (!below.error.empty()) return make_error(below.error);
    // Those of at most `depth` components are the root partition's, which `top` has.
    for (auto& f : below.out.files)
      if (proto::path_depth(f.path) > depth) out.files.push_back(std::move(f));
    for (auto& w : below.out.skipped) out.skipped.push_back(std::move(w));
  }
  sort_scan(out);
  // A subtree's walk passes the root partition's files again: each left out once.
  out.skipped.erase(std::unique(out.skipped.begin(), out.skipped.end()), out.skipped.end());
  return out;
}

Result<std::map<std::string, std::string>> partition_prints(const fs::path& root,
                                                            std::size_t depth) {
  UniqueFd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return make_error(errno_message(root, errno));
  Walker w(fd.get(), root);
  w.run(walker_threads(), {""}, 0, depth);
  if (!w.error.empty()) return make_error(w.error);
  std::map<std::string, std::string> out;
  for (const auto& [name, lanes] : w.prints) out.emplace(name, lanes.text(""));
  return out;
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

void Lanes::add(const ScannedFile& f) {
  std::hash<std::string_view> hash;
  std::uint64_t h = hash(f.path);
  h = mix(h ^ f.size);
  h = mix(h ^ static_cast<std::uint64_t>(f.mtime_ns));
  h = mix(h ^ f.ino);
  h = mix(h ^ (std::uint64_t{f.mode} << 1 | (f.link ? 1 : 0)));
  if (f.link) h = mix(h ^ hash(f.target));
  a += h;
  b += mix(h ^ 0x9e3779b97f4a7c15ull) ^ hash(f.path) * 31;
  ++count;
}

std::string Lanes::text(std::string_view salt) const {
  char buf[80];
  std::snprintf(buf, sizeof buf, "%016llx%016llx-%llu-%016llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b), static_cast<unsigned long long>(count),
                static_cast<unsigned long long>(std::hash<std::string_view>{}(salt)));
  return buf;
}

std::string scan_fingerprint(const ScanResult& scan, std::string_view salt) {
  Lanes lanes;
  for (const auto& f : scan.files) lanes.add(f);
  return lanes.text(salt);
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

bool HashCache::load_file(const fs::path& file) {
  const std::size_t before = records_.size();
  auto bytes = read_file(file, std::size_t{4} << 30);
  if (!bytes) return false;
  // A deque: the records point into each loaded file's bytes, which must not move.
  std::string_view in = bytes_.emplace_back(std::move(*bytes));
  bool ok = in.starts_with(kMagic);
  if (ok) in.remove_prefix(kMagic.size());
  while (ok && !in.empty()) {
    std::uint32_t len;
    Record r{};
    ok = get(in, len) && in.size() >= len;
    if (!ok) break;
    r.path = in.substr(0, len);
    in.remove_prefix(len);
    ok = get(in, r.size) && get(in, r.mtime_ns) && get(in, r.ino) && get(in, r.digest);
    if (ok) records_.push_back(r);
  }
  if (!ok) {
    records_.resize(before);
    bytes_.pop_back();
    dirty_ = true;
  }
  return ok;
}

void HashCache::sort_loaded() {
  auto by_path = [](const Record& a, const Record& b) { return a.path < b.path; };
  if (!std::is_sorted(records_.begin(), records_.end(), by_path))
    std::sort(records_.begin(), records_.end(), by_path);
  sorted_ = records_.size();
}

HashCache HashCache::load(const fs::path& file, std::string* warning) {
  HashCache cache;
  struct stat st;
  if (::lstat(file.c_str(), &st) != 0) return cache;
  if (!cache.load_file(file) && warning)
    *warning = file.string() + ": damaged hash cache ignored; files will be re-read";
  cache.sort_loaded();
  return cache;
}

namespace {
// A partition's file in the cache's folder: named by its name's SHA-256 (names hold slashes).
std::string partition_file_name(std::string_view partition) {
  return proto::to_hex(proto::sha256(partition)).substr(0, 32);
}
}  // namespace

HashCache HashCache::load_partitions(const fs::path& dir, const std::set<std::string>* only,
                                     std::string* warning) {
  HashCache cache;
  std::vector<fs::path> files;
  if (only) {
    for (const auto& name : *only) files.push_back(dir / partition_file_name(name));
  } else {
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
      if (it->path().filename().string().find('.') == std::string::npos)
        files.push_back(it->path());  // not the temporary files of an interrupted save
  }
  std::string damaged;
  for (const auto& file : files) {
    struct stat st;
    if (::lstat(file.c_str(), &st) != 0) continue;
    if (!cache.load_file(file)) damaged += (damaged.empty() ? "" : ", ") + file.string();
  }
  if (!damaged.empty() && warning)
    *warning = damaged + ": damaged hash cache ignored; their files will be re-read";
  cache.sort_loaded();
  return cache;
}

std::string HashCache::encode(const std::vector<const Record*>& records) const {
  std::string out(kMagic);
  out.reserve(kMagic.size() + records.size() * 100);
  for (const Record* rp : records) {
    const Record& r = *rp;
    put(out, static_cast<std::uint32_t>(r.path.size()));
    out += r.path;
    put(out, r.size);
    put(out, r.mtime_ns);
    put(out, r.ino);
    put(out, r.digest);
  }
  return out;
}

Status HashCache::save(const fs::path& file) const {
  std::vector<const Record*> sorted;
  sorted.reserve(records_.size());
  for (const auto& r : records_)
    if (r.used) sorted.push_back(&r);  // files gone from the tree leave the cache
  std::sort(sorted.begin(), sorted.end(),
            [](const Record* a, const Record* b) { return a->path < b->path; });
  // The cache is an optimisation: it need not survive a power loss.
  crash_point();
  return write_file_atomic(file, encode(sorted), 0600, /*durable=*/false);
}

Status HashCache::save_partitions(const fs::path& dir, std::size_t depth,
                                  const std::set<std::string>* only) const {
  std::map<std::string, std::vector<const Record*>, std::less<>> groups;
  if (only)
    for (const auto& name : *only) groups[name];
  for (const auto& r : records_) {
    if (!r.used) continue;  // files gone from the tree leave the cache
    const std::string_view part = proto::partition_of(r.path, depth);
    auto it = groups.find(part);
    if (it == groups.end()) {
      if (only) continue;
      it = groups.emplace(std::string(part), std::vector<const Record*>{}).first;
    }
    it->second.push_back(&r);
  }
  if (auto st = make_dirs(dir); !st) return st;
  std::set<std::string> written;
  crash_point();  // an optimisation: it need not survive a crash or a power loss
  for (auto& [name, records] : groups) {
    const fs::path file = dir / partition_file_name(name);
    if (records.empty()) {
      ::unlink(file.c_str());
      continue;
    }
    std::sort(records.begin(), records.end(),
              [](const Record* a, const Record* b) { return a->path < b->path; });
    if (auto st = write_file_atomic(file, encode(records), 0600, /*durable=*/false); !st) return st;
    written.insert(file.filename().string());
  }
  if (only) return {};
  std::error_code ec;  // a whole save: the files of partitions gone go too
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (!written.count(it->path().filename().string())) ::unlink(it->path().c_str());
  return {};
}

void HashCache::migrate_single_file(const fs::path& file, const fs::path& dir, std::size_t depth) {
  struct stat st;
  if (::lstat(file.c_str(), &st) != 0) return;
  HashCache old = load(file);
  for (auto& r : old.records_) r.used = true;
  if (auto saved = old.save_partitions(dir, depth, nullptr); !saved) return;  // tried again
  ::unlink(file.c_str());
}

namespace {
auto path_below = [](const auto& r, std::string_view p) { return r.path < p; };
}  // namespace

HashCache::Record* HashCache::find(std::string_view path) {
  // Two sorted runs: the loaded records, then those stored in this run.
  const auto loaded_end = records_.begin() + static_cast<std::ptrdiff_t>(sorted_);
  auto it = std::lower_bound(records_.begin(), loaded_end, path, path_below);
  if (it != loaded_end && it->path == path) return &*it;
  it = std::lower_bound(loaded_end, records_.end(), path, path_below);
  return it != records_.end() && it->path == path ? &*it : nullptr;
}

void HashCache::expect(std::size_t files) {
  if (records_.empty()) records_.reserve(files);
}

std::string_view HashCache::keep(std::string_view path) {
  constexpr std::size_t kBlock = 256 * 1024;
  if (path.size() > arena_left_) {
    const std::size_t size = std::max(kBlock, path.size());
    arena_.push_back(std::make_unique<char[]>(size));
    arena_next_ = arena_.back().get();
    arena_left_ = size;
  }
  char* at = arena_next_;
  std::copy(path.begin(), path.end(), at);
  arena_next_ += path.size();
  arena_left_ -= path.size();
  return {at, path.size()};
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
  const Record r{keep(f.path), f.size, f.mtime_ns, f.ino, digest, true};
  if (records_.size() == sorted_ || records_.back().path < r.path) {
    records_.push_back(r);  // the scan's order: appended
    return;
  }
  const auto loaded_end = records_.begin() + static_cast<std::ptrdiff_t>(sorted_);
  records_.insert(std::lower_bound(loaded_end, records_.end(), r.path, path_below), r);
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
