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
/// Envelopes with more signatures than this are refused (as many as trusted keys may be listed).
inline constexpr std::size_t kMaxSignatures = 64;
/// A keyid longer than this (tiersync's are 64 hex digits) refuses its envelope.
inline constexpr std::size_t kMaxKeyidBytes = 64;

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

/// Parses the JSON envelope within every limit above (size, JSON depth and values, duplicate
/// keys, signatures, keyid length); payload and sig accept standard and URL-safe base64. Does not
/// verify: for bytes from the network use verify_envelope(bytes, ...) below.
Result<Envelope> decode_envelope(std::string_view json);
/// Serialises with standard base64.
std::string encode_envelope(const Envelope& envelope);

/// Signs `payload` with every key given.
Envelope sign_envelope(std::string_view payload_type, std::string_view payload,
                       const std::vector<PrivateKey>& keys);

/// Verifies that at least `threshold` distinct trusted keys signed the envelope and that its
/// payload type is `expected_type`. Returns the payload bytes, which are only then safe to parse.
/// Each signature is checked first against the trusted key its keyid names; the others are tried
/// only within a budget, so that a forged envelope costs at most kVerifyBudgetPerKey checks per
/// distinct trusted key, whatever it holds. Messages quote hostile strings cut short, escaped.
Result<std::string> verify_envelope(const Envelope& envelope, const std::vector<PublicKey>& trusted,
                                    unsigned threshold, std::string_view expected_type);

/// The one call for envelope bytes that came from the network or a parent: decodes them within
/// the limits, then verifies; returns the payload, which is only then safe to parse.
Result<std::string> verify_envelope(std::string_view envelope_bytes,
                                    const std::vector<PublicKey>& trusted, unsigned threshold,
                                    std::string_view expected_type);

/// Ed25519 checks allowed per envelope for each distinct trusted key.
inline constexpr std::size_t kVerifyBudgetPerKey = 2;

}  // namespace tiersync::proto
