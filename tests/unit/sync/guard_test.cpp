#include "daemon/sync/guard.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "daemon/sync/history.h"
#include "proto/path.h"
#include "tests/unit/support.h"

namespace tiersync::sync {
namespace {

using proto::Entry;
using proto::Manifest;
using Names = std::vector<std::string>;

constexpr const char* kPart = "edge/main/x86_64";

// --- building changes ----------------------------------------------------------------------------

/// A change that deletes `deleted` of `files` files of 1,000 bytes each: the share of bytes lost
/// is the share of files deleted.
PartitionChange deletion(std::string partition, std::uint64_t files, std::uint64_t deleted,
                         bool approved = false) {
  PartitionChange c;
  c.partition = std::move(partition);
  c.before = {files, files * 1000, 0};
  c.after = {files - deleted, (files - deleted) * 1000, 0};
  c.baseline = c.before;
  c.damage.deleted = deleted;
  c.approved = approved;
  return c;
}

/// The names of the held partitions, in order.
Names held(const Guard& guard, const std::vector<PartitionChange>& changes) {
  Names out;
  for (const auto& h : guard.evaluate(changes)) out.push_back(h.partition);
  return out;
}

std::string pkg_path(std::size_t i, const char* partition = kPart) {
  char name[32];
  std::snprintf(name, sizeof name, "/pkg-%04zu.apk", i);
  return partition + std::string(name);
}

/// A package file of `size` bytes (its digest depends on the size, as real contents would).
Entry pkg(std::size_t i, std::uint64_t size = 1000, const char* partition = kPart) {
  const std::string path = pkg_path(i, partition);
  return Entry::file(path, size, proto::sha256(path + std::to_string(size)), 1, 0644);
}

/// Packages `first` .. `first + n - 1` of `size` bytes each.
std::vector<Entry> packages(std::size_t n, std::uint64_t size = 1000, std::size_t first = 0) {
  std::vector<Entry> out;
  for (std::size_t i = first; i < first + n; ++i) out.push_back(pkg(i, size));
  return out;
}

Entry apkindex(std::uint64_t size = 5000) {
  const std::string path = std::string(kPart) + "/APKINDEX.tar.gz";
  return Entry::file(path, size, proto::sha256(path + std::to_string(size)), 1, 0644,
                     /*index=*/true);
}

std::vector<Entry> with_index(std::vector<Entry> entries, std::uint64_t size = 5000) {
  entries.push_back(apkindex(size));
  return entries;
}

std::shared_ptr<Manifest> manifest(std::vector<Entry> entries, const char* partition = kPart) {
  return unit::manifest(partition, std::move(entries));
}

/// What tier0 and relays weigh for one change with no history: the baseline is `before`.
PartitionChange weigh(const Manifest* before, const Manifest* after,
                      const std::string& partition = kPart) {
  return measure_change(partition, before, after, GuardHistory(), 1'764'000'000, GuardPolicy{});
}

/// One partition published again and again, an hour apart, as tier0 publishes and a relay
/// applies (daemon/node/origin.cpp): each candidate is weighed against the applied manifest and
/// the window's baseline; one that passes is applied and recorded, an approved one resets the
/// baseline.
class Publisher {
 public:
  explicit Publisher(GuardPolicy policy = {}, std::string partition = kPart)
      : guard_(std::move(policy)), partition_(std::move(partition)) {}

  std::optional<Hold> offer(std::vector<Entry> entries, bool approved = false) {
    auto candidate = unit::manifest(partition_, std::move(entries));
    const GuardPolicy& policy = guard_.policy();
    PartitionChange c =
        measure_change(partition_, applied_.get(), candidate.get(), history_, now_, policy);
    c.approved = approved;
    auto hold = guard_.evaluate(c);
    if (!hold) {
      applied_ = candidate;
      if (approved)
        history_.reset(partition_, c.after, now_);
      else
        history_.record(partition_, c.after, now_, policy.window_hours);
    }
    now_ += 3600;
    return hold;
  }
  std::size_t applied_files() const { return applied_ ? applied_->entries.size() : 0; }

 private:
  Guard guard_;
  std::string partition_;
  std::shared_ptr<Manifest> applied_;
  GuardHistory history_;
  std::int64_t now_ = 1'764'000'000;
};

}  // namespace

}  // namespace tiersync::sync

// For EXPECT_EQ on limits (base/guard_policy.h gives Limits no comparison), found by ADL.
namespace tiersync::base {
bool operator==(const Limits& a, const Limits& b) {
  return a.max_delete_ratio == b.max_delete_ratio &&
         a.max_bytes_loss_ratio == b.max_bytes_loss_ratio && a.min_files == b.min_files &&
         a.trust_upstream_approvals == b.trust_upstream_approvals;
}
void PrintTo(const Limits& l, std::ostream* os) {
  *os << "{" << l.max_delete_ratio << ", " << l.max_bytes_loss_ratio << ", " << l.min_files << ", "
      << l.trust_upstream_approvals << "}";
}
}  // namespace tiersync::base

namespace tiersync::sync {
namespace {

// --- the policy ----------------------------------------------------------------------------------

TEST(GuardPolicy, Defaults) {
  const GuardPolicy policy;
  EXPECT_DOUBLE_EQ(policy.max_delete_ratio, 0.20);
  EXPECT_DOUBLE_EQ(policy.max_bytes_loss_ratio, 0.50);
  EXPECT_EQ(policy.min_files, 10u);
  EXPECT_EQ(policy.small_max_deletes, 2u);
  EXPECT_EQ(policy.root_max_changes, 0u);
  EXPECT_DOUBLE_EQ(policy.shrink_factor, 0.5);
  EXPECT_EQ(policy.window_hours, 24u);
  EXPECT_EQ(policy.approval_hours, 24u);
  EXPECT_TRUE(policy.trust_upstream_approvals);
  EXPECT_FALSE(policy.trust_parent_approvals);
  EXPECT_EQ(policy.limits_for("edge/main/x86_64"), (Limits{0.20, 0.50, 10, true}));
}

TEST(GuardPolicy, PerPartitionGlob) {
  GuardPolicy policy;
  policy.partitions = {{"edge/testing/*", 0.5, std::nullopt, 0.5, std::nullopt}};
  EXPECT_EQ(policy.limits_for("edge/testing/x86_64"), (Limits{0.5, 0.5, 10, true}));
  EXPECT_EQ(policy.limits_for("edge/main/x86_64"), (Limits{0.2, 0.5, 10, true}));
  EXPECT_EQ(policy.limits_for("."), (Limits{0.2, 0.5, 10, true}));

  const Guard guard{policy};
  EXPECT_FALSE(guard.evaluate(deletion("edge/testing/x86_64", 10, 5)));
  EXPECT_TRUE(guard.evaluate(deletion("edge/testing/x86_64", 10, 6)));
  EXPECT_TRUE(guard.evaluate(deletion("edge/main/x86_64", 10, 5)));
  const auto hold = guard.evaluate(deletion("edge/testing/x86_64", 10, 6));
  ASSERT_TRUE(hold);
  EXPECT_DOUBLE_EQ(hold->limit, 0.5);
}

TEST(GuardPolicy, GlobStarDoesNotCrossSlashes) {
  GuardPolicy policy;
  policy.partitions = {{"edge/*", 0.9, std::nullopt, std::nullopt, std::nullopt}};
  EXPECT_DOUBLE_EQ(policy.limits_for("edge/main/x86_64").max_delete_ratio, 0.2);
  policy.partitions = {{"*/*/x86_64", 0.9, std::nullopt, std::nullopt, std::nullopt}};
  EXPECT_DOUBLE_EQ(policy.limits_for("edge/main/x86_64").max_delete_ratio, 0.9);
  EXPECT_DOUBLE_EQ(policy.limits_for("edge/main/aarch64").max_delete_ratio, 0.2);
  // "*" matches no partition name with a slash.
  policy.partitions = {{"*", 0.9, std::nullopt, std::nullopt, std::nullopt}};
  EXPECT_DOUBLE_EQ(policy.limits_for("edge/main/x86_64").max_delete_ratio, 0.2);
}

TEST(GuardPolicy, LongestPatternWins) {
  const std::vector<PartitionPolicy> patterns = {
      {"*/*/*", 0.3, std::nullopt, std::nullopt, std::nullopt},
      {"edge/*/*", 0.4, 20, 0.6, std::nullopt},
      {"edge/testing/*", 0.5, std::nullopt, std::nullopt, std::nullopt},
      {"edge/testing/riscv64", std::nullopt, 2, std::nullopt, std::nullopt},
  };
  // Whatever the order the patterns are given in.
  for (bool reversed : {false, true}) {
    GuardPolicy policy;
    policy.partitions = patterns;
    if (reversed) std::reverse(policy.partitions.begin(), policy.partitions.end());
    SCOPED_TRACE(reversed ? "reversed" : "in order");
    // Stricter entries (a lower ratio, a higher min_files) do not trust upstream approvals.
    EXPECT_EQ(policy.limits_for("v3.20/main/x86_64"), (Limits{0.3, 0.5, 10, true}));
    EXPECT_EQ(policy.limits_for("edge/main/x86_64"), (Limits{0.4, 0.6, 20, false}));
    EXPECT_EQ(policy.limits_for("edge/testing/x86_64"), (Limits{0.5, 0.5, 10, true}));
    // The longest pattern sets only what it names; the rest comes from the defaults, not from
    // shorter patterns.
    EXPECT_EQ(policy.limits_for("edge/testing/riscv64"), (Limits{0.2, 0.5, 2, true}));
    EXPECT_EQ(policy.limits_for("."), (Limits{0.2, 0.5, 10, true}));
  }
}

TEST(GuardPolicy, PerPartitionMinFiles) {
  GuardPolicy policy;
  policy.partitions = {{"edge/testing/*", std::nullopt, 1000, std::nullopt, std::nullopt}};
  const Guard guard{policy};
  // Below its min_files a partition is small: at most small_max_deletes files may go.
  EXPECT_FALSE(guard.evaluate(deletion("edge/testing/x86_64", 999, 2)));
  auto hold = guard.evaluate(deletion("edge/testing/x86_64", 999, 3));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kSmall);
  hold = guard.evaluate(deletion("edge/testing/x86_64", 1000, 999));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kDeleted);
  hold = guard.evaluate(deletion("edge/main/x86_64", 999, 999));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kDeleted);
}

