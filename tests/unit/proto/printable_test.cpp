#include "proto/printable.h"

#include <gtest/gtest.h>

#include <string>

namespace tiersync::proto {
namespace {

TEST(Printable, PlainTextPassesUnchanged) {
  EXPECT_EQ(printable("edge/main/x86_64/pkg-1.0.apk"), "edge/main/x86_64/pkg-1.0.apk");
  EXPECT_EQ(printable("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa6"),
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa6");
  EXPECT_EQ(printable(""), "");
}

TEST(Printable, ControlCharactersAndInvalidUtf8AreEscaped) {
  EXPECT_EQ(printable(std::string("a\nb\r\x1b[31m\0z\x7f", 12)),
            "a\\x0ab\\x0d\\x1b[31m\\x00z\\x7f");
  EXPECT_EQ(printable("\xff\xfe"), "\\xff\\xfe");
  EXPECT_EQ(printable("\xc0\xaf"), "\\xc0\\xaf");                    // overlong '/'
  EXPECT_EQ(printable("\xed\xa0\x80"), "\\xed\\xa0\\x80");           // a surrogate
  EXPECT_EQ(printable("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80");  // above U+10FFFF
  EXPECT_EQ(printable("ok\xe2\x82"), "ok\\xe2\\x82");                // cut sequence
}

TEST(Printable, LongTextIsCutAndSaysItsSize) {
  const std::string huge(8u << 20, 'a');
  const std::string shown = printable(huge);
  EXPECT_EQ(shown, std::string(kPrintableBytes, 'a') + "...(8388608 bytes)");
  EXPECT_EQ(printable("abcdef", 3), "abc...(6 bytes)");
  // Whatever the bytes, the result stays within 4 * max + 32.
  const std::string hostile(1u << 20, '\x01');
  EXPECT_LE(printable(hostile, 100).size(), 4u * 100 + 32);
}

TEST(Printable, AppliedAgainItOnlyCuts) {
  const std::string once = printable("a\nb\xff");
  EXPECT_EQ(printable(once), once);
}

}  // namespace
}  // namespace tiersync::proto
