#include "daemon/sync/plan.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "proto/digest.h"

namespace tiersync::sync {
namespace {

using proto::Entry;
using proto::Manifest;
using proto::sha256;
using Names = std::vector<std::string>;

Entry file(const std::string& path, std::string_view content, std::int64_t mtime = 1000,
           std::uint32_t mode = 0644, bool index = false) {
  return Entry::file(path, content.size(), sha256(content), mtime, mode, index);
}

std::shared_ptr<const Manifest> manifest(std::string partition, std::vector<Entry> entries) {
  auto m = std::make_shared<Manifest>();
  m->partition = std::move(partition);
  m->entries = std::move(entries);
  return m;
}

Names paths(const std::vector<const Entry*>& entries) {
  Names out;
  for (const auto* e : entries) out.emplace_back(e->path());
  return out;
}

Names partition_names(const Plan& plan) {
  Names out;
  for (const auto& p : plan.partitions) out.push_back(p.partition);
  return out;
}

const PartitionPlan* find(const Plan& plan, std::string_view name) {
  for (const auto& p : plan.partitions)
    if (p.partition == name) return &p;
  return nullptr;
}

const std::string kPart = "edge/main/x86_64";
std::string in_part(std::string_view name) {
  return kPart + "/" + std::string(name);
}

TEST(Plan, AddsChangesRetouchesAndDeletes) {
  const ManifestSet applied = {
      {kPart, manifest(kPart, {
                                  file(in_part("APKINDEX.tar.gz"), "index v1", 1000, 0644, true),
                                  file(in_part("changed.apk"), "old"),
                                  file(in_part("gone.apk"), "gone"),
                                  file(in_part("mode.apk"), "mode", 1000, 0644),
                                  file(in_part("mtime.apk"), "mtime", 1000),
                                  file(in_part("same.apk"), "same"),
                              })}};
  const ManifestSet candidate = {
      {kPart, manifest(kPart, {
                                  file(in_part("APKINDEX.tar.gz"), "index v2", 2000, 0644, true),
                                  file(in_part("changed.apk"), "new"),
                                  file(in_part("mode.apk"), "mode", 1000, 0755),
                                  file(in_part("mtime.apk"), "mtime", 2000),
                                  file(in_part("new.apk"), "new file"),
                                  file(in_part("same.apk"), "same"),
                              })}};
  const Plan plan = make_plan(applied, candidate);
  ASSERT_EQ(plan.partitions.size(), 1u);
  const PartitionPlan& p = plan.partitions[0];
  EXPECT_EQ(p.partition, kPart);
  EXPECT_EQ(p.files_before, 6u);
  EXPECT_EQ(paths(p.installs),
            (Names{in_part("APKINDEX.tar.gz"), in_part("changed.apk"), in_part("new.apk")}));
  EXPECT_EQ(p.replaced, 2u);
  EXPECT_EQ(paths(p.retouch), (Names{in_part("mode.apk"), in_part("mtime.apk")}));
  EXPECT_EQ(p.deletes, (Names{in_part("gone.apk")}));
  EXPECT_FALSE(plan.empty());
  EXPECT_EQ(plan.install_count(), 3u);
  EXPECT_EQ(plan.delete_count(), 1u);

  // The planned entries are the candidate's (with its mtime, mode and index flag).
  EXPECT_EQ(p.retouch[0]->mode, 0755u);
  EXPECT_EQ(p.retouch[1]->mtime, 2000);
  EXPECT_EQ(p.installs[0], &candidate.at(kPart)->entries[0]);
  EXPECT_TRUE(p.installs[0]->index);
}

TEST(Plan, IndexFlagAloneIsARetouch) {
  const ManifestSet applied = {{kPart, manifest(kPart, {file(in_part("Release"), "r")})}};
  const ManifestSet candidate = {
      {kPart, manifest(kPart, {file(in_part("Release"), "r", 1000, 0644, true)})}};
  const Plan plan = make_plan(applied, candidate);
  ASSERT_EQ(plan.partitions.size(), 1u);
  EXPECT_TRUE(plan.partitions[0].installs.empty());
  EXPECT_EQ(paths(plan.partitions[0].retouch), Names{in_part("Release")});
}

TEST(Plan, Symlinks) {
  const ManifestSet applied = {{kPart, manifest(kPart, {
                                                           Entry::symlink(in_part("a"), "x"),
                                                           Entry::symlink(in_part("b"), "x"),
                                                           file(in_part("c"), "c"),
                                                           Entry::symlink(in_part("d"), "x"),
                                                       })}};
  const ManifestSet candidate = {{kPart, manifest(kPart, {
                                                             Entry::symlink(in_part("a"), "x"),
                                                             Entry::symlink(in_part("b"), "y"),
                                                             Entry::symlink(in_part("c"), "x"),
                                                             file(in_part("d"), "d"),
                                                         })}};
  const Plan plan = make_plan(applied, candidate);
  ASSERT_EQ(plan.partitions.size(), 1u);
  const PartitionPlan& p = plan.partitions[0];
  // Unchanged link: nothing; new target, file -> link and link -> file: installs over the path.
  EXPECT_EQ(paths(p.installs), (Names{in_part("b"), in_part("c"), in_part("d")}));
  EXPECT_EQ(p.replaced, 3u);
  EXPECT_TRUE(p.retouch.empty());
  EXPECT_TRUE(p.deletes.empty());
}

TEST(Plan, RootPartitionLast) {
  const auto root = manifest(".", {file("last-updated", "1")});
  const auto root2 = manifest(".", {file("last-updated", "2")});
  const ManifestSet applied = {{".", root},
                               {"3.20/main/x86_64", manifest("3.20/main/x86_64", {})},
                               {"edge/main/x86_64", manifest(kPart, {})}};
  const ManifestSet candidate = {{".", root2},
                                 {"-/a/b", manifest("-/a/b", {file("-/a/b/c", "c")})},
                                 {"edge/main/x86_64", manifest(kPart, {file(in_part("f"), "f")})}};
  const Plan plan = make_plan(applied, candidate);
  // Every partition of either set; "-" and "3" sort before "." bytewise, yet "." comes last.
  EXPECT_EQ(partition_names(plan), (Names{"-/a/b", "3.20/main/x86_64", "edge/main/x86_64", "."}));
  EXPECT_EQ(paths(plan.partitions.back().installs), Names{"last-updated"});
}

TEST(Plan, RootPartitionOnlyInOneSet) {
  ManifestSet applied = {{kPart, manifest(kPart, {})}};
  ManifestSet candidate = {{".", manifest(".", {file("last-updated", "1")})},
                           {kPart, manifest(kPart, {})}};
  Plan plan = make_plan(applied, candidate);
  EXPECT_EQ(partition_names(plan), (Names{kPart, "."}));
  EXPECT_EQ(plan.install_count(), 1u);

  plan = make_plan(candidate, applied);
  EXPECT_EQ(partition_names(plan), (Names{kPart, "."}));
  EXPECT_EQ(plan.partitions.back().deletes, Names{"last-updated"});
}

TEST(Plan, RemovedPartitionDeletesAll) {
  const std::string gone = "edge/main/aarch64";
  const ManifestSet applied = {
      {gone, manifest(gone, {file(gone + "/APKINDEX.tar.gz", "i", 1, 0644, true),
                             file(gone + "/a.apk", "a"), Entry::symlink(gone + "/l", "a.apk")})},
      {kPart, manifest(kPart, {file(in_part("a.apk"), "a")})}};
  const ManifestSet candidate = {{kPart, applied.at(kPart)}};
  const Plan plan = make_plan(applied, candidate);
  const PartitionPlan* p = find(plan, gone);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->files_before, 3u);
  EXPECT_EQ(p->deletes, (Names{gone + "/APKINDEX.tar.gz", gone + "/a.apk", gone + "/l"}));
  EXPECT_TRUE(p->installs.empty());
  EXPECT_EQ(plan.delete_count(), 3u);
  EXPECT_EQ(plan.install_count(), 0u);
}

TEST(Plan, NewPartitionInstallsAll) {
  const std::string added = "edge/main/riscv64";
  const ManifestSet applied = {{kPart, manifest(kPart, {file(in_part("a.apk"), "a")})}};
  ManifestSet candidate = applied;
  candidate[added] =
      manifest(added, {file(added + "/APKINDEX.tar.gz", "i", 1, 0644, true),
                       file(added + "/a.apk", "a"), Entry::symlink(added + "/l", "a.apk")});
  const Plan plan = make_plan(applied, candidate);
  const PartitionPlan* p = find(plan, added);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->files_before, 0u);
  EXPECT_EQ(paths(p->installs),
            (Names{added + "/APKINDEX.tar.gz", added + "/a.apk", added + "/l"}));
  EXPECT_EQ(p->replaced, 0u);
  EXPECT_TRUE(p->deletes.empty());
  EXPECT_EQ(plan.install_count(), 3u);
  EXPECT_EQ(plan.delete_count(), 0u);
}