TEST(GuardPolicy, PerPartitionBytesLossRatio) {
  GuardPolicy policy;
  policy.partitions = {{"edge/main/*", std::nullopt, std::nullopt, 0.8, std::nullopt}};
  const Guard guard{policy};
  // 100 files; the 10 large ones (100,000 bytes of 109,000) cut to 55%: 0.413 of the bytes,
  // each file above shrink_factor, so only the bytes rule sees it.
  std::vector<Entry> before = packages(90, 100);
  std::vector<Entry> after = before;
  for (std::size_t i = 90; i < 100; ++i) {
    before.push_back(pkg(i, 10000));
    after.push_back(pkg(i, 5500));
  }
  auto b = manifest(before), a = manifest(after);
  EXPECT_FALSE(guard.evaluate(weigh(b.get(), a.get())));
  GuardPolicy strict;
  strict.max_bytes_loss_ratio = 0.4;
  auto hold = Guard{strict}.evaluate(weigh(b.get(), a.get()));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kBytes);
}

TEST(GuardPolicy, UpstreamApprovalsAndStricterEntries) {
  GuardPolicy policy;
  const auto entry = [](std::optional<double> ratio, std::optional<std::uint64_t> min,
                        std::optional<double> bytes, std::optional<bool> trust) {
    return PartitionPolicy{"edge/main/*", ratio, min, bytes, trust};
  };
  auto trusts = [&](PartitionPolicy p) {
    policy.partitions = {std::move(p)};
    return policy.limits_for("edge/main/armv7").trust_upstream_approvals;
  };
  policy.partitions.clear();
  EXPECT_TRUE(policy.limits_for("edge/main/armv7").trust_upstream_approvals);
  // Looser or equal entries follow the node.
  EXPECT_TRUE(trusts(entry(0.5, std::nullopt, std::nullopt, std::nullopt)));
  EXPECT_TRUE(trusts(entry(0.2, 10, 0.5, std::nullopt)));
  EXPECT_TRUE(trusts(entry(std::nullopt, 3, 0.9, std::nullopt)));
  // Stricter in any one limit: upstream approvals do not override it...
  EXPECT_FALSE(trusts(entry(0.1, std::nullopt, std::nullopt, std::nullopt)));
  EXPECT_FALSE(trusts(entry(std::nullopt, 11, std::nullopt, std::nullopt)));
  EXPECT_FALSE(trusts(entry(std::nullopt, std::nullopt, 0.1, std::nullopt)));
  EXPECT_FALSE(trusts(entry(0.9, std::nullopt, 0.1, std::nullopt)));
  // ... unless the entry says so.
  EXPECT_TRUE(trusts(entry(0.1, 50, 0.1, true)));
  EXPECT_FALSE(trusts(entry(0.5, std::nullopt, std::nullopt, false)));
  // A node that trusts none: silent entries follow it.
  policy.trust_upstream_approvals = false;
  EXPECT_FALSE(trusts(entry(0.5, std::nullopt, std::nullopt, std::nullopt)));
  EXPECT_FALSE(trusts(entry(0.1, std::nullopt, std::nullopt, std::nullopt)));
  // Only the matching partition is concerned.
  policy.trust_upstream_approvals = true;
  policy.partitions = {entry(0.1, std::nullopt, std::nullopt, std::nullopt)};
  EXPECT_TRUE(policy.limits_for("edge/community/armv7").trust_upstream_approvals);
}

