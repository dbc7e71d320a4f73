#include "proto/digest.h"

#include <gtest/gtest.h>

#include <string>

namespace tiersync::proto {
namespace {

constexpr std::string_view kSha256Empty =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr std::string_view kSha256Abc =
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

TEST(Hex, EncodesLowercase) {
  const std::string bytes("\x00\x01\xab\xff", 4);
  EXPECT_EQ(to_hex(bytes.data(), bytes.size()), "0001abff");
  EXPECT_EQ(to_hex(nullptr, 0), "");
}

TEST(Hex, DigitValueOfEitherCase) {
  EXPECT_EQ(hex_digit_value('0'), 0);
  EXPECT_EQ(hex_digit_value('9'), 9);
  EXPECT_EQ(hex_digit_value('a'), 10);
  EXPECT_EQ(hex_digit_value('F'), 15);
  EXPECT_EQ(hex_digit_value('g'), -1);
  EXPECT_EQ(hex_digit_value('/'), -1);
}

TEST(PercentDecode, DecodesOnce) {
  EXPECT_EQ(percent_decode("/a%20b"), "/a b");
  EXPECT_EQ(percent_decode("/%2e%2E/x"), "/../x");
  EXPECT_EQ(percent_decode("/%252e"), "/%2e");  // decoded once only
  EXPECT_EQ(percent_decode("/a%2Fb"), "/a/b");
  EXPECT_EQ(percent_decode("/a%00b"), std::nullopt);
  EXPECT_EQ(percent_decode(std::string_view("/a\0b", 4)), std::nullopt);
  EXPECT_EQ(percent_decode("/a%zz"), std::nullopt);
  EXPECT_EQ(percent_decode("/a%2"), std::nullopt);
  EXPECT_EQ(percent_decode("/a%"), std::nullopt);
}

TEST(Hex, DigestRoundTrip) {
  const Digest d = sha256("abc");
  const auto parsed = digest_from_hex(to_hex(d));
  ASSERT_TRUE(parsed);
  EXPECT_EQ(*parsed, d);
}

TEST(Hex, DigestFromHexRejectsMalformed) {
  std::string upper(kSha256Abc);
  upper[0] = 'B';
  EXPECT_FALSE(digest_from_hex(upper));
  EXPECT_FALSE(digest_from_hex(kSha256Abc.substr(0, 63)));
  EXPECT_FALSE(digest_from_hex(std::string(kSha256Abc) + "0"));
  EXPECT_FALSE(digest_from_hex(""));
  std::string non_hex(kSha256Abc);
  non_hex[10] = 'g';
  EXPECT_FALSE(digest_from_hex(non_hex));
  non_hex[10] = ' ';
  EXPECT_FALSE(digest_from_hex(non_hex));
}

// Every byte value, in a high and a low digit: only 0-9 and a-f read, each as its value.
TEST(Hex, DigestFromHexReadsExactlyTheLowercaseDigits) {
  const std::string_view digits = "0123456789abcdef";
  for (std::size_t at : {std::size_t{0}, std::size_t{1}, std::size_t{62}, std::size_t{63}}) {
    for (int c = 0; c < 256; ++c) {
      std::string hex(64, '0');
      hex[at] = static_cast<char>(c);
      const auto parsed = digest_from_hex(hex);
      const auto value = digits.find(static_cast<char>(c));
      ASSERT_EQ(parsed.has_value(), value != std::string_view::npos) << at << " " << c;
      if (!parsed) continue;
      Digest want{};
      want[at / 2] = static_cast<std::uint8_t>(at % 2 == 0 ? value << 4 : value);
      EXPECT_EQ(*parsed, want) << at << " " << c;
    }
  }
}

TEST(Base64, Rfc4648Vectors) {
  const std::pair<std::string_view, std::string_view> vectors[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (const auto& [plain, encoded] : vectors) {
    EXPECT_EQ(base64_encode(plain), encoded);
    EXPECT_EQ(base64_decode(encoded), std::string(plain)) << encoded;
  }
}

TEST(Base64, RoundTripsEveryByte) {
  std::string bytes;
  for (int i = 0; i < 256; ++i) bytes += static_cast<char>(i);
  for (std::size_t len = 0; len <= bytes.size(); len += 37) {
    EXPECT_EQ(base64_decode(base64_encode(bytes.substr(0, len))), bytes.substr(0, len));
  }
}

TEST(Base64, AcceptsUrlSafeAlphabet) {
  const std::string bytes("\xfb\xff\xbf", 3);
  EXPECT_EQ(base64_encode(bytes), "+/+/");
  EXPECT_EQ(base64_decode("-_-_"), bytes);
  EXPECT_EQ(base64_decode("+/+/"), bytes);
}

TEST(Base64, AcceptsMissingPadding) {
  EXPECT_EQ(base64_decode("Zg"), "f");
  EXPECT_EQ(base64_decode("Zm8"), "fo");
  EXPECT_EQ(base64_decode("Zm9vYg"), "foob");
}

TEST(Base64, RejectsMalformed) {
  for (const std::string_view bad : {
           "Z",         // one character carries only 6 bits
           "Zm9vY",     // same, after a full quantum
           "Zg=",       // padding that does not complete the quantum
           "Zg===",     // too much padding
           "Z===",      // three padding characters
           "====",      // nothing but padding
           "Zg==Zg==",  // padding in the middle
           "Zm9v\n",    // whitespace
           "Zm 9v",     // whitespace
           "Zm9v!",     // character outside both alphabets
           "Zh==",      // non-zero trailing bits ("Zg==" is the canonical form)
           "Zm9=",      // non-zero trailing bits ("Zm8=" is the canonical form)
       }) {
    EXPECT_FALSE(base64_decode(bad)) << bad;
  }
}

TEST(Sha256, KnownAnswers) {
  EXPECT_EQ(to_hex(sha256("")), kSha256Empty);
  EXPECT_EQ(to_hex(sha256("abc")), kSha256Abc);
}

TEST(Sha256, StreamingInPiecesEqualsOneShot) {
  std::string data;
  for (int i = 0; i < 100000; ++i) data += static_cast<char>(i * 31 + 7);
  Sha256 hasher;
  for (std::size_t pos = 0, step = 1; pos < data.size(); pos += step, step = step * 3 % 4093 + 1) {
    hasher.update(std::string_view(data).substr(pos, step));
  }
  EXPECT_EQ(hasher.finish(), sha256(data));
}

TEST(Sha256, FinishResetsForReuse) {
  Sha256 hasher;
  hasher.update("a");
  hasher.update("bc");
  EXPECT_EQ(to_hex(hasher.finish()), kSha256Abc);
  EXPECT_EQ(to_hex(hasher.finish()), kSha256Empty);
  hasher.update("abc");
  Sha256 moved = std::move(hasher);
  EXPECT_EQ(to_hex(moved.finish()), kSha256Abc);
}

TEST(ConstantTimeEqual, ComparesContentAndLength) {
  EXPECT_TRUE(constant_time_equal("", ""));
  EXPECT_TRUE(constant_time_equal("secret", "secret"));
  EXPECT_FALSE(constant_time_equal("secret", "secreT"));
  EXPECT_FALSE(constant_time_equal("secret", "secret2"));
  EXPECT_FALSE(constant_time_equal("", "x"));
}

}  // namespace
}  // namespace tiersync::proto
