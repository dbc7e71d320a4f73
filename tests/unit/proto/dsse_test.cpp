#include "proto/dsse.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>

#include "proto/digest.h"
#include "proto/snapshot.h"

namespace tiersync::proto {
namespace {

using nlohmann::json;

constexpr std::string_view kPayload = R"({"type":"tiersync.snapshot","serial":42})";

PrivateKey new_key() {
  auto key = PrivateKey::generate();
  EXPECT_TRUE(key) << key.message();
  return std::move(*key);
}

/// Decodes `text`, expecting failure, and returns the error message.
std::string decode_error(std::string_view text) {
  const auto env = decode_envelope(text);
  EXPECT_FALSE(env) << text;
  return env ? std::string() : env.message();
}

std::string to_url_safe_unpadded(std::string b64) {
  std::replace(b64.begin(), b64.end(), '+', '-');
  std::replace(b64.begin(), b64.end(), '/', '_');
  b64.erase(b64.find_last_not_of('=') + 1);
  return b64;
}

class DsseTest : public testing::Test {
 protected:
  const PrivateKey a_ = new_key();
  const PrivateKey b_ = new_key();
  const PrivateKey c_ = new_key();
};

TEST(Pae, SpecTestVector) {
  EXPECT_EQ(pae("http://example.com/HelloWorld", "hello world"),
            "DSSEv1 29 http://example.com/HelloWorld 11 hello world");
  EXPECT_EQ(pae("", ""), "DSSEv1 0  0 ");
}

TEST_F(DsseTest, EncodeDecodeRoundTrip) {
  // Bytes that need escaping in JSON survive, as the payload travels as base64.
  const std::string payload = std::string(kPayload) + std::string("\0\xff\"\n", 4);
  const Envelope env = sign_envelope(kSnapshotPayloadType, payload, {a_, b_});
  const std::string text = encode_envelope(env);

  const json doc = json::parse(text);
  EXPECT_EQ(doc["payloadType"], kSnapshotPayloadType);
  EXPECT_EQ(doc["payload"], base64_encode(payload));
  ASSERT_EQ(doc["signatures"].size(), 2u);
  EXPECT_EQ(doc["signatures"][0]["keyid"], a_.public_key().keyid());

  const auto decoded = decode_envelope(text);
  ASSERT_TRUE(decoded) << decoded.message();
  EXPECT_EQ(decoded->payload_type, kSnapshotPayloadType);
  EXPECT_EQ(decoded->payload, payload);
  ASSERT_EQ(decoded->signatures.size(), 2u);
  EXPECT_EQ(decoded->signatures[1].keyid, b_.public_key().keyid());
  EXPECT_EQ(decoded->signatures[1].sig, env.signatures[1].sig);
  EXPECT_EQ(encode_envelope(*decoded), text);

  const auto verified = verify_envelope(*decoded, {a_.public_key()}, 1, kSnapshotPayloadType);
  ASSERT_TRUE(verified) << verified.message();
  EXPECT_EQ(*verified, payload);
}

TEST_F(DsseTest, UrlSafeUnpaddedBase64Accepted) {
  // Enough payload and signature bytes that '+', '/' and padding all appear in standard form.
  std::string payload;
  for (int i = 0; i < 300; ++i) payload += static_cast<char>(i * 7);
  const Envelope env = sign_envelope(kSnapshotPayloadType, payload, {a_});
  json doc = json::parse(encode_envelope(env));
  doc["payload"] = to_url_safe_unpadded(doc["payload"]);
  doc["signatures"][0]["sig"] = to_url_safe_unpadded(doc["signatures"][0]["sig"]);
  ASSERT_NE(doc.dump().find_first_of("-_"), std::string::npos);

  const auto decoded = decode_envelope(doc.dump());
  ASSERT_TRUE(decoded) << decoded.message();
  EXPECT_EQ(decoded->payload, payload);
  EXPECT_TRUE(verify_envelope(*decoded, {a_.public_key()}, 1, kSnapshotPayloadType));
}

TEST_F(DsseTest, KeyidIsOptional) {
  const auto decoded = decode_envelope(
      R"({"payloadType":"t","payload":"","signatures":[{"sig":""},{"keyid":null,"sig":""}]})");
  ASSERT_TRUE(decoded) << decoded.message();
  EXPECT_EQ(decoded->signatures.size(), 2u);
  EXPECT_EQ(decoded->signatures[0].keyid, "");
}

TEST_F(DsseTest, ThresholdTwoSignedByOneRefused) {
  const Envelope env = sign_envelope(kSnapshotPayloadType, kPayload, {a_});
  const auto r = verify_envelope(env, {a_.public_key(), b_.public_key()}, 2, kSnapshotPayloadType);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.message(),
            "snapshot signature: 1 of 2 required trusted keys signed it (signatures "
            "from keyids: " +
                a_.public_key().keyid() + ")");

