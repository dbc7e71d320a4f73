#include "daemon/sync/pins.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "daemon/sync/state.h"
#include "proto/dsse.h"
#include "proto/keys.h"
#include "tests/unit/support.h"

namespace tiersync::sync {
namespace {

using unit::Contains;

proto::PartitionRef ref_of(const std::string& seed, std::uint64_t files = 1) {
  return {proto::sha256(seed), files, 3 * files};
}

class PinsTest : public testing::Test {
 protected:
  void SetUp() override {
    auto key = proto::PrivateKey::generate();
    ASSERT_TRUE(key) << key.message();
    key_ = std::make_unique<proto::PrivateKey>(std::move(*key));
    auto other = proto::PrivateKey::generate();
    ASSERT_TRUE(other) << other.message();
    other_ = std::make_unique<proto::PrivateKey>(std::move(*other));
    trusted_ = {key_->public_key()};
  }

  proto::Snapshot snapshot(std::uint64_t serial, const std::string& armv7_seed) const {
    proto::Snapshot s;
    s.origin = "dl-master";
    s.serial = serial;
    s.created = 1795654800;
    s.expires = 1796259600;
    s.layout = "{release}/{repo}/{arch}";
    s.depth = 3;
    s.partitions["."] = ref_of("root");
    s.partitions["edge/main/x86_64"] = ref_of("x86_64-" + std::to_string(serial));
    s.partitions["edge/main/armv7"] = ref_of(armv7_seed, 13);
    return s;
  }
  std::string sign(const proto::Snapshot& s, const proto::PrivateKey* key = nullptr) const {
    return proto::encode_envelope(proto::sign_envelope(
        proto::kSnapshotPayloadType, proto::encode_snapshot(s), {key ? *key : *key_}));
  }
  /// Serial 58 pinning edge/main/armv7 at serial 55's manifest.
  Pins pinned(const proto::Snapshot& old) const {
    Pins p;
    p.serial = 58;
    p.pins["edge/main/armv7"] = {old.serial, old.partitions.at("edge/main/armv7")};
    p.proofs[old.serial] = sign(old);
    return p;
  }

