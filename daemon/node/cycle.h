#pragma once
/// What every cycle shares: the state store, the outcome record for `status`, and one log line
/// per event.

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "daemon/node/node.h"
#include "daemon/sync/apply.h"
#include "daemon/sync/state.h"
#include "proto/keys.h"

namespace tiersync::transport {
class Transport;
}

namespace tiersync::node {

/// Serialises the writers of the tree within one process: a cycle holds it from open() to its
/// end, the scrubber while it repairs (the state_dir lock keeps other processes out).
std::mutex& tree_mutex();

/// A relay's fetcher over its parent's transport, the cycle's own (counting bytes and errors).
std::unique_ptr<sync::Fetcher> parent_fetcher(transport::Transport& parent);
/// tier0's fetcher for a repair: copies from `source_dir`; the applier's hash check refuses a
/// source file that no longer holds the published content.
std::unique_ptr<sync::Fetcher> source_fetcher(const std::filesystem::path& source_dir);

class Cycle {
 public:
  explicit Cycle(const ops::Config& config);

  /// Takes tree_mutex(), opens state_dir and takes the node's lock.
  Status open() {
    tree_lock_ = std::unique_lock(tree_mutex());
    return state_.open();
  }
  sync::StateStore& state() { return state_; }
  void set_upstream_serial(std::uint64_t serial) { upstream_serial_ = serial; }
  /// The parent's chain of node names (from its status), recorded with the outcome.
  void set_parent_chain(std::vector<std::string> chain) { parent_chain_ = std::move(chain); }
  /// The chain recorded by an earlier cycle (empty when none was).
  const std::vector<std::string>& previous_parent_chain() const { return previous_.parent_chain; }

  CycleOutcome fail(const std::string& message);
  /// Nothing to do; `clear_holds` unless the cycle did not look (tier0's busy source).
  CycleOutcome noop(std::uint64_t serial, bool clear_holds = true);
  /// Records the holds (logged at error level, one line each) and returns exit code 3.
  CycleOutcome held(const std::vector<sync::HeldPartition>& held, std::uint64_t candidate_serial);
  void save_holds(const std::vector<sync::HeldPartition>& held, std::uint64_t candidate_serial);
  /// The operator's approvals still valid at `now`; expired ones are dropped with a log line
  /// naming their partition (docs/guard.md, "Approvals").
  std::vector<sync::Approval> live_approvals(std::int64_t now);
  /// The approvals of these partitions were used: their changes are applied.
  void consume_approvals(const std::set<std::string>& partitions);
  void clear_held();
  /// Records an applied (or published) serial; with kExitHeld, some partitions were held.
  /// `note` ends the message (a relay's held and stale pins).
  CycleOutcome applied(std::uint64_t serial, const sync::ApplyStats& stats,
                       const std::string& verb = "applied", int exit_code = kExitOk,
                       const std::string& note = {});
  /// tier0: nothing published because every changed partition is held.
  CycleOutcome held_only(std::uint64_t serial);

 private:
  CycleOutcome record(int exit_code, CycleResult result, const std::string& message);

  std::unique_lock<std::mutex> tree_lock_;  // released after state_'s lock (declared first)
  const ops::Config& config_;
  sync::StateStore state_;
  std::uint64_t upstream_serial_ = 0;
  std::optional<std::vector<std::string>> parent_chain_;  ///< unset: keep the previous one
  sync::CycleRecord previous_;
  std::chrono::steady_clock::time_point start_;
};

/// No partition may lie below an entry of the root partition (a file or symlink there would turn
/// a folder of the tree into something else).
Status check_partitions_disjoint(const proto::Snapshot& snapshot, const sync::ManifestSet& set);

}  // namespace tiersync::node
