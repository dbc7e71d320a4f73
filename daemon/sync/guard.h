#pragma once
/// The guard (docs/guard.md): a partition whose change would lose too much of what it held, over
/// one change or over a window of time, is held until an operator approves that exact change.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "daemon/base/guard_policy.h"
#include "proto/manifest.h"

namespace tiersync::sync {

// The policy types live in base (daemon/base/guard_policy.h), where the configuration (ops) reads
// them without depending on the engine (docs/architecture.md).
using base::GuardPolicy;
using base::Limits;
using base::PartitionPolicy;

/// A partition's size as the guard measures it.
struct PartitionSize {
  std::uint64_t files = 0;        ///< every entry, symlinks included
  std::uint64_t bytes = 0;        ///< regular files' sizes
  std::uint64_t index_files = 0;  ///< entries marked index
  bool operator==(const PartitionSize&) const = default;
};

/// The size of a manifest (all zeros for none).
PartitionSize measure(const proto::Manifest* manifest);

/// What one change does to a partition, entry by entry (docs/guard.md, "What is measured").
struct Damage {
  std::uint64_t deleted = 0;     ///< paths of before absent from after
  std::uint64_t emptied = 0;     ///< non-empty regular files that become empty
  std::uint64_t shrunk = 0;      ///< regular files under shrink_factor of their size (not empty)
  std::uint64_t to_symlink = 0;  ///< regular files that become symlinks
  std::uint64_t retargeted = 0;  ///< symlinks whose target changes, or that become files
  std::uint64_t index_lost = 0;  ///< index entries deleted, emptied, shrunk or made symlinks
  std::uint64_t damaged() const { return deleted + emptied + shrunk + to_symlink; }
};

/// Compares two manifests of one partition (either may be null). A path for which
/// `kept_elsewhere` returns true (a layout change moved it to another partition) is not deleted.
Damage compare(const proto::Manifest* before, const proto::Manifest* after, double shrink_factor,
               const std::function<bool(std::string_view path)>& kept_elsewhere = {});

/// Everything the guard weighs for one partition's change.
struct PartitionChange {
  std::string partition;
  PartitionSize before;    ///< the applied manifest's size
  PartitionSize after;     ///< the candidate's size (zeros: the partition is removed)
  PartitionSize baseline;  ///< high-water over the window, `before` included (GuardHistory)
  Damage damage;
  bool approved = false;  ///< by a local, parent or trusted upstream approval of this change
};

class GuardHistory;

/// What the guard weighs for one partition's change from `before` to `after` (either may be
/// null), the same for tier0 and relays: both sizes, the window's baseline from `history` at
/// `now`, and the damage under `policy`'s shrink factor. Not approved: the caller matches
/// approvals (approvals.h).
PartitionChange measure_change(const std::string& partition, const proto::Manifest* before,
                               const proto::Manifest* after, const GuardHistory& history,
                               std::int64_t now, const GuardPolicy& policy);

/// The rule that held a partition (docs/guard.md names each).
enum class Rule { kIndex, kRoot, kSmall, kDeleted, kWindow, kBytes };
std::string_view rule_name(Rule rule);
std::optional<Rule> rule_from_name(std::string_view name);

struct Hold {
  std::string partition;
  Rule rule = Rule::kDeleted;
  std::uint64_t count = 0;  ///< what the rule measured (files, bytes or index files lost)
  std::uint64_t of = 0;     ///< out of (the baseline's or the applied manifest's)
  double ratio = 0;         ///< count / of (0 when of is 0)
  double limit = 0;  ///< the rule's limit: a ratio, or an absolute count for index/root/small
  std::uint64_t deleted = 0;  ///< this change's deleted paths
  std::uint64_t files = 0;    ///< the applied manifest's files
};

class Guard {
 public:
  explicit Guard(GuardPolicy policy) : policy_(std::move(policy)) {}
  /// The hold for one change, or nullopt when it passes (approved changes always pass).
  std::optional<Hold> evaluate(const PartitionChange& change) const;
  /// Every hold of a set of changes.
  std::vector<Hold> evaluate(const std::vector<PartitionChange>& changes) const;
  const GuardPolicy& policy() const { return policy_; }

 private:
  GuardPolicy policy_;
};

}  // namespace tiersync::sync
