#include "daemon/sync/guard.h"

#include <algorithm>

#include "daemon/sync/history.h"
#include "proto/path.h"

namespace tiersync::sync {

PartitionSize measure(const proto::Manifest* manifest) {
  PartitionSize s;
  if (!manifest) return s;
  s.files = manifest->entries.size();
  for (const auto& e : manifest->entries) {
    if (!e.link) s.bytes += e.size;
    if (e.index) ++s.index_files;
  }
  return s;
}

Damage compare(const proto::Manifest* before, const proto::Manifest* after, double shrink_factor,
               const std::function<bool(std::string_view path)>& kept_elsewhere) {
  Damage d;
  if (!before) return d;
  static const std::vector<proto::Entry> kNone;
  const auto& old_entries = before->entries;
  const auto& new_entries = after ? after->entries : kNone;
  auto it = new_entries.begin();
  for (const auto& e : old_entries) {
    const std::string_view path = e.path();
    while (it != new_entries.end() && it->path() < path) ++it;
    const bool present = it != new_entries.end() && it->path() == path;
    bool lost = false;
    if (!present) {
      if (kept_elsewhere && kept_elsewhere(path)) continue;
      ++d.deleted;
      lost = true;
    } else if (e.link) {
      if (!it->link || it->target() != e.target()) ++d.retargeted;
    } else if (it->link) {
      ++d.to_symlink;
      lost = true;
    } else if (e.size > 0 && it->size == 0) {
      ++d.emptied;
      lost = true;
    } else if (static_cast<double>(it->size) < shrink_factor * static_cast<double>(e.size)) {
      ++d.shrunk;
      lost = true;
    }
    if (lost && e.index) ++d.index_lost;
  }
  return d;
}

PartitionChange measure_change(const std::string& partition, const proto::Manifest* before,
                               const proto::Manifest* after, const GuardHistory& history,
                               std::int64_t now, const GuardPolicy& policy) {
  PartitionChange c;
  c.partition = partition;
  c.before = measure(before);
  c.after = measure(after);
  c.baseline = history.baseline(partition, c.before, now, policy.window_hours);
  c.damage = compare(before, after, policy.shrink_factor);
  return c;
}

std::string_view rule_name(Rule rule) {
  switch (rule) {
    case Rule::kIndex:
      return "index";
    case Rule::kRoot:
      return "root";
    case Rule::kSmall:
      return "small";
    case Rule::kDeleted:
      return "deleted";
    case Rule::kWindow:
      return "window";
    case Rule::kBytes:
      return "bytes";
  }
  return "deleted";
}

std::optional<Rule> rule_from_name(std::string_view name) {
  for (Rule r :
       {Rule::kIndex, Rule::kRoot, Rule::kSmall, Rule::kDeleted, Rule::kWindow, Rule::kBytes})
    if (rule_name(r) == name) return r;
  return std::nullopt;
}

namespace {

double share(std::uint64_t count, std::uint64_t of) {
  return of == 0 ? 0.0 : static_cast<double>(count) / static_cast<double>(of);
}

std::uint64_t loss(std::uint64_t from, std::uint64_t to) {
  return from > to ? from - to : 0;
}

}  // namespace

std::optional<Hold> Guard::evaluate(const PartitionChange& c) const {
  if (c.approved) return std::nullopt;
  const Damage& d = c.damage;
  // A partition this node never had (and no record of one) is new: nothing to lose.
  if (c.before.files == 0 && c.baseline.files == 0) return std::nullopt;
  const Limits limits = policy_.limits_for(c.partition);
  auto hold = [&](Rule rule, std::uint64_t count, std::uint64_t of, double limit) {
    Hold h{c.partition, rule, count, of, share(count, of), limit, d.deleted, c.before.files};
    return std::optional<Hold>(h);
  };

  // The rules in the order that names a hold best: a partition that loses everything is held
  // as "deleted", one that loses only its index as "index" (docs/guard.md, "The rules").
  // Index entries lost by this change (deleted, emptied, shrunk, made symlinks). Not the
  // window's count of index files: an edit of index_files that drops a name would hold every
  // partition at once.
  const std::uint64_t index_gone = d.index_lost;
  if (c.partition == proto::kRootPartition) {
    const std::uint64_t changes = d.damaged() + d.retargeted;
    if (changes > policy_.root_max_changes)
      return hold(Rule::kRoot, changes, c.before.files,
                  static_cast<double>(policy_.root_max_changes));
    if (index_gone > 0) return hold(Rule::kIndex, index_gone, c.before.index_files, 0);
    return std::nullopt;
  }

  const std::uint64_t base_files = std::max(c.baseline.files, c.before.files);
  const std::uint64_t files_lost = loss(base_files, c.after.files);
  if (base_files < limits.min_files) {
    const std::uint64_t worst = std::max(d.damaged(), files_lost);
    if (worst > policy_.small_max_deletes)
      return hold(Rule::kSmall, worst, base_files, static_cast<double>(policy_.small_max_deletes));
  } else {
    if (share(d.damaged(), c.before.files) > limits.max_delete_ratio)
      return hold(Rule::kDeleted, d.damaged(), c.before.files, limits.max_delete_ratio);
    if (share(files_lost, base_files) > limits.max_delete_ratio)
      return hold(Rule::kWindow, files_lost, base_files, limits.max_delete_ratio);
  }
  // A repository without its index is broken whatever its size.
  if (index_gone > 0) return hold(Rule::kIndex, index_gone, c.before.index_files, 0);
  if (base_files >= limits.min_files) {
    const std::uint64_t base_bytes = std::max(c.baseline.bytes, c.before.bytes);
    const std::uint64_t bytes_lost = loss(base_bytes, c.after.bytes);
    if (share(bytes_lost, base_bytes) > limits.max_bytes_loss_ratio)
      return hold(Rule::kBytes, bytes_lost, base_bytes, limits.max_bytes_loss_ratio);
  }
  return std::nullopt;
}

std::vector<Hold> Guard::evaluate(const std::vector<PartitionChange>& changes) const {
  std::vector<Hold> holds;
  for (const auto& c : changes)
    if (auto h = evaluate(c)) holds.push_back(std::move(*h));
  return holds;
}

}  // namespace tiersync::sync
