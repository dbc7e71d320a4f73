// Crash safety (docs/crash-safety.md): killed at any step of an apply, a node restarts with no file
// under its final name that has neither its old nor its new content, every partition whose index is
// in place whole in that index's version, the root partition last; its next cycle completes the
// sync. TIERSYNC_CRASH_AT=N makes tiersyncd SIGKILL itself right before its N-th mutating step.
//
// The sweeps kill at EVERY step of their cycle, N = 1, 2, ... until a run completes: a relay's
// initial sync, its incremental update, a tier0 publish, and type changes at the origin carried
// by tier0 and a relay. Their trees are small so that a full sweep fits CI. Sampling, of a larger
// tree, belongs to the soak run only (CrashSoak below, tests/soak/crash_soak.sh).

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <random>

#include <gtest/gtest.h>

#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

constexpr int kMaxSteps = 5000;

/// A symlink of edge/main/x86_64 to one of its packages: V1 adds it to the sample, V2 moves it
/// (not the root partition's `latest`: the guard holds any change of the root partition but its
/// files' content, docs/guard.md, "The rules", and this test is about crashes, not holds).
constexpr std::string_view kCurrentLink = "edge/main/x86_64/current.apk";

/// A package large enough for the kill half-way through its download (daemon/sync/apply.cpp
/// stops at the middle of every file of 64 KiB or more); V2 rebuilds it.
constexpr std::string_view kBigPackage = "edge/main/x86_64/pkgzz-big-1.0-r0.apk";
constexpr std::size_t kBigBytes = 256 * 1024;

