// tier0's incremental publish (docs/architecture.md, "Incremental publish"): a running tier0
// rescans only the partitions its watcher saw change, reads and writes only their hash cache
// files, and publishes exactly what a full walk of the same source would; the guard weighs a
// partition removed under it as it would in a full walk. Every wait is bounded and waits for an
// event (a log line, a status, a published serial).

#include <sys/stat.h>

#include <chrono>
#include <map>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "proto/snapshot.h"
#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

using namespace std::chrono_literals;

constexpr int kOk = 0;

/// The last line of `log` holding `needle` ("" when none does).
std::string last_line_with(const std::string& log, std::string_view needle) {
  const auto at = log.rfind(needle);
  if (at == std::string::npos) return "";
  const auto begin = log.rfind('\n', at);
  const auto end = log.find('\n', at);
  return log.substr(begin == std::string::npos ? 0 : begin + 1,
                    end == std::string::npos ? std::string::npos : end - begin - 1);
}

/// mtime (ns) of each file of tier0's hash cache, by file name.
std::map<std::string, std::int64_t> cache_files(const Node& node) {
  std::map<std::string, std::int64_t> out;
  for (const auto& e : fs::directory_iterator(node.state() / "hashcache.d")) {
    struct stat st;
    if (::stat(e.path().c_str(), &st) == 0)
      out[e.path().filename().string()] = st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec;
  }
  return out;
}

/// The hash cache file of a partition (sync::HashCache::save_partitions).
std::string cache_file_of(std::string_view partition) {
  return sha256_hex(partition).substr(0, 32);
}

/// Waits (bounded, every 100 ms) until `partition` is held in `node`'s status.
bool wait_for_hold(const Node& node, const std::string& partition, std::chrono::seconds limit) {
  for (int i = 0; i <= limit / 100ms; ++i) {
    if (held_partitions(node.status()).count(partition)) return true;
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

class IncrementalPublishTest : public OriginTest {
 protected:
  // A running tier0 past its start: its first cycle and the full walk its first look at the
  // source asks for are done (each ends with "in sync at serial 1").
  void start_daemon() {
    ASSERT_TRUE(Exited(origin.once(), kOk));
    amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}}});
    daemon.emplace(origin);
    ASSERT_TRUE(daemon->wait_for_log("source changed", 30s)) << daemon->log();
    ASSERT_TRUE(wait_for_count(*daemon, "in sync at serial 1", 2, 30s)) << daemon->log();
  }

  // What a full walk of the same source publishes: a second tier0 with its own state.
  proto::Snapshot published_by_a_full_walk() {
    Node fresh = make_origin(root / "fresh", "dl-master", source, key.key);
    EXPECT_TRUE(Exited(fresh.once(), kOk));
    return read_published_snapshot(fresh.tree());
  }

  std::optional<Daemon> daemon;
};

