// The guard made airtight (docs/guard.md): every way issue 13 found to get damage past it, each
// tried through tier0 and two relays, one trusting upstream approvals and one not. Each test
// asserts the hold (exit 3, the partition and the rule `status --json` names) or the refusal, and
// that no node lost a file: every tree is compared with the model of what it must hold. The
// ordinary days of the benchmark's mutations pass without a hold.
//
// Tests named ...PerPartition... need relays that progress per partition (docs/protocol.md,
// pins); tests named ...WithTheDocumentedLimits need the guard's newer configuration keys
// (docs/configuration.md). The rest runs on the guard as it is.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <random>
#include <sstream>

#include "proto/digest.h"
#include "proto/dsse.h"
#include "tests/integration/fake_parent.h"
#include "tests/integration/network_fixture.h"
#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

constexpr int kFailed = 1;

// ---------------------------------------------------------------------------------------------
// Tree edits

/// `partition` of `from` put back into `model` as it was there.
void restore_partition(TreeModel& model, const TreeModel& from, std::string_view partition) {
  remove_partition(model, partition);
  for (const auto& path : paths_in(from, partition)) model[path] = from.at(path);
}

std::string index_of(std::string_view partition) {
  return std::string(partition) + "/" + std::string(kIndexName);
}

/// A builder's `cp` over an existing file: the same inode, new bytes (and the model's mtime).
void write_in_place(const fs::path& file, std::string_view bytes, std::int64_t mtime) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOFOLLOW);
  ASSERT_GE(fd, 0) << file << ": " << std::strerror(errno);
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size())) << file;
  const timespec times[2] = {{mtime, 0}, {mtime, 0}};
  EXPECT_EQ(::futimens(fd, times), 0) << file;
  ::close(fd);
}

ino_t inode_of(const fs::path& file) {
  struct stat st {};
  EXPECT_EQ(::lstat(file.c_str(), &st), 0) << file << ": " << std::strerror(errno);
  return st.st_ino;
}

/// The hex SHA-256 of `partition`'s manifest in the snapshot published in `tree`.
std::string manifest_hex(const fs::path& tree, const std::string& partition) {
  const proto::Snapshot s = read_published_snapshot(tree);
  auto it = s.partitions.find(partition);
  return it == s.partitions.end() ? std::string("absent") : proto::to_hex(it->second.manifest);
}

// ---------------------------------------------------------------------------------------------
// A benchmark-like tree (tests/bench/gen_tree.py, scaled down): package sizes log-uniform, a
// mutation replaces packages (the old name deleted, the next -rN written) and rewrites the
// touched partitions' indexes and last-updated.

class BenchTree {
 public:
  BenchTree(const std::vector<std::string>& partitions, int packages, std::uint64_t seed)
      : rng_(seed) {
    for (const auto& part : partitions) {
      for (int i = 0; i < packages; ++i) {
        char name[64];
        std::snprintf(name, sizeof name, "pkg%03d-1.%d-r0.apk", i, i % 9);
        put(part + "/" + name, kBaseMtime + i);
      }
      rebuild_index(model, part, kBaseMtime + 500);
    }
    touch_last_updated(model, kBaseMtime + 600);
  }

  /// Replaces `count` packages chosen at random among `within` (every partition when empty).
  void replace(std::size_t count, const std::vector<std::string>& within = {}) {
    ++step_;
    const std::int64_t now = kBaseMtime + 3600 * step_;
    std::vector<std::string> packages;
    for (const auto& part : partitions_of(model)) {
      if (part == kRoot) continue;
      if (!within.empty() && std::find(within.begin(), within.end(), part) == within.end())
        continue;
      for (const auto& p : packages_in(model, part)) packages.push_back(p);
    }
    std::set<std::string> touched;
    for (std::size_t i = 0; i < count && !packages.empty(); ++i) {
      const std::size_t pick = static_cast<std::size_t>(rng_() % packages.size());
      const std::string old = packages[pick];
      packages.erase(packages.begin() + static_cast<std::ptrdiff_t>(pick));
      // pkgNNN-1.V-rK.apk -> pkgNNN-1.V-rK+1.apk
      const auto r = old.rfind("-r");
      const int release = std::stoi(old.substr(r + 2));
      model.erase(old);
      put(old.substr(0, r) + "-r" + std::to_string(release + 1) + ".apk", now);
      touched.insert(partition_of(old));
    }
    for (const auto& part : touched) rebuild_index(model, part, now);
    touch_last_updated(model, now + 1);
  }

  std::size_t packages() const {
    std::size_t n = 0;
    for (const auto& part : partitions_of(model))
      if (part != kRoot) n += packages_in(model, part).size();
    return n;
  }

  TreeModel model;

 private:
  void put(const std::string& path, std::int64_t mtime) {
    // 128 B .. 32 KiB, log-uniform (gen_tree.py's 1 KiB .. 16 MiB at a smaller scale); the
    // double is made from the generator's bits, the same on every standard library.
    const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
    const auto size = static_cast<std::size_t>(std::exp(std::log(128.0) + u * std::log(256.0)));
    std::string bytes = "tiersync-bench " + path + "\n";
    const std::uint64_t fill = rng_();
    while (bytes.size() < size)
      bytes.push_back(static_cast<char>('a' + (fill + bytes.size()) % 26));
    bytes.resize(std::max(size, bytes.size()));
    model[path] = FileSpec{bytes, mtime, 0644, false};
  }