  const Envelope both = sign_envelope(kSnapshotPayloadType, kPayload, {b_, a_});
  EXPECT_TRUE(verify_envelope(both, {a_.public_key(), b_.public_key()}, 2, kSnapshotPayloadType));
}

TEST_F(DsseTest, SameKeySigningTwiceCountsOnce) {
  const Envelope env = sign_envelope(kSnapshotPayloadType, kPayload, {a_, a_});
  ASSERT_EQ(env.signatures.size(), 2u);
  const auto r = verify_envelope(env, {a_.public_key(), b_.public_key()}, 2, kSnapshotPayloadType);
  ASSERT_FALSE(r);
  EXPECT_TRUE(r.message().starts_with("snapshot signature: 1 of 2 ")) << r.message();
}

TEST_F(DsseTest, TrustedKeyListedTwiceCountsOnce) {
  // A copy parsed from PEM is a distinct object holding the same key.
  const auto copy = PublicKey::from_pem(a_.public_key().to_pem(), "copy");
  ASSERT_TRUE(copy);
  const Envelope env = sign_envelope(kSnapshotPayloadType, kPayload, {a_, a_});
  const auto r = verify_envelope(env, {a_.public_key(), *copy}, 2, kSnapshotPayloadType);
  ASSERT_FALSE(r);
  EXPECT_TRUE(r.message().starts_with("snapshot signature: 1 of 2 ")) << r.message();
}

TEST_F(DsseTest, ThresholdZeroMeansOne) {
  const Envelope env = sign_envelope(kSnapshotPayloadType, kPayload, {c_});
  const auto r = verify_envelope(env, {a_.public_key()}, 0, kSnapshotPayloadType);
  ASSERT_FALSE(r);
  EXPECT_TRUE(r.message().starts_with("snapshot signature: 0 of 1 ")) << r.message();
  EXPECT_FALSE(verify_envelope(env, {}, 0, kSnapshotPayloadType));
  EXPECT_TRUE(verify_envelope(env, {c_.public_key()}, 0, kSnapshotPayloadType));
}

TEST_F(DsseTest, UntrustedKeyRefused) {
  const Envelope env = sign_envelope(kSnapshotPayloadType, kPayload, {c_});
  const auto r = verify_envelope(env, {a_.public_key(), b_.public_key()}, 1, kSnapshotPayloadType);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.message(),
            "snapshot signature: 0 of 1 required trusted keys signed it (signatures from keyids: " +
                c_.public_key().keyid() + ")");
}

TEST_F(DsseTest, WrongPayloadTypeRefused) {
  // Signed correctly, but for another purpose: the type is part of what is signed.
  const Envelope env = sign_envelope("application/vnd.other+json", kPayload, {a_});
  const auto r = verify_envelope(env, {a_.public_key()}, 1, kSnapshotPayloadType);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.message(), "envelope: payloadType is \"application/vnd.other+json\", expected \"" +
                             std::string(kSnapshotPayloadType) + "\"");

  Envelope relabelled = env;
  relabelled.payload_type = kSnapshotPayloadType;
  EXPECT_FALSE(verify_envelope(relabelled, {a_.public_key()}, 1, kSnapshotPayloadType));
}

TEST_F(DsseTest, TamperedPayloadRefused) {
  Envelope env = sign_envelope(kSnapshotPayloadType, kPayload, {a_});
  env.payload[env.payload.size() - 2] = '3';  // serial 42 -> 43
  EXPECT_FALSE(verify_envelope(env, {a_.public_key()}, 1, kSnapshotPayloadType));
}

TEST_F(DsseTest, WrongKeyidHintStillVerifies) {
  Envelope env = sign_envelope(kSnapshotPayloadType, kPayload, {a_});
  env.signatures[0].keyid = b_.public_key().keyid();  // points at the wrong trusted key
  EXPECT_TRUE(verify_envelope(env, {b_.public_key(), a_.public_key()}, 1, kSnapshotPayloadType));
  env.signatures[0].keyid = "not-a-keyid";
  EXPECT_TRUE(verify_envelope(env, {b_.public_key(), a_.public_key()}, 1, kSnapshotPayloadType));
  env.signatures[0].keyid.clear();
  EXPECT_TRUE(verify_envelope(env, {b_.public_key(), a_.public_key()}, 1, kSnapshotPayloadType));
}

