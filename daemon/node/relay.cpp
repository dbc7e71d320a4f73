// A relay's sync cycle (docs/protocol.md, "Verifying and applying a snapshot"): fetch, verify,
// plan, guard, apply.

#include <spdlog/spdlog.h>

#include <algorithm>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "daemon/node/cycle.h"
#include "daemon/node/node.h"
#include "daemon/ops/metrics.h"
#include "daemon/ops/notify.h"
#include "daemon/sync/apply.h"
#include "daemon/sync/fs.h"
#include "daemon/sync/history.h"
#include "daemon/sync/pins.h"
#include "daemon/transport/transport.h"
#include "proto/dsse.h"
#include "proto/manifest.h"
#include "proto/path.h"
#include "proto/wire.h"

namespace tiersync::node {

namespace {

// Answers the parent got wrong since `before` (out of order, more or fewer than asked for): the
// transport asked again, and the parent counts as unhealthy for each.
void count_faults(const transport::Transport& t, std::uint64_t before) {
  if (t.faults() == before) return;
  ops::process_metrics().upstream_errors += t.faults() - before;
  spdlog::warn("parent {}: {} answers did not match their requests (asked again, one at a time)",
               t.describe(), t.faults() - before);
}

// The engine's Fetcher over a transport. Counts the bytes received, and the requests that
// failed on the parent's side (not those the receiver stopped: a full disk, SIGTERM).
class TransportFetcher final : public sync::Fetcher {
 public:
  explicit TransportFetcher(transport::Transport& t) : t_(t) {}
  Status fetch(const proto::Entry& e, const sync::ByteSink& sink) override {
    sync::FetchJob job{&e, sink, {}};
    return fetch_many({&job, 1});
  }
  // A batch goes to the transport's pool (several connections to an HTTP(S) parent).
  Status fetch_many(std::span<sync::FetchJob> jobs) override {
    std::vector<transport::FileRequest> requests;
    requests.reserve(jobs.size());
    std::unique_ptr<bool[]> receiver_failed(new bool[jobs.size()]());
    for (std::size_t i = 0; i < jobs.size(); ++i)
      requests.push_back({std::string(jobs[i].entry->path()),
                          jobs[i].entry->size,
                          counted(jobs[i].sink, receiver_failed[i]),
                          {},
                          {},
                          jobs[i].offset});
    const std::uint64_t faults = t_.faults();
    Status first = t_.fetch_files(requests);
    bool receiver = false;
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      jobs[i].result = requests[i].result;
      receiver = receiver || receiver_failed[i];
    }
    // A batch stops at its first failure: one error, unless the receiver caused it.
    if (!first && !receiver) ++ops::process_metrics().upstream_errors;
    count_faults(t_, faults);
    return first;
  }

 private:
  static transport::Sink counted(const sync::ByteSink& sink, bool& receiver_failed) {
    return [&sink, &receiver_failed](const char* data, std::size_t size) -> Status {
      ops::process_metrics().bytes_downloaded += size;
      ops::note_progress();  // feeds the watchdog (see daemon.cpp)
      Status st = sink(data, size);
      if (!st) receiver_failed = true;
      return st;
    };
  }

