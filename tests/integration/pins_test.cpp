// Relays progress per partition (docs/protocol.md, "Pins"): a relay holds only the partitions
// whose change it refuses, applies the rest, and serves the mix to its children with the signed
// envelopes unchanged; children verify every pin, never move a partition backwards, and a crash
// at any step of an apply with pins recovers.

#include <signal.h>

#include <gtest/gtest.h>

#include <ctime>
#include <set>

#include "daemon/sync/pins.h"
#include "proto/dsse.h"
#include "tests/integration/fake_parent.h"
#include "tests/integration/network_fixture.h"
#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

const std::string kPurged = "edge/community/armv7";
const std::string kUpdated = "edge/main/x86_64";

std::set<std::string> pinned_partitions(const json& status) {
  std::set<std::string> out;
  for (const auto& p : status.value("pins", json::array())) out.insert(p.value("partition", ""));
  return out;
}

/// tier0 -> tier1 (which does not trust upstream approvals) -> mirror, all over file://.
class PinsTest : public NetworkTest {
 protected:
  PinsTest() : NetworkTest("tiersync-pins") {}
  void SetUp() override {
    NetworkTest::SetUp();
    tier0_ = make_tier0();
    tier1_ = make_relay("tier1", {{"trust_upstream_approvals", false}});
    mirror_ = make_relay("mirror", nullptr, tier1_.url());
    SampleShape shape;
    shape.min_packages = 12;
    shape.max_packages = 16;
    v1_ = make_sample(shape);
    // The purge of armv7, approved at tier0, and a security fix in x86_64 in the same serial.
    v2_ = v1_;
    remove_partition(v2_, kPurged);
    add_package(v2_, kUpdated, "openssl-3.3.9-r0.apk", 77, kBaseMtime + 5000);
    rebuild_index(v2_, kUpdated, kBaseMtime + 5001);
    // What tier1 serves meanwhile: v2 with armv7 as it was.
    mix_ = v2_;
    for (const auto& path : paths_in(v1_, kPurged)) mix_[path] = v1_.at(path);
  }

  /// v1 everywhere, then tier0 publishes the approved v2.
  void publish_v2() {
    ASSERT_NO_FATAL_FAILURE(publish_and_sync(tier0_, v1_, {&tier1_, &mirror_}));
    materialize(v2_, source_);
    ASSERT_TRUE(Exited(tier0_.once(), kHeld));
    ASSERT_TRUE(Exited(tier0_.ctl({"approve", kPurged}), 0));
    ASSERT_TRUE(Exited(tier0_.once(), 0));
    ASSERT_TRUE(TreeMatches(tier0_.tree(), v2_));
  }

  std::uint64_t tier0_serial() const { return read_published_snapshot(tier0_.tree()).serial; }

  Node tier0_, tier1_, mirror_;
  TreeModel v1_, v2_, mix_;
};