  std::mt19937_64 rng_;
  int step_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Assertions

/// `status` lists `partition` as held by `rule`, with every field of a held entry.
::testing::AssertionResult HeldBy(const json& status, std::string_view partition,
                                  std::string_view rule) {
  const json h = held_entry(status, partition);
  if (!h.is_object())
    return ::testing::AssertionFailure() << partition << " is not held:\n" << status.dump(2);
  std::string missing;
  for (const char* key : {"partition", "rule", "deleted", "files", "lost", "of", "ratio", "limit",
                          "candidate", "from", "to", "stale"})
    if (!h.contains(key)) missing += std::string(" ") + key;
  if (!missing.empty())
    return ::testing::AssertionFailure() << "the held entry lacks" << missing << ": " << h.dump();
  if (!h["rule"].is_string() || h["rule"].get<std::string>() != rule)
    return ::testing::AssertionFailure() << partition << " is held by rule " << h["rule"].dump()
                                         << ", not \"" << rule << "\": " << h.dump();
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------------
// The fixture: tier0, a relay trusting upstream approvals and one that does not, both mirrors
// of tier0 over file://.

class GuardTest : public NetworkTest {
 protected:
  GuardTest() : NetworkTest("tiersync-guard") {}
  void SetUp() override {
    NetworkTest::SetUp();
    configure();
  }

  /// (Re)writes the three nodes' configurations with these guard settings (null: defaults).
  void configure(const json& origin_guard = nullptr, const json& relay_guard = nullptr) {
    tier0_ = make_tier0(origin_guard);
    json trusting = relay_guard.is_null() ? json::object() : relay_guard;
    json cautious = trusting;
    trusting["trust_upstream_approvals"] = true;
    cautious["trust_upstream_approvals"] = false;
    trusting_ = relay("trusting", trusting);
    cautious_ = relay("cautious", cautious);
  }

  Node relay(const std::string& name, const json& guard, const std::string& parent_url = "") {
    return make_relay(name, guard, parent_url);
  }

  std::vector<const Node*> relays() const { return {&trusting_, &cautious_}; }

  /// The source becomes `model`; tier0 and both relays (and `more`) pass without a hold and hold
  /// exactly it.
  void publish_and_sync(const TreeModel& model, const std::vector<const Node*>& more = {}) {
    std::vector<const Node*> nodes = relays();
    nodes.insert(nodes.end(), more.begin(), more.end());
    NetworkTest::publish_and_sync(tier0_, model, nodes);
  }

  /// The source becomes `model`; tier0 must hold (exit 3). Returns its status.
  json tier0_holds(const TreeModel& model) {
    materialize(model, source_);
    last_run_ = tier0_.once();
    EXPECT_TRUE(Exited(last_run_, kHeld)) << "tier0 must hold";
    return tier0_.status();
  }

  /// Each relay runs once and must end without a hold holding `model`.
  void relays_keep(const TreeModel& model) {
    for (const Node* n : relays()) {
      EXPECT_TRUE(Exited(n->once(), 0)) << n->name;
      EXPECT_TRUE(TreeMatches(n->tree(), model)) << n->name << " must lose nothing";
    }
  }

  Node tier0_, trusting_, cautious_;
  RunResult last_run_;
};

// ---------------------------------------------------------------------------------------------
// Issue 13, "Why" 1: an approval outlives what it approved. An approval names the change it was
// given for (the published manifest to "removed"), is used up by it, and covers nothing after.

TEST_F(GuardTest, ApprovedRemovalDoesNotCoverThePartitionRemovedAgainLater) {
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));
  const std::string armv7 = "edge/main/armv7", aarch64 = "edge/main/aarch64";
  const std::string armv7_v1 = manifest_hex(tier0_.tree(), armv7);

  TreeModel gutted = v1;
  remove_partition(gutted, armv7);
  remove_partition(gutted, aarch64);
  json st = tier0_holds(gutted);
  EXPECT_TRUE(HeldBy(st, armv7, "deleted"));
  EXPECT_TRUE(HeldBy(st, aarch64, "deleted"));
  EXPECT_EQ(held_entry(st, armv7).value("from", ""), armv7_v1) << st.dump(2);
  EXPECT_EQ(held_entry(st, armv7).value("to", ""), "removed") << st.dump(2);

  ASSERT_TRUE(Exited(tier0_.ctl({"approve", armv7}), 0));
  ASSERT_TRUE(Exited(tier0_.once(), kHeld)) << "aarch64 stays held";
  TreeModel published = gutted;
  restore_partition(published, v1, aarch64);
  EXPECT_TRUE(TreeMatches(tier0_.tree(), published));
  {
    const proto::Snapshot s = read_published_snapshot(tier0_.tree());
    ASSERT_TRUE(s.approved_deletions.count(armv7)) << "the approval goes out with the publish";
    EXPECT_EQ(s.approved_deletions.at(armv7).from, armv7_v1);
    EXPECT_EQ(s.approved_deletions.at(armv7).to, "removed");
    EXPECT_FALSE(s.approved_deletions.count(aarch64));
  }
  ASSERT_TRUE(Exited(trusting_.once(), 0));
  EXPECT_TRUE(TreeMatches(trusting_.tree(), published));
  ASSERT_TRUE(Exited(cautious_.once(), kHeld));
  EXPECT_TRUE(HeldBy(cautious_.status(), armv7, "deleted"));
  EXPECT_TRUE(TreeMatches(cautious_.tree(), v1));

  // armv7 comes back with 30 new files: new at tier0, nothing to hold.
  TreeModel recreated = gutted;
  add_partition(recreated, armv7, 29, 77);
  materialize(recreated, source_);
  ASSERT_TRUE(Exited(tier0_.once(), kHeld)) << "aarch64 is still held";
  TreeModel published2 = recreated;
  restore_partition(published2, v1, aarch64);
  EXPECT_TRUE(TreeMatches(tier0_.tree(), published2));
  const std::string armv7_v2 = manifest_hex(tier0_.tree(), armv7);
  EXPECT_FALSE(read_published_snapshot(tier0_.tree()).approved_deletions.count(armv7))
      << "an upstream approval is carried only while its partition stays as approved";
  ASSERT_TRUE(Exited(trusting_.once(), 0));
  EXPECT_TRUE(TreeMatches(trusting_.tree(), published2));

