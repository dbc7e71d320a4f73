// The HTTP codecs of the server (docs/protocol.md, "HTTP endpoints"): dates, byte ranges and
// entity tags, each a pure function of the header's text.

#include "daemon/serve/http_codecs.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstring>

namespace tiersync::serve {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::optional<std::uint64_t> parse_uint(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

/// If-None-Match: "*" or a list of entity tags, compared weakly (RFC 9110 13.1.2: W/ ignored).
/// Entity tags may contain commas, so the list is scanned quote by quote.
bool etag_matches(std::string_view header, std::string_view etag) {
  if (trim(header) == "*") return true;
  std::size_t i = 0;
  while (i < header.size()) {  // bounded: i grows every turn
    char c = header[i];
    if (c == ' ' || c == '\t' || c == ',') {
      ++i;
      continue;
    }
    if (header.substr(i, 2) == "W/") i += 2;
    if (i < header.size() && header[i] == '"') {
      std::size_t close = header.find('"', i + 1);
      if (close == std::string_view::npos) return false;
      if (header.substr(i, close - i + 1) == etag) return true;
      i = close + 1;
    } else {
      std::size_t comma = header.find(',', i);  // malformed member: skip it
      if (comma == std::string_view::npos) return false;
      i = comma + 1;
    }
  }
  return false;
}

/// If-Range (RFC 9110 13.1.5): the Range applies only when the validator still matches: an entity
/// tag compared strongly. A date never does: with reproducible builds a changed file can keep its
/// mtime (and its size), so Last-Modified is a weak validator here, and a resume by date could
/// join old and new bytes. Such a client gets the whole file.
bool if_range_allows(std::string_view if_range, std::string_view etag) {
  if_range = trim(if_range);
  if (if_range.empty()) return true;
  return !etag.empty() && if_range.front() == '"' && if_range == etag;
}

std::string http_date(std::time_t t) {
  static constexpr char kDays[] = "SunMonTueWedThuFriSat";
  static constexpr char kMonths[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  struct tm tm {};
  ::gmtime_r(&t, &tm);
  // Written by hand: this runs twice per response (Date, Last-Modified).
  std::string out = "Sun, 00 Jan 0000 00:00:00 GMT";
  auto two = [&](std::size_t at, int v) {
    out[at] = static_cast<char>('0' + v / 10 % 10);
    out[at + 1] = static_cast<char>('0' + v % 10);
  };
  out.replace(0, 3, kDays + 3 * (tm.tm_wday % 7), 3);
  two(5, tm.tm_mday);
  out.replace(8, 3, kMonths + 3 * (tm.tm_mon % 12), 3);
  const int year = std::clamp(tm.tm_year + 1900, 0, 9999);
  two(12, year / 100);
  two(14, year % 100);
  two(17, tm.tm_hour);
  two(20, tm.tm_min);
  two(23, tm.tm_sec);
  return out;
}

std::optional<std::time_t> parse_http_date(std::string_view text) {
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  const std::string s(trim(text.substr(0, 64)));
  char day[16] = {};
  char mon[4] = {};
  int d = 0, y = 0, hh = 0, mm = 0, ss = 0, used = 0;
  const int len = static_cast<int>(s.size());
  // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
  bool ok = std::sscanf(s.c_str(), "%3[A-Za-z], %2d %3[A-Za-z] %4d %2d:%2d:%2d GMT%n", day, &d, mon,
                        &y, &hh, &mm, &ss, &used) == 7 &&
            used == len;
  // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT" (two-digit years: RFC 9110 5.6.7, 50 years rule
  // simplified to 1970-2069)
  if (!ok) {
    used = 0;
    ok = std::sscanf(s.c_str(), "%15[A-Za-z], %2d-%3[A-Za-z]-%2d %2d:%2d:%2d GMT%n", day, &d, mon,
                     &y, &hh, &mm, &ss, &used) == 7 &&
         used == len;
    if (ok) y += y < 70 ? 2000 : 1900;
  }
  // asctime: "Sun Nov  6 08:49:37 1994"
  if (!ok) {
    used = 0;
    ok = std::sscanf(s.c_str(), "%3[A-Za-z] %3[A-Za-z] %2d %2d:%2d:%2d %4d%n", day, mon, &d, &hh,
                     &mm, &ss, &y, &used) == 7 &&
         used == len;
  }
  if (!ok) return std::nullopt;
  int month = -1;
  for (int i = 0; i < 12; ++i)
    if (std::strcmp(mon, kMonths[i]) == 0) month = i;
  if (month < 0 || d < 1 || d > 31 || y < 1970 || hh > 23 || mm > 59 || ss > 60)
    return std::nullopt;
  struct tm tm {};
  tm.tm_year = y - 1900;
  tm.tm_mon = month;
  tm.tm_mday = d;
  tm.tm_hour = hh;
  tm.tm_min = mm;
  tm.tm_sec = ss;
  return ::timegm(&tm);
}

ByteRange parse_range(std::string_view header, std::uint64_t size) {
  header = trim(header);
  // RFC 9110 14.1.2: "bytes=" then a range set; the unit name is case-insensitive.
  constexpr std::string_view kUnit = "bytes=";
  if (header.size() < kUnit.size()) return {};
  for (std::size_t i = 0; i < kUnit.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(header[i])) != kUnit[i]) return {};
  std::string_view set = trim(header.substr(kUnit.size()));
  if (set.find(',') != std::string_view::npos) return {};  // several ranges: the whole file
  std::size_t dash = set.find('-');
  if (dash == std::string_view::npos) return {};
  std::string_view a = trim(set.substr(0, dash));
  std::string_view b = trim(set.substr(dash + 1));
  if (a.empty()) {  // "-n": the last n bytes
    auto n = parse_uint(b);
    if (!n) return {};
    if (*n == 0 || size == 0) return {ByteRange::kUnsatisfiable};
    return {ByteRange::kSingle, size - std::min(*n, size), size - 1};
  }
  auto first = parse_uint(a);
  if (!first) return {};
  std::optional<std::uint64_t> last;
  if (!b.empty()) {
    last = parse_uint(b);
    if (!last || *last < *first) return {};  // invalid: ignored (RFC 9110 14.2)
  }
  if (*first >= size) return {ByteRange::kUnsatisfiable};
  return {ByteRange::kSingle, *first, std::min(last.value_or(size - 1), size - 1)};
}

}  // namespace tiersync::serve
