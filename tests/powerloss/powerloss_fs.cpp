// tiersync_powerloss_fs: a FUSE file system that loses, on command, every change not made
// durable, as a power cut does (tests/powerloss/README.md has the model).
//
//   tiersync_powerloss_fs BACKING MOUNTPOINT      serve (foreground); prints "ready" once mounted
//   tiersync_powerloss_fs --cut none|meta|data MOUNTPOINT
//   tiersync_powerloss_fs --dump none|meta|data FOLDER MOUNTPOINT   what a cut would leave
//   tiersync_powerloss_fs --sync MOUNTPOINT       what syncfs(2) does through the shim
//   tiersync_powerloss_fs --stats MOUNTPOINT
//
// BACKING is the disk: read whole at mount, rewritten at a cut (to what survives) and at a clean
// unmount (to everything). Between the two the file system lives in memory: every inode holds
// its current state and, apart, what the disk holds of it.

#define FUSE_USE_VERSION 35
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "tests/powerloss/powerloss.h"

namespace {

namespace fs = std::filesystem;

// What a power cut keeps (powerloss.h).
enum class Survivor { kDurable, kNamespace, kData, kEverything };

using Entries = std::map<std::string, fuse_ino_t>;

// What the disk holds of an inode.
struct Stored {
  mode_t mode = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  timespec mtime{};
  std::string data;  // a file's bytes, a symlink's target
  Entries entries;   // a folder's
};

struct Inode {
  mode_t mode = 0;  // type and permission bits
  uid_t uid = 0;
  gid_t gid = 0;
  timespec atime{}, mtime{}, ctime{};
  std::string data;  // a file's bytes, a symlink's target
  Entries entries;   // a folder's
  fuse_ino_t parent = FUSE_ROOT_ID;
  nlink_t names = 0;           // names in folders (a folder has at most one)
  std::optional<Stored> disk;  // nullopt: nothing of it is durable
  std::string name;            // the last name it was given: what a fault's name matches

  bool is_dir() const { return S_ISDIR(mode); }
  Stored stored() const { return Stored{mode, uid, gid, mtime, data, entries}; }
};

timespec now() {
  timespec t;
  ::clock_gettime(CLOCK_REALTIME, &t);
  return t;
}

constexpr double kTimeout = 60.0;  // every change goes through this kernel: caching is exact

class PowerLossFs {
 public:
  explicit PowerLossFs(fs::path backing) : backing_(std::move(backing)) {}

