// tier0: the source folder becomes a signed snapshot, partition by partition under the guard.

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <set>

#include "daemon/node/cycle.h"
#include "daemon/node/node.h"
#include "daemon/ops/notify.h"
#include "daemon/sync/apply.h"
#include "daemon/sync/fs.h"
#include "daemon/sync/history.h"
#include "daemon/sync/scan.h"
#include "proto/dsse.h"
#include "proto/manifest.h"
#include "proto/path.h"
#include "proto/printable.h"

namespace tiersync::node {

namespace {

namespace fs = std::filesystem;

// Files reach the tree as copies of what was hashed, never as links into the source: a builder
// who edits a file of source.dir in place, or swaps it (or a folder above it) for a symlink while
// tier0 publishes, cannot change what lands in the tree (docs/security.md, "The source folder").
// Each file is opened with no symlink followed, must still be the scanned one, is copied (a
// reflink where the file system can: then nothing is copied) and the copy is hashed: only bytes
// that match the manifest's SHA-256 are placed.
class SourceFetcher final : public sync::Fetcher {
 public:
  SourceFetcher(fs::path source, const std::vector<sync::ScannedFile>& scanned)
      : source_(std::move(source)), scanned_(scanned) {}

  Result<bool> place(const proto::Entry& e, const fs::path& dest) override {
    ops::note_progress();  // a file placed: feeds the watchdog
    // Finishing a killed publish, nothing was scanned: fetch(), and the applier's hash decides.
    if (scanned_.empty()) return false;
    auto it =
        std::lower_bound(scanned_.begin(), scanned_.end(), e.path(),
                         [](const sync::ScannedFile& f, std::string_view p) { return f.path < p; });
    if (it == scanned_.end() || it->path != e.path()) return changed(e, "not scanned");
    auto dir = source_dir();
    if (!dir) return dir.error();
    auto in = sync::open_file_beneath(*dir, e.path(), source_);
    if (!in) return changed(e, in.message());
    struct stat st;
    if (::fstat(in->get(), &st) != 0 || !sync::same_file(st, *it))
      return changed(e, "not the file that was scanned");
    sync::UniqueFd out(
        ::open(dest.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!out.valid()) return make_error(sync::errno_message(dest, errno));
    // One byte more than the entry: a file that grew is seen as such, and a file that keeps
    // growing cannot hold the publish.
    auto copied = sync::copy_and_hash(in->get(), out.get(), dest, e.size + 1);
    sync::crash_point();  // copied, neither checked nor given its metadata
    if (!copied) {
      ::unlink(dest.c_str());
      return copied.error();
    }
    if (copied->size != e.size || copied->sha256 != e.sha256) {
      ::unlink(dest.c_str());
      mismatched_.emplace_back(e.path());
      return changed(e, "its bytes no longer match the SHA-256 that was scanned");
    }
    const timespec times[2] = {{e.mtime, 0}, {e.mtime, 0}};
    if (::fchmod(out.get(), e.mode) != 0 || ::futimens(out.get(), times) != 0) {
      const int err = errno;
      ::unlink(dest.c_str());
      return make_error(sync::errno_message(dest, err));
    }
    return true;
  }

  /// Files whose bytes contradicted their scanned digest: the hash cache must not give it again.
  const std::vector<std::string>& mismatched() const { return mismatched_; }

  Status fetch(const proto::Entry& e, const sync::ByteSink& sink) override {
    auto dir = source_dir();
    if (!dir) return dir.error();
    auto in = sync::open_file_beneath(*dir, e.path(), source_);
    if (!in) return in.error();
    return sync::stream_fd(in->get(), source_ / std::string(e.path()),
                           [&sink](const char* data, std::size_t size) {
                             ops::note_progress();  // a chunk copied: feeds the watchdog
                             return sink(data, size);
                           });
  }

 private:
  Error changed(const proto::Entry& e, const std::string& why) const {
    return make_error((source_ / std::string(e.path())).string() + ": changed while publishing (" +
                      why + "); the next cycle picks it up");
  }

  // source.dir itself is the operator's (it may be a symlink); only what lies below is walked
  // without following symlinks. Opened once per publish.
  Result<int> source_dir() {
    if (!dir_.valid()) {
      dir_ = sync::UniqueFd(::open(source_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!dir_.valid()) return make_error(sync::errno_message(source_, errno));
    }
    return dir_.get();
  }

  fs::path source_;
  const std::vector<sync::ScannedFile>& scanned_;
  sync::UniqueFd dir_;
  std::vector<std::string> mismatched_;
};

std::string_view basename(std::string_view path) {
  auto slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

// mtime in whole seconds, rounded down (also before 1970).
std::int64_t seconds_of(std::int64_t ns) {
  return ns >= 0 ? ns / 1'000'000'000 : -((-ns + 999'999'999) / 1'000'000'000);
}

// The candidate manifest of every partition present in the source.
Result<sync::ManifestSet> build_manifests(const ops::Config& config, std::size_t depth,
                                          const std::vector<sync::ScannedFile>& files,
                                          sync::HashCache& cache) {
  std::map<std::string, std::shared_ptr<proto::Manifest>> parts;
  std::set<std::string_view> index_names(config.index_files.begin(), config.index_files.end());
  for (const auto& f : files) {
    std::string part(proto::partition_of(f.path, depth));
    auto& m = parts[part];
    if (!m) {
      m = std::make_shared<proto::Manifest>();
      m->partition = part;
    }
    if (f.link) {
      m->entries.push_back(proto::Entry::symlink(f.path, f.target));
      continue;
    }
    ops::note_progress();  // a file hashed (or found in the cache): feeds the watchdog
    auto digest = cache.digest_of(config.source_dir, f);
    if (!digest) return make_error("source changed during the scan: " + digest.message());
    // Published masked (docs/security.md, "Modes"): a setuid or world-writable file at the
    // source arrives everywhere as at most 0755.
    const std::uint32_t mode = f.mode & proto::kPublishableModeBits;
    m->entries.push_back(proto::Entry::file(f.path, f.size, *digest, seconds_of(f.mtime_ns), mode,
                                            index_names.count(basename(f.path)) > 0));
  }
  // The root partition always exists: relays install it last.
  auto& root = parts[std::string(proto::kRootPartition)];
  if (!root) {
    root = std::make_shared<proto::Manifest>();
    root->partition = std::string(proto::kRootPartition);
  }
  sync::ManifestSet out;
  for (auto& [name, m] : parts) {
    if (auto st = proto::validate_manifest(*m, depth); !st) return st.error();
    out[name] = std::move(m);
  }
  return out;
}

// What the guard weighs for one partition: sizes, the window's baseline and the damage.
sync::PartitionChange measure_change(const std::string& name, const proto::Manifest* before,
                                     const proto::Manifest* after,
                                     const sync::GuardHistory& history, std::int64_t now,
                                     const ops::Config& config) {
  return sync::measure_change(name, before, after, history, now, config.guard);
}

bool covered(const std::vector<sync::Approval>& approvals, const std::string& partition,
             const std::string& from, const std::string& to, std::int64_t now) {
  return sync::find_covering(approvals, partition, from, to, now) != nullptr;
}

// A layout change's identity for approvals: the whole candidate, partition by partition.
std::string layout_change_id(const std::map<std::string, proto::Digest>& digests) {
  std::string lines;
  for (const auto& [name, d] : digests) lines += name + "=" + proto::to_hex(d) + "\n";
  return "layout:" + proto::to_hex(proto::sha256(lines));
}

}  // namespace

std::unique_ptr<sync::Fetcher> source_fetcher(const fs::path& source_dir) {
  static const std::vector<sync::ScannedFile> kNothingScanned;  // copies, never links
  return std::make_unique<SourceFetcher>(source_dir, kNothingScanned);
}

namespace {

// The SHA-256 of each candidate manifest's encoding, by partition: it says whether a partition
// changed. The bytes are not kept (about as large as the entries): a manifest that enters the
// snapshot is encoded again to be stored (docs/performance.md, "Where the memory goes").
using Digests = std::map<std::string, proto::Digest>;

// Step 1, re-sign due: at half the TTL, and at once when the signing keys changed (a rotation):
// relays that already trust only the new key must not wait days for it.
bool resign_due(const sync::Applied& applied, const std::vector<proto::PrivateKey>& keys,
                std::int64_t now, std::int64_t ttl) {
  if (now - applied.snapshot.created >= ttl / 2) return true;
  std::set<std::string> keyids;
  for (const auto& key : keys) keyids.insert(key.public_key().keyid());
  auto env = proto::decode_envelope(applied.envelope);
  std::set<std::string> signed_by;
  if (env)
    for (const auto& sig : env->signatures) signed_by.insert(sig.keyid);
  if (signed_by == keyids) return false;
  spdlog::info("signing keys changed: re-signing the published snapshot");
  return true;
}

// The source's fingerprint file: written once a cycle ends with the tree matching the source.
class SourcePrint {
 public:
  SourcePrint(const ops::Config& config, const sync::StateStore& state,
              const sync::ScanResult& scan)
      : file_(state.state_dir() / "source.print") {
    std::string salt = config.layout;
    for (const auto& name : config.index_files) salt += "\n" + name;
    print_ = sync::scan_fingerprint(scan, salt);
  }
  /// The source is exactly as it was when the published snapshot was made from it.
  bool unchanged() const {
    auto last = sync::read_file(file_, 4096);
    return last && *last == print_;
  }
  void forget() const {
    sync::crash_point();
    ::unlink(file_.c_str());
  }
  void remember() const {
    sync::crash_point();
    if (auto st = sync::write_file_atomic(file_, print_, 0644, false); !st)
      spdlog::warn("cannot record the source's fingerprint: {}", st.message());
  }
  /// An incremental publish cannot vouch for the whole source: the next full walk computes.
  static void discard(const sync::StateStore& state) {
    sync::crash_point();
    ::unlink((state.state_dir() / "source.print").c_str());
  }