TEST(GuardRule, NamesRoundTrip) {
  for (Rule r :
       {Rule::kIndex, Rule::kRoot, Rule::kSmall, Rule::kDeleted, Rule::kWindow, Rule::kBytes}) {
    auto back = rule_from_name(rule_name(r));
    ASSERT_TRUE(back) << rule_name(r);
    EXPECT_EQ(*back, r);
  }
  EXPECT_EQ(rule_name(Rule::kWindow), "window");
  EXPECT_FALSE(rule_from_name(""));
  EXPECT_FALSE(rule_from_name("Deleted"));
  EXPECT_FALSE(rule_from_name("ratio"));
}

// --- what is measured ----------------------------------------------------------------------------

TEST(Measure, SizeOfAManifest) {
  EXPECT_EQ(measure(nullptr), (PartitionSize{0, 0, 0}));
  auto m = manifest({pkg(0, 100), pkg(1, 0), apkindex(50),
                     Entry::symlink(std::string(kPart) + "/latest.apk", "pkg-0000.apk")});
  // Symlinks count as files, not as bytes.
  EXPECT_EQ(measure(m.get()), (PartitionSize{4, 150, 1}));
  EXPECT_EQ(measure(manifest({}).get()), (PartitionSize{0, 0, 0}));
}

TEST(Compare, NothingBeforeIsNoDamage) {
  auto after = manifest(packages(5));
  const Damage d = compare(nullptr, after.get(), 0.5);
  EXPECT_EQ(d.damaged(), 0u);
  EXPECT_EQ(d.retargeted, 0u);
  EXPECT_EQ(d.index_lost, 0u);
}

TEST(Compare, EverythingGoneIsDeleted) {
  auto before = manifest(with_index(packages(5)));
  const Damage d = compare(before.get(), nullptr, 0.5);
  EXPECT_EQ(d.deleted, 6u);
  EXPECT_EQ(d.index_lost, 1u);
  EXPECT_EQ(d.damaged(), 6u);
  EXPECT_EQ(compare(before.get(), manifest({}).get(), 0.5).deleted, 6u);
}

TEST(Compare, EachKindOfDamage) {
  const std::string p = kPart;
  auto before =
      manifest({pkg(0, 1000), pkg(1, 1000), pkg(2, 1000), pkg(3, 1000), pkg(4, 1000), pkg(5, 0),
                pkg(6, 1000), pkg(7, 1000), Entry::symlink(p + "/a-link", "pkg-0000.apk"),
                Entry::symlink(p + "/b-link", "pkg-0000.apk"),
                Entry::symlink(p + "/c-link", "pkg-0000.apk")});
  auto after = manifest({
      // pkg 0 deleted
      pkg(1, 0),                                      // emptied
      pkg(2, 499),                                    // shrunk under half
      pkg(3, 500),                                    // exactly half: not "much shorter"
      Entry::symlink(pkg_path(4), "pkg-0003.apk"),    // a file made a symlink
      Entry::symlink(pkg_path(5), "pkg-0003.apk"),    // an empty file too
      pkg(6, 5000),                                   // grown: no loss
      pkg(7, 1000),                                   // unchanged
      Entry::symlink(p + "/a-link", "pkg-0003.apk"),  // retargeted
      Entry::file(p + "/b-link", 10, proto::sha256("b"), 1, 0644),  // a symlink made a file
      Entry::symlink(p + "/c-link", "pkg-0000.apk"),                // unchanged
      pkg(8, 1000),                                                 // added: no loss
  });
  const Damage d = compare(before.get(), after.get(), 0.5);
  EXPECT_EQ(d.deleted, 1u);
  EXPECT_EQ(d.emptied, 1u);
  EXPECT_EQ(d.shrunk, 1u);
  EXPECT_EQ(d.to_symlink, 2u);
  EXPECT_EQ(d.retargeted, 2u);
  EXPECT_EQ(d.index_lost, 0u);
  EXPECT_EQ(d.damaged(), 5u);
}