  /// Reads the backing folder: everything in it is durable.
  bool load() {
    struct stat st;
    if (::lstat(backing_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      std::fprintf(stderr, "powerloss: %s: not a folder\n", backing_.c_str());
      return false;
    }
    inodes_.clear();
    inodes_.emplace_back();  // ino 0: unused
    std::map<std::pair<dev_t, ino_t>, fuse_ino_t> seen;
    const fuse_ino_t root = load_one(backing_, st, FUSE_ROOT_ID, seen);
    if (root != FUSE_ROOT_ID) return false;
    inode(root).names = 1;
    for (auto& n : inodes_) n.disk = n.stored();
    return !load_failed_;
  }

  bool off() const { return off_; }
  Inode& inode(fuse_ino_t ino) { return inodes_[ino]; }
  Inode* find(fuse_ino_t ino) {
    return ino > 0 && ino < inodes_.size() && inodes_[ino].mode != 0 ? &inodes_[ino] : nullptr;
  }

  void fill(fuse_ino_t ino, struct stat& st) {
    const Inode& n = inode(ino);
    st = {};
    st.st_ino = ino;
    st.st_mode = n.mode;
    st.st_nlink = n.names;
    if (n.is_dir()) {
      st.st_nlink = 2;
      for (const auto& [name, child] : n.entries)
        if (inode(child).is_dir()) ++st.st_nlink;
    }
    st.st_uid = n.uid;
    st.st_gid = n.gid;
    st.st_size = n.is_dir() ? 4096 : static_cast<off_t>(n.data.size());
    st.st_blksize = 4096;
    st.st_blocks = (st.st_size + 511) / 512;
    st.st_atim = n.atime;
    st.st_mtim = n.mtime;
    st.st_ctim = n.ctime;
  }

  void reply_entry(fuse_req_t req, fuse_ino_t ino) {
    fuse_entry_param e{};
    e.ino = ino;
    e.generation = 1;  // inode numbers are never reused within a mount
    fill(ino, e.attr);
    e.attr_timeout = e.entry_timeout = kTimeout;
    fuse_reply_entry(req, &e);
  }

  /// A new inode named `name` in `parent`; 0 with errno set when it cannot be.
  fuse_ino_t make(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
    Inode* p = find(parent);
    if (!p || !p->is_dir()) return errno = ENOTDIR, 0;
    if (p->entries.count(name)) return errno = EEXIST, 0;
    if (std::strlen(name) > 255) return errno = ENAMETOOLONG, 0;
    const fuse_ctx* ctx = fuse_req_ctx(req);
    const fuse_ino_t ino = inodes_.size();
    Inode& n = inodes_.emplace_back();
    p = &inode(parent);  // emplace_back keeps references in a deque, but be plain about it
    n.mode = mode;
    n.uid = ctx->uid;
    n.gid = ctx->gid;
    n.atime = n.mtime = n.ctime = now();
    n.parent = parent;
    n.names = 1;
    n.name = name;
    p->entries[name] = ino;
    p->mtime = p->ctime = n.ctime;
    ++stats_.ops;
    return ino;
  }

  /// Removes the name; errno-style result.
  int remove(fuse_ino_t parent, const char* name, bool dir) {
    Inode* p = find(parent);
    if (!p || !p->is_dir()) return ENOTDIR;
    auto it = p->entries.find(name);
    if (it == p->entries.end()) return ENOENT;
    Inode& child = inode(it->second);
    if (dir && !child.is_dir()) return ENOTDIR;
    if (!dir && child.is_dir()) return EISDIR;
    if (dir && !child.entries.empty()) return ENOTEMPTY;
    p->entries.erase(it);
    --child.names;
    child.ctime = p->mtime = p->ctime = now();
    ++stats_.ops;
    return 0;
  }

  int rename(fuse_ino_t parent, const char* name, fuse_ino_t newparent, const char* newname,
             unsigned flags) {
    if (flags & RENAME_EXCHANGE) return EINVAL;  // tiersync does not use it
    Inode* from = find(parent);
    Inode* to = find(newparent);
    if (!from || !from->is_dir() || !to || !to->is_dir()) return ENOTDIR;
    auto it = from->entries.find(name);
    if (it == from->entries.end()) return ENOENT;
    const fuse_ino_t moving = it->second;
    Inode& m = inode(moving);
    if (m.is_dir())  // not into itself
      for (fuse_ino_t up = newparent;; up = inode(up).parent) {
        if (up == moving) return EINVAL;
        if (up == FUSE_ROOT_ID) break;
      }
    if (auto old = to->entries.find(newname); old != to->entries.end()) {
      if (old->second == moving) return 0;
      if (flags & RENAME_NOREPLACE) return EEXIST;
      Inode& victim = inode(old->second);
      if (m.is_dir() && !victim.is_dir()) return ENOTDIR;
      if (!m.is_dir() && victim.is_dir()) return EISDIR;
      if (victim.is_dir() && !victim.entries.empty()) return ENOTEMPTY;
      --victim.names;
      victim.ctime = now();
    }
    from->entries.erase(it);
    to->entries[newname] = moving;
    m.parent = newparent;
    m.name = newname;
    m.ctime = from->mtime = from->ctime = to->mtime = to->ctime = now();
    ++stats_.ops;
    return 0;
  }

  // --- durability ---------------------------------------------------------------------------

  /// fsync of a file: its data and attributes, not its names.
  void fsync_file(fuse_ino_t ino) {
    ++stats_.fsyncs;
    Inode& n = inode(ino);
    Entries entries = n.disk ? n.disk->entries : Entries{};
    n.disk = n.stored();
    n.disk->entries = std::move(entries);  // a folder's names go with fsync_dir
  }

  /// fsync of a folder: its names. An inode it names that has nothing durable yet is on the disk
  /// from now on, but only as created: a file empty, a folder without names.
  void fsync_dir(fuse_ino_t ino) {
    ++stats_.dir_fsyncs;
    Inode& d = inode(ino);
    d.disk = d.stored();
    for (const auto& [name, child] : d.entries) {
      Inode& c = inode(child);
      if (c.disk) continue;
      c.disk = c.stored();
      c.disk->entries.clear();
      if (S_ISREG(c.mode)) c.disk->data.clear();
    }
  }

  /// syncfs: everything.
  void sync_all() {
    ++stats_.syncfs;
    for (std::size_t ino = 1; ino < inodes_.size(); ++ino) {
      Inode& n = inodes_[ino];
      if (n.names > 0)
        n.disk = n.stored();
      else
        n.disk.reset();  // no name left anywhere: gone from the disk too
    }
  }

  /// Rewrites the backing folder to what `survivor` keeps. After a cut nothing else happens.
  bool store(Survivor survivor) {
    std::error_code ec;
    for (const auto& de : fs::directory_iterator(backing_, ec)) {
      fs::remove_all(de.path(), ec);
      if (ec) break;
    }
    if (ec) {
      std::fprintf(stderr, "powerloss: emptying %s: %s\n", backing_.c_str(), ec.message().c_str());
      return false;
    }
    return store_into(survivor, backing_);
  }

  /// Writes what `survivor` keeps into `folder`: the backing folder, or a new one.
  bool store_into(Survivor survivor, const fs::path& folder) {
    if (folder != backing_ && ::mkdir(folder.c_str(), 0700) != 0) return store_error(folder);
    std::map<fuse_ino_t, fs::path> written;
    std::set<fuse_ino_t> dirs;
    return store_dir(FUSE_ROOT_ID, folder, survivor, written, dirs);
  }

  /// A folder's listing as it was at opendir (readdir's offsets index it), until releasedir.
  struct Listing {
    std::vector<std::pair<std::string, struct stat>> entries;
  };
  Listing* open_listing() { return listings_.emplace_back(std::make_unique<Listing>()).get(); }
  void close_listing(const Listing* l) {
    std::erase_if(listings_, [l](const auto& p) { return p.get() == l; });
  }

  const powerloss_stats& stats() const { return stats_; }
  void count_op() { ++stats_.ops; }
  void power_off() { off_ = true; }

  // --- faults on command (POWERLOSS_FAULT) ---------------------------------------------------

  void set_fault(const powerloss_fault& f) {
    fault_ = f;
    fault_.name[sizeof fault_.name - 1] = '\0';
    fault_written_ = 0;
  }
  /// The errno a request of kind `op` on `name` (or `other`: a rename's second name, or the
  /// folder the name is in) fails with, 0 to go on. `bytes`: what a write would add, counted
  /// against after_bytes.
  int fault(std::uint32_t op, std::string_view name, std::string_view other = {},
            std::uint64_t bytes = 0) {
    if (fault_.error == 0 || !(fault_.ops & op)) return 0;
    const std::string_view part = fault_.name;
    const bool named = part.empty() || name.find(part) != std::string_view::npos ||
                       (!other.empty() && other.find(part) != std::string_view::npos);
    if (!named && op != POWERLOSS_FAULT_FSYNC) return 0;
    if (op == POWERLOSS_FAULT_WRITE && fault_written_ + bytes <= fault_.after_bytes) {
      fault_written_ += bytes;
      return 0;
    }
    ++stats_.faults;
    return fault_.error;
  }

 private:
  fuse_ino_t load_one(const fs::path& path, const struct stat& st, fuse_ino_t parent,
                      std::map<std::pair<dev_t, ino_t>, fuse_ino_t>& seen) {
    const auto key = std::make_pair(st.st_dev, st.st_ino);
    if (!S_ISDIR(st.st_mode))
      if (auto it = seen.find(key); it != seen.end()) {
        ++inode(it->second).names;  // a hard link
        return it->second;
      }
    const fuse_ino_t ino = inodes_.size();
    inodes_.emplace_back();
    seen[key] = ino;
    {
      Inode& n = inode(ino);
      n.mode = st.st_mode;
      n.uid = st.st_uid;
      n.gid = st.st_gid;
      n.atime = st.st_atim;
      n.mtime = st.st_mtim;
      n.ctime = st.st_ctim;
      n.parent = parent;
      n.names = 1;
    }
    if (S_ISREG(st.st_mode)) {
      std::string data;
      if (!read_whole(path, data)) return 0;
      inode(ino).data = std::move(data);
    } else if (S_ISLNK(st.st_mode)) {
      std::string target(static_cast<std::size_t>(st.st_size) + 1, '\0');
      const ssize_t n = ::readlink(path.c_str(), target.data(), target.size());
      if (n < 0) return fail_load(path);
      target.resize(static_cast<std::size_t>(n));
      inode(ino).data = std::move(target);
    } else if (S_ISDIR(st.st_mode)) {
      std::error_code ec;
      for (const auto& de : fs::directory_iterator(path, ec)) {
        struct stat cst;
        if (::lstat(de.path().c_str(), &cst) != 0) return fail_load(de.path());
        const fuse_ino_t child = load_one(de.path(), cst, ino, seen);
        if (child == 0) return 0;
        inode(ino).entries[de.path().filename().string()] = child;
        inode(child).name = de.path().filename().string();
      }
      if (ec) return fail_load(path);
    } else {
      std::fprintf(stderr, "powerloss: %s: neither a file, a symlink nor a folder\n", path.c_str());
      return 0;
    }
    return ino;
  }

  bool read_whole(const fs::path& path, std::string& out) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return fail_load(path) != 0;
    char buf[65536];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        ::close(fd);
        return fail_load(path) != 0;
      }
      if (n == 0) break;
      out.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return true;
  }