TEST(Plan, PathMovingBetweenPartitionsIsNoDeletion) {
  // The layout went from three segments to two: edge/main/x86_64/foo.apk now lies in "edge/main".
  const ManifestSet applied = {
      {kPart, manifest(kPart, {file(in_part("foo.apk"), "foo"), file(in_part("gone.apk"), "g")})},
      {".", manifest(".", {file("edge/main/README", "r")})}};
  const ManifestSet candidate = {
      {"edge/main", manifest("edge/main", {file("edge/main/README", "r"),
                                           file("edge/main/x86_64/foo.apk", "foo")})},
      {".", manifest(".", {})}};
  const Plan plan = make_plan(applied, candidate);
  EXPECT_EQ(partition_names(plan), (Names{"edge/main", kPart, "."}));
  EXPECT_EQ(find(plan, kPart)->deletes, Names{in_part("gone.apk")});
  EXPECT_TRUE(find(plan, ".")->deletes.empty());
  EXPECT_EQ(find(plan, kPart)->files_before, 2u);
  EXPECT_EQ(plan.delete_count(), 1u);
}

TEST(Plan, SameManifestObjectIsNothingToDo) {
  const auto m = manifest(kPart, {file(in_part("a.apk"), "a"), file(in_part("b.apk"), "b")});
  const auto root = manifest(".", {file("last-updated", "1")});
  const ManifestSet set = {{kPart, m}, {".", root}};
  const Plan plan = make_plan(set, set);
  EXPECT_TRUE(plan.empty());
  EXPECT_EQ(plan.install_count(), 0u);
  EXPECT_EQ(plan.delete_count(), 0u);
  EXPECT_EQ(partition_names(plan), (Names{kPart, "."}));
  // The guard still learns the partition's size.
  EXPECT_EQ(plan.partitions[0].files_before, 2u);
  EXPECT_EQ(plan.partitions[1].files_before, 1u);
}

