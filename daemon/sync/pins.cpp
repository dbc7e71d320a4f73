#include "daemon/sync/pins.h"

#include <cassert>
#include <charconv>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "proto/digest.h"
#include "proto/dsse.h"
#include "proto/path.h"
#include "proto/printable.h"
#include "proto/strict_json.h"

namespace tiersync::sync {

namespace {

using Json = nlohmann::json;

constexpr std::string_view kType = "tiersync.pins";
// {"pins": {name: {field: value}}} nests three levels; a little room for unknown fields.
constexpr int kMaxJsonDepth = 6;
// Five values per pin; as many pins as a snapshot may name partitions, within reason.
constexpr std::size_t kMaxJsonValues = 1u << 20;

// Strict like the envelope's parser (proto/dsse.cpp): bounded depth and values, no duplicate
// keys, which two parsers could resolve differently.
Json parse_strict(std::string_view text) {
  return proto::parse_strict_json(text, {kMaxJsonDepth, kMaxJsonValues, 64});
}

std::string in_quotes(std::string_view name) {
  return "\"" + proto::printable(name, 256) + "\"";
}

std::optional<std::uint64_t> unsigned_member(const Json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_number_unsigned()) return std::nullopt;
  return it->get<std::uint64_t>();
}

std::optional<std::uint64_t> decimal(std::string_view s) {
  if (s.empty() || s.size() > 19 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

std::string encode_pins(const Pins& p) {
  Json pins = Json::object();
  for (const auto& [name, pin] : p.pins)
    pins[name] = {{"serial", pin.serial},
                  {"manifest", proto::to_hex(pin.ref.manifest)},
                  {"files", pin.ref.files},
                  {"bytes", pin.ref.bytes}};
  Json proofs = Json::object();
  for (const auto& [serial, envelope] : p.proofs)
    proofs[std::to_string(serial)] = proto::base64_encode(envelope);
  Json doc = {{"type", kType},
              {"format", 1},
              {"serial", p.serial},
              {"pins", std::move(pins)},
              {"envelopes", std::move(proofs)}};
  return doc.dump() + "\n";  // nlohmann orders object keys: canonical
}

Result<Pins> decode_pins(std::string_view bytes) try {
  if (bytes.size() > kMaxPinsBytes)
    return make_error("pins: " + std::to_string(bytes.size()) + " bytes, over the limit of " +
                      std::to_string(kMaxPinsBytes));
  Json doc = parse_strict(bytes);
  if (!doc.is_object()) return make_error("pins: not a JSON object");
  if (doc.value("type", Json()) != kType) return make_error("pins: type is not tiersync.pins");
  if (doc.value("format", Json()) != 1) return make_error("pins: format is not 1");
  Pins out;
  auto serial = unsigned_member(doc, "serial");
  if (!serial || *serial == 0) return make_error("pins: serial is not a positive integer");
  out.serial = *serial;

  auto pins = doc.find("pins");
  if (pins == doc.end() || !pins->is_object()) return make_error("pins: pins is not an object");
  auto proofs = doc.find("envelopes");
  if (proofs == doc.end() || !proofs->is_object())
    return make_error("pins: envelopes is not an object");
  if (proofs->size() > kMaxPinProofs)
    return make_error("pins: " + std::to_string(proofs->size()) + " envelopes, over the limit of " +
                      std::to_string(kMaxPinProofs));

  for (const auto& [name, entry] : pins->items()) {
    const std::string what = "pins: partition " + in_quotes(name) + ": ";
    if (name != proto::kRootPartition && proto::path_error(name))
      return make_error(what + "not a partition name");
    if (!entry.is_object()) return make_error(what + "not an object");
    auto pin_serial = unsigned_member(entry, "serial");
    auto files = unsigned_member(entry, "files");
    auto size = unsigned_member(entry, "bytes");
    auto hex = entry.find("manifest");
    auto digest = hex != entry.end() && hex->is_string()
                      ? proto::digest_from_hex(hex->get<std::string>())
                      : std::nullopt;
    if (!pin_serial || *pin_serial == 0)
      return make_error(what + "serial is not a positive integer");
    if (!digest) return make_error(what + "manifest is not 64 lowercase hex digits");
    if (!files || !size) return make_error(what + "files or bytes is not an unsigned integer");
    out.pins[name] = Pin{*pin_serial, {*digest, *files, *size}};
  }
  for (const auto& [name, pin] : out.pins) {
    if (out.proofs.count(pin.serial)) continue;
    auto proof = proofs->find(std::to_string(pin.serial));
    if (proof == proofs->end())
      return make_error("pins: partition " + in_quotes(name) + ": no envelope of serial " +
                        std::to_string(pin.serial) + " proves it");
    auto envelope =
        proof->is_string() ? proto::base64_decode(proof->get<std::string>()) : std::nullopt;
    if (!envelope)
      return make_error("pins: partition " + in_quotes(name) + ": the envelope of serial " +
                        std::to_string(pin.serial) + " is not base64");
    if (envelope->size() > proto::kMaxEnvelopeBytes)
      return make_error("pins: the envelope of serial " + std::to_string(pin.serial) +
                        " is over the envelope limit");
    out.proofs[pin.serial] = std::move(*envelope);
  }
  for (const auto& [key, value] : proofs->items())
    if (!decimal(key))
      return make_error("pins: envelopes: key " + in_quotes(key) + " is not a serial");
  return out;
} catch (const proto::JsonRefused& e) {
  return make_error(std::string("pins: ") + e.what());
} catch (const Json::exception& e) {
  return make_error(std::string("pins: not valid JSON (") + e.what() + ")");
}

proto::Snapshot effective_snapshot(proto::Snapshot s, const Pins& pins) {
  for (const auto& [name, pin] : pins.pins) s.partitions[name] = pin.ref;
  return s;
}

Result<PinProofs> verify_pins(const Pins& pins, const proto::Snapshot& snapshot,
                              const std::vector<proto::PublicKey>& trusted, unsigned threshold) {
  if (pins.serial != snapshot.serial)
    return make_error("pins: for serial " + std::to_string(pins.serial) + ", the snapshot is " +
                      std::to_string(snapshot.serial));
  PinProofs proofs;
  for (const auto& [name, pin] : pins.pins) {
    const std::string what = "pins: partition " + in_quotes(name) + " pinned at serial " +
                             std::to_string(pin.serial) + ": ";
    if (pin.serial > snapshot.serial)
      return make_error(what + "newer than the snapshot's serial " +
                        std::to_string(snapshot.serial));
    auto known = proofs.find(pin.serial);
    if (known == proofs.end()) {
      // Verified before its payload is parsed, within the limits of an envelope.
      auto proof = proto::verify_snapshot(pins.proofs.at(pin.serial), trusted, threshold);
      if (!proof) return make_error(what + "its envelope is refused: " + proof.message());
      if (proof->serial != pin.serial)
        return make_error(what + "its envelope has serial " + std::to_string(proof->serial));
      if (proof->origin != snapshot.origin)
        return make_error(what + "its envelope is of origin " + in_quotes(proof->origin) +
                          ", the snapshot's is " + in_quotes(snapshot.origin));
      if (proof->layout != snapshot.layout)
        return make_error(what + "its envelope has layout " + in_quotes(proof->layout) +
                          ", the snapshot's is " + in_quotes(snapshot.layout));
      known = proofs.emplace(pin.serial, std::move(*proof)).first;
    }
    auto named = known->second.partitions.find(name);
    if (named == known->second.partitions.end())
      return make_error(what + "that snapshot has no such partition");
    if (!(named->second == pin.ref))
      return make_error(
          what + "that snapshot names manifest " + proto::to_hex(named->second.manifest) + " (" +
          std::to_string(named->second.files) + " files), not " + proto::to_hex(pin.ref.manifest) +
          " (" + std::to_string(pin.ref.files) + " files)");
  }
  return proofs;
}

Result<proto::Snapshot> decode_proof(std::string_view envelope) {
  auto env = proto::decode_envelope(envelope);
  if (!env) return env.error();
  return proto::decode_snapshot(env->payload);
}

Pins pins_between(const proto::Snapshot& signed_snapshot, const proto::Snapshot& effective,
                  const std::map<std::string, PinSource>& proof_of) {
  Pins out;
  out.serial = signed_snapshot.serial;
  for (const auto& [name, ref] : effective.partitions) {
    auto it = signed_snapshot.partitions.find(name);
    if (it != signed_snapshot.partitions.end() && it->second == ref) continue;
    const PinSource& source = proof_of.at(name);
    assert(source.proof);
    out.pins[name] = Pin{source.serial, ref};
    out.proofs[source.serial] = *source.proof;
  }
  // A partition of the envelope that the node does not serve cannot be expressed by a pin; the
  // relay never builds one (a new partition is never held).
  for (const auto& [name, ref] : signed_snapshot.partitions)
    assert(effective.partitions.count(name));
  return out;
}

}  // namespace tiersync::sync