/// Deterministic bytes that do not compress to nothing.
std::string big_bytes(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(kBigBytes, '\0');
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

/// The trees of the sweeps: two partitions of five packages (one of them large) and the root one.
SampleShape small_shape() {
  SampleShape shape;
  shape.repos = {"main"};
  shape.arches = {"x86_64", "aarch64"};
  shape.min_packages = 5;
  shape.max_packages = 5;
  return shape;
}

/// V3: upstream moves on while a mirror lies crashed between V1 and V2.
TreeModel third_version(const TreeModel& v2) {
  TreeModel v3 = v2;
  for (const char* part : {"edge/main/x86_64", "edge/main/aarch64"}) {
    v3.erase(packages_in(v3, part).at(0));  // "aa-new-b", new in V2
    add_package(v3, part, "mm-v3-3.0-r0.apk", 300, kBaseMtime + 20000);
    rebuild_index(v3, part, kBaseMtime + 20001);
  }
  touch_last_updated(v3, kBaseMtime + 20002);
  return v3;
}

/// Type changes in edge/main/x86_64 (the root partition would be held by the guard's `root`
/// rule): `before` has a folder `sub/`, a file `doc` and a symlink `alias`; `after` turns the
/// folder into a symlink, the file into a folder and the symlink into a folder.
std::pair<TreeModel, TreeModel> type_changes(const TreeModel& base) {
  const std::string part = "edge/main/x86_64";
  TreeModel before = base, after = base;
  before[part + "/sub/a-1.0-r0.apk"] = FileSpec{"a in sub", kBaseMtime + 30000};
  before[part + "/sub/b-1.0-r0.apk"] = FileSpec{"b in sub", kBaseMtime + 30000};
  before[part + "/doc"] = FileSpec{"a file, then a folder", kBaseMtime + 30000};
  before[part + "/alias"] = FileSpec{"sub", kBaseMtime, 0777, /*link=*/true};
  after[part + "/sub"] = FileSpec{"doc", kBaseMtime, 0777, /*link=*/true};
  after[part + "/doc/readme"] = FileSpec{"below what was a file", kBaseMtime + 30001};
  after[part + "/alias/c-1.0-r0.apk"] = FileSpec{"c where a symlink was", kBaseMtime + 30001};
  rebuild_index(before, part, kBaseMtime + 30002);
  rebuild_index(after, part, kBaseMtime + 30003);
  touch_last_updated(before, kBaseMtime + 30004);
  touch_last_updated(after, kBaseMtime + 30005);
  return {before, after};
}

/// `violations` but those a type change makes by design (docs/crash-safety.md, "Type changes"): an
/// old entry at or below a path that changes type goes when the new entry there is installed,
/// before the partition's new index is.
std::vector<std::string> besides_type_changes(std::vector<std::string> violations,
                                              const std::vector<std::string>& changed) {
  constexpr std::string_view kMissing = " is missing";
  std::erase_if(violations, [&](const std::string& v) {
    const std::size_t colon = v.rfind(": ");
    if (!v.ends_with(kMissing) || colon == std::string::npos) return false;
    const std::string path = v.substr(colon + 2, v.size() - colon - 2 - kMissing.size());
    return std::any_of(changed.begin(), changed.end(), [&](const std::string& p) {
      return path == p || path.starts_with(p + "/");
    });
  });
  return violations;
}

/// No hold on the type changes' deletions: this test is about crashes (docs/guard.md).
const json kNoGuard = {{"max_delete_ratio", 1.0}, {"min_files", 1}};

// The checker itself must catch torn trees, or the sweeps below could not fail.
TEST(CrashViolationsTest, CatchesTornTrees) {
  TempDir dir("tiersync-crash-checker");
  SampleShape shape;
  shape.min_packages = 12;
  shape.max_packages = 16;
  const TreeModel v1 = make_sample(shape);
  const TreeModel v2 = next_version(v1);
  const std::string part = "edge/main/x86_64";
  const std::string index = part + "/" + std::string(kIndexName);
  auto violations_of = [&](const TreeModel& state) {
    materialize(state, dir.path());
    return crash_violations(dir.path(), v1, v2);
  };

  EXPECT_EQ(violations_of(v1), std::vector<std::string>{});
  EXPECT_EQ(violations_of(v2), std::vector<std::string>{});
  TreeModel partial = v1;  // new files of one partition in place, index still old
  for (const auto& path : paths_in(v2, part))
    if (path != index) partial[path] = v2.at(path);
  EXPECT_EQ(violations_of(partial), std::vector<std::string>{});

  TreeModel torn_index = v1;  // new index before its packages
  torn_index[index] = v2.at(index);
  EXPECT_FALSE(violations_of(torn_index).empty()) << "new index without its packages";
  TreeModel garbage = v1;
  garbage[packages_in(v1, part).at(0)].bytes += "torn";
  EXPECT_FALSE(violations_of(garbage).empty()) << "a file with neither content";
  TreeModel stray = v1;
  stray[part + "/.staged-file"] = FileSpec{"x"};
  EXPECT_FALSE(violations_of(stray).empty()) << "a file in neither version";
  TreeModel early_root = partial;
  early_root["last-updated"] = v2.at("last-updated");
  EXPECT_FALSE(violations_of(early_root).empty()) << "the root partition before the others";
  TreeModel early_delete = v1;  // an old-manifest entry deleted while the old index stands
  early_delete.erase(packages_in(v1, part).at(1));
  EXPECT_FALSE(violations_of(early_delete).empty()) << "a deletion before the new index";
}

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_ = keygen(root_ / "keys/origin");
    source_ = root_ / "incoming";
    origin_ = make_origin(root_ / "dl-master", "dl-master", source_, key_.key);
    mirror_ = make_mirror(root_ / "mirror", "mirror", origin_.url(), {key_.pub});
    v1_ = with_extras(make_sample(small_shape()), 1);
    v2_ = next_version(v1_);
    v2_[std::string(kCurrentLink)].bytes = "zz-new-a-2.0-r0.apk";
    v2_[std::string(kBigPackage)] = FileSpec{big_bytes(2), kBaseMtime + 10001};
    rebuild_index(v2_, "edge/main/x86_64", kBaseMtime + 10002);
  }

  /// `model` with the symlink kCurrentLink and the large package (of `seed`'s bytes).
  static TreeModel with_extras(TreeModel model, std::uint64_t seed) {
    model[std::string(kCurrentLink)] = FileSpec{"pkg05-1.5-r0.apk", 0, 0777, /*link=*/true};
    model[std::string(kBigPackage)] = FileSpec{big_bytes(seed), kBaseMtime + 500};
    rebuild_index(model, "edge/main/x86_64", kBaseMtime + 501);
    return model;
  }

  fs::path pristine(const Node& node, std::string_view what) const {
    return root_ / "pristine" / node.name / what;
  }
  /// Keeps a copy of `node`'s tree and state_dir (or remembers that they do not exist).
  void save(const Node& node) {
    fs::remove_all(root_ / "pristine" / node.name);
    fs::create_directories(root_ / "pristine" / node.name);
    if (fs::exists(node.tree())) replace_with_copy(node.tree(), pristine(node, "tree"));
    if (fs::exists(node.state())) replace_with_copy(node.state(), pristine(node, "state"));
  }
  void restore(const Node& node) {
    fs::remove_all(node.tree());
    fs::remove_all(node.state());
    if (fs::exists(pristine(node, "tree"))) replace_with_copy(pristine(node, "tree"), node.tree());
    if (fs::exists(pristine(node, "state")))
      replace_with_copy(pristine(node, "state"), node.state());
  }

  RunResult crash_at(const Node& node, int n) {
    restore(node);
    return node.once({{"TIERSYNC_CRASH_AT", std::to_string(n)}});
  }

  /// Everything under the test's root but `node`'s tree and state_dir (the source included).
  Listing rest_of(const Node& node) const { return list_tree(root_.path(), rest_options(node)); }
  ListOptions rest_options(const Node& node) const {
    return {.skip_meta = false,
            .hash = true,
            .exclude = {node.tree(), node.state(), root_ / "pristine"}};
  }

  /// What the sweeps count besides the steps.
  struct Caught {
    int torn = 0;      ///< kills that left the tree between the two versions
    int mid_file = 0;  ///< kills with a download stopped half-way in staging
  };

  /// After a kill of `node` between `before` and `after`: the invariants of
  /// docs/crash-safety.md hold, nothing outside its tree and state_dir changed; then the next
  /// run converges to `after` with an empty staging, and `verify --full` passes.
  void check_kill(const Node& node, const TreeModel& before, const TreeModel& after,
                  const Listing& rest, Caught& caught) {
    const TreeModel now = model_of(node.tree());
    if (!same_files(now, before) && !same_files(now, after)) ++caught.torn;
    std::error_code ec;
    for (const auto& de : fs::directory_iterator(node.tree() / ".tiersync/staging/files", ec))
      if (de.is_regular_file() && de.file_size() == kBigBytes / 2) ++caught.mid_file;
    auto violations =
        besides_type_changes(crash_violations(node.tree(), before, after), type_changed_);
    EXPECT_TRUE(violations.empty()) << "after the crash:\n" << join_lines(violations);
    EXPECT_EQ(diff_listings(rest, list_tree(root_.path(), rest_options(node))), "")
        << "the crash left something outside the node's tree and state_dir";
    RunResult again = node.once();
    EXPECT_TRUE(Exited(again, 0)) << "the next cycle must complete the sync";
    EXPECT_TRUE(TreeMatches(node.tree(), after)) << "after the recovery";
    const Listing staging = list_tree(node.tree() / ".tiersync/staging",
                                      {.skip_meta = false, .hash = false, .exclude = {}});
    EXPECT_EQ(files_in(staging), std::vector<std::string>{}) << "staging must be empty";
    EXPECT_TRUE(Exited(node.ctl({"verify", "--full"}), 0));
  }

  /// Kills `node`'s cycle (from its saved state, going from `before` to `after`) right before
  /// step N = 1, 2, ... until a run completes, and checks each kill (check_kill). Every step,
  /// none sampled. Returns the number of steps (0 with a failure when none completed).
  int sweep(const Node& node, const TreeModel& before, const TreeModel& after,
            Caught* counted = nullptr) {
    const auto start = std::chrono::steady_clock::now();
    const Listing rest = rest_of(node);
    Caught caught;
    int steps = 0, failed = 0;
    for (int n = 1; n <= kMaxSteps && steps == 0 && failed < 3; ++n) {
      SCOPED_TRACE(node.name + " with TIERSYNC_CRASH_AT=" + std::to_string(n));
      RunResult r = crash_at(node, n);
      if (r.exited(0)) {  // no step N: the whole cycle ran
        steps = n - 1;
        EXPECT_TRUE(TreeMatches(node.tree(), after));
        break;
      }
      if (!r.killed_by(SIGKILL)) {
        ADD_FAILURE() << "expected SIGKILL or a completed cycle:\n" << r.describe();
        break;
      }
      check_kill(node, before, after, rest, caught);
      if (HasFailure()) ++failed;  // a few, enough to diagnose
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("[ crash    ] %s: %d steps, every one killed, %d torn, %d mid-file, in %.1f s\n",
                node.name.c_str(), steps, caught.torn, caught.mid_file, secs);
    EXPECT_GT(steps, 0) << "the cycle never completed (bound " << kMaxSteps << ")";
    // Kills that all fall before the first install or after the last would prove nothing.
    EXPECT_GT(caught.torn, 0) << "no kill caught the tree between the two versions";
    if (counted) *counted = caught;
    return steps;
  }

  TempDir root_{"tiersync-crash"};
  KeyFiles key_;
  fs::path source_;
  Node origin_, mirror_;
  TreeModel v1_, v2_;
  std::vector<std::string> type_changed_;  ///< paths whose type the sweep's change changes
};

