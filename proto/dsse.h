#pragma once
/// DSSE v1 envelopes: pre-authentication encoding, JSON codec, signing, threshold verification.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "proto/keys.h"
#include "proto/result.h"

namespace tiersync::proto {

inline constexpr std::string_view kSnapshotPayloadType = "application/vnd.tiersync.snapshot+json";
/// Envelopes larger than this are refused before parsing.
inline constexpr std::size_t kMaxEnvelopeBytes = 64u << 20;

/// PAE = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body.
std::string pae(std::string_view payload_type, std::string_view payload);

struct Signature {
  std::string keyid;  ///< a hint only
  std::string sig;    ///< raw signature bytes
};

struct Envelope {
  std::string payload_type;
  std::string payload;  ///< raw (decoded) payload bytes
  std::vector<Signature> signatures;
};

/// Parses the JSON envelope; payload and sig accept standard and URL-safe base64.
Result<Envelope> decode_envelope(std::string_view json);
/// Serialises with standard base64.
std::string encode_envelope(const Envelope& envelope);

/// Signs `payload` with every key given.
Envelope sign_envelope(std::string_view payload_type, std::string_view payload,
                       const std::vector<PrivateKey>& keys);

/// Verifies that at least `threshold` distinct trusted keys signed the envelope and that its
/// payload type is `expected_type`. Returns the payload bytes, which are only then safe to parse.
Result<std::string> verify_envelope(const Envelope& envelope, const std::vector<PublicKey>& trusted,
                                    unsigned threshold, std::string_view expected_type);

}  // namespace tiersync::proto
