// The deletion guard and its approvals (docs/guard.md): a purge approved at the origin reaches
// the mirrors that trust upstream approvals and waits for the local operator at the others;
// small deletions, a small partition's one or two files and partitions with a raised limit pass
// without approval. Every scenario of issue 13 is in guard_test.cpp.

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <thread>

#include "proto/digest.h"
#include "tests/integration/fake_parent.h"
#include "tests/integration/network_fixture.h"
#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

/// True when a status "candidate" names `serial` (as a number or a string).
bool names_serial(const json& candidate, std::uint64_t serial) {
  if (candidate.is_number_unsigned()) return candidate.get<std::uint64_t>() == serial;
  if (candidate.is_string()) return candidate.get<std::string>() == std::to_string(serial);
  return false;
}

class ApprovalsTest : public NetworkTest {
 protected:
  ApprovalsTest() : NetworkTest("tiersync-approvals") {}
  void SetUp() override {
    NetworkTest::SetUp();
    v1_ = make_sample();
    add_partition(v1_, "edge/testing/x86_64", 19, 7);   // 20 files
    add_partition(v1_, "edge/testing/aarch64", 19, 8);  // 20 files
    add_partition(v1_, "edge/small/x86_64", 5, 9);      // 6 files: below min_files
    add_partition(v1_, "edge/ten/x86_64", 9, 10);       // 10 files: exactly min_files
  }

  Node origin(const json& guard = nullptr) { return make_tier0(guard); }
  Node mirror(const std::string& name, const json& guard) { return make_relay(name, guard); }

  /// The armv7 purge of edge/community: approved and published at tier0, then held at a
  /// mirror that does not trust upstream approvals. Returns the purged model.
  TreeModel purge_held_at(const Node& origin, const Node& cautious) {
    TreeModel purge = v1_;
    remove_partition(purge, "edge/community/armv7");
    materialize(purge, source_);
    EXPECT_TRUE(Exited(origin.once(), kHeld));
    EXPECT_TRUE(Exited(origin.ctl({"approve", "edge/community/armv7"}), 0));
    EXPECT_TRUE(Exited(origin.once(), 0));
    EXPECT_TRUE(Exited(cautious.once(), kHeld));
    return purge;
  }

  TreeModel v1_;
};

