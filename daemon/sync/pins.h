#pragma once
/// Pins (docs/protocol.md, "Pins"): the partitions a relay serves at an older signed manifest
/// than its newest envelope names, each proved by the signed envelope that named it. A node's
/// effective snapshot is its envelope's payload with the pinned references substituted.

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "proto/keys.h"
#include "proto/result.h"
#include "proto/snapshot.h"

namespace tiersync::sync {

/// A pins document larger than this is refused before parsing.
inline constexpr std::size_t kMaxPinsBytes = 64u << 20;
/// Distinct proving envelopes one document may carry (each costs signature checks).
inline constexpr std::size_t kMaxPinProofs = 64;

/// One partition served at the reference a signed snapshot of serial `serial` gave it.
struct Pin {
  std::uint64_t serial = 0;
  proto::PartitionRef ref;
  bool operator==(const Pin&) const = default;
};

/// The pins that go with the envelope of serial `serial` (`.tiersync/v1/pins/<serial>`).
struct Pins {
  std::uint64_t serial = 0;
  std::map<std::string, Pin> pins;
  /// The proving envelopes, byte for byte as signed, by serial: one for each pin's serial.
  std::map<std::uint64_t, std::string> proofs;
  bool empty() const { return pins.empty(); }
  bool operator==(const Pins&) const = default;
};

/// Canonical JSON (keys sorted, proofs in standard base64, one final newline).
std::string encode_pins(const Pins& pins);

/// Parses a pins document within its limits (size, JSON depth, no duplicate keys, at most
/// kMaxPinProofs proofs), each pin with its proof. Proofs no pin uses are dropped. Nothing is
/// verified here: see verify_pins. Errors name the partition at fault.
Result<Pins> decode_pins(std::string_view bytes);

/// `signed_snapshot` with each pinned partition's reference substituted (or added: a partition
/// the envelope no longer names but the node still serves).
proto::Snapshot effective_snapshot(proto::Snapshot signed_snapshot, const Pins& pins);

/// What a parent's pins proved: each proof's decoded snapshot, by serial.
using PinProofs = std::map<std::uint64_t, proto::Snapshot>;

/// Checks a parent's pins against the verified snapshot `snapshot` they go with: the same
/// serial; each proof verified with the trusted keys and threshold, of the same origin and
/// layout, a serial no higher than the snapshot's, naming exactly the pinned reference for the
/// partition. The first failure refuses the whole document, naming the partition.
Result<PinProofs> verify_pins(const Pins& pins, const proto::Snapshot& snapshot,
                              const std::vector<proto::PublicKey>& trusted, unsigned threshold);

/// The decoded payload of a stored proof (verified when it was accepted), for its expiry.
Result<proto::Snapshot> decode_proof(std::string_view envelope);

/// The pins of `effective` against the envelope's `signed_snapshot`: every partition whose
/// reference differs from (or is absent in) the signed one, with the serial and proof `proof_of`
/// gives for it. Empty when the two agree.
struct PinSource {
  std::uint64_t serial = 0;
  const std::string* proof = nullptr;  ///< the envelope bytes that name the reference
};
Pins pins_between(const proto::Snapshot& signed_snapshot, const proto::Snapshot& effective,
                  const std::map<std::string, PinSource>& proof_of);

}  // namespace tiersync::sync
