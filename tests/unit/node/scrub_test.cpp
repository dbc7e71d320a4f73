#include "daemon/node/scrub.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "daemon/ops/metrics.h"
#include "daemon/sync/state.h"
#include "proto/dsse.h"
#include "proto/keys.h"
#include "proto/manifest.h"
#include "proto/snapshot.h"
#include "tests/unit/support.h"

namespace tiersync::node {
namespace {

using Clock = ByteBudget::Clock;

constexpr std::int64_t kMtime = 1'700'000'000;

struct File {
  std::string bytes;  // the target of a symlink
  bool link = false;
  std::uint32_t mode = 0644;
};

// Deterministic bytes, different per seed.
std::string bytes_of(std::size_t size, unsigned seed) {
  std::string out(size, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : out) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return out;
}

// Writes `files` below `dir` as a tree holds them (mtime kMtime).
void materialize(const fs::path& dir, const std::map<std::string, File>& files) {
  for (const auto& [path, f] : files) {
    const fs::path p = dir / path;
    fs::create_directories(p.parent_path());
    fs::remove(p);
    if (f.link) {
      fs::create_symlink(f.bytes, p);
      continue;
    }
    unit::write_file(p, f.bytes);
    ::chmod(p.c_str(), f.mode);
    timespec times[2] = {{kMtime, 0}, {kMtime, 0}};
    ::utimensat(AT_FDCWD, p.c_str(), times, 0);
  }
}

/// A mirror's state_dir with an applied snapshot, its tree, and a parent tree (file://) holding
/// the same files, for repairs.
class ScrubTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = unit::make_temp_dir("scrub_test");
    ASSERT_FALSE(dir_.empty());
    config_.role = ops::Role::kMirror;
    config_.name = "mirror";
    config_.tree = dir_ / "tree";
    config_.state_dir = dir_ / "state";
    config_.upstream.url = "file://" + (dir_ / "parent").string();
    files_ = {
        {"edge/main/x86_64/a-1.0.apk", {bytes_of(300'000, 1)}},
        {"edge/main/x86_64/b-1.0.apk", {bytes_of(70'000, 2)}},
        {"edge/main/x86_64/c-1.0.apk", {bytes_of(5'000, 3)}},
        {"edge/main/x86_64/APKINDEX.tar.gz", {bytes_of(900, 4)}},
        {"edge/community/x86_64/d-1.0.apk", {bytes_of(40'000, 5)}},
        {"last-updated", {"20261129\n", false, 0664}},
        {"latest", {"edge", true}},
    };
    materialize(config_.tree, files_);
    materialize(dir_ / "parent", files_);
    ASSERT_NO_FATAL_FAILURE(apply(files_, 1));
  }
  void TearDown() override { fs::remove_all(dir_); }

  /// Records `files` as the applied snapshot `serial` (manifests stored, envelope saved).
  void apply(const std::map<std::string, File>& files, std::uint64_t serial) {
    sync::StateStore state(config_.state_dir, config_.tree);
    ASSERT_TRUE(state.open());
    std::map<std::string, proto::Manifest> parts;
    for (const auto& [path, f] : files) {
      std::string part = std::count(path.begin(), path.end(), '/') >= 3
                             ? path.substr(0, path.rfind('/'))
                             : std::string(".");
      parts[part].partition = part;
      parts[part].entries.push_back(
          f.link ? proto::Entry::symlink(path, f.bytes)
                 : proto::Entry::file(path, f.bytes.size(), proto::sha256(f.bytes), kMtime, f.mode,
                                      path.ends_with("APKINDEX.tar.gz")));
    }
    proto::Snapshot s;
    s.origin = "origin";
    s.serial = serial;
    s.created = kMtime;
    s.expires = kMtime + 1'000'000'000;
    s.layout = "{release}/{repo}/{arch}";
    for (auto& [name, m] : parts) {
      std::sort(m.entries.begin(), m.entries.end(),
                [](const auto& a, const auto& b) { return a.path() < b.path(); });
      const std::string bytes = proto::encode_manifest(m);
      ASSERT_TRUE(state.store_manifest(proto::sha256(bytes), bytes));
      s.partitions[name] = {proto::sha256(bytes), m.entries.size(), m.total_bytes()};
    }
    static auto key = proto::PrivateKey::generate();
    ASSERT_TRUE(key);
    ASSERT_TRUE(state.save_applied(proto::encode_envelope(
        proto::sign_envelope(proto::kSnapshotPayloadType, proto::encode_snapshot(s), {*key}))));
  }

  ScrubOptions unlimited(bool repair) {
    ScrubOptions o;
    o.bytes_per_second = 0;
    o.repair = repair;
    return o;
  }

  /// Every kind of damage the scrubber must see; returns path -> the problem expected.
  std::map<std::string, std::string> damage_tree() {
    const fs::path t = config_.tree;
    // A flipped byte, size and mtime kept.
    std::string a = files_.at("edge/main/x86_64/a-1.0.apk").bytes;
    a[a.size() / 2] ^= 0x20;
    materialize(t, {{"edge/main/x86_64/a-1.0.apk", {a}}});
    // A truncated file.
    ::truncate((t / "edge/main/x86_64/b-1.0.apk").c_str(), 1000);
    // A deleted file.
    fs::remove(t / "edge/main/x86_64/APKINDEX.tar.gz");
    // A file replaced by a symlink to a copy of itself outside the tree: never followed.
    unit::write_file(dir_ / "outside/c", files_.at("edge/main/x86_64/c-1.0.apk").bytes);
    fs::remove(t / "edge/main/x86_64/c-1.0.apk");
    fs::create_symlink(dir_ / "outside/c", t / "edge/main/x86_64/c-1.0.apk");
    // A symlink pointing elsewhere.
    fs::remove(t / "latest");
    fs::create_symlink("edge/main", t / "latest");
    // A folder on the way replaced by a symlink to an identical copy.
    fs::rename(t / "edge/community", dir_ / "outside/community");
    fs::create_symlink(dir_ / "outside/community", t / "edge/community");
    return {{"edge/main/x86_64/a-1.0.apk", "content"},
            {"edge/main/x86_64/b-1.0.apk", "content"},
            {"edge/main/x86_64/APKINDEX.tar.gz", "missing"},
            {"edge/main/x86_64/c-1.0.apk", "type"},
            {"latest", "type"},
            {"edge/community/x86_64/d-1.0.apk", "missing"}};
  }

  static std::map<std::string, std::string> listed(const ScrubRecord& r) {
    std::map<std::string, std::string> out;
    for (const auto& d : r.damaged) out[d.path] = d.problem;
    return out;
  }

  fs::path dir_;
  ops::Config config_;
  std::map<std::string, File> files_;
};

TEST_F(ScrubTest, ACleanTreePassesWithNothingFound) {
  auto& m = ops::process_metrics();
  const auto checked = m.scrub_files_checked.load(), passes = m.scrub_passes.load();
  Scrubber scrubber(config_, unlimited(true));
  ASSERT_TRUE(scrubber.run_pass({}));
  EXPECT_TRUE(scrubber.record().damaged.empty());
  EXPECT_EQ(scrubber.record().passes, 1u);
  EXPECT_EQ(scrubber.record().last_pass_files, files_.size());
  EXPECT_GT(scrubber.record().last_pass_end, 0);
  EXPECT_EQ(m.scrub_files_checked.load() - checked, files_.size());
  EXPECT_EQ(m.scrub_passes.load() - passes, 1u);
  // Saved for status and for the next start.
  EXPECT_EQ(load_scrub_record(config_.state_dir).passes, 1u);
}

TEST_F(ScrubTest, FindsEveryKindOfDamageWithoutFollowingSymlinks) {
  const auto expected = damage_tree();
  const auto found_before = ops::process_metrics().scrub_damaged_found.load();
  Scrubber scrubber(config_, unlimited(/*repair=*/false));
  ASSERT_TRUE(scrubber.run_pass({}));
  EXPECT_EQ(listed(scrubber.record()), expected);
  EXPECT_EQ(scrubber.record().found, expected.size());
  EXPECT_EQ(ops::process_metrics().scrub_damaged_found.load() - found_before, expected.size());
  EXPECT_EQ(listed(load_scrub_record(config_.state_dir)), expected) << "status reads the record";
  // The symlinked folder's files were not read through it.
  EXPECT_LT(scrubber.record().last_pass_bytes, 300'000u + 70'000u + 5'000u + 40'000u);
}

TEST_F(ScrubTest, RepairsFromTheParent) {
  const auto expected = damage_tree();
  const auto repaired_before = ops::process_metrics().scrub_repaired.load();
  Scrubber scrubber(config_, unlimited(/*repair=*/true));
  ASSERT_TRUE(scrubber.run_pass({}));
  EXPECT_TRUE(scrubber.record().damaged.empty()) << scrubber.record().damaged.front().repair;
  EXPECT_EQ(scrubber.record().repaired, expected.size());
  EXPECT_EQ(ops::process_metrics().scrub_repaired.load() - repaired_before, expected.size());
  for (const auto& [path, f] : files_) {
    const fs::path p = config_.tree / path;
    if (f.link) {
      EXPECT_EQ(fs::read_symlink(p).string(), f.bytes) << path;
    } else {
      EXPECT_FALSE(fs::is_symlink(p)) << path;
      EXPECT_EQ(unit::read_file(p), f.bytes) << path;
    }
  }
  EXPECT_FALSE(fs::is_symlink(config_.tree / "edge/community")) << "a real folder again";
  // The next pass finds nothing left.
  ASSERT_TRUE(scrubber.run_pass({}));
  EXPECT_TRUE(scrubber.record().damaged.empty());
  EXPECT_EQ(scrubber.record().found, expected.size());
}

TEST_F(ScrubTest, AParentServingOtherContentLeavesTheDamageListed) {
  damage_tree();
  // The parent moved on: its copy no longer has the applied hash.
  unit::write_file(dir_ / "parent/edge/main/x86_64/a-1.0.apk", "something newer");
  Scrubber scrubber(config_, unlimited(/*repair=*/true));
  ASSERT_TRUE(scrubber.run_pass({}));
  ASSERT_EQ(scrubber.record().damaged.size(), 1u);
  EXPECT_EQ(scrubber.record().damaged[0].path, "edge/main/x86_64/a-1.0.apk");
  EXPECT_TRUE(unit::Contains(scrubber.record().damaged[0].repair, "does not match"));
  EXPECT_EQ(scrubber.record().repaired, 5u);
}

TEST_F(ScrubTest, AConcurrentApplyIsARecheckNotDamage) {
  // The file changes in the tree, and an "apply" records the new content before the scrubber
  // confirms: nothing is damage.
  const std::string newer = bytes_of(12'345, 9);
  materialize(config_.tree, {{"edge/main/x86_64/b-1.0.apk", {newer}}});
  auto next = files_;
  next["edge/main/x86_64/b-1.0.apk"] = {newer};
  ScrubOptions o = unlimited(/*repair=*/true);
  int applies = 0;
  o.before_confirm = [&] {
    if (applies++ == 0) apply(next, 2);
  };
  Scrubber scrubber(config_, o);
  ASSERT_TRUE(scrubber.run_pass({}));
  EXPECT_EQ(applies, 1);
  EXPECT_TRUE(scrubber.record().damaged.empty());
  EXPECT_EQ(scrubber.record().found, 0u);
  EXPECT_EQ(scrubber.record().repaired, 0u);
  EXPECT_EQ(unit::read_file(config_.tree / "edge/main/x86_64/b-1.0.apk"), newer)
      << "the apply's content stays";
}

TEST_F(ScrubTest, ARestartedPassGoesOnWhereItStopped) {
  // A budget of 1 byte a second: the first sleep comes once the initial burst is spent, and it
  // stops the pass.
  std::stop_source stop;
  ScrubOptions o;
  o.bytes_per_second = 1;
  o.sleep = [&](Clock::duration, const std::stop_token&) {
    stop.request_stop();
    return false;
  };
  {
    Scrubber first(config_, o);
    EXPECT_FALSE(first.run_pass(stop.get_token()));
  }
  const ScrubRecord saved = load_scrub_record(config_.state_dir);
  ASSERT_FALSE(saved.after_path.empty());
  ASSERT_LT(saved.pass_files, files_.size());
  const auto checked = ops::process_metrics().scrub_files_checked.load();
  Scrubber second(config_, unlimited(true));
  ASSERT_TRUE(second.run_pass({}));
  EXPECT_EQ(ops::process_metrics().scrub_files_checked.load() - checked,
            files_.size() - saved.pass_files)
      << "the entries checked before the stop are not checked again";
  EXPECT_EQ(second.record().last_pass_files, files_.size());
}

TEST_F(ScrubTest, ANewSnapshotIsPickedUpAtTheNextEntry) {
  std::stop_source stop;
  ScrubOptions o;
  o.bytes_per_second = 1;
  o.sleep = [&](Clock::duration, const std::stop_token&) {
    stop.request_stop();
    return false;
  };
  Scrubber scrubber(config_, o);
  EXPECT_FALSE(scrubber.run_pass(stop.get_token()));
  // A new snapshot adds a file after the position and one before it.
  auto next = files_;
  next["edge/main/x86_64/zz-1.0.apk"] = {"new"};
  next["alpha"] = {"new root file"};
  materialize(config_.tree, next);
  apply(next, 2);
  ScrubOptions fast = unlimited(false);
  Scrubber resumed(config_, fast);
  ASSERT_TRUE(resumed.run_pass({}));
  EXPECT_TRUE(resumed.record().damaged.empty());
  EXPECT_LT(resumed.record().last_pass_files, next.size()) << "not started over";
}

TEST(ByteBudgetTest, NeverHandsOutMoreThanOneRefillBetweenSleeps) {
  // A clock of our own, moved on by the sleeps only.
  Clock::time_point now{std::chrono::seconds(1)};
  constexpr std::uint64_t kRate = 1'000'000;
  std::uint64_t taken_since_sleep = 0, most_between_sleeps = 0, sleeps = 0;
  ByteBudget budget(
      kRate, [&] { return now; },
      [&](Clock::duration d, const std::stop_token&) {
        most_between_sleeps = std::max(most_between_sleeps, taken_since_sleep);
        taken_since_sleep = 0;
        ++sleeps;
        now += d;
        return true;
      });
  const auto start = now;
  std::uint64_t total = 0;
  for (int i = 0; i < 200; ++i) {
    const std::uint64_t chunk = (i % 3 == 0) ? ByteBudget::kBurst : 4096 * (i % 7 + 1);
    ASSERT_TRUE(budget.take(chunk, {}));
    total += chunk;
    taken_since_sleep += chunk;
  }
  const double elapsed = std::chrono::duration<double>(now - start).count();
  EXPECT_GT(sleeps, 0u);
  EXPECT_LE(most_between_sleeps, ByteBudget::kBurst) << "a refill never exceeds the bucket";
  EXPECT_LE(static_cast<double>(total), ByteBudget::kBurst + kRate * elapsed + 1);
  EXPECT_GE(static_cast<double>(total), kRate * elapsed * 0.99) << "and the rate is used";
}

TEST_F(ScrubTest, APassReadsAtTheConfiguredRate) {
  Clock::time_point now{std::chrono::seconds(1)};
  ScrubOptions o = unlimited(false);
  o.bytes_per_second = 100'000;
  o.now = [&] { return now; };
  o.sleep = [&](Clock::duration d, const std::stop_token&) {
    now += d;
    return true;
  };
  const auto start = now;
  Scrubber scrubber(config_, o);
  ASSERT_TRUE(scrubber.run_pass({}));
  const double elapsed = std::chrono::duration<double>(now - start).count();
  const std::uint64_t bytes = scrubber.record().last_pass_bytes;
  EXPECT_GE(bytes, 415'000u);
  // Every read is paid for, at least a block per file: bytes <= burst + rate * time.
  EXPECT_LE(static_cast<double>(bytes), ByteBudget::kBurst + 100'000 * elapsed);
}

TEST(ByteBudgetTest, AStopCutsTheWaitShort) {
  ByteBudget budget(1);  // one byte a second: the second take would wait days
  ASSERT_TRUE(budget.take(ByteBudget::kBurst, {}));
  std::jthread waiter([&](std::stop_token stop) { EXPECT_FALSE(budget.take(4096, stop)); });
  waiter.request_stop();
  waiter.join();  // returns: the stop woke the sleep
}

}  // namespace
}  // namespace tiersync::node