  std::unique_ptr<proto::PrivateKey> key_, other_;
  std::vector<proto::PublicKey> trusted_;
};

TEST_F(PinsTest, EncodeDecodeRoundTrip) {
  const Pins p = pinned(snapshot(55, "armv7-old"));
  const std::string doc = encode_pins(p);
  EXPECT_TRUE(Contains(doc, "\"type\":\"tiersync.pins\""));
  auto back = decode_pins(doc);
  ASSERT_TRUE(back) << back.message();
  EXPECT_EQ(*back, p);
  EXPECT_EQ(encode_pins(*back), doc);
}

TEST_F(PinsTest, DecodeRefusesDamagedDocuments) {
  const std::string good = encode_pins(pinned(snapshot(55, "armv7-old")));
  EXPECT_FALSE(decode_pins("not json"));
  EXPECT_FALSE(decode_pins("[]"));
  std::string wrong_type = good;
  wrong_type.replace(wrong_type.find("tiersync.pins"), 13, "tiersync.snap");
  EXPECT_FALSE(decode_pins(wrong_type));
  // Two parsers could read a duplicate key differently: refused.
  std::string dup = good;
  dup.insert(1, "\"serial\":1,");
  auto refused = decode_pins(dup);
  ASSERT_FALSE(refused);
  EXPECT_TRUE(Contains(refused.message(), "duplicate"));
  // A pin without the envelope that proves it names its partition.
  Pins missing = pinned(snapshot(55, "armv7-old"));
  missing.proofs.clear();
  auto no_proof = decode_pins(encode_pins(missing));
  ASSERT_FALSE(no_proof);
  EXPECT_TRUE(Contains(no_proof.message(), "edge/main/armv7"));
  // Huge: refused before parsing.
  auto huge = decode_pins(std::string(kMaxPinsBytes + 1, ' '));
  ASSERT_FALSE(huge);
  EXPECT_TRUE(Contains(huge.message(), "limit"));
  std::string bad_hex = good;
  bad_hex.replace(bad_hex.find("\"manifest\":\"") + 12, 2, "ZZ");
  EXPECT_FALSE(decode_pins(bad_hex));
}

TEST_F(PinsTest, VerifyAcceptsAProvedPin) {
  const proto::Snapshot old = snapshot(55, "armv7-old");
  const proto::Snapshot now = snapshot(58, "armv7-new");
  auto proofs = verify_pins(pinned(old), now, trusted_, 1);
  ASSERT_TRUE(proofs) << proofs.message();
  EXPECT_EQ(proofs->at(55).expires, old.expires);
  const proto::Snapshot eff = effective_snapshot(now, pinned(old));
  EXPECT_EQ(eff.partitions.at("edge/main/armv7"), old.partitions.at("edge/main/armv7"));
  EXPECT_EQ(eff.partitions.at("edge/main/x86_64"), now.partitions.at("edge/main/x86_64"));
}

TEST_F(PinsTest, VerifyRefusesWhatTheProofDoesNotProve) {
  const proto::Snapshot old = snapshot(55, "armv7-old");
  const proto::Snapshot now = snapshot(58, "armv7-new");
  auto refused = [&](const Pins& p, std::string_view why) {
    auto r = verify_pins(p, now, trusted_, 1);
    EXPECT_FALSE(r) << why;
    if (!r) {
      EXPECT_TRUE(Contains(r.message(), "edge/main/armv7")) << why;
    }
  };
  Pins untrusted = pinned(old);
  untrusted.proofs[55] = sign(old, other_.get());
  refused(untrusted, "signed by a key not trusted");
  Pins other_manifest = pinned(old);
  other_manifest.pins["edge/main/armv7"].ref = ref_of("never-signed", 13);
  refused(other_manifest, "a manifest the proof does not name");
  Pins other_counts = pinned(old);
  other_counts.pins["edge/main/armv7"].ref.files = 99;
  refused(other_counts, "counts the proof does not give");
  Pins newer = pinned(snapshot(60, "armv7-future"));
  refused(newer, "a serial above the snapshot's");
  proto::Snapshot elsewhere = old;
  elsewhere.origin = "another-origin";
  Pins foreign = pinned(old);
  foreign.proofs[55] = sign(elsewhere);
  refused(foreign, "another origin");
  proto::Snapshot relaid = old;
  relaid.layout = "{release}/{arch}/{repo}";
  Pins other_layout = pinned(old);
  other_layout.proofs[55] = sign(relaid);
  refused(other_layout, "another layout");
  Pins mislabelled = pinned(old);
  mislabelled.proofs[55] = sign(snapshot(54, "armv7-old"));
  refused(mislabelled, "a proof of another serial");
  Pins another_serial = pinned(old);
  another_serial.serial = 57;
  EXPECT_FALSE(verify_pins(another_serial, now, trusted_, 1)) << "pins of another serial";
}

TEST_F(PinsTest, PinsBetweenNamesEveryPartitionNotAtTheEnvelopesReference) {
  const proto::Snapshot old = snapshot(55, "armv7-old");
  const proto::Snapshot now = snapshot(58, "armv7-new");
  const std::string proof = sign(old);
  proto::Snapshot eff = now;
  EXPECT_TRUE(pins_between(now, eff, {}).empty());
  eff.partitions["edge/main/armv7"] = old.partitions.at("edge/main/armv7");
  eff.partitions["edge/gone/x86_64"] = ref_of("gone");  // removed upstream, held here
  const Pins p = pins_between(
      now, eff, {{"edge/main/armv7", {55, &proof}}, {"edge/gone/x86_64", {55, &proof}}});
  EXPECT_EQ(p.serial, 58u);
  EXPECT_EQ(p.pins.size(), 2u);
  EXPECT_EQ(p.proofs.size(), 1u);
  EXPECT_EQ(effective_snapshot(now, p).partitions, eff.partitions);
}

// The store: the applied snapshot is the effective one; the journal names the candidate's pins,
// so that recovery tells a committed re-evaluation of the applied serial from one that is not.
class PinsStateTest : public PinsTest {
 protected:
  void SetUp() override {
    PinsTest::SetUp();
    dir_ = unit::make_temp_dir("pins_state_test");
    ASSERT_FALSE(dir_.empty());
    state_ = std::make_unique<StateStore>(dir_ / "state", dir_ / "tree");
    ASSERT_TRUE(state_->open());
  }
  void TearDown() override {
    state_.reset();
    fs::remove_all(dir_);
  }
  fs::path dir_;
  std::unique_ptr<StateStore> state_;
};

TEST_F(PinsStateTest, LoadAppliedSubstitutesThePins) {
  const proto::Snapshot old = snapshot(55, "armv7-old");
  const proto::Snapshot now = snapshot(58, "armv7-new");
  ASSERT_TRUE(state_->save_applied(sign(now)));
  const std::string doc = encode_pins(pinned(old));
  ASSERT_TRUE(state_->commit_pins(58, doc));
  auto applied = state_->load_applied();
  ASSERT_TRUE(applied && *applied) << (applied ? "none" : applied.message());
  EXPECT_EQ((*applied)->snapshot.partitions.at("edge/main/armv7"),
            old.partitions.at("edge/main/armv7"));
  EXPECT_EQ((*applied)->pins_document, doc);
  EXPECT_EQ((*applied)->serial_of("edge/main/armv7"), 55u);
  EXPECT_EQ((*applied)->serial_of("edge/main/x86_64"), 58u);
  EXPECT_EQ((*applied)->proof_of("edge/main/armv7"), sign(old));

  ASSERT_TRUE(state_->commit_pins(58, ""));  // an approval applied at the same serial
  applied = state_->load_applied();
  ASSERT_TRUE(applied && *applied);
  EXPECT_EQ((*applied)->snapshot.partitions, now.partitions);
  EXPECT_TRUE((*applied)->pins_document.empty());

  unit::write_file(state_->pins_path(58), "{damaged");
  EXPECT_FALSE(state_->load_applied()) << "damaged pins are not read as none";
}

TEST_F(PinsStateTest, JournalRecordsThePins) {
  Journal j{58, pins_id("doc"), {{"edge/main/armv7", proto::sha256("m")}}};
  ASSERT_TRUE(state_->save_journal(j));
  auto back = state_->load_journal();
  ASSERT_TRUE(back && *back);
  EXPECT_EQ((*back)->pins, pins_id("doc"));
  EXPECT_EQ(pins_id(""), "");
}

}  // namespace
}  // namespace tiersync::sync