  fuse_ino_t fail_load(const fs::path& path) {
    std::fprintf(stderr, "powerloss: reading %s: %s\n", path.c_str(), std::strerror(errno));
    load_failed_ = true;
    return 0;
  }

  // What of an inode survives.
  const Entries* entries_of(const Inode& n, Survivor s) const {
    if (s == Survivor::kNamespace || s == Survivor::kEverything) return &n.entries;
    return n.disk ? &n.disk->entries : nullptr;
  }
  const std::string* data_of(const Inode& n, Survivor s) const {
    static const std::string kEmpty;
    if (s == Survivor::kEverything || s == Survivor::kData || S_ISLNK(n.mode)) return &n.data;
    if (n.disk) return &n.disk->data;
    return &kEmpty;  // kNamespace: a name made durable, never its data
  }
  Stored attributes_of(const Inode& n, Survivor s) const {
    if ((s == Survivor::kDurable || s == Survivor::kData) && n.disk)
      return Stored{n.disk->mode, n.disk->uid, n.disk->gid, n.disk->mtime, {}, {}};
    return Stored{n.mode, n.uid, n.gid, n.mtime, {}, {}};
  }

  bool store_error(const fs::path& path) {
    std::fprintf(stderr, "powerloss: writing %s: %s\n", path.c_str(), std::strerror(errno));
    return false;
  }

