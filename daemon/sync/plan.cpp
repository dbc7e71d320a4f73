#include "daemon/sync/plan.h"

#include "proto/path.h"

namespace tiersync::sync {

bool Plan::empty() const {
  for (const auto& p : partitions)
    if (!p.installs.empty() || !p.retouch.empty() || !p.deletes.empty()) return false;
  return true;
}

std::uint64_t Plan::install_count() const {
  std::uint64_t n = 0;
  for (const auto& p : partitions) n += p.installs.size();
  return n;
}

std::uint64_t Plan::delete_count() const {
  std::uint64_t n = 0;
  for (const auto& p : partitions) n += p.deletes.size();
  return n;
}

PartitionPlan plan_partition(const std::string& name, const proto::Manifest* before,
                             const proto::Manifest* after) {
  static const std::vector<proto::Entry> kNone;
  const auto& old_entries = before ? before->entries : kNone;
  const auto& new_entries = after ? after->entries : kNone;
  PartitionPlan p;
  p.partition = name;
  p.files_before = old_entries.size();
  auto o = old_entries.begin();
  auto n = new_entries.begin();
  while (o != old_entries.end() || n != new_entries.end()) {
    if (n == new_entries.end() || (o != old_entries.end() && o->path() < n->path())) {
      p.deletes.emplace_back(o->path());
      if (!o->link) p.reusable.emplace_back(o->sha256, p.deletes.back());
      ++o;
    } else if (o == old_entries.end() || n->path() < o->path()) {
      p.installs.push_back(&*n);
      ++n;
    } else {
      if (!o->same_as(*n)) {
        bool same_content = o->link == n->link && o->sha256 == n->sha256 && o->size == n->size &&
                            o->text() == n->text();
        (same_content && !n->link ? p.retouch : p.installs).push_back(&*n);
        p.replaced += !(same_content && !n->link);
      }
      ++o;
      ++n;
    }
  }
  return p;
}

Plan make_plan(const ManifestSet& applied, const ManifestSet& candidate) {
  Plan plan;
  auto manifest_in = [](const ManifestSet& set, const std::string& name) -> const proto::Manifest* {
    auto it = set.find(name);
    return it == set.end() ? nullptr : it->second.get();
  };
  std::map<std::string, bool> names;
  for (const auto& [name, m] : applied) names[name] = true;
  for (const auto& [name, m] : candidate) names[name] = true;
  std::string root(proto::kRootPartition);
  for (const auto& [name, unused] : names) {
    if (name == root) continue;
    const auto* before = manifest_in(applied, name);
    const auto* after = manifest_in(candidate, name);
    if (before && after && before == after) {
      plan.partitions.push_back(PartitionPlan{name, before->entries.size(), {}, {}, {}, 0, {}});
      continue;
    }
    plan.partitions.push_back(plan_partition(name, before, after));
  }
  if (names.count(root))
    plan.partitions.push_back(
        plan_partition(root, manifest_in(applied, root), manifest_in(candidate, root)));
  drop_moved_paths(plan, candidate);
  return plan;
}

void drop_moved_paths(Plan& plan, const ManifestSet& candidate) {
  for (auto& p : plan.partitions) {
    std::erase_if(p.deletes, [&](const std::string& path) {
      for (const auto& [name, m] : candidate)
        if (name != p.partition && m && m->find(path)) return true;
      return false;
    });
  }
}

proto::Manifest entries_kept(const proto::Manifest& before, const ManifestSet& candidate,
                             std::size_t depth) {
  proto::Manifest kept;
  kept.partition = before.partition;
  const std::string root(proto::kRootPartition);
  for (const auto& e : before.entries) {
    auto it = candidate.find(std::string(proto::partition_of(e.path(), depth)));
    if (it == candidate.end()) it = candidate.find(root);
    if (it == candidate.end()) continue;
    if (const proto::Entry* now = it->second->find(e.path())) kept.entries.push_back(*now);
  }
  return kept;
}

}  // namespace tiersync::sync
