// Tree changes at tier0's source, of every kind the engine must carry: a file, a folder and a
// symlink turning into one another at every depth (inside a partition, across partitions, in the
// root partition), partitions appearing and disappearing, renames and copies, empty folders.
// tier0 publishes each step (`tiersyncd --once`) and two chained relays carry it over file://
// upstreams; after every step each tree equals the source and `verify --full` passes everywhere.
//
// What "equals" means: the manifest carries files (content, mode, mtime) and symlinks (target),
// never a folder of its own. A tree must hold exactly the source's files and symlinks and exactly
// the folders on their way: the source's empty folders are not published, and no node may keep
// a folder the source no longer has.
//
// The random test runs a fixed seed and a bounded number of steps; for a soak run, set
// TIERSYNC_PROPERTY_SEED and TIERSYNC_PROPERTY_STEPS and run this binary with
// --gtest_filter='*Random*' (docs/crash-safety.md, "How it is tested").
// A failure names the seed and the step (and what the step changed).

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

// Approvals are not what this test is about: the limits that can be raised are raised, and what
// the guard still holds (a lost index, any change of the root partition: docs/guard.md, "The
// rules") is approved at once (SyncApproving).
const json kNoGuard = {{"max_delete_ratio", 1.0}, {"min_files", 1}};

/// `tiersyncd --once`; while it holds (at most 3 times), `approve --all` and run again.
::testing::AssertionResult SyncApproving(const Node& node) {
  RunResult r = node.once();
  for (int i = 0; i < 3 && r.exited(3); ++i) {
    const RunResult approve = node.ctl({"approve", "--all"});
    if (!approve.exited(0)) return Exited(approve, 0);
    r = node.once();
  }
  return Exited(r, 0);
}

class TreeChangesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_ = keygen(root_ / "keys/origin");
    origin_ = make_origin(root_ / "dl-master", "dl-master", source_, key_.key, kNoGuard);
    tier1_ = make_mirror(root_ / "tier1", "tier1", origin_.url(), {key_.pub}, kNoGuard);
    mirror_ = make_mirror(root_ / "mirror", "mirror", tier1_.url(), {key_.pub}, kNoGuard);
  }

  /// Makes the source hold `model` (and the empty folders `empty`), publishes it and carries it
  /// down the chain; then every tree must hold exactly `model` and verify --full must pass.
  void publish_and_check(const TreeModel& model, const std::set<std::string>& empty = {}) {
    materialize(model, source_);
    for (const auto& dir : empty) fs::create_directories(source_ / dir);
    ASSERT_TRUE(SyncApproving(origin_));
    ASSERT_TRUE(SyncApproving(tier1_));
    ASSERT_TRUE(SyncApproving(mirror_));
    for (const Node* node : {&origin_, &tier1_, &mirror_}) {
      ASSERT_TRUE(TreeMatches(node->tree(), model)) << node->name;
      ASSERT_TRUE(Exited(node->ctl({"verify", "--full"}), 0)) << node->name;
    }
  }

  TempDir root_{"tiersync-property"};
  fs::path source_ = root_ / "incoming";
  KeyFiles key_;
  Node origin_, tier1_, mirror_;
};

// ---------------------------------------------------------------------------------------------
// The reported defect, at several depths, each way.

/// A release `v3.20` and, at `copy`, a copy of it or a symlink to it.
TreeModel release_and(const std::string& copy, bool as_link) {
  TreeModel m;
  const std::vector<std::string> files = {"main/x86_64/APKINDEX.tar.gz", "main/x86_64/a-1.0.apk",
                                          "main/x86_64/b-2.0.apk", "community/x86_64/c-1.0.apk"};
  for (const auto& f : files) m["v3.20/" + f] = FileSpec{"content of " + f};
  m["last-updated"] = FileSpec{"1", kBaseMtime + 1};
  if (as_link) {
    std::string up;
    for (char c : copy)
      if (c == '/') up += "../";
    m[copy] = FileSpec{up + "v3.20", kBaseMtime, 0644, true};
  } else {
    for (const auto& f : files) m[copy + "/" + f] = FileSpec{"content of " + f};
  }
  return m;
}

