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
  /// Content of deleted files, still on disk until the end: a new entry of the same hash is
  /// copied from there instead of fetched (a package moved between folders, say).
  std::vector<std::pair<proto::Digest, std::string>> reusable;
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

/// The plan of one partition (either manifest may be null: a new or a removed partition).
PartitionPlan plan_partition(const std::string& name, const proto::Manifest* before,
                             const proto::Manifest* after);

/// After a layout change: the candidate's entries for the paths of `before`, wherever the new
/// layout (of `depth` segments) puts them, in before's order. What the guard weighs for an old
/// partition (docs/guard.md, "A layout change").
proto::Manifest entries_kept(const proto::Manifest& before, const ManifestSet& candidate,
                             std::size_t depth);

/// Removes from the deletions the paths that the candidate keeps in another partition (after a
/// layout change a path may move): they are no deletion. Call once every partition is planned.
void drop_moved_paths(Plan& plan, const ManifestSet& candidate);

}  // namespace tiersync::sync
