#include "daemon/sync/approvals.h"

#include <nlohmann/json.hpp>

#include "proto/path.h"

namespace tiersync::sync {

using nlohmann::json;

namespace {

// A parent's approvals document is small: a few entries per held partition.
constexpr std::size_t kMaxParentApprovals = 4096;

bool valid_end(const std::string& end, std::string_view absent) {
  return end == absent || proto::digest_from_hex(end).has_value();
}

}  // namespace

std::string change_end(const proto::Digest* manifest, std::string_view absent) {
  return manifest ? proto::to_hex(*manifest) : std::string(absent);
}

const Approval* find_covering(const std::vector<Approval>& approvals, std::string_view partition,
                              std::string_view from, std::string_view to, std::int64_t now) {
  for (const auto& a : approvals)
    if (a.covers(partition, from, to, now)) return &a;
  return nullptr;
}

bool upstream_covers(const proto::Snapshot& candidate, std::string_view partition,
                     std::string_view from, std::string_view to, std::int64_t now) {
  auto it = candidate.approved_deletions.find(std::string(partition));
  if (it == candidate.approved_deletions.end()) return false;
  const proto::ApprovedChange& a = it->second;
  return a.from == from && a.to == to && now < a.expires && a.serial <= candidate.serial;
}

std::string encode_parent_approvals(const std::vector<Approval>& approvals) {
  json list = json::array();
  for (const auto& a : approvals)
    list.push_back({{"partition", a.partition},
                    {"from", a.from},
                    {"to", a.to},
                    {"expires", proto::format_time(a.expires)}});
  return json({{"type", "tiersync.approvals"}, {"format", 1}, {"approvals", std::move(list)}})
             .dump() +
         "\n";
}

std::vector<Approval> decode_parent_approvals(std::string_view bytes) {
  std::vector<Approval> out;
  json j = json::parse(bytes, nullptr, false);
  if (!j.is_object()) return out;
  // Another document (a pin document, an error page in JSON) or a later format is not read as
  // approvals: nothing it says can be relied on.
  if (j.value("type", json()) != "tiersync.approvals" || j.value("format", json()) != 1) return out;
  auto list = j.find("approvals");
  if (list == j.end() || !list->is_array()) return out;
  for (const auto& e : *list) {
    if (out.size() >= kMaxParentApprovals) break;
    if (!e.is_object()) continue;
    auto str = [&](const char* key) -> std::optional<std::string> {
      auto it = e.find(key);
      if (it == e.end() || !it->is_string()) return std::nullopt;
      return it->get<std::string>();
    };
    auto partition = str("partition"), from = str("from"), to = str("to"), exp = str("expires");
    if (!partition || !from || !to || !exp) continue;
    auto expires = proto::parse_time(*exp);
    if (!expires || !valid_end(*from, kNoManifest) || !valid_end(*to, kRemoved)) continue;
    if (*partition != proto::kRootPartition && proto::path_error(*partition)) continue;
    out.push_back({*partition, *from, *to, 0, 0, "", *expires});
  }
  return out;
}

}  // namespace tiersync::sync