  // ... and is removed again: a new change, held, whatever was approved before.
  st = tier0_holds(gutted);
  EXPECT_EQ(last_run_.err.find("approved deletion"), std::string::npos) << last_run_.describe();
  EXPECT_TRUE(HeldBy(st, armv7, "deleted"));
  const json h = held_entry(st, armv7);
  EXPECT_EQ(h.value("deleted", json()), 30) << h.dump();
  EXPECT_EQ(h.value("files", json()), 30) << h.dump();
  EXPECT_EQ(h.value("from", ""), armv7_v2) << h.dump();
  EXPECT_TRUE(TreeMatches(tier0_.tree(), published2));
  ASSERT_TRUE(Exited(trusting_.once(), 0));
  EXPECT_TRUE(TreeMatches(trusting_.tree(), published2)) << "the trusting relay loses nothing";
  ASSERT_TRUE(Exited(cautious_.once(), kHeld));
  EXPECT_TRUE(TreeMatches(cautious_.tree(), v1));
}

// Issue 13, "Why" 2: an upstream approval covers a range, not a decision. It names the approved
// change (from, to): a relay that was away applies it only from that manifest to that one, and
// later unapproved deletions are judged on their own.

TEST_F(GuardTest, UpstreamApprovalCoversTheApprovedChangeNotTheSerialsAfterIt) {
  const std::string part = "edge/main/riscv64";
  TreeModel v1 = make_sample();
  add_partition(v1, part, 99, 21);  // 100 files
  // A third relay, trusting too, that runs at every serial: the approval does reach it.
  const Node punctual = relay("punctual", {{"trust_upstream_approvals", true}});
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1, {&punctual}));
  const std::string from = manifest_hex(tier0_.tree(), part);

  // The operator approves deleting 30 files (serial 2).
  TreeModel cut30 = v1;
  remove_packages(cut30, part, 30, kBaseMtime + 5000);
  json st = tier0_holds(cut30);
  EXPECT_TRUE(HeldBy(st, part, "deleted"));
  EXPECT_EQ(held_entry(st, part).value("lost", json()), 30) << st.dump(2);
  ASSERT_TRUE(Exited(tier0_.ctl({"approve", part}), 0));
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  const proto::Snapshot s2 = read_published_snapshot(tier0_.tree());
  ASSERT_TRUE(s2.approved_deletions.count(part));
  EXPECT_EQ(s2.approved_deletions.at(part).from, from);
  EXPECT_EQ(s2.approved_deletions.at(part).to, manifest_hex(tier0_.tree(), part));
  ASSERT_TRUE(Exited(punctual.once(), 0)) << "the approval covers exactly its change";
  EXPECT_TRUE(TreeMatches(punctual.tree(), cut30));

  // 10 more go without approval (serial 3): within every limit, from the approved baseline.
  TreeModel cut40 = cut30;
  ASSERT_LT(remove_smallest_packages(cut40, part, 10, kBaseMtime + 5001), 0.2);
  materialize(cut40, source_);
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  EXPECT_FALSE(read_published_snapshot(tier0_.tree()).approved_deletions.count(part))
      << "the partition moved past the approved manifest: the approval is not carried";
  ASSERT_TRUE(Exited(punctual.once(), 0));
  EXPECT_TRUE(TreeMatches(punctual.tree(), cut40));

  // The relays still at serial 1 see 40 of 100 files deleted, which nobody approved.
  for (const Node* n : relays()) {
    ASSERT_TRUE(Exited(n->once(), kHeld)) << n->name;
    json rs = n->status();
    EXPECT_TRUE(HeldBy(rs, part, "deleted")) << n->name;
    EXPECT_EQ(held_entry(rs, part).value("deleted", json()), 40) << n->name;
    EXPECT_EQ(held_entry(rs, part).value("files", json()), 100) << n->name;
    EXPECT_TRUE(TreeMatches(n->tree(), v1)) << n->name;
  }

  // 11 more: each step small, the day's loss is not (21 of the 70 files approved this morning).
  TreeModel cut51 = cut40;
  remove_smallest_packages(cut51, part, 11, kBaseMtime + 5002);
  st = tier0_holds(cut51);
  EXPECT_TRUE(HeldBy(st, part, "window"));
  EXPECT_EQ(held_entry(st, part).value("lost", json()), 21) << st.dump(2);
  EXPECT_EQ(held_entry(st, part).value("of", json()), 70) << st.dump(2);
  EXPECT_TRUE(TreeMatches(tier0_.tree(), cut40));
  for (const Node* n : relays()) {
    ASSERT_TRUE(Exited(n->once(), kHeld)) << n->name;
    EXPECT_TRUE(TreeMatches(n->tree(), v1)) << n->name;
  }
  ASSERT_TRUE(Exited(punctual.once(), 0));
  EXPECT_TRUE(TreeMatches(punctual.tree(), cut40));
}

// "... and overrides a relay's stricter per-partition limits": it does not (docs/guard.md,
// "Upstream approvals at a relay").
TEST_F(GuardTest, UpstreamApprovalDoesNotOverrideARelaysStricterPartitionLimit) {
  const Node strict =
      relay("strict", {{"trust_upstream_approvals", true},
                       {"partitions", {{"edge/community/*", {{"max_delete_ratio", 0.1}}}}}});
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1, {&strict}));
  const std::string part = "edge/community/armv7";
  TreeModel purge = v1;
  remove_partition(purge, part);
  tier0_holds(purge);
  ASSERT_TRUE(Exited(tier0_.ctl({"approve", part}), 0));
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  ASSERT_TRUE(Exited(trusting_.once(), 0));
  EXPECT_TRUE(TreeMatches(trusting_.tree(), purge));
  for (const Node* n : std::vector<const Node*>{&cautious_, &strict}) {
    ASSERT_TRUE(Exited(n->once(), kHeld)) << n->name;
    EXPECT_TRUE(HeldBy(n->status(), part, "deleted")) << n->name;
    EXPECT_TRUE(TreeMatches(n->tree(), v1)) << n->name;
  }
}

// Issue 13, "Why" 3: damage that is not a deletion. Emptied files, files shrunk or turned into
// symlinks, a lost or truncated index, the root partition's symlink retargeted or removed: each
// is held, with the rule that saw it (docs/guard.md, "The rules"); a relay measures the same.

