#include "daemon/sync/apply.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "daemon/sync/fs.h"
#include "daemon/sync/scan.h"
#include "proto/dsse.h"
#include "proto/path.h"

namespace tiersync::sync {

namespace {

using proto::Entry;

struct DigestHash {
  std::size_t operator()(const proto::Digest& d) const {
    std::size_t h;
    std::copy_n(d.data(), sizeof h, reinterpret_cast<std::uint8_t*>(&h));
    return h;
  }
};

// A staged file is named by everything it must reproduce, so a file staged by a killed run is
// recognised, and two paths never share one inode (their metadata could differ).
std::string staged_name(const Entry& e) {
  proto::Sha256 h;
  h.update(e.text());
  h.update("\0", 1);
  h.update(e.sha256.data(), e.sha256.size());
  std::string meta = std::to_string(e.mtime) + "/" + std::to_string(e.mode);
  h.update(meta);
  return proto::to_hex(h.finish()).substr(0, 40);
}

Status write_all(int fd, const char* data, std::size_t size, const fs::path& what) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(errno_message(what, errno));
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return {};
}

// Gives an open file the entry's mode and mtime, touching nothing that already fits (a file
// tier0 hard-linked from its source must not be modified).
Status set_metadata(int fd, const Entry& e, const fs::path& what) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return make_error(errno_message(what, errno));
  if ((st.st_mode & 07777) != e.mode && ::fchmod(fd, e.mode) != 0)
    return make_error(errno_message(what, errno));
  if (st.st_mtim.tv_sec != e.mtime) {
    timespec times[2] = {{e.mtime, 0}, {e.mtime, 0}};
    if (::futimens(fd, times) != 0) return make_error(errno_message(what, errno));
  }
  return {};
}

bool matches_entry(const struct stat& st, const Entry& e) {
  return S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) == e.size &&
         st.st_mtim.tv_sec == e.mtime && (st.st_mode & 07777) == e.mode;
}

std::string mismatch(const Entry& e, std::uint64_t got_size, const proto::Digest& got) {
  std::string path(e.path());
  if (got_size != e.size)
    return path + ": size mismatch (manifest says " + std::to_string(e.size) + " bytes, got " +
           std::to_string(got_size) + ")";
  return path + ": SHA-256 mismatch (manifest says " + proto::to_hex(e.sha256) + ", got " +
         proto::to_hex(got) + ")";
}

