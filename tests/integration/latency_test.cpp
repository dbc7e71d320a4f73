// A mirror far from its parent (docs/performance.md, "Across a long link"): tier0 serves plain
// HTTP through tests/tools/linksim.py, a proxy that adds 50 ms each way (100 ms round trip). The
// mirror's initial sync, an incremental and a no-op converge, and each costs the requests it
// needs and no more (counted by the proxy). Nothing here is a timing assertion: the benchmark
// (tests/bench/run_latency_bench.py) measures the time.

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

using namespace std::chrono_literals;

/// The proxy, started on a free port in front of `target_port`; stopped with the object.
class LinkSim {
 public:
  LinkSim(const fs::path& dir, std::uint16_t target_port, int delay_ms)
      : stats_(dir / "linksim.json"),
        process_({"/usr/bin/env", "python3", TIERSYNC_LINKSIM, "--target",
                  "127.0.0.1:" + std::to_string(target_port), "--delay-ms",
                  std::to_string(delay_ms), "--stats", stats_.string()},
                 dir / "linksim.log") {
    // "listening PORT" once it accepts (bounded: 300 x 100 ms; Python starts slowly on a busy
    // machine).
    for (int i = 0; i < 300 && port_ == 0; ++i) {
      const std::string log = process_.log();
      if (auto at = log.find("listening ");
          at != std::string::npos && log.find('\n', at) != std::string::npos)
        port_ = static_cast<std::uint16_t>(std::stoi(log.substr(at + 10)));
      else
        std::this_thread::sleep_for(100ms);
    }
  }
  ~LinkSim() { process_.terminate(5s); }

  std::uint16_t port() const { return port_; }
  std::string log() const { return process_.log(); }

  /// The proxy's counts once a run's connections (at least one more than before) have all
  /// closed (bounded wait).
  nlohmann::json settled_stats() {
    nlohmann::json j;
    for (int i = 0; i < 300; ++i) {
      std::ifstream in(stats_);
      j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.value("open", 1) == 0 && j.value("connections", 0) > connections_) {
        connections_ = j.value("connections", 0);
        return j;
      }
      std::this_thread::sleep_for(100ms);
    }
    return j;
  }

 private:
  fs::path stats_;
  Process process_;
  std::uint16_t port_ = 0;
  int connections_ = 0;  ///< as of the last settled_stats()
};

class LatencyTest : public OriginTest {};

TEST_F(LatencyTest, AMirrorSyncsThroughAHundredMillisecondLinkInFewRequests) {
  add_partition(model, "edge/testing/x86_64", 300, 7);  // many small files: pipelining matters
  materialize(model, source);
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}},
                        {"listen", loopback_listen()}});
  Daemon d_origin(origin);
  ASSERT_TRUE(converges(source, origin.tree(), 60s)) << d_origin.log();

  LinkSim link(root.path(), d_origin.port(), 50);
  ASSERT_NE(link.port(), 0) << link.log();
  Node mirror = make_mirror(root / "mirror", "mirror",
                            "http://127.0.0.1:" + std::to_string(link.port()) + "/", {key.pub});

  // The initial sync: every file and manifest once, over the pool's 8 connections at most.
  ASSERT_TRUE(Exited(mirror.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror.tree(), model));
  const auto files = files_in(listing_of(model)).size();
  const auto partitions = partitions_of(model).size();
  auto stats = link.settled_stats();
  ASSERT_EQ(stats.value("open", -1), 0) << stats.dump();
  // (One more: the parent's pins document for the new serial, docs/protocol.md "Pins", is a
  // small fetch of its own.)
  EXPECT_LE(stats.value("connections", 0), 9) << stats.dump();
  // The snapshot, the parent's status, a manifest per partition (the root's too), the files.
  const int initial = stats.value("requests", 0);
  EXPECT_GE(initial, static_cast<int>(files + partitions));
  EXPECT_LE(initial, static_cast<int>(files + partitions + 3)) << stats.dump();

  // An incremental: the changed partition's manifest, the root's, the new files.
  add_package(model, "edge/testing/x86_64", "newpkg-2.0-r0.apk", 4242);
  rebuild_index(model, "edge/testing/x86_64", 1'800'000'000);
  materialize(model, source);
  ASSERT_TRUE(converges(source, origin.tree(), 60s)) << d_origin.log();
  ASSERT_TRUE(Exited(mirror.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror.tree(), model));
  stats = link.settled_stats();
  const int incremental = stats.value("requests", 0) - initial;
  EXPECT_GE(incremental, 4);  // snapshot, manifest, two files
  EXPECT_LE(incremental, 7) << stats.dump();

  // A no-op: one request, the snapshot.
  ASSERT_TRUE(Exited(mirror.once(), 0));
  stats = link.settled_stats();
  EXPECT_EQ(stats.value("requests", 0) - initial - incremental, 1) << stats.dump();

  EXPECT_EQ(d_origin.terminate(5s), 0) << d_origin.log();
}

TEST_F(LatencyTest, ALargeFileComesInRangesThroughTheLink) {
  // A 3 MiB package and a split threshold of 1 MiB (upstream.range_split_bytes): the file comes
  // as 6 parts of 512 KiB over the pool, is verified whole and installed.
  add_partition(model, "edge/testing/x86_64", 20, 11);
  std::string big(3u << 20, '\0');
  std::uint32_t x = 12345;
  for (auto& c : big) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  model["edge/testing/x86_64/big-1.0-r0.apk"] = FileSpec{big, kBaseMtime, 0644, false};
  rebuild_index(model, "edge/testing/x86_64", 1'800'000'000);
  materialize(model, source);
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}},
                        {"listen", loopback_listen()}});
  Daemon d_origin(origin);
  ASSERT_TRUE(converges(source, origin.tree(), 60s)) << d_origin.log();

  LinkSim link(root.path(), d_origin.port(), 50);
  ASSERT_NE(link.port(), 0) << link.log();
  Node mirror = make_mirror(root / "mirror", "mirror",
                            "http://127.0.0.1:" + std::to_string(link.port()) + "/", {key.pub});
  amend_config(mirror, {{"upstream", {{"range_split_bytes", 1u << 20}}}});
  ASSERT_TRUE(Exited(mirror.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror.tree(), model));
  const auto files = files_in(listing_of(model)).size();
  const auto partitions = partitions_of(model).size();
  auto stats = link.settled_stats();
  ASSERT_EQ(stats.value("open", -1), 0) << stats.dump();
  // Every file once, the big one as 6 parts (5 requests more); the snapshot, the parent's status
  // and its pins document.
  const int requests = stats.value("requests", 0);
  EXPECT_GE(requests, static_cast<int>(files + partitions + 5)) << stats.dump();
  EXPECT_LE(requests, static_cast<int>(files + partitions + 5 + 3)) << stats.dump();
  // The file's bytes came once (parts do not overlap): the tree, plus heads and manifests.
  std::uint64_t tree_bytes = 0;
  for (const auto& [path, spec] : model) tree_bytes += spec.bytes.size();
  EXPECT_LT(stats.value("bytes_down", std::uint64_t{0}), tree_bytes + (1u << 20)) << stats.dump();

  EXPECT_EQ(d_origin.terminate(5s), 0) << d_origin.log();
}

}  // namespace
}  // namespace tiersync::it
