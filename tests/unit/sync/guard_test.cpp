#include "daemon/sync/guard.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace tiersync::sync {
namespace {

PartitionChange change(std::string partition, std::uint64_t files, std::uint64_t deleted,
                       bool approved = false) {
  return PartitionChange{std::move(partition), files, deleted, approved};
}

/// The names of the held partitions, in order.
std::vector<std::string> held(const Guard& guard, const std::vector<PartitionChange>& changes) {
  std::vector<std::string> out;
  for (const auto& h : guard.evaluate(changes)) out.push_back(h.partition);
  return out;
}

using Names = std::vector<std::string>;

TEST(GuardPolicy, Defaults) {
  const GuardPolicy policy;
  EXPECT_DOUBLE_EQ(policy.max_delete_ratio, 0.20);
  EXPECT_EQ(policy.min_files, 10u);
  EXPECT_TRUE(policy.trust_upstream_approvals);
  EXPECT_EQ(policy.limits_for("edge/main/x86_64"), (std::pair<double, std::uint64_t>{0.20, 10}));
}

TEST(Guard, RatioAtTheLimitPasses) {
  const Guard guard{GuardPolicy{}};
  EXPECT_TRUE(guard.evaluate({change("p", 10, 2)}).empty());    // 0.2 == 0.2
  EXPECT_TRUE(guard.evaluate({change("p", 100, 20)}).empty());  // 0.2 == 0.2
  EXPECT_TRUE(guard.evaluate({change("p", 100, 19)}).empty());
}

TEST(Guard, RatioAboveTheLimitHolds) {
  const Guard guard{GuardPolicy{}};
  auto holds = guard.evaluate({change("edge/main/x86_64", 100, 21)});
  ASSERT_EQ(holds.size(), 1u);
  EXPECT_EQ(holds[0].partition, "edge/main/x86_64");
  EXPECT_EQ(holds[0].deleted, 21u);
  EXPECT_EQ(holds[0].files, 100u);
  EXPECT_DOUBLE_EQ(holds[0].ratio, 0.21);
  EXPECT_DOUBLE_EQ(holds[0].limit, 0.20);

  EXPECT_EQ(guard.evaluate({change("p", 10, 3)}).size(), 1u);
  // A partition that is gone altogether: every file deleted.
  holds = guard.evaluate({change("edge/main/aarch64", 3268, 3268)});
  ASSERT_EQ(holds.size(), 1u);
  EXPECT_DOUBLE_EQ(holds[0].ratio, 1.0);
}

TEST(Guard, OtherLimitsAtTheBoundary) {
  GuardPolicy policy;
  policy.max_delete_ratio = 0.3;
  const Guard guard{policy};
  EXPECT_TRUE(guard.evaluate({change("p", 10, 3)}).empty());  // 0.3 == 0.3
  EXPECT_EQ(guard.evaluate({change("p", 10, 4)}).size(), 1u);

  policy.max_delete_ratio = 1.0;  // never hold
  EXPECT_TRUE(Guard{policy}.evaluate({change("p", 10, 10)}).empty());

  policy.max_delete_ratio = 0.0;  // any deletion holds
  EXPECT_EQ(Guard{policy}.evaluate({change("p", 1000, 1)}).size(), 1u);
  EXPECT_TRUE(Guard{policy}.evaluate({change("p", 1000, 0)}).empty());
}

TEST(Guard, MinFiles) {
  const Guard guard{GuardPolicy{}};
  // Below min_files a partition may lose everything.
  EXPECT_TRUE(guard.evaluate({change("p", 9, 9)}).empty());
  EXPECT_TRUE(guard.evaluate({change("p", 1, 1)}).empty());
  // At min_files it is guarded.
  EXPECT_EQ(guard.evaluate({change("p", 10, 10)}).size(), 1u);
  EXPECT_EQ(guard.evaluate({change("p", 10, 3)}).size(), 1u);

  GuardPolicy none;
  none.min_files = 0;
  EXPECT_EQ(Guard{none}.evaluate({change("p", 1, 1)}).size(), 1u);
}

TEST(Guard, Approved) {
  const Guard guard{GuardPolicy{}};
  EXPECT_TRUE(guard.evaluate({change("p", 100, 100, /*approved=*/true)}).empty());
  EXPECT_EQ(held(guard, {change("a", 100, 50, true), change("b", 100, 50, false)}), Names{"b"});
}

TEST(Guard, ZeroFilePartitions) {
  const Guard guard{GuardPolicy{}};
  EXPECT_TRUE(guard.evaluate({change("p", 0, 0)}).empty());
  GuardPolicy strict;
  strict.min_files = 0;
  strict.max_delete_ratio = 0;
  EXPECT_TRUE(Guard{strict}.evaluate({change("p", 0, 0)}).empty());
  EXPECT_TRUE(Guard{strict}.evaluate({change("p", 5, 0)}).empty());
}

TEST(Guard, NothingDeleted) {
  const Guard guard{GuardPolicy{}};
  EXPECT_TRUE(guard.evaluate({}).empty());
  EXPECT_TRUE(guard.evaluate({change("p", 100000, 0)}).empty());
}

TEST(Guard, OnlyTheOverThresholdPartitionsAreHeld) {
  const Guard guard{GuardPolicy{}};
  const std::vector<PartitionChange> changes = {
      change(".", 20, 1),                    // 5%
      change("edge/main/aarch64", 100, 90),  // held
      change("edge/main/x86_64", 100, 20),   // at the limit
      change("edge/testing/x86", 5, 5),      // too small
      change("v3.20/main/x86_64", 50, 11),   // held
  };
  EXPECT_EQ(held(guard, changes), (Names{"edge/main/aarch64", "v3.20/main/x86_64"}));
}

TEST(GuardPolicy, PerPartitionGlob) {
  GuardPolicy policy;
  policy.partitions = {{"edge/testing/*", 0.5, std::nullopt}};
  EXPECT_EQ(policy.limits_for("edge/testing/x86_64"), (std::pair<double, std::uint64_t>{0.5, 10}));
  EXPECT_EQ(policy.limits_for("edge/main/x86_64"), (std::pair<double, std::uint64_t>{0.2, 10}));
  EXPECT_EQ(policy.limits_for("."), (std::pair<double, std::uint64_t>{0.2, 10}));

  const Guard guard{policy};
  EXPECT_TRUE(guard.evaluate({change("edge/testing/x86_64", 10, 5)}).empty());
  EXPECT_EQ(guard.evaluate({change("edge/testing/x86_64", 10, 6)}).size(), 1u);
  EXPECT_EQ(guard.evaluate({change("edge/main/x86_64", 10, 5)}).size(), 1u);
  const auto holds = guard.evaluate({change("edge/testing/x86_64", 10, 6)});
  ASSERT_EQ(holds.size(), 1u);
  EXPECT_DOUBLE_EQ(holds[0].limit, 0.5);
}

TEST(GuardPolicy, GlobStarDoesNotCrossSlashes) {
  GuardPolicy policy;
  policy.partitions = {{"edge/*", 0.9, std::nullopt}};
  EXPECT_DOUBLE_EQ(policy.limits_for("edge/main/x86_64").first, 0.2);
  policy.partitions = {{"*/*/x86_64", 0.9, std::nullopt}};
  EXPECT_DOUBLE_EQ(policy.limits_for("edge/main/x86_64").first, 0.9);
  EXPECT_DOUBLE_EQ(policy.limits_for("edge/main/aarch64").first, 0.2);
}

TEST(GuardPolicy, LongestPatternWins) {
  const std::vector<PartitionPolicy> patterns = {
      {"*/*/*", 0.3, std::nullopt},
      {"edge/*/*", 0.4, 20},
      {"edge/testing/*", 0.5, std::nullopt},
      {"edge/testing/riscv64", std::nullopt, 2},
  };
  // Whatever the order the patterns are given in.
  for (bool reversed : {false, true}) {
    GuardPolicy policy;
    policy.partitions = patterns;
    if (reversed) std::reverse(policy.partitions.begin(), policy.partitions.end());
    SCOPED_TRACE(reversed ? "reversed" : "in order");
    EXPECT_EQ(policy.limits_for("v3.20/main/x86_64"), (std::pair<double, std::uint64_t>{0.3, 10}));
    EXPECT_EQ(policy.limits_for("edge/main/x86_64"), (std::pair<double, std::uint64_t>{0.4, 20}));
    EXPECT_EQ(policy.limits_for("edge/testing/x86_64"),
              (std::pair<double, std::uint64_t>{0.5, 10}));
    // The longest pattern sets only what it names; the rest comes from the defaults, not from
    // shorter patterns.
    EXPECT_EQ(policy.limits_for("edge/testing/riscv64"),
              (std::pair<double, std::uint64_t>{0.2, 2}));
    EXPECT_EQ(policy.limits_for("."), (std::pair<double, std::uint64_t>{0.2, 10}));
  }
}

TEST(GuardPolicy, PerPartitionMinFiles) {
  GuardPolicy policy;
  policy.partitions = {{"edge/testing/*", std::nullopt, 1000}};
  const Guard guard{policy};
  EXPECT_TRUE(guard.evaluate({change("edge/testing/x86_64", 999, 999)}).empty());
  EXPECT_EQ(guard.evaluate({change("edge/testing/x86_64", 1000, 999)}).size(), 1u);
  EXPECT_EQ(guard.evaluate({change("edge/main/x86_64", 999, 999)}).size(), 1u);
}

}  // namespace
}  // namespace tiersync::sync
