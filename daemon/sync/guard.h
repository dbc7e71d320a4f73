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

#include "proto/manifest.h"

namespace tiersync::sync {

/// Limits for partitions matching `pattern` (a glob over partition names, e.g. "edge/testing/*").
/// A field left out comes from the node's defaults (GuardPolicy).
struct PartitionPolicy {
  std::string pattern;
  std::optional<double> max_delete_ratio;
  std::optional<std::uint64_t> min_files;
  std::optional<double> max_bytes_loss_ratio;
  std::optional<bool> trust_upstream_approvals;
};

/// The limits that apply to one partition.
struct Limits {
  double max_delete_ratio = 0.20;
  double max_bytes_loss_ratio = 0.50;
  std::uint64_t min_files = 10;
  /// Upstream approvals count for this partition: the node's setting, except that a partition
  /// whose own entry is stricter than the node's defaults (a lower ratio, a higher min_files)
  /// trusts them only when that entry says so.
  bool trust_upstream_approvals = true;
};

struct GuardPolicy {
  double max_delete_ratio = 0.20;
  double max_bytes_loss_ratio = 0.50;
  std::uint64_t min_files = 10;
  std::uint64_t small_max_deletes = 2;  ///< below min_files: files a change may lose
  std::uint64_t root_max_changes = 0;   ///< the root partition's deletions, damage and retargets
  double shrink_factor = 0.5;           ///< "much shorter": under this share of the old size
  unsigned window_hours = 24;           ///< the baseline's window (0: the applied state only)
  unsigned approval_hours = 24;         ///< an approval's lifetime
  bool trust_upstream_approvals = true;
  bool trust_parent_approvals = false;
  std::vector<PartitionPolicy> partitions;

  /// The longest matching pattern's fields, then the defaults.
  Limits limits_for(const std::string& partition) const;
};

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