// Opens the regular file `rel` of the tree, never through a symlink (docs/crash-safety.md: a
// folder that became a symlink is not entered).
Result<UniqueFd> open_tree_file(const TreeFs& tree, std::string_view rel) {
  UniqueFd fd = tree.open_file(rel, O_RDONLY);
  if (!fd.valid()) return make_error(errno_message(tree.root() / rel, errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return make_error(errno_message(tree.root() / rel, errno));
  if (!S_ISREG(st.st_mode)) return make_error((tree.root() / rel).string() + ": not a file");
  return fd;
}

// The SHA-256 of the tree's file `rel` (reached without following a symlink).
Result<proto::Digest> hash_tree_file(const TreeFs& tree, std::string_view rel) {
  auto fd = open_tree_file(tree, rel);
  if (!fd) return fd.error();
  proto::Sha256 h;
  auto st = stream_fd(fd->get(), tree.root() / rel, [&](const char* data, std::size_t size) {
    h.update(data, size);
    return Status{};
  });
  if (!st) return st.error();
  return h.finish();
}

// Copies a local file whose content an entry needs, hashing it on the way: a tree file may have
// rotted or been edited since it was verified.
Status copy_verified(const TreeFs& tree, std::string_view src, int out_fd, const fs::path& out_path,
                     const Entry& e) {
  auto in = open_tree_file(tree, src);
  if (!in) return in.error();
  proto::Sha256 hasher;
  std::uint64_t got = 0;
  auto st =
      stream_fd(in->get(), tree.root() / src, [&](const char* data, std::size_t size) -> Status {
        got += size;
        if (got > e.size) return make_error(std::string(src) + ": larger than expected");
        hasher.update(data, size);
        return write_all(out_fd, data, size, out_path);
      });
  if (!st) return st;
  proto::Digest d = hasher.finish();
  if (got != e.size || d != e.sha256) return make_error(mismatch(e, got, d));
  return {};
}

// A new staged file: owner read-write until set_metadata() gives the entry's mode.
UniqueFd create_staged(const fs::path& dest) {
  return UniqueFd(
      ::open(dest.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
}

// What stops staging on SIGTERM: nothing has been installed yet.
Error stopped_error() {
  return make_error("stopped before installing anything (staged files are kept)");
}

// The parent folders of `path` in the tree, made once per install pass. A file or symlink
// standing where the candidate has a folder is an applied entry that the candidate removes: it
// goes now (its deletion later finds it gone).
Status make_parent_dirs(const TreeFs& tree, std::string_view path,
                        std::unordered_set<std::string>& made_dirs) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return {};
  std::string dir(path.substr(0, slash));
  if (made_dirs.count(dir)) return {};
  auto made = tree.make_dirs(dir, /*replace_blockers=*/true, crash_point);
  if (!made) return made.error();
  made_dirs.insert(std::move(dir));
  return {};
}

// A folder standing where the candidate has a file holds only entries being removed (the
// candidate has nothing below a file): they go now, never followed through a symlink.
Status remove_folder_in_the_way(const TreeFs& tree, std::string_view path,
                                std::unordered_set<std::string>& made_dirs) {
  struct stat st;
  auto here = tree.lstat(path, st);
  if (!here) return here.error();
  if (!*here || !S_ISDIR(st.st_mode)) return {};
  crash_point();
  if (auto rm = tree.remove_tree(path); !rm) return rm;
  // Folders made in this pass may have been below it (not in a valid candidate; kept exact).
  std::erase_if(made_dirs, [&](const std::string& d) {
    return d.size() > path.size() && d.compare(0, path.size(), path) == 0 && d[path.size()] == '/';
  });
  return {};
}

// The snapshot a journaled candidate replaces (the journal's `previous`), and its manifests.
struct Previous {
  proto::Snapshot snapshot;
  ManifestSet manifests;
};

Result<Previous> previous_of(const StateStore& state, const Journal& j, std::size_t depth) {
  Previous out;
  out.snapshot.depth = depth;
  for (const auto& [name, d] : j.previous) {
    out.snapshot.partitions[name].manifest = d;
    auto m = state.load_manifest(d, name, depth);
    if (!m) return make_error("recovering the journal: " + m.message());
    out.manifests[name] = *m;
  }
  return out;
}

// The journaled candidate as an apply request, from `pending.snapshot` and `pending.pins` (both
// verified when they were accepted) and the stored manifests.
Result<ApplyRequest> journaled_request(const StateStore& state, const Journal& j) {
  auto bytes = read_file(state.pending_snapshot_path(), proto::kMaxEnvelopeBytes);
  if (!bytes) return make_error("recovering the journal: " + bytes.message());
  auto env = proto::decode_envelope(*bytes);
  if (!env) return make_error("recovering the journal: " + env.message());
  auto cand = proto::decode_snapshot(env->payload);
  if (!cand) return make_error("recovering the journal: " + cand.message());
  if (cand->serial != j.serial)
    return make_error("recovering the journal: pending snapshot has serial " +
                      std::to_string(cand->serial) + ", journal says " + std::to_string(j.serial));
  ApplyRequest req;
  if (!j.pins.empty()) {
    // The candidate's pins, stored before the journal (verified when they were accepted).
    auto pins_doc = read_file(state.pending_pins_path(), kMaxPinsBytes);
    if (!pins_doc) return make_error("recovering the journal: " + pins_doc.message());
    if (pins_id(*pins_doc) != j.pins)
      return make_error("recovering the journal: " + state.pending_pins_path().string() +
                        " is not the journal's pins " + j.pins);
    auto pins = decode_pins(*pins_doc);
    if (!pins) return make_error("recovering the journal: " + pins.message());
    cand = effective_snapshot(std::move(*cand), *pins);
    req.pins = std::move(*pins_doc);
  }
  spdlog::warn("recovering: resuming the interrupted apply of serial {}", j.serial);
  req.envelope = std::move(*bytes);
  auto cand_manifests = state.load_manifests(*cand);
  if (!cand_manifests) return make_error("recovering the journal: " + cand_manifests.message());
  req.candidate_manifests = std::move(*cand_manifests);
  req.candidate = std::move(*cand);
  return req;
}

// Files to fetch go in batches: the parent may serve them over several connections at once, many
// requests in flight on each (docs/performance.md, "Across a long link"), so a batch is large.
constexpr std::size_t kBatch = 2048;

}  // namespace

/// One run of stage(). Every file to install is produced under its staged name, from the first
/// source that has it: what a killed run staged, the tree itself (in place), a deleted file of
/// the same content, the fetcher's place(), the fetcher's bytes (docs/crash-safety.md, "Stage").
class Applier::Staging {
 public:
  Staging(Applier& applier, const TreeFs& tree, fs::path files, ApplyStats& stats)
      : a_(applier), tree_(tree), files_(std::move(files)), stats_(stats) {}

  Status run(const Plan& plan) {
    auto wanted = wanted_files(plan);
    if (!wanted) return wanted.error();
    keep_leftovers(*wanted);
    find_local_copies(plan);
    for (const Entry* e : *wanted) {
      if (a_.stopping()) return stopped_error();
      if (auto st = stage_entry(staged_name(*e), *e); !st) return st;
    }
    return download_batch();
  }

 private:
  /// A file whose bytes come from the fetcher. Each streams through SHA-256 into its staged file
  /// and is checked before it counts. A staged file is open only while its bytes arrive (a batch
  /// would otherwise hold thousands of descriptors): opened at its first byte, closed at its last.
  struct Download {
    const Entry* entry;
    fs::path dest;
    UniqueFd fd;  ///< open while bytes arrive
    proto::Sha256 hasher;
    std::uint64_t got;
    std::uint64_t offset = 0;  ///< staged by an earlier run (already in `hasher` and `got`)
    bool finished = false;     ///< every byte written, and the entry's metadata given
  };
  /// Each file to produce, in plan order: runs are repeatable. Their staged names are computed
  /// when used, not held (an initial sync wants every entry of the tree).
  using Wanted = std::vector<const Entry*>;

  Result<Wanted> wanted_files(const Plan& plan);
  void keep_leftovers(const Wanted& wanted);
  void find_local_copies(const Plan& plan);
  Status stage_entry(const std::string& name, const Entry& e);
  Result<bool> reuse_leftover(const Entry& e, const fs::path& dest);
  Result<bool> found_in_place(const Entry& e);
  Status copy_or_download(const Entry& e, const fs::path& dest);
  Status queue(std::unique_ptr<Download> download);
  Status download_batch();
  Status receive(Download& dl, const char* data, std::size_t size);
  Status append(Download& dl, const char* data, std::size_t size);
  Status verify(Download& dl);

  Applier& a_;
  const TreeFs& tree_;
  const fs::path files_;
  ApplyStats& stats_;
  std::unordered_set<std::string> leftovers_;  ///< staged by a killed run, still wanted
  /// Deleted files whose content a new entry needs: they are copied, not fetched again.
  std::unordered_map<proto::Digest, const std::string*, DigestHash> local_;
  std::vector<std::unique_ptr<Download>> batch_;
};

// The files to stage; symlinks (made at install) and retouches (content intact in the tree)
// get their action now.
Result<Applier::Staging::Wanted> Applier::Staging::wanted_files(const Plan& plan) {
  Wanted wanted;
  for (const auto& p : plan.partitions) {
    for (const Entry* e : p.installs) {
      if (e->link)
        a_.actions_[e] = Action::kSymlink;
      else
        wanted.push_back(e);
    }
    for (const Entry* e : p.retouch) {
      struct stat st;
      auto exists = tree_.lstat(e->path(), st);
      if (!exists) return exists.error();
      if (*exists && S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) == e->size)
        a_.actions_[e] = Action::kRetouch;
      else
        wanted.push_back(e);  // the tree lost it: fetch it again
    }
  }
  return wanted;
}

// What a killed run staged is kept if it is still wanted (and verified before use); the rest
// goes. Memory follows what staging holds, not what is wanted.
void Applier::Staging::keep_leftovers(const Wanted& wanted) {
  std::unordered_set<std::string> on_disk;
  std::error_code ec;
  for (const auto& de : fs::directory_iterator(files_, ec))
    on_disk.insert(de.path().filename().string());
  if (on_disk.empty()) return;
  for (const Entry* e : wanted) {
    auto it = on_disk.find(staged_name(*e));
    if (it != on_disk.end()) leftovers_.insert(std::move(on_disk.extract(it).value()));
  }
  for (const auto& name : on_disk) ::unlink((files_ / name).c_str());
}

void Applier::Staging::find_local_copies(const Plan& plan) {
  std::unordered_set<proto::Digest, DigestHash> new_content;
  for (const auto& p : plan.partitions)
    for (const Entry* e : p.installs)
      if (!e->link) new_content.insert(e->sha256);
  for (const auto& p : plan.partitions)
    for (const auto& [digest, path] : p.reusable)
      if (new_content.count(digest)) local_.emplace(digest, &path);
}

Status Applier::Staging::stage_entry(const std::string& name, const Entry& e) {
  const fs::path dest = files_ / name;
  if (leftovers_.count(name)) {
    auto reused = reuse_leftover(e, dest);
    if (!reused) return reused.error();
    if (*reused) return {};
    ::unlink(dest.c_str());
  }
  auto in_place = found_in_place(e);
  if (!in_place) return in_place.error();
  if (*in_place) return {};
  // Written straight under its staged name: a leftover of a killed run is re-verified above
  // before any use, so no temporary name (and no rename) is needed.
  crash_point();
  auto placed = a_.fetcher_.place(e, dest);
  if (!placed) return placed.error();
  if (!*placed) return copy_or_download(e, dest);
  a_.actions_[&e] = Action::kRename;
  return {};
}

// A leftover of a killed run: whole, it is kept if it still verifies; partial (a download an
// earlier run did not finish), its bytes are hashed again and the rest is asked for from where
// it stopped, the whole file verified when complete. False when it is of no use.
Result<bool> Applier::Staging::reuse_leftover(const Entry& e, const fs::path& dest) {
  struct stat st;
  const bool partial = ::lstat(dest.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
                       static_cast<std::uint64_t>(st.st_size) < e.size;
  if (partial) {
    auto resumed = std::make_unique<Download>(Download{&e, dest, {}, {}, 0});
    auto read = stream_file(dest, [&](const char* data, std::size_t size) -> Status {
      resumed->hasher.update(data, size);
      resumed->got += size;
      return {};
    });
    if (!read || resumed->got >= e.size) return false;
    resumed->offset = resumed->got;
    if (auto st2 = queue(std::move(resumed)); !st2) return st2.error();
    return true;
  }
  std::uint64_t size = 0;
  auto d = hash_file(dest, &size);
  if (!d || size != e.size || *d != e.sha256) return false;
  UniqueFd fd(::open(dest.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid() || !set_metadata(fd.get(), e, dest)) return false;
  a_.actions_[&e] = Action::kRename;
  ++stats_.reused_files;
  return true;
}

// Already in place (a killed run installed it, or the tree came from rsync): checked by hash.
// Never through a symlink: a folder that became one (or the reverse) holds other files. Not for
// a repair: the scrubber found the path damaged.
Result<bool> Applier::Staging::found_in_place(const Entry& e) {
  if (a_.repairing_) return false;
  struct stat st;
  auto here = tree_.lstat(e.path(), st);
  if (!here) return here.error();
  if (!*here || !matches_entry(st, e)) return false;
  auto d = hash_tree_file(tree_, e.path());
  if (!d || *d != e.sha256) return false;
  a_.actions_[&e] = Action::kInPlace;
  ++stats_.reused_files;
  return true;
}

// A deleted file of the same content is copied (and hashed on the way); otherwise, or when that
// copy is gone or damaged, the file joins the batch of downloads (its staged file is made at its
// first byte).
Status Applier::Staging::copy_or_download(const Entry& e, const fs::path& dest) {
  if (auto it = local_.find(e.sha256); it != local_.end()) {
    UniqueFd fd(create_staged(dest));
    if (!fd.valid()) return make_error(errno_message(dest, errno));
    if (copy_verified(tree_, *it->second, fd.get(), dest, e) && set_metadata(fd.get(), e, dest)) {
      ++stats_.reused_files;
      a_.actions_[&e] = Action::kRename;
      return {};
    }
    fd.reset();
    ::unlink(dest.c_str());
  }
  return queue(std::make_unique<Download>(Download{&e, dest, {}, {}, 0}));
}

Status Applier::Staging::queue(std::unique_ptr<Download> download) {
  batch_.push_back(std::move(download));
  return batch_.size() >= kBatch ? download_batch() : Status{};
}

// Fetches the batch, verifies each file, and gives each its mode and mtime.
Status Applier::Staging::download_batch() {
  std::vector<FetchJob> jobs;
  jobs.reserve(batch_.size());
  for (auto& d : batch_) {
    Download* dl = d.get();
    jobs.push_back(FetchJob{
        dl->entry,
        [this, dl](const char* data, std::size_t size) { return receive(*dl, data, size); },
        {},
        dl->offset});
  }
  Status result = jobs.empty() ? Status() : a_.fetcher_.fetch_many(jobs);
  for (auto& dl : batch_) dl->fd.reset();
  for (std::size_t i = 0; i < batch_.size() && result; ++i) result = verify(*batch_[i]);
  // A download the parent or a stop cut short stays, to be resumed by the next run (which
  // verifies the whole file before any use); one whose bytes contradicted the manifest goes.
  if (!result)
    for (auto& dl : batch_)
      if (!a_.actions_.count(dl->entry) && (a_.content_rejected_ || dl->got == 0))
        ::unlink(dl->dest.c_str());
  batch_.clear();
  return result;
}

// The sink of one download: bytes beyond the entry's size are refused (the parent contradicts
// its signed entry), the rest hashed and appended to the staged file.
Status Applier::Staging::receive(Download& dl, const char* data, std::size_t size) {
  if (a_.stopping()) return stopped_error();
  if (dl.got + size > dl.entry->size) {
    a_.content_rejected_ = true;
    return make_error(std::string(dl.entry->path()) + ": more bytes than the manifest's " +
                      std::to_string(dl.entry->size));
  }
  if (!dl.fd.valid()) {
    // A resumed download appends to what an earlier run staged; a new one starts its file.
    dl.fd = dl.got > 0
                ? UniqueFd(::open(dl.dest.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW))
                : create_staged(dl.dest);
    if (!dl.fd.valid()) return make_error(errno_message(dl.dest, errno));
  }
  // A large file has a step in its middle: a kill there leaves exactly its first half staged,
  // whatever the size of the chunks (docs/crash-safety.md, "How it is tested").
  const std::uint64_t half = dl.entry->size / 2;
  if (dl.entry->size >= kMidFileCrashBytes && dl.got < half && dl.got + size >= half) {
    const auto first = static_cast<std::size_t>(half - dl.got);
    if (auto st = append(dl, data, first); !st) return st;
    crash_point();
    data += first;
    size -= first;
  }
  return append(dl, data, size);
}

// The file's last byte gives it the entry's mode and mtime on the descriptor it was written
// through (an unverified file with them is harmless: nothing is installed before verify(), and a
// killed run's leftover is hashed again before any use).
Status Applier::Staging::append(Download& dl, const char* data, std::size_t size) {
  dl.hasher.update(data, size);
  dl.got += size;
  auto st = write_all(dl.fd.get(), data, size, dl.dest);
  if (st && dl.got == dl.entry->size) {
    st = set_metadata(dl.fd.get(), *dl.entry, dl.dest);
    dl.finished = st.ok();
  }
  if (dl.got == dl.entry->size) dl.fd.reset();
  return st;
}

// A finished download: its size and SHA-256 must be the entry's, and it has its metadata (an
// empty file, which no byte opened, is made now).
Status Applier::Staging::verify(Download& dl) {
  const proto::Digest digest = dl.hasher.finish();
  if (dl.got != dl.entry->size || digest != dl.entry->sha256) {
    a_.content_rejected_ = true;
    return make_error(mismatch(*dl.entry, dl.got, digest));
  }
  if (!dl.finished) {
    UniqueFd fd(dl.got > 0 ? UniqueFd(::open(dl.dest.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW))
                           : create_staged(dl.dest));
    if (!fd.valid()) return make_error(errno_message(dl.dest, errno));
    if (auto st = set_metadata(fd.get(), *dl.entry, dl.dest); !st) return st;
  }
  ++stats_.fetched_files;
  stats_.fetched_bytes += dl.got - dl.offset;
  if (dl.offset > 0) ++stats_.resumed_files;
  a_.actions_[dl.entry] = Action::kRename;
  return {};
}

Status Applier::stage(const Plan& plan, ApplyStats& stats) {
  auto opened = TreeFs::open(state_.tree());
  if (!opened) return opened.error();
  const fs::path files = state_.staging_dir() / "files";
  if (auto st = make_dirs(files); !st) return st;
  if (auto st = make_dirs(state_.staging_dir() / "links"); !st) return st;
  Staging staging(*this, *opened, files, stats);
  return staging.run(plan);
}

Status Applier::install(const Plan& plan) {
  auto opened = TreeFs::open(state_.tree());
  if (!opened) return opened.error();
  const std::string root(proto::kRootPartition);
  MadeDirs made_dirs;
  // Other files, then index files, of every partition; then the root partition likewise.
  for (bool root_pass : {false, true}) {
    for (bool index_pass : {false, true}) {
      for (const auto& p : plan.partitions) {
        if ((p.partition == root) != root_pass) continue;
        for (const auto* list : {&p.installs, &p.retouch})
          for (const Entry* e : *list)
            if (e->index == index_pass)
              if (auto st = install_entry(*opened, *e, made_dirs); !st) return st;
      }
    }
  }
  return {};
}

// Every step below resolves its folder from the tree's descriptor without following a symlink
// (docs/crash-safety.md, "Type changes"): a path whose folder became a symlink is never entered.
Status Applier::install_entry(const TreeFs& tree, const Entry& e, MadeDirs& made_dirs) {
  auto it = actions_.find(&e);
  if (it == actions_.end() || it->second == Action::kInPlace) return {};
  const std::string_view path = e.path();
  if (auto st = make_parent_dirs(tree, path, made_dirs); !st) return st;
  if (it->second == Action::kRetouch) {
    crash_point();
    auto fd = open_tree_file(tree, path);
    if (!fd) return fd.error();
    return set_metadata(fd->get(), e, tree.root() / path);
  }
  fs::path from;
  if (it->second == Action::kSymlink) {
    from = state_.staging_dir() / "links" / staged_name(e);
    ::unlink(from.c_str());
    crash_point();
    if (::symlink(std::string(e.target()).c_str(), from.c_str()) != 0)
      return make_error(errno_message(from, errno));
  } else {
    from = state_.staging_dir() / "files" / staged_name(e);
  }
  crash_point();
  // A rename replaces a file or a symlink in one step; a folder in its way refuses it, and goes
  // first (no lstat per file for the rare folder).
  auto renamed = tree.rename_into(from, path);
  if (!renamed || *renamed) return renamed ? Status() : renamed.error();
  if (auto st = remove_folder_in_the_way(tree, path, made_dirs); !st) return st;
  crash_point();
  renamed = tree.rename_into(from, path);
  if (!renamed) return renamed.error();
  if (!*renamed)
    return make_error("installing " + (tree.root() / path).string() + ": a folder stands there");
  return {};
}

// syncfs of the tree's file system, and of state_dir's when it is another one: a barrier for a
// whole batch of writes and renames, where an fsync per file would cost a journal commit each.
Status Applier::sync_state_and_tree() {
  if (auto st = sync_filesystem(state_.tree()); !st) return st;
  struct stat tree_st, state_st;
  if (::stat(state_.tree().c_str(), &tree_st) == 0 &&
      ::stat(state_.state_dir().c_str(), &state_st) == 0 && tree_st.st_dev == state_st.st_dev)
    return {};
  return sync_filesystem(state_.state_dir());
}

Status Applier::commit(const ApplyRequest& req) {
  crash_point();
  if (auto st = state_.publish_manifests(req.candidate); !st) return st;
  crash_point();
  if (auto st = sync_state_and_tree(); !st) return st;
  // The pins of the candidate's serial, then its envelope: one of the two is the commit point
  // (docs/crash-safety.md). A new serial commits with the envelope's rename: its pins file is
  // named for it and read only once the envelope says so. The applied serial again (only its
  // pins change) commits with the pins' rename (or unlink); the envelope is the same bytes.
  crash_point();
  if (auto st = state_.commit_pins(req.candidate.serial, req.pins); !st) return st;
  crash_point();
  if (auto st = state_.save_applied(req.envelope); !st) return st;  // fsynced
  state_.share_committed(req.candidate, req.candidate_manifests);
  // The served copies need not be durable: recover() rewrites them from the committed ones. The
  // pins first: a child that reads the new envelope finds them.
  crash_point();
  if (auto st = state_.publish_pins(req.candidate.serial, req.pins); !st) return st;
  crash_point();
  return write_file_atomic(state_.published_snapshot_path(), req.envelope, 0644, false);
}

Status Applier::finish(const proto::Snapshot& candidate, const Plan& plan,
                       const std::optional<proto::Snapshot>& previous, ApplyStats& stats,
                       const std::set<proto::Digest>& keep_manifests) {
  auto opened = TreeFs::open(state_.tree());
  if (!opened) return opened.error();
  const TreeFs& tree = *opened;
  std::set<std::string, std::greater<>> parents;  // deepest first
  for (const auto& p : plan.partitions) {
    for (const auto& path : p.deletes) {
      // Never through a symlink: below a folder that became a symlink (or a file) the old entry
      // is already gone, and the name now leads elsewhere. A folder standing there holds the
      // candidate's entries.
      struct stat st;
      auto here = tree.lstat(path, st);
      if (!here) return here.error();
      if (*here && !S_ISDIR(st.st_mode)) {
        crash_point();
        if (auto gone = tree.unlink(path); !gone) return gone.error();
      }
      ++stats.deleted;
      for (std::size_t slash = path.rfind('/'); slash != std::string::npos && slash > 0;
           slash = path.rfind('/', slash - 1))
        parents.insert(path.substr(0, slash));
    }
  }
  // Prune folders left empty, deepest first (sorting descending puts "a/b" before "a"); a name
  // that is now a symlink or a file is left alone.
  for (const auto& dir : parents)
    if (tree.rmdir_if_empty(dir)) crash_point();
  // The deletions are made durable before the journal goes: a later fsync of state_dir (a held
  // record, an approval) would make its removal durable and a power cut could then bring the
  // deleted files back with no journal to delete them again (docs/crash-safety.md).
  crash_point();
  if (auto st = sync_state_and_tree(); !st) return st;
  crash_point();
  if (auto st = state_.clear_journal(); !st) return st;
  discard_staging();
  state_.collect_manifests(candidate, previous ? &*previous : nullptr, keep_manifests);
  // The previous serial's pins stay served beside the new ones, for a child that read the
  // previous envelope a moment ago (as its manifests do).
  state_.collect_pins(candidate.serial, previous ? previous->serial : candidate.serial);
  return {};
}

void Applier::discard_staging() {
  for (const char* d : {"files", "links"})
    if (auto st = remove_tree(state_.staging_dir() / d); !st)
      spdlog::warn("cannot clean staging: {}", st.message());
}

Result<ApplyStats> Applier::apply(const ApplyRequest& req, const Plan& plan) {
  actions_.clear();
  content_rejected_ = false;
  ApplyStats stats;
  for (const auto& p : plan.partitions) {
    stats.changed += p.replaced;
    stats.added += p.installs.size() - p.replaced;
  }
  if (auto st = stage(plan, stats); !st) return st.error();
  Journal journal{req.candidate.serial, pins_id(req.pins), {}};
  if (req.applied)
    for (const auto& [name, ref] : req.applied->partitions) journal.previous[name] = ref.manifest;
  crash_point();
  if (auto st = write_file_atomic(state_.pending_snapshot_path(), req.envelope, 0644, false); !st)
    return st.error();
  // The candidate's pins, stored before the journal that needs them.
  if (!req.pins.empty()) {
    crash_point();
    if (auto st = write_file_atomic(state_.pending_pins_path(), req.pins, 0644, false); !st)
      return st.error();
  }
  // One barrier makes the staged files, the candidate (and its pins) and its stored manifests
  // durable; then the journal that names them, fsynced on its own: after a power cut a journal is
  // whole and all it names is there, or there is none and nothing was installed
  // (docs/crash-safety.md).
  crash_point();
  if (auto st = sync_state_and_tree(); !st) return st.error();
  crash_point();
  if (auto st = state_.save_journal(journal); !st) return st.error();
  if (auto st = install(plan); !st) return st.error();
  if (auto st = commit(req); !st) return st.error();
  if (auto st = finish(req.candidate, plan, req.applied, stats, req.keep_manifests); !st)
    return st.error();
  return stats;
}

Status Applier::repair(std::vector<const proto::Entry*> refetch,
                       std::vector<const proto::Entry*> retouch) {
  actions_.clear();
  content_rejected_ = false;
  Plan plan;  // one partition, not the root one: index files are still installed last
  PartitionPlan& p = plan.partitions.emplace_back();
  p.partition = "(repair)";
  p.installs = std::move(refetch);
  p.retouch = std::move(retouch);
  ApplyStats stats;
  repairing_ = true;
  Status st = stage(plan, stats);
  repairing_ = false;
  if (st) st = install(plan);
  if (st) st = sync_filesystem(state_.tree());
  discard_staging();
  return st;
}

// The served copies of the committed snapshot and its pins, rewritten (pins first).
Status Applier::republish(const Applied& a) {
  if (auto st = state_.publish_manifests(a.snapshot); !st) return st;
  if (auto st = state_.publish_pins(a.snapshot.serial, a.pins_document); !st) return st;
  return write_file_atomic(state_.published_snapshot_path(), a.envelope, 0644, false);
}

// A power cut may have lost the served copy of a committed snapshot: put it back.
Status Applier::restore_served(const Applied& a) {
  auto served = read_file(state_.published_snapshot_path(), proto::kMaxEnvelopeBytes);
  auto served_pins = read_file(state_.published_pins_path(a.snapshot.serial), kMaxPinsBytes);
  const bool pins_ok =
      a.pins_document.empty() ? !served_pins : served_pins && *served_pins == a.pins_document;
  if (served && *served == a.envelope && pins_ok) return {};
  spdlog::warn("recovering: rewriting the served snapshot (serial {})", a.snapshot.serial);
  return republish(a);
}

// Committed: only the deletions (and the served copies) may be missing.
Status Applier::finish_committed(const Journal& j, const Applied& applied) {
  const auto& cand = applied.snapshot;
  spdlog::warn("recovering: serial {} was committed; finishing its deletions", j.serial);
  auto previous = previous_of(state_, j, cand.depth);
  if (!previous) return previous.error();
  auto cand_manifests = state_.load_manifests(cand);
  if (!cand_manifests) return cand_manifests.error();
  if (auto st = republish(applied); !st) return st;
  Plan plan = make_plan(previous->manifests, *cand_manifests);
  ApplyStats stats;
  return finish(cand, plan, previous->snapshot, stats);
}

// Not committed: the journaled candidate (it was verified and approved) is installed to the end.
Status Applier::resume_journaled(const Journal& j, const std::optional<Applied>& applied) {
  auto req = journaled_request(state_, j);
  if (!req) return req.error();
  auto previous = previous_of(state_, j, req->candidate.depth);
  if (!previous) return previous.error();
  if (applied) req->applied = applied->snapshot;
  Plan plan = make_plan(previous->manifests, req->candidate_manifests);
  auto stats = apply(*req, plan);
  if (!stats) return stats.error();
  return {};
}

Result<bool> Applier::recover() {
  auto journal = state_.load_journal();
  if (!journal) return journal.error();
  auto applied = state_.load_applied();
  if (!applied) return applied.error();
  if (!*journal) {
    if (*applied)
      if (auto st = restore_served(**applied); !st) return st.error();
    return false;
  }
  const Journal& j = **journal;
  // The journal names the candidate by its serial and its pins: with the same serial applied
  // and other pins, the candidate (a re-evaluation of the applied serial) is not committed.
  const bool committed = *applied && (*applied)->snapshot.serial == j.serial &&
                         pins_id((*applied)->pins_document) == j.pins;
  const Status st = committed ? finish_committed(j, **applied) : resume_journaled(j, *applied);
  if (!st) return st.error();
  return true;
}

}  // namespace tiersync::sync
