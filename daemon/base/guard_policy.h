#pragma once
/// The guard's policy (docs/guard.md): the node's limits and each partition's own, as the
/// configuration (docs/configuration.md, `guard`) sets them. Plain data, below both the engine
/// that applies it (sync/guard.h) and the configuration that reads it (ops/config.h).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tiersync::base {

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

}  // namespace tiersync::base
