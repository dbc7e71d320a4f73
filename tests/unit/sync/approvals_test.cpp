#include "daemon/sync/approvals.h"

#include <gtest/gtest.h>

#include <cctype>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "proto/digest.h"

namespace tiersync::sync {
namespace {

using nlohmann::json;

constexpr std::int64_t kNow = 1'764'000'000;
constexpr const char* kPart = "edge/main/armv7";

const std::string kA = proto::to_hex(proto::sha256("manifest a"));
const std::string kB = proto::to_hex(proto::sha256("manifest b"));
const std::string kC = proto::to_hex(proto::sha256("manifest c"));

Approval approval(std::string from = kA, std::string to = kB, std::int64_t expires = kNow + 3600) {
  return Approval{kPart, std::move(from), std::move(to), 30, 100, "deleted", expires};
}

TEST(ChangeEnd, HashOrAbsence) {
  const proto::Digest d = proto::sha256("manifest a");
  EXPECT_EQ(change_end(&d, kNoManifest), kA);
  EXPECT_EQ(change_end(nullptr, kNoManifest), "none");
  EXPECT_EQ(change_end(nullptr, kRemoved), "removed");
}

TEST(Approval, CoversExactlyThatChangeUntilItExpires) {
  const Approval a = approval();
  EXPECT_TRUE(a.covers(kPart, kA, kB, kNow));
  EXPECT_TRUE(a.covers(kPart, kA, kB, kNow + 3599));
  EXPECT_FALSE(a.covers(kPart, kA, kB, kNow + 3600)) << "expired at its expiry";
  EXPECT_FALSE(a.covers("edge/main/aarch64", kA, kB, kNow));
  EXPECT_FALSE(a.covers(kPart, kC, kB, kNow)) << "another applied manifest";
  EXPECT_FALSE(a.covers(kPart, kA, kC, kNow)) << "another candidate";
  EXPECT_FALSE(a.covers(kPart, kB, kA, kNow)) << "the change undone";
  EXPECT_FALSE(a.covers(kPart, kA, "removed", kNow));
  EXPECT_FALSE(a.covers(kPart, "none", kB, kNow));
  // A removal covers the removal of that applied manifest only.
  const Approval removal = approval(kA, "removed");
  EXPECT_TRUE(removal.covers(kPart, kA, "removed", kNow));
  EXPECT_FALSE(removal.covers(kPart, kC, "removed", kNow));
  EXPECT_FALSE(removal.covers(kPart, kA, kB, kNow));
}

proto::Snapshot candidate_with(std::string from, std::string to, std::uint64_t serial,
                               std::int64_t expires, std::uint64_t snapshot_serial = 60) {
  proto::Snapshot s;
  s.serial = snapshot_serial;
  s.approved_deletions[kPart] = {std::move(from), std::move(to), serial, expires};
  return s;
}

TEST(UpstreamCovers, TheApprovedChangeOnly) {
  const proto::Snapshot s = candidate_with(kA, kB, 57, kNow + 3600);
  EXPECT_TRUE(upstream_covers(s, kPart, kA, kB, kNow));
  EXPECT_FALSE(upstream_covers(s, "edge/main/aarch64", kA, kB, kNow)) << "another partition";
  EXPECT_FALSE(upstream_covers(s, kPart, kC, kB, kNow)) << "the relay applied another manifest";
  EXPECT_FALSE(upstream_covers(s, kPart, "none", kB, kNow)) << "the relay never had it";
  EXPECT_FALSE(upstream_covers(s, kPart, kA, kC, kNow)) << "a later candidate";
  EXPECT_FALSE(upstream_covers(s, kPart, kA, "removed", kNow));
  EXPECT_FALSE(upstream_covers(proto::Snapshot{}, kPart, kA, kB, kNow)) << "no approvals";
}

TEST(UpstreamCovers, Expiry) {
  const proto::Snapshot s = candidate_with(kA, kB, 57, kNow + 3600);
  EXPECT_TRUE(upstream_covers(s, kPart, kA, kB, kNow + 3599));
  EXPECT_FALSE(upstream_covers(s, kPart, kA, kB, kNow + 3600));
  EXPECT_FALSE(upstream_covers(s, kPart, kA, kB, kNow + 86400));
}

TEST(UpstreamCovers, Serial) {
  // Carried in later snapshots: still valid; from a serial after the snapshot's: refused.
  EXPECT_TRUE(upstream_covers(candidate_with(kA, kB, 57, kNow + 60, 57), kPart, kA, kB, kNow));
  EXPECT_TRUE(upstream_covers(candidate_with(kA, kB, 57, kNow + 60, 90), kPart, kA, kB, kNow));
  EXPECT_FALSE(upstream_covers(candidate_with(kA, kB, 58, kNow + 60, 57), kPart, kA, kB, kNow));
}

TEST(UpstreamCovers, RemovalAndFirstAppearance) {
  EXPECT_TRUE(
      upstream_covers(candidate_with(kA, "removed", 57, kNow + 60), kPart, kA, "removed", kNow));
  EXPECT_FALSE(
      upstream_covers(candidate_with(kA, "removed", 57, kNow + 60), kPart, kC, "removed", kNow));
}

// --- the parent's approvals document
// ---------------------------------------------------------------

TEST(ParentApprovals, RoundTrip) {
  std::vector<Approval> in = {approval(), approval(kB, "removed", kNow + 7200),
                              approval("none", kC, kNow + 60)};
  in[2].partition = ".";
  const std::string doc = encode_parent_approvals(in);
  const json j = json::parse(doc);
  EXPECT_EQ(j["type"], "tiersync.approvals");
  EXPECT_EQ(j["format"], 1);
  EXPECT_EQ(j["approvals"][0]["expires"], proto::format_time(kNow + 3600));
  const std::vector<Approval> out = decode_parent_approvals(doc);
  ASSERT_EQ(out.size(), 3u);
  for (std::size_t i = 0; i < in.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(out[i].partition, in[i].partition);
    EXPECT_EQ(out[i].from, in[i].from);
    EXPECT_EQ(out[i].to, in[i].to);
    EXPECT_EQ(out[i].expires, in[i].expires);
    // Counts and rule are the parent's business: not served, not read.
    EXPECT_EQ(out[i].deleted, 0u);
    EXPECT_EQ(out[i].files, 0u);
    EXPECT_EQ(out[i].rule, "");
  }
  EXPECT_TRUE(out[0].covers(kPart, kA, kB, kNow));
  EXPECT_TRUE(decode_parent_approvals(encode_parent_approvals({})).empty());
}

std::string document(const json& approvals) {
  return json({{"type", "tiersync.approvals"}, {"format", 1}, {"approvals", approvals}}).dump();
}

json entry(json partition = kPart, json from = kA, json to = kB,
           json expires = proto::format_time(kNow + 3600)) {
  return {{"partition", partition}, {"from", from}, {"to", to}, {"expires", expires}};
}

TEST(ParentApprovals, NotADocumentOfApprovals) {
  const json good = json::array({entry()});
  ASSERT_EQ(decode_parent_approvals(document(good)).size(), 1u);
  for (const std::string& bytes : {
           std::string(),
           std::string("not json"),
           std::string("<html>502 Bad Gateway</html>"),
           std::string("[]"),
           std::string("null"),
           std::string("\"approvals\""),
           std::string("{}"),
           std::string(R"({"approvals": 5})"),
           std::string(R"({"approvals": {"0": {}}})"),
           document(good).substr(0, 60),        // cut short
           json({{"approvals", good}}).dump(),  // no type
           json({{"type", "tiersync.pins"}, {"format", 1}, {"approvals", good}}).dump(),
           json({{"type", "tiersync.approvals"}, {"format", 2}, {"approvals", good}}).dump(),
           json({{"type", "tiersync.approvals"}, {"format", "1"}, {"approvals", good}}).dump(),
           std::string(R"({"type": "tiersync.approvals", "format": 1, "approvals": [1e999]})"),
           std::string(R"({"type": "tiersync.approvals", "format": 1, "approvals": [)") +
               std::string(100000, '[') + std::string(100000, ']') + "]}",
           std::string("{\"type\": \"tiersync.approvals\", \"format\": 1, \"approvals\": "
                       "[{\"partition\": \"\xff\xfe\"}]}"),
       }) {
    SCOPED_TRACE(bytes.substr(0, 80));
    EXPECT_TRUE(decode_parent_approvals(bytes).empty());
  }
}

TEST(ParentApprovals, BadEntriesAreLeftOutNeverWidened) {
  const std::string upper = [] {
    std::string s = kA;
    for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
  }();
  const std::vector<json> bad = {
      json(5),
      json("edge/main/armv7"),
      json::array({kPart, kA, kB}),
      json::object(),
      // wrong types
      entry(5),
      entry(kPart, 5),
      entry(kPart, kA, nullptr),
      entry(kPart, kA, kB, kNow + 3600),  // a number, not a time
      entry(json::array({kPart})),
      // missing fields
      json({{"from", kA}, {"to", kB}, {"expires", proto::format_time(kNow)}}),
      json({{"partition", kPart}, {"to", kB}, {"expires", proto::format_time(kNow)}}),
      json({{"partition", kPart}, {"from", kA}, {"expires", proto::format_time(kNow)}}),
      json({{"partition", kPart}, {"from", kA}, {"to", kB}}),
      // bad hex and bad ends
      entry(kPart, upper),
      entry(kPart, kA.substr(1)),
      entry(kPart, kA + "0"),
      entry(kPart, "g" + kA.substr(1)),
      entry(kPart, kA, kB.substr(0, 63) + "z"),
      entry(kPart, ""),
      entry(kPart, "removed"),           // from is a manifest or none
      entry(kPart, kA, "none"),          // to is a manifest or removed
      entry(kPart, kA, "layout:" + kB),  // a relay's change never is a layout
      entry(kPart, "*", "*"),
      // bad partitions
      entry(""),
      entry("/edge/main/armv7"),
      entry("edge/../main"),
      entry("edge//main"),
      entry(std::string("edge/main\0x", 11)),
      // bad times
      entry(kPart, kA, kB, "tomorrow"),
      entry(kPart, kA, kB, "2026-13-01T00:00:00Z"),
      entry(kPart, kA, kB, "2026-12-01 00:00:00"),
      entry(kPart, kA, kB, ""),
  };
  for (const json& e : bad) {
    SCOPED_TRACE(e.dump());
    // Alone, and beside a good entry that must survive it.
    EXPECT_TRUE(decode_parent_approvals(document(json::array({e}))).empty());
    const auto out = decode_parent_approvals(document(json::array({e, entry()})));
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].partition, kPart);
    EXPECT_EQ(out[0].from, kA);
    EXPECT_EQ(out[0].to, kB);
  }
}