  bool set_attributes(const fs::path& path, const Stored& a, bool link) {
    if (!link && ::chmod(path.c_str(), a.mode & 07777) != 0) return store_error(path);
    if (::lchown(path.c_str(), a.uid, a.gid) != 0 && errno != EPERM) return store_error(path);
    const timespec times[2] = {a.mtime, a.mtime};
    if (::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0)
      return store_error(path);
    return true;
  }

  bool store_dir(fuse_ino_t ino, const fs::path& dir, Survivor s,
                 std::map<fuse_ino_t, fs::path>& written, std::set<fuse_ino_t>& dirs) {
    const Inode& d = inode(ino);
    dirs.insert(ino);
    if (const Entries* entries = entries_of(d, s)) {
      for (const auto& [name, child] : *entries) {
        const Inode& c = inode(child);
        const fs::path path = dir / name;
        if (s != Survivor::kNamespace && s != Survivor::kEverything && !c.disk) {
          std::fprintf(stderr, "powerloss: %s: named on the disk, not stored (a bug)\n",
                       path.c_str());
          return false;
        }
        if (c.is_dir()) {
          // A folder has one name; two, or a cycle, can only come from renames of folders made
          // durable in some folders and not in others: the first name wins.
          if (dirs.count(child)) continue;
          if (::mkdir(path.c_str(), 0700) != 0) return store_error(path);
          if (!store_dir(child, path, s, written, dirs)) return false;
        } else if (auto it = written.find(child); it != written.end()) {
          if (::link(it->second.c_str(), path.c_str()) != 0) return store_error(path);
        } else if (S_ISLNK(c.mode)) {
          if (::symlink(data_of(c, s)->c_str(), path.c_str()) != 0) return store_error(path);
          if (!set_attributes(path, attributes_of(c, s), true)) return false;
          written[child] = path;
        } else {
          const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
          if (fd < 0) return store_error(path);
          const std::string& bytes = *data_of(c, s);
          std::size_t done = 0;
          while (done < bytes.size()) {
            const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
              ::close(fd);
              return store_error(path);
            }
            done += static_cast<std::size_t>(n);
          }
          ::close(fd);
          if (!set_attributes(path, attributes_of(c, s), false)) return false;
          written[child] = path;
        }
      }
    }
    return set_attributes(dir, attributes_of(d, s), false);
  }

  fs::path backing_;
  std::vector<std::unique_ptr<Listing>> listings_;  // a killed process may leave some open
  std::deque<Inode> inodes_;  // by inode number; never freed while mounted (a test's lifetime)
  bool load_failed_ = false;
  bool off_ = false;  // after a cut
  powerloss_stats stats_{};
  powerloss_fault fault_{};          // error 0: none
  std::uint64_t fault_written_ = 0;  // bytes the fault let through
};

PowerLossFs* g_fs = nullptr;

// Every request checks this first: after a cut the machine is off.
#define POWERED_OR_EIO(req)                                 \
  do {                                                      \
    if (g_fs->off()) return (void)fuse_reply_err(req, EIO); \
  } while (0)

// A request the fault set on command fails, changing nothing.
#define FAULT_OR_GO_ON(req, ...)                                                     \
  do {                                                                               \
    if (const int e = g_fs->fault(__VA_ARGS__)) return (void)fuse_reply_err(req, e); \
  } while (0)

void op_destroy(void*) {
  if (!g_fs->off() && !g_fs->store(Survivor::kEverything))
    std::fprintf(stderr, "powerloss: the clean unmount could not write the backing folder\n");
}

void op_init(void*, fuse_conn_info* conn) {
  // Every write reaches us at once (no kernel write-back cache): a killed process has nothing
  // in flight. Folders take the command ioctls too.
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  if (conn->capable & FUSE_CAP_IOCTL_DIR) conn->want |= FUSE_CAP_IOCTL_DIR;
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  POWERED_OR_EIO(req);
  Inode* p = g_fs->find(parent);
  if (!p || !p->is_dir()) return (void)fuse_reply_err(req, ENOTDIR);
  auto it = p->entries.find(name);
  if (it == p->entries.end()) return (void)fuse_reply_err(req, ENOENT);
  g_fs->reply_entry(req, it->second);
}

