#pragma once
/// Approvals bound to the change an operator saw (docs/guard.md, "Approvals"): a partition, its
/// applied manifest (`from`), its candidate (`to`), and an expiry. One matching rule for tier0,
/// relays, upstream (signed) and parent (unsigned) approvals.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/sync/guard.h"
#include "proto/digest.h"
#include "proto/snapshot.h"

namespace tiersync::sync {

/// "none" for a partition not applied, "removed" for one gone from the candidate, the manifest's
/// hex SHA-256 otherwise (tier0's layout change: "layout:<hex>").
inline constexpr std::string_view kNoManifest = "none";
inline constexpr std::string_view kRemoved = "removed";
std::string change_end(const proto::Digest* manifest, std::string_view absent);

struct Approval {
  std::string partition;
  std::string from;
  std::string to;
  std::uint64_t deleted = 0;  ///< as the hold showed them when approved
  std::uint64_t files = 0;
  std::string rule;
  std::int64_t expires = 0;  ///< Unix seconds

  bool covers(std::string_view p, std::string_view f, std::string_view t, std::int64_t now) const {
    return partition == p && from == f && to == t && now < expires;
  }
};

/// The first of `approvals` that covers P's change from `from` to `to` at `now`, or null: the
/// one matching loop for local approvals (tier0 and relays) and a parent's.
const Approval* find_covering(const std::vector<Approval>& approvals, std::string_view partition,
                              std::string_view from, std::string_view to, std::int64_t now);

/// Whether a signed upstream approval covers P's change from `from` to `to` at `now`.
bool upstream_covers(const proto::Snapshot& candidate, std::string_view partition,
                     std::string_view from, std::string_view to, std::int64_t now);

/// The approvals document a relay serves to its children (unsigned), and its parser (entries
/// that do not parse are left out, never widened).
std::string encode_parent_approvals(const std::vector<Approval>& approvals);
std::vector<Approval> decode_parent_approvals(std::string_view bytes);

}  // namespace tiersync::sync