TEST_F(PinsTest, HeldPartitionStaysWhileTheRestReachesEveryNode) {
  ASSERT_NO_FATAL_FAILURE(publish_v2());
  RunResult held = tier1_.once();
  ASSERT_TRUE(Exited(held, kHeld));
  EXPECT_TRUE(StderrNames(held, {{kPurged}}));
  EXPECT_TRUE(TreeMatches(tier1_.tree(), mix_)) << "the fix applied, armv7 kept";
  json st = tier1_.status();
  EXPECT_EQ(st.value("serial", json()), tier0_serial()) << "the new serial is committed";
  EXPECT_EQ(held_partitions(st), std::set<std::string>{kPurged}) << st.dump(2);
  EXPECT_EQ(pinned_partitions(st), std::set<std::string>{kPurged}) << st.dump(2);
  EXPECT_TRUE(fs::exists(tier1_.tree() / (".tiersync/v1/pins/" + std::to_string(tier0_serial()))))
      << "pins are plain files of the tree: a static server serves them";
  EXPECT_EQ(read_file(tier1_.tree() / ".tiersync/v1/snapshot"),
            read_file(tier0_.tree() / ".tiersync/v1/snapshot"))
      << "the signed envelope is served unchanged";
  EXPECT_TRUE(Exited(tier1_.ctl({"verify", "--full"}), 0)) << "verify uses the effective snapshot";
  ASSERT_TRUE(Exited(tier1_.once(), kHeld)) << "the hold stays, and is said again";
  EXPECT_TRUE(TreeMatches(tier1_.tree(), mix_));

  // The mirror below trusts upstream approvals, but its parent offers armv7 as it was.
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror_.tree(), mix_));
  st = mirror_.status();
  EXPECT_TRUE(held_partitions(st).empty()) << st.dump(2);
  EXPECT_EQ(pinned_partitions(st), std::set<std::string>{kPurged}) << st.dump(2);
  EXPECT_TRUE(Exited(mirror_.ctl({"verify", "--full"}), 0));

  // A fresh mirror's initial sync from the holding tier1 gets the mix, and verifies.
  const Node fresh = make_mirror(root_ / "fresh", "fresh", tier1_.url(), {key_.pub});
  ASSERT_TRUE(Exited(fresh.once(), 0));
  EXPECT_TRUE(TreeMatches(fresh.tree(), mix_));
  EXPECT_TRUE(Exited(fresh.ctl({"verify", "--full"}), 0));

  // The approval at tier1 applies at the next cycle, without a new serial from tier0.
  const std::uint64_t serial = tier0_serial();
  ASSERT_TRUE(Exited(tier1_.ctl({"approve", kPurged}), 0));
  ASSERT_TRUE(Exited(tier1_.once(), 0));
  EXPECT_TRUE(TreeMatches(tier1_.tree(), v2_));
  st = tier1_.status();
  EXPECT_EQ(st.value("serial", json()), serial);
  EXPECT_TRUE(held_partitions(st).empty()) << st.dump(2);
  EXPECT_TRUE(pinned_partitions(st).empty()) << st.dump(2);
  // Its children see the parent's pins change at the same serial; the mirror trusts the
  // origin's signed approval and follows.
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror_.tree(), v2_));
  EXPECT_TRUE(Exited(mirror_.ctl({"verify", "--full"}), 0));
}

TEST_F(PinsTest, EveryChangedPartitionHeldStillCommitsTheSerial) {
  materialize(v1_, source_);
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  ASSERT_TRUE(Exited(tier1_.once(), 0));
  TreeModel purge = v1_;
  remove_partition(purge, kPurged);
  materialize(purge, source_);
  ASSERT_TRUE(Exited(tier0_.once(), kHeld));
  ASSERT_TRUE(Exited(tier0_.ctl({"approve", kPurged}), 0));
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  ASSERT_TRUE(Exited(tier1_.once(), kHeld));
  EXPECT_TRUE(TreeMatches(tier1_.tree(), v1_));
  const json st = tier1_.status();
  EXPECT_EQ(st.value("serial", json()), tier0_serial()) << "the expiry advances" << st.dump(2);
  EXPECT_EQ(st.value("expires", json()),
            proto::format_time(read_published_snapshot(tier0_.tree()).expires));
  EXPECT_EQ(held_partitions(st), std::set<std::string>{kPurged});
}

TEST_F(PinsTest, ParentApprovalIsTrustedOnlyWhereConfigured) {
  ASSERT_NO_FATAL_FAILURE(publish_v2());
  const Node trusting =
      make_mirror(root_ / "trusting", "trusting", tier1_.url(), {key_.pub},
                  {{"trust_upstream_approvals", false}, {"trust_parent_approvals", true}});
  ASSERT_TRUE(Exited(trusting.ctl({"status"}), 0));
  ASSERT_TRUE(
      Exited(run({kTiersyncd, "--config", trusting.config().string(), "--check-config"}), 0));
  const Node cautious = make_mirror(root_ / "cautious", "cautious", tier1_.url(), {key_.pub},
                                    {{"trust_upstream_approvals", false}});
  // Both start from v1 (synced from tier0 directly, then pointed at tier1).
  ASSERT_TRUE(Exited(tier1_.once(), kHeld));
  ASSERT_TRUE(Exited(tier1_.ctl({"approve", kPurged}), 0));
  ASSERT_TRUE(Exited(tier1_.once(), 0));
  for (const Node* m : {&trusting, &cautious}) {
    replace_with_copy(mirror_.tree(), m->tree());
    replace_with_copy(mirror_.state(), m->state());
  }
  ASSERT_TRUE(Exited(trusting.once(), 0)) << "tier1's approval covers the same change";
  EXPECT_TRUE(TreeMatches(trusting.tree(), v2_));
  ASSERT_TRUE(Exited(cautious.once(), kHeld)) << "not configured to trust its parent";
  EXPECT_EQ(held_partitions(cautious.status()), std::set<std::string>{kPurged});
}