TEST_F(GuardTest, DamageThatIsNotADeletionIsHeldByTheRuleThatSeesIt) {
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));
  const std::uint64_t s1 = read_published_snapshot(tier0_.tree()).serial;

  TreeModel damaged = v1;
  // Every package of edge/main/x86_64 truncated to 0 bytes, its index intact.
  for (const auto& p : packages_in(v1, "edge/main/x86_64")) damaged[p].bytes.clear();
  // Every file of edge/community/x86_64 truncated to 0 bytes, the index too.
  for (const auto& p : paths_in(v1, "edge/community/x86_64")) damaged[p].bytes.clear();
  // Every package of edge/main/aarch64 a symlink to its first one.
  const auto aarch64 = packages_in(v1, "edge/main/aarch64");
  for (std::size_t i = 1; i < aarch64.size(); ++i)
    damaged[aarch64[i]] =
        FileSpec{fs::path(aarch64[0]).filename().string(), 0, 0777, /*link=*/true};
  // Only the index of edge/community/aarch64 deleted (1 of its files).
  damaged.erase(index_of("edge/community/aarch64"));
  // The index of edge/main/armv7 cut to a third (an interrupted upload).
  damaged[index_of("edge/main/armv7")].bytes.resize(
      v1.at(index_of("edge/main/armv7")).bytes.size() / 3);
  // Every package of edge/community/armv7 cut to a third.
  for (const auto& p : packages_in(v1, "edge/community/armv7"))
    damaged[p].bytes.resize(v1.at(p).bytes.size() / 3);
  // The root symlink `latest` retargeted.
  damaged["latest"] = FileSpec{"edge/main", 0, 0777, /*link=*/true};

  json st = tier0_holds(damaged);
  EXPECT_TRUE(HeldBy(st, "edge/main/x86_64", "deleted"));
  EXPECT_EQ(held_entry(st, "edge/main/x86_64").value("lost", json()),
            packages_in(v1, "edge/main/x86_64").size())
      << "emptied files count as damaged";
  EXPECT_EQ(held_entry(st, "edge/main/x86_64").value("deleted", json()), 0);
  EXPECT_TRUE(HeldBy(st, "edge/community/x86_64", "deleted"));
  EXPECT_TRUE(HeldBy(st, "edge/main/aarch64", "deleted"));
  EXPECT_EQ(held_entry(st, "edge/main/aarch64").value("lost", json()), aarch64.size() - 1);
  EXPECT_TRUE(HeldBy(st, "edge/community/aarch64", "index"));
  EXPECT_EQ(held_entry(st, "edge/community/aarch64").value("deleted", json()), 1);
  EXPECT_TRUE(HeldBy(st, "edge/main/armv7", "index"));
  EXPECT_TRUE(HeldBy(st, "edge/community/armv7", "deleted"));
  EXPECT_TRUE(HeldBy(st, ".", "root"));
  EXPECT_EQ(held_partitions(st).size(), 7u) << st.dump(2);
  {
    // `tiersyncctl status` shows the rule of each hold on the partition's line.
    const RunResult text = tier0_.ctl({"status"});
    EXPECT_TRUE(Exited(text, 0));
    EXPECT_TRUE(Mentions(text, "RULE"));
    std::istringstream lines(text.out);
    std::string line;
    int rows = 0;
    while (std::getline(lines, line)) {
      if (line.find("edge/community/aarch64 ") != std::string::npos) {
        EXPECT_NE(line.find(" index "), std::string::npos) << line;
        ++rows;
      }
      if (line.find("edge/main/aarch64 ") != std::string::npos) {
        EXPECT_NE(line.find(" deleted "), std::string::npos) << line;
        ++rows;
      }
    }
    EXPECT_EQ(rows, 2) << text.out;
  }
  EXPECT_EQ(read_published_snapshot(tier0_.tree()).serial, s1) << "nothing to publish";
  EXPECT_TRUE(TreeMatches(tier0_.tree(), v1));
  relays_keep(v1);

  // `latest` removed.
  TreeModel no_latest = v1;
  no_latest.erase("latest");
  st = tier0_holds(no_latest);
  EXPECT_TRUE(HeldBy(st, ".", "root"));
  EXPECT_EQ(held_partitions(st), std::set<std::string>{"."}) << st.dump(2);
  EXPECT_TRUE(TreeMatches(tier0_.tree(), v1));
  relays_keep(v1);

  // The truncation of edge/main/x86_64 approved at tier0: the trusting relay follows, the other
  // measures the same damage and holds it.
  TreeModel emptied = v1;
  for (const auto& p : packages_in(v1, "edge/main/x86_64")) emptied[p].bytes.clear();
  tier0_holds(emptied);
  ASSERT_TRUE(Exited(tier0_.ctl({"approve", "edge/main/x86_64"}), 0));
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  EXPECT_TRUE(TreeMatches(tier0_.tree(), emptied));
  ASSERT_TRUE(Exited(trusting_.once(), 0));
  EXPECT_TRUE(TreeMatches(trusting_.tree(), emptied));
  ASSERT_TRUE(Exited(cautious_.once(), kHeld));
  EXPECT_TRUE(HeldBy(cautious_.status(), "edge/main/x86_64", "deleted"));
  EXPECT_TRUE(TreeMatches(cautious_.tree(), v1));
}

// Issue 13, "Why" 4: small steps walk past it. The baseline is the largest size of the
// partition over guard.window_hours (docs/guard.md, "The window").