TEST_F(ApprovalsTest, PurgeApprovedAtOriginReachesTrustingMirrorsAndWaitsAtOthers) {
  const Node tier0 = origin();
  const Node trusting = mirror("trusting", {{"trust_upstream_approvals", true}});
  const Node cautious = mirror("cautious", {{"trust_upstream_approvals", false}});
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(tier0, v1_, {&trusting, &cautious}));
  const std::uint64_t s1 = read_published_snapshot(tier0.tree()).serial;

  // The operators decide to drop edge/community/armv7.
  const std::string purged = "edge/community/armv7";
  TreeModel purge = v1_;
  remove_partition(purge, purged);
  materialize(purge, source_);
  RunResult held = tier0.once();
  ASSERT_TRUE(Exited(held, kHeld)) << "deleting a whole partition must be held";
  EXPECT_TRUE(StderrNames(held, {{purged}}));
  json st = tier0.status();
  EXPECT_EQ(held_partitions(st), std::set<std::string>{purged}) << st.dump(2);
  EXPECT_EQ(held_entry(st, purged).value("rule", ""), "deleted")
      << "a partition removed loses every file (docs/guard.md, \"The rules\")";
  EXPECT_TRUE(TreeMatches(tier0.tree(), v1_)) << "the held partition keeps its files";

  // Approving a partition that is not held is an error.
  RunResult wrong = tier0.ctl({"approve", "edge/main/x86_64"});
  EXPECT_TRUE(Exited(wrong, 1));
  EXPECT_TRUE(Mentions(wrong, "edge/main/x86_64")) << "the message names the partition";

  ASSERT_TRUE(Exited(tier0.ctl({"approve", purged}), 0));
  ASSERT_TRUE(Exited(tier0.once(), 0)) << "the approved candidate must be published";
  EXPECT_TRUE(held_partitions(tier0.status()).empty()) << tier0.status().dump(2);
  EXPECT_TRUE(TreeMatches(tier0.tree(), purge)) << "files and folders of the purge are gone";
  const proto::Snapshot s2 = read_published_snapshot(tier0.tree());
  EXPECT_GT(s2.serial, s1);
  EXPECT_FALSE(s2.partitions.count(purged)) << "the purged partition is out of the snapshot";
  ASSERT_TRUE(s2.approved_deletions.count(purged))
      << "the snapshot must carry the origin's approval in approved_deletions";
  const proto::ApprovedChange& approved = s2.approved_deletions.at(purged);
  EXPECT_EQ(approved.serial, s2.serial);
  EXPECT_EQ(approved.to, "removed");
  EXPECT_EQ(approved.from.size(), 64u) << "the published manifest the approval starts from";
  EXPECT_GT(approved.expires, s2.created);

  // A mirror trusting upstream approvals follows.
  ASSERT_TRUE(Exited(trusting.once(), 0));
  EXPECT_TRUE(TreeMatches(trusting.tree(), purge)) << "files gone and empty folders pruned";
  EXPECT_TRUE(held_partitions(trusting.status()).empty());

  // A mirror that does not trust them holds and changes nothing.
  RunResult cautious_run = cautious.once();
  ASSERT_TRUE(Exited(cautious_run, kHeld));
  EXPECT_TRUE(StderrNames(cautious_run, {{purged}}));
  EXPECT_TRUE(TreeMatches(cautious.tree(), v1_)) << "the held partition keeps its files";
  st = cautious.status();
  EXPECT_TRUE(HasStatusShape(st));
  // The rest of the snapshot (here: nothing else changed) is applied, the held partition pinned
  // at the manifest of s1 (docs/protocol.md, "Pins").
  EXPECT_EQ(st.value("serial", json()), s2.serial) << st.dump(2);
  EXPECT_EQ(st.value("upstream_serial", json()), s2.serial) << st.dump(2);
  EXPECT_EQ(held_partitions(st), std::set<std::string>{purged}) << st.dump(2);
  json h = held_entry(st, purged);
  EXPECT_TRUE(names_serial(h.value("candidate", json()), s2.serial))
      << "a relay's candidate is the held serial: " << h.dump();
  EXPECT_EQ(h.value("deleted", json()), paths_in(v1_, purged).size()) << h.dump();
  EXPECT_EQ(st["last_cycle"].value("result", ""), "held") << st.dump(2);
  ASSERT_TRUE(Exited(cautious.once(), kHeld)) << "the hold stays until someone approves";

  RunResult not_held = cautious.ctl({"approve", "edge/main/x86_64"});
  EXPECT_TRUE(Exited(not_held, 1)) << "approving a partition that is not held fails";
  ASSERT_TRUE(Exited(cautious.ctl({"approve", "--all"}), 0));
  ASSERT_TRUE(Exited(cautious.once(), 0));
  EXPECT_TRUE(TreeMatches(cautious.tree(), purge));
  st = cautious.status();
  EXPECT_EQ(st.value("serial", json()), s2.serial) << st.dump(2);
  EXPECT_TRUE(held_partitions(st).empty()) << st.dump(2);
  EXPECT_TRUE(Exited(cautious.ctl({"approve", purged}), 1))
      << "once applied, the partition is no longer held";
}

