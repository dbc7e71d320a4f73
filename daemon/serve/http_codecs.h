#pragma once
/// The HTTP codecs of the server: dates, byte ranges and entity tags (RFC 9110), pure functions
/// of a header's text, tested directly and fuzzed (tests/fuzz/fuzz_range, fuzz_conditional).

#include <cstdint>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>

namespace tiersync::serve {

/// `s` without leading and trailing spaces and tabs (optional white space, RFC 9110 5.6.3).
std::string_view trim(std::string_view s);

/// A decimal without sign or spaces that fits 64 bits.
std::optional<std::uint64_t> parse_uint(std::string_view s);

/// IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), independent of the locale.
std::string http_date(std::time_t t);

/// Parses the three HTTP-date formats of RFC 9110 (IMF-fixdate, RFC 850, asctime).
std::optional<std::time_t> parse_http_date(std::string_view text);

/// A parsed `Range` header against a representation of `size` bytes.
struct ByteRange {
  enum Kind { kIgnore, kSingle, kUnsatisfiable } kind = kIgnore;
  std::uint64_t first = 0;
  std::uint64_t last = 0;  ///< inclusive
};
/// kIgnore for an absent, malformed or multi-range header (answered 200 with the whole body).
ByteRange parse_range(std::string_view header, std::uint64_t size);

/// If-None-Match: true when `header` ("*" or a list of entity tags, compared weakly) names `etag`.
bool etag_matches(std::string_view header, std::string_view etag);
/// If-Range: true when the Range may apply (absent, or the same strong `etag`; never a date).
bool if_range_allows(std::string_view if_range, std::string_view etag);

}  // namespace tiersync::serve