TEST_F(IncrementalPublishTest, AnUploadRescansOnlyItsPartitionAndPublishesWhatAFullWalkWould) {
  ASSERT_NO_FATAL_FAILURE(start_daemon());
  const auto cache_before = cache_files(origin);
  auto partitions = partitions_of(model);
  partitions.insert(".");
  ASSERT_EQ(cache_before.size(), partitions.size()) << "one per partition and root";
  const auto before = read_published_snapshot(origin.tree());

  add_package(model, "edge/main/x86_64", "newpkg-2.0-r0.apk", 4242);
  rebuild_index(model, "edge/main/x86_64", 1'800'000'000);
  materialize(model, source);
  ASSERT_TRUE(converges(source, origin.tree(), 60s)) << daemon->log();

  const std::string line = last_line_with(daemon->log(), "incremental publish: rescanning");
  EXPECT_NE(line.find("edge/main/x86_64"), std::string::npos) << daemon->log();
  for (const auto& other : partitions_of(model)) {
    if (other == "edge/main/x86_64" || other == ".") continue;
    EXPECT_EQ(line.find(other), std::string::npos) << line;
  }

  // Published: the changed partition, and the others' manifests as they were.
  const auto after = read_published_snapshot(origin.tree());
  EXPECT_GT(after.serial, before.serial);
  for (const auto& [name, ref] : before.partitions) {
    if (name == "edge/main/x86_64" || name == ".") continue;
    EXPECT_EQ(after.partitions.at(name), ref) << name;
  }
  EXPECT_NE(after.partitions.at("edge/main/x86_64"), before.partitions.at("edge/main/x86_64"));
  EXPECT_EQ(after.partitions, published_by_a_full_walk().partitions);

  // Only the rescanned partitions' hash cache files were written.
  const auto cache_after = cache_files(origin);
  EXPECT_EQ(cache_after.size(), cache_before.size());
  for (const auto& [file, mtime] : cache_before) {
    const bool rescanned = file == cache_file_of("edge/main/x86_64") || file == cache_file_of(".");
    if (!rescanned) {
      EXPECT_EQ(cache_after.at(file), mtime) << "rewritten: " << file;
    }
  }
  EXPECT_NE(cache_after.at(cache_file_of("edge/main/x86_64")),
            cache_before.at(cache_file_of("edge/main/x86_64")));

  EXPECT_TRUE(TreeMatches(origin.tree(), model));
  EXPECT_TRUE(Exited(origin.ctl({"verify", "--full"}), kOk));
  EXPECT_TRUE(daemon->stop());
}

// A partition deleted whole under a running tier0 (its folder's removal names it): the guard
// holds it as a full walk would, and the published tree keeps it until it is approved.
TEST_F(IncrementalPublishTest, APartitionRemovedUnderItIsHeldByTheGuard) {
  ASSERT_NO_FATAL_FAILURE(start_daemon());
  const TreeModel published = model;
  remove_partition(model, "edge/community/armv7");
  materialize(model, source);
  ASSERT_TRUE(wait_for_hold(origin, "edge/community/armv7", 60s)) << daemon->log();
  EXPECT_NE(
      last_line_with(daemon->log(), "incremental publish: rescanning").find("edge/community/armv7"),
      std::string::npos)
      << daemon->log();
  EXPECT_TRUE(TreeMatches(origin.tree(), published));

  // Approved: the next publish (an incremental one, the held partition rescanned) removes it.
  ASSERT_TRUE(Exited(origin.ctl({"approve", "edge/community/armv7"}), kOk));
  ASSERT_TRUE(converges(source, origin.tree(), 60s)) << daemon->log();
  EXPECT_TRUE(held_partitions(origin.status()).empty());
  EXPECT_EQ(read_published_snapshot(origin.tree()).partitions,
            published_by_a_full_walk().partitions);
  EXPECT_TRUE(daemon->stop());
}

// The mission's folder-to-symlink change under a running tier0: the folder renamed away makes
// the watcher ask for a full walk; the guard holds the partition that lost its files.
TEST_F(IncrementalPublishTest, AFolderSwappedForASymlinkIsHeldLikeInAFullWalk) {
  ASSERT_NO_FATAL_FAILURE(start_daemon());
  const TreeModel published = model;
  fs::rename(source / "edge/main/aarch64", root / "aarch64-aside");
  fs::create_directory_symlink("x86_64", source / "edge/main/aarch64");
  ASSERT_TRUE(wait_for_hold(origin, "edge/main/aarch64", 60s)) << daemon->log();
  EXPECT_TRUE(TreeMatches(origin.tree(), published));
  EXPECT_TRUE(Exited(origin.ctl({"verify", "--full"}), kOk));
  EXPECT_TRUE(daemon->stop());
}

// The same change published by a full walk (`--once`).
TEST_F(IncrementalPublishTest, AFolderSwappedForASymlinkIsHeldByAFullWalk) {
  ASSERT_TRUE(Exited(origin.once(), kOk));
  const TreeModel published = model;
  fs::rename(source / "edge/main/aarch64", root / "aarch64-aside");
  fs::create_directory_symlink("x86_64", source / "edge/main/aarch64");
  EXPECT_TRUE(Exited(origin.once(), 3));
  EXPECT_EQ(held_partitions(origin.status()).count("edge/main/aarch64"), 1u);
  EXPECT_TRUE(TreeMatches(origin.tree(), published));
  EXPECT_TRUE(Exited(origin.ctl({"verify", "--full"}), kOk));
  // Approved, the swap is published whole: the symlink, and the folder's files gone.
  ASSERT_TRUE(Exited(origin.ctl({"approve", "edge/main/aarch64"}), kOk));
  EXPECT_TRUE(Exited(origin.once(), kOk));
  EXPECT_TRUE(converges(source, origin.tree(), 10s));
  EXPECT_TRUE(Exited(origin.ctl({"verify", "--full"}), kOk));
}

}  // namespace
}  // namespace tiersync::it
