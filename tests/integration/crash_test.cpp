// Crash safety (docs/crash-safety.md): killed at any step of an apply, a node restarts with no file
// under its final name that has neither its old nor its new content, every partition whose index is
// in place whole in that index's version, the root partition last; its next cycle completes the
// sync. TIERSYNC_CRASH_AT=N makes tiersyncd SIGKILL itself right before its N-th mutating step.

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>

#include <gtest/gtest.h>

#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

constexpr int kMaxSteps = 5000;
constexpr int kMinCrashPoints = 20;

/// V3: upstream moves on while a mirror lies crashed between V1 and V2.
TreeModel third_version(const TreeModel& v2) {
  TreeModel v3 = v2;
  for (const char* part : {"edge/main/x86_64", "edge/community/aarch64"}) {
    v3.erase(packages_in(v3, part).at(0));  // "aa-new-b", new in V2
    add_package(v3, part, "mm-v3-3.0-r0.apk", 300, kBaseMtime + 20000);
    rebuild_index(v3, part, kBaseMtime + 20001);
  }
  touch_last_updated(v3, kBaseMtime + 20002);
  return v3;
}

/// Crash points out of 1..steps: all of them within `budget`, else the first and last quarter
/// of the budget (staging starts, commit and deletions end) and an even spread between.
std::vector<int> plan_points(int steps, int budget) {
  std::vector<int> out;
  if (steps <= budget) {
    for (int n = 1; n <= steps; ++n) out.push_back(n);
    return out;
  }
  const int edge = budget / 4;
  std::set<int> points;
  for (int n = 1; n <= edge; ++n) points.insert(n);
  for (int n = steps - edge + 1; n <= steps; ++n) points.insert(n);
  const int middle = budget - 2 * edge;
  for (int i = 1; i <= middle; ++i) points.insert(edge + (steps - 2 * edge) * i / (middle + 1));
  return {points.begin(), points.end()};
}

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
    SampleShape shape;
    shape.min_packages = 12;
    shape.max_packages = 16;
    v1_ = make_sample(shape);
    v2_ = next_version(v1_);
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

  /// The number of mutating steps of `node`'s cycle from its saved state: the largest N at
  /// which the run still crashes. 0 (with a failure) when it cannot be found.
  int count_steps(const Node& node) {
    auto crashes = [&](int n) -> std::optional<bool> {
      RunResult r = crash_at(node, n);
      if (r.killed_by(SIGKILL)) return true;
      if (r.exited(0)) return false;
      ADD_FAILURE() << "TIERSYNC_CRASH_AT=" << n << " neither crashed nor succeeded:\n"
                    << r.describe();
      return std::nullopt;
    };
    auto first = crashes(1);
    if (!first) return 0;
    if (!*first) {
      ADD_FAILURE() << node.name << " did not crash at TIERSYNC_CRASH_AT=1: no fault injection?";
      return 0;
    }
    int lo = 1, hi = 16;  // crashes at lo; hi unknown
    for (;;) {
      auto c = crashes(hi);
      if (!c) return 0;
      if (!*c) break;
      lo = hi;
      hi *= 2;
      if (hi > kMaxSteps) {
        ADD_FAILURE() << node.name << " still crashes at step " << lo << " (bound " << kMaxSteps
                      << ")";
        return 0;
      }
    }
    while (hi - lo > 1) {  // crashes at lo, completes at hi
      int mid = lo + (hi - lo) / 2;
      auto c = crashes(mid);
      if (!c) return 0;
      (*c ? lo : hi) = mid;
    }
    return lo;
  }

  /// Crashes `node`'s cycle (from its saved state, going from `before` to `after`) at planned
  /// points; after each crash checks the tree and that nothing else changed, then that a plain
  /// run completes the sync. Returns the number of crash points checked.
  int sweep(const Node& node, const TreeModel& before, const TreeModel& after, int budget) {
    const auto start = std::chrono::steady_clock::now();
    const ListOptions rest_options{.skip_meta = false,
                                   .hash = true,
                                   .exclude = {node.tree(), node.state(), root_ / "pristine"}};
    const Listing rest = list_tree(root_.path(), rest_options);
    const int steps = count_steps(node);
    if (steps == 0) return 0;
    int checked = 0, failed = 0, torn = 0;
    for (int n : plan_points(steps, budget)) {
      SCOPED_TRACE(node.name + " with TIERSYNC_CRASH_AT=" + std::to_string(n) + " of " +
                   std::to_string(steps));
      RunResult r = crash_at(node, n);
      if (!r.killed_by(SIGKILL)) {
        ADD_FAILURE() << "expected SIGKILL (the step count was " << steps << "):\n" << r.describe();
        if (++failed >= 3) break;
        continue;
      }
      ++checked;
      const TreeModel caught = model_of(node.tree());
      if (!same_files(caught, before) && !same_files(caught, after)) ++torn;
      auto violations = crash_violations(node.tree(), before, after);
      EXPECT_TRUE(violations.empty()) << "after the crash:\n" << join_lines(violations);
      EXPECT_EQ(diff_listings(rest, list_tree(root_.path(), rest_options)), "")
          << "the crash left something outside the node's tree and state_dir";
      RunResult again = node.once();
      EXPECT_TRUE(Exited(again, 0)) << "the next cycle must complete the sync";
      EXPECT_TRUE(TreeMatches(node.tree(), after)) << "after the recovery";
      const Listing staging = list_tree(node.tree() / ".tiersync/staging",
                                        {.skip_meta = false, .hash = false, .exclude = {}});
      EXPECT_EQ(files_in(staging), std::vector<std::string>{}) << "staging must be empty";
      if (HasFailure() && ++failed >= 3) break;  // enough to diagnose
    }
    // One step beyond the last: the run completes normally.
    RunResult done = crash_at(node, steps + 1);
    EXPECT_TRUE(Exited(done, 0)) << "TIERSYNC_CRASH_AT beyond the last step must not crash";
    EXPECT_TRUE(TreeMatches(node.tree(), after));
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("[ crash    ] %s: %d steps, %d crash points checked, %d torn, in %.1f s\n",
                node.name.c_str(), steps, checked, torn, secs);
    // Crashes that all fall before the first install or after the last would prove nothing.
    EXPECT_GT(torn, 0) << "no crash point caught the tree between the two versions";
    return checked;
  }

  TempDir root_{"tiersync-crash"};
  KeyFiles key_;
  fs::path source_;
  Node origin_, mirror_;
  TreeModel v1_, v2_;
};

