// DSSE envelopes as a parent serves them (the long poll, the snapshot URL) and as state_dir keeps
// them: decode, then what a decoded envelope must satisfy.
//   - encode(decode(x)) decodes to the same envelope (payload type, payload, every signature);
//   - encode is canonical: encoding that second decode gives the same bytes;
//   - verification against a trusted key answers without crashing (it accepts only when the test
//     key signed exactly this payload type and payload).

#include <optional>

#include "proto/dsse.h"
#include "proto/keys.h"
#include "tests/fuzz/fuzz.h"

namespace {

using namespace tiersync;

bool same(const proto::Envelope& a, const proto::Envelope& b) {
  if (a.payload_type != b.payload_type || a.payload != b.payload ||
      a.signatures.size() != b.signatures.size())
    return false;
  for (std::size_t i = 0; i < a.signatures.size(); ++i)
    if (a.signatures[i].keyid != b.signatures[i].keyid ||
        a.signatures[i].sig != b.signatures[i].sig)
      return false;
  return true;
}

const proto::PublicKey& trusted() {
  static const proto::PublicKey key = [] {
    auto k = proto::PrivateKey::from_pem(fuzz::kTestKeyPem, "test key");
    if (!k) std::abort();
    return k->public_key();
  }();
  return key;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto env = proto::decode_envelope(fuzz::bytes(data, size));
  if (!env) {
    FUZZ_CHECK(!env.message().empty());
    return 0;
  }
  // Encoding writes a keyid for every signature: with thousands of signatures the encoding may
  // exceed the decoder's bound on JSON values. Real envelopes carry a few (the cap is 64).
  if (env->signatures.size() > 64) return 0;
  const std::string encoded = proto::encode_envelope(*env);
  auto again = proto::decode_envelope(encoded);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(same(*env, *again));
  FUZZ_CHECK(proto::encode_envelope(*again) == encoded);

  // Each signature is one Ed25519 verification; a few are enough to reach every branch.
  if (env->signatures.size() <= 4) {
    auto payload = proto::verify_envelope(*env, {trusted()}, 1, proto::kSnapshotPayloadType);
    FUZZ_CHECK(!payload || *payload == env->payload);
  }
  return 0;
}
