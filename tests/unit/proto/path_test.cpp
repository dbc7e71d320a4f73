#include "proto/path.h"
#include "tests/unit/support.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace tiersync::proto {
namespace {

using unit::Contains;

/// True when `haystack` contains `needle`; the failure message shows both.

/// `count` components of `len` bytes each, joined by '/'.
std::string components(std::size_t count, std::size_t len, char c = 'a') {
  std::string out;
  for (std::size_t i = 0; i < count; ++i) {
    if (i) out += '/';
    out += std::string(len, c);
  }
  return out;
}

std::string json_string(std::string_view s) {
  std::string out;
  append_json_string(out, s);
  return out;
}

// --- path_error ---------------------------------------------------------------------------------

TEST(PathError, AcceptsValidPaths) {
  for (std::string_view p :
       {"a", "last-updated", "edge/main/x86_64/APKINDEX.tar.gz", "edge/main/x86_64/foo-1.0-r0.apk",
        "a/.tiersync/b", ".tiersync-busy", ".tiersyncx/a", "a/.hidden", "...", "a/.../b",
        "caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x98\x80", "with space/and'quote\"", "a/b\\c"}) {
    EXPECT_EQ(path_error(p), std::nullopt) << p;
  }
}

TEST(PathError, Empty) {
  const auto err = path_error("");
  ASSERT_TRUE(err);
  EXPECT_TRUE(Contains(*err, "empty"));
}

TEST(PathError, Absolute) {
  const auto err = path_error("/etc/passwd");
  ASSERT_TRUE(err);
  EXPECT_TRUE(Contains(*err, "absolute"));
  EXPECT_TRUE(Contains(*err, "/etc/passwd"));
  EXPECT_TRUE(path_error("/"));
}

TEST(PathError, EmptyComponents) {
  for (std::string_view p : {"a//b", "a/", "a/b/", "//a"}) {
    const auto err = path_error(p);
    ASSERT_TRUE(err) << p;
    EXPECT_TRUE(Contains(*err, "empty component") || Contains(*err, "absolute")) << *err;
  }
  EXPECT_TRUE(Contains(path_error("a//b").value_or(""), "empty component"));
  EXPECT_TRUE(Contains(path_error("a/").value_or(""), "empty component"));
}

TEST(PathError, DotAndDotDotComponents) {
  for (std::string_view p : {".", "..", "./a", "a/.", "a/./b", "../a", "a/..", "a/../b"}) {
    const auto err = path_error(p);
    ASSERT_TRUE(err) << p;
    EXPECT_TRUE(Contains(*err, "'.'") || Contains(*err, "'..'")) << *err;
  }
  EXPECT_TRUE(Contains(path_error("a/../b").value_or(""), "'..'"));
  EXPECT_TRUE(Contains(path_error("a/./b").value_or(""), "'.'"));
}

TEST(PathError, Nul) {
  const std::string p("a/b\0c", 5);
  const auto err = path_error(p);
  ASSERT_TRUE(err);
  EXPECT_TRUE(Contains(*err, "NUL"));
  EXPECT_TRUE(path_error(std::string(1, '\0')));
}

TEST(PathError, InvalidUtf8) {
  const std::vector<std::string> bad = {
      "\xff",                      // never valid
      "a/\x80",                    // lone continuation byte
      "a/\xc3",                    // truncated two-byte sequence
      "a/\xe2\x82",                // truncated three-byte sequence
      "a/\xc3(",                   // bad continuation
      "\xc0\xaf",                  // overlong '/'
      "\xc1\xbf",                  // overlong U+007F
      "\xe0\x80\xaf",              // overlong three-byte '/'
      "\xe0\x9f\xbf",              // overlong U+07FF
      "\xf0\x80\x80\xaf",          // overlong four-byte '/'
      "\xf0\x8f\xbf\xbf",          // overlong U+FFFF
      "\xed\xa0\x80",              // surrogate U+D800
      "\xed\xbf\xbf",              // surrogate U+DFFF
      "\xed\xa0\xbd\xed\xb8\x80",  // surrogate pair encoded as CESU-8
      "\xf4\x90\x80\x80",          // U+110000, beyond Unicode
      "\xf8\x88\x80\x80\x80",      // five-byte form
  };
  for (const auto& p : bad) {
    EXPECT_FALSE(is_valid_utf8(p)) << testing::PrintToString(p);
    const auto err = path_error(p);
    ASSERT_TRUE(err) << testing::PrintToString(p);
    EXPECT_TRUE(Contains(*err, "UTF-8")) << testing::PrintToString(p);
  }
}

TEST(PathError, ValidUtf8Boundaries) {
  for (std::string p : {"\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xed\x9f\xbf", "\xee\x80\x80",
                        "\xef\xbf\xbf", "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf"}) {
    EXPECT_TRUE(is_valid_utf8(p)) << testing::PrintToString(p);
    EXPECT_EQ(path_error("x/" + p), std::nullopt) << testing::PrintToString(p);
  }
  EXPECT_TRUE(is_valid_utf8(""));
}

TEST(PathError, LengthLimit) {
  // 15 components of 255 bytes, then 200 and 55: 4080 bytes of names and 16 slashes = 4096.
  std::string p = components(15, 255) + "/" + std::string(200, 'b') + "/" + std::string(55, 'c');
  ASSERT_EQ(p.size(), kMaxPathBytes);
  EXPECT_EQ(path_error(p), std::nullopt);
  p += 'c';
  const auto err = path_error(p);
  ASSERT_TRUE(err);
  EXPECT_TRUE(Contains(*err, "4096"));
}

TEST(PathError, ComponentLimit) {
  EXPECT_EQ(path_error(std::string(255, 'a')), std::nullopt);
  EXPECT_EQ(path_error("x/" + std::string(255, 'a') + "/y"), std::nullopt);
  for (const std::string& p :
       {std::string(256, 'a'), "x/" + std::string(256, 'a'), "x/" + std::string(256, 'a') + "/y"}) {
    const auto err = path_error(p);
    ASSERT_TRUE(err) << p.size();
    EXPECT_TRUE(Contains(*err, "255"));
  }
}

TEST(PathError, UnderTopLevelMetaDir) {
  for (std::string_view p : {".tiersync", ".tiersync/v1/snapshot", ".tiersync/staging/x"}) {
    const auto err = path_error(p);
    ASSERT_TRUE(err) << p;
    EXPECT_TRUE(Contains(*err, ".tiersync/")) << p;
  }
  EXPECT_EQ(path_error("a/.tiersync/b"), std::nullopt);
  EXPECT_EQ(path_error("a/.tiersync"), std::nullopt);
}

TEST(PathError, LongPathIsTruncatedInTheMessage) {
  const std::string p = components(10, 255);
  const auto err = path_error(p + "/..");
  ASSERT_TRUE(err);
  EXPECT_LT(err->size(), 400u);
  EXPECT_TRUE(Contains(*err, "..."));
}

// --- link_target_error --------------------------------------------------------------------------

TEST(LinkTargetError, InsideTheTree) {
  EXPECT_EQ(link_target_error("a/b/link", "target"), std::nullopt);
  EXPECT_EQ(link_target_error("a/b/link", "../c/d"), std::nullopt);
  EXPECT_EQ(link_target_error("a/b/link", "../../c"), std::nullopt);
  EXPECT_EQ(link_target_error("link", "edge/main"), std::nullopt);
  EXPECT_EQ(link_target_error("a/link", ".."), std::nullopt);  // the tree's top itself
  EXPECT_EQ(link_target_error("latest-stable", "v3.20"), std::nullopt);
  EXPECT_EQ(link_target_error("a/link", "../b/.tiersync/x"), std::nullopt);
}

TEST(LinkTargetError, LeavingTheTree) {
  for (auto [link, target] : std::vector<std::pair<std::string_view, std::string_view>>{
           {"link", ".."},
           {"link", "../x"},
           {"a/b/link", "../../../etc/passwd"},
           {"a/link", "../../a/x"}}) {  // leaves the tree on the way, even if it names it again
    const auto err = link_target_error(link, target);
    ASSERT_TRUE(err) << link << " -> " << target;
    EXPECT_TRUE(Contains(*err, "leaves the tree"));
    EXPECT_TRUE(Contains(*err, std::string(link)));
  }
}

// The kernel follows a symlink named in a target before applying a later "..", so only targets
// of the form (../)*name(/name)* say where they lead.
TEST(LinkTargetError, NonNormalTargetsAreRefused) {
  for (auto [link, target] :
       std::vector<std::pair<std::string_view, std::string_view>>{{"a/b/link", "./target"},
                                                                  {"a/b/link", "x/../../y"},
                                                                  {"x/l", "y/../secret"},
                                                                  {"a/link", "b/../../../x"},
                                                                  {"a/link", "b//c"},
                                                                  {"a/link", "b/."}}) {
    const auto err = link_target_error(link, target);
    ASSERT_TRUE(err) << link << " -> " << target;
    EXPECT_TRUE(Contains(*err, std::string(link)));
  }
}

TEST(LinkTargetError, Absolute) {
  const auto err = link_target_error("a/link", "/etc/passwd");
  ASSERT_TRUE(err);
  EXPECT_TRUE(Contains(*err, "absolute"));
  EXPECT_TRUE(Contains(*err, "a/link"));
}

TEST(LinkTargetError, IntoMetaDir) {
  for (auto [link, target] : std::vector<std::pair<std::string_view, std::string_view>>{
           {"link", ".tiersync"},
           {"link", ".tiersync/v1/snapshot"},
           {"a/link", "../.tiersync/staging"},
           {"a/b/link", "../../.tiersync"}}) {
    const auto err = link_target_error(link, target);
    ASSERT_TRUE(err) << link << " -> " << target;
    EXPECT_TRUE(Contains(*err, ".tiersync"));
  }
}

TEST(LinkTargetError, MalformedTargets) {
  EXPECT_TRUE(link_target_error("link", ""));
  EXPECT_TRUE(link_target_error("link", std::string("a\0b", 3)));
  EXPECT_TRUE(link_target_error("link", "\xff"));
  EXPECT_TRUE(link_target_error("link", std::string(256, 'a')));
  EXPECT_TRUE(link_target_error("link", components(20, 250)));  // > 4096 bytes
}

// --- partitions ---------------------------------------------------------------------------------

TEST(PathDepth, CountsComponents) {
  EXPECT_EQ(path_depth("a"), 1u);
  EXPECT_EQ(path_depth("last-updated"), 1u);
  EXPECT_EQ(path_depth("edge/main/x86_64"), 3u);
  EXPECT_EQ(path_depth("edge/main/x86_64/foo.apk"), 4u);
}

TEST(PartitionOf, DepthThreeLayout) {
  EXPECT_EQ(partition_of("edge/main/x86_64/foo.apk", 3), "edge/main/x86_64");
  EXPECT_EQ(partition_of("edge/main/x86_64/sub/dir/foo.apk", 3), "edge/main/x86_64");
  EXPECT_EQ(partition_of("edge/main/x86_64", 3), ".");
  EXPECT_EQ(partition_of("edge/main", 3), ".");
  EXPECT_EQ(partition_of("last-updated", 3), ".");
}

TEST(PartitionOf, OtherDepths) {
  EXPECT_EQ(partition_of("a/b", 1), "a");
  EXPECT_EQ(partition_of("a/b/c", 1), "a");
  EXPECT_EQ(partition_of("a", 1), ".");
  EXPECT_EQ(partition_of("a/b/c", 2), "a/b");
  EXPECT_EQ(partition_of("a/b", 2), ".");
  EXPECT_EQ(partition_of("a/b/c/d/e", 4), "a/b/c/d");
}

TEST(PartitionOf, ReturnsAViewIntoThePath) {
  const std::string path = "edge/main/x86_64/foo.apk";
  const std::string_view part = partition_of(path, 3);
  EXPECT_EQ(part.data(), path.data());
}

TEST(InPartition, DepthThreeLayout) {
  EXPECT_TRUE(in_partition("edge/main/x86_64/foo.apk", "edge/main/x86_64", 3));
  EXPECT_TRUE(in_partition("edge/main/x86_64/a/b", "edge/main/x86_64", 3));
  EXPECT_FALSE(in_partition("edge/main/x86_64", "edge/main/x86_64", 3));
  EXPECT_FALSE(in_partition("edge/main/x86_64x/foo", "edge/main/x86_64", 3));
  EXPECT_FALSE(in_partition("edge/main/aarch64/foo", "edge/main/x86_64", 3));
  EXPECT_FALSE(in_partition("last-updated", "edge/main/x86_64", 3));

  EXPECT_TRUE(in_partition("last-updated", ".", 3));
  EXPECT_TRUE(in_partition("edge/main", ".", 3));
  EXPECT_TRUE(in_partition("edge/main/x86_64", ".", 3));
  EXPECT_FALSE(in_partition("edge/main/x86_64/foo.apk", ".", 3));
}

TEST(InPartition, AgreesWithPartitionOf) {
  for (std::string_view p : {"a", "a/b", "a/b/c", "a/b/c/d", "a/b/c/d/e", "x/b/c/d"}) {
    for (std::size_t depth : {1u, 2u, 3u}) {
      EXPECT_TRUE(in_partition(p, partition_of(p, depth), depth)) << p << " depth " << depth;
    }
  }
}

TEST(LayoutDepth, Valid) {
  auto d = layout_depth("{release}/{repo}/{arch}");
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(*d, 3u);
  d = layout_depth("{a}");
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(*d, 1u);
  d = layout_depth("{version_2}/{x9}");
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(*d, 2u);
  std::string sixteen = "{s}";
  for (int i = 1; i < 16; ++i) sixteen += "/{s}";
  d = layout_depth(sixteen);
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(*d, 16u);
}

TEST(LayoutDepth, Empty) {
  const auto d = layout_depth("");
  ASSERT_FALSE(d);
  EXPECT_TRUE(Contains(d.message(), "empty"));
}

TEST(LayoutDepth, MalformedSegments) {
  for (std::string_view layout :
       {"release", "{}", "{release", "release}", "{Release}", "{re-lease}", "{re lease}",
        "{release}/", "/{release}", "{release}//{arch}", "{release}/arch", "{a}/{b}/{}", "{{a}}",
        "{a}.{b}"}) {
    const auto d = layout_depth(layout);
    ASSERT_FALSE(d) << layout;
    EXPECT_TRUE(Contains(d.message(), "segment")) << layout;
  }
}

TEST(LayoutDepth, TooManySegments) {
  std::string layout = "{s}";
  for (int i = 1; i < 17; ++i) layout += "/{s}";
  const auto d = layout_depth(layout);
  ASSERT_FALSE(d);
  EXPECT_TRUE(Contains(d.message(), "16"));
}

TEST(PartitionNameError, Valid) {
  EXPECT_EQ(partition_name_error(".", 3), std::nullopt);
  EXPECT_EQ(partition_name_error(".", 1), std::nullopt);
  EXPECT_EQ(partition_name_error("edge/main/x86_64", 3), std::nullopt);
  EXPECT_EQ(partition_name_error("v3.20", 1), std::nullopt);
}

TEST(PartitionNameError, WrongDepth) {
  for (std::string_view name : {"edge", "edge/main", "edge/main/x86_64/extra"}) {
    const auto err = partition_name_error(name, 3);
    ASSERT_TRUE(err) << name;
    EXPECT_TRUE(Contains(*err, std::string(name)));
    EXPECT_TRUE(Contains(*err, "3"));
  }
}

TEST(PartitionNameError, InvalidPath) {
  for (std::string_view name : {"", "/edge/main/x86_64", "edge//x86_64", "edge/../x86_64",
                                ".tiersync/v1/x", "edge/main/", "./main/x86_64"}) {
    EXPECT_TRUE(partition_name_error(name, 3)) << name;
  }
  EXPECT_TRUE(partition_name_error("a/\xff/c", 3));
}

// --- append_json_string -------------------------------------------------------------------------

TEST(AppendJsonString, Plain) {
  EXPECT_EQ(json_string(""), R"("")");
  EXPECT_EQ(json_string("edge/main/x86_64"), R"("edge/main/x86_64")");
}

TEST(AppendJsonString, Appends) {
  std::string out = "x:";
  append_json_string(out, "a");
  append_json_string(out, "b");
  EXPECT_EQ(out, R"(x:"a""b")");
}

TEST(AppendJsonString, Escapes) {
  EXPECT_EQ(json_string("a\"b"), R"("a\"b")");
  EXPECT_EQ(json_string("a\\b"), R"("a\\b")");
  EXPECT_EQ(json_string("\n\t\r"), R"("\n\t\r")");
  EXPECT_EQ(json_string(std::string("\0", 1)), R"("\u0000")");
  EXPECT_EQ(json_string("\x01\x1f"), R"("\u0001\u001f")");
  EXPECT_EQ(json_string("\x7f"), R"("\u007f")");
  EXPECT_EQ(json_string("\b\f"), R"("\u0008\u000c")");
  EXPECT_EQ(json_string("/"), R"("/")");  // no need to escape '/'
}

TEST(AppendJsonString, KeepsUtf8) {
  const std::string s = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
  EXPECT_EQ(json_string(s), "\"" + s + "\"");
}

TEST(AppendJsonString, ParsesBackToTheSameBytes) {
  std::string all;
  for (int c = 0; c < 0x80; ++c) all.push_back(static_cast<char>(c));
  all += "caf\xc3\xa9";
  const auto parsed = nlohmann::json::parse(json_string(all));
  EXPECT_EQ(parsed.get<std::string>(), all);
}

}  // namespace
}  // namespace tiersync::proto