void op_forget(fuse_req_t req, fuse_ino_t, uint64_t) {
  fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  POWERED_OR_EIO(req);
  if (!g_fs->find(ino)) return (void)fuse_reply_err(req, ENOENT);
  struct stat st;
  g_fs->fill(ino, st);
  fuse_reply_attr(req, &st, kTimeout);
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  POWERED_OR_EIO(req);
  Inode* n = g_fs->find(ino);
  if (!n) return (void)fuse_reply_err(req, ENOENT);
  const timespec t = now();
  if (to_set & FUSE_SET_ATTR_MODE) n->mode = (n->mode & S_IFMT) | (attr->st_mode & 07777);
  if (to_set & FUSE_SET_ATTR_UID) n->uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) n->gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_SIZE) {
    if (!S_ISREG(n->mode)) return (void)fuse_reply_err(req, EINVAL);
    n->data.resize(static_cast<std::size_t>(attr->st_size));
    n->mtime = t;
  }
  if (to_set & FUSE_SET_ATTR_ATIME) n->atime = attr->st_atim;
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) n->atime = t;
  if (to_set & FUSE_SET_ATTR_MTIME) n->mtime = attr->st_mtim;
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) n->mtime = t;
  n->ctime = (to_set & FUSE_SET_ATTR_CTIME) ? attr->st_ctim : t;
  g_fs->count_op();
  struct stat st;
  g_fs->fill(ino, st);
  fuse_reply_attr(req, &st, kTimeout);
}

void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  POWERED_OR_EIO(req);
  Inode* n = g_fs->find(ino);
  if (!n || !S_ISLNK(n->mode)) return (void)fuse_reply_err(req, EINVAL);
  fuse_reply_readlink(req, n->data.c_str());
}

void reply_made(fuse_req_t req, fuse_ino_t ino) {
  if (ino == 0) return (void)fuse_reply_err(req, errno);
  g_fs->reply_entry(req, ino);
}

void op_mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t) {
  POWERED_OR_EIO(req);
  FAULT_OR_GO_ON(req, POWERLOSS_FAULT_CREATE, name, g_fs->inode(parent).name);
  if (!S_ISREG(mode)) return (void)fuse_reply_err(req, EPERM);  // files, folders, symlinks only
  reply_made(req, g_fs->make(req, parent, name, mode));
}

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  POWERED_OR_EIO(req);
  FAULT_OR_GO_ON(req, POWERLOSS_FAULT_CREATE, name, g_fs->inode(parent).name);
  reply_made(req, g_fs->make(req, parent, name, S_IFDIR | (mode & 07777)));
}

void op_symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  POWERED_OR_EIO(req);
  FAULT_OR_GO_ON(req, POWERLOSS_FAULT_CREATE, name, g_fs->inode(parent).name);
  const fuse_ino_t ino = g_fs->make(req, parent, name, S_IFLNK | 0777);
  if (ino != 0) g_fs->inode(ino).data = target;
  reply_made(req, ino);
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  POWERED_OR_EIO(req);
  FAULT_OR_GO_ON(req, POWERLOSS_FAULT_UNLINK, name, g_fs->inode(parent).name);
  fuse_reply_err(req, g_fs->remove(parent, name, false));
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  POWERED_OR_EIO(req);
  FAULT_OR_GO_ON(req, POWERLOSS_FAULT_UNLINK, name, g_fs->inode(parent).name);
  fuse_reply_err(req, g_fs->remove(parent, name, true));
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
               const char* newname, unsigned flags) {
  POWERED_OR_EIO(req);
  FAULT_OR_GO_ON(req, POWERLOSS_FAULT_RENAME, name, newname);
  fuse_reply_err(req, g_fs->rename(parent, name, newparent, newname, flags));
}

void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  POWERED_OR_EIO(req);
  FAULT_OR_GO_ON(req, POWERLOSS_FAULT_CREATE, newname);
  Inode* n = g_fs->find(ino);
  Inode* p = g_fs->find(newparent);
  if (!n || !p) return (void)fuse_reply_err(req, ENOENT);
  if (n->is_dir()) return (void)fuse_reply_err(req, EPERM);
  if (!p->is_dir()) return (void)fuse_reply_err(req, ENOTDIR);
  if (p->entries.count(newname)) return (void)fuse_reply_err(req, EEXIST);
  p->entries[newname] = ino;
  ++n->names;
  n->ctime = p->mtime = p->ctime = now();
  g_fs->count_op();
  g_fs->reply_entry(req, ino);
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  POWERED_OR_EIO(req);
  if (!g_fs->find(ino)) return (void)fuse_reply_err(req, ENOENT);
  fi->keep_cache = 0;
  fuse_reply_open(req, fi);
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
               fuse_file_info* fi) {
  POWERED_OR_EIO(req);
  FAULT_OR_GO_ON(req, POWERLOSS_FAULT_CREATE, name, g_fs->inode(parent).name);
  const fuse_ino_t ino = g_fs->make(req, parent, name, S_IFREG | (mode & 07777));
  if (ino == 0) return (void)fuse_reply_err(req, errno);
  fuse_entry_param e{};
  e.ino = ino;
  e.generation = 1;
  g_fs->fill(ino, e.attr);
  e.attr_timeout = e.entry_timeout = kTimeout;
  fi->keep_cache = 0;
  fuse_reply_create(req, &e, fi);
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  POWERED_OR_EIO(req);
  Inode* n = g_fs->find(ino);
  if (!n || !S_ISREG(n->mode)) return (void)fuse_reply_err(req, EINVAL);
  const auto start = std::min(static_cast<std::size_t>(off), n->data.size());
  const auto len = std::min(size, n->data.size() - start);
  fuse_reply_buf(req, n->data.data() + start, len);
}

