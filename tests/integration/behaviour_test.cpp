// Behaviours the other scenarios leave out, each against the real binaries: a damaged state file
// at start, `approve` waking a running tier0, settle_seconds, re-signing at half the TTL, tier0
// without inotify and after an inotify queue overflow, the long poll's backoff, the long poll
// across a parent's graceful restart and against a parent offering a held serial again and again.
// Every wait is bounded and waits for an event (a log line, a status or a published serial); no
// negative check rests on a sleep and nothing here measures time.

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "proto/dsse.h"
#include "proto/keys.h"
#include "proto/snapshot.h"
#include "tests/integration/fake_parent.h"
#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

using namespace std::chrono_literals;

constexpr int kFailure = 1;
constexpr int kHeld = 3;

/// Waits (bounded, every 100 ms) until `tree` publishes a serial other than `serial`.
std::uint64_t wait_for_serial_change(const fs::path& tree, std::uint64_t serial,
                                     std::chrono::seconds limit) {
  for (int i = 0; i <= limit / 100ms; ++i) {
    if (fs::exists(tree / ".tiersync/v1/snapshot")) {
      const auto s = read_published_snapshot(tree).serial;
      if (s != serial) return s;
    }
    std::this_thread::sleep_for(100ms);
  }
  return serial;
}

/// Retries `tiersyncctl ARGS` (the control socket opens a moment after start), bounded.
RunResult ctl_when_listening(const Node& node, const std::vector<std::string>& args) {
  RunResult r;
  for (int i = 0; i < 100; ++i) {
    r = node.ctl(args);
    if (!contains_nocase(r.err, "no daemon")) break;
    std::this_thread::sleep_for(100ms);
  }
  return r;
}

class BehaviourTest : public OriginTest {};

// ---------------------------------------------------------------------------------------------
// A damaged state file at start (docs/crash-safety.md): tiersyncd, daemon or --once, exits 1 with
// a message naming the file and what is wrong, and changes nothing: the file stays as it was
// (for the operator to look at), the tree too. Once the file is repaired the next run converges.

struct Damage {
  std::string file;   ///< below state_dir
  std::string bytes;  ///< what it holds
  std::string why;    ///< a word of the expected message
};

void expect_start_refused(const Node& node, const Damage& d, const std::string& good) {
  SCOPED_TRACE(d.file);
  const fs::path file = node.state() / d.file;
  write_file(file, d.bytes);
  const Listing tree_before =
      list_tree(node.tree(), {.skip_meta = false, .hash = true, .exclude = {}});
  for (const bool once : {true, false}) {
    const RunResult r = once ? node.once() : run({kTiersyncd, "--config", node.config().string()});
    EXPECT_TRUE(r.exited(kFailure)) << r.describe();
    EXPECT_TRUE(contains_nocase(r.err, file.string())) << r.describe();
    EXPECT_TRUE(contains_nocase(r.err, "cannot start")) << r.describe();
    EXPECT_TRUE(contains_nocase(r.err, d.why)) << r.describe();
  }
  EXPECT_EQ(read_file(file), d.bytes) << "the damaged file must stay as it was";
  EXPECT_EQ(
      diff_listings(tree_before,
                    list_tree(node.tree(), {.skip_meta = false, .hash = true, .exclude = {}})),
      "");
  EXPECT_FALSE(fs::exists(node.state() / "control.sock")) << "a refused start opens no socket";
  if (good.empty()) {
    fs::remove(file);
  } else {
    write_file(file, good);
  }
}

