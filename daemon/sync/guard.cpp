#include "daemon/sync/guard.h"

#include <fnmatch.h>

namespace tiersync::sync {

std::pair<double, std::uint64_t> GuardPolicy::limits_for(const std::string& partition) const {
  double ratio = max_delete_ratio;
  std::uint64_t min = min_files;
  const PartitionPolicy* best = nullptr;
  for (const auto& p : partitions) {
    if (::fnmatch(p.pattern.c_str(), partition.c_str(), FNM_PATHNAME) != 0) continue;
    if (!best || p.pattern.size() > best->pattern.size()) best = &p;
  }
  if (best) {
    ratio = best->max_delete_ratio.value_or(ratio);
    min = best->min_files.value_or(min);
  }
  return {ratio, min};
}

std::vector<Hold> Guard::evaluate(const std::vector<PartitionChange>& changes) const {
  std::vector<Hold> holds;
  for (const auto& c : changes) {
    if (c.files == 0 || c.deleted == 0 || c.approved) continue;
    auto [limit, min_files] = policy_.limits_for(c.partition);
    double ratio = static_cast<double>(c.deleted) / static_cast<double>(c.files);
    if (ratio > limit && c.files >= min_files)
      holds.push_back(Hold{c.partition, c.deleted, c.files, ratio, limit});
  }
  return holds;
}

}  // namespace tiersync::sync
