#include "proto/dsse.h"

#include <algorithm>
#include <set>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "proto/digest.h"
#include "proto/printable.h"
#include "proto/strict_json.h"

namespace tiersync::proto {
namespace {

using Json = nlohmann::json;

// An envelope nests three levels and holds a few values per signature. These bounds keep a
// hostile parent from turning 64 MiB of "[[[[" or "[0,0,0" into gigabytes of JSON nodes.
constexpr int kMaxJsonDepth = 8;
constexpr std::size_t kMaxJsonValues = 4096;
constexpr std::size_t kEd25519Bytes = 64;

/// Strict: an envelope is verified, and must read the same to every verifier.
Json parse_strict(std::string_view text) {
  return parse_strict_json(text, {kMaxJsonDepth, kMaxJsonValues});
}

/// The string member `name` of `object` (not copied: a payload may be 64 MiB), or an error
/// naming `field` ("signatures[0].sig").
Result<const std::string*> string_member(const Json& object, const char* name,
                                         const std::string& field) {
  const auto it = object.find(name);
  if (it == object.end()) return make_error("envelope: " + field + " is missing");
  if (!it->is_string()) return make_error("envelope: " + field + " is not a string");
  return &it->get_ref<const std::string&>();
}

Result<std::string> base64_member(const Json& object, const char* name, const std::string& field) {
  const auto text = string_member(object, name, field);
  if (!text) return text.error();
  auto bytes = base64_decode(**text);
  if (!bytes) return make_error("envelope: " + field + " is not valid base64");
  return std::move(*bytes);
}

Result<Envelope> decode_object(const Json& root) {
  if (!root.is_object()) return make_error("envelope: not a JSON object");
  Envelope env;
  auto type = string_member(root, "payloadType", "payloadType");
  if (!type) return type.error();
  env.payload_type = **type;
  auto payload = base64_member(root, "payload", "payload");
  if (!payload) return payload.error();
  env.payload = std::move(*payload);

  const auto sigs = root.find("signatures");
  if (sigs == root.end()) return make_error("envelope: signatures is missing");
  if (!sigs->is_array()) return make_error("envelope: signatures is not an array");
  if (sigs->empty()) return make_error("envelope: signatures is empty");
  // Refused rather than trimmed: a relay re-serves the envelope byte for byte, so what it accepts
  // is what its children get, and more than one signature per trusted key has no use.
  if (sigs->size() > kMaxSignatures)
    return make_error("envelope: " + std::to_string(sigs->size()) + " signatures, more than " +
                      std::to_string(kMaxSignatures));
  for (std::size_t i = 0; i < sigs->size(); ++i) {
    const Json& entry = (*sigs)[i];
    const std::string field = "signatures[" + std::to_string(i) + "]";
    if (!entry.is_object()) return make_error("envelope: " + field + " is not an object");
    Signature sig;
    // keyid is optional in DSSE; some signers write null for "none".
    if (const auto keyid = entry.find("keyid"); keyid != entry.end() && !keyid->is_null()) {
      if (!keyid->is_string()) return make_error("envelope: " + field + ".keyid is not a string");
      const auto& text = keyid->get_ref<const std::string&>();
      if (text.size() > kMaxKeyidBytes)
        return make_error("envelope: " + field + ".keyid is longer than " +
                          std::to_string(kMaxKeyidBytes) + " bytes (\"" + printable(text) + "\")");
      sig.keyid = text;
    }
    auto bytes = base64_member(entry, "sig", field + ".sig");
    if (!bytes) return bytes.error();
    sig.sig = std::move(*bytes);
    env.signatures.push_back(std::move(sig));
  }
  return env;
}

}  // namespace

std::string pae(std::string_view payload_type, std::string_view payload) {
  std::string out = "DSSEv1 ";
  out += std::to_string(payload_type.size());
  out += ' ';
  out += payload_type;
  out += ' ';
  out += std::to_string(payload.size());
  out += ' ';
  out += payload;
  return out;
}

Result<Envelope> decode_envelope(std::string_view json) {
  if (json.size() > kMaxEnvelopeBytes) {
    return make_error("envelope: " + std::to_string(json.size()) +
                      " bytes, more than the limit of " + std::to_string(kMaxEnvelopeBytes));
  }
  try {
    return decode_object(parse_strict(json));
  } catch (const JsonRefused& e) {
    return make_error(std::string("envelope: ") + e.what());
  } catch (const Json::exception& e) {
    // Drop nlohmann's "[json.exception.parse_error.101] " tag; keep the position and reason.
    const std::string_view what = e.what();
    const auto tag_end = what.find("] ");
    const std::string_view detail =
        tag_end == std::string_view::npos ? what : what.substr(tag_end + 2);
    return make_error("envelope: not valid JSON: " + std::string(detail));
  }
}

std::string encode_envelope(const Envelope& envelope) {
  nlohmann::ordered_json sigs = nlohmann::ordered_json::array();
  for (const Signature& s : envelope.signatures) {
    sigs.push_back({{"keyid", s.keyid}, {"sig", base64_encode(s.sig)}});
  }
  const nlohmann::ordered_json root = {{"payloadType", envelope.payload_type},
                                       {"payload", base64_encode(envelope.payload)},
                                       {"signatures", std::move(sigs)}};
  // replace: invalid UTF-8 in a caller's payload type or keyid must not throw.
  return root.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

Envelope sign_envelope(std::string_view payload_type, std::string_view payload,
                       const std::vector<PrivateKey>& keys) {
  Envelope env{std::string(payload_type), std::string(payload), {}};
  const std::string message = pae(payload_type, payload);
  for (const PrivateKey& key : keys) {
    env.signatures.push_back({key.public_key().keyid(), key.sign(message)});
  }
  return env;
}

Result<std::string> verify_envelope(const Envelope& envelope, const std::vector<PublicKey>& trusted,
                                    unsigned threshold, std::string_view expected_type) {
  if (envelope.payload_type != expected_type) {
    return make_error("envelope: payloadType is \"" + printable(envelope.payload_type) +
                      "\", expected \"" + std::string(expected_type) + "\"");
  }
  // A key listed twice, or signing twice, is still one key: count distinct DER encodings.
  std::vector<const PublicKey*> keys;
  for (const PublicKey& key : trusted) {
    const auto same = [&key](const PublicKey* k) { return k->der() == key.der(); };
    if (!key.der().empty() && std::none_of(keys.begin(), keys.end(), same)) keys.push_back(&key);
  }
  const unsigned required = std::max(threshold, 1u);  // 0 would accept unsigned payloads
  const std::string message = pae(envelope.payload_type, envelope.payload);
  const auto& sigs = envelope.signatures;
  std::vector<bool> counted(keys.size(), false);  // this key signed
  std::vector<bool> hinted(keys.size(), false);   // this key was tried for the signature naming it
  std::vector<std::size_t> tried(sigs.size(), keys.size());  // the key tried for a signature's hint
  std::vector<bool> valid(sigs.size(), false);
  // Every check hashes the whole payload: a budget per trusted key bounds what a forged envelope
  // costs, however many signatures (and wrong keyids) it holds.
  std::size_t budget = kVerifyBudgetPerKey * keys.size();
  unsigned count = 0;
  // Ed25519 signatures are 64 bytes: another size never verifies, and costs no check.
  const auto checkable = [&](std::size_t s) { return sigs[s].sig.size() == kEd25519Bytes; };
  const auto check = [&](std::size_t s, std::size_t k) {
    --budget;
    if (!keys[k]->verify(message, sigs[s].sig)) return false;
    counted[k] = true;
    valid[s] = true;
    return ++count >= required;
  };
  // First the key each keyid names, once per key: the one check a well-formed envelope needs.
  for (std::size_t s = 0; s < sigs.size() && budget > 0; ++s) {
    if (!checkable(s)) continue;
    for (std::size_t k = 0; k < keys.size(); ++k) {
      if (counted[k] || hinted[k] || keys[k]->keyid() != sigs[s].keyid) continue;
      hinted[k] = true;
      tried[s] = k;
      if (check(s, k)) return envelope.payload;
      break;
    }
  }
  // The keyid is only a hint: then every other uncounted key, while the budget lasts.
  bool gave_up = false;
  for (std::size_t s = 0; s < sigs.size() && !gave_up; ++s) {
    if (valid[s] || !checkable(s)) continue;
    for (std::size_t k = 0; k < keys.size(); ++k) {
      if (counted[k] || tried[s] == k) continue;
      if (budget == 0) {
        gave_up = true;
        break;
      }
      if (check(s, k)) return envelope.payload;
      if (valid[s]) break;
    }
  }
  constexpr std::size_t kHintsShown = 8;
  std::string hints;
  for (std::size_t s = 0; s < sigs.size() && s < kHintsShown; ++s)
    hints += (hints.empty() ? "" : ", ") +
             (sigs[s].keyid.empty() ? "<none>" : printable(sigs[s].keyid, kMaxKeyidBytes));
  if (sigs.size() > kHintsShown)
    hints += " and " + std::to_string(sigs.size() - kHintsShown) + " more";
  std::string why = "snapshot signature: " + std::to_string(count) + " of " +
                    std::to_string(required) + " required trusted keys signed it (signatures " +
                    "from keyids: " + hints + ")";
  if (gave_up)
    why += "; gave up after " + std::to_string(kVerifyBudgetPerKey * keys.size()) +
           " signature checks";
  return make_error(std::move(why));
}

Result<std::string> verify_envelope(std::string_view envelope_bytes,
                                    const std::vector<PublicKey>& trusted, unsigned threshold,
                                    std::string_view expected_type) {
  auto envelope = decode_envelope(envelope_bytes);
  if (!envelope) return envelope.error();
  return verify_envelope(*envelope, trusted, threshold, expected_type);
}

}  // namespace tiersync::proto
