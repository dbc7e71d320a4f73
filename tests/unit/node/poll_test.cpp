// The long poll's reading of an envelope (node::polled_serial): the serial of a verified one,
// and a refusal that never parses an unverified payload.

#include <gtest/gtest.h>

#include <string>

#include "daemon/node/daemon.h"
#include "proto/digest.h"
#include "proto/dsse.h"
#include "proto/snapshot.h"
#include "tests/unit/support.h"

namespace tiersync::node {
namespace {

using unit::Contains;

proto::PrivateKey new_key() {
  auto key = proto::PrivateKey::generate();
  EXPECT_TRUE(key) << key.message();
  return std::move(*key);
}

std::string signed_snapshot(std::uint64_t serial, const proto::PrivateKey& key) {
  proto::Snapshot s;
  s.origin = "dl-master";
  s.serial = serial;
  s.created = 1795654800;
  s.expires = 1796259600;
  s.layout = "{release}/{repo}/{arch}";
  s.depth = 3;
  s.partitions["."] = {proto::sha256("root manifest"), 2, 120};
  return proto::encode_envelope(
      proto::sign_envelope(proto::kSnapshotPayloadType, proto::encode_snapshot(s), {key}));
}

TEST(PolledSerialTest, AVerifiedEnvelopeGivesItsSerial) {
  const auto key = new_key();
  auto serial = polled_serial(signed_snapshot(43, key), {key.public_key()}, 1);
  ASSERT_TRUE(serial) << serial.message();
  EXPECT_EQ(*serial, 43u);
}

// A payload no JSON parser should be fed (deeply nested, as in the attack of issue 8), signed by
// a key nobody trusts: refused for its signature, so its payload was never parsed.
TEST(PolledSerialTest, AnUnverifiedPayloadIsRefusedBeforeItIsParsed) {
  const auto trusted = new_key();
  const auto stranger = new_key();
  const std::string hostile = std::string(100000, '[') + std::string(100000, ']');
  const std::string envelope = proto::encode_envelope(
      proto::sign_envelope(proto::kSnapshotPayloadType, hostile, {stranger}));
  auto serial = polled_serial(envelope, {trusted.public_key()}, 1);
  ASSERT_FALSE(serial);
  EXPECT_TRUE(Contains(serial.message(), "signature")) << serial.message();

  // Signed by two keys where two are required: one trusted signature is not enough either.
  const auto second = new_key();
  auto one_of_two =
      polled_serial(signed_snapshot(44, trusted), {trusted.public_key(), second.public_key()}, 2);
  ASSERT_FALSE(one_of_two);
  EXPECT_TRUE(Contains(one_of_two.message(), "signature")) << one_of_two.message();
}

}  // namespace
}  // namespace tiersync::node