// Depth 1 and 3: the symlink is in the root partition, the old files in partitions below it.
// Depth 4: symlink and old files share a partition (alias/x/y).
const std::vector<std::string> kCopies = {"latest-stable", "alias/x/latest-stable",
                                          "alias/x/y/latest-stable"};

TEST_F(TreeChangesTest, FolderBecomingASymlinkKeepsTheReleaseItPointsAt) {
  for (const auto& copy : kCopies) {
    SCOPED_TRACE(copy);
    ASSERT_NO_FATAL_FAILURE(publish_and_check(release_and(copy, false)));
    // Deleting latest-stable/main/x86_64/... by name went through the new symlink into v3.20.
    ASSERT_NO_FATAL_FAILURE(publish_and_check(release_and(copy, true)));
  }
  // A mirror that starts now gets the same tree.
  Node late = make_mirror(root_ / "late", "late", mirror_.url(), {key_.pub}, kNoGuard);
  ASSERT_TRUE(SyncApproving(late));
  EXPECT_TRUE(TreeMatches(late.tree(), release_and(kCopies.back(), true)));
  EXPECT_TRUE(Exited(late.ctl({"verify", "--full"}), 0));
}

TEST_F(TreeChangesTest, SymlinkBecomingAFolderGetsItsFiles) {
  for (const auto& copy : kCopies) {
    SCOPED_TRACE(copy);
    ASSERT_NO_FATAL_FAILURE(publish_and_check(release_and(copy, true)));
    // Seen through the old symlink, the new folder's files were "in place": never installed.
    ASSERT_NO_FATAL_FAILURE(publish_and_check(release_and(copy, false)));
  }
}

// ---------------------------------------------------------------------------------------------
// Random sequences of changes.

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

bool below(const std::string& path, const std::string& dir) {
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
         path[dir.size()] == '/';
}

std::string parent_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

/// The source as a model plus its empty folders, and the changes a builder or an operator makes.
class Source {
 public:
  explicit Source(std::uint64_t seed) : rng_(seed) {}

  TreeModel model;
  std::set<std::string> empty;  ///< folders holding nothing (not published)

  /// One to three random changes; returns what they were, for a failure's message.
  std::string step(int n) {
    std::ostringstream what;
    mtime_ = kBaseMtime + 10 * n;
    const int changes = 1 + pick(3);
    for (int i = 0; i < changes; ++i) what << (i ? "; " : "") << change();
    // Empty folders that a change filled, or put under a file or a symlink, are no longer empty
    // folders of the source.
    std::erase_if(empty, [&](const std::string& d) {
      for (std::string p = d; !p.empty(); p = parent_of(p))
        if (model.count(p)) return true;
      auto it = model.lower_bound(d + "/");
      return it != model.end() && below(it->first, d);
    });
    return what.str();
  }

 private:
  int pick(int n) { return static_cast<int>(rng_() % static_cast<std::uint64_t>(n)); }

  // Few names, so that paths collide and types change all the time. Paths of four components
  // and more lie in a partition (the layout has three), shallower ones in the root partition.
  std::string random_path(int min_depth = 1, int max_depth = 6) {
    static const char* const kNames[] = {"a", "b", "main", "x86_64", "APKINDEX.tar.gz"};
    const int depth = min_depth + pick(max_depth - min_depth + 1);
    std::string p;
    for (int i = 0; i < depth; ++i) p += (i ? "/" : "") + std::string(kNames[pick(5)]);
    return p;
  }

  std::vector<std::string> folders() const {
    std::set<std::string> out;
    for (const auto& [path, spec] : model)
      for (std::string p = parent_of(path); !p.empty(); p = parent_of(p)) out.insert(p);
    return {out.begin(), out.end()};
  }