TEST(Compare, RemovedSymlinkIsDeleted) {
  const std::string p = kPart;
  auto before = manifest({pkg(0), Entry::symlink(p + "/link", "pkg-0000.apk")});
  auto after = manifest({pkg(0)});
  const Damage d = compare(before.get(), after.get(), 0.5);
  EXPECT_EQ(d.deleted, 1u);
  EXPECT_EQ(d.retargeted, 0u);
}

TEST(Compare, ShrinkFactorIsAParameter) {
  auto before = manifest({pkg(0, 1000)});
  auto after = manifest({pkg(0, 800)});
  EXPECT_EQ(compare(before.get(), after.get(), 0.5).shrunk, 0u);
  EXPECT_EQ(compare(before.get(), after.get(), 0.9).shrunk, 1u);
  EXPECT_EQ(compare(before.get(), after.get(), 0.8).shrunk, 0u);
}

TEST(Compare, InterleavedPaths) {
  // The walk over both sorted lists: deletions between, before and after additions.
  auto before = manifest({pkg(1), pkg(3), pkg(5), pkg(9)});
  auto after = manifest({pkg(0), pkg(2), pkg(3), pkg(4), pkg(6), pkg(7), pkg(8)});
  EXPECT_EQ(compare(before.get(), after.get(), 0.5).deleted, 3u);
  EXPECT_EQ(compare(after.get(), before.get(), 0.5).deleted, 6u);
}

TEST(Compare, EveryIndexLoss) {
  auto before = manifest(with_index(packages(3)));
  const auto lost = [&](std::vector<Entry> after) {
    return compare(before.get(), manifest(std::move(after)).get(), 0.5).index_lost;
  };
  EXPECT_EQ(lost(packages(3)), 1u);                    // deleted
  EXPECT_EQ(lost(with_index(packages(3), 0)), 1u);     // emptied
  EXPECT_EQ(lost(with_index(packages(3), 2000)), 1u);  // shrunk
  auto links = packages(3);
  links.push_back(Entry::symlink(apkindex().path(), "pkg-0000.apk"));
  EXPECT_EQ(lost(links), 1u);                          // made a symlink
  EXPECT_EQ(lost(with_index(packages(3), 4000)), 0u);  // rewritten a little smaller
  EXPECT_EQ(lost(with_index(packages(3), 9000)), 0u);  // grown
  EXPECT_EQ(lost(with_index(packages(1))), 0u);        // packages gone, index kept
}

TEST(Compare, KeptElsewhereIsNotDeleted) {
  // A layout change moved pkg 1 and 2 into another partition: only pkg 3 is gone.
  auto before = manifest({pkg(0), pkg(1), pkg(2), pkg(3)});
  auto after = manifest({pkg(0)});
  const auto moved = [](std::string_view path) {
    return path == pkg_path(1) || path == pkg_path(2);
  };
  EXPECT_EQ(compare(before.get(), after.get(), 0.5, moved).deleted, 1u);
  EXPECT_EQ(compare(before.get(), after.get(), 0.5).deleted, 3u);
}

// --- the rules, one change at a time
// --------------------------------------------------------------

TEST(Guard, RatioAtTheLimitPasses) {
  const Guard guard{GuardPolicy{}};
  EXPECT_FALSE(guard.evaluate(deletion("p", 10, 2)));    // 0.2 == 0.2
  EXPECT_FALSE(guard.evaluate(deletion("p", 100, 20)));  // 0.2 == 0.2
  EXPECT_FALSE(guard.evaluate(deletion("p", 100, 19)));
}

TEST(Guard, RatioAboveTheLimitHolds) {
  const Guard guard{GuardPolicy{}};
  auto hold = guard.evaluate(deletion("edge/main/x86_64", 100, 21));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->partition, "edge/main/x86_64");
  EXPECT_EQ(hold->rule, Rule::kDeleted);
  EXPECT_EQ(hold->count, 21u);
  EXPECT_EQ(hold->of, 100u);
  EXPECT_EQ(hold->deleted, 21u);
  EXPECT_EQ(hold->files, 100u);
  EXPECT_DOUBLE_EQ(hold->ratio, 0.21);
  EXPECT_DOUBLE_EQ(hold->limit, 0.20);

  EXPECT_TRUE(guard.evaluate(deletion("p", 10, 3)));
  // A partition that is gone altogether: every file deleted.
  hold = guard.evaluate(deletion("edge/main/aarch64", 3268, 3268));
  ASSERT_TRUE(hold);
  EXPECT_DOUBLE_EQ(hold->ratio, 1.0);
}

TEST(Guard, OtherLimitsAtTheBoundary) {
  GuardPolicy policy;
  policy.max_delete_ratio = policy.max_bytes_loss_ratio = 0.3;
  EXPECT_FALSE(Guard{policy}.evaluate(deletion("p", 10, 3)));  // 0.3 == 0.3
  EXPECT_TRUE(Guard{policy}.evaluate(deletion("p", 10, 4)));

  policy.max_delete_ratio = policy.max_bytes_loss_ratio = 1.0;  // never hold
  EXPECT_FALSE(Guard{policy}.evaluate(deletion("p", 10, 10)));

  policy.max_delete_ratio = 0.0;  // any deletion holds
  EXPECT_TRUE(Guard{policy}.evaluate(deletion("p", 1000, 1)));
  EXPECT_FALSE(Guard{policy}.evaluate(deletion("p", 1000, 0)));
}