TEST(Plan, EqualManifestsInDistinctObjectsAreNothingToDo) {
  const ManifestSet a = {{kPart, manifest(kPart, {file(in_part("a.apk"), "a")})}};
  const ManifestSet b = {{kPart, manifest(kPart, {file(in_part("a.apk"), "a")})}};
  EXPECT_TRUE(make_plan(a, b).empty());
}

TEST(Plan, EmptySets) {
  const Plan plan = make_plan({}, {});
  EXPECT_TRUE(plan.partitions.empty());
  EXPECT_TRUE(plan.empty());
}

TEST(Plan, InterleavedMerge) {
  const ManifestSet applied = {
      {kPart, manifest(kPart, {file(in_part("a"), "a"), file(in_part("c"), "c"),
                               file(in_part("e"), "e"), file(in_part("g"), "g")})}};
  const ManifestSet candidate = {
      {kPart, manifest(kPart, {file(in_part("b"), "b"), file(in_part("c"), "c"),
                               file(in_part("d"), "d"), file(in_part("h"), "h")})}};
  const Plan plan = make_plan(applied, candidate);
  const PartitionPlan& p = plan.partitions[0];
  EXPECT_EQ(paths(p.installs), (Names{in_part("b"), in_part("d"), in_part("h")}));
  EXPECT_EQ(p.deletes, (Names{in_part("a"), in_part("e"), in_part("g")}));
  EXPECT_EQ(p.replaced, 0u);
}

}  // namespace
}  // namespace tiersync::sync