TEST_F(DsseTest, WrongLengthSignatureIsNotACrash) {
  Envelope env = sign_envelope(kSnapshotPayloadType, kPayload, {a_});
  env.signatures.push_back({a_.public_key().keyid(), "short"});
  env.signatures.push_back({"", ""});
  std::swap(env.signatures.front(), env.signatures.back());
  EXPECT_TRUE(verify_envelope(env, {a_.public_key()}, 1, kSnapshotPayloadType));
}

TEST(DsseDecode, MalformedJsonRefused) {
  EXPECT_TRUE(decode_error("").starts_with("envelope: not valid JSON: ")) << decode_error("");
  EXPECT_TRUE(decode_error("{\"payloadType\":").starts_with("envelope: not valid JSON: "));
  EXPECT_TRUE(decode_error("{} trailing").starts_with("envelope: not valid JSON: "));
  EXPECT_EQ(decode_error("[]"), "envelope: not a JSON object");
  EXPECT_EQ(decode_error("\"x\""), "envelope: not a JSON object");
}

TEST(DsseDecode, MissingOrWrongTypedFieldsNamed) {
  EXPECT_EQ(decode_error(R"({"payload":"","signatures":[{"sig":""}]})"),
            "envelope: payloadType is missing");
  EXPECT_EQ(decode_error(R"({"payloadType":1,"payload":"","signatures":[{"sig":""}]})"),
            "envelope: payloadType is not a string");
  EXPECT_EQ(decode_error(R"({"payloadType":"t","signatures":[{"sig":""}]})"),
            "envelope: payload is missing");
  EXPECT_EQ(decode_error(R"({"payloadType":"t","payload":null,"signatures":[{"sig":""}]})"),
            "envelope: payload is not a string");
  EXPECT_EQ(decode_error(R"({"payloadType":"t","payload":""})"), "envelope: signatures is missing");
  EXPECT_EQ(decode_error(R"({"payloadType":"t","payload":"","signatures":{}})"),
            "envelope: signatures is not an array");
  EXPECT_EQ(decode_error(R"({"payloadType":"t","payload":"","signatures":[]})"),
            "envelope: signatures is empty");
  EXPECT_EQ(decode_error(R"({"payloadType":"t","payload":"","signatures":[{"sig":""},"x"]})"),
            "envelope: signatures[1] is not an object");
  EXPECT_EQ(decode_error(R"({"payloadType":"t","payload":"","signatures":[{"sig":""},{}]})"),
            "envelope: signatures[1].sig is missing");
  EXPECT_EQ(decode_error(R"({"payloadType":"t","payload":"","signatures":[{"sig":[]}]})"),
            "envelope: signatures[0].sig is not a string");
  EXPECT_EQ(decode_error(R"({"payloadType":"t","payload":"","signatures":[{"keyid":7,"sig":""}]})"),
            "envelope: signatures[0].keyid is not a string");
}

TEST(DsseDecode, BadBase64Named) {
  EXPECT_EQ(decode_error(R"({"payloadType":"t","payload":"Zm9v!","signatures":[{"sig":""}]})"),
            "envelope: payload is not valid base64");
  EXPECT_EQ(
      decode_error(R"({"payloadType":"t","payload":"","signatures":[{"sig":""},{"sig":"Z"}]})"),
      "envelope: signatures[1].sig is not valid base64");
}

TEST(DsseDecode, OversizedRefusedBeforeParsing) {
  // Not even JSON: the size check must come first.
  const std::string huge(kMaxEnvelopeBytes + 1, '[');
  EXPECT_EQ(decode_error(huge), "envelope: " + std::to_string(huge.size()) +
                                    " bytes, more than the limit of " +
                                    std::to_string(kMaxEnvelopeBytes));
}

TEST(DsseDecode, HostileShapesRefused) {
  EXPECT_EQ(decode_error(std::string(100000, '[') + std::string(100000, ']')),
            "envelope: nested deeper than 8");
  std::string wide = R"({"payloadType":"t","payload":"","signatures":[{"sig":""}],"x":[)";
  for (int i = 0; i < 10000; ++i) wide += "0,";
  wide += "0]}";
  EXPECT_EQ(decode_error(wide), "envelope: more than 4096 JSON values");
  EXPECT_EQ(decode_error(R"({"payloadType":"t","payload":"","payload":"","signatures":[]})"),
            "envelope: duplicate key \"payload\"");
}

TEST(DsseDecode, UnknownFieldsIgnored) {
  const auto env = decode_envelope(
      R"({"payloadType":"t","payload":"aGk=","signatures":[{"sig":"","x":1}],"future":{"a":[1]}})");
  ASSERT_TRUE(env) << env.message();
  EXPECT_EQ(env->payload, "hi");
}