TEST(Guard, NothingLostPasses) {
  const Guard guard{GuardPolicy{}};
  EXPECT_TRUE(guard.evaluate(std::vector<PartitionChange>{}).empty());
  EXPECT_FALSE(guard.evaluate(deletion("p", 100000, 0)));
  GuardPolicy strict;
  strict.min_files = 0;
  strict.max_delete_ratio = strict.max_bytes_loss_ratio = 0;
  EXPECT_FALSE(Guard{strict}.evaluate(deletion("p", 5, 0)));
  // Growth of every kind.
  auto before = manifest(with_index(packages(20)));
  auto after = manifest(with_index(packages(40, 2000), 6000));
  EXPECT_FALSE(Guard{strict}.evaluate(weigh(before.get(), after.get())));
}

TEST(Guard, OnlyTheOverThresholdPartitionsAreHeld) {
  const Guard guard{GuardPolicy{}};
  const std::vector<PartitionChange> changes = {
      deletion("edge/main/aarch64", 100, 90),  // held
      deletion("edge/main/x86_64", 100, 20),   // at the limit
      deletion("edge/testing/x86", 5, 2),      // small, within small_max_deletes
      deletion("v3.20/main/x86_64", 50, 11),   // held
      deletion("v3.20/main/armv7", 5, 5),      // small, held
  };
  EXPECT_EQ(held(guard, changes),
            (Names{"edge/main/aarch64", "v3.20/main/x86_64", "v3.20/main/armv7"}));
}

TEST(Guard, NewPartitionsAreNeverHeld) {
  GuardPolicy strict;
  strict.min_files = 0;
  strict.max_delete_ratio = strict.max_bytes_loss_ratio = 0;
  for (const char* partition : {kPart, "."}) {
    PartitionChange c;
    c.partition = partition;
    c.after = {5, 500, 1};
    EXPECT_FALSE(Guard{strict}.evaluate(c)) << partition;
    c.after = {};
    EXPECT_FALSE(Guard{strict}.evaluate(c)) << partition;
  }
  // Its first publish, whatever it holds.
  Publisher node;
  EXPECT_FALSE(node.offer(with_index(packages(3))));
  // An empty applied partition with no record is new too.
  EXPECT_FALSE(Guard{strict}.evaluate(weigh(manifest({}).get(), manifest(packages(3)).get())));
}

TEST(Guard, AnEmptyPartitionWithABaselineIsNotNew) {
  // The window remembers 10 files: a partition applied empty since is judged against them.
  PartitionChange c;
  c.partition = kPart;
  c.baseline = {10, 10000, 0};
  auto hold = Guard{GuardPolicy{}}.evaluate(c);
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kWindow);
  EXPECT_EQ(hold->count, 10u);
  EXPECT_EQ(hold->of, 10u);
}

TEST(Guard, ApprovedChangesAreNeverHeld) {
  const Guard guard{GuardPolicy{}};
  EXPECT_FALSE(guard.evaluate(deletion("p", 100, 100, /*approved=*/true)));
  EXPECT_EQ(held(guard, {deletion("a", 100, 50, true), deletion("b", 100, 50, false)}), Names{"b"});
  // Whatever rule would hold it.
  auto base = manifest(with_index(packages(30)));
  const std::vector<std::shared_ptr<Manifest>> candidates = {
      manifest(packages(30)),                   // index
      manifest(with_index(packages(2))),        // deleted
      manifest(with_index(packages(30, 0))),    // deleted (emptied)
      manifest(with_index(packages(30, 400))),  // deleted (shrunk)
  };
  for (const auto& cand : candidates) {
    PartitionChange c = weigh(base.get(), cand.get());
    ASSERT_TRUE(guard.evaluate(c));
    c.approved = true;
    EXPECT_FALSE(guard.evaluate(c));
  }
  PartitionChange root = weigh(manifest({Entry::symlink("latest-stable", "v3.20")}, ".").get(),
                               manifest({}, ".").get(), ".");
  ASSERT_TRUE(guard.evaluate(root));
  root.approved = true;
  EXPECT_FALSE(guard.evaluate(root));
  PartitionChange window = deletion("p", 80, 10);
  window.baseline = {100, 100000, 0};
  ASSERT_TRUE(guard.evaluate(window));
  window.approved = true;
  EXPECT_FALSE(guard.evaluate(window));
  PartitionChange small = deletion("p", 5, 5);
  ASSERT_TRUE(guard.evaluate(small));
  small.approved = true;
  EXPECT_FALSE(guard.evaluate(small));
}

TEST(Guard, TheFirstRuleThatHoldsNamesTheHold) {
  // Index deleted along with most of the packages: the deleted rule names it (it says more).
  auto before = manifest(with_index(packages(50)));
  auto after = manifest(packages(5));
  auto hold = Guard{GuardPolicy{}}.evaluate(weigh(before.get(), after.get()));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kDeleted);
  EXPECT_EQ(hold->count, 46u);
  EXPECT_EQ(hold->of, 51u);
  EXPECT_DOUBLE_EQ(hold->limit, 0.2);
  EXPECT_EQ(hold->deleted, 46u);
  EXPECT_EQ(hold->files, 51u);
  // Both deleted and window would hold: deleted comes first.
  PartitionChange c = deletion("p", 80, 30);
  c.baseline = {100, 100000, 0};
  hold = Guard{GuardPolicy{}}.evaluate(c);
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kDeleted);
}