TEST_F(GuardTest, ADripOfSmallDeletionsAddsUpOverTheWindow) {
  const std::string part = "edge/main/riscv64";
  TreeModel v1 = make_sample();
  add_partition(v1, part, 99, 31);  // 100 files
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));

  // 20 of 100 (exactly 0.2): passes everywhere.
  TreeModel step1 = v1;
  ASSERT_LT(remove_smallest_packages(step1, part, 20, kBaseMtime + 5000), 0.2);
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(step1));

  // 16 of 80 (0.2 again): 36 of the 100 files the partition had today.
  TreeModel step2 = step1;
  remove_smallest_packages(step2, part, 16, kBaseMtime + 5001);
  json st = tier0_holds(step2);
  EXPECT_TRUE(HeldBy(st, part, "window"));
  EXPECT_EQ(held_entry(st, part).value("lost", json()), 36) << st.dump(2);
  EXPECT_EQ(held_entry(st, part).value("of", json()), 100) << st.dump(2);
  EXPECT_TRUE(TreeMatches(tier0_.tree(), step1));
  relays_keep(step1);

  // Approved at tier0: the trusting relay follows; the other relay's own window holds it.
  ASSERT_TRUE(Exited(tier0_.ctl({"approve", part}), 0));
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  ASSERT_TRUE(Exited(trusting_.once(), 0));
  EXPECT_TRUE(TreeMatches(trusting_.tree(), step2));
  ASSERT_TRUE(Exited(cautious_.once(), kHeld));
  st = cautious_.status();
  EXPECT_TRUE(HeldBy(st, part, "window"));
  EXPECT_EQ(held_entry(st, part).value("of", json()), 100) << st.dump(2);
  EXPECT_TRUE(TreeMatches(cautious_.tree(), step1));
}

TEST_F(GuardTest, APartitionThatShrankBelowMinFilesIsStillGuarded) {
  const std::string part = "edge/main/loongarch64";
  TreeModel v1 = make_sample();
  add_partition(v1, part, 9, 41);  // 10 files: min_files
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));

  // 2 of 10 (exactly 0.2): passes; 8 files left, under min_files.
  TreeModel eight = v1;
  ASSERT_LT(remove_smallest_packages(eight, part, 2, kBaseMtime + 5000), 0.2);
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(eight));

  // All 8 go: held (the old guard never held a partition under min_files).
  TreeModel gone = eight;
  remove_partition(gone, part);
  EXPECT_TRUE(HeldBy(tier0_holds(gone), part, "deleted"));
  EXPECT_TRUE(TreeMatches(tier0_.tree(), eight));

  // Its 7 packages without the index: the window remembers 10 files, so the ratio rules apply.
  TreeModel bare = eight;
  for (const auto& p : packages_in(eight, part)) bare.erase(p);
  json st = tier0_holds(bare);
  EXPECT_TRUE(HeldBy(st, part, "deleted"));
  EXPECT_EQ(held_entry(st, part).value("lost", json()), 7) << st.dump(2);
  EXPECT_TRUE(TreeMatches(tier0_.tree(), eight));
  relays_keep(eight);
}

TEST_F(GuardTest, PaddingAPartitionWithJunkDoesNotHideTheLossOfItsFiles) {
  const std::string part = "edge/testing/x86_64";
  TreeModel v1 = make_sample();
  add_partition(v1, part, 19, 51);  // 20 files
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));
  const auto real = packages_in(v1, part);

  // 80 junk files of a few bytes: additions, nothing to hold.
  TreeModel padded = v1;
  for (int i = 0; i < 80; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "junk%02d-0-r0.apk", i);
    padded[part + "/" + name] = FileSpec{"junk " + std::to_string(i) + "\n", kBaseMtime + 4000};
  }
  rebuild_index(padded, part, kBaseMtime + 4001);
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(padded));

  // The 19 real packages go, the index rewritten for the junk: 19 of 100 files (under 0.2), but
  // nearly every byte.
  TreeModel real_gone = padded;
  for (const auto& p : real) real_gone.erase(p);
  rebuild_index(real_gone, part, kBaseMtime + 4002);
  json st = tier0_holds(real_gone);
  EXPECT_TRUE(HeldBy(st, part, "bytes"));
  EXPECT_EQ(held_entry(st, part).value("deleted", json()), 19) << st.dump(2);
  EXPECT_TRUE(TreeMatches(tier0_.tree(), padded));

  // ... and with their index: 20 of 100 files, the repository without its index.
  TreeModel no_index = real_gone;
  no_index.erase(index_of(part));
  EXPECT_TRUE(HeldBy(tier0_holds(no_index), part, "index"));
  EXPECT_TRUE(TreeMatches(tier0_.tree(), padded));
  relays_keep(padded);
}

// Issue 13, "Why" 5: a held partition changed through hard links. tier0's tree never shares an
// inode with source.dir (docs/security.md, "The source folder"): what a builder does in place to
// a published file reaches no tree, and a new mirror still syncs.

TEST_F(GuardTest, AFileChangedInPlaceInTheSourceReachesNoTreeBeforeAPublish) {
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));
  const std::string part = "edge/main/x86_64";
  const auto packages = packages_in(v1, part);
  const fs::path index = source_ / index_of(part);
  const ino_t index_inode = inode_of(index);
  ASSERT_NE(index_inode, inode_of(tier0_.tree() / index_of(part)));

  // `: > f` on the index and three packages: the same inodes, now empty.
  ASSERT_EQ(::truncate(index.c_str(), 0), 0) << std::strerror(errno);
  for (std::size_t i = 0; i < 3; ++i)
    ASSERT_EQ(::truncate((source_ / packages[i]).c_str(), 0), 0) << packages[i];
  EXPECT_EQ(inode_of(index), index_inode) << "truncated in place";
  // A new index of edge/community/x86_64 copied over the old one (`cp`), before its package.
  const std::string other = "edge/community/x86_64";
  TreeModel next = v1;
  const std::string pkg = add_package(next, other, "newpkg-2.0-r0.apk", 5, kBaseMtime + 7000);
  rebuild_index(next, other, kBaseMtime + 7001);
  ASSERT_NO_FATAL_FAILURE(
      write_in_place(source_ / index_of(other), next.at(index_of(other)).bytes, kBaseMtime + 7001));

  // Nothing of it is in any tree.
  EXPECT_TRUE(TreeMatches(tier0_.tree(), v1)) << "tier0's files are copies, not links";
  EXPECT_TRUE(Exited(tier0_.ctl({"verify", "--full"}), 0));

  // The package arrives; tier0 publishes it with its index, and holds the emptied partition.
  write_file(source_ / pkg, next.at(pkg).bytes, next.at(pkg).mtime);
  ASSERT_TRUE(Exited(tier0_.once(), kHeld));
  json st = tier0_.status();
  EXPECT_TRUE(HeldBy(st, part, "index"));
  EXPECT_EQ(held_partitions(st), std::set<std::string>{part}) << st.dump(2);
  EXPECT_TRUE(TreeMatches(tier0_.tree(), next)) << "the held partition as published";
  EXPECT_TRUE(Exited(tier0_.ctl({"verify", "--full"}), 0));
  EXPECT_EQ(inode_of(index), index_inode) << "tier0 never writes to source.dir";
  relays_keep(next);

  const Node newcomer = relay("newcomer", {{"trust_upstream_approvals", false}});
  ASSERT_TRUE(Exited(newcomer.once(), 0)) << "a new mirror syncs: no size mismatch";
  EXPECT_TRUE(TreeMatches(newcomer.tree(), next));
  EXPECT_TRUE(Exited(newcomer.ctl({"verify", "--full"}), 0));
}