TEST(DsseDecode, MoreSignaturesThanTrustedKeysMayBeRefused) {
  json doc = {{"payloadType", "t"}, {"payload", ""}, {"signatures", json::array()}};
  for (std::size_t i = 0; i <= kMaxSignatures; ++i)
    doc["signatures"].push_back({{"keyid", ""}, {"sig", ""}});
  EXPECT_EQ(decode_error(doc.dump()), "envelope: 65 signatures, more than 64");
  doc["signatures"].erase(kMaxSignatures);
  EXPECT_TRUE(decode_envelope(doc.dump()));
}

TEST(DsseDecode, ALongKeyidIsRefusedAndQuotedCutShort) {
  const std::string keyid(8u << 20, 'k');
  json doc = {{"payloadType", "t"},
              {"payload", ""},
              {"signatures", {{{"keyid", std::string(64, 'a')}, {"sig", ""}}}}};
  EXPECT_TRUE(decode_envelope(doc.dump()));
  doc["signatures"].push_back({{"keyid", keyid + "\n\x1b"}, {"sig", ""}});
  const std::string message = decode_error(doc.dump());
  EXPECT_EQ(message, "envelope: signatures[1].keyid is longer than 64 bytes (\"" +
                         std::string(200, 'k') + "...(8388610 bytes)\")");
}

TEST_F(DsseTest, AForgedEnvelopeCostsAtMostTwoChecksPerTrustedKey) {
  std::vector<PublicKey> trusted;
  for (int i = 0; i < 8; ++i) trusted.push_back(new_key().public_key());
  // The most signatures an envelope may hold, none valid: half name a trusted key, half none.
  Envelope env{std::string(kSnapshotPayloadType), std::string(kPayload), {}};
  for (std::size_t i = 0; i < kMaxSignatures; ++i)
    env.signatures.push_back(
        {i % 2 ? trusted[i % trusted.size()].keyid() : "", std::string(64, static_cast<char>(i))});
  const auto before = PublicKey::verifications();
  const auto r = verify_envelope(env, trusted, 1, kSnapshotPayloadType);
  const auto checks = PublicKey::verifications() - before;
  ASSERT_FALSE(r);
  // Not 64 signatures x 8 keys = 512 checks of the whole payload.
  EXPECT_EQ(checks, kVerifyBudgetPerKey * trusted.size());
  EXPECT_TRUE(r.message().ends_with(" and 56 more); gave up after 16 signature checks"))
      << r.message();
}

TEST_F(DsseTest, AnHonestEnvelopeCostsOneCheckPerSignatureNeeded) {
  std::vector<PublicKey> trusted = {b_.public_key(), a_.public_key()};
  for (int i = 0; i < 62; ++i) trusted.push_back(new_key().public_key());
  const Envelope env = sign_envelope(kSnapshotPayloadType, kPayload, {c_, a_, b_});
  const auto before = PublicKey::verifications();
  EXPECT_TRUE(verify_envelope(env, trusted, 2, kSnapshotPayloadType));
  EXPECT_EQ(PublicKey::verifications() - before, 2u);  // c_ names no trusted key: not tried
}

TEST_F(DsseTest, TheBytesAreVerifiedBeforeThePayloadIsParsed) {
  // A payload that would be expensive to parse, signed by a key the verifier does not trust.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const std::string forged = encode_envelope(sign_envelope(kSnapshotPayloadType, deep, {c_}));
  const auto r = verify_snapshot(forged, {a_.public_key()}, 1);
  ASSERT_FALSE(r);
  EXPECT_TRUE(r.message().starts_with("snapshot signature: 0 of 1 ")) << r.message();
  const auto payload = verify_envelope(forged, {c_.public_key()}, 1, kSnapshotPayloadType);
  ASSERT_TRUE(payload) << payload.message();
  EXPECT_EQ(*payload, deep);
  // Signed by a trusted key, it is parsed, and refused as a snapshot.
  const auto parsed = verify_snapshot(forged, {c_.public_key()}, 1);
  ASSERT_FALSE(parsed);
  EXPECT_TRUE(parsed.message().starts_with("snapshot: ")) << parsed.message();
  EXPECT_EQ(verify_snapshot("[]", {c_.public_key()}, 1).message(), "envelope: not a JSON object");
}

TEST_F(DsseTest, AHostilePayloadTypeIsQuotedCutShort) {
  const Envelope env = sign_envelope(std::string(1u << 20, 'x') + "\n", kPayload, {a_});
  const auto r = verify_envelope(env, {a_.public_key()}, 1, kSnapshotPayloadType);
  ASSERT_FALSE(r);
  EXPECT_LT(r.message().size(), 400u) << r.message().substr(0, 400);
}

}  // namespace
}  // namespace tiersync::proto