// --- issue 13, "Why" 3: damage that is not a deletion
// ----------------------------------------------

TEST(GuardScenario, AllFilesTruncatedToZero) {
  // 20 files, no index: every one emptied.
  Publisher node;
  ASSERT_FALSE(node.offer(packages(20)));
  auto hold = node.offer(packages(20, 0));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kDeleted);
  EXPECT_EQ(hold->count, 20u);
  EXPECT_EQ(hold->of, 20u);
  EXPECT_DOUBLE_EQ(hold->ratio, 1.0);
  EXPECT_EQ(hold->deleted, 0u) << "nothing deleted, yet everything lost";
  // With its index truncated too it is still held as deleted (the index is one of the 20).
  Publisher indexed;
  ASSERT_FALSE(indexed.offer(with_index(packages(19))));
  hold = indexed.offer(with_index(packages(19, 0), 0));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kDeleted);
}

TEST(GuardScenario, TruncationsAtTheLimit) {
  Publisher node;
  ASSERT_FALSE(node.offer(packages(20)));
  // 4 of 20 emptied: 0.2 of the files and of the bytes: passes. Then one more per publish: each
  // is 1/20 of its change, but the window remembers every byte: the eleventh is held.
  auto some = packages(20);
  for (std::size_t i = 0; i < 4; ++i) some[i] = pkg(i, 0);
  EXPECT_FALSE(node.offer(some));
  for (std::size_t i = 4; i < 10; ++i) {
    some[i] = pkg(i, 0);
    EXPECT_FALSE(node.offer(some)) << i;
  }
  some[10] = pkg(10, 0);
  auto hold = node.offer(some);
  ASSERT_TRUE(hold);
  // One more emptied file is 1/20 of this change, but the window remembers 20,000 bytes.
  EXPECT_EQ(hold->rule, Rule::kBytes);
  EXPECT_EQ(hold->count, 11000u);
  EXPECT_EQ(hold->of, 20000u);
}

TEST(GuardScenario, AllFilesReplacedBySymlinks) {
  Publisher node;
  ASSERT_FALSE(node.offer(packages(20)));
  std::vector<Entry> links = {pkg(0)};
  for (std::size_t i = 1; i < 20; ++i) links.push_back(Entry::symlink(pkg_path(i), "pkg-0000.apk"));
  auto hold = node.offer(links);
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kDeleted);
  EXPECT_EQ(hold->count, 19u);
  EXPECT_EQ(hold->deleted, 0u);
}

TEST(GuardScenario, OnlyTheIndexDeleted) {
  Publisher node;
  ASSERT_FALSE(node.offer(with_index(packages(44))));  // 45 files
  auto hold = node.offer(packages(44));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kIndex);
  EXPECT_EQ(hold->count, 1u);
  EXPECT_EQ(hold->deleted, 1u);
  EXPECT_EQ(hold->files, 45u);
  // Rewritten (as each publish does) it passes; replaced by an empty one it is held.
  EXPECT_FALSE(node.offer(with_index(packages(44), 5200)));
  hold = node.offer(with_index(packages(44), 0));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kIndex);
}

TEST(GuardScenario, IndexLostAgainstTheBaseline) {
  // No index entry lost in this change, yet fewer index files than the window saw: a flag
  // dropped (or an index lost in a change the history recorded) still holds.
  PartitionChange c = deletion(kPart, 100, 0);
  c.before.index_files = c.after.index_files = 1;
  c.baseline = c.before;
  c.baseline.index_files = 2;
  // Not held: the index rule counts what this change loses, or an edit of index_files that
  // drops a name would hold every partition at once (docs/guard.md).
  EXPECT_FALSE(Guard{GuardPolicy{}}.evaluate(c));
}

TEST(GuardScenario, RootSymlinkRetargetedOrRemoved) {
  GuardPolicy policy;
  const auto root = [](std::string stable, bool last_updated = true, std::string extra = "") {
    std::vector<Entry> e;
    if (!stable.empty()) e.push_back(Entry::symlink("latest-stable", stable));
    if (last_updated) e.push_back(unit::file_entry("last-updated", "1764000000\n"));
    if (!extra.empty()) e.push_back(Entry::symlink(extra, "edge"));
    return e;
  };
  Publisher node(policy, ".");
  ASSERT_FALSE(node.offer(root("v3.20")));
  auto hold = node.offer(root("v3.21"));
  ASSERT_TRUE(hold) << "retargeted";
  EXPECT_EQ(hold->partition, ".");
  EXPECT_EQ(hold->rule, Rule::kRoot);
  EXPECT_EQ(hold->count, 1u);
  EXPECT_DOUBLE_EQ(hold->limit, 0);
  hold = node.offer(root(""));
  ASSERT_TRUE(hold) << "removed";
  EXPECT_EQ(hold->rule, Rule::kRoot);
  hold = node.offer(root("v3.20", /*last_updated=*/false));
  ASSERT_TRUE(hold) << "a root file deleted";
  EXPECT_EQ(hold->rule, Rule::kRoot);
  // What a publish does every time passes: last-updated rewritten, a symlink added.
  EXPECT_FALSE(node.offer({Entry::symlink("latest-stable", "v3.20"),
                           unit::file_entry("last-updated", "1764003600\n")}));
  EXPECT_FALSE(node.offer(root("v3.20", true, "latest-edge")));

  // root_max_changes raises the absolute limit; the ratios never apply to the root.
  policy.root_max_changes = 1;
  Publisher loose(policy, ".");
  ASSERT_FALSE(loose.offer(root("v3.20", true, "latest-edge")));
  EXPECT_FALSE(loose.offer(root("v3.21", true, "latest-edge")));
  hold = loose.offer(root("v3.22"));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->count, 2u);
  EXPECT_DOUBLE_EQ(hold->limit, 1);
}

