// A relay's sync cycle (SPEC section 6): fetch, verify, plan, guard, apply.

#include <spdlog/spdlog.h>

#include <ctime>

#include "daemon/node/cycle.h"
#include "daemon/node/node.h"
#include "daemon/sync/apply.h"
#include "daemon/transport/transport.h"
#include "proto/dsse.h"
#include "proto/manifest.h"
#include "proto/path.h"

namespace tiersync::node {

namespace {

// The engine's Fetcher over a transport.
class TransportFetcher final : public sync::Fetcher {
 public:
  explicit TransportFetcher(transport::Transport& t) : t_(t) {}
  Status fetch(const proto::Entry& e, const sync::ByteSink& sink) override {
    return t_.fetch_file(e.path(), e.size, sink);
  }

 private:
  transport::Transport& t_;
};

struct CandidateManifests {
  sync::ManifestSet set;
  /// Fetched from the parent: stored only once the candidate is applied, so that a refused
  /// snapshot leaves state_dir as it was.
  std::vector<std::pair<proto::Digest, std::string>> fetched;
};

// The candidate's manifests: the applied ones where the hash is unchanged, the rest from the
// store or the parent, each checked against its hash, the snapshot's counts and every rule.
Result<CandidateManifests> candidate_manifests(const proto::Snapshot& cand,
                                               const std::optional<sync::Applied>& applied,
                                               const sync::ManifestSet& applied_manifests,
                                               sync::StateStore& state, transport::Transport& t) {
  CandidateManifests result;
  sync::ManifestSet& out = result.set;
  for (const auto& [name, ref] : cand.partitions) {
    if (applied) {
      auto it = applied->snapshot.partitions.find(name);
      if (it != applied->snapshot.partitions.end() && it->second.manifest == ref.manifest &&
          applied->snapshot.depth == cand.depth) {
        out[name] = applied_manifests.at(name);
        continue;
      }
    }
    std::shared_ptr<const proto::Manifest> m;
    if (state.has_manifest(ref.manifest)) {
      auto loaded = state.load_manifest(ref.manifest, name, cand.depth);
      if (loaded) m = *loaded;
    }
    if (!m) {
      auto bytes = t.fetch_manifest(ref.manifest);
      if (!bytes) return bytes.error();
      if (proto::sha256(*bytes) != ref.manifest)
        return make_error("manifest of partition \"" + name + "\": its bytes do not match its " +
                          "SHA-256 " + proto::to_hex(ref.manifest));
      auto decoded = proto::decode_manifest(*bytes, name, cand.depth);
      if (!decoded) return decoded.error();
      m = std::make_shared<proto::Manifest>(std::move(*decoded));
      result.fetched.emplace_back(ref.manifest, std::move(*bytes));
    }
    if (m->entries.size() != ref.files || m->total_bytes() != ref.bytes)
      return make_error("manifest of partition \"" + name + "\": holds " +
                        std::to_string(m->entries.size()) + " files of " +
                        std::to_string(m->total_bytes()) + " bytes, the snapshot says " +
                        std::to_string(ref.files) + " files of " + std::to_string(ref.bytes));
    out[name] = std::move(m);
  }
  if (auto st = check_partitions_disjoint(cand, out); !st) return st.error();
  return result;
}

bool applied_refs(const std::optional<sync::Applied>& applied, const proto::Digest& d) {
  if (!applied) return false;
  for (const auto& [name, ref] : applied->snapshot.partitions)
    if (ref.manifest == d) return true;
  return false;
}

}  // namespace

CycleOutcome sync_once(const ops::Config& config) {
  Cycle cycle(config);
  if (auto st = cycle.open(); !st) return cycle.fail(st.message());
  auto& state = cycle.state();

  auto keys = load_trusted_keys(config);
  if (!keys) return cycle.fail(keys.message());
  auto t = transport::make_transport(config.upstream.url);
  if (!t) return cycle.fail(t.message());
  TransportFetcher fetcher(**t);
  sync::Applier applier(state, fetcher);
  if (auto rec = applier.recover(); !rec) return cycle.fail(rec.message());

  auto applied = state.load_applied();
  if (!applied) return cycle.fail(applied.message());
  const std::uint64_t applied_serial = *applied ? (*applied)->snapshot.serial : 0;

  auto bytes = (*t)->fetch_snapshot();
  if (!bytes) return cycle.fail("cannot fetch the snapshot: " + bytes.message());
  // A no-op reads one file and compares: no verification, no tree walk.
  if (*applied && *bytes == (*applied)->envelope) return cycle.noop(applied_serial);

  const std::string from = " from " + (*t)->describe();
  auto env = proto::decode_envelope(*bytes);
  if (!env) return cycle.fail("snapshot" + from + " refused: " + env.message());
  auto payload = proto::verify_envelope(*env, *keys, config.threshold, proto::kSnapshotPayloadType);
  if (!payload) return cycle.fail("snapshot" + from + " refused: " + payload.message());
  auto cand = proto::decode_snapshot(*payload);
  if (!cand) return cycle.fail("snapshot" + from + " refused: " + cand.message());
  cycle.set_upstream_serial(cand->serial);

  if (cand->serial < applied_serial)
    return cycle.fail("rollback refused: the parent offers serial " + std::to_string(cand->serial) +
                      ", lower than the applied serial " + std::to_string(applied_serial));
  if (cand->serial == applied_serial) return cycle.noop(applied_serial);
  const std::int64_t now = std::time(nullptr);
  if (cand->expires <= now)
    return cycle.fail("snapshot serial " + std::to_string(cand->serial) + " refused: expired at " +
                      proto::format_time(cand->expires) + "; still serving serial " +
                      std::to_string(applied_serial));

  sync::ManifestSet applied_manifests;
  if (*applied) {
    auto m = state.load_manifests((*applied)->snapshot);
    if (!m) return cycle.fail("applied state: " + m.message());
    applied_manifests = std::move(*m);
  }
  auto cand_manifests = candidate_manifests(*cand, *applied, applied_manifests, state, **t);
  if (!cand_manifests)
    return cycle.fail("snapshot serial " + std::to_string(cand->serial) +
                      " refused: " + cand_manifests.message());

  sync::Plan plan = sync::make_plan(applied_manifests, cand_manifests->set);

  // The guard, over the whole snapshot.
  const std::string candidate_id = std::to_string(cand->serial);
  auto approvals = state.load_approvals();
  std::vector<sync::PartitionChange> changes;
  for (const auto& p : plan.partitions) {
    sync::PartitionChange c{p.partition, p.files_before, p.deletes.size(), false};
    for (const auto& a : approvals)
      if (a.partition == p.partition && a.candidate == candidate_id) c.approved = true;
    if (config.guard.trust_upstream_approvals) {
      auto it = cand->approved_deletions.find(p.partition);
      if (it != cand->approved_deletions.end() && it->second > applied_serial &&
          it->second <= cand->serial)
        c.approved = true;
    }
    if (c.approved && c.deleted > 0)
      spdlog::info("approved deletion: partition={} deleted={} files={} candidate={}", c.partition,
                   c.deleted, c.files, candidate_id);
    changes.push_back(std::move(c));
  }
  auto holds = sync::Guard(config.guard).evaluate(changes);
  if (!holds.empty()) return cycle.held(holds, candidate_id, cand->serial);
  cycle.clear_held();

  sync::ApplyRequest req;
  req.envelope = std::move(*bytes);
  req.candidate = *cand;
  std::vector<proto::Digest> fetched;
  for (const auto& [digest, manifest_bytes] : cand_manifests->fetched) {
    if (auto st = state.store_manifest(digest, manifest_bytes); !st)
      return cycle.fail(st.message());
    fetched.push_back(digest);
  }
  cand_manifests->fetched.clear();
  req.candidate_manifests = std::move(cand_manifests->set);
  if (*applied) req.applied = (*applied)->snapshot;
  req.applied_manifests = std::move(applied_manifests);
  auto stats = applier.apply(req, plan);
  if (!stats) {
    // Bytes that contradict the signed manifest: keep nothing of this candidate. Other failures
    // (an unreadable parent) keep the verified staged files for the next try.
    if (applier.content_rejected()) {
      applier.discard_staging();
      for (const auto& digest : fetched)
        if (!applied_refs(*applied, digest)) state.forget_manifest(digest);
    }
    return cycle.fail("applying serial " + std::to_string(cand->serial) +
                      " failed: " + stats.message());
  }
  if (auto st = state.save_approvals({}); !st)
    spdlog::warn("cannot clear the approvals: {}", st.message());
  return cycle.applied(cand->serial, *stats);
}

}  // namespace tiersync::node
