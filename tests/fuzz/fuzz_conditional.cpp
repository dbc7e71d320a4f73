// Conditional requests: If-None-Match (a list of entity tags), If-Range (an entity tag or a
// date) and the HTTP dates of If-Modified-Since. The input's lines: a header value, an entity
// tag, a date. Properties: "*" and the tag itself match; a tag appended to a well-formed list
// matches; If-Range allows when absent or equal, never for a date; a parsed date prints and parses
// back the same.

#include "daemon/serve/http_codecs.h"
#include "tests/fuzz/fuzz.h"

using namespace tiersync;

namespace {

/// `"..."` without another quote inside: an entity tag as tiersync makes them.
bool plain_tag(std::string_view t) {
  return t.size() >= 2 && t.front() == '"' && t.back() == '"' &&
         t.substr(1, t.size() - 2).find('"') == std::string_view::npos;
}

/// A well-formed If-None-Match list: members `"..."` or `W/"..."`, blanks and commas between.
bool well_formed(std::string_view h) {
  std::size_t i = 0;
  bool member_ended = true;  // a member must be followed by a comma or the end
  while (i < h.size()) {
    if (h[i] == ' ' || h[i] == '\t') {
      ++i;
      continue;
    }
    if (h[i] == ',') {
      member_ended = true;
      ++i;
      continue;
    }
    if (!member_ended) return false;
    if (h.substr(i, 2) == "W/") i += 2;
    if (i >= h.size() || h[i] != '"') return false;
    const auto close = h.find('"', i + 1);
    if (close == std::string_view::npos) return false;
    i = close + 1;
    member_ended = false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto f = fuzz::fields(fuzz::bytes(data, size), '\n', 3);
  const std::string_view header = f[0], etag = f[1], date = f[2];
  using serve::etag_matches;
  using serve::if_range_allows;

  (void)etag_matches(header, etag);
  (void)if_range_allows(header, etag);
  FUZZ_CHECK(etag_matches("*", etag));
  FUZZ_CHECK(if_range_allows("", etag));
  if (plain_tag(etag)) {
    FUZZ_CHECK(etag_matches(etag, etag));
    FUZZ_CHECK(etag_matches("W/" + std::string(etag), etag));
    FUZZ_CHECK(if_range_allows(etag, etag));
    if (well_formed(header))
      FUZZ_CHECK(etag_matches(std::string(header) + ", " + std::string(etag), etag));
  }

  if (auto t = serve::parse_http_date(date)) {
    const std::string printed = serve::http_date(*t);
    FUZZ_CHECK(serve::parse_http_date(printed) == t);
  }
  if (auto t = serve::parse_http_date(header)) {
    FUZZ_CHECK(*t >= 0);
    FUZZ_CHECK(!if_range_allows(header, etag));  // a date is never a validator for a range
  }
  return 0;
}
