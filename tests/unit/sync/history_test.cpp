#include "daemon/sync/history.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/unit/support.h"

namespace tiersync::sync {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using unit::Contains;

constexpr std::int64_t kNow = 1'764'000'000;
constexpr std::int64_t kHour = 3600;
constexpr const char* kPart = "edge/main/x86_64";

class GuardHistoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = unit::make_temp_dir("history");
    ASSERT_FALSE(dir_.empty());
    file_ = dir_ / "guard-history.json";
  }
  void TearDown() override { fs::remove_all(dir_); }

  /// The records of `partition` in the saved file.
  json saved(const GuardHistory& h, const std::string& partition = kPart) {
    EXPECT_TRUE(h.save(file_));
    json j = json::parse(unit::read_file(file_));
    return j["partitions"].contains(partition) ? j["partitions"][partition] : json::array();
  }
  /// Loads `text` as the history file; the warning it gives, or "" for none.
  std::string load_warning(const std::string& text, GuardHistory* out = nullptr) {
    unit::write_file(file_, text);
    std::string warning;
    GuardHistory h = GuardHistory::load(file_, &warning);
    if (out) *out = h;
    return warning;
  }

  fs::path dir_;
  fs::path file_;
};

TEST_F(GuardHistoryTest, NoRecordsTheBaselineIsTheCurrentSize) {
  const GuardHistory h;
  EXPECT_EQ(h.baseline(kPart, {5, 50, 1}, kNow, 24), (PartitionSize{5, 50, 1}));
  EXPECT_FALSE(h.changed());
}

TEST_F(GuardHistoryTest, BaselineIsTheHighWaterMarkOfEachField) {
  GuardHistory h;
  h.record(kPart, {100, 1000, 1}, kNow, 24);
  h.record(kPart, {80, 5000, 2}, kNow + kHour, 24);
  h.record("edge/main/armv7", {999, 99999, 9}, kNow + kHour, 24);
  EXPECT_TRUE(h.changed());
  EXPECT_EQ(h.baseline(kPart, {10, 10, 0}, kNow + 2 * kHour, 24), (PartitionSize{100, 5000, 2}));
  // The current size counts too.
  EXPECT_EQ(h.baseline(kPart, {10, 9000, 0}, kNow + 2 * kHour, 24), (PartitionSize{100, 9000, 2}));
  EXPECT_EQ(h.baseline("edge/main/aarch64", {1, 2, 3}, kNow, 24), (PartitionSize{1, 2, 3}));
}

TEST_F(GuardHistoryTest, TheWindowEnds) {
  GuardHistory h;
  h.record(kPart, {100, 1000, 1}, kNow, 24);
  EXPECT_EQ(h.baseline(kPart, {}, kNow + 24 * kHour, 24).files, 100u) << "24 h later: inside";
  EXPECT_EQ(h.baseline(kPart, {}, kNow + 24 * kHour + 1, 24).files, 0u);
  EXPECT_EQ(h.baseline(kPart, {}, kNow + 2 * kHour, 1).files, 0u) << "a shorter window";
  EXPECT_EQ(h.baseline(kPart, {7, 0, 0}, kNow, 0).files, 7u) << "no window: the current size";
}

TEST_F(GuardHistoryTest, RecordPrunesWhatLeftTheWindow) {
  GuardHistory h;
  h.record(kPart, {100, 1000, 1}, kNow, 24);
  h.record(kPart, {50, 500, 1}, kNow + 25 * kHour, 24);
  // Gone from the history, not only from the window: a longer window no longer sees it.
  EXPECT_EQ(h.baseline(kPart, {}, kNow + 25 * kHour, 48).files, 50u);
  EXPECT_EQ(saved(h).size(), 1u);
}

TEST_F(GuardHistoryTest, RecordDropsDominatedRecords) {
  GuardHistory h;
  h.record(kPart, {10, 100, 1}, kNow, 24);
  h.record(kPart, {20, 100, 1}, kNow + 1, 24);  // covers the first in every field
  json list = saved(h);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0], json::parse("[1764000001, 20, 100, 1]"));
  // Larger in one field, smaller in another: both stay, each may be the high-water mark.
  h.record(kPart, {15, 200, 1}, kNow + 2, 24);
  EXPECT_EQ(saved(h).size(), 2u);
  // An equal record replaces the older one (it stays in the window longer).
  h.record(kPart, {15, 200, 1}, kNow + 3, 24);
  list = saved(h);
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[1][0], kNow + 3);
}