// --- A hostile parent ---------------------------------------------------------------------

class HostilePinsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto key = proto::PrivateKey::generate();
    ASSERT_TRUE(key.ok());
    key_ = std::make_unique<proto::PrivateKey>(std::move(*key));
    auto other = proto::PrivateKey::generate();
    ASSERT_TRUE(other.ok());
    other_ = std::make_unique<proto::PrivateKey>(std::move(*other));
    write_public_key(*key_, root_ / "keys/origin.pub");
    mirror_ = make_mirror(root_ / "mirror", "mirror", parent_.url(), {root_ / "keys/origin.pub"});
    SampleShape shape;
    shape.min_packages = 12;
    shape.max_packages = 16;
    v1_ = make_sample(shape);
    v2_ = v1_;  // armv7 moves forward at serial 6
    add_package(v2_, kPurged, "busybox-1.37-r0.apk", 91, kBaseMtime + 3000);
    rebuild_index(v2_, kPurged, kBaseMtime + 3001);
  }

  /// Publishes `offer` and returns its envelope bytes.
  std::string publish(const Offer& offer) {
    parent_.publish(offer);
    return read_file(parent_.tree() / ".tiersync/v1/snapshot");
  }

  TempDir root_{"tiersync-hostile-pins"};
  std::unique_ptr<proto::PrivateKey> key_, other_;
  FakeParent parent_{root_ / "parent/tree"};
  Node mirror_;
  TreeModel v1_, v2_;
};

TEST_F(HostilePinsTest, RefusesRollbacksBadProofsAndDamagedPins) {
  const std::string env5 = publish(Offer::of(v1_, 5, *key_));
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  const proto::PartitionRef ref5 = read_published_snapshot(parent_.tree()).partitions.at(kPurged);
  publish(Offer::of(v2_, 6, *key_));
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  const proto::PartitionRef ref6 = read_published_snapshot(parent_.tree()).partitions.at(kPurged);

  // Serial 7 updates x86_64 and pins armv7 at serial 5's signed manifest: older than the serial
  // 6 the mirror has for it. The pin is refused, the mirror keeps its own, the rest applies.
  TreeModel v3 = v2_;
  add_package(v3, kUpdated, "zlib-1.3.2-r0.apk", 92, kBaseMtime + 4000);
  rebuild_index(v3, kUpdated, kBaseMtime + 4001);
  auto offer_pinning = [&](std::uint64_t serial, const TreeModel& model, const sync::Pins& pins,
                           const std::string& name) {
    TreeModel served = model;  // the parent serves armv7 as the pin says
    for (const auto& path : paths_in(served, kPurged)) served.erase(path);
    for (const auto& path : paths_in(v1_, kPurged)) served[path] = v1_.at(path);
    Offer o = Offer::of(served, serial, *key_);
    o.patch_snapshot = [&](proto::Snapshot& s) { s.partitions[kPurged] = ref6; };
    o.raw_files[".tiersync/v1/pins/" + name] = sync::encode_pins(pins);
    publish(o);
  };
  sync::Pins rollback;
  rollback.serial = 7;
  rollback.pins[kPurged] = {5, ref5};
  rollback.proofs[5] = env5;
  offer_pinning(7, v3, rollback, "7");
  RunResult r = mirror_.once();
  ASSERT_TRUE(Exited(r, 0));
  EXPECT_TRUE(StderrNames(r, {{kPurged}, {"rollback"}}));
  EXPECT_TRUE(TreeMatches(mirror_.tree(), v3)) << "armv7 stays at serial 6, x86_64 moves on";
  EXPECT_TRUE(Exited(mirror_.ctl({"verify", "--full"}), 0));
  const Listing before =
      list_tree(mirror_.tree(), {.skip_meta = false, .hash = true, .exclude = {}});

  // A proof signed by a key the mirror does not trust.
  auto env = proto::decode_envelope(env5);
  ASSERT_TRUE(env.ok());
  auto forged = proto::decode_snapshot(env->payload);
  ASSERT_TRUE(forged.ok());
  forged->serial = 7;
  sync::Pins untrusted;
  untrusted.serial = 8;
  untrusted.pins[kPurged] = {7, ref5};
  untrusted.proofs[7] = proto::encode_envelope(proto::sign_envelope(
      proto::kSnapshotPayloadType, proto::encode_snapshot(*forged), {*other_}));
  offer_pinning(8, v3, untrusted, "8");
  r = mirror_.once();
  EXPECT_TRUE(Exited(r, 1));
  EXPECT_TRUE(StderrNames(r, {{kPurged}}));

  // A pins document of another serial, and a damaged one.
  sync::Pins elsewhere = rollback;
  elsewhere.serial = 8;
  offer_pinning(9, v3, elsewhere, "9");
  EXPECT_TRUE(Exited(mirror_.once(), 1));
  Offer damaged = Offer::of(v3, 10, *key_);
  damaged.raw_files[".tiersync/v1/pins/10"] = "{\"type\":\"tiersync.pins\",";
  publish(damaged);
  r = mirror_.once();
  EXPECT_TRUE(Exited(r, 1));
  EXPECT_TRUE(StderrNames(r, {{"pins"}}));
  EXPECT_EQ(diff_listings(before, list_tree(mirror_.tree(),
                                            {.skip_meta = false, .hash = true, .exclude = {}})),
            "")
      << "nothing of a refused snapshot is applied";
}

