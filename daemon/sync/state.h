#pragma once
/// A node's persistent state in state_dir: the applied snapshot, the manifest store, holds,
/// approvals, the apply journal and the last cycle's outcome. Every write is atomic.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "daemon/sync/approvals.h"
#include "daemon/sync/guard.h"
#include "daemon/sync/pins.h"
#include "daemon/sync/plan.h"
#include "proto/digest.h"
#include "proto/manifest.h"
#include "proto/result.h"
#include "proto/snapshot.h"
#include "proto/wire.h"

namespace tiersync::sync {

namespace fs = std::filesystem;

/// The snapshot a node serves: its envelope bytes, its pins, and its effective snapshot (the
/// envelope's payload with the pinned partitions substituted: what the tree holds).
struct Applied {
  std::string envelope;
  proto::Snapshot snapshot;   ///< effective (docs/protocol.md, "Pins")
  std::string pins_document;  ///< as stored and served ("": no pins)
  Pins pins;

  /// The serial of the signed snapshot that names `partition`'s applied reference.
  std::uint64_t serial_of(const std::string& partition) const {
    auto it = pins.pins.find(partition);
    return it == pins.pins.end() ? snapshot.serial : it->second.serial;
  }
  /// The envelope bytes that prove `partition`'s applied reference.
  const std::string& proof_of(const std::string& partition) const {
    auto it = pins.pins.find(partition);
    return it == pins.pins.end() ? envelope : pins.proofs.at(it->second.serial);
  }
};

/// A held partition and the change it was held for: an approval names the same `from` and `to`
/// (docs/guard.md, "Approvals").
struct HeldPartition {
  Hold hold;
  std::string candidate;         ///< for the log and status: `to`, or a relay's candidate serial
  std::string from;              ///< the applied manifest (hex) or "none"
  std::string to;                ///< the candidate manifest (hex), "removed" or "layout:<hex>"
  std::int64_t stale_since = 0;  ///< a relay's pin whose signed snapshot expired (0: fresh)
};

struct HeldState {
  std::uint64_t candidate_serial = 0;  ///< relay: the held snapshot's serial
  std::int64_t since = 0;
  std::vector<HeldPartition> partitions;
};

/// A cycle's message as recorded and shown (it may quote a parent's bytes): cut to this many
/// bytes and escaped (proto::printable).
inline constexpr std::size_t kMaxCycleMessageBytes = 2048;

/// The outcome of the last cycle, for `status`.
struct CycleRecord {
  std::string result;  ///< ok, noop, held, failed
  std::int64_t time = 0;
  std::string message;
  std::uint64_t upstream_serial = 0;
  std::int64_t last_success = 0;  ///< time of the last ok or noop cycle (0: never)
  /// The parent's chain of node names up to the origin, as its status endpoint gave it (empty:
  /// not known, e.g. a file:// parent or a plain static server).
  std::vector<std::string> parent_chain;
};

/// Written before the first file of a candidate is installed; removed once its deletions are
/// done. `previous` is the applied (effective) snapshot's partitions, whose entries the candidate
/// removes. `pins` names the candidate's pins document (hex SHA-256, "" for none): with the
/// serial it identifies the candidate, whose serial may be the applied one (docs/crash-safety.md).
struct Journal {
  std::uint64_t serial = 0;
  std::string pins;
  std::map<std::string, proto::Digest> previous;
};

/// The identity of a pins document in the journal: its hex SHA-256, "" for none.
std::string pins_id(std::string_view pins_document);

/// Where everything lives. state_dir holds what is private; the tree's `.tiersync/` what is served.
class StateStore {
 public:
  StateStore(fs::path state_dir, fs::path tree);

  /// Creates the folders and takes the node's lock (one process per state_dir).
  Status open();
  /// Reads every state file a start relies on (the applied snapshot and its pins, the journal,
  /// the held record, the approvals, the guard's history): an error names the first damaged
  /// one and what is wrong with it. Reads only; nothing is removed or rewritten.
  Status check_at_start() const;

  const fs::path& state_dir() const { return dir_; }
  const fs::path& tree() const { return tree_; }
  fs::path meta_dir() const { return tree_ / ".tiersync"; }
  fs::path staging_dir() const { return tree_ / ".tiersync" / "staging"; }
  fs::path published_snapshot_path() const { return tree_ / proto::wire::kSnapshot; }
  fs::path published_manifest_path(const proto::Digest& d) const;
  fs::path manifest_path(const proto::Digest& d) const;
  /// tier0's hash cache, one file per partition (sync::HashCache::load_partitions).
  fs::path hash_cache_dir() const { return dir_ / "hashcache.d"; }
  /// The single file of earlier versions (split into hash_cache_dir() at the first publish).
  fs::path hash_cache_path() const { return dir_ / "hashcache"; }
  fs::path guard_history_path() const { return dir_ / "guard-history.json"; }

  /// The applied snapshot with its pins (envelope decoded without re-verifying: it was verified
  /// on apply).
  Result<std::optional<Applied>> load_applied() const;
  /// Commit point of a new serial: the candidate becomes the applied snapshot.
  Status save_applied(std::string_view envelope) const;

