#pragma once
/// The signed snapshot payload: every partition's manifest hash, a serial and an expiry.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proto/digest.h"
#include "proto/keys.h"
#include "proto/result.h"

namespace tiersync::proto {

struct PartitionRef {
  Digest manifest{};
  std::uint64_t files = 0;
  std::uint64_t bytes = 0;
  bool operator==(const PartitionRef&) const = default;
};

/// An over-threshold change of one partition that the origin's operator approved
/// (docs/protocol.md, "approved_deletions"): from P's manifest `from` to `to`, nothing else.
struct ApprovedChange {
  std::string from;         ///< hex SHA-256 of the manifest the change starts from, or "none"
  std::string to;           ///< hex SHA-256 of the approved manifest, or "removed"
  std::uint64_t serial = 0;  ///< the serial that published it
  std::int64_t expires = 0;  ///< Unix seconds: not honoured after
  bool operator==(const ApprovedChange&) const = default;
};

struct Snapshot {
  std::string origin;
  std::uint64_t serial = 0;
  std::int64_t created = 0;  ///< Unix seconds, UTC
  std::int64_t expires = 0;
  std::string layout;
  std::size_t depth = 0;  ///< segments of `layout` (derived, not encoded)
  std::map<std::string, PartitionRef> partitions;
  /// Partitions whose over-threshold change the origin's operator approved.
  std::map<std::string, ApprovedChange> approved_deletions;
};

/// RFC 3339 UTC timestamps ("2026-11-26T01:00:00Z").
std::string format_time(std::int64_t unix_seconds);
std::optional<std::int64_t> parse_time(std::string_view text);

std::string encode_snapshot(const Snapshot& snapshot);
/// Parses and validates a payload; call only on a payload whose signature verified.
Result<Snapshot> decode_snapshot(std::string_view payload);

/// The one call for snapshot envelope bytes from a parent (a fetch, a long poll): decodes the
/// envelope within its limits, verifies `threshold` trusted keys' signatures, and only then parses
/// the payload (proto::verify_envelope, then decode_snapshot).
Result<Snapshot> verify_snapshot(std::string_view envelope, const std::vector<PublicKey>& trusted,
                                 unsigned threshold);

}  // namespace tiersync::proto