  transport::Transport& t_;
};

// Receives `wanted` into the store through one batch of the transport (several connections,
// pipelined), so that they cost one round trip, not one each: each receive_manifest hands its
// sink to the next, the innermost fetches them all. Each result is receive_manifest's; `batch`
// is the transport's (its first failure).
std::vector<Result<bool>> receive_manifests(const sync::StateStore& state, transport::Transport& t,
                                            const std::vector<proto::Digest>& wanted,
                                            Status& batch) {
  std::vector<transport::ManifestRequest> requests(wanted.size());
  std::vector<Result<bool>> results(wanted.size(), Result<bool>(false));
  const std::uint64_t faults = t.faults();
  std::function<void(std::size_t)> nest = [&](std::size_t i) {
    if (i == wanted.size()) {
      batch = t.fetch_manifests(requests);
      return;
    }
    results[i] = state.receive_manifest(
        wanted[i], [&](const transport::Sink& sink, const std::function<Status()>& restart) {
          requests[i].digest = wanted[i];
          requests[i].sink = [&sink](const char* data, std::size_t size) -> Status {
            ops::process_metrics().bytes_downloaded += size;
            ops::note_progress();  // feeds the watchdog (see daemon.cpp)
            return sink(data, size);
          };
          requests[i].restart = restart;
          nest(i + 1);
          return requests[i].result;
        });
  };
  nest(0);
  count_faults(t, faults);
  return results;
}

// The parent's chain of node names up to the origin, from its status endpoint; nullopt when it
// serves none or an unusable one. Informational (it is not signed), so only checked for shape.
std::optional<std::vector<std::string>> fetch_parent_chain(transport::Transport& t) {
  auto body = t.fetch_status();
  if (!body) return std::nullopt;
  auto j = nlohmann::json::parse(*body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  auto usable = [](const nlohmann::json& v) {
    if (!v.is_string()) return false;
    const auto& name = v.get_ref<const std::string&>();
    if (name.empty() || name.size() > 253) return false;
    for (unsigned char c : name)
      if (c < 0x20 || c == 0x7f) return false;
    return true;
  };
  std::vector<std::string> chain;
  if (auto it = j.find("chain"); it != j.end() && it->is_array() && it->size() <= 32) {
    for (const auto& name : *it) {
      if (!usable(name)) return std::nullopt;
      chain.push_back(name.get<std::string>());
    }
  } else if (auto name = j.find("name"); name != j.end() && usable(*name)) {
    chain.push_back(name->get<std::string>());
  }
  if (chain.empty()) return std::nullopt;
  return chain;
}

// Manifests fetched from the parent this cycle: each one's receive_manifest result, and the
// batches' first failure. Fetched manifests are checked as such (not as stored ones) however many
// steps the cycle takes to ask for them.
struct ReceivedManifests {
  std::map<proto::Digest, Result<bool>> of;
  Status batch;
};

// Whether this node applied `name` at the manifest `ref` names.
bool applied_at(const std::optional<sync::Applied>& applied, const std::string& name,
                const proto::PartitionRef& ref) {
  if (!applied) return false;
  auto it = applied->snapshot.partitions.find(name);
  return it != applied->snapshot.partitions.end() && it->second.manifest == ref.manifest;
}

// Whether `name` at `ref` needs its manifest: its partition changed (the root partition's always,
// whose entries every partition is checked against).
bool partition_changed(const std::optional<sync::Applied>& applied, const proto::Snapshot& cand,
                       const std::string& name, const proto::PartitionRef& ref) {
  if (!applied || name == proto::kRootPartition || applied->snapshot.depth != cand.depth)
    return true;
  return !applied_at(applied, name, ref);
}

// The modes a candidate's manifest may hold: only publishable ones (docs/security.md, "Modes"),
// unless it is the very manifest this node applied for that partition (the root partition's is
// loaded every cycle), which may predate the rule and is replaced, not installed again.
proto::ModeRule candidate_modes(const std::optional<sync::Applied>& applied,
                                const std::string& name, const proto::PartitionRef& ref) {
  return applied_at(applied, name, ref) ? proto::ModeRule::kAny : proto::ModeRule::kPublishable;
}

// Fetches `wanted` from the parent into the store and `received` (at most kBatch at once: each
// holds a file open while the batch runs); each stored one's hash goes to `fetched`.
void fetch_manifests_into(const sync::StateStore& state, transport::Transport& t,
                          const std::vector<proto::Digest>& wanted,
                          std::vector<proto::Digest>& fetched, ReceivedManifests& received) {
  constexpr std::size_t kBatch = 64;
  for (std::size_t i = 0; i < wanted.size() && received.batch; i += kBatch) {
    const auto first = wanted.begin() + static_cast<std::ptrdiff_t>(i);
    const auto last =
        wanted.begin() + static_cast<std::ptrdiff_t>(std::min(wanted.size(), i + kBatch));
    const std::vector<proto::Digest> group(first, last);
    auto results = receive_manifests(state, t, group, received.batch);
    for (std::size_t k = 0; k < group.size(); ++k) {
      // Stored: forgotten again if the candidate is refused, whatever refuses it.
      if (results[k] && *results[k]) fetched.push_back(group[k]);
      received.of.emplace(group[k], std::move(results[k]));
    }
  }
}

// The changed manifests of the parent's signed snapshot, fetched before its pins are read, with
// the pins document in the same pipelines (docs/protocol.md, "Pins"): the pins and the manifests
// cost one round trip, not two. Only fetched and stored here; candidate_manifests checks them.
void prefetch_manifests(const proto::Snapshot& cand, const std::optional<sync::Applied>& applied,
                        const sync::StateStore& state, transport::Transport& t,
                        std::vector<proto::Digest>& fetched, ReceivedManifests& received) {
  std::vector<proto::Digest> wanted;
  for (const auto& [name, ref] : cand.partitions)
    if (partition_changed(applied, cand, name, ref) && !state.has_manifest(ref.manifest) &&
        std::find(wanted.begin(), wanted.end(), ref.manifest) == wanted.end())
      wanted.push_back(ref.manifest);
  fetch_manifests_into(state, t, wanted, fetched, received);
}

// The candidate's changed manifests (and the root partition's, whose entries every partition
// is checked against), from the store or the parent, each checked against its hash, the
// snapshot's counts and every rule. A manifest fetched from the parent is stored at once and its
// hash added to `fetched`, so a refusal can forget it again; `received` holds those fetched
// earlier in the cycle (prefetch_manifests). Unchanged partitions are not loaded: nothing of them
// is needed to apply.
Result<sync::ManifestSet> candidate_manifests(const proto::Snapshot& cand,
                                              const std::optional<sync::Applied>& applied,
                                              sync::StateStore& state, transport::Transport& t,
                                              std::vector<proto::Digest>& fetched,
                                              ReceivedManifests& received) {
  sync::ManifestSet out;
  // Those in the store first; the others are fetched together.
  std::map<std::string, std::shared_ptr<const proto::Manifest>> stored;
  std::vector<proto::Digest> wanted;
  for (const auto& [name, ref] : cand.partitions) {
    if (!partition_changed(applied, cand, name, ref)) continue;
    if (received.of.count(ref.manifest)) continue;
    if (state.has_manifest(ref.manifest)) {
      auto loaded =
          state.load_manifest(ref.manifest, name, cand.depth, candidate_modes(applied, name, ref));
      if (!loaded) {
        // Its bytes match its name, so the parent would send the same ones again: refused here,
        // not fetched again (which would rewrite this node's state for a refused candidate).
        ++ops::process_metrics().verify_failures;
        return loaded.error();
      }
      stored[name] = *loaded;
      continue;
    }
    if (std::find(wanted.begin(), wanted.end(), ref.manifest) == wanted.end())
      wanted.push_back(ref.manifest);
  }
  fetch_manifests_into(state, t, wanted, fetched, received);
  const auto& received_of = received.of;
  const Status& batch = received.batch;

  for (const auto& [name, ref] : cand.partitions) {
    if (!partition_changed(applied, cand, name, ref)) continue;
    std::shared_ptr<const proto::Manifest> m;
    if (auto it = stored.find(name); it != stored.end()) m = it->second;
    if (!m) {
      // Streamed into the store and hashed as it arrived; parsed from there once it matched.
      auto it = received_of.find(ref.manifest);
      if (!batch && (it == received_of.end() || !it->second)) {
        // The batch's first failure names the cause (the others were not fetched after it).
        ++ops::process_metrics().upstream_errors;
        return batch.error();
      }
      if (it == received_of.end())
        return make_error("manifest of partition \"" + name + "\": not fetched");
      if (!it->second) return it->second.error();
      if (!*it->second) {
        ++ops::process_metrics().verify_failures;
        return make_error("manifest of partition \"" + name + "\": its bytes do not match its " +
                          "SHA-256 " + proto::to_hex(ref.manifest));
      }
      auto loaded =
          state.load_manifest(ref.manifest, name, cand.depth, candidate_modes(applied, name, ref));
      if (!loaded) {
        ++ops::process_metrics().verify_failures;
        return loaded.error();
      }
      m = std::move(*loaded);
    }
    if (m->entries.size() != ref.files || m->total_bytes() != ref.bytes)
      return make_error("manifest of partition \"" + name + "\": holds " +
                        std::to_string(m->entries.size()) + " files of " +
                        std::to_string(m->total_bytes()) + " bytes, the snapshot says " +
                        std::to_string(ref.files) + " files of " + std::to_string(ref.bytes));
    out[name] = std::move(m);
  }
  if (auto st = check_partitions_disjoint(cand, out); !st) return st.error();
  return out;
}

// The plan, partition by partition: an applied manifest is loaded only when its partition
// changed, and dropped as soon as that partition is planned, so a cycle holds one full set of
// manifests, not two.
// `weigh` sees each changed partition's two manifests while they are loaded (the guard's
// measures).
using Weigh = std::function<void(const std::string& name, const proto::Manifest* before,
                                 const proto::Manifest* after)>;
Result<sync::Plan> plan_cycle(const proto::Snapshot& cand, const sync::ManifestSet& cand_set,
                              const std::optional<sync::Applied>& applied,
                              const sync::StateStore& state, const Weigh& weigh) {
  std::set<std::string> names;
  for (const auto& [name, ref] : cand.partitions) names.insert(name);
  if (applied)
    for (const auto& [name, ref] : applied->snapshot.partitions) names.insert(name);
  sync::Plan plan;
  auto plan_one = [&](const std::string& name) -> Status {
    auto cand_it = cand_set.find(name);
    const proto::Manifest* after = cand_it == cand_set.end() ? nullptr : cand_it->second.get();
    const proto::PartitionRef* old_ref = nullptr;
    if (applied) {
      auto it = applied->snapshot.partitions.find(name);
      if (it != applied->snapshot.partitions.end()) old_ref = &it->second;
    }
    if (!after && cand.partitions.count(name)) {  // unchanged: nothing to do
      sync::PartitionPlan p;
      p.partition = name;
      p.files_before = old_ref ? old_ref->files : 0;
      plan.partitions.push_back(std::move(p));
      return {};
    }
    std::shared_ptr<const proto::Manifest> before;
    if (old_ref) {
      auto m = state.load_manifest(old_ref->manifest, name, applied->snapshot.depth);
      if (!m) return make_error("applied state: " + m.message());
      before = std::move(*m);
    }
    plan.partitions.push_back(sync::plan_partition(name, before.get(), after));
    weigh(name, before.get(), after);
    return {};
  };
  const std::string root(proto::kRootPartition);
  for (const auto& name : names)
    if (name != root)
      if (auto st = plan_one(name); !st) return st.error();
  if (names.count(root))
    if (auto st = plan_one(root); !st) return st.error();
  sync::drop_moved_paths(plan, cand_set);
  return plan;
}

bool applied_refs(const std::optional<sync::Applied>& applied, const proto::Digest& d) {
  if (!applied) return false;
  for (const auto& [name, ref] : applied->snapshot.partitions)
    if (ref.manifest == d) return true;
  return false;
}

constexpr std::string_view kPinsPath = proto::wire::kPinsPrefix;
constexpr std::string_view kApprovalsPath = proto::wire::kApprovals;
/// A parent's approvals document: a few entries per held partition.
constexpr std::size_t kMaxParentApprovalsBytes = 1u << 20;

/// The parent's pins of one serial (docs/protocol.md, "Pins"), fetched once per cycle.
struct ParentPins {
  std::string id;  ///< sync::pins_id of the document ("": the parent serves none)
  sync::Pins pins;
  sync::PinProofs proofs;  ///< verified (only once verify_pins ran)
};

/// Fetches the parent's pins of `serial` (a 404 is none), not yet verified.
Result<ParentPins> fetch_parent_pins(transport::Transport& parent, std::uint64_t serial) {
  auto doc =
      parent.fetch_document(std::string(kPinsPath) + std::to_string(serial), sync::kMaxPinsBytes);
  if (!doc) return doc.error();
  ParentPins out;
  if (!*doc) return out;
  out.id = sync::pins_id(**doc);
  auto pins = sync::decode_pins(**doc);
  if (!pins) return pins.error();
  out.pins = std::move(*pins);
  return out;
}

/// The parent's approvals (unsigned: used only with guard.trust_parent_approvals); none when it
/// serves none or an unreadable document.
std::vector<sync::Approval> fetch_parent_approvals(transport::Transport& parent) {
  auto doc = parent.fetch_document(kApprovalsPath, kMaxParentApprovalsBytes);
  if (!doc) {
    spdlog::warn("cannot fetch the parent's approvals: {}", doc.message());
    return {};
  }
  return *doc ? sync::decode_parent_approvals(**doc) : std::vector<sync::Approval>();
}

/// Writes (or removes) the approvals document this node offers its children, in its tree: the
/// built-in server and any static server serve it from there.
void offer_approvals(const sync::StateStore& state, std::int64_t now) {
  const std::string doc = state.parent_approvals_document(now);
  const auto path = state.published_approvals_path();
  auto current = sync::read_file(path, kMaxParentApprovalsBytes);
  if (current && *current == doc) return;
  if (doc.empty()) {
    std::error_code ec;
    std::filesystem::remove(path, ec);
    return;
  }
  if (auto st = sync::write_file_atomic(path, doc, 0644, false); !st)
    spdlog::warn("cannot offer approvals to children: {}", st.message());
}

/// Records the approvals that let a change through, until they expire: children trusting this
/// node's approvals see them after the local ones are consumed.
void remember_used_approvals(const sync::StateStore& state, const std::vector<sync::Approval>& used,
                             std::int64_t now) {
  if (used.empty()) return;
  auto all = state.load_used_approvals();
  std::erase_if(all, [&](const sync::Approval& a) {
    if (a.expires <= now) return true;
    return std::any_of(used.begin(), used.end(),
                       [&](const sync::Approval& u) { return u.partition == a.partition; });
  });
  all.insert(all.end(), used.begin(), used.end());
  if (auto st = state.save_used_approvals(all); !st)
    spdlog::warn("cannot record the approvals used: {}", st.message());
}

/// When the envelope of `serial` expired: the proving envelope of a pin (0 if unreadable).
std::int64_t proof_expires(const std::string& envelope) {
  auto s = sync::decode_proof(envelope);
  return s ? s->expires : 0;
}

}  // namespace

std::unique_ptr<sync::Fetcher> parent_fetcher(transport::Transport& parent) {
  return std::make_unique<TransportFetcher>(parent);
}

CycleOutcome sync_once(const ops::Config& config, const std::atomic<bool>* stop,
                       std::unique_ptr<transport::Transport>* keep) {
  Cycle cycle(config);
  if (auto st = cycle.open(); !st) return cycle.fail(st.message());
  auto& state = cycle.state();

  auto keys = ops::load_trusted_keys(config);
  if (!keys) return cycle.fail("config " + keys.message());
  std::unique_ptr<transport::Transport> own;
  std::unique_ptr<transport::Transport>& parent = keep ? *keep : own;
  if (!parent) {
    auto made = transport::make_transport(
        config.upstream.url, {.ca_file = config.upstream.ca_file,
                              .connections = config.upstream.connections,
                              .pipeline_depth = config.upstream.pipeline_depth,
                              .range_split_bytes = config.upstream.range_split_bytes,
                              .max_bytes_per_second = config.upstream.max_bytes_per_second,
                              .min_bytes_per_second = config.upstream.min_bytes_per_second});
    if (!made) return cycle.fail(made.message());
    parent = std::move(*made);
  }
  // Every fetch of this cycle (snapshot, manifests, files) ends soon after SIGTERM. Set on each
  // cycle: a transport kept across cycles must not hold an older cycle's flag.
  parent->set_stop_flag(stop);
  TransportFetcher fetcher(*parent);
  sync::Applier applier(state, fetcher);
  if (auto rec = applier.recover(); !rec) return cycle.fail(rec.message());
  applier.set_stop_flag(stop);

  auto applied = state.load_applied();
  if (!applied) return cycle.fail(applied.message());
  const std::uint64_t applied_serial = *applied ? (*applied)->snapshot.serial : 0;
  const std::int64_t now = std::time(nullptr);
  offer_approvals(state, now);

  auto& metrics = ops::process_metrics();
  auto bytes = parent->fetch_snapshot();
  if (!bytes) {
    ++metrics.upstream_errors;
    return cycle.fail("cannot fetch the snapshot: " + bytes.message());
  }
  // Nothing newer, but the snapshot we serve has expired: the origin stopped re-signing, or a
  // parent is withholding updates (a freeze). Still served, and reported as a failure so that
  // last_success and the alerts on it show it.
  auto stale = [&]() -> std::optional<CycleOutcome> {
    if (!*applied) return std::nullopt;
    const auto& s = (*applied)->snapshot;
    if (s.expires > now) return std::nullopt;
    return cycle.fail("stale: the parent " + parent->describe() + " still serves serial " +
                      std::to_string(s.serial) + ", which expired at " +
                      proto::format_time(s.expires) +
                      " (the origin has not re-signed, or a parent withholds updates)");
  };
  // This node's own holds of the applied serial: each is a pin of its own (a partition of the
  // applied snapshot at an older signed manifest), until approved or offered something else.
  std::vector<sync::HeldPartition> own_holds;
  if (*applied) {
    sync::HeldState recorded = state.load_held();
    for (auto& h : recorded.partitions)
      if ((*applied)->pins.pins.count(h.hold.partition)) own_holds.push_back(std::move(h));
  }
  auto in_sync = [&]() {
    if (auto failed = stale()) return *failed;
    if (own_holds.empty()) return cycle.noop(applied_serial);
    for (auto& h : own_holds) {
      const auto expires = proof_expires((*applied)->proof_of(h.hold.partition));
      h.stale_since = expires <= now ? expires : 0;
    }
    return cycle.held(own_holds, applied_serial);
  };

  std::optional<Result<ParentPins>> parent_pins;  // fetched at most once per cycle
  auto read_parent_pins = [&](std::uint64_t serial) -> Result<ParentPins>& {
    if (!parent_pins) parent_pins = fetch_parent_pins(*parent, serial);
    return *parent_pins;
  };
  std::optional<std::vector<sync::Approval>> parent_approvals;  // likewise, when about to hold
  auto read_parent_approvals = [&]() -> const std::vector<sync::Approval>& {
    if (!parent_approvals) parent_approvals = fetch_parent_approvals(*parent);
    return *parent_approvals;
  };

  // The parent serves the applied envelope. A no-op reads one file and compares, unless the
  // applied serial may have to be evaluated again (docs/protocol.md, "Pins"): an approval now
  // covers one of this node's holds, or the parent's pins of this serial changed (its own
  // approval was applied).
  if (*applied && *bytes == (*applied)->envelope) {
    if (cycle.previous_parent_chain().empty())
      if (auto chain = fetch_parent_chain(*parent)) cycle.set_parent_chain(std::move(*chain));
    if (auto failed = stale()) return *failed;
    bool again = false;
    const auto [known_serial, known_pins] = state.load_parent_pins();
    if (known_serial != applied_serial || !known_pins.empty()) {
      auto& pins = read_parent_pins(applied_serial);
      again = pins && (known_serial != applied_serial || pins->id != known_pins);
    }
    if (!again && !own_holds.empty()) {
      const auto approvals = cycle.live_approvals(now);
      for (const auto& h : own_holds)
        for (const auto& a : approvals)
          if (a.covers(h.hold.partition, h.from, h.to, now)) again = true;
      if (!again && config.guard.trust_parent_approvals)
        for (const auto& h : own_holds)
          for (const auto& a : read_parent_approvals())
            if (a.covers(h.hold.partition, h.from, h.to, now)) again = true;
    }
    if (!again) return in_sync();
  }

  const std::string from = " from " + parent->describe();
  auto refuse_snapshot = [&](const std::string& why) {
    ++metrics.verify_failures;
    return cycle.fail("snapshot" + from + " refused: " + why);
  };
  // Verified before its payload is parsed; within the limits of size, JSON and signatures.
  auto cand = proto::verify_snapshot(*bytes, *keys, config.threshold);
  if (!cand) return refuse_snapshot(cand.message());
  cycle.set_upstream_serial(cand->serial);
  // A new serial: the parent's chain may have changed too (the parent's status is a snapshot of
  // its own; an unreadable one keeps what the last cycle recorded). Informational: read once the
  // candidate is applied or held, never on the way to applying it (one round trip less).
  auto refresh_chain = [&] {
    if (auto chain = fetch_parent_chain(*parent)) cycle.set_parent_chain(std::move(*chain));
  };

  if (cand->serial < applied_serial)
    return cycle.fail("rollback refused: the parent offers serial " + std::to_string(cand->serial) +
                      ", lower than the applied serial " + std::to_string(applied_serial));
  if (cand->serial == applied_serial && *bytes != (*applied)->envelope) {
    refresh_chain();
    return in_sync();
  }
  if (cand->serial > applied_serial && cand->expires <= now)
    return cycle.fail("snapshot serial " + std::to_string(cand->serial) + " refused: expired at " +
                      proto::format_time(cand->expires) + "; still serving serial " +
                      std::to_string(applied_serial));

  // The parent's pins of this serial, each proved by a signed envelope; a document that does
  // not verify refuses the snapshot (nothing of it is applied, nothing is widened).
  const std::string serial_text = "serial " + std::to_string(cand->serial);
  std::vector<proto::Digest> fetched;  // stored this cycle: forgotten again on a refusal
  auto forget_fetched = [&](const std::set<proto::Digest>& keep = {}) {
    for (const auto& d : fetched)
      if (!applied_refs(*applied, d) && !keep.count(d)) state.forget_manifest(d);
  };
  // The pins and the signed snapshot's changed manifests in one round trip: the manifests are
  // asked for before the pins are known, the pins document in their pipelines. A pin naming
  // another manifest (rare) costs candidate_manifests one more batch.
  ReceivedManifests received;
  if (!parent_pins) {
    parent->fetch_document_beside_manifests(std::string(kPinsPath) + std::to_string(cand->serial),
                                            sync::kMaxPinsBytes);
    prefetch_manifests(*cand, *applied, state, *parent, fetched, received);
  }
  auto& fetched_pins = read_parent_pins(cand->serial);
  if (!fetched_pins) {
    ++metrics.upstream_errors;
    forget_fetched();
    return cycle.fail("cannot fetch the pins of " + serial_text + from + ": " +
                      fetched_pins.message());
  }
  ParentPins& offered = *fetched_pins;
  if (!offered.id.empty()) {
    auto proofs = sync::verify_pins(offered.pins, *cand, *keys, config.threshold);
    if (!proofs) {
      forget_fetched();
      return refuse_snapshot(serial_text + ": " + proofs.message());
    }
    offered.proofs = std::move(*proofs);
  }

  // The parent's offer: its signed snapshot with its pins. A layout change cannot mix layouts:
  // this node's own references are of the old one.
  const bool layout_changed = *applied && (*applied)->snapshot.layout != cand->layout;
  proto::Snapshot offer = sync::effective_snapshot(*cand, offered.pins);
  std::map<std::string, sync::PinSource> proof_of;  // of every reference not the envelope's
  for (const auto& [name, pin] : offered.pins.pins)
    proof_of[name] = {pin.serial, &offered.pins.proofs.at(pin.serial)};
  std::string note;  // the end of the cycle's message
  if (*applied && !layout_changed) {
    // A partition never moves backwards: a pin older than this node's own serial for that
    // partition, naming another manifest, is a rollback; this node keeps its own.
    for (const auto& [name, pin] : offered.pins.pins) {
      auto own_ref = (*applied)->snapshot.partitions.find(name);
      if (own_ref == (*applied)->snapshot.partitions.end()) continue;
      const std::uint64_t own_serial = (*applied)->serial_of(name);
      if (pin.serial >= own_serial) continue;
      if (!(own_ref->second == pin.ref)) {
        ++metrics.verify_failures;
        spdlog::warn(
            "pin refused: partition={} serial={} is older than serial {} applied here "
            "for it (a rollback){}; keeping this node's",
            name, pin.serial, own_serial, from);
        note += "; pin refused: " + name + " at serial " + std::to_string(pin.serial) +
                " is older than serial " + std::to_string(own_serial) + " applied here";
      }
      offer.partitions[name] = own_ref->second;
      proof_of[name] = {own_serial, &(*applied)->proof_of(name)};
    }
  }
  for (const auto& [name, pin] : offered.pins.pins) {
    const auto expires = offered.proofs.at(pin.serial).expires;
    if (expires <= now && proof_of.at(name).serial == pin.serial)
      note += "; stale pin: " + name + " at serial " + std::to_string(pin.serial) +
              " (expired at " + proto::format_time(expires) + ")";
  }

  auto refuse = [&](const std::string& message) {
    forget_fetched();
    refresh_chain();  // who offered it is worth recording with the refusal
    return cycle.fail(message);
  };
  auto cand_manifests = candidate_manifests(offer, *applied, state, *parent, fetched, received);
  if (!cand_manifests)
    return refuse("snapshot " + serial_text + " refused: " + cand_manifests.message());
  // The guard's measures of each changed partition (docs/guard.md), and the change's ends.
  struct Weighed {
    sync::PartitionChange change;
    std::string from, to;
  };
  std::vector<Weighed> weighed;
  std::string history_warning;
  auto history = sync::GuardHistory::load(state.guard_history_path(), &history_warning);
  if (!history_warning.empty()) spdlog::warn("{}", history_warning);
  std::map<std::string, sync::PartitionSize> sizes;  // of each changed partition's candidate
  auto weigh = [&](const std::string& name, const proto::Manifest* before,
                   const proto::Manifest* after) {
    if (after) sizes[name] = sync::measure(after);
    if (!before) return;  // new here: nothing to lose
    // A layout of another depth names other partitions: an old partition is weighed against its
    // entries wherever the new layout puts them (docs/guard.md, "A layout change").
    std::optional<proto::Manifest> kept;
    if ((*applied)->snapshot.depth != offer.depth) {
      kept = sync::entries_kept(*before, *cand_manifests, offer.depth);
      after = &*kept;
    }
    Weighed w;
    w.change = sync::measure_change(name, before, after, history, now, config.guard);
    const auto& applied_parts = (*applied)->snapshot.partitions;
    auto old_ref = applied_parts.find(name);
    auto new_ref = offer.partitions.find(name);
    w.from = sync::change_end(old_ref == applied_parts.end() ? nullptr : &old_ref->second.manifest,
                              sync::kNoManifest);
    w.to = sync::change_end(new_ref == offer.partitions.end() ? nullptr : &new_ref->second.manifest,
                            sync::kRemoved);
    weighed.push_back(std::move(w));
  };
  auto plan = plan_cycle(offer, *cand_manifests, *applied, state, weigh);
  if (!plan) return refuse(plan.message());

  // The guard, per partition (a layout change moves paths between partitions: those that stay
  // in the tree are no loss).
  const std::string candidate_id = std::to_string(cand->serial);
  auto approvals = cycle.live_approvals(now);
  const sync::Guard guard(config.guard);
  std::set<std::string> approved_now;
  std::vector<sync::Approval> used;  // local and parent approvals that let a change through
  auto note_approved = [&](const Weighed& w, std::string_view by) {
    auto unapproved = w.change;
    unapproved.approved = false;
    if (auto would = guard.evaluate(unapproved)) {
      approved_now.insert(w.change.partition);
      spdlog::info("approved deletion: partition={} rule={} deleted={} files={} candidate={}{}",
                   w.change.partition, sync::rule_name(would->rule), would->deleted, would->files,
                   candidate_id, by);
    }
  };
  for (auto& w : weighed) {
    auto& c = w.change;
    if (const auto* a = sync::find_covering(approvals, c.partition, w.from, w.to, now)) {
      c.approved = true;
      used.push_back(*a);
    }
    // The partition's own entry decides, else the node's setting (GuardPolicy::limits_for).
    if (!c.approved && guard.policy().limits_for(c.partition).trust_upstream_approvals &&
        sync::upstream_covers(*cand, c.partition, w.from, w.to, now))
      c.approved = true;
    if (c.approved) note_approved(w, "");
  }
  auto evaluate = [&] {
    std::vector<sync::PartitionChange> changes;
    changes.reserve(weighed.size());
    for (const auto& w : weighed) changes.push_back(w.change);
    return guard.evaluate(changes);
  };
  auto holds = evaluate();
  // About to hold: the parent's approvals count where this node is configured to trust them.
  if (!holds.empty() && config.guard.trust_parent_approvals) {
    for (auto& w : weighed) {
      if (w.change.approved) continue;
      if (const auto* a =
              sync::find_covering(read_parent_approvals(), w.change.partition, w.from, w.to, now)) {
        w.change.approved = true;
        used.push_back(*a);
        note_approved(w, " (approved by the parent)");
      }
    }
    holds = evaluate();
  }
  std::vector<sync::HeldPartition> held;
  for (const auto& h : holds)
    for (const auto& w : weighed)
      if (w.change.partition == h.partition) held.push_back({h, candidate_id, w.from, w.to, 0});

  // Held partitions keep their applied reference, proved by this node's own envelopes; the rest
  // of the snapshot is applied.
  proto::Snapshot next = offer;
  std::set<std::string> held_names;
  std::set<proto::Digest> held_candidates;  // kept in the store for the next evaluation
  for (auto& h : held) {
    const std::string& name = h.hold.partition;
    held_names.insert(name);
    if (auto d = proto::digest_from_hex(h.to)) held_candidates.insert(*d);
    next.partitions[name] = (*applied)->snapshot.partitions.at(name);  // new ones are never held
    proof_of[name] = {(*applied)->serial_of(name), &(*applied)->proof_of(name)};
    const auto expires = proof_expires((*applied)->proof_of(name));
    if (expires <= now) {
      h.stale_since = expires;
      note += "; stale pin: " + name + " held at serial " +
              std::to_string((*applied)->serial_of(name)) + " (expired at " +
              proto::format_time(expires) + ")";
    }
  }
  // A mix needs one layout, and no partition below an entry of the root partition it is mixed
  // with (the held one's, or the new one's with a held partition).
  bool whole = layout_changed && !held.empty();
  if (!whole && !held.empty()) {
    const std::string root(proto::kRootPartition);
    sync::ManifestSet root_set;
    if (auto it = cand_manifests->find(root);
        it != cand_manifests->end() && !held_names.count(root))
      root_set[root] = it->second;
    else if (auto ref = next.partitions.find(root); ref != next.partitions.end())
      if (auto m = state.load_manifest(ref->second.manifest, root, next.depth)) root_set[root] = *m;
    whole = !check_partitions_disjoint(next, root_set);
  }
  if (whole) {
    forget_fetched(held_candidates);
    return cycle.held(held, cand->serial);
  }
  if (!held.empty()) {
    for (auto& p : plan->partitions)
      if (held_names.count(p.partition)) {
        sync::PartitionPlan kept;  // nothing changes in a held partition
        kept.partition = p.partition;
        kept.files_before = next.partitions.at(p.partition).files;
        p = std::move(kept);
      }
    for (const auto& name : held_names) cand_manifests->erase(name);
    std::string names;
    for (const auto& name : held_names) names += (names.empty() ? "" : ", ") + name;
    note = "; held: " + names + note;
  }
  const sync::Pins next_pins = sync::pins_between(*cand, next, proof_of);
  const std::string next_pins_doc =
      next_pins.empty() ? std::string() : sync::encode_pins(next_pins);
  auto remember_parent_pins = [&] {
    if (auto st = state.save_parent_pins(cand->serial, offered.id); !st)
      spdlog::warn("cannot record the parent's pins: {}", st.message());
  };

  // The applied serial evaluated again to the same result: nothing to do.
  if (cand->serial == applied_serial && next_pins_doc == (*applied)->pins_document) {
    forget_fetched(held_candidates);
    own_holds = held;
    auto outcome = in_sync();
    remember_parent_pins();
    return outcome;
  }

  // Every changed partition held or not, the serial is committed: its expiry advances and
  // children get the healthy partitions (docs/protocol.md, "Pins").
  sync::ApplyRequest req;
  req.envelope = std::move(*bytes);
  req.pins = next_pins_doc;
  req.candidate = next;
  req.candidate_manifests = std::move(*cand_manifests);
  if (*applied) req.applied = (*applied)->snapshot;
  req.keep_manifests = held_candidates;
  auto stats = applier.apply(req, *plan);
  if (!stats) {
    // Bytes that contradict the signed manifest: keep nothing of this candidate. Other failures
    // (an unreadable parent) keep the verified staged files for the next try.
    if (applier.content_rejected()) {
      ++metrics.verify_failures;
      applier.discard_staging();
      return refuse("applying " + serial_text + " failed: " + stats.message());
    }
    return cycle.fail("applying " + serial_text + " failed: " + stats.message());
  }
  // The window's baseline learns each applied partition's new size; an approved change (or a
  // new layout) is the new baseline.
  for (const auto& [name, size] : sizes) {
    if (held_names.count(name)) continue;
    if (approved_now.count(name) || layout_changed)
      history.reset(name, size, now);
    else
      history.record(name, size, now, config.guard.window_hours);
  }
  for (const auto& w : weighed)
    if (!req.candidate.partitions.count(w.change.partition)) history.forget(w.change.partition);
  if (auto st = history.save(state.guard_history_path()); !st)
    spdlog::warn("cannot save the guard's history: {}", st.message());
  remember_used_approvals(state, used, now);
  cycle.consume_approvals(approved_now);
  offer_approvals(state, now);
  refresh_chain();
  // Recorded last: a cycle cut short before its holds are saved evaluates the serial again.
  if (held.empty()) {
    cycle.clear_held();
    remember_parent_pins();
    return cycle.applied(cand->serial, *stats, "applied", kExitOk, note);
  }
  cycle.save_holds(held, cand->serial);
  remember_parent_pins();
  return cycle.applied(cand->serial, *stats, "applied", kExitHeld, note);
}

}  // namespace tiersync::node
