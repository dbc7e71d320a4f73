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

Result<Snapshot> decode_snapshot(std::string_view payload) {
  auto fail = [](const std::string& what) { return make_error("snapshot: " + what); };
  json doc = json::parse(payload.begin(), payload.end(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return fail("payload is not a JSON object");
  if (doc.value("type", json()) != "tiersync.snapshot")
    return fail("type is not \"tiersync.snapshot\"");
  if (doc.value("format", json()) != 1) return fail("format is not 1");
  Snapshot s;
  auto str = [&](const char* key, std::string& out) -> bool {
    auto it = doc.find(key);
    if (it == doc.end() || !it->is_string()) return false;
    out = it->get<std::string>();
    return true;
  };
  if (!str("origin", s.origin) || s.origin.empty()) return fail("origin is missing or empty");
  auto serial = doc.find("serial");
  if (serial == doc.end() || !serial->is_number_unsigned() || serial->get<std::uint64_t>() == 0)
    return fail("serial is missing or not a positive integer");
  s.serial = serial->get<std::uint64_t>();
  std::string created, expires;
  if (!str("created", created)) return fail("created is missing");
  if (!str("expires", expires)) return fail("expires is missing");
  auto c = parse_time(created), e = parse_time(expires);
  if (!c) return fail("created \"" + created + "\" is not an RFC 3339 UTC time");
  if (!e) return fail("expires \"" + expires + "\" is not an RFC 3339 UTC time");
  s.created = *c;
  s.expires = *e;
  if (!str("layout", s.layout)) return fail("layout is missing");
  auto depth = layout_depth(s.layout);
  if (!depth) return fail(depth.message());
  s.depth = *depth;

  auto parts = doc.find("partitions");
  if (parts == doc.end() || !parts->is_object()) return fail("partitions is missing");
  for (const auto& [name, ref] : parts->items()) {
    std::string where = "partition \"" + name + "\": ";
    if (auto err = partition_name_error(name, s.depth)) return fail(*err);
    if (!ref.is_object()) return fail(where + "not an object");
    auto m = ref.find("manifest");
    auto f = ref.find("files");
    auto b = ref.find("bytes");
    if (m == ref.end() || !m->is_string()) return fail(where + "manifest is missing");
    auto digest = digest_from_hex(m->get_ref<const std::string&>());
    if (!digest) return fail(where + "manifest is not a SHA-256 hex digest");
    if (f == ref.end() || !f->is_number_unsigned()) return fail(where + "files is missing");
    if (b == ref.end() || !b->is_number_unsigned()) return fail(where + "bytes is missing");
    s.partitions[name] = {*digest, f->get<std::uint64_t>(), b->get<std::uint64_t>()};
  }
  if (auto ad = doc.find("approved_deletions"); ad != doc.end()) {
    if (!ad->is_object()) return fail("approved_deletions is not an object");
    for (const auto& [name, a] : ad->items()) {
      if (auto err = partition_name_error(name, s.depth))
        return fail("approved_deletions: " + *err);
      const std::string where = "approved_deletions[\"" + name + "\"]";
      // The serial-only form of format 1's first release covered a range of serials, not a
      // change: refused, never read as a wider approval.
      if (!a.is_object()) return fail(where + " is not an object {from, to, serial, expires}");
      ApprovedChange c;
      auto end = [&](const char* key, std::string& out, std::string_view absent) {
        auto it = a.find(key);
        if (it == a.end() || !it->is_string()) return false;
        out = it->get<std::string>();
        return out == absent || digest_from_hex(out).has_value();
      };
      if (!end("from", c.from, "none"))
        return fail(where + ".from is not a manifest's SHA-256 hex digest or \"none\"");
      if (!end("to", c.to, "removed"))
        return fail(where + ".to is not a manifest's SHA-256 hex digest or \"removed\"");
      auto serial = a.find("serial");
      if (serial == a.end() || !serial->is_number_unsigned())
        return fail(where + ".serial is not a serial");
      c.serial = serial->get<std::uint64_t>();
      auto expires = a.find("expires");
      std::optional<std::int64_t> when;
      if (expires != a.end() && expires->is_string())
        when = parse_time(expires->get_ref<const std::string&>());
      if (!when) return fail(where + ".expires is not an RFC 3339 UTC time");
      c.expires = *when;
      s.approved_deletions[name] = std::move(c);
    }
  }
  return s;
}

Result<Snapshot> verify_snapshot(std::string_view envelope, const std::vector<PublicKey>& trusted,
                                 unsigned threshold) {
  auto payload = verify_envelope(envelope, trusted, threshold, kSnapshotPayloadType);
  if (!payload) return payload.error();
  return decode_snapshot(*payload);
}

}  // namespace tiersync::proto