TEST_F(CrashTest, MirrorInitialSyncSurvivesACrashAtEveryStep) {
  materialize(v1_, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  save(mirror_);  // no tree, no state yet

  Caught caught;
  EXPECT_GT(sweep(mirror_, TreeModel{}, v1_, &caught), 0);
  EXPECT_GT(caught.mid_file, 0) << "no kill fell half-way through the large download";
}

TEST_F(CrashTest, MirrorUpdateSurvivesACrashAtEveryStep) {
  materialize(v1_, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  ASSERT_TRUE(TreeMatches(mirror_.tree(), v1_));
  save(mirror_);
  materialize(v2_, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  ASSERT_TRUE(TreeMatches(origin_.tree(), v2_));

  Caught caught;
  EXPECT_GT(sweep(mirror_, v1_, v2_, &caught), 0);
  EXPECT_GT(caught.mid_file, 0) << "no kill fell half-way through the large download";
  EXPECT_EQ(mirror_.status().value("serial", json()),
            read_published_snapshot(origin_.tree()).serial);
}

TEST_F(CrashTest, OriginPublishSurvivesACrashAtEveryStep) {
  materialize(v1_, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  ASSERT_TRUE(TreeMatches(origin_.tree(), v1_));
  const std::uint64_t s1 = read_published_snapshot(origin_.tree()).serial;
  save(origin_);
  materialize(v2_, source_);

  EXPECT_GT(sweep(origin_, v1_, v2_), 0);
  EXPECT_GT(read_published_snapshot(origin_.tree()).serial, s1);
  // What the recovered origin publishes is whole: a fresh mirror gets exactly V2.
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror_.tree(), v2_));
}

TEST_F(CrashTest, TypeChangesSurviveACrashAtEveryStep) {
  // file -> folder, folder -> symlink, symlink -> folder at the origin's source; tier0's
  // publish and then a relay's apply of it, each killed at every step.
  const Node origin =
      make_origin(root_ / "tc-master", "tc-master", root_ / "tc-incoming", key_.key, kNoGuard);
  const Node mirror =
      make_mirror(root_ / "tc-mirror", "tc-mirror", origin.url(), {key_.pub}, kNoGuard);
  const auto [before, after] = type_changes(make_sample(small_shape()));
  type_changed_ = {"edge/main/x86_64/sub", "edge/main/x86_64/doc", "edge/main/x86_64/alias"};
  materialize(before, root_ / "tc-incoming");
  ASSERT_TRUE(Exited(origin.once(), 0));
  ASSERT_TRUE(Exited(mirror.once(), 0));
  ASSERT_TRUE(TreeMatches(mirror.tree(), before));
  save(origin);
  save(mirror);
  materialize(after, root_ / "tc-incoming");

  EXPECT_GT(sweep(origin, before, after), 0);
  EXPECT_GT(sweep(mirror, before, after), 0);
}

TEST_F(CrashTest, MirrorCrashedMidUpdateCatchesUpWithANewerUpstream) {
  materialize(v1_, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  save(mirror_);
  materialize(v2_, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  save(origin_);
  const TreeModel v3 = third_version(v2_);

  // Every step of the mirror's update, each followed by a newer upstream.
  int crashed = 0;
  for (int n = 1; n <= kMaxSteps; ++n) {
    SCOPED_TRACE("mirror crashed with TIERSYNC_CRASH_AT=" + std::to_string(n) +
                 ", then upstream published V3");
    restore(origin_);
    materialize(v2_, source_);
    RunResult crashed_run = crash_at(mirror_, n);
    if (crashed_run.exited(0)) break;  // past the last step
    ASSERT_TRUE(crashed_run.killed_by(SIGKILL)) << crashed_run.describe();
    ++crashed;
    materialize(v3, source_);
    ASSERT_TRUE(Exited(origin_.once(), 0));
    EXPECT_TRUE(Exited(mirror_.once(), 0)) << "the mirror must finish and move on to V3";
    EXPECT_TRUE(TreeMatches(mirror_.tree(), v3));
    EXPECT_EQ(files_in(list_tree(mirror_.tree() / ".tiersync/staging",
                                 {.skip_meta = false, .hash = false, .exclude = {}})),
              std::vector<std::string>{});
    if (HasFailure()) break;
  }
  EXPECT_GT(crashed, 10);
}

// --- Soak ------------------------------------------------------------------------------------
// Not run by ctest (DISABLED_): tests/soak/crash_soak.sh runs it (docs/crash-safety.md, "Soak").
// A larger tree, and kills at points drawn at random from every step of a mirror's initial sync
// and of its update; each kill checked as in the sweeps.

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

class CrashSoak : public CrashTest {
 protected:
  /// The number of steps of `node`'s cycle from its saved state: the largest N at which the run
  /// still crashes (a binary search; 0 with a failure when it cannot be found).
  int count_steps(const Node& node) {
    auto crashes = [&](int n) -> std::optional<bool> {
      RunResult r = crash_at(node, n);
      if (r.killed_by(SIGKILL)) return true;
      if (r.exited(0)) return false;
      ADD_FAILURE() << "TIERSYNC_CRASH_AT=" << n << " neither crashed nor succeeded:\n"
                    << r.describe();
      return std::nullopt;
    };
    int lo = 0, hi = 16;  // crashes at lo (0: none known); hi unknown
    for (auto c = crashes(hi); c && *c; c = crashes(hi)) {
      lo = hi;
      hi *= 2;
      if (hi > kMaxSteps * 64) return 0;
    }
    while (hi - lo > 1) {  // crashes at lo, completes at hi
      const int mid = lo + (hi - lo) / 2;
      auto c = crashes(mid);
      if (!c) return 0;
      (*c ? lo : hi) = mid;
    }
    return lo;
  }

  void soak(const Node& node, const TreeModel& before, const TreeModel& after, std::mt19937_64& rng,
            std::uint64_t samples) {
    const Listing rest = rest_of(node);
    const int steps = count_steps(node);
    ASSERT_GT(steps, 0);
    std::uniform_int_distribution<int> pick(1, steps);
    Caught caught;
    for (std::uint64_t i = 0; i < samples && !HasFailure(); ++i) {
      const int n = pick(rng);
      SCOPED_TRACE(node.name + " with TIERSYNC_CRASH_AT=" + std::to_string(n) + " of " +
                   std::to_string(steps));
      RunResult r = crash_at(node, n);
      ASSERT_TRUE(r.killed_by(SIGKILL)) << r.describe();
      check_kill(node, before, after, rest, caught);
    }
    std::printf("[ soak     ] %s: %d steps, %llu sampled, %d torn, %d mid-file\n",
                node.name.c_str(), steps, static_cast<unsigned long long>(samples), caught.torn,
                caught.mid_file);
  }
};

TEST_F(CrashSoak, DISABLED_RandomStepsOfALargerTree) {
  const std::uint64_t seed = env_number("TIERSYNC_CRASH_SOAK_SEED", 1);
  const std::uint64_t samples = env_number("TIERSYNC_CRASH_SOAK_SAMPLES", 50);
  SampleShape shape;  // two repos of three arches
  shape.min_packages = static_cast<int>(env_number("TIERSYNC_CRASH_SOAK_PACKAGES", 30));
  shape.max_packages = shape.min_packages + 10;
  shape.seed = seed;
  std::printf("[ soak     ] TIERSYNC_CRASH_SOAK_SEED=%llu TIERSYNC_CRASH_SOAK_SAMPLES=%llu\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(samples));
  SCOPED_TRACE("TIERSYNC_CRASH_SOAK_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const TreeModel v1 = with_extras(make_sample(shape), seed);
  TreeModel v2 = next_version(v1);
  v2[std::string(kBigPackage)] = FileSpec{big_bytes(seed + 1), kBaseMtime + 10001};
  rebuild_index(v2, "edge/main/x86_64", kBaseMtime + 10002);

  materialize(v1, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  save(mirror_);
  ASSERT_NO_FATAL_FAILURE(soak(mirror_, TreeModel{}, v1, rng, samples));
  restore(mirror_);
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  save(mirror_);
  materialize(v2, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  ASSERT_NO_FATAL_FAILURE(soak(mirror_, v1, v2, rng, samples));
}

}  // namespace
}  // namespace tiersync::it