  std::vector<std::string> entries(bool links_only = false) const {
    std::vector<std::string> out;
    for (const auto& [path, spec] : model)
      if (!links_only || spec.link) out.push_back(path);
    return out;
  }

  void remove(const std::string& path) {
    model.erase(path);
    for (auto it = model.lower_bound(path + "/"); it != model.end() && below(it->first, path);)
      it = model.erase(it);
  }

  // What a file system does: whatever stood at `path` (a folder with its content) and any file
  // or symlink standing where `path` needs a folder go.
  void put(const std::string& path, FileSpec spec) {
    remove(path);
    for (std::string p = parent_of(path); !p.empty(); p = parent_of(p)) model.erase(p);
    model[path] = std::move(spec);
  }

  FileSpec random_file() {
    static const std::uint32_t kModes[] = {0644, 0755, 0600};
    return FileSpec{"bytes " + std::to_string(rng_() % 50), mtime_, kModes[pick(3)], false};
  }

  // A target that stays inside the tree: up to the top, then down to `to`.
  FileSpec link(const std::string& from, const std::string& to) {
    std::string up;
    for (char c : from)
      if (c == '/') up += "../";
    return FileSpec{up + to, kBaseMtime, 0644, true};
  }

  std::string any_of(const std::vector<std::string>& v, const std::string& fallback) {
    return v.empty() ? fallback : v[static_cast<std::size_t>(pick(static_cast<int>(v.size())))];
  }

  // Copies (or moves) whatever stands at `from` to `to`.
  void copy(const std::string& from, const std::string& to, bool move) {
    if (from == to || below(to, from)) return;
    std::vector<std::pair<std::string, FileSpec>> items;
    for (const auto& [path, spec] : model)
      if (path == from || below(path, from))
        items.emplace_back(to + path.substr(from.size()), spec);
    if (move) remove(from);
    if (!move && items.size() > 1) copies_.emplace_back(to, from);
    for (auto& [path, spec] : items) {
      if (spec.link)
        spec = link(path, spec.bytes.substr(spec.bytes.rfind("../") == std::string::npos
                                                ? 0
                                                : spec.bytes.rfind("../") + 3));
      put(path, spec);
    }
  }

