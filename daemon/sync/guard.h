#pragma once
/// The deletion-ratio guard (docs/guard.md): a partition that would lose too large a share of its
/// files is held until an operator approves it.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tiersync::sync {

/// Limits for partitions matching `pattern` (a glob over partition names, e.g. "edge/testing/*").
struct PartitionPolicy {
  std::string pattern;
  std::optional<double> max_delete_ratio;
  std::optional<std::uint64_t> min_files;
};

struct GuardPolicy {
  double max_delete_ratio = 0.20;
  std::uint64_t min_files = 10;
  bool trust_upstream_approvals = true;
  std::vector<PartitionPolicy> partitions;

  /// The limits for one partition: the longest matching pattern wins, then the defaults.
  std::pair<double, std::uint64_t> limits_for(const std::string& partition) const;
};

/// What the guard needs to know of one partition of the applied snapshot.
struct PartitionChange {
  std::string partition;
  std::uint64_t files = 0;    ///< entries in the applied manifest
  std::uint64_t deleted = 0;  ///< of those, absent from the candidate
  bool approved = false;      ///< by the local operator or by a trusted upstream approval
};

struct Hold {
  std::string partition;
  std::uint64_t deleted = 0;
  std::uint64_t files = 0;
  double ratio = 0;
  double limit = 0;
};

class Guard {
 public:
  explicit Guard(GuardPolicy policy) : policy_(std::move(policy)) {}
  /// The partitions to hold: ratio > limit and files >= min_files, unless approved.
  std::vector<Hold> evaluate(const std::vector<PartitionChange>& changes) const;
  const GuardPolicy& policy() const { return policy_; }

 private:
  GuardPolicy policy_;
};

}  // namespace tiersync::sync