// --- Crashes ------------------------------------------------------------------------------

class PinsCrashTest : public PinsTest {
 protected:
  fs::path saved(std::string_view what) const { return root_ / "saved" / what; }
  void save() {
    fs::create_directories(root_ / "saved");
    replace_with_copy(tier1_.tree(), saved("tree"));
    replace_with_copy(tier1_.state(), saved("state"));
  }
  RunResult crash_at(int n) {
    replace_with_copy(saved("tree"), tier1_.tree());
    replace_with_copy(saved("state"), tier1_.state());
    return tier1_.once({{"TIERSYNC_CRASH_AT", std::to_string(n)}});
  }
  /// Crashes tier1's cycle at every step up to `limit` (it must complete before) and checks the
  /// tree after each: every file old or new, then the next run converges to `after`.
  void sweep(const TreeModel& before, const TreeModel& after, int expected_exit, int limit) {
    int crashed = 0;
    for (int n = 1; n <= limit; ++n) {
      SCOPED_TRACE("TIERSYNC_CRASH_AT=" + std::to_string(n));
      RunResult r = crash_at(n);
      if (r.exited(expected_exit)) break;  // past the last step
      ASSERT_TRUE(r.killed_by(SIGKILL)) << r.describe();
      ++crashed;
      for (const auto& [path, spec] : model_of(tier1_.tree())) {
        const bool old_content = before.count(path) && before.at(path).bytes == spec.bytes;
        const bool new_content = after.count(path) && after.at(path).bytes == spec.bytes;
        EXPECT_TRUE(old_content || new_content) << path;
      }
      ASSERT_TRUE(Exited(tier1_.once(), expected_exit)) << "recovery and the next cycle";
      ASSERT_TRUE(TreeMatches(tier1_.tree(), after));
      ASSERT_TRUE(Exited(tier1_.ctl({"verify", "--full"}), 0));
      ASSERT_NE(n, limit) << "still crashing at the last step tried";
    }
    EXPECT_GT(crashed, 10) << "too few crash points";
  }
};

TEST_F(PinsCrashTest, ApplyWithPinsSurvivesACrashAtEveryStep) {
  ASSERT_NO_FATAL_FAILURE(publish_v2());
  save();
  sweep(v1_, mix_, kHeld, 400);
}

TEST_F(PinsCrashTest, ApprovalAtTheSameSerialSurvivesACrashAtEveryStep) {
  ASSERT_NO_FATAL_FAILURE(publish_v2());
  ASSERT_TRUE(Exited(tier1_.once(), kHeld));
  ASSERT_TRUE(Exited(tier1_.ctl({"approve", kPurged}), 0));
  save();
  // Each crash falls before or after the commit point of the same serial: the pins' unlink.
  sweep(mix_, v2_, 0, 400);
  EXPECT_EQ(tier1_.status().value("serial", json()), tier0_serial());
}

}  // namespace
}  // namespace tiersync::it
