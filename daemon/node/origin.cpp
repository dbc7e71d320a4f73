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
std::string layout_change_id(
    const std::map<std::string, std::pair<proto::Digest, std::string>>& encoded) {
  std::string lines;
  for (const auto& [name, e] : encoded) lines += name + "=" + proto::to_hex(e.first) + "\n";
  return "layout:" + proto::to_hex(proto::sha256(lines));
}

}  // namespace

std::unique_ptr<sync::Fetcher> source_fetcher(const fs::path& source_dir) {
  static const std::vector<sync::ScannedFile> kNothingScanned;  // copies, never links
  return std::make_unique<SourceFetcher>(source_dir, kNothingScanned);
}

CycleOutcome publish_once(const ops::Config& config, const std::atomic<bool>* stop) {
  Cycle cycle(config);
  if (auto st = cycle.open(); !st) return cycle.fail(st.message());
  auto& state = cycle.state();
  auto keys = ops::load_signing_keys(config);
  if (!keys) return cycle.fail("config " + keys.message());
  std::set<std::string> keyids;
  for (const auto& key : *keys) keyids.insert(key.public_key().keyid());
  auto depth = proto::layout_depth(config.layout);
  if (!depth) return cycle.fail(depth.message());

  // A publish killed half-way is finished first (it needs nothing from the source but the
  // files it had staged or linked).
  std::vector<sync::ScannedFile> no_files;
  {
    SourceFetcher idle(config.source_dir, no_files);
    sync::Applier recovering(state, idle);
    if (auto rec = recovering.recover(); !rec) return cycle.fail(rec.message());
  }

  if (::access((config.source_dir / ".tiersync-busy").c_str(), F_OK) == 0) {
    spdlog::info("source busy: {} exists; not publishing",
                 (config.source_dir / ".tiersync-busy").string());
    auto applied = state.load_applied();
    return cycle.noop(applied && *applied ? (*applied)->snapshot.serial : 0, false);
  }

  auto applied = state.load_applied();
  if (!applied) return cycle.fail(applied.message());
  const std::int64_t now = std::time(nullptr);
  const std::int64_t ttl = static_cast<std::int64_t>(config.snapshot_ttl_hours) * 3600;
  // Re-signed at half the TTL, and at once when the signing keys changed (a rotation): relays
  // that already trust only the new key must not wait days for it.
  bool resign_due = *applied && now - (*applied)->snapshot.created >= ttl / 2;
  if (*applied && !resign_due) {
    auto env = proto::decode_envelope((*applied)->envelope);
    std::set<std::string> signed_by;
    if (env)
      for (const auto& sig : env->signatures) signed_by.insert(sig.keyid);
    if (signed_by != keyids) {
      spdlog::info("signing keys changed: re-signing the published snapshot");
      resign_due = true;
    }
  }

  auto scan = sync::scan_tree(config.source_dir, /*sorted=*/false);
  if (!scan) return cycle.fail("scanning source.dir: " + scan.message());
  // The fast no-op: the source is exactly as it was when the published snapshot was made from
  // it (and nothing was held then): no sorting, no hashing, no manifests.
  std::string salt = config.layout;
  for (const auto& name : config.index_files) salt += "\n" + name;
  const std::string print = sync::scan_fingerprint(*scan, salt);
  const fs::path print_file = state.state_dir() / "source.print";
  if (*applied && !resign_due) {
    auto last = sync::read_file(print_file, 4096);
    if (last && *last == print) return cycle.noop((*applied)->snapshot.serial);
  }
  // Recorded only once a cycle ends with the tree matching the source (see below).
  sync::crash_point();
  ::unlink(print_file.c_str());
  auto remember_source = [&] {
    sync::crash_point();
    if (auto st = sync::write_file_atomic(print_file, print, 0644, false); !st)
      spdlog::warn("cannot record the source's fingerprint: {}", st.message());
  };

  sync::sort_scan(*scan);
  for (const auto& why : scan->skipped) spdlog::warn("source: left out {}", why);
  std::string cache_warning;
  auto cache = sync::HashCache::load(state.hash_cache_path(), &cache_warning);
  if (!cache_warning.empty()) spdlog::warn("{}", cache_warning);
  auto candidate = build_manifests(config, *depth, scan->files, cache);
  if (!candidate) return cycle.fail(candidate.message());
  if (cache.needs_save())
    if (auto st = cache.save(state.hash_cache_path()); !st)
      spdlog::warn("cannot save the hash cache: {}", st.message());

  // Encode each candidate manifest: its hash says whether the partition changed.
  std::map<std::string, std::pair<proto::Digest, std::string>> encoded;
  for (const auto& [name, m] : *candidate) {
    std::string bytes = proto::encode_manifest(*m);
    encoded[name] = {proto::sha256(bytes), std::move(bytes)};
  }

  proto::Snapshot next;
  next.origin = config.name;
  next.layout = config.layout;
  next.depth = *depth;
  sync::ManifestSet applied_manifests;
  sync::ManifestSet next_manifests;
  bool layout_changed = false;
  if (*applied) {
    const auto& prev = (*applied)->snapshot;
    next.approved_deletions = prev.approved_deletions;
    layout_changed = prev.layout != config.layout;
    bool differs = layout_changed || prev.partitions.size() != encoded.size();
    for (const auto& [name, ref] : prev.partitions) {
      auto it = encoded.find(name);
      differs = differs || it == encoded.end() || it->second.first != ref.manifest;
    }
    if (!differs && !resign_due) {
      remember_source();
      return cycle.noop(prev.serial);
    }
    auto loaded = state.load_manifests(prev);
    if (!loaded) return cycle.fail("published state: " + loaded.message());
    applied_manifests = std::move(*loaded);
  }
  next.serial = (*applied ? (*applied)->snapshot.serial : 0) + 1;
  next.created = now;
  next.expires = now + ttl;

  // The guard, per partition: a held partition keeps its published manifest.
  const sync::Guard guard(config.guard);
  auto approvals = cycle.live_approvals(now);
  std::string history_warning;
  auto history = sync::GuardHistory::load(state.guard_history_path(), &history_warning);
  if (!history_warning.empty()) spdlog::warn("{}", history_warning);
  std::vector<sync::HeldPartition> held;
  std::set<std::string> approved_now;  // partitions whose approved change this serial publishes
  std::set<std::string> names;
  for (const auto& [name, m] : applied_manifests) names.insert(name);
  for (const auto& [name, m] : *candidate) names.insert(name);

  if (layout_changed) {
    // A layout change is guarded like any other change: each old partition's entries are
    // counted against the candidate, wherever the new layout puts them. Partitions cannot be
    // held one by one across layouts, so any hold keeps the whole published snapshot.
    const std::string to = layout_change_id(encoded);
    for (const auto& [name, old] : applied_manifests) {
      const proto::Manifest after = sync::entries_kept(*old, *candidate, *depth);
      const std::string from =
          sync::change_end(&(*applied)->snapshot.partitions.at(name).manifest, sync::kNoManifest);
      sync::PartitionChange change = measure_change(name, old.get(), &after, history, now, config);
      change.approved = covered(approvals, name, from, to, now);
      if (auto hold = guard.evaluate(change)) {
        held.push_back({*hold, to, from, to, 0});
        continue;
      }
      if (change.approved) approved_now.insert(name);
    }
    if (!held.empty()) {
      cycle.save_holds(held, next.serial);
      return cycle.held_only((*applied)->snapshot.serial);
    }
    next.approved_deletions.clear();  // its partitions are the old layout's
  }

  for (const auto& name : names) {
    auto cand_it = candidate->find(name);
    auto old_it = applied_manifests.find(name);
    const proto::Digest* cand_digest =
        cand_it == candidate->end() ? nullptr : &encoded.at(name).first;
    const std::string to = sync::change_end(cand_digest, sync::kRemoved);
    const std::string from =
        old_it == applied_manifests.end()
            ? std::string(sync::kNoManifest)
            : sync::change_end(&(*applied)->snapshot.partitions.at(name).manifest,
                               sync::kNoManifest);
    // An unchanged partition is no change to weigh (its window may show an older loss that was
    // already let through: that is not this publish's doing).
    if (old_it != applied_manifests.end() && !layout_changed && from != to) {
      const proto::Manifest* after = cand_it == candidate->end() ? nullptr : cand_it->second.get();
      sync::PartitionChange change =
          measure_change(name, old_it->second.get(), after, history, now, config);
      change.approved = covered(approvals, name, from, to, now);
      if (auto hold = guard.evaluate(change)) {
        held.push_back({*hold, to, from, to, 0});
        next.partitions[name] = (*applied)->snapshot.partitions.at(name);
        next_manifests[name] = old_it->second;
        continue;
      }
      if (change.approved && from != to) {
        change.approved = false;
        if (auto would = guard.evaluate(change)) {
          approved_now.insert(name);
          std::int64_t expires =
              now + static_cast<std::int64_t>(config.guard.approval_hours) * 3600;
          for (const auto& a : approvals)
            if (a.covers(name, from, to, now)) expires = a.expires;
          next.approved_deletions[name] = {from, to, next.serial, expires};
          spdlog::info(
              "approved deletion: partition={} rule={} deleted={} files={} candidate={} serial={}",
              name, sync::rule_name(would->rule), would->deleted, would->files, to, next.serial);
        }
      }
    }
    if (cand_it == candidate->end()) continue;  // removed (and not held)
    const auto& m = cand_it->second;
    next.partitions[name] = {encoded[name].first, m->entries.size(), m->total_bytes()};
    next_manifests[name] = m;
    if (!state.has_manifest(encoded[name].first))
      if (auto st = state.store_manifest(encoded[name].first, encoded[name].second); !st)
        return cycle.fail(st.message());
  }
  // An upstream approval is carried while its partition stays at the approved manifest (or
  // stays removed), until it expires: a relay that was away applies the same change later.
  std::erase_if(next.approved_deletions, [&](const auto& item) {
    const auto& [name, a] = item;
    auto it = next.partitions.find(name);
    const std::string now_at = sync::change_end(
        it == next.partitions.end() ? nullptr : &it->second.manifest, sync::kRemoved);
    return now_at != a.to || a.expires <= now;
  });
  // Unchanged partitions share the applied manifest object, so the plan skips them.
  for (auto& [name, m] : next_manifests) {
    auto old_it = applied_manifests.find(name);
    if (old_it != applied_manifests.end() &&
        (*applied)->snapshot.partitions.at(name).manifest == next.partitions[name].manifest)
      m = old_it->second;
  }
  if (*applied && !layout_changed && next.partitions == (*applied)->snapshot.partitions &&
      !resign_due) {
    cycle.save_holds(held, next.serial);
    return cycle.held_only((*applied)->snapshot.serial);
  }

  std::string payload = proto::encode_snapshot(next);
  std::string envelope =
      proto::encode_envelope(proto::sign_envelope(proto::kSnapshotPayloadType, payload, *keys));

  SourceFetcher fetcher(config.source_dir, scan->files);
  sync::Applier applier(state, fetcher);
  applier.set_stop_flag(stop);
  sync::ApplyRequest req;
  req.envelope = std::move(envelope);
  req.candidate = next;
  req.candidate_manifests = std::move(next_manifests);
  if (*applied) req.applied = (*applied)->snapshot;
  sync::Plan plan = sync::make_plan(applied_manifests, req.candidate_manifests);
  applied_manifests.clear();
  if (layout_changed)
    for (const auto& [name, ref] : (*applied)->snapshot.partitions) approved_now.insert(name);
  auto stats = applier.apply(req, plan);
  if (!fetcher.mismatched().empty()) {
    // Rewritten in place with size and mtime kept: the cache gave a digest the bytes no longer
    // have. Forgotten, so the next cycle reads them and publishes what they are now.
    for (const auto& path : fetcher.mismatched()) cache.forget(path);
    if (auto st = cache.save(state.hash_cache_path()); !st)
      spdlog::warn("cannot save the hash cache: {}", st.message());
  }
  if (!stats)
    return cycle.fail("publishing serial " + std::to_string(next.serial) +
                      " failed: " + stats.message());
  cycle.set_upstream_serial(next.serial);
  // The window's baseline learns what was published; an approved change is the new baseline.
  for (const auto& [name, ref] : req.candidate.partitions) {
    auto m = req.candidate_manifests.find(name);
    const sync::PartitionSize size =
        sync::measure(m == req.candidate_manifests.end() ? nullptr : m->second.get());
    if (approved_now.count(name) || layout_changed)
      history.reset(name, size, now);
    else
      history.record(name, size, now, config.guard.window_hours);
  }
  for (const auto& name : names)
    if (!req.candidate.partitions.count(name)) history.forget(name);
  if (auto st = history.save(state.guard_history_path()); !st)
    spdlog::warn("cannot save the guard's history: {}", st.message());
  cycle.consume_approvals(approved_now);
  if (held.empty()) {
    remember_source();
    cycle.clear_held();
    return cycle.applied(next.serial, *stats, "published");
  }
  cycle.save_holds(held, next.serial);
  return cycle.applied(next.serial, *stats, "published", kExitHeld);
}

}  // namespace tiersync::node