  std::string change() {
    // A large tree is pruned more often than it grows.
    const int kinds = 12;
    int kind = pick(kinds);
    if (model.size() > 60 && kind < 6) kind = 8;
    switch (kind) {
      case 0:
      case 1: {
        auto p = random_path();
        put(p, random_file());
        return "file " + p;
      }
      case 2: {
        auto p = random_path();
        auto to = any_of(folders(), "a");
        put(p, link(p, to));
        return "symlink " + p + " -> " + to;
      }
      case 3: {  // a folder becomes a symlink to another folder, at times one it is a copy of
        const auto dirs = folders();
        auto dir = any_of(dirs, "");
        if (dir.empty()) return "nothing";
        auto to = any_of(dirs, "a");
        if (!copies_.empty() && pick(3) > 0) {  // latest-stable/ -> latest-stable -> v3.20
          const auto& [copy, original] =
              copies_[static_cast<std::size_t>(pick(static_cast<int>(copies_.size())))];
          if (std::binary_search(dirs.begin(), dirs.end(), copy) &&
              std::binary_search(dirs.begin(), dirs.end(), original) && !below(original, copy)) {
            dir = copy;
            to = original;
          }
        }
        put(dir, link(dir, to));
        return "folder " + dir + " -> symlink to " + to;
      }
      case 4: {  // a symlink becomes a folder: mostly a copy of where it pointed, or a new file
        auto l = any_of(entries(true), "");
        if (l.empty()) return "nothing";
        const std::string& target = model[l].bytes;
        const auto up = target.rfind("../");
        std::string from = up == std::string::npos ? target : target.substr(up + 3);
        const auto dirs = folders();
        if (pick(4) == 0 || !std::binary_search(dirs.begin(), dirs.end(), from))
          from = any_of(dirs, "");
        if (!from.empty() && !below(l, from) && !below(from, l)) {
          copy(from, l, false);
          return "symlink " + l + " -> folder copied from " + from;
        }
        put(l + "/" + random_path(1, 2), random_file());
        return "symlink " + l + " -> folder";
      }
      case 5: {  // a file becomes a folder, or a folder a file
        auto f = any_of(entries(), "a");
        if (pick(2)) {
          put(f + "/" + random_path(1, 2), random_file());
          return "file " + f + " -> folder";
        }
        auto dir = any_of(folders(), "a");
        put(dir, random_file());
        return "folder " + dir + " -> file";
      }
      case 6: {  // a copy of a folder or file elsewhere (the same content at other paths)
        auto from = any_of(pick(2) ? folders() : entries(), "");
        if (from.empty()) return "nothing";
        auto to = random_path();
        copy(from, to, false);
        return "copy " + from + " to " + to;
      }
      case 7: {  // a rename
        auto from = any_of(pick(2) ? folders() : entries(), "");
        if (from.empty()) return "nothing";
        auto to = random_path();
        copy(from, to, true);
        return "rename " + from + " to " + to;
      }
      case 8: {  // a deletion, a partition's at times
        auto what = any_of(pick(2) ? folders() : entries(), "");
        if (what.empty()) return "nothing";
        remove(what);
        return "delete " + what;
      }
      case 9: {  // a new partition with its index
        auto part = random_path(3, 3);
        for (const char* name : {"APKINDEX.tar.gz", "p-1.apk", "q-1.apk"})
          put(part + "/" + name, random_file());
        return "partition " + part;
      }
      case 10: {  // content, mode or mtime of a file
        auto f = any_of(entries(), "");
        if (f.empty() || model[f].link) return "nothing";
        auto spec = model[f];
        switch (pick(3)) {
          case 0:
            spec.bytes += "+";
            break;
          case 1:
            spec.mode = spec.mode == 0644 ? 0755 : 0644;
            break;
          default:
            spec.mtime = mtime_ + 1;
        }
        model[f] = spec;
        return "touch " + f;
      }
      default: {  // the root partition's file, and empty folders
        model["last-updated"] = FileSpec{std::to_string(mtime_), mtime_, 0644, false};
        auto dir = random_path(1, 5);
        empty.insert(dir);
        return "last-updated; empty folder " + dir;
      }
    }
  }

  std::mt19937_64 rng_;
  std::int64_t mtime_ = kBaseMtime;
  std::vector<std::pair<std::string, std::string>> copies_;  ///< (copy, original) folders
};

TEST_F(TreeChangesTest, RandomChangesReachEveryTreeExactly) {
  const std::uint64_t seed = env_number("TIERSYNC_PROPERTY_SEED", 20261129);
  const std::uint64_t steps = env_number("TIERSYNC_PROPERTY_STEPS", 300);
  const bool verbose = env_number("TIERSYNC_IT_VERBOSE", 0) != 0;
  Source source(seed);
  for (std::uint64_t n = 1; n <= steps; ++n) {
    const std::string what = source.step(static_cast<int>(n));
    if (verbose) std::printf("step %llu: %s\n", static_cast<unsigned long long>(n), what.c_str());
    SCOPED_TRACE("TIERSYNC_PROPERTY_SEED=" + std::to_string(seed) + " step " + std::to_string(n) +
                 " of " + std::to_string(steps) + ": " + what);
    // Empty folders the model's files now block cannot be made; the source simply lacks them.
    std::set<std::string> empty;
    for (const auto& d : source.empty) empty.insert(d);
    ASSERT_NO_FATAL_FAILURE(publish_and_check(source.model, empty));
  }
}

}  // namespace
}  // namespace tiersync::it