TEST_F(GuardHistoryTest, RecordsFromTheFutureLeaveOneWindowLater) {
  // Recorded while the clock said a year later; the clock is right again.
  GuardHistory h;
  h.record(kPart, {100, 1000, 1}, kNow + 365 * 24 * kHour, 24);
  EXPECT_EQ(h.baseline(kPart, {}, kNow, 24).files, 100u) << "still counts: it may be right";
  h.record(kPart, {50, 500, 1}, kNow, 24);
  EXPECT_EQ(h.baseline(kPart, {}, kNow + 24 * kHour, 24).files, 100u);
  h.record(kPart, {50, 500, 1}, kNow + 25 * kHour, 24);
  EXPECT_EQ(h.baseline(kPart, {}, kNow + 25 * kHour, 24).files, 50u) << "one window later";
}

TEST_F(GuardHistoryTest, NoWindowKeepsNoRecords) {
  GuardHistory h;
  h.record(kPart, {10, 100, 1}, kNow, 24);
  h.record(kPart, {5, 50, 1}, kNow + kHour, 0);
  EXPECT_TRUE(saved(h).empty());
  EXPECT_EQ(h.baseline(kPart, {5, 50, 1}, kNow + kHour, 24), (PartitionSize{5, 50, 1}));
}

TEST_F(GuardHistoryTest, ResetMakesTheApprovedSizeTheBaseline) {
  GuardHistory h;
  h.record(kPart, {100, 1000, 2}, kNow, 24);
  h.record(kPart, {90, 2000, 2}, kNow + kHour, 24);
  h.reset(kPart, {40, 400, 1}, kNow + 2 * kHour);
  EXPECT_EQ(h.baseline(kPart, {40, 400, 1}, kNow + 2 * kHour, 24), (PartitionSize{40, 400, 1}));
  EXPECT_EQ(saved(h).size(), 1u);
  // Later records build on it.
  h.record(kPart, {45, 300, 1}, kNow + 3 * kHour, 24);
  EXPECT_EQ(h.baseline(kPart, {}, kNow + 3 * kHour, 24), (PartitionSize{45, 400, 1}));
}

TEST_F(GuardHistoryTest, ForgetDropsThePartition) {
  GuardHistory h;
  h.forget(kPart);
  EXPECT_FALSE(h.changed()) << "nothing to forget";
  h.record(kPart, {100, 1000, 2}, kNow, 24);
  h.record("edge/main/armv7", {10, 10, 1}, kNow, 24);
  EXPECT_TRUE(h.save(file_));
  GuardHistory loaded = GuardHistory::load(file_, nullptr);
  loaded.forget(kPart);
  EXPECT_TRUE(loaded.changed());
  EXPECT_EQ(loaded.baseline(kPart, {1, 1, 0}, kNow, 24), (PartitionSize{1, 1, 0}));
  EXPECT_EQ(loaded.baseline("edge/main/armv7", {}, kNow, 24), (PartitionSize{10, 10, 1}));
  EXPECT_TRUE(saved(loaded).empty());
}

TEST_F(GuardHistoryTest, SaveAndLoadRoundTrip) {
  GuardHistory h;
  h.record(kPart, {100, 1000, 1}, kNow, 24);
  h.record(kPart, {80, 5000, 1}, kNow + kHour, 24);
  h.record(".", {3, 30, 0}, kNow, 24);
  ASSERT_TRUE(h.save(file_));
  std::string warning;
  const GuardHistory loaded = GuardHistory::load(file_, &warning);
  EXPECT_EQ(warning, "");
  EXPECT_FALSE(loaded.changed());
  EXPECT_EQ(loaded.baseline(kPart, {}, kNow + kHour, 24), (PartitionSize{100, 5000, 1}));
  EXPECT_EQ(loaded.baseline(".", {}, kNow, 24), (PartitionSize{3, 30, 0}));
  // Written atomically: no temporary file left beside it.
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir_)) files += e.path() != file_;
  EXPECT_EQ(files, 0u);
}

