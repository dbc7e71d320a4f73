#pragma once
/// The plan from an applied set of manifests to a candidate set: per partition, what to install,
/// what to touch up and what to delete.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proto/manifest.h"

namespace tiersync::sync {

/// partition name -> manifest (shared: the same manifest often stays across snapshots).
using ManifestSet = std::map<std::string, std::shared_ptr<const proto::Manifest>>;

struct PartitionPlan {
  std::string partition;
  std::uint64_t files_before = 0;
  std::vector<const proto::Entry*> installs;  ///< new paths and new content (candidate entries)
  std::vector<const proto::Entry*> retouch;   ///< same content, other mtime or mode
  std::vector<std::string> deletes;           ///< applied paths absent from the candidate
  std::uint64_t replaced = 0;                 ///< installs over an applied path (changes)
};

struct Plan {
  /// Every partition present in either set, the root partition "." last.
  std::vector<PartitionPlan> partitions;

  bool empty() const;
  std::uint64_t install_count() const;
  std::uint64_t delete_count() const;
};

/// Compares applied and candidate manifests entry by entry (both are sorted).
Plan make_plan(const ManifestSet& applied, const ManifestSet& candidate);

}  // namespace tiersync::sync