TEST_F(ApprovalsTest, ApprovalAtOriginCoversOnlyTheCandidateHeldWhenGiven) {
  const Node tier0 = origin();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(tier0, v1_, {}));
  const std::string part = "edge/main/aarch64";
  const std::size_t packages = packages_in(v1_, part).size();

  TreeModel half = v1_;
  remove_packages(half, part, packages / 2, kBaseMtime + 5000);
  materialize(half, source_);
  ASSERT_TRUE(Exited(tier0.once(), kHeld));
  ASSERT_TRUE(Exited(tier0.ctl({"approve", part}), 0));

  // Before tier0 runs again the upload changes: a different candidate, not approved.
  TreeModel most = v1_;
  remove_packages(most, part, packages * 3 / 4, kBaseMtime + 5001);
  materialize(most, source_);
  ASSERT_TRUE(Exited(tier0.once(), kHeld)) << "the approval was for the other candidate manifest";
  json h = held_entry(tier0.status(), part);
  EXPECT_EQ(h.value("deleted", json()), packages * 3 / 4) << h.dump();
  EXPECT_TRUE(TreeMatches(tier0.tree(), v1_));

  ASSERT_TRUE(Exited(tier0.ctl({"approve", part}), 0));
  ASSERT_TRUE(Exited(tier0.once(), 0));
  EXPECT_TRUE(TreeMatches(tier0.tree(), most));
}

// A relay's approval names the change its operator saw, from the applied manifest to the
// candidate's (docs/guard.md, "Approvals"), not the held serial: a newer serial that leaves the
// partition's change as it was does not undo it.
TEST_F(ApprovalsTest, RelayApprovalSurvivesANewerSerialThatLeavesTheChangeAsItWas) {
  const Node tier0 = origin();
  const Node cautious = mirror("cautious", {{"trust_upstream_approvals", false}});
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(tier0, v1_, {&cautious}));

  TreeModel purge = purge_held_at(tier0, cautious);
  ASSERT_FALSE(HasFailure());
  ASSERT_TRUE(Exited(cautious.ctl({"approve", "edge/community/armv7"}), 0));

  // tier0 publishes a newer serial before the mirror runs again: armv7 is still removed.
  touch_last_updated(purge, kBaseMtime + 6000);
  add_package(purge, "edge/main/x86_64", "fix-1.0-r1.apk", 60, kBaseMtime + 6001);
  rebuild_index(purge, "edge/main/x86_64", kBaseMtime + 6002);
  materialize(purge, source_);
  ASSERT_TRUE(Exited(tier0.once(), 0));
  const std::uint64_t newer = read_published_snapshot(tier0.tree()).serial;
  ASSERT_TRUE(Exited(cautious.once(), 0)) << "the approval names the change, not the serial";
  EXPECT_TRUE(TreeMatches(cautious.tree(), purge));
  json st = cautious.status();
  EXPECT_EQ(st.value("serial", json()), newer) << st.dump(2);
  EXPECT_TRUE(held_partitions(st).empty()) << st.dump(2);
  EXPECT_TRUE(Exited(cautious.ctl({"approve", "edge/community/armv7"}), 1))
      << "the approval was used: nothing is held any more";
}

// ... and covers that change only: the partition changing to another candidate is held again.
TEST_F(ApprovalsTest, RelayApprovalCoversOnlyTheChangeHeldWhenGiven) {
  const Node tier0 = origin();
  const Node cautious = mirror("cautious", {{"trust_upstream_approvals", false}});
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(tier0, v1_, {&cautious}));
  const std::string part = "edge/community/armv7";

  purge_held_at(tier0, cautious);
  ASSERT_FALSE(HasFailure());
  const std::string held_to = held_entry(cautious.status(), part).value("to", "");
  EXPECT_EQ(held_to, "removed");
  ASSERT_TRUE(Exited(cautious.ctl({"approve", part}), 0));

  // Before the mirror runs again the partition comes back at tier0 with 5 of its packages: new
  // there (nothing to hold), at the mirror another change than the approved removal.
  TreeModel back = v1_;
  remove_partition(back, part);
  const auto old_packages = packages_in(v1_, part);
  for (std::size_t i = 0; i < 5; ++i) back[old_packages[i]] = v1_.at(old_packages[i]);
  rebuild_index(back, part, kBaseMtime + 6100);
  materialize(back, source_);
  ASSERT_TRUE(Exited(tier0.once(), 0));
  const proto::Snapshot s = read_published_snapshot(tier0.tree());
  ASSERT_TRUE(s.partitions.count(part));
  ASSERT_TRUE(Exited(cautious.once(), kHeld)) << "the approval was for the removal";
  json h = held_entry(cautious.status(), part);
  EXPECT_EQ(h.value("to", ""), proto::to_hex(s.partitions.at(part).manifest)) << h.dump();
  EXPECT_TRUE(names_serial(h.value("candidate", json()), s.serial)) << h.dump();
  EXPECT_TRUE(TreeMatches(cautious.tree(), v1_));

  ASSERT_TRUE(Exited(cautious.ctl({"approve", "--all"}), 0));
  ASSERT_TRUE(Exited(cautious.once(), 0));
  EXPECT_TRUE(TreeMatches(cautious.tree(), back));
}

