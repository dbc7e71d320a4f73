#include "proto/snapshot.h"

#include <ctime>
#include <nlohmann/json.hpp>

#include "proto/dsse.h"
#include "proto/path.h"

namespace tiersync::proto {

using nlohmann::json;

std::string format_time(std::int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::optional<std::int64_t> parse_time(std::string_view s) {
  // Exactly YYYY-MM-DDTHH:MM:SSZ.
  if (s.size() != 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
      s[16] != ':' || s[19] != 'Z')
    return std::nullopt;
  auto num = [&](std::size_t pos, std::size_t len) -> int {
    int v = 0;
    for (std::size_t i = pos; i < pos + len; ++i) {
      if (s[i] < '0' || s[i] > '9') return -1;
      v = v * 10 + (s[i] - '0');
    }
    return v;
  };
  std::tm tm{};
  int year = num(0, 4), mon = num(5, 2), day = num(8, 2), h = num(11, 2), m = num(14, 2),
      sec = num(17, 2);
  if (year < 1970 || mon < 1 || mon > 12 || day < 1 || day > 31 || h < 0 || h > 23 || m < 0 ||
      m > 59 || sec < 0 || sec > 60)
    return std::nullopt;
  tm.tm_year = year - 1900;
  tm.tm_mon = mon - 1;
  tm.tm_mday = day;
  tm.tm_hour = h;
  tm.tm_min = m;
  tm.tm_sec = sec;
  std::int64_t t = static_cast<std::int64_t>(timegm(&tm));
  // timegm normalises 2026-02-30 into March: a date that does not exist is refused.
  std::tm back{};
  std::time_t tt = static_cast<std::time_t>(t);
  gmtime_r(&tt, &back);
  if (back.tm_mday != day || back.tm_mon != mon - 1 || back.tm_year != year - 1900)
    return std::nullopt;
  return t;
}

std::string encode_snapshot(const Snapshot& s) {
  json parts = json::object();
  for (const auto& [name, ref] : s.partitions)
    parts[name] = {{"manifest", to_hex(ref.manifest)}, {"files", ref.files}, {"bytes", ref.bytes}};
  json approved = json::object();
  for (const auto& [name, a] : s.approved_deletions)
    approved[name] = {
        {"from", a.from}, {"to", a.to}, {"serial", a.serial}, {"expires", format_time(a.expires)}};
  json doc = {{"type", "tiersync.snapshot"},
              {"format", 1},
              {"origin", s.origin},
              {"serial", s.serial},
              {"created", format_time(s.created)},
              {"expires", format_time(s.expires)},
              {"layout", s.layout},
              {"partitions", parts},
              {"approved_deletions", approved}};
  return doc.dump() + "\n";
}

namespace {

Error snapshot_error(const std::string& what) {
  return make_error("snapshot: " + what);
}

// The string at `key`, if there is one.
std::optional<std::string> string_at(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

// The header: type, format, origin, serial, validity and layout (docs/protocol.md).
Status decode_header(const json& doc, Snapshot& s) {
  if (doc.value("type", json()) != "tiersync.snapshot")
    return snapshot_error("type is not \"tiersync.snapshot\"");
  if (doc.value("format", json()) != 1) return snapshot_error("format is not 1");
  auto origin = string_at(doc, "origin");
  if (!origin || origin->empty()) return snapshot_error("origin is missing or empty");
  s.origin = std::move(*origin);
  auto serial = doc.find("serial");
  if (serial == doc.end() || !serial->is_number_unsigned() || serial->get<std::uint64_t>() == 0)
    return snapshot_error("serial is missing or not a positive integer");
  s.serial = serial->get<std::uint64_t>();
  auto created = string_at(doc, "created");
  if (!created) return snapshot_error("created is missing");
  auto expires = string_at(doc, "expires");
  if (!expires) return snapshot_error("expires is missing");
  auto c = parse_time(*created), e = parse_time(*expires);
  if (!c) return snapshot_error("created \"" + *created + "\" is not an RFC 3339 UTC time");
  if (!e) return snapshot_error("expires \"" + *expires + "\" is not an RFC 3339 UTC time");
  s.created = *c;
  s.expires = *e;
  auto layout = string_at(doc, "layout");
  if (!layout) return snapshot_error("layout is missing");
  s.layout = std::move(*layout);
  auto depth = layout_depth(s.layout);
  if (!depth) return snapshot_error(depth.message());
  s.depth = *depth;
  return {};
}

// `partitions`: each partition's manifest hash, files and bytes.
Status decode_partitions(const json& doc, Snapshot& s) {
  auto parts = doc.find("partitions");
  if (parts == doc.end() || !parts->is_object()) return snapshot_error("partitions is missing");
  for (const auto& [name, ref] : parts->items()) {
    std::string where = "partition \"" + name + "\": ";
    if (auto err = partition_name_error(name, s.depth)) return snapshot_error(*err);
    if (!ref.is_object()) return snapshot_error(where + "not an object");
    auto m = ref.find("manifest");
    auto f = ref.find("files");
    auto b = ref.find("bytes");
    if (m == ref.end() || !m->is_string()) return snapshot_error(where + "manifest is missing");
    auto digest = digest_from_hex(m->get_ref<const std::string&>());
    if (!digest) return snapshot_error(where + "manifest is not a SHA-256 hex digest");
    if (f == ref.end() || !f->is_number_unsigned())
      return snapshot_error(where + "files is missing");
    if (b == ref.end() || !b->is_number_unsigned())
      return snapshot_error(where + "bytes is missing");
    s.partitions[name] = {*digest, f->get<std::uint64_t>(), b->get<std::uint64_t>()};
  }
  return {};
}

// One change of `approved_deletions`: {from, to, serial, expires}; `where` names it in errors.
Result<ApprovedChange> decode_approved_change(const json& a, const std::string& where) {
  if (!a.is_object())
    return snapshot_error(where + " is not an object {from, to, serial, expires}");
  ApprovedChange c;
  // A manifest's hash, or the word that stands for none.
  auto end = [&a](const char* key, std::string& out, std::string_view absent) {
    auto value = string_at(a, key);
    if (!value) return false;
    out = std::move(*value);
    return out == absent || digest_from_hex(out).has_value();
  };
  if (!end("from", c.from, "none"))
    return snapshot_error(where + ".from is not a manifest's SHA-256 hex digest or \"none\"");
  if (!end("to", c.to, "removed"))
    return snapshot_error(where + ".to is not a manifest's SHA-256 hex digest or \"removed\"");
  auto serial = a.find("serial");
  if (serial == a.end() || !serial->is_number_unsigned())
    return snapshot_error(where + ".serial is not a serial");
  c.serial = serial->get<std::uint64_t>();
  auto expires = string_at(a, "expires");
  std::optional<std::int64_t> when = expires ? parse_time(*expires) : std::nullopt;
  if (!when) return snapshot_error(where + ".expires is not an RFC 3339 UTC time");
  c.expires = *when;
  return c;
}

// `approved_deletions` (optional): the changes tier0's operator approved, per partition.
Status decode_approved_deletions(const json& doc, Snapshot& s) {
  auto ad = doc.find("approved_deletions");
  if (ad == doc.end()) return {};
  if (!ad->is_object()) return snapshot_error("approved_deletions is not an object");
  for (const auto& [name, a] : ad->items()) {
    if (auto err = partition_name_error(name, s.depth))
      return snapshot_error("approved_deletions: " + *err);
    // The serial-only form of format 1's first release covered a range of serials, not a
    // change: read (an older origin, or a node's own applied snapshot from before the
    // upgrade, still carries it) but never honoured (docs/protocol.md, "Upgrading").
    if (a.is_number_unsigned()) continue;
    auto change = decode_approved_change(a, "approved_deletions[\"" + name + "\"]");
    if (!change) return change.error();
    s.approved_deletions[name] = std::move(*change);
  }
  return {};
}

}  // namespace

Result<Snapshot> decode_snapshot(std::string_view payload) {
  json doc = json::parse(payload.begin(), payload.end(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return snapshot_error("payload is not a JSON object");
  Snapshot s;
  for (auto step : {decode_header, decode_partitions, decode_approved_deletions})
    if (auto st = step(doc, s); !st) return st.error();
  return s;
}

Result<Snapshot> verify_snapshot(std::string_view envelope, const std::vector<PublicKey>& trusted,
                                 unsigned threshold) {
  auto payload = verify_envelope(envelope, trusted, threshold, kSnapshotPayloadType);
  if (!payload) return payload.error();
  return decode_snapshot(*payload);
}

}  // namespace tiersync::proto