  /// Pins: state_dir/pins/<serial> holds the committed pins of a serial (absent: none), the
  /// tree's .tiersync/v1/pins/<serial> the served copy; pending.pins a candidate's.
  fs::path pins_path(std::uint64_t serial) const;
  fs::path published_pins_path(std::uint64_t serial) const;
  fs::path pending_pins_path() const { return dir_ / "pending.pins"; }
  /// Commits `document` (or, empty, no pins) as the pins of `serial`: one atomic rename (or
  /// unlink), made durable. With the serial already applied, this is the commit point.
  Status commit_pins(std::uint64_t serial, std::string_view document) const;
  /// The served copy of the pins of `serial` (removed when `document` is empty); not durable.
  Status publish_pins(std::uint64_t serial, std::string_view document) const;
  /// Removes pins of serials other than those given, from state_dir and the tree.
  void collect_pins(std::uint64_t keep_a, std::uint64_t keep_b) const;

  /// A manifest from the store, its bytes checked against `d`. Modes are not checked by default
  /// (what this node applied before the mode rule existed must still load, to be replaced); a
  /// candidate taken from the store asks for ModeRule::kPublishable.
  Result<std::shared_ptr<const proto::Manifest>> load_manifest(
      const proto::Digest& d, const std::string& partition, std::size_t depth,
      proto::ModeRule modes = proto::ModeRule::kAny) const;
  /// Whether the store holds the manifest `d` with bytes that match it.
  bool has_manifest(const proto::Digest& d) const;
  /// Whether the store holds the manifest `d` as exactly `bytes` (its encoding, in hand): a
  /// comparison, not a hash.
  bool has_manifest_bytes(const proto::Digest& d, std::string_view bytes) const;
  /// Whether the store holds a file for `d` of `size` bytes (what a power cut leaves of a
  /// manifest stored without an fsync is caught; its bytes are not read).
  bool has_manifest_of_size(const proto::Digest& d, std::uint64_t size) const;
  Status store_manifest(const proto::Digest& d, std::string_view bytes) const;
  /// Where receive_manifest's caller sends the bytes, and what it calls when the parent sends
  /// them again from the first byte.
  using ManifestFetch =
      std::function<Status(const std::function<Status(const char* data, std::size_t size)>& sink,
                           const std::function<Status()>& restart)>;
  /// Receives a manifest into the store as it arrives, never whole in memory: `fetch` streams it
  /// into a temporary file beside the store's, hashed on the way and refused beyond `max_bytes`.
  /// true: its SHA-256 is `d` and it is stored under that name; false: it is not, and nothing is
  /// left behind (as on an error).
  Result<bool> receive_manifest(const proto::Digest& d, const ManifestFetch& fetch,
                                std::uint64_t max_bytes = proto::kMaxManifestBytes) const;
  /// Removes a stored manifest (of a candidate that was refused).
  void forget_manifest(const proto::Digest& d) const;
  /// Lets the next load_manifest of the committed snapshot `s` (the served view's, the
  /// scrubber's) share `manifests` (its partitions' manifests, decoded or built by the cycle that
  /// committed it, each the manifest its partition names) instead of reading and parsing them
  /// again: they are kept alive until the next commit of this state_dir.
  void share_committed(const proto::Snapshot& s, const ManifestSet& manifests) const;
  /// Every manifest of a snapshot (shared when two partitions... never; one per partition).
  Result<ManifestSet> load_manifests(const proto::Snapshot& s) const;
  /// Makes the manifests of `s` available in the tree (served with the snapshot).
  Status publish_manifests(const proto::Snapshot& s) const;
  /// Removes manifests that neither `keep_a` nor `keep_b` names, from the store and the tree;
  /// `keep_stored` stay in the store (a held candidate's, for the next evaluation).
  void collect_manifests(const proto::Snapshot& keep_a, const proto::Snapshot* keep_b,
                         const std::set<proto::Digest>& keep_stored = {}) const;

  HeldState load_held() const;
  Status save_held(const HeldState& held) const;
  std::vector<Approval> load_approvals() const;
  Status save_approvals(const std::vector<Approval>& approvals) const;
  /// Approvals this node used to apply a change, kept until they expire: offered to children
  /// with its live local approvals (docs/protocol.md, "Parent approvals").
  std::vector<Approval> load_used_approvals() const;
  Status save_used_approvals(const std::vector<Approval>& approvals) const;
  /// The approvals document a relay serves at .tiersync/v1/approvals, of the approvals unexpired
  /// at `now` ("" when there is none).
  std::string parent_approvals_document(std::int64_t now) const;
  fs::path published_approvals_path() const { return tree_ / proto::wire::kApprovals; }
  /// The parent's pins of the serial last evaluated: its serial and pins_id.
  std::pair<std::uint64_t, std::string> load_parent_pins() const;
  Status save_parent_pins(std::uint64_t serial, const std::string& id) const;

  CycleRecord load_cycle() const;
  Status save_cycle(const CycleRecord& record) const;

  Result<std::optional<Journal>> load_journal() const;
  Status save_journal(const Journal& j) const;
  Status clear_journal() const;
  fs::path pending_snapshot_path() const { return dir_ / "pending.snapshot"; }

 private:
  fs::path dir_;
  fs::path tree_;
  std::shared_ptr<void> lock_;
};

}  // namespace tiersync::sync
