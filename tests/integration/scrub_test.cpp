// Scrub: a tree that proves itself. A running relay finds a file damaged under it and fetches it
// again from its parent; `verify --repair` does the same at once, at a relay and at tier0.

#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <thread>

#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

using namespace std::chrono_literals;

class ScrubTest : public OriginTest {
 protected:
  /// The sample's bytes of `path` with one byte flipped (size kept), written with its mtime and
  /// mode: only a hash tells.
  void flip_byte(const fs::path& tree, const std::string& path) {
    const FileSpec& spec = model.at(path);
    std::string bytes = spec.bytes;
    bytes[bytes.size() / 2] ^= 0x5a;
    write_file(tree / path, bytes, spec.mtime, spec.mode);
  }
};

// Polls (every 100 ms, at most `limit`) until `done` holds.
bool eventually(const std::function<bool()>& done, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(100ms);
  }
  return done();
}

std::uint64_t scrub_field(const Node& node, const char* field) {
  try {
    const json s = node.status();
    return s.at("scrub").at(field).get<std::uint64_t>();
  } catch (const std::exception&) {
    return 0;
  }
}

TEST_F(ScrubTest, RelayDaemonRepairsACorruptedFileFromItsParent) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  Node mirror = make_mirror(root / "mirror", "mirror", origin.url(), {key.pub});
  amend_config(mirror, {{"scrub", {{"mb_per_second", 50}}},
                        {"upstream", {{"poll_seconds", 3600}}},
                        {"listen", loopback_listen()}});
  ASSERT_TRUE(Exited(mirror.once(), 0));

  ::setenv("TIERSYNC_SCRUB_PAUSE_SECONDS", "1", 1);  // the child inherits it at fork
  Daemon daemon(mirror);
  ::unsetenv("TIERSYNC_SCRUB_PAUSE_SECONDS");
  ASSERT_TRUE(eventually([&] { return scrub_field(mirror, "passes") >= 1; }, 60s)) << daemon.log();
  EXPECT_EQ(scrub_field(mirror, "found"), 0u) << "a clean tree has nothing to find";

  const std::string victim = packages_in(model, "edge/main/x86_64").at(2);
  flip_byte(mirror.tree(), victim);
  ASSERT_TRUE(eventually([&] { return scrub_field(mirror, "repaired") >= 1; }, 60s))
      << daemon.log();
  EXPECT_EQ(read_file(mirror.tree() / victim), model.at(victim).bytes);
  EXPECT_TRUE(TreeMatches(mirror.tree(), model));
  const json status = mirror.status();
  EXPECT_EQ(status["scrub"]["found"], 1) << status.dump(2);
  EXPECT_TRUE(status["scrub"]["damaged"].empty()) << status.dump(2);
  EXPECT_TRUE(contains_nocase(daemon.log(), "scrub: damaged file path=\"" + victim))
      << daemon.log();
  EXPECT_TRUE(contains_nocase(mirror.ctl({"status"}).out, "repaired 1"));

  // /metrics counts it; the status endpoint carries the scrub section.
  {
    ASSERT_TRUE(have_curl()) << "curl is not installed: .ci/setup.sh installs it";
    const std::string base = daemon.url();
    const RunResult metrics =
        run({"curl", "--silent", "--fail", "--max-time", "10", base + "metrics"});
    ASSERT_TRUE(metrics.exited(0)) << metrics.describe();
    EXPECT_TRUE(contains_nocase(metrics.out, "tiersync_scrub_repaired_total 1\n")) << metrics.out;
    EXPECT_TRUE(contains_nocase(metrics.out, "tiersync_scrub_mismatches_total 1\n")) << metrics.out;
    EXPECT_TRUE(contains_nocase(metrics.out, "tiersync_scrub_passes_total")) << metrics.out;
    EXPECT_TRUE(contains_nocase(metrics.out, "tiersync_scrub_last_pass_end_timestamp_seconds"))
        << metrics.out;
    const RunResult served =
        run({"curl", "--silent", "--fail", "--max-time", "10", base + ".tiersync/v1/status"});
    ASSERT_TRUE(served.exited(0)) << served.describe();
    EXPECT_TRUE(json::parse(served.out).contains("scrub")) << served.out;
  }

  // verify --repair leaves a running daemon's tree to it.
  const RunResult refused = mirror.ctl({"verify", "--repair"});
  EXPECT_TRUE(Exited(refused, 1));
  EXPECT_TRUE(Mentions(refused, "tiersyncd runs"));
  EXPECT_TRUE(daemon.stop(10s));
}

TEST_F(ScrubTest, VerifyRepairAtARelayFetchesEveryDifferenceAgain) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  Node mirror = make_mirror(root / "mirror", "mirror", origin.url(), {key.pub});
  ASSERT_TRUE(Exited(mirror.once(), 0));
  const auto packages = packages_in(model, "edge/community/aarch64");
  flip_byte(mirror.tree(), packages.at(0));
  fs::remove(mirror.tree() / packages.at(1));
  fs::remove(mirror.tree() / packages.at(2));
  write_symlink(mirror.tree() / packages.at(2), "/etc/hostname");  // a file replaced by a symlink
  fs::remove(mirror.tree() / "latest");                            // a symlink lost
  ASSERT_TRUE(Exited(mirror.ctl({"verify", "--full"}), 1));

  const RunResult repair = mirror.ctl({"verify", "--repair"});
  EXPECT_TRUE(Exited(repair, 0));
  for (const std::string& path :
       {packages.at(0), packages.at(1), packages.at(2), std::string("latest")})
    EXPECT_TRUE(Mentions(repair, "repaired: " + path)) << path;
  EXPECT_TRUE(TreeMatches(mirror.tree(), model));
  EXPECT_TRUE(Exited(mirror.ctl({"verify", "--full"}), 0));
}

TEST_F(ScrubTest, VerifyRepairAtTier0RepairsFromTheSourceOnlyWhereItMatches) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  const auto packages = packages_in(model, "edge/main/armv7");
  const std::string fixable = packages.at(0), held = packages.at(1);
  // The tree's copies are damaged (new inodes: the source's files stay as published)...
  flip_byte(origin.tree(), fixable);
  flip_byte(origin.tree(), held);
  // ...and a builder has since changed one of them in the source (not published yet).
  write_file(source / held, "rebuilt", model.at(held).mtime + 10, 0644);

  const RunResult repair = origin.ctl({"verify", "--repair"});
  EXPECT_TRUE(Exited(repair, 1)) << "a difference is left";
  EXPECT_TRUE(Mentions(repair, "repaired: " + fixable));
  EXPECT_TRUE(Mentions(repair, "not repaired: " + held));
  EXPECT_TRUE(Mentions(repair, "source no longer holds the published content"));
  EXPECT_TRUE(Mentions(repair, "left: differs: " + held));
  EXPECT_EQ(read_file(origin.tree() / fixable), model.at(fixable).bytes);
  EXPECT_NE(read_file(origin.tree() / held), "rebuilt") << "never published under the old hash";

  const RunResult verify = origin.ctl({"verify", "--full"});
  EXPECT_TRUE(Exited(verify, 1));
  EXPECT_FALSE(Mentions(verify, fixable));
}

}  // namespace
}  // namespace tiersync::it