void op_write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
              fuse_file_info*) {
  POWERED_OR_EIO(req);
  Inode* n = g_fs->find(ino);
  if (!n || !S_ISREG(n->mode)) return (void)fuse_reply_err(req, EINVAL);
  FAULT_OR_GO_ON(req, POWERLOSS_FAULT_WRITE, n->name, g_fs->inode(n->parent).name, size);
  const auto end = static_cast<std::size_t>(off) + size;
  if (n->data.size() < end) n->data.resize(end);
  std::memcpy(n->data.data() + off, buf, size);
  n->mtime = n->ctime = now();
  g_fs->count_op();
  fuse_reply_write(req, size);
}

void op_ok(fuse_req_t req, fuse_ino_t, fuse_file_info*) {
  POWERED_OR_EIO(req);
  fuse_reply_err(req, 0);
}

void op_fsync(fuse_req_t req, fuse_ino_t ino, int, fuse_file_info*) {
  POWERED_OR_EIO(req);
  FAULT_OR_GO_ON(req, POWERLOSS_FAULT_FSYNC, std::string_view());
  if (!g_fs->find(ino)) return (void)fuse_reply_err(req, ENOENT);
  g_fs->fsync_file(ino);
  fuse_reply_err(req, 0);
}

using Listing = PowerLossFs::Listing;

void op_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  POWERED_OR_EIO(req);
  Inode* d = g_fs->find(ino);
  if (!d || !d->is_dir()) return (void)fuse_reply_err(req, ENOTDIR);
  Listing* listing = g_fs->open_listing();
  struct stat st {};
  st.st_ino = ino;
  st.st_mode = S_IFDIR;
  listing->entries.emplace_back(".", st);
  st.st_ino = d->parent;
  listing->entries.emplace_back("..", st);
  for (const auto& [name, child] : d->entries) {
    st.st_ino = child;
    st.st_mode = g_fs->inode(child).mode & S_IFMT;
    listing->entries.emplace_back(name, st);
  }
  fi->fh = reinterpret_cast<uint64_t>(listing);
  fuse_reply_open(req, fi);
}

void op_readdir(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  POWERED_OR_EIO(req);
  const auto* listing = reinterpret_cast<const Listing*>(fi->fh);
  std::string buf(size, '\0');
  std::size_t used = 0;
  for (auto i = static_cast<std::size_t>(off); i < listing->entries.size(); ++i) {
    const auto& [name, st] = listing->entries[i];
    const std::size_t n = fuse_add_direntry(req, buf.data() + used, size - used, name.c_str(), &st,
                                            static_cast<off_t>(i + 1));
    if (n > size - used) break;
    used += n;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void op_releasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  g_fs->close_listing(reinterpret_cast<const Listing*>(fi->fh));
  fuse_reply_err(req, 0);
}

void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int, fuse_file_info*) {
  POWERED_OR_EIO(req);
  FAULT_OR_GO_ON(req, POWERLOSS_FAULT_FSYNC, std::string_view());
  Inode* d = g_fs->find(ino);
  if (!d || !d->is_dir()) return (void)fuse_reply_err(req, ENOTDIR);
  g_fs->fsync_dir(ino);
  fuse_reply_err(req, 0);
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  POWERED_OR_EIO(req);
  struct statvfs st {};
  st.f_bsize = st.f_frsize = 4096;
  st.f_blocks = st.f_bfree = st.f_bavail = 1u << 24;
  st.f_files = st.f_ffree = st.f_favail = 1u << 20;
  st.f_namemax = 255;
  fuse_reply_statfs(req, &st);
}

std::optional<Survivor> survivor_of(unsigned cut) {
  switch (cut) {
    case _IOC_NR(POWERLOSS_CUT_NONE):
      return Survivor::kDurable;
    case _IOC_NR(POWERLOSS_CUT_META):
      return Survivor::kNamespace;
    case _IOC_NR(POWERLOSS_CUT_DATA):
      return Survivor::kData;
  }
  return std::nullopt;
}