TEST_F(BehaviourTest, ADamagedStateFileStopsTheStartNamingIt) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  Node mirror = make_mirror(root / "mirror", "mirror", origin.url(), {key.pub});
  ASSERT_TRUE(Exited(mirror.once(), 0));
  ASSERT_TRUE(fs::exists(origin.state() / "guard-history.json"));

  const std::string history = read_file(origin.state() / "guard-history.json");
  for (const Node* node : {&origin, &mirror}) {
    SCOPED_TRACE(node->name);
    const std::string snap = read_file(node->state() / "snapshot");
    expect_start_refused(*node, {"snapshot", snap.substr(0, snap.size() / 2), "snapshot"}, snap);
    expect_start_refused(*node, {"snapshot", "", "snapshot"}, snap);
    expect_start_refused(*node, {"journal.json", "{\"serial\": 4, \"previous\": {\"edge", "JSON"},
                         "");
    expect_start_refused(*node, {"journal.json", "{\"serial\": \"four\"}", "serial"}, "");
    expect_start_refused(*node, {"held.json", "{\"partitions\": [{\"deleted\": -1.5}]}", "deleted"},
                         "");
    expect_start_refused(*node, {"held.json", "\x01\x02", "JSON"}, "");
    expect_start_refused(
        *node, {"approvals.json", "{\"approvals\": [{\"expires\": \"soon\"}]}", "expires"}, "");
  }
  expect_start_refused(origin, {"guard-history.json", "{\"partitions\": [1, 2]}", "partitions"},
                       history);
  expect_start_refused(
      origin, {"guard-history.json", "{\"partitions\": {\"a\": [[1, 2]]}}", "record"}, history);

  // Repaired: both run again and converge on an update.
  add_package(model, "edge/main/x86_64", "newpkg-2.0-r0.apk", 4242);
  rebuild_index(model, "edge/main/x86_64", 1'800'000'000);
  materialize(model, source);
  ASSERT_TRUE(Exited(origin.once(), 0));
  ASSERT_TRUE(Exited(mirror.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror.tree(), model));
  EXPECT_EQ(read_published_snapshot(mirror.tree()).serial, 2u);
}

// ---------------------------------------------------------------------------------------------
// `tiersyncctl approve` wakes a running tier0 (ApprovalsTest.ApproveWakesARunningDaemon has the
// relay): the approved change is published at once. settle_seconds is an hour here, so nothing
// but the approval's wake-up (which publishes without waiting to settle) can publish it.

TEST_F(BehaviourTest, ApproveWakesARunningTier0) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  const std::string purged = "edge/community/armv7";
  remove_partition(model, purged);
  materialize(model, source);
  ASSERT_TRUE(Exited(origin.once(), kHeld));
  // A hold commits a serial too when other partitions changed (docs/protocol.md, "Pins").
  const std::uint64_t held_serial = read_published_snapshot(origin.tree()).serial;
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 3600}}}});

  Daemon d_origin(origin);
  ASSERT_TRUE(d_origin.wait_for_log("tiersyncd started", 30s)) << d_origin.log();
  EXPECT_EQ(held_partitions(origin.status()), std::set<std::string>{purged});
  const RunResult approved = ctl_when_listening(origin, {"approve", purged});
  ASSERT_TRUE(approved.exited(0)) << approved.describe();
  EXPECT_TRUE(Mentions(approved, "the running daemon starts a cycle now")) << approved.describe();
  EXPECT_GT(wait_for_serial_change(origin.tree(), held_serial, 60s), held_serial) << d_origin.log();
  EXPECT_TRUE(TreeMatches(origin.tree(), model));
  EXPECT_TRUE(held_partitions(origin.status()).empty());
  EXPECT_EQ(d_origin.terminate(10s), 0) << d_origin.log();
}

// ---------------------------------------------------------------------------------------------
// settle_seconds at tier0: while the source keeps changing nothing is published; once it has
// been quiet that long, one publish takes every change.

