#include "daemon/base/guard_policy.h"

#include <fnmatch.h>

namespace tiersync::base {

Limits GuardPolicy::limits_for(const std::string& partition) const {
  Limits l{max_delete_ratio, max_bytes_loss_ratio, min_files, trust_upstream_approvals};
  const PartitionPolicy* best = nullptr;
  for (const auto& p : partitions) {
    if (::fnmatch(p.pattern.c_str(), partition.c_str(), FNM_PATHNAME) != 0) continue;
    if (!best || p.pattern.size() > best->pattern.size()) best = &p;
  }
  if (!best) return l;
  l.max_delete_ratio = best->max_delete_ratio.value_or(l.max_delete_ratio);
  l.max_bytes_loss_ratio = best->max_bytes_loss_ratio.value_or(l.max_bytes_loss_ratio);
  l.min_files = best->min_files.value_or(l.min_files);
  // An operator who made a partition stricter than the node's defaults meant it: an approval
  // given upstream, under the origin's looser limits, does not override it unless they say so.
  const bool stricter = l.max_delete_ratio < max_delete_ratio ||
                        l.max_bytes_loss_ratio < max_bytes_loss_ratio || l.min_files > min_files;
  l.trust_upstream_approvals =
      best->trust_upstream_approvals.value_or(stricter ? false : trust_upstream_approvals);
  return l;
}

}  // namespace tiersync::base