TEST_F(ApprovalsTest, NewerSnapshotThatNoLongerTripsTheGuardAppliesByItself) {
  const Node tier0 = origin();
  const Node cautious = mirror("cautious", {{"trust_upstream_approvals", false}});
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(tier0, v1_, {&cautious}));

  purge_held_at(tier0, cautious);
  ASSERT_FALSE(HasFailure());

  // The purge is undone upstream: the next snapshot deletes nothing the mirror has.
  TreeModel back = v1_;
  touch_last_updated(back, kBaseMtime + 7000);
  materialize(back, source_);
  ASSERT_TRUE(Exited(tier0.once(), 0));
  ASSERT_TRUE(Exited(cautious.once(), 0));
  EXPECT_TRUE(TreeMatches(cautious.tree(), back));
  EXPECT_TRUE(held_partitions(cautious.status()).empty()) << cautious.status().dump(2);
}

// Below min_files a partition may lose small_max_deletes (2) files, counted against its
// largest recent size; at min_files and above the ratio rules apply (docs/guard.md, "small").
TEST_F(ApprovalsTest, SmallDeletionsAndSmallPartitionsPassWithoutApproval) {
  const Node tier0 = origin();
  const Node cautious = mirror("cautious", {{"trust_upstream_approvals", false}});
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(tier0, v1_, {&cautious}));

  // Two packages of 21+ files: below the 0.2 default.
  TreeModel trimmed = v1_;
  remove_packages(trimmed, "edge/main/x86_64", 2, kBaseMtime + 8000);
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(tier0, trimmed, {&cautious}));

  // A partition of 6 files (below min_files 10) loses 2 packages: within small_max_deletes.
  const std::string small = "edge/small/x86_64";
  TreeModel two_less = trimmed;
  remove_packages(two_less, small, 2, kBaseMtime + 8100);
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(tier0, two_less, {&cautious}));

  // One more: 3 lost against the 6 it had today. Held, where the old guard let every partition
  // under min_files go.
  TreeModel three_less = two_less;
  remove_packages(three_less, small, 1, kBaseMtime + 8200);
  materialize(three_less, source_);
  ASSERT_TRUE(Exited(tier0.once(), kHeld)) << "3 files of a 6-file partition";
  json h = held_entry(tier0.status(), small);
  EXPECT_EQ(h.value("rule", ""), "small") << tier0.status().dump(2);
  EXPECT_EQ(h.value("lost", json()), 3) << h.dump();
  EXPECT_EQ(h.value("of", json()), 6) << h.dump();
  EXPECT_TRUE(TreeMatches(tier0.tree(), two_less));

  // The whole small partition: held too, 6 lost of the 6 it had today.
  TreeModel no_small = two_less;
  remove_partition(no_small, small);
  materialize(no_small, source_);
  ASSERT_TRUE(Exited(tier0.once(), kHeld));
  h = held_entry(tier0.status(), small);
  EXPECT_EQ(h.value("rule", ""), "small") << h.dump();
  EXPECT_EQ(h.value("lost", json()), 6) << h.dump();
  EXPECT_TRUE(TreeMatches(tier0.tree(), two_less));

  // A partition of exactly min_files files is under the ratio rules: 3 of 10 is over 0.2.
  TreeModel no_ten = two_less;
  remove_packages(no_ten, "edge/ten/x86_64", 3, kBaseMtime + 8300);
  materialize(no_ten, source_);
  ASSERT_TRUE(Exited(tier0.once(), kHeld)) << "files(P) >= min_files: a partition of 10 files";
  json st = tier0.status();
  EXPECT_EQ(held_partitions(st), std::set<std::string>{"edge/ten/x86_64"}) << st.dump(2);
  EXPECT_EQ(held_entry(st, "edge/ten/x86_64").value("rule", ""), "deleted") << st.dump(2);
  ASSERT_TRUE(Exited(cautious.once(), 0));
  EXPECT_TRUE(TreeMatches(cautious.tree(), two_less)) << "the mirror lost nothing";
}

