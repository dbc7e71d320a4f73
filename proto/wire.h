#pragma once
/// The wire paths below a node's tree (docs/protocol.md, "HTTP endpoints"): one home for the
/// server that answers them, the transports that fetch them and the store that publishes them.

#include <cstdint>
#include <string>
#include <string_view>

#include "proto/digest.h"

namespace tiersync::proto::wire {

/// The folder of the protocol's documents, version 1 (below the tree's `.tiersync/`).
inline constexpr std::string_view kDir = ".tiersync/v1";
/// The signed snapshot envelope; `?after=N&wait=S` makes it a long poll.
inline constexpr std::string_view kSnapshot = ".tiersync/v1/snapshot";
/// The folder of the manifests, each named by the lowercase hex SHA-256 of its bytes.
inline constexpr std::string_view kManifestsDir = ".tiersync/v1/manifests";
inline constexpr std::string_view kManifestsPrefix = ".tiersync/v1/manifests/";
/// The folder of the pins documents, each named by the decimal serial it goes with.
inline constexpr std::string_view kPinsDir = ".tiersync/v1/pins";
inline constexpr std::string_view kPinsPrefix = ".tiersync/v1/pins/";
/// The approvals a relay offers its children.
inline constexpr std::string_view kApprovals = ".tiersync/v1/approvals";
/// The node's status document.
inline constexpr std::string_view kStatus = ".tiersync/v1/status";
/// The Prometheus metrics (outside `.tiersync/`: scrapers expect a plain path).
inline constexpr std::string_view kMetrics = "metrics";

/// `.tiersync/v1/manifests/<hex>`: the manifest of digest `d`.
inline std::string manifest_path(const Digest& d) {
  return std::string(kManifestsPrefix) + to_hex(d);
}

/// `.tiersync/v1/pins/<serial>`: the pins that go with the envelope of serial `serial`.
inline std::string pins_path(std::uint64_t serial) {
  return std::string(kPinsPrefix) + std::to_string(serial);
}

}  // namespace tiersync::proto::wire