TEST_F(BehaviourTest, Tier0PublishesOnlyOnceTheSourceHasSettled) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 20}}}});
  Daemon d_origin(origin);
  ASSERT_TRUE(d_origin.wait_for_log("tiersyncd started", 30s)) << d_origin.log();
  const std::string seen = "source changed: publishing once it has been quiet for 20 s";

  // Its first look at the source counts as a change (nothing was scanned before).
  ASSERT_TRUE(wait_for_count(d_origin, seen, 1, 60s)) << d_origin.log();
  // Each change is made once the daemon has seen the one before (its log says so); each time,
  // serial 1 is still what is published.
  for (int i = 0; i < 4; ++i) {
    add_package(model, "edge/main/x86_64", "upload-" + std::to_string(i) + "-r0.apk", 900 + i);
    rebuild_index(model, "edge/main/x86_64", 1'800'000'000 + i);
    materialize(model, source);
    ASSERT_TRUE(wait_for_count(d_origin, seen, static_cast<std::size_t>(i + 2), 60s))
        << d_origin.log();
    EXPECT_EQ(read_published_snapshot(origin.tree()).serial, 1u) << d_origin.log();
  }
  // Quiet now: one publish with everything.
  EXPECT_EQ(wait_for_serial_change(origin.tree(), 1, 120s), 2u) << d_origin.log();
  EXPECT_TRUE(TreeMatches(origin.tree(), model));
  const std::string log = d_origin.log();
  EXPECT_GT(log.find("published serial 2"), log.rfind(seen)) << log;
  EXPECT_EQ(count_of(log, "published serial"), 1u) << log;
  EXPECT_EQ(d_origin.terminate(10s), 0) << d_origin.log();
}

// ---------------------------------------------------------------------------------------------
// Re-signing at half the TTL (docs/protocol.md): a quiet tier0 re-signs once half of its
// snapshot's validity has passed, not before; the children accept the new serial. The applied
// snapshot is re-dated here (signed again with the origin's key) instead of waiting half an hour.

/// Makes `node`'s applied and published snapshot look `age` seconds old, with `ttl`.
void redate(const Node& node, const fs::path& key_file, std::int64_t age, std::int64_t ttl) {
  auto env = proto::decode_envelope(read_file(node.state() / "snapshot"));
  ASSERT_TRUE(env) << env.message();
  auto snap = proto::decode_snapshot(env->payload);
  ASSERT_TRUE(snap) << snap.message();
  snap->created = static_cast<std::int64_t>(std::time(nullptr)) - age;
  snap->expires = snap->created + ttl;
  auto signer = proto::PrivateKey::load(key_file);
  ASSERT_TRUE(signer) << signer.message();
  const std::string bytes = proto::encode_envelope(
      proto::sign_envelope(env->payload_type, proto::encode_snapshot(*snap), {*signer}));
  write_file(node.state() / "snapshot", bytes);
  write_file(node.tree() / ".tiersync/v1/snapshot", bytes);
}

TEST_F(BehaviourTest, Tier0ReSignsAtHalfTheTtlAndChildrenFollow) {
  constexpr std::int64_t kTtl = 3600;
  amend_config(origin, {{"snapshot_ttl_hours", 1}});
  ASSERT_TRUE(Exited(origin.once(), 0));
  Node mirror = make_mirror(root / "mirror", "mirror", origin.url(), {key.pub});
  ASSERT_TRUE(Exited(mirror.once(), 0));

  // Ten minutes before half the TTL: nothing to do, the serial stays.
  redate(origin, key.key, kTtl / 2 - 600, kTtl);
  RunResult early = origin.once();
  ASSERT_TRUE(Exited(early, 0));
  EXPECT_EQ(read_published_snapshot(origin.tree()).serial, 1u) << early.describe();

  // A minute past half the TTL: the running daemon re-signs (a new serial, a new expiry), and a
  // mirror following it applies it.
  redate(origin, key.key, kTtl / 2 + 60, kTtl);
  const auto old_expires = read_published_snapshot(origin.tree()).expires;
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}}});
  Daemon d_origin(origin);
  EXPECT_EQ(wait_for_serial_change(origin.tree(), 1, 60s), 2u) << d_origin.log();
  const auto resigned = read_published_snapshot(origin.tree());
  EXPECT_GE(resigned.expires, old_expires + kTtl / 2) << d_origin.log();
  EXPECT_EQ(resigned.expires - resigned.created, kTtl);
  Daemon d_mirror(mirror);
  EXPECT_EQ(wait_for_serial_change(mirror.tree(), 1, 60s), 2u) << d_mirror.log();
  EXPECT_TRUE(TreeMatches(mirror.tree(), model));
  EXPECT_EQ(d_mirror.terminate(10s), 0) << d_mirror.log();
  EXPECT_EQ(d_origin.terminate(10s), 0) << d_origin.log();
}