 private:
  fs::path file_;
  std::string print_;
};

// Step 2, the candidate: every partition's manifest from the (sorted) scan, hashed through the
// hash cache, and the digest of its encoding.
struct Candidate {
  sync::ManifestSet manifests;
  Digests digests;
  sync::HashCache cache;  // forgets what the fetcher finds rewritten in place
};

// The partitions a publish looked at: every one (nullptr), or an incremental publish's.
using Scope = const std::set<std::string>*;

void save_hash_cache(const sync::HashCache& cache, const sync::StateStore& state, std::size_t depth,
                     Scope scope) {
  if (auto st = cache.save_partitions(state.hash_cache_dir(), depth, scope); !st)
    spdlog::warn("cannot save the hash cache: {}", st.message());
}

Result<Candidate> build_candidate(const ops::Config& config, std::size_t depth,
                                  const sync::StateStore& state,
                                  const std::vector<sync::ScannedFile>& files, Scope scope,
                                  const proto::Snapshot* published) {
  sync::HashCache::migrate_single_file(state.hash_cache_path(), state.hash_cache_dir(), depth);
  std::string cache_warning;
  Candidate c{
      {}, {}, sync::HashCache::load_partitions(state.hash_cache_dir(), scope, &cache_warning)};
  if (!cache_warning.empty()) spdlog::warn("{}", cache_warning);
  c.cache.expect(files.size());
  auto manifests = build_manifests(config, depth, files, c.cache);
  if (!manifests) return manifests.error();
  c.manifests = std::move(*manifests);
  if (c.cache.needs_save()) save_hash_cache(c.cache, state, depth, scope);
  // Each manifest is stored as soon as it is encoded (the store is content-addressed: one that
  // the guard then holds, or a publish that fails, leaves a file that the next commit's
  // collection removes), so it is encoded once and never held whole with the others. One that is
  // already published was stored and made durable before its commit: its size is checked (a
  // power cut can leave a name without bytes), not its bytes.
  for (const auto& [name, m] : c.manifests) {
    const std::string bytes = proto::encode_manifest(*m);
    const proto::Digest digest = proto::sha256(bytes);
    bool is_published = false;
    if (published) {
      auto ref = published->partitions.find(name);
      is_published = ref != published->partitions.end() && ref->second.manifest == digest &&
                     state.has_manifest_of_size(digest, bytes.size());
    }
    if (!is_published && !state.has_manifest_bytes(digest, bytes))
      if (auto st = state.store_manifest(digest, bytes); !st) return st.error();
    c.digests[name] = digest;
  }
  return c;
}

// Whether the candidate differs from the published snapshot, partition by partition (those of
// `scope` only: the others were not looked at).
bool differs(const proto::Snapshot& prev, const Digests& digests, bool layout_changed,
             Scope scope) {
  if (scope) {
    for (const auto& name : *scope) {
      auto it = digests.find(name);
      auto ref = prev.partitions.find(name);
      if ((it == digests.end()) != (ref == prev.partitions.end())) return true;
      if (it != digests.end() && it->second != ref->second.manifest) return true;
    }
    return false;
  }
  bool differs = layout_changed || prev.partitions.size() != digests.size();
  for (const auto& [name, ref] : prev.partitions) {
    auto it = digests.find(name);
    differs = differs || it == digests.end() || it->second != ref.manifest;
  }
  return differs;
}

// Step 3, the guard: what it weighs for this publish, and what it lets through.
struct GuardPass {
  GuardPass(const ops::Config& c, std::size_t d, std::int64_t n, const sync::Applied* a,
            const sync::ManifestSet& am, const Candidate& cand, Cycle& cycle)
      : config(c),
        depth(d),
        now(n),
        applied(a),
        applied_manifests(am),
        candidate(cand),
        guard(c.guard),
        approvals(cycle.live_approvals(n)),
        layout_changed(a && a->snapshot.layout != c.layout) {
    std::string warning;
    history = sync::GuardHistory::load(cycle.state().guard_history_path(), &warning);
    if (!warning.empty()) spdlog::warn("{}", warning);
  }

