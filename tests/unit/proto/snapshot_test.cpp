#include "proto/snapshot.h"

#include <gtest/gtest.h>

#include <cctype>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "proto/digest.h"
#include "tests/unit/support.h"

namespace tiersync::proto {
namespace {

using unit::Contains;

using nlohmann::json;

constexpr std::int64_t kCreated = 1795654800;  // 2026-11-26T01:00:00Z
constexpr std::int64_t kExpires = 1796259600;  // 2026-12-03T01:00:00Z

/// True when `haystack` contains `needle`; the failure message shows both.

Snapshot sample() {
  Snapshot s;
  s.origin = "dl-master";
  s.serial = 42;
  s.created = kCreated;
  s.expires = kExpires;
  s.layout = "{release}/{repo}/{arch}";
  s.depth = 3;
  s.partitions["edge/main/x86_64"] = {sha256("x86_64 manifest"), 3268, 365000000};
  s.partitions["edge/main/aarch64"] = {sha256("aarch64 manifest"), 3000, 300000000};
  s.partitions["."] = {sha256("root manifest"), 2, 120};
  s.approved_deletions["edge/main/aarch64"] = {to_hex(sha256("old aarch64")), "removed", 41,
                                               kExpires};
  return s;
}

/// The sample, encoded and parsed back as JSON, to be broken by a test.
json sample_doc() {
  return json::parse(encode_snapshot(sample()));
}

std::string decode_error(const std::string& payload) {
  const auto s = decode_snapshot(payload);
  EXPECT_FALSE(s) << payload;
  return s ? std::string() : s.message();
}
std::string decode_error(const json& doc) {
  return decode_error(doc.dump());
}

void expect_equal(const Snapshot& a, const Snapshot& b) {
  EXPECT_EQ(a.origin, b.origin);
  EXPECT_EQ(a.serial, b.serial);
  EXPECT_EQ(a.created, b.created);
  EXPECT_EQ(a.expires, b.expires);
  EXPECT_EQ(a.layout, b.layout);
  EXPECT_EQ(a.depth, b.depth);
  EXPECT_EQ(a.partitions, b.partitions);
  EXPECT_EQ(a.approved_deletions, b.approved_deletions);
}

// --- time ---------------------------------------------------------------------------------------

TEST(FormatTime, Rfc3339Utc) {
  EXPECT_EQ(format_time(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(format_time(kCreated), "2026-11-26T01:00:00Z");
  EXPECT_EQ(format_time(kExpires), "2026-12-03T01:00:00Z");
  EXPECT_EQ(format_time(951868799), "2000-02-29T23:59:59Z");
  EXPECT_EQ(format_time(2147483648), "2038-01-19T03:14:08Z");  // past 32-bit time_t
}

TEST(ParseTime, Valid) {
  EXPECT_EQ(parse_time("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(parse_time("2026-11-26T01:00:00Z"), kCreated);
  EXPECT_EQ(parse_time("2000-02-29T23:59:59Z"), 951868799);
  EXPECT_EQ(parse_time("2038-01-19T03:14:08Z"), 2147483648);
}

TEST(ParseTime, InvertsFormatTime) {
  for (std::int64_t t : {std::int64_t{0}, std::int64_t{1}, std::int64_t{86399}, kCreated, kExpires,
                         std::int64_t{4102444800}, std::int64_t{253402300799}}) {
    EXPECT_EQ(parse_time(format_time(t)), t) << format_time(t);
  }
}

TEST(ParseTime, RejectsMalformedStrings) {
  for (std::string_view s : {
           "",
           "2026-11-26",
           "2026-11-26T01:00:00",        // no zone
           "2026-11-26 01:00:00Z",       // space for T
           "2026-11-26T01:00:00+00:00",  // offset (only Z is written)
           "2026/11/26T01:00:00Z",
           "2026-11-26T01-00-00Z",
           "2026-1-26T01:00:00Z",
           "2026-11-26T1:00:00Z",
           " 2026-11-26T01:00:00Z",
           "2026-11-26T01:00:00Z ",
           "abcd-11-26T01:00:00Z",
           "2026-1a-26T01:00:00Z",
           "2026-11-26T01:00:0aZ",
           "+026-11-26T01:00:00Z",
           "-026-11-26T01:00:00Z",
           "2026-00-26T01:00:00Z",  // month 0
           "2026-13-26T01:00:00Z",  // month 13
           "2026-11-00T01:00:00Z",  // day 0
           "2026-11-32T01:00:00Z",  // day 32
           "2026-11-26T24:00:00Z",  // hour 24
           "2026-11-26T01:60:00Z",  // minute 60
           "2026-11-26T01:00:61Z",  // second 61
           "1969-12-31T23:59:59Z",  // before the epoch
       }) {
    EXPECT_EQ(parse_time(s), std::nullopt) << s;
  }
}

// RFC 3339 section 5.7: the day's upper bound depends on month and year; timegm() alone would
// silently roll "2026-02-30" over into March.
TEST(ParseTime, RejectsDaysThatDoNotExist) {
  for (std::string_view s : {"2026-02-29T00:00:00Z", "2026-02-30T00:00:00Z", "2026-04-31T00:00:00Z",
                             "1900-02-29T00:00:00Z"}) {
    EXPECT_EQ(parse_time(s), std::nullopt) << s;
  }
  EXPECT_NE(parse_time("2024-02-29T00:00:00Z"), std::nullopt);  // a leap day
}

// --- encode / decode ----------------------------------------------------------------------------

TEST(Snapshot, RoundTrip) {
  const Snapshot s = sample();
  const auto back = decode_snapshot(encode_snapshot(s));
  ASSERT_TRUE(back) << back.message();
  expect_equal(s, *back);
}

TEST(Snapshot, RoundTripExtremes) {
  Snapshot s = sample();
  s.serial = std::numeric_limits<std::uint64_t>::max();
  s.partitions["edge/main/x86_64"].bytes = std::numeric_limits<std::uint64_t>::max();
  s.partitions["edge/main/x86_64"].files = 0;
  s.approved_deletions.clear();
  auto back = decode_snapshot(encode_snapshot(s));
  ASSERT_TRUE(back) << back.message();
  expect_equal(s, *back);

  // A snapshot with only the root partition, under a one-segment layout.
  Snapshot root;
  root.origin = "o";
  root.serial = 1;
  root.layout = "{arch}";
  root.depth = 1;
  root.partitions["."] = {sha256(""), 0, 0};
  back = decode_snapshot(encode_snapshot(root));
  ASSERT_TRUE(back) << back.message();
  expect_equal(root, *back);
}

TEST(Snapshot, EncodingHasTheSpecFields) {
  const json doc = sample_doc();
  EXPECT_EQ(doc["type"], "tiersync.snapshot");
  EXPECT_EQ(doc["format"], 1);
  EXPECT_EQ(doc["origin"], "dl-master");
  EXPECT_EQ(doc["serial"], 42);
  EXPECT_EQ(doc["created"], "2026-11-26T01:00:00Z");
  EXPECT_EQ(doc["expires"], "2026-12-03T01:00:00Z");
  EXPECT_EQ(doc["layout"], "{release}/{repo}/{arch}");
  EXPECT_EQ(doc["partitions"]["edge/main/x86_64"]["manifest"], to_hex(sha256("x86_64 manifest")));
  EXPECT_EQ(doc["partitions"]["edge/main/x86_64"]["files"], 3268);
  EXPECT_EQ(doc["partitions"]["edge/main/x86_64"]["bytes"], 365000000);
  EXPECT_TRUE(doc["partitions"].contains("."));
  EXPECT_EQ(doc["approved_deletions"]["edge/main/aarch64"]["serial"], 41);
  EXPECT_EQ(doc["approved_deletions"]["edge/main/aarch64"]["from"], to_hex(sha256("old aarch64")));
  EXPECT_EQ(doc["approved_deletions"]["edge/main/aarch64"]["to"], "removed");
  EXPECT_EQ(doc["approved_deletions"]["edge/main/aarch64"]["expires"], "2026-12-03T01:00:00Z");
  EXPECT_EQ(encode_snapshot(sample()), encode_snapshot(sample()));
}

TEST(Snapshot, DecodesTheSpecExample) {
  const std::string hex = to_hex(sha256("m"));
  const std::string payload = R"({"type": "tiersync.snapshot", "format": 1, "origin": "dl-master",
    "serial": 42, "created": "2026-11-26T01:00:00Z", "expires": "2026-12-03T01:00:00Z",
    "layout": "{release}/{repo}/{arch}",
    "partitions": {"edge/main/x86_64": {"manifest": ")" +
                              hex + R"(", "files": 3268, "bytes": 365000000},
                   ".": {"manifest": ")" +
                              hex + R"(", "files": 1, "bytes": 10}},
    "approved_deletions": {"edge/main/aarch64": {"from": ")" +
                              hex + R"(", "to": "removed", "serial": 42,
                              "expires": "2026-12-03T01:00:00Z"}}})";
  const auto s = decode_snapshot(payload);
  ASSERT_TRUE(s) << s.message();
  EXPECT_EQ(s->origin, "dl-master");
  EXPECT_EQ(s->serial, 42u);
  EXPECT_EQ(s->created, kCreated);
  EXPECT_EQ(s->expires, kExpires);
  EXPECT_EQ(s->depth, 3u);
  ASSERT_EQ(s->partitions.size(), 2u);
  EXPECT_EQ(s->partitions.at("edge/main/x86_64").files, 3268u);
  EXPECT_EQ(s->partitions.at(".").manifest, sha256("m"));
  const ApprovedChange& a = s->approved_deletions.at("edge/main/aarch64");
  EXPECT_EQ(a.serial, 42u);
  EXPECT_EQ(a.from, hex);
  EXPECT_EQ(a.to, "removed");
  EXPECT_EQ(a.expires, kExpires);
}

TEST(Snapshot, ApprovedDeletionsIsOptional) {
  json doc = sample_doc();
  doc.erase("approved_deletions");
  const auto s = decode_snapshot(doc.dump());
  ASSERT_TRUE(s) << s.message();
  EXPECT_TRUE(s->approved_deletions.empty());
}

TEST(SnapshotDecode, NotJsonOrWrongKind) {
  EXPECT_TRUE(Contains(decode_error(std::string("{")), "JSON"));
  EXPECT_TRUE(Contains(decode_error(std::string("")), "JSON"));
  EXPECT_TRUE(Contains(decode_error(std::string("[1]")), "JSON object"));
  json doc = sample_doc();
  doc["type"] = "tiersync.manifest";
  EXPECT_TRUE(Contains(decode_error(doc), "type"));
  doc = sample_doc();
  doc["format"] = 2;
  EXPECT_TRUE(Contains(decode_error(doc), "format"));
}

TEST(SnapshotDecode, SerialMustBePositive) {
  for (const json& serial : {json(0), json(-1), json(1.5), json("42"), json(nullptr)}) {
    json doc = sample_doc();
    doc["serial"] = serial;
    EXPECT_TRUE(Contains(decode_error(doc), "serial")) << serial;
  }
  json doc = sample_doc();
  doc["serial"] = 1;
  EXPECT_TRUE(decode_snapshot(doc.dump()));
}

TEST(SnapshotDecode, MissingFields) {
  for (const char* key :
       {"type", "format", "origin", "serial", "created", "expires", "layout", "partitions"}) {
    json doc = sample_doc();
    doc.erase(key);
    EXPECT_TRUE(Contains(decode_error(doc), key)) << key;
  }
  json doc = sample_doc();
  doc["origin"] = "";
  EXPECT_TRUE(Contains(decode_error(doc), "origin"));
  doc = sample_doc();
  doc["origin"] = 5;
  EXPECT_TRUE(Contains(decode_error(doc), "origin"));
  doc = sample_doc();
  doc["partitions"] = json::array();
  EXPECT_TRUE(Contains(decode_error(doc), "partitions"));
}

TEST(SnapshotDecode, BadTimes) {
  for (const char* key : {"created", "expires"}) {
    json doc = sample_doc();
    doc[key] = "2026-11-26 01:00:00";
    std::string msg = decode_error(doc);
    EXPECT_TRUE(Contains(msg, key));
    EXPECT_TRUE(Contains(msg, "2026-11-26 01:00:00"));
    doc[key] = 1795654800;
    EXPECT_TRUE(Contains(decode_error(doc), key));
  }
}

TEST(SnapshotDecode, BadLayout) {
  json doc = sample_doc();
  doc["layout"] = "{Release}/{repo}/{arch}";
  EXPECT_TRUE(Contains(decode_error(doc), "layout"));
  doc["layout"] = "";
  EXPECT_TRUE(Contains(decode_error(doc), "layout"));
}

TEST(SnapshotDecode, PartitionNameMustFitTheLayoutDepth) {
  const json ref = sample_doc()["partitions"]["."];
  for (const char* name : {"edge/main", "edge", "edge/main/x86_64/extra", "edge//x86_64",
                           "edge/../x86_64", ".tiersync/v1/x", "/edge/main/x86_64", ""}) {
    json doc = sample_doc();
    doc["partitions"][name] = ref;
    const std::string msg = decode_error(doc);
    if (*name) {
      EXPECT_TRUE(Contains(msg, name)) << name;
    }
  }
  // The same names are fine under a layout they fit.
  json doc = sample_doc();
  doc["layout"] = "{release}/{repo}";
  EXPECT_TRUE(Contains(decode_error(doc), "layout's 2 components"));
  doc["partitions"] = {{"edge/main", ref}, {".", ref}};
  doc["approved_deletions"] = json::object();
  EXPECT_TRUE(decode_snapshot(doc.dump()));
}

TEST(SnapshotDecode, BadManifestHex) {
  const std::string hex = to_hex(sha256("x86_64 manifest"));
  std::string upper = hex;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const json& manifest : {json(upper), json(hex.substr(1)), json(hex + "0"),
                               json(std::string(64, 'z')), json(""), json(5)}) {
    json doc = sample_doc();
    doc["partitions"]["edge/main/x86_64"]["manifest"] = manifest;
    const std::string msg = decode_error(doc);
    EXPECT_TRUE(Contains(msg, "edge/main/x86_64")) << manifest;
    EXPECT_TRUE(Contains(msg, "manifest")) << manifest;
  }
  json doc = sample_doc();
  doc["partitions"]["edge/main/x86_64"].erase("manifest");
  EXPECT_TRUE(Contains(decode_error(doc), "manifest"));
}

TEST(SnapshotDecode, BadPartitionCounts) {
  for (const char* key : {"files", "bytes"}) {
    for (const json& value : {json(-1), json(1.5), json("3"), json(nullptr)}) {
      json doc = sample_doc();
      doc["partitions"]["edge/main/x86_64"][key] = value;
      const std::string msg = decode_error(doc);
      EXPECT_TRUE(Contains(msg, "edge/main/x86_64")) << key << " " << value;
      EXPECT_TRUE(Contains(msg, key)) << key << " " << value;
    }
    json doc = sample_doc();
    doc["partitions"]["edge/main/x86_64"].erase(key);
    EXPECT_TRUE(Contains(decode_error(doc), key));
  }
  json doc = sample_doc();
  doc["partitions"]["edge/main/x86_64"] = "deadbeef";
  EXPECT_TRUE(Contains(decode_error(doc), "edge/main/x86_64"));
}

TEST(SnapshotDecode, BadApprovedDeletions) {
  json doc = sample_doc();
  doc["approved_deletions"] = json::array({"edge/main/aarch64"});
  EXPECT_TRUE(Contains(decode_error(doc), "approved_deletions"));
  const json good = sample_doc()["approved_deletions"]["edge/main/aarch64"];

  for (const char* name : {"edge/main", "edge/main/x86_64/x", "../x/y", ""}) {
    doc = sample_doc();
    doc["approved_deletions"][name] = good;
    EXPECT_TRUE(Contains(decode_error(doc), "approved_deletions")) << name;
  }
  // The serial-only form of the first release covered a range of serials: read, so that an
  // older origin's snapshots (and a node's own from before the upgrade) still load, but never
  // taken as an approval of anything.
  doc = sample_doc();
  doc["approved_deletions"]["edge/main/aarch64"] = 42;
  doc["approved_deletions"]["edge/main/x86_64"] = good;
  auto old_form = decode_snapshot(doc.dump());
  ASSERT_TRUE(old_form) << old_form.message();
  EXPECT_FALSE(old_form->approved_deletions.count("edge/main/aarch64"));
  EXPECT_TRUE(old_form->approved_deletions.count("edge/main/x86_64"));
  for (const json& serial : {json(-1), json("42"), json(true), json(1.5), json(nullptr)}) {
    doc = sample_doc();
    doc["approved_deletions"]["edge/main/aarch64"] = serial;
    const std::string msg = decode_error(doc);
    EXPECT_TRUE(Contains(msg, "approved_deletions")) << serial;
    EXPECT_TRUE(Contains(msg, "edge/main/aarch64")) << serial;
  }
  const std::pair<const char*, json> broken[] = {
      {"from", json("deadbeef")}, {"from", json(7)},       {"to", json("gone")},
      {"to", json(nullptr)},      {"serial", json(-3)},    {"serial", json("9")},
      {"expires", json("soon")},  {"expires", json(1234)},
  };
  for (const auto& [key, value] : broken) {
    doc = sample_doc();
    doc["approved_deletions"]["edge/main/aarch64"][key] = value;
    const std::string msg = decode_error(doc);
    EXPECT_TRUE(Contains(msg, std::string("edge/main/aarch64\"].") + key)) << key << " " << msg;
  }
  for (const char* key : {"from", "to", "serial", "expires"}) {
    doc = sample_doc();
    doc["approved_deletions"]["edge/main/aarch64"].erase(key);
    EXPECT_TRUE(Contains(decode_error(doc), key)) << key;
  }
  // The root partition can be approved too; "none" is a change from nothing.
  doc = sample_doc();
  doc["approved_deletions"]["."] = good;
  doc["approved_deletions"]["."]["from"] = "none";
  EXPECT_TRUE(decode_snapshot(doc.dump()));
}

}  // namespace
}  // namespace tiersync::proto