void op_ioctl(fuse_req_t req, fuse_ino_t, unsigned int cmd, void*, fuse_file_info*, unsigned,
              const void* in, size_t in_size, size_t out_size) {
  POWERED_OR_EIO(req);
  auto cut = [&](Survivor s, const char* what) {
    const bool stored = g_fs->store(s);
    g_fs->power_off();
    const powerloss_stats& st = g_fs->stats();
    std::fprintf(
        stderr,
        "powerloss: power cut (%s) after %llu changes, %llu file fsyncs, %llu folder "
        "fsyncs, %llu syncfs\n",
        what, static_cast<unsigned long long>(st.ops), static_cast<unsigned long long>(st.fsyncs),
        static_cast<unsigned long long>(st.dir_fsyncs), static_cast<unsigned long long>(st.syncfs));
    fuse_reply_ioctl(req, stored ? 0 : -1, nullptr, 0);
  };
  switch (cmd) {
    case POWERLOSS_SYNCFS:
      FAULT_OR_GO_ON(req, POWERLOSS_FAULT_FSYNC, std::string_view());
      g_fs->sync_all();
      return (void)fuse_reply_ioctl(req, 0, nullptr, 0);
    case POWERLOSS_CUT_NONE:
      return cut(Survivor::kDurable, "only what was durable survives");
    case POWERLOSS_CUT_META:
      return cut(Survivor::kNamespace, "every namespace change survives, no unsynced data");
    case POWERLOSS_CUT_DATA:
      return cut(Survivor::kData, "every file's data survives, no unsynced namespace change");
    case POWERLOSS_DUMP: {
      powerloss_dump dump{};
      if (in_size < sizeof dump) return (void)fuse_reply_err(req, EINVAL);
      std::memcpy(&dump, in, sizeof dump);
      dump.folder[sizeof dump.folder - 1] = '\0';
      const auto survivor = survivor_of(dump.cut);
      if (!survivor || dump.folder[0] != '/') return (void)fuse_reply_err(req, EINVAL);
      if (!g_fs->store_into(*survivor, dump.folder)) return (void)fuse_reply_err(req, EIO);
      return (void)fuse_reply_ioctl(req, 0, nullptr, 0);
    }
    case POWERLOSS_FAULT: {
      powerloss_fault fault{};
      if (in_size < sizeof fault) return (void)fuse_reply_err(req, EINVAL);
      std::memcpy(&fault, in, sizeof fault);
      g_fs->set_fault(fault);
      return (void)fuse_reply_ioctl(req, 0, nullptr, 0);
    }
    case POWERLOSS_STATS:
      if (out_size < sizeof(powerloss_stats)) return (void)fuse_reply_err(req, EINVAL);
      return (void)fuse_reply_ioctl(req, 0, &g_fs->stats(), sizeof(powerloss_stats));
    default:
      return (void)fuse_reply_err(req, ENOTTY);
  }
}

int serve(const char* self, const fs::path& backing, const fs::path& mountpoint) {
  PowerLossFs pfs(fs::absolute(backing));
  if (!pfs.load()) return 1;
  g_fs = &pfs;
  fuse_lowlevel_ops ops{};
  ops.init = op_init;
  ops.destroy = op_destroy;
  ops.lookup = op_lookup;
  ops.forget = op_forget;
  ops.getattr = op_getattr;
  ops.setattr = op_setattr;
  ops.readlink = op_readlink;
  ops.mknod = op_mknod;
  ops.mkdir = op_mkdir;
  ops.symlink = op_symlink;
  ops.unlink = op_unlink;
  ops.rmdir = op_rmdir;
  ops.rename = op_rename;
  ops.link = op_link;
  ops.open = op_open;
  ops.create = op_create;
  ops.read = op_read;
  ops.write = op_write;
  ops.flush = op_ok;
  ops.release = op_ok;
  ops.fsync = op_fsync;
  ops.opendir = op_opendir;
  ops.readdir = op_readdir;
  ops.releasedir = op_releasedir;
  ops.fsyncdir = op_fsyncdir;
  ops.statfs = op_statfs;
  ops.ioctl = op_ioctl;

  // default_permissions: the kernel checks modes as it would on a disk.
  const char* argv[] = {self, "-o", "default_permissions,fsname=tiersync-powerloss", nullptr};
  fuse_args args = FUSE_ARGS_INIT(3, const_cast<char**>(argv));
  fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, nullptr);
  if (!se) return 1;
  int rc = 1;
  if (fuse_set_signal_handlers(se) == 0) {
    if (fuse_session_mount(se, mountpoint.c_str()) == 0) {
      std::printf("ready\n");
      std::fflush(stdout);
      rc = fuse_session_loop(se) == 0 ? 0 : 1;
      fuse_session_unmount(se);
    }
    fuse_remove_signal_handlers(se);
  }
  fuse_session_destroy(se);  // runs op_destroy: a clean unmount writes everything
  fuse_opt_free_args(&args);
  return rc;
}