TEST_F(ApprovalsTest, PartitionGlobOverrideRaisesTheLimit) {
  const json raised = {{"partitions", {{"edge/testing/*", {{"max_delete_ratio", 0.6}}}}}};
  json raised_mirror = raised;
  raised_mirror["trust_upstream_approvals"] = false;
  const Node tier0 = origin(raised);
  const Node overridden = mirror("overridden", raised_mirror);
  const Node plain = mirror("plain", {{"trust_upstream_approvals", false}});
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(tier0, v1_, {&overridden, &plain}));
  const std::uint64_t s1 = read_published_snapshot(tier0.tree()).serial;

  // A quarter of edge/testing/aarch64 (5 of 20 files: 0.25 <= 0.6) and, as a control, half of
  // edge/main/aarch64 (default limit 0.2) go. The smallest packages of testing go: their bytes
  // stay under max_bytes_loss_ratio (0.2), which the override leaves as it is, and the index
  // keeps more than half its size (an index shrunk under shrink_factor is an index lost).
  TreeModel cut = v1_;
  const double bytes_share =
      remove_smallest_packages(cut, "edge/testing/aarch64", 5, kBaseMtime + 9000);
  ASSERT_LT(bytes_share, 0.2) << "the bytes rule must stay out of this test";
  remove_packages(cut, "edge/main/aarch64", packages_in(v1_, "edge/main/aarch64").size() / 2,
                  kBaseMtime + 9001);
  materialize(cut, source_);
  ASSERT_TRUE(Exited(tier0.once(), kHeld));
  EXPECT_EQ(held_partitions(tier0.status()), std::set<std::string>{"edge/main/aarch64"})
      << "only the partition without an override is held";
  TreeModel published = cut;
  for (const auto& path : paths_in(cut, "edge/main/aarch64")) published.erase(path);
  for (const auto& path : paths_in(v1_, "edge/main/aarch64")) published[path] = v1_.at(path);
  ASSERT_TRUE(TreeMatches(tier0.tree(), published));
  ASSERT_GT(read_published_snapshot(tier0.tree()).serial, s1);

  ASSERT_TRUE(Exited(overridden.once(), 0)) << "the override lets the deletion through";
  EXPECT_TRUE(TreeMatches(overridden.tree(), published));
  ASSERT_TRUE(Exited(plain.once(), kHeld)) << "without the override 0.25 > 0.2 is held";
  EXPECT_EQ(held_partitions(plain.status()), std::set<std::string>{"edge/testing/aarch64"});
  EXPECT_EQ(held_entry(plain.status(), "edge/testing/aarch64").value("rule", ""), "deleted");
  EXPECT_TRUE(TreeMatches(plain.tree(), v1_));
}