// Issue 13, "Why" 6: a relay's local approval keys on the candidate manifest, so a new serial of
// the origin that leaves the held change as it was does not undo it.

TEST_F(GuardTest, ARelayApprovalSurvivesANewSerialOfTheOrigin) {
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));
  const std::string part = "edge/community/armv7";
  TreeModel purge = v1;
  remove_partition(purge, part);
  tier0_holds(purge);
  ASSERT_TRUE(Exited(tier0_.ctl({"approve", part}), 0));
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  ASSERT_TRUE(Exited(trusting_.once(), 0));
  EXPECT_TRUE(TreeMatches(trusting_.tree(), purge));
  ASSERT_TRUE(Exited(cautious_.once(), kHeld));
  EXPECT_TRUE(HeldBy(cautious_.status(), part, "deleted"));
  ASSERT_TRUE(Exited(cautious_.ctl({"approve", part}), 0));

  // The origin publishes a security fix before the cautious relay runs again.
  TreeModel fixed = purge;
  add_package(fixed, "edge/main/x86_64", "openssl-3.3.2-r1.apk", 61, kBaseMtime + 8000);
  rebuild_index(fixed, "edge/main/x86_64", kBaseMtime + 8001);
  touch_last_updated(fixed, kBaseMtime + 8002);
  materialize(fixed, source_);
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  const std::uint64_t newest = read_published_snapshot(tier0_.tree()).serial;
  ASSERT_TRUE(Exited(trusting_.once(), 0));
  EXPECT_TRUE(TreeMatches(trusting_.tree(), fixed));
  ASSERT_TRUE(Exited(cautious_.once(), 0)) << "the approval names the change, not the serial";
  EXPECT_TRUE(TreeMatches(cautious_.tree(), fixed));
  json st = cautious_.status();
  EXPECT_EQ(st.value("serial", json()), newest) << st.dump(2);
  EXPECT_TRUE(held_partitions(st).empty()) << st.dump(2);
}

// Issue 13, "Why" 6, the part that needs relays progressing per partition (pins: expected to
// fail until they land): a relay's hold keeps only the refused partition, and the rest of the
// snapshot (a security fix) goes through, to the relay and to its children.

TEST_F(GuardTest, PerPartitionRelayHoldsOnlyTheRefusedPartitionAndAppliesTheRest) {
  const Node child = relay("child", {{"trust_upstream_approvals", false}}, cautious_.url());
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1, {&child}));
  const std::string part = "edge/community/armv7";
  TreeModel purge = v1;
  remove_partition(purge, part);
  tier0_holds(purge);
  ASSERT_TRUE(Exited(tier0_.ctl({"approve", part}), 0));
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  ASSERT_TRUE(Exited(trusting_.once(), 0));

  TreeModel fixed = purge;
  add_package(fixed, "edge/main/x86_64", "openssl-3.3.2-r1.apk", 61, kBaseMtime + 8000);
  rebuild_index(fixed, "edge/main/x86_64", kBaseMtime + 8001);
  touch_last_updated(fixed, kBaseMtime + 8002);
  materialize(fixed, source_);
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  const std::uint64_t newest = read_published_snapshot(tier0_.tree()).serial;

  // The cautious relay holds armv7 and applies the fix.
  TreeModel kept = fixed;
  restore_partition(kept, v1, part);
  ASSERT_TRUE(Exited(cautious_.once(), kHeld));
  EXPECT_TRUE(TreeMatches(cautious_.tree(), kept)) << "the fix arrives, armv7 stays";
  json st = cautious_.status();
  EXPECT_TRUE(HeldBy(st, part, "deleted"));
  EXPECT_EQ(held_partitions(st), std::set<std::string>{part}) << st.dump(2);
  EXPECT_EQ(st.value("serial", json()), newest) << "the new serial is committed, with a pin";
  EXPECT_EQ(held_entry(st, part).value("stale", true), false) << st.dump(2);
  EXPECT_TRUE(Exited(cautious_.ctl({"verify", "--full"}), 0));

  // Its child gets what it serves: the fix, and armv7 as the relay pins it.
  ASSERT_TRUE(Exited(child.once(), 0));
  EXPECT_TRUE(TreeMatches(child.tree(), kept));
  EXPECT_TRUE(Exited(child.ctl({"verify", "--full"}), 0));

  // Approved at the relay: the removal goes through, down to the child.
  ASSERT_TRUE(Exited(cautious_.ctl({"approve", part}), 0));
  ASSERT_TRUE(Exited(cautious_.once(), 0));
  EXPECT_TRUE(TreeMatches(cautious_.tree(), fixed));
}