int command(const char* what, const char* mountpoint, const char* folder = nullptr) {
  const int fd = ::open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    std::fprintf(stderr, "powerloss: %s: %s\n", mountpoint, std::strerror(errno));
    return 1;
  }
  int rc = -1;
  const std::string_view w = what;
  powerloss_stats st{};
  if (folder) {
    powerloss_dump dump{};
    dump.cut = w == "none"   ? _IOC_NR(POWERLOSS_CUT_NONE)
               : w == "meta" ? _IOC_NR(POWERLOSS_CUT_META)
               : w == "data" ? _IOC_NR(POWERLOSS_CUT_DATA)
                             : 0;
    const std::string abs = fs::absolute(folder).string();
    if (abs.size() >= sizeof dump.folder)
      return std::fprintf(stderr, "powerloss: path too long\n"), 1;
    std::memcpy(dump.folder, abs.c_str(), abs.size() + 1);
    rc = ::ioctl(fd, POWERLOSS_DUMP, &dump);
  } else {
    if (w == "--sync") rc = ::ioctl(fd, POWERLOSS_SYNCFS);
    if (w == "none") rc = ::ioctl(fd, POWERLOSS_CUT_NONE);
    if (w == "meta") rc = ::ioctl(fd, POWERLOSS_CUT_META);
    if (w == "data") rc = ::ioctl(fd, POWERLOSS_CUT_DATA);
  }
  if (w == "--stats") {
    rc = ::ioctl(fd, POWERLOSS_STATS, &st);
    if (rc == 0)
      std::printf(
          "changes %llu\nfsyncs %llu\ndir_fsyncs %llu\nsyncfs %llu\nfaults %llu\n",
          static_cast<unsigned long long>(st.ops), static_cast<unsigned long long>(st.fsyncs),
          static_cast<unsigned long long>(st.dir_fsyncs),
          static_cast<unsigned long long>(st.syncfs), static_cast<unsigned long long>(st.faults));
  }
  if (rc != 0)
    std::fprintf(stderr, "powerloss: %s %s: %s\n", what, mountpoint, std::strerror(errno));
  ::close(fd);
  return rc == 0 ? 0 : 1;
}

// --fault none|ENOSPC|EIO OPS NAME AFTER_BYTES MOUNTPOINT, OPS a comma-separated list of write,
// create, rename, unlink, fsync.
int set_fault(char** argv) {
  powerloss_fault f{};
  const std::string_view error = argv[2];
  f.error = error == "ENOSPC" ? ENOSPC : error == "EIO" ? EIO : 0;
  if (f.error == 0 && error != "none") return std::fprintf(stderr, "powerloss: errno?\n"), 2;
  for (std::string_view ops = argv[3]; !ops.empty();) {
    const auto comma = ops.find(',');
    const std::string_view op = ops.substr(0, comma);
    f.ops |= op == "write"    ? POWERLOSS_FAULT_WRITE
             : op == "create" ? POWERLOSS_FAULT_CREATE
             : op == "rename" ? POWERLOSS_FAULT_RENAME
             : op == "unlink" ? POWERLOSS_FAULT_UNLINK
             : op == "fsync"  ? POWERLOSS_FAULT_FSYNC
                              : 0u;
    ops = comma == std::string_view::npos ? std::string_view() : ops.substr(comma + 1);
  }
  std::snprintf(f.name, sizeof f.name, "%s", argv[4]);
  f.after_bytes = std::strtoull(argv[5], nullptr, 10);
  const int fd = ::open(argv[6], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  const int rc = fd < 0 ? -1 : ::ioctl(fd, POWERLOSS_FAULT, &f);
  if (rc != 0) std::fprintf(stderr, "powerloss: --fault %s: %s\n", argv[6], std::strerror(errno));
  if (fd >= 0) ::close(fd);
  return rc == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 7 && std::string_view(argv[1]) == "--fault") return set_fault(argv);
  if (argc == 4 && std::string_view(argv[1]) == "--cut") return command(argv[2], argv[3]);
  if (argc == 5 && std::string_view(argv[1]) == "--dump") return command(argv[2], argv[4], argv[3]);
  if (argc == 3 &&
      (std::string_view(argv[1]) == "--sync" || std::string_view(argv[1]) == "--stats"))
    return command(argv[1], argv[2]);
  if (argc == 3 && argv[1][0] != '-') return serve(argv[0], argv[1], argv[2]);
  std::fprintf(stderr,
               "usage: %s BACKING MOUNTPOINT\n"
               "       %s --cut none|meta|data MOUNTPOINT\n"
               "       %s --dump none|meta|data FOLDER MOUNTPOINT\n"
               "       %s --sync MOUNTPOINT\n"
               "       %s --stats MOUNTPOINT\n"
               "       %s --fault none|ENOSPC|EIO write,create,rename,unlink,fsync NAME "
               "AFTER_BYTES MOUNTPOINT\n",
               argv[0], argv[0], argv[0], argv[0], argv[0], argv[0]);
  return 2;
}