TEST(UpstreamApprovalTest, CoversExactlyTheApprovedChange) {
  // A hand-made parent, to offer approvals a real tier0 would not: an upstream approval covers
  // a partition's change only from the relay's applied manifest to the candidate's, unexpired.
  TempDir root("tiersync-upstream-approval");
  auto key = proto::PrivateKey::generate();
  ASSERT_TRUE(key.ok());
  write_public_key(*key, root / "keys/origin.pub");
  FakeParent parent(root / "parent/tree");
  const Node trusting =
      make_mirror(root / "trusting", "trusting", parent.url(), {root / "keys/origin.pub"},
                  {{"trust_upstream_approvals", true}});
  const TreeModel good = make_sample();
  parent.publish(Offer::of(good, 5, *key));
  ASSERT_TRUE(Exited(trusting.once(), 0));

  const std::string part = "edge/community/armv7";
  const std::string applied =
      proto::to_hex(read_published_snapshot(trusting.tree()).partitions.at(part).manifest);
  TreeModel purge = good;
  remove_partition(purge, part);
  const std::int64_t later = std::time(nullptr) + 3600;
  auto offer = [&](std::uint64_t serial, std::map<std::string, proto::ApprovedChange> approved) {
    Offer o = Offer::of(purge, serial, *key);
    o.patch_snapshot = [approved](proto::Snapshot& s) { s.approved_deletions = approved; };
    parent.publish(o);
  };
  const std::string other(64, 'a');

  offer(6, {{part, {other, "removed", 6, later}}});
  EXPECT_TRUE(Exited(trusting.once(), kHeld)) << "from another manifest than the applied one";
  offer(7, {{part, {applied, other, 7, later}}});
  EXPECT_TRUE(Exited(trusting.once(), kHeld)) << "to another manifest than the candidate's";
  offer(8, {{part, {applied, "removed", 8, std::time(nullptr) - 1}}});
  EXPECT_TRUE(Exited(trusting.once(), kHeld)) << "an expired approval";
  offer(9, {{"edge/main/x86_64", {applied, "removed", 9, later}}});
  EXPECT_TRUE(Exited(trusting.once(), kHeld)) << "an approval of another partition";
  EXPECT_TRUE(TreeMatches(trusting.tree(), good));
  EXPECT_EQ(held_partitions(trusting.status()), std::set<std::string>{part});

  offer(10, {{part, {applied, "removed", 7, later}}});  // approved at 7, a serial never seen here
  ASSERT_TRUE(Exited(trusting.once(), 0));
  EXPECT_TRUE(TreeMatches(trusting.tree(), purge));
}

// `approve` reaches a running daemon over its control socket (the daemon holding state_dir's
// lock all the while): the held purge is applied at once, although poll_seconds is an hour.
TEST_F(ApprovalsTest, ApproveWakesARunningDaemon) {
  const Node tier0 = origin();
  const Node cautious = mirror("cautious", {{"trust_upstream_approvals", false}});
  amend_config(cautious, {{"upstream", {{"poll_seconds", 3600}}}});
  publish_and_sync(tier0, v1_, {&cautious});
  TreeModel purge = v1_;
  remove_partition(purge, "edge/community/armv7");
  materialize(purge, source_);
  ASSERT_TRUE(Exited(tier0.once(), kHeld));
  ASSERT_TRUE(Exited(tier0.ctl({"approve", "edge/community/armv7"}), 0));
  ASSERT_TRUE(Exited(tier0.once(), 0));

  Daemon daemon(cautious);
  bool held = false;  // the daemon's first cycle holds the purge
  for (int i = 0; i < 300 && !held; ++i) {
    held = held_partitions(cautious.status()).count("edge/community/armv7") > 0;
    if (!held) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(held) << daemon.log();
  const RunResult approve = cautious.ctl({"approve", "edge/community/armv7"});
  EXPECT_TRUE(approve.exited(0)) << approve.describe();
  EXPECT_TRUE(Mentions(approve, "the running daemon starts a cycle now"));
  EXPECT_TRUE(converges(source_, cautious.tree(), std::chrono::seconds(30))) << daemon.log();
  EXPECT_TRUE(daemon.stop(std::chrono::seconds(5)));
}

}  // namespace
}  // namespace tiersync::it