// ---------------------------------------------------------------------------------------------
// tier0 without inotify: in a user namespace of its own whose inotify instance limit is 0,
// inotify_init1 fails; the daemon says so and finds uploads by scanning the source every second.

TEST_F(BehaviourTest, Tier0WithoutInotifyFindsUploadsByScanning) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}}});
  // unshare execs sh, which execs tiersyncd: the process is the daemon itself.
  Process d_origin({"/usr/bin/unshare", "--user", "--map-root-user", "sh", "-c",
                    "echo 0 > /proc/sys/user/max_inotify_instances && exec \"$0\" --config \"$1\"",
                    kTiersyncd, origin.config().string()},
                   origin.home / "daemon.log");
  ASSERT_TRUE(d_origin.wait_for_log("looking at the source by scanning it every second", 30s))
      << d_origin.log();
  EXPECT_TRUE(contains_nocase(d_origin.log(), "inotify: ")) << d_origin.log();

  add_package(model, "edge/main/x86_64", "newpkg-2.0-r0.apk", 4242);
  rebuild_index(model, "edge/main/x86_64", 1'800'000'000);
  materialize(model, source);
  EXPECT_TRUE(converges(source, origin.tree(), 60s)) << d_origin.log();
  EXPECT_EQ(d_origin.terminate(10s), 0) << d_origin.log();
}

// ---------------------------------------------------------------------------------------------
// An inotify queue overflow (IN_Q_OVERFLOW): the events are lost, so the daemon says so, watches
// the whole source again and publishes from a full scan, including a folder made while it did
// not read its events (stopped here with SIGSTOP, the queue filling meanwhile).

