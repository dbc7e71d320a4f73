#pragma once
/// The roles: tier0 publishes its source folder as a signed snapshot; relays (tier1, mirror)
/// pull their parent's snapshot, verify it, guard it and apply it. Also the operator's commands
/// that work from state_dir alone (status, approve, verify).

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/ops/config.h"

namespace tiersync::transport {
class Transport;
}

namespace tiersync::node {

/// Process exit codes (docs/operators/tier0.md, "Exit codes"; the same for every role).
enum ExitCode : int { kExitOk = 0, kExitFailure = 1, kExitUsage = 2, kExitHeld = 3 };

/// What a cycle came to. Recorded (state_dir/cycle.json), shown by status and logged by its
/// name (to_string): ok, noop, held, failed.
enum class CycleResult { kOk, kNoop, kHeld, kFailed };
std::string_view to_string(CycleResult result);
/// The result a recorded name stands for; nullopt for none ("") or a name this version does
/// not know.
std::optional<CycleResult> parse_cycle_result(std::string_view name);
/// A cycle that applied, published or found nothing to do.
inline bool is_success(CycleResult result) {
  return result == CycleResult::kOk || result == CycleResult::kNoop;
}

struct CycleOutcome {
  int exit_code = kExitOk;
  CycleResult result = CycleResult::kOk;
  std::string message;
};

/// What changed in tier0's source folder since a publish last looked (docs/architecture.md,
/// "Incremental publish"): everything, or the paths the watcher named, each cut to at most one
/// component more than the layout's segments.
struct SourceChanges {
  bool all = false;
  std::set<std::string> paths;

  bool empty() const { return !all && paths.empty(); }
  void merge(SourceChanges other) {
    all = all || other.all;
    paths.merge(other.paths);
  }
};

/// tier0: scan the source, guard each partition, publish and sign. `stop` (SIGTERM) cuts the
/// staging of new files short; see sync::Applier::set_stop_flag. Without `changes` (or with
/// `all`, or when there is no published snapshot or the layout changed) the whole source is
/// walked; with them only the root partition, the partitions they name and the held ones are
/// rescanned, and the others keep their published manifests unread. `changes` is emptied once
/// the publish has looked at them; a busy source or a failure leaves them for the next cycle.
CycleOutcome publish_once(const ops::Config& config, const std::atomic<bool>* stop = nullptr,
                          SourceChanges* changes = nullptr);

/// Relay: one sync cycle from the parent; `stop` as for publish_once.
/// With `keep`, the transport to the parent outlives the cycle (the daemon's loop): its
/// connections and its If-None-Match cache serve the next cycles.
CycleOutcome sync_once(const ops::Config& config, const std::atomic<bool>* stop = nullptr,
                       std::unique_ptr<transport::Transport>* keep = nullptr);

/// The daemon's report of the ports it bound, one per `listen` entry in order (port 0 becomes the
/// kernel's pick): `state_dir/ports.json`, written atomically once every listener is bound and
/// removed at a clean stop (docs/configuration.md, "Bound ports").
Status write_ports_report(const ops::Config& config, const std::vector<std::uint16_t>& ports);
void remove_ports_report(const ops::Config& config);

/// `tiersyncctl status`: the node's state as JSON (no daemon needed).
std::string status_json(const ops::Config& config);
/// The same as a table for a terminal.
std::string status_text(const ops::Config& config);
/// The node's gauges in Prometheus text format (serials, holds, last success).
std::string metrics_text(const ops::Config& config);

/// `tiersyncctl approve`: approves the held candidate of each partition (or all of them).
/// Returns the lines to print, or an error naming a partition that is not held.
Result<std::vector<std::string>> approve(const ops::Config& config,
                                         const std::vector<std::string>& partitions, bool all);

/// `tiersyncctl verify`: every difference between the tree and the applied manifests.
Result<std::vector<std::string>> verify(const ops::Config& config, bool full);

struct RepairReport {
  std::vector<std::string> lines;  ///< verify --full's, then "repaired:", "not repaired:", "left:"
  bool clean = false;              ///< the tree ends with no difference
};
/// `tiersyncctl verify --repair`: verify --full, then every damaged entry repaired at once (a
/// relay from its parent, tier0 from its source where it still holds the published content),
/// then verify --full again. Takes the state_dir lock: no cycle runs meanwhile.
Result<RepairReport> verify_and_repair(const ops::Config& config);

}  // namespace tiersync::node