// A tier1's local approval is offered to its children (unsigned): a child configured to trust its
// parent's approvals follows without an approval of its own (docs/guard.md, "Approving at a
// relay, and parent approvals"). Needs pins and guard.trust_parent_approvals.
TEST_F(GuardTest, PerPartitionParentApprovalReachesAChildThatTrustsIt) {
  const Node child =
      relay("child", {{"trust_upstream_approvals", false}, {"trust_parent_approvals", true}},
            cautious_.url());
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1, {&child}));
  const std::string part = "edge/community/armv7";
  TreeModel purge = v1;
  remove_partition(purge, part);
  tier0_holds(purge);
  ASSERT_TRUE(Exited(tier0_.ctl({"approve", part}), 0));
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  ASSERT_TRUE(Exited(cautious_.once(), kHeld));
  ASSERT_TRUE(Exited(child.once(), 0)) << "the parent serves armv7 pinned: nothing to hold";
  EXPECT_TRUE(TreeMatches(child.tree(), v1));

  ASSERT_TRUE(Exited(cautious_.ctl({"approve", part}), 0));
  ASSERT_TRUE(Exited(cautious_.once(), 0));
  EXPECT_TRUE(TreeMatches(cautious_.tree(), purge));
  ASSERT_TRUE(Exited(child.once(), 0)) << "the parent's approval covers the same change";
  EXPECT_TRUE(TreeMatches(child.tree(), purge));
}

// Issue 13, "Why" 7: a change of layout with a removal in the same publish. The old partitions
// are counted against the new ones (a path kept anywhere is not deleted): the removal is held and
// nothing of the new layout is published (docs/guard.md, "Layout changes").

TEST_F(GuardTest, ALayoutChangeWithARemovalIsHeldAtTier0) {
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));
  const std::uint64_t s1 = read_published_snapshot(tier0_.tree()).serial;
  amend_config(tier0_, {{"layout", "{release}/{repo}"}});

  TreeModel gone = v1;
  remove_partition(gone, "edge/main/armv7");
  json st = tier0_holds(gone);
  EXPECT_TRUE(HeldBy(st, "edge/main/armv7", "deleted"));
  EXPECT_EQ(held_partitions(st), std::set<std::string>{"edge/main/armv7"}) << st.dump(2);
  EXPECT_EQ(held_entry(st, "edge/main/armv7").value("to", "").rfind("layout:", 0), 0u)
      << "the approval would name the whole new layout: " << st.dump(2);
  const proto::Snapshot kept = read_published_snapshot(tier0_.tree());
  EXPECT_EQ(kept.serial, s1) << "nothing is published";
  EXPECT_EQ(kept.layout, kLayout);
  EXPECT_TRUE(TreeMatches(tier0_.tree(), v1));
  relays_keep(v1);
}

// The new layout without a removal: nothing to hold anywhere.
TEST_F(GuardTest, ALayoutChangeAloneReachesEveryRelayWithoutAHold) {
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));
  amend_config(tier0_, {{"layout", "{release}/{repo}"}});
  TreeModel next = v1;
  touch_last_updated(next, kBaseMtime + 9000);
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(next));
  EXPECT_EQ(read_published_snapshot(tier0_.tree()).layout, "{release}/{repo}");
}

// ---------------------------------------------------------------------------------------------
// Ordinary days (tests/bench/README.md): `hourly` replaces 20 packages, `busy` 0.5%, `mass` (a
// mass rebuild) 10%, each rewriting the touched indexes. None may hold anywhere.

TEST_F(GuardTest, OrdinaryDaysPassWithoutAHold) {
  BenchTree bench(
      {"edge/main/x86_64", "edge/main/aarch64", "edge/community/x86_64", "edge/community/aarch64"},
      150, 13);
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(bench.model));
  const std::size_t all = bench.packages();
  const std::size_t busy = std::max<std::size_t>(1, all / 200), mass = all / 10;
  const std::vector<std::pair<const char*, std::size_t>> day = {
      {"busy", busy}, {"hourly", 20}, {"hourly", 20}, {"busy", busy}, {"mass", mass},
      {"hourly", 20}, {"busy", busy}, {"hourly", 20}, {"mass", mass}, {"hourly", 20}};
  int step = 0;
  for (const auto& [kind, count] : day) {
    SCOPED_TRACE(std::string(kind) + " mutation, step " + std::to_string(++step));
    bench.replace(count);
    ASSERT_NO_FATAL_FAILURE(publish_and_sync(bench.model));
  }
}

// A rebuild beyond the default (40% of edge/main) passes with the raised limits docs/guard.md
// documents for it ("A mass rebuild with a raised limit"), at tier0 and at relays configured
// alike; a relay with the defaults holds it (a raised limit at tier0 carries no approval). Needs
// guard.partitions.*.max_bytes_loss_ratio (docs/configuration.md).
TEST_F(GuardTest, MassRebuildBeyondTheDefaultPassesWithTheDocumentedLimits) {
  const json raised = {
      {"partitions",
       {{"edge/main/*", {{"max_delete_ratio", 0.6}, {"max_bytes_loss_ratio", 0.6}}}}}};
  configure(raised, raised);
  const Node plain = relay("plain", {{"trust_upstream_approvals", true}});
  BenchTree bench({"edge/main/x86_64", "edge/main/aarch64", "edge/community/x86_64"}, 150, 17);
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(bench.model, {&plain}));
  const TreeModel before = bench.model;

  bench.replace(120, {"edge/main/x86_64", "edge/main/aarch64"});
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(bench.model));
  ASSERT_TRUE(Exited(plain.once(), kHeld)) << "judged by the relay's own (default) limits";
  // The held partitions keep their files (the relay applies the rest: docs/guard.md).
  for (const char* part : {"edge/main/x86_64", "edge/main/aarch64"})
    for (const auto& path : paths_in(before, part))
      EXPECT_TRUE(fs::exists(plain.tree() / path)) << path << " was deleted";
}

// ---------------------------------------------------------------------------------------------
// Bad input: approvals of what is not held, an expired approval, an upstream approval of another
// change. Refused or ignored, naming the partition; never widened.

