// The server's HTTP codecs without a request: byte ranges, HTTP dates, entity tags.

#include "daemon/serve/http_codecs.h"

#include <gtest/gtest.h>

namespace tiersync::serve {
namespace {

TEST(HttpCodecs, ParsesRanges) {
  auto r = parse_range("bytes=10-19", 100);
  EXPECT_EQ(r.kind, ByteRange::kSingle);
  EXPECT_EQ(r.first, 10u);
  EXPECT_EQ(r.last, 19u);
  r = parse_range("bytes=90-", 100);
  EXPECT_EQ(r.kind, ByteRange::kSingle);
  EXPECT_EQ(r.first, 90u);
  EXPECT_EQ(r.last, 99u);
  r = parse_range("bytes=-5", 100);
  EXPECT_EQ(r.first, 95u);
  EXPECT_EQ(r.last, 99u);
  r = parse_range("bytes=-500", 100);
  EXPECT_EQ(r.first, 0u);
  EXPECT_EQ(r.last, 99u);
  r = parse_range("BYTES=0-1000", 100);
  EXPECT_EQ(r.kind, ByteRange::kSingle);
  EXPECT_EQ(r.last, 99u);
  EXPECT_EQ(parse_range("bytes=100-", 100).kind, ByteRange::kUnsatisfiable);
  EXPECT_EQ(parse_range("bytes=-0", 100).kind, ByteRange::kUnsatisfiable);
  EXPECT_EQ(parse_range("bytes=0-", 0).kind, ByteRange::kUnsatisfiable);
  EXPECT_EQ(parse_range("bytes=0-1,5-6", 100).kind, ByteRange::kIgnore);
  EXPECT_EQ(parse_range("bytes=5-1", 100).kind, ByteRange::kIgnore);
  EXPECT_EQ(parse_range("bytes=a-b", 100).kind, ByteRange::kIgnore);
  EXPECT_EQ(parse_range("items=0-1", 100).kind, ByteRange::kIgnore);
  EXPECT_EQ(parse_range("bytes=99999999999999999999-", 100).kind, ByteRange::kIgnore);
}

TEST(HttpCodecs, HttpDates) {
  EXPECT_EQ(http_date(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
  EXPECT_EQ(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
  EXPECT_EQ(http_date(4102444799), "Thu, 31 Dec 2099 23:59:59 GMT");
  EXPECT_EQ(http_date(951782400), "Tue, 29 Feb 2000 00:00:00 GMT");
  EXPECT_EQ(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777);
  EXPECT_EQ(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), 784111777);
  EXPECT_EQ(parse_http_date("Sun Nov  6 08:49:37 1994"), 784111777);
  EXPECT_EQ(parse_http_date("yesterday"), std::nullopt);
  EXPECT_EQ(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT trailing"), std::nullopt);
  EXPECT_EQ(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), std::nullopt);
}

TEST(HttpCodecs, EtagListsMatchWeakly) {
  EXPECT_TRUE(etag_matches("*", "\"a\""));
  EXPECT_TRUE(etag_matches(" \"a\" ", "\"a\""));
  EXPECT_TRUE(etag_matches("\"x\", W/\"a\"", "\"a\""));
  EXPECT_TRUE(etag_matches("\"x,y\", \"a\"", "\"a\""));  // a comma inside a tag
  EXPECT_TRUE(etag_matches("bogus, \"a\"", "\"a\""));    // a malformed member is skipped
  EXPECT_FALSE(etag_matches("\"x\"", "\"a\""));
  EXPECT_FALSE(etag_matches("\"a", "\"a\""));
  EXPECT_FALSE(etag_matches("", "\"a\""));
}

TEST(HttpCodecs, IfRangeNeedsTheSameStrongEtag) {
  EXPECT_TRUE(if_range_allows("", "\"a\""));
  EXPECT_TRUE(if_range_allows(" \"a\"", "\"a\""));
  EXPECT_FALSE(if_range_allows("\"b\"", "\"a\""));
  EXPECT_FALSE(if_range_allows("W/\"a\"", "\"a\""));
  EXPECT_FALSE(if_range_allows("\"a\"", ""));
  EXPECT_FALSE(if_range_allows("Sun, 06 Nov 1994 08:49:37 GMT", "\"a\""));  // never a date
}

TEST(HttpCodecs, TrimAndDecimals) {
  EXPECT_EQ(trim(" \t x y\t "), "x y");
  EXPECT_EQ(parse_uint("18446744073709551615"), std::nullopt);  // 20 digits: refused
  EXPECT_EQ(parse_uint("1844674407370955161"), 1844674407370955161u);
  EXPECT_EQ(parse_uint("+1"), std::nullopt);
  EXPECT_EQ(parse_uint(" 1"), std::nullopt);
  EXPECT_EQ(parse_uint(""), std::nullopt);
}

}  // namespace
}  // namespace tiersync::serve