TEST(GuardScenario, RootIsNotJudgedByRatiosOrSmallness) {
  // 40 root files, 0 changes allowed: deleting 1 (2.5%) holds; with 100 allowed, deleting half
  // passes (no deleted, window or bytes rule for the root).
  std::vector<Entry> many;
  for (int i = 0; i < 40; ++i) many.push_back(unit::file_entry("f" + std::to_string(i), "data"));
  auto before = manifest(many, ".");
  auto after = manifest(std::vector<Entry>(many.begin(), many.begin() + 39), ".");
  auto hold = Guard{GuardPolicy{}}.evaluate(weigh(before.get(), after.get(), "."));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kRoot);
  GuardPolicy loose;
  loose.root_max_changes = 100;
  auto half = manifest(std::vector<Entry>(many.begin(), many.begin() + 20), ".");
  EXPECT_FALSE(Guard{loose}.evaluate(weigh(before.get(), half.get(), ".")));
}

// --- issue 13, "Why" 4: small steps
// ---------------------------------------------------------------

TEST(GuardScenario, TenFilesMinusTwoThenMinusEight) {
  Publisher node;
  ASSERT_FALSE(node.offer(packages(10)));
  EXPECT_FALSE(node.offer(packages(8))) << "2 of 10: exactly the limit";
  auto hold = node.offer({});
  ASSERT_TRUE(hold) << "8 files now, under min_files: the baseline remembers 10";
  EXPECT_EQ(hold->rule, Rule::kDeleted);
  EXPECT_EQ(hold->count, 8u);
  EXPECT_EQ(node.applied_files(), 8u);
  // One more file instead of all 8: 1/8 passes per change, 3/10 over the window is held.
  hold = node.offer(packages(7));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kWindow);
  EXPECT_EQ(hold->count, 3u);
  EXPECT_EQ(hold->of, 10u);
  EXPECT_DOUBLE_EQ(hold->ratio, 0.3);
}

TEST(GuardScenario, TenFilesMinusTwoThenMinusEightWithoutAWindow) {
  // No window: the cliff below min_files is gone anyway, the small rule holds.
  GuardPolicy policy;
  policy.window_hours = 0;
  Publisher node(policy);
  ASSERT_FALSE(node.offer(packages(10)));
  ASSERT_FALSE(node.offer(packages(8)));
  auto hold = node.offer({});
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kSmall);
  EXPECT_EQ(hold->count, 8u);
  EXPECT_EQ(hold->of, 8u);
  EXPECT_DOUBLE_EQ(hold->limit, 2);
}

std::vector<Entry> minus_a_fifth(std::size_t files) {
  return packages(files - files / 5);
}

TEST(GuardScenario, TwentyPercentPerPublish) {
  Publisher node;
  ASSERT_FALSE(node.offer(packages(100)));
  ASSERT_FALSE(node.offer(minus_a_fifth(100)));  // 80
  auto hold = node.offer(minus_a_fifth(80));     // 64: 16/80 per change, 36/100 over the window
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kWindow);
  EXPECT_EQ(hold->count, 36u);
  EXPECT_EQ(hold->of, 100u);
  EXPECT_DOUBLE_EQ(hold->ratio, 0.36);
  EXPECT_EQ(hold->deleted, 16u);
  EXPECT_EQ(hold->files, 80u);
  EXPECT_EQ(node.applied_files(), 80u);
}

TEST(GuardScenario, TwentyPercentPerPublishWithoutAWindow) {
  // What the window prevents: 11 files left of 100 after 11 publishes.
  GuardPolicy policy;
  policy.window_hours = 0;
  Publisher node(policy);
  ASSERT_FALSE(node.offer(packages(100)));
  std::size_t files = 100;
  for (int i = 0; i < 11; ++i) {
    ASSERT_FALSE(node.offer(minus_a_fifth(files))) << "publish " << i << " of " << files;
    files -= files / 5;
  }
  EXPECT_EQ(node.applied_files(), 11u);
}

TEST(GuardScenario, TheWindowForgetsOldStates) {
  // 100 -> 80, then 25 hours later 80 -> 64 is a change of 16/80 against a baseline of 80.
  Publisher node;
  ASSERT_FALSE(node.offer(packages(100)));
  ASSERT_FALSE(node.offer(minus_a_fifth(100)));
  for (int hour = 0; hour < 24; ++hour) ASSERT_FALSE(node.offer(packages(80)));
  EXPECT_FALSE(node.offer(minus_a_fifth(80)));
}

TEST(GuardScenario, JunkAddedThenTheRealFilesAndIndexDeleted) {
  // 19 packages and their index; 80 small junk files added; then the 20 real files deleted:
  // 20/100 per change and over the window, yet the index is gone.
  Publisher node;
  const auto real = with_index(packages(19));
  ASSERT_FALSE(node.offer(real));
  auto padded = real;
  for (const auto& e : packages(80, 10, 1000)) padded.push_back(e);
  ASSERT_FALSE(node.offer(padded)) << "adding loses nothing";
  auto hold = node.offer(packages(80, 10, 1000));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kIndex);
  EXPECT_EQ(hold->deleted, 20u);
  EXPECT_EQ(hold->files, 100u);
}

TEST(GuardScenario, JunkAddedThenTheRealFilesDeletedWithoutAnIndex) {
  // No index to miss: the bytes rule sees the real files' bytes go.
  Publisher node;
  ASSERT_FALSE(node.offer(packages(20, 1000)));
  auto padded = packages(20, 1000);
  for (const auto& e : packages(80, 10, 1000)) padded.push_back(e);
  ASSERT_FALSE(node.offer(padded));
  auto hold = node.offer(packages(80, 10, 1000));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kBytes);
  EXPECT_EQ(hold->count, 20000u);
  EXPECT_EQ(hold->of, 20800u);
}