TEST_F(CrashTest, MirrorUpdateSurvivesACrashAtEveryStep) {
  materialize(v1_, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  ASSERT_TRUE(TreeMatches(mirror_.tree(), v1_));
  save(mirror_);
  materialize(v2_, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  ASSERT_TRUE(TreeMatches(origin_.tree(), v2_));

  const int checked = sweep(mirror_, v1_, v2_, 150);
  EXPECT_GE(checked, kMinCrashPoints) << "too few crash points exercised";
  EXPECT_TRUE(Exited(mirror_.ctl({"verify", "--full"}), 0));
  EXPECT_EQ(mirror_.status().value("serial", json()),
            read_published_snapshot(origin_.tree()).serial);
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

  const int steps = count_steps(mirror_);
  ASSERT_GT(steps, 0);
  int checked = 0;
  for (int n : plan_points(steps, 12)) {
    SCOPED_TRACE("mirror crashed with TIERSYNC_CRASH_AT=" + std::to_string(n) + " of " +
                 std::to_string(steps) + ", then upstream published V3");
    restore(origin_);
    materialize(v2_, source_);
    RunResult crashed = crash_at(mirror_, n);
    ASSERT_TRUE(crashed.killed_by(SIGKILL)) << crashed.describe();
    materialize(v3, source_);
    ASSERT_TRUE(Exited(origin_.once(), 0));
    EXPECT_TRUE(Exited(mirror_.once(), 0)) << "the mirror must finish and move on to V3";
    EXPECT_TRUE(TreeMatches(mirror_.tree(), v3));
    EXPECT_EQ(files_in(list_tree(mirror_.tree() / ".tiersync/staging",
                                 {.skip_meta = false, .hash = false, .exclude = {}})),
              std::vector<std::string>{});
    ++checked;
    if (HasFailure()) break;
  }
  EXPECT_GE(checked, 10);
}

TEST_F(CrashTest, MirrorInitialSyncSurvivesACrash) {
  materialize(v1_, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  save(mirror_);  // no tree, no state yet

  const int checked = sweep(mirror_, TreeModel{}, v1_, 100);
  EXPECT_GE(checked, kMinCrashPoints) << "too few crash points exercised";
  EXPECT_TRUE(Exited(mirror_.ctl({"verify", "--full"}), 0));
}

TEST_F(CrashTest, OriginPublishSurvivesACrashAtEveryStep) {
  materialize(v1_, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  ASSERT_TRUE(TreeMatches(origin_.tree(), v1_));
  const std::uint64_t s1 = read_published_snapshot(origin_.tree()).serial;
  save(origin_);
  materialize(v2_, source_);

  const int checked = sweep(origin_, v1_, v2_, 150);
  EXPECT_GE(checked, kMinCrashPoints) << "too few crash points exercised";
  EXPECT_GT(read_published_snapshot(origin_.tree()).serial, s1);
  EXPECT_TRUE(Exited(origin_.ctl({"verify", "--full"}), 0));
  // What the recovered origin publishes is whole: a fresh mirror gets exactly V2.
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror_.tree(), v2_));
}

}  // namespace
}  // namespace tiersync::it