TEST(ParentApprovals, ExpiredEntriesCoverNothing) {
  const auto out = decode_parent_approvals(
      document(json::array({entry(kPart, kA, kB, proto::format_time(kNow - 1))})));
  ASSERT_LE(out.size(), 1u);
  for (const auto& a : out) EXPECT_FALSE(a.covers(kPart, kA, kB, kNow));
}

TEST(ParentApprovals, HugeListsAreBounded) {
  json list = json::array();
  for (int i = 0; i < 10000; ++i) list.push_back(entry());
  const auto out = decode_parent_approvals(document(list));
  EXPECT_EQ(out.size(), 4096u);
  // The bound is on what is kept: thousands of bad entries before a good one leave it.
  json junk = json::array();
  for (int i = 0; i < 10000; ++i) junk.push_back(entry(kPart, "bad"));
  junk.push_back(entry());
  EXPECT_EQ(decode_parent_approvals(document(junk)).size(), 1u);
}

TEST(FindCovering, TheFirstApprovalOfThisChangeUnexpired) {
  const std::vector<Approval> approvals{approval(kA, kC), approval(kA, kB, kNow),
                                        approval(kA, kB, kNow + 10), approval(kA, kB, kNow + 20)};
  const Approval* a = find_covering(approvals, kPart, kA, kB, kNow);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a, &approvals[2]);  // [1] expired at kNow
  EXPECT_EQ(find_covering(approvals, kPart, kB, kA, kNow), nullptr);
  EXPECT_EQ(find_covering(approvals, "edge/main/x86_64", kA, kB, kNow), nullptr);
  EXPECT_EQ(find_covering(approvals, kPart, kA, kB, kNow + 20), nullptr);
  EXPECT_EQ(find_covering({}, kPart, kA, kB, kNow), nullptr);
}

}  // namespace
}  // namespace tiersync::sync