  const ops::Config& config;
  std::size_t depth;
  std::int64_t now;
  const sync::Applied* applied;  // null on the first publish
  const sync::ManifestSet& applied_manifests;
  const Candidate& candidate;
  sync::Guard guard;
  std::vector<sync::Approval> approvals;
  sync::GuardHistory history;
  bool layout_changed;

  std::vector<sync::HeldPartition> held;
  std::set<std::string> approved_now;  // partitions whose approved change this serial publishes
  std::set<std::string> names;         // every partition, applied or candidate
  sync::ManifestSet next_manifests;
};

// A layout change is guarded like any other change: each old partition's entries are counted
// against the candidate, wherever the new layout puts them. Partitions cannot be held one by one
// across layouts, so any hold keeps the whole published snapshot (true: something is held).
bool guard_layout_change(GuardPass& g) {
  const std::string to = layout_change_id(g.candidate.digests);
  for (const auto& [name, old] : g.applied_manifests) {
    const proto::Manifest after = sync::entries_kept(*old, g.candidate.manifests, g.depth);
    const std::string from =
        sync::change_end(&g.applied->snapshot.partitions.at(name).manifest, sync::kNoManifest);
    sync::PartitionChange change =
        measure_change(name, old.get(), &after, g.history, g.now, g.config);
    change.approved = covered(g.approvals, name, from, to, g.now);
    if (auto hold = g.guard.evaluate(change)) {
      g.held.push_back({*hold, to, from, to, 0});
      continue;
    }
    if (change.approved) g.approved_now.insert(name);
  }
  return !g.held.empty();
}

// An approved change that the guard would have held: recorded in the snapshot, so that relays
// apply the same change (docs/guard.md, "Approvals").
void record_approved_deletion(GuardPass& g, sync::PartitionChange change, const std::string& from,
                              const std::string& to, proto::Snapshot& next) {
  change.approved = false;
  auto would = g.guard.evaluate(change);
  if (!would) return;
  g.approved_now.insert(change.partition);
  std::int64_t expires = g.now + static_cast<std::int64_t>(g.config.guard.approval_hours) * 3600;
  for (const auto& a : g.approvals)
    if (a.covers(change.partition, from, to, g.now)) expires = a.expires;
  next.approved_deletions[change.partition] = {from, to, next.serial, expires};
  spdlog::info("approved deletion: partition={} rule={} deleted={} files={} candidate={} serial={}",
               change.partition, sync::rule_name(would->rule), would->deleted, would->files, to,
               next.serial);
}

// One partition through the guard: a held partition keeps its published manifest; what passes
// enters the next snapshot (its manifest was stored when built).
void guard_partition(GuardPass& g, const std::string& name, proto::Snapshot& next) {
  auto cand_it = g.candidate.manifests.find(name);
  auto old_it = g.applied_manifests.find(name);
  const bool in_candidate = cand_it != g.candidate.manifests.end();
  const bool in_applied = old_it != g.applied_manifests.end();
  const std::string to =
      sync::change_end(in_candidate ? &g.candidate.digests.at(name) : nullptr, sync::kRemoved);
  const std::string from =
      in_applied
          ? sync::change_end(&g.applied->snapshot.partitions.at(name).manifest, sync::kNoManifest)
          : std::string(sync::kNoManifest);
  // An unchanged partition is no change to weigh (its window may show an older loss that was
  // already let through: that is not this publish's doing).
  if (in_applied && !g.layout_changed && from != to) {
    sync::PartitionChange change =
        measure_change(name, old_it->second.get(), in_candidate ? cand_it->second.get() : nullptr,
                       g.history, g.now, g.config);
    change.approved = covered(g.approvals, name, from, to, g.now);
    if (auto hold = g.guard.evaluate(change)) {
      g.held.push_back({*hold, to, from, to, 0});
      next.partitions[name] = g.applied->snapshot.partitions.at(name);
      g.next_manifests[name] = old_it->second;
      return;
    }
    if (change.approved) record_approved_deletion(g, std::move(change), from, to, next);
  }
  if (!in_candidate) return;  // removed (and not held)
  const auto& m = cand_it->second;
  const proto::Digest& digest = g.candidate.digests.at(name);
  next.partitions[name] = {digest, m->entries.size(), m->total_bytes()};
  g.next_manifests[name] = m;  // stored when it was built (build_candidate)
}

// An upstream approval is carried while its partition stays at the approved manifest (or stays
// removed), until it expires: a relay that was away applies the same change later.
void carry_approvals(proto::Snapshot& next, std::int64_t now) {
  std::erase_if(next.approved_deletions, [&](const auto& item) {
    const auto& [name, a] = item;
    auto it = next.partitions.find(name);
    const std::string now_at = sync::change_end(
        it == next.partitions.end() ? nullptr : &it->second.manifest, sync::kRemoved);
    return now_at != a.to || a.expires <= now;
  });
}

// Unchanged partitions share the applied manifest object, so the plan skips them.
void share_unchanged(GuardPass& g, const proto::Snapshot& next) {
  for (auto& [name, m] : g.next_manifests) {
    auto old_it = g.applied_manifests.find(name);
    if (old_it != g.applied_manifests.end() &&
        g.applied->snapshot.partitions.at(name).manifest == next.partitions.at(name).manifest)
      m = old_it->second;
  }
}

// Every partition through the guard into `next`. A held layout change keeps the whole snapshot:
// then nothing enters `next` and the holds are in g.held.
void guard_partitions(GuardPass& g, proto::Snapshot& next) {
  for (const auto& [name, m] : g.applied_manifests) g.names.insert(name);
  for (const auto& [name, m] : g.candidate.manifests) g.names.insert(name);
  if (g.layout_changed) {
    if (guard_layout_change(g)) return;
    next.approved_deletions.clear();  // its partitions are the old layout's
  }
  for (const auto& name : g.names) guard_partition(g, name, next);
  carry_approvals(next, g.now);
  share_unchanged(g, next);
}

// A held partition kept beside a new root partition with an entry on its way (its folder, or one
// above it, swapped for a symlink or a file): the mix cannot be published without hiding the held
// files, so nothing of the candidate is, as at a relay (docs/guard.md, "Where it runs and what a
// hold does").
bool held_mix_conflicts(const GuardPass& g, const proto::Snapshot& next) {
  if (g.held.empty()) return false;
  auto root = g.next_manifests.find(std::string(proto::kRootPartition));
  if (root == g.next_manifests.end()) return false;
  const sync::ManifestSet root_set{{root->first, root->second}};
  auto st = check_partitions_disjoint(next, root_set);
  if (!st)
    spdlog::warn("holding the whole candidate: {}, and that partition is held", st.message());
  return !st;
}

// The window's baseline learns what was published; an approved change is the new baseline.
void learn_published(GuardPass& g, const sync::ApplyRequest& req, const sync::StateStore& state) {
  for (const auto& [name, ref] : req.candidate.partitions) {
    auto m = req.candidate_manifests.find(name);
    if (m == req.candidate_manifests.end()) continue;  // not looked at: an incremental publish
    const sync::PartitionSize size = sync::measure(m->second.get());
    if (g.approved_now.count(name) || g.layout_changed)
      g.history.reset(name, size, g.now);
    else
      g.history.record(name, size, g.now, g.config.guard.window_hours);
  }
  for (const auto& name : g.names)
    if (!req.candidate.partitions.count(name)) g.history.forget(name);
  if (auto st = g.history.save(state.guard_history_path()); !st)
    spdlog::warn("cannot save the guard's history: {}", st.message());
}

// Step 4, sign and apply: the next snapshot signed, its files placed from the source.
CycleOutcome sign_and_apply(Cycle& cycle, GuardPass& g, Candidate& candidate,
                            const std::vector<proto::PrivateKey>& keys,
                            const std::vector<sync::ScannedFile>& files, proto::Snapshot next,
                            sync::ManifestSet applied_manifests, const SourcePrint* print,
                            Scope scope, const std::atomic<bool>* stop) {
  auto& state = cycle.state();
  const std::string payload = proto::encode_snapshot(next);
  SourceFetcher fetcher(g.config.source_dir, files);
  sync::Applier applier(state, fetcher);
  applier.set_stop_flag(stop);
  sync::ApplyRequest req;
  req.envelope =
      proto::encode_envelope(proto::sign_envelope(proto::kSnapshotPayloadType, payload, keys));
  req.candidate = std::move(next);
  req.candidate_manifests = std::move(g.next_manifests);
  if (g.applied) req.applied = g.applied->snapshot;
  sync::Plan plan = sync::make_plan(applied_manifests, req.candidate_manifests);
  applied_manifests.clear();
  if (g.layout_changed)
    for (const auto& [name, ref] : g.applied->snapshot.partitions) g.approved_now.insert(name);
  auto stats = applier.apply(req, plan);
  if (!fetcher.mismatched().empty()) {
    // Rewritten in place with size and mtime kept: the cache gave a digest the bytes no longer
    // have. Forgotten, so the next cycle reads them and publishes what they are now.
    for (const auto& path : fetcher.mismatched()) candidate.cache.forget(path);
    save_hash_cache(candidate.cache, state, g.depth, scope);
  }
  const std::uint64_t serial = req.candidate.serial;
  if (!stats)
    return cycle.fail("publishing serial " + std::to_string(serial) +
                      " failed: " + stats.message());
  cycle.set_upstream_serial(serial);
  learn_published(g, req, state);
  cycle.consume_approvals(g.approved_now);
  if (g.held.empty()) {
    if (print) print->remember();
    cycle.clear_held();
    return cycle.applied(serial, *stats, "published");
  }
  cycle.save_holds(g.held, serial);
  return cycle.applied(serial, *stats, "published", kExitHeld);
}

// A publish killed half-way is finished first (it needs nothing from the source but the files
// it had staged or linked).
Result<bool> finish_killed_publish(const ops::Config& config, sync::StateStore& state) {
  std::vector<sync::ScannedFile> no_files;
  SourceFetcher idle(config.source_dir, no_files);
  sync::Applier recovering(state, idle);
  return recovering.recover();
}

// Step 2, what is looked at: the whole source (a full walk, with the fingerprint's fast no-op),
// or, for an incremental publish, the root partition, the partitions the watcher named and the
// held ones (docs/architecture.md, "Incremental publish").
struct Looked {
  sync::ScanResult scan;
  std::optional<std::set<std::string>> partitions;  // incremental: the partitions looked at
  std::optional<SourcePrint> print;                 // a full walk's
  bool unchanged = false;  // a full walk found the source as it was last published
  Scope scope() const { return partitions ? &*partitions : nullptr; }
};

Result<Looked> look_at_everything(const ops::Config& config, const sync::StateStore& state,
                                  bool may_skip) {
  auto scan = sync::scan_tree(config.source_dir, /*sorted=*/false);
  if (!scan) return scan.error();
  Looked out;
  // The fast no-op: the source is exactly as it was when the published snapshot was made from
  // it (and nothing was held then): no sorting, no hashing, no manifests.
  out.print.emplace(config, state, *scan);
  if (may_skip && out.print->unchanged()) {
    out.unchanged = true;
    return out;
  }
  out.print->forget();  // recorded again only once a cycle ends with the tree matching the source
  sync::sort_scan(*scan);
  out.scan = std::move(*scan);
  return out;
}

Result<Looked> look_at_changes(const ops::Config& config, std::size_t depth,
                               const sync::StateStore& state, const proto::Snapshot& published,
                               const SourceChanges& changes) {
  std::set<std::string> partitions{std::string(proto::kRootPartition)};
  std::set<std::string> subtrees;  // folders above the partitions': all of their partitions
  for (const auto& path : changes.paths) {
    const std::size_t n = proto::path_depth(path);
    if (n >= depth)
      partitions.emplace(n == depth ? std::string_view(path) : proto::partition_of(path, depth));
    else
      subtrees.insert(path);
  }
  for (const auto& h : state.load_held().partitions) partitions.insert(h.hold.partition);
  auto scan = sync::scan_partitions(config.source_dir, depth, partitions, subtrees);
  if (!scan) return scan.error();
  for (const auto& f : scan->files) partitions.emplace(proto::partition_of(f.path, depth));
  for (const auto& [name, ref] : published.partitions)
    for (const auto& sub : subtrees)
      if (name.size() > sub.size() && name.starts_with(sub) && name[sub.size()] == '/')
        partitions.insert(name);
  // Named in the log, cut short and escaped: a builder names the folders.
  constexpr std::size_t kNamed = 12;
  std::string names;
  std::size_t named = 0;
  for (const auto& name : partitions) {
    if (named++ == kNamed) {
      names += " and " + std::to_string(partitions.size() - kNamed) + " more";
      break;
    }
    names += (names.empty() ? "" : " ") + name;
  }
  spdlog::info("incremental publish: rescanning {} partitions ({} files): {}", partitions.size(),
               scan->files.size(), proto::printable(names, 1024));
  SourcePrint::discard(state);
  Looked out;
  out.scan = std::move(*scan);
  out.partitions = std::move(partitions);
  return out;
}

// The published manifests of the partitions looked at (all of them for a full walk).
Result<sync::ManifestSet> load_published(const sync::StateStore& state,
                                         const proto::Snapshot& published, Scope scope) {
  if (!scope) return state.load_manifests(published);
  proto::Snapshot looked_at = published;
  std::erase_if(looked_at.partitions, [&](const auto& item) { return !scope->count(item.first); });
  return state.load_manifests(looked_at);
}

// Steps 2 to 4, once the source is not busy.
CycleOutcome publish_source(Cycle& cycle, const ops::Config& config, std::size_t depth,
                            const std::vector<proto::PrivateKey>& keys,
                            const SourceChanges* changes, const std::atomic<bool>* stop) {
  auto& state = cycle.state();
  auto loaded_applied = state.load_applied();
  if (!loaded_applied) return cycle.fail(loaded_applied.message());
  const sync::Applied* applied = *loaded_applied ? &**loaded_applied : nullptr;
  const std::int64_t now = std::time(nullptr);
  const std::int64_t ttl = static_cast<std::int64_t>(config.snapshot_ttl_hours) * 3600;
  const bool resign = applied && resign_due(*applied, keys, now, ttl);
  const bool layout_changed = applied && applied->snapshot.layout != config.layout;

  auto looked = changes && !changes->all && applied && !layout_changed
                    ? look_at_changes(config, depth, state, applied->snapshot, *changes)
                    : look_at_everything(config, state, applied && !resign);
  if (!looked) return cycle.fail("scanning source.dir: " + looked.message());
  if (looked->unchanged) return cycle.noop(applied->snapshot.serial);
  for (const auto& why : looked->scan.skipped) spdlog::warn("source: left out {}", why);
  auto candidate = build_candidate(config, depth, state, looked->scan.files, looked->scope(),
                                   applied ? &applied->snapshot : nullptr);
  if (!candidate) return cycle.fail(candidate.message());

  proto::Snapshot next;
  next.origin = config.name;
  next.layout = config.layout;
  next.depth = depth;
  next.serial = (applied ? applied->snapshot.serial : 0) + 1;
  next.created = now;
  next.expires = now + ttl;
  sync::ManifestSet applied_manifests;
  if (applied) {
    next.approved_deletions = applied->snapshot.approved_deletions;
    if (!differs(applied->snapshot, candidate->digests, layout_changed, looked->scope()) &&
        !resign) {
      if (looked->print) looked->print->remember();
      return cycle.noop(applied->snapshot.serial);
    }
    auto loaded = load_published(state, applied->snapshot, looked->scope());
    if (!loaded) return cycle.fail("published state: " + loaded.message());
    applied_manifests = std::move(*loaded);
    // The partitions not looked at keep their published manifests, unread.
    for (const auto& [name, ref] : applied->snapshot.partitions)
      if (looked->scope() && !looked->scope()->count(name)) next.partitions[name] = ref;
  }

  GuardPass g(config, depth, now, applied, applied_manifests, *candidate, cycle);
  guard_partitions(g, next);
  if (applied && (layout_changed ? !g.held.empty()
                                 : (next.partitions == applied->snapshot.partitions && !resign) ||
                                       held_mix_conflicts(g, next))) {
    cycle.save_holds(g.held, next.serial);
    return cycle.held_only(applied->snapshot.serial);
  }
  return sign_and_apply(cycle, g, *candidate, keys, looked->scan.files, std::move(next),
                        std::move(applied_manifests), looked->print ? &*looked->print : nullptr,
                        looked->scope(), stop);
}

}  // namespace

CycleOutcome publish_once(const ops::Config& config, const std::atomic<bool>* stop,
                          SourceChanges* changes) {
  Cycle cycle(config);
  if (auto st = cycle.open(); !st) return cycle.fail(st.message());
  auto& state = cycle.state();
  auto keys = ops::load_signing_keys(config);
  if (!keys) return cycle.fail("config " + keys.message());
  auto depth = proto::layout_depth(config.layout);
  if (!depth) return cycle.fail(depth.message());
  if (auto st = finish_killed_publish(config, state); !st) return cycle.fail(st.message());

  const fs::path busy = config.source_dir / ".tiersync-busy";
  if (::access(busy.c_str(), F_OK) == 0) {
    spdlog::info("source busy: {} exists; not publishing", busy.string());
    auto applied = state.load_applied();
    return cycle.noop(applied && *applied ? (*applied)->snapshot.serial : 0, false);
  }
  CycleOutcome out = publish_source(cycle, config, *depth, *keys, changes, stop);
  if (changes && out.result != CycleResult::kFailed) *changes = {};
  return out;
}

}  // namespace tiersync::node