TEST_F(BehaviourTest, Tier0RescansAfterAnInotifyQueueOverflow) {
  std::ifstream limit_file("/proc/sys/fs/inotify/max_queued_events");
  long limit = 0;
  ASSERT_TRUE(limit_file >> limit) << "cannot read fs.inotify.max_queued_events";
  ASSERT_LT(limit, 1'000'000) << "fs.inotify.max_queued_events is too large to overflow here";

  ASSERT_TRUE(Exited(origin.once(), 0));
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}}});
  Daemon d_origin(origin);
  ASSERT_TRUE(d_origin.wait_for_log("tiersyncd started", 30s)) << d_origin.log();
  ASSERT_FALSE(contains_nocase(d_origin.log(), "scanning it every second")) << d_origin.log();
  // A first look at the source (the cycle at start ends with a line on the serial).
  ASSERT_TRUE(d_origin.wait_for_log("in sync at serial 1", 30s)) << d_origin.log();

  ASSERT_EQ(::kill(d_origin.pid(), SIGSTOP), 0);
  // Three events per round (create, close, delete), none merged with the one before.
  const fs::path scratch = source / "edge/main/x86_64/.scratch";
  for (long i = 0; i < limit / 3 + 100; ++i) {
    const int fd = ::open(scratch.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ::close(fd);
    ::unlink(scratch.c_str());
  }
  add_partition(model, "edge/overflow/x86_64", 3, 77);
  materialize(model, source);
  ASSERT_EQ(::kill(d_origin.pid(), SIGCONT), 0);

  ASSERT_TRUE(d_origin.wait_for_log("inotify: the event queue overflowed", 60s)) << d_origin.log();
  EXPECT_TRUE(converges(source, origin.tree(), 60s)) << d_origin.log();
  // The new folder is watched like the others: a later upload there is published too.
  add_package(model, "edge/overflow/x86_64", "late-1.0-r0.apk", 78);
  rebuild_index(model, "edge/overflow/x86_64", 1'800'000'100);
  materialize(model, source);
  EXPECT_TRUE(converges(source, origin.tree(), 120s)) << d_origin.log();
  EXPECT_EQ(d_origin.terminate(10s), 0) << d_origin.log();
}

// ---------------------------------------------------------------------------------------------
// The long poll's backoff (daemon/node/loop.h, next_poll): against a parent that is gone it asks
// again after 1, 2, 4 s (its log says when), and a successful answer starts the count again. The
// parent dies with SIGKILL, so that every poll fails (a parent stopped with SIGTERM first answers
// the poll it holds 503 with Retry-After: the next test).

TEST_F(BehaviourTest, TheLongPollBacksOffFromAFailingParentAndResetsOnSuccess) {
  // The parent binds port 0 (it reports the port it got), and comes back on that same port.
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}},
                        {"listen", loopback_listen()}});
  ASSERT_TRUE(Exited(origin.once(), 0));
  auto d_origin = std::make_unique<Daemon>(origin, "origin-1.log");
  const std::uint16_t port = d_origin->port();
  amend_config(origin, {{"listen", {{{"address", "127.0.0.1"}, {"port", port}, {"tls", false}}}}});
  Node mirror = make_mirror(root / "mirror", "mirror",
                            "http://127.0.0.1:" + std::to_string(port) + "/", {key.pub});
  // Cycles an hour apart (the poll itself waits at most 300 s): only the long poll brings news.
  amend_config(mirror, {{"upstream", {{"poll_seconds", 3600}}}});
  Daemon d_mirror(mirror);
  ASSERT_TRUE(converges(source, mirror.tree(), 60s)) << d_mirror.log();

  // The parent dies: failures, each logged with the wait before the next poll.
  d_origin->kill();
  for (const char* wait : {"next poll in 1000 ms", "next poll in 2000 ms", "next poll in 4000 ms"})
    ASSERT_TRUE(d_mirror.wait_for_log(wait, 60s)) << wait << "\n" << d_mirror.log();
  EXPECT_EQ(count_of(d_mirror.log(), "next poll in 1000 ms"), 1u) << d_mirror.log();

  // Back, with a new serial: the long poll (the only thing that can, within the hour) brings it.
  add_package(model, "edge/main/x86_64", "newpkg-2.0-r0.apk", 4242);
  rebuild_index(model, "edge/main/x86_64", 1'800'000'000);
  materialize(model, source);
  ASSERT_TRUE(Exited(origin.once(), 0));
  d_origin = std::make_unique<Daemon>(origin, "origin-2.log");
  ASSERT_TRUE(d_mirror.wait_for_log("long poll: the parent answers again", 120s)) << d_mirror.log();
  ASSERT_TRUE(converges(source, mirror.tree(), 120s)) << d_mirror.log();

  // Gone again: the count starts from 1 s again.
  d_origin->kill();
  ASSERT_TRUE(wait_for_count(d_mirror, "next poll in 1000 ms", 2, 60s)) << d_mirror.log();
  EXPECT_EQ(d_mirror.terminate(10s), 0) << d_mirror.log();
}

// ---------------------------------------------------------------------------------------------
// A parent's graceful restart (a package upgrade): stopped with SIGTERM, it answers the long poll
// it holds 503 with Retry-After: 1 (docs/protocol.md), and the relay asks again within seconds,
// not after its poll period (an hour here; the poll itself would wait up to 300 s). Back on the
// same port with a new serial, the parent's answer brings it.