TEST_F(GuardTest, ApprovingWhatIsNotHeldFailsNamingThePartition) {
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));
  const fs::path approvals = tier0_.state() / "approvals.json";

  // Nothing held at all.
  RunResult none = tier0_.ctl({"approve", "edge/main/x86_64"});
  EXPECT_TRUE(Exited(none, kFailed));
  EXPECT_TRUE(Mentions(none, "edge/main/x86_64"));

  TreeModel purge = v1;
  remove_partition(purge, "edge/community/armv7");
  tier0_holds(purge);
  for (const std::string& wrong :
       {std::string("edge/main/x86_64"), std::string("edge/nope/riscv64"), std::string("..")}) {
    RunResult r = tier0_.ctl({"approve", wrong});
    EXPECT_TRUE(Exited(r, kFailed)) << wrong;
    EXPECT_TRUE(Mentions(r, "\"" + wrong + "\"")) << "the message names the partition";
    EXPECT_TRUE(Mentions(r, "edge/community/armv7")) << "and lists what is held";
  }
  // A list with one wrong name approves nothing.
  RunResult mixed = tier0_.ctl({"approve", "edge/community/armv7", "edge/nope/riscv64"});
  EXPECT_TRUE(Exited(mixed, kFailed));
  EXPECT_FALSE(fs::exists(approvals) && read_file(approvals).find("armv7") != std::string::npos)
      << read_file(approvals);
  ASSERT_TRUE(Exited(tier0_.once(), kHeld)) << "nothing was approved";
  EXPECT_TRUE(TreeMatches(tier0_.tree(), v1));
  relays_keep(v1);
}

TEST_F(GuardTest, AnExpiredApprovalIsDroppedNamingItsPartitionAndTheHoldStays) {
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));
  const std::string part = "edge/community/armv7";
  // An approval given a day ago and never used: its expiry is past (written the way
  // daemon/sync/state.cpp saves it, as guard.approval_hours cannot be shorter than an hour).
  auto expire = [](const Node& node) {
    const fs::path file = node.state() / "approvals.json";
    json j = json::parse(read_file(file));
    ASSERT_FALSE(j["approvals"].empty()) << j.dump();
    for (auto& a : j["approvals"]) a["expires"] = std::time(nullptr) - 60;
    write_file(file, j.dump());
  };
  TreeModel purge = v1;
  remove_partition(purge, part);
  tier0_holds(purge);
  ASSERT_TRUE(Exited(tier0_.ctl({"approve", part}), 0));
  ASSERT_NO_FATAL_FAILURE(expire(tier0_));
  RunResult r = tier0_.once();
  EXPECT_TRUE(Exited(r, kHeld));
  EXPECT_TRUE(Mentions(r, "approval expired: partition=" + part));
  EXPECT_TRUE(HeldBy(tier0_.status(), part, "deleted"));
  EXPECT_TRUE(TreeMatches(tier0_.tree(), v1));
  EXPECT_TRUE(json::parse(read_file(tier0_.state() / "approvals.json"))["approvals"].empty())
      << "an expired approval is dropped";
  relays_keep(v1);

  // The same at a relay.
  ASSERT_TRUE(Exited(tier0_.ctl({"approve", part}), 0));
  ASSERT_TRUE(Exited(tier0_.once(), 0));
  ASSERT_TRUE(Exited(cautious_.once(), kHeld));
  ASSERT_TRUE(Exited(cautious_.ctl({"approve", part}), 0));
  ASSERT_NO_FATAL_FAILURE(expire(cautious_));
  r = cautious_.once();
  EXPECT_TRUE(Exited(r, kHeld));
  EXPECT_TRUE(Mentions(r, "approval expired: partition=" + part));
  EXPECT_TRUE(HeldBy(cautious_.status(), part, "deleted"));
  EXPECT_TRUE(TreeMatches(cautious_.tree(), v1));
}

// A signed approved_deletions entry that does not start from the relay's applied manifest is
// ignored: the relay holds, naming the partition. The old serial-only form is refused.
TEST(GuardUpstreamTest, AnUpstreamApprovalOfAnotherChangeIsIgnoredNamingThePartition) {
  TempDir root("tiersync-guard-upstream");
  auto key = proto::PrivateKey::generate();
  ASSERT_TRUE(key.ok());
  write_public_key(*key, root / "keys/origin.pub");
  FakeParent parent(root / "parent/tree");
  const Node trusting =
      make_mirror(root / "trusting", "trusting", parent.url(), {root / "keys/origin.pub"},
                  {{"trust_upstream_approvals", true}});
  const TreeModel good = make_sample();
  parent.publish(Offer::of(good, 5, *key));
  ASSERT_TRUE(Exited(trusting.once(), 0));

  const std::string part = "edge/main/aarch64";
  TreeModel purge = good;
  remove_partition(purge, part);
  const std::int64_t later = std::time(nullptr) + 3600;
  Offer o = Offer::of(purge, 6, *key);
  o.patch_snapshot = [&](proto::Snapshot& s) {
    s.approved_deletions[part] = {std::string(64, 'b'), "removed", 6, later};
  };
  parent.publish(o);
  RunResult r = trusting.once();
  EXPECT_TRUE(Exited(r, kHeld)) << "from another manifest than the applied one";
  EXPECT_TRUE(Mentions(r, "partition=" + part));
  EXPECT_TRUE(HeldBy(trusting.status(), part, "deleted"));
  EXPECT_TRUE(TreeMatches(trusting.tree(), good));

  // The serial-only form of the first release: read and ignored (never an approval), so the
  // removal is held, naming the partition (docs/protocol.md, "Upgrading").
  Offer old = Offer::of(purge, 7, *key);
  const proto::PrivateKey signer = *key;
  old.patch_envelope = [&](proto::Envelope& e) {
    json payload = json::parse(e.payload);
    payload["approved_deletions"] = {{part, 7}};
    e = proto::sign_envelope(e.payload_type, payload.dump(), {signer});
  };
  parent.publish(old);
  r = trusting.once();
  EXPECT_TRUE(Exited(r, kHeld));
  EXPECT_TRUE(Mentions(r, part));
  EXPECT_EQ(held_partitions(trusting.status()), std::set<std::string>{part});
  for (const auto& path : paths_in(good, part))
    EXPECT_TRUE(fs::exists(trusting.tree() / path)) << path << " was deleted";
}

}  // namespace
}  // namespace tiersync::it