TEST_F(GuardHistoryTest, MissingFileIsAnEmptyHistory) {
  std::string warning;
  const GuardHistory h = GuardHistory::load(dir_ / "none.json", &warning);
  EXPECT_EQ(warning, "");
  EXPECT_EQ(h.baseline(kPart, {1, 2, 3}, kNow, 24), (PartitionSize{1, 2, 3}));
}

TEST_F(GuardHistoryTest, DamagedFileIsAWarningAndAnEmptyHistory) {
  const std::vector<std::string> damaged = {
      "",
      "not json",
      "[]",
      "{}",
      R"({"partitions": []})",
      R"({"partitions": {"edge/main/x86_64": {}}})",
      R"({"partitions": {"edge/main/x86_64": [[1764000000, 10, 100]]}})",
      R"({"partitions": {"edge/main/x86_64": [[1764000000, -10, 100, 1]]}})",
      R"({"partitions": {"edge/main/x86_64": [[1764000000, 10.5, 100, 1]]}})",
      R"({"partitions": {"edge/main/x86_64": [["2026-01-01", 10, 100, 1]]}})",
      R"({"partitions": {"edge/main/x86_64": [{"time": 1, "files": 2}]}})",
      R"({"partitions": {"edge/main/x86_64": [[1764000000, 10, 100, 1, 5]]}})",
      R"({"partitions": {"a": [[1, 1, 1, 1]], "edge/main/x86_64": [null]}})",
      "{\"partitions\": {\"edge/main/x86_64\": [[1764000000, 10, 100, 1]]",  // cut short
  };
  for (const auto& text : damaged) {
    SCOPED_TRACE(text);
    GuardHistory h;
    const std::string warning = load_warning(text, &h);
    EXPECT_TRUE(Contains(warning, file_.string()));
    EXPECT_TRUE(Contains(warning, "damaged"));
    // Nothing of it is used, not even the records that parsed.
    EXPECT_EQ(h.baseline("a", {}, 1, 24), (PartitionSize{}));
    EXPECT_EQ(h.baseline(kPart, {2, 2, 0}, kNow, 24), (PartitionSize{2, 2, 0}));
  }
  // No warning wanted: still empty, no crash.
  unit::write_file(file_, "not json");
  EXPECT_EQ(GuardHistory::load(file_, nullptr).baseline(kPart, {}, kNow, 24), PartitionSize{});
}

TEST_F(GuardHistoryTest, TooManyRecordsIsDamaged) {
  json list = json::array();
  for (int i = 0; i < 4097; ++i) list.push_back({kNow + i, 4097 - i, i, 1});
  json doc = {{"partitions", {{kPart, list}}}};
  EXPECT_TRUE(Contains(load_warning(doc.dump()), "damaged"));
  list.erase(list.begin());
  doc = {{"partitions", {{kPart, list}}}};
  GuardHistory h;
  EXPECT_EQ(load_warning(doc.dump(), &h), "");
  EXPECT_EQ(h.baseline(kPart, {}, kNow + 4096, 24).files, 4096u);
}

TEST_F(GuardHistoryTest, RecordsAreBounded) {
  // Every record larger in bytes and smaller in files than the one before: none dominates
  // another, so only the bound keeps the list finite. The oldest go first.
  GuardHistory h;
  for (std::uint64_t i = 0; i < 5000; ++i)
    h.record(kPart, {10000 - i, 1000 + i, 1}, kNow + static_cast<std::int64_t>(i), 24);
  const json list = saved(h);
  ASSERT_EQ(list.size(), 4096u);
  EXPECT_EQ(list[0][0], kNow + 5000 - 4096);
  EXPECT_EQ(h.baseline(kPart, {}, kNow + 5000, 24), (PartitionSize{10000 - 904, 5999, 1}));
  // What was saved loads again (the bound is the same).
  std::string warning;
  GuardHistory::load(file_, &warning);
  EXPECT_EQ(warning, "");
}

}  // namespace
}  // namespace tiersync::sync