/// Waits (bounded, every 100 ms) until the metrics at `url` hold the line `line`.
bool wait_for_metric(const std::string& url, const std::string& line, std::chrono::seconds limit) {
  for (int i = 0; i <= limit / 100ms; ++i) {
    const RunResult r = run({"curl", "--silent", "--fail", "--max-time", "10", url});
    if (r.exited(0) && count_of(r.out, "\n" + line + "\n") > 0) return true;
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

TEST_F(BehaviourTest, TheLongPollAsksAgainSoonAfterItsParentRestarts) {
  ASSERT_TRUE(have_curl()) << "curl is not installed: .ci/setup.sh installs it";
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}},
                        {"listen", loopback_listen()}});
  ASSERT_TRUE(Exited(origin.once(), 0));
  auto d_origin = std::make_unique<Daemon>(origin, "origin-1.log");
  const std::uint16_t port = d_origin->port();
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/";
  amend_config(origin, {{"listen", {{{"address", "127.0.0.1"}, {"port", port}, {"tls", false}}}}});
  Node mirror = make_mirror(root / "mirror", "mirror", url, {key.pub});
  amend_config(mirror, {{"upstream", {{"poll_seconds", 3600}}}});
  Daemon d_mirror(mirror);
  ASSERT_TRUE(converges(source, mirror.tree(), 60s)) << d_mirror.log();
  // The relay's long poll is held by the parent when it stops.
  ASSERT_TRUE(wait_for_metric(url + "metrics", "tiersync_http_long_polls_waiting 1", 60s))
      << d_mirror.log();

  ASSERT_TRUE(d_origin->stop());
  ASSERT_TRUE(d_mirror.wait_for_log("long poll: the parent asks to be asked again in 1 s", 30s))
      << d_mirror.log();

  // Upgraded and started again, with a new serial.
  add_package(model, "edge/main/x86_64", "newpkg-2.0-r0.apk", 4242);
  rebuild_index(model, "edge/main/x86_64", 1'800'000'000);
  materialize(model, source);
  ASSERT_TRUE(Exited(origin.once(), 0));
  d_origin = std::make_unique<Daemon>(origin, "origin-2.log");
  EXPECT_TRUE(converges(source, mirror.tree(), 120s)) << d_mirror.log();
  EXPECT_EQ(read_published_snapshot(mirror.tree()).serial, 2u) << d_mirror.log();
  EXPECT_TRUE(d_mirror.wait_for_log("long poll: the parent answers again", 30s)) << d_mirror.log();
  EXPECT_TRUE(d_mirror.stop()) << d_mirror.log();
  EXPECT_TRUE(d_origin->stop());
}

// ---------------------------------------------------------------------------------------------
// A held serial does not wake the relay again and again: the parent (a static one, which
// answers every long poll at once) keeps offering the serial the relay holds; the poll asks for
// a newer one, backs off (1, 2, 4, 8 s: it says so each time), and the loop runs no cycle for it
// (one hold line, from the first cycle). Counted over four polls.

TEST_F(BehaviourTest, AHeldSerialOfferedAgainAndAgainWakesNoCycle) {
  const std::string purged = "edge/community/armv7";
  ASSERT_TRUE(Exited(origin.once(), 0));
  StallingParent parent(origin.tree());
  Node mirror = make_mirror(root / "mirror", "mirror", parent.url(), {key.pub},
                            {{"trust_upstream_approvals", false}});
  amend_config(mirror, {{"upstream", {{"poll_seconds", 3600}}}});
  ASSERT_TRUE(Exited(mirror.once(), 0));

  // The purge, approved at tier0, is held at the mirror, which does not trust that approval.
  remove_partition(model, purged);
  materialize(model, source);
  ASSERT_TRUE(Exited(origin.once(), kHeld));
  ASSERT_TRUE(Exited(origin.ctl({"approve", purged}), 0));
  ASSERT_TRUE(Exited(origin.once(), 0));
  const std::uint64_t offered = read_published_snapshot(origin.tree()).serial;

  Daemon d_mirror(mirror);
  const std::string hold = "hold: partition=" + purged;
  ASSERT_TRUE(d_mirror.wait_for_log(hold, 60s)) << d_mirror.log();
  const std::string not_newer = "long poll: serial " + std::to_string(offered) + " is not newer";
  for (const char* wait : {"next poll in 1000 ms", "next poll in 2000 ms", "next poll in 4000 ms",
                           "next poll in 8000 ms"})
    ASSERT_TRUE(d_mirror.wait_for_log(wait, 60s)) << wait << "\n" << d_mirror.log();
  const std::string log = d_mirror.log();
  EXPECT_EQ(count_of(log, not_newer), 4u) << log;
  EXPECT_EQ(count_of(log, hold), 1u) << log;
  EXPECT_EQ(held_partitions(mirror.status()), std::set<std::string>{purged});
  EXPECT_TRUE(d_mirror.stop()) << d_mirror.log();
}

}  // namespace
}  // namespace tiersync::it