TEST(GuardScenario, PaddingWithLookAlikesIsJudgedByTheRatios) {
  // The limit of what is measured (docs/guard.md): junk as large as the real files, and no
  // index, dilutes every ratio; at exactly the limit it passes, one file more is held.
  Publisher node;
  ASSERT_FALSE(node.offer(packages(20)));
  auto padded = packages(20);
  for (const auto& e : packages(80, 1000, 1000)) padded.push_back(e);
  ASSERT_FALSE(node.offer(padded));
  auto most = packages(80, 1000, 1000);
  EXPECT_FALSE(node.offer(most));
  Publisher again;
  ASSERT_FALSE(again.offer(packages(20)));
  ASSERT_FALSE(again.offer(padded));
  most.pop_back();
  EXPECT_TRUE(again.offer(most));
}

TEST(GuardScenario, BytesLostByDrips) {
  // 10 files of 10,000 bytes, each publish truncates them by 15%: the fifth is 55.6% below the
  // window's high-water mark.
  Publisher node;
  ASSERT_FALSE(node.offer(packages(10, 10000)));
  for (std::uint64_t size : {8500u, 7225u, 6141u, 5220u})
    ASSERT_FALSE(node.offer(packages(10, size)));
  auto hold = node.offer(packages(10, 4437));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kBytes);
  EXPECT_EQ(hold->count, 55630u);
  EXPECT_EQ(hold->of, 100000u);
  EXPECT_DOUBLE_EQ(hold->limit, 0.5);
}

TEST(GuardScenario, FilesMuchShorter) {
  Publisher node;
  ASSERT_FALSE(node.offer(packages(20, 1000)));
  auto some = packages(20, 1000);
  for (std::size_t i = 0; i < 5; ++i) some[i] = pkg(i, 400);
  auto hold = node.offer(some);
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kDeleted);
  EXPECT_EQ(hold->count, 5u);
}

TEST(GuardScenario, SmallPartitions) {
  Publisher node;
  ASSERT_FALSE(node.offer(packages(5)));
  auto hold = node.offer(packages(2));
  ASSERT_TRUE(hold) << "3 of 5";
  EXPECT_EQ(hold->rule, Rule::kSmall);
  EXPECT_EQ(hold->count, 3u);
  EXPECT_EQ(hold->of, 5u);
  EXPECT_DOUBLE_EQ(hold->limit, 2);
  EXPECT_FALSE(node.offer(packages(3))) << "2 of 5";
  // Emptied files count like deleted ones.
  auto emptied = packages(3, 0);
  EXPECT_TRUE(node.offer(emptied));
  // The baseline remembers 5: one more file is a loss of 3.
  hold = node.offer(packages(2));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kSmall);
  EXPECT_EQ(hold->count, 3u);
}

TEST(GuardScenario, SmallPartitionDripsAddUp) {
  Publisher node;
  ASSERT_FALSE(node.offer(packages(9)));
  EXPECT_FALSE(node.offer(packages(8)));
  EXPECT_FALSE(node.offer(packages(7)));
  auto hold = node.offer(packages(6));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kSmall);
  EXPECT_EQ(hold->count, 3u);
  EXPECT_EQ(hold->of, 9u);
}

TEST(GuardScenario, SmallMaxDeletesIsAParameter) {
  GuardPolicy policy;
  policy.small_max_deletes = 0;
  EXPECT_TRUE(Guard{policy}.evaluate(deletion("p", 5, 1)));
  EXPECT_FALSE(Guard{policy}.evaluate(deletion("p", 5, 0)));
  policy.small_max_deletes = 9;
  EXPECT_FALSE(Guard{policy}.evaluate(deletion("p", 9, 9)));
  policy.min_files = 0;  // no partition is small: the ratios apply
  auto hold = Guard{policy}.evaluate(deletion("p", 1, 1));
  ASSERT_TRUE(hold);
  EXPECT_EQ(hold->rule, Rule::kDeleted);
}

TEST(GuardScenario, AnApprovedChangeIsTheNewBaseline) {
  Publisher node;
  ASSERT_FALSE(node.offer(packages(100)));
  ASSERT_TRUE(node.offer(packages(50)));
  EXPECT_FALSE(node.offer(packages(50), /*approved=*/true));
  // Against the approved 50: 5 more is 0.1. Without the reset it would be 55/100.
  EXPECT_FALSE(node.offer(packages(45)));
  EXPECT_EQ(node.applied_files(), 45u);
}

TEST(MeasureChange, SizesBaselineAndDamage) {
  const auto before = manifest(with_index(packages(20)));
  const auto after = manifest(packages(15));  // five packages and the index gone
  GuardHistory history;
  const std::int64_t now = 1'764'000'000;
  history.record(kPart, {40, 40000, 1}, now - 3600, 24);  // larger an hour ago
  const PartitionChange c = measure_change(kPart, before.get(), after.get(), history, now, {});
  EXPECT_EQ(c.partition, kPart);
  EXPECT_EQ(c.before, (PartitionSize{21, 25000, 1}));
  EXPECT_EQ(c.after, (PartitionSize{15, 15000, 0}));
  EXPECT_EQ(c.baseline, (PartitionSize{40, 40000, 1}));
  EXPECT_EQ(c.damage.deleted, 6u);
  EXPECT_EQ(c.damage.index_lost, 1u);
  EXPECT_FALSE(c.approved);
  GuardPolicy no_window;
  no_window.window_hours = 0;
  EXPECT_EQ(measure_change(kPart, before.get(), nullptr, history, now, no_window).baseline,
            c.before);
}

}  // namespace
}  // namespace tiersync::sync
