// tiersyncd as a long-running daemon: three real processes (tier0, a mirror, a mirror of that
// mirror) over plain HTTP on loopback ports. The built-in server, the relay's long poll and
// SIGTERM. Every wait is bounded; nothing here is a timing assertion but SIGTERM's 5 seconds.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cstring>

#include <chrono>
#include <fstream>
#include <optional>
#include <thread>

#include <gtest/gtest.h>

#include "tests/integration/fake_parent.h"
#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

using namespace std::chrono_literals;

class DaemonTest : public OriginTest {};

TEST_F(DaemonTest, ThreeNodesOverHttpConvergeAndFollowChanges) {
  // Port 0 everywhere, each parent started first: a child's URL holds its parent's bound port.
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}},
                        {"listen", loopback_listen()}});
  Daemon d_origin(origin);
  Node a = make_mirror(root / "mirror-a", "mirror-a", d_origin.url(), {key.pub});
  amend_config(a, {{"listen", loopback_listen()}, {"upstream", {{"poll_seconds", 60}}}});
  Daemon d_a(a);
  Node b = make_mirror(root / "mirror-b", "mirror-b", d_a.url(), {key.pub});
  amend_config(b, {{"upstream", {{"poll_seconds", 60}}}});
  Daemon d_b(b);
  ASSERT_TRUE(converges(source, b.tree(), 30s))
      << "mirror-b never matched the source\n--- origin ---\n"
      << d_origin.log() << "--- mirror-a ---\n"
      << d_a.log() << "--- mirror-b ---\n"
      << d_b.log();

  // A new upload reaches the mirror two hops down through the long polls (poll_seconds is 60:
  // without them it would not arrive within the bound).
  add_package(model, "edge/main/x86_64", "newpkg-2.0-r0.apk", 4242);
  rebuild_index(model, "edge/main/x86_64", 1'800'000'000);
  materialize(model, source);
  EXPECT_TRUE(converges(source, b.tree(), 20s))
      << "the change did not propagate\n--- mirror-a ---\n"
      << d_a.log() << "--- mirror-b ---\n"
      << d_b.log();

  // The relay re-serves the origin's snapshot byte for byte.
  EXPECT_EQ(read_file(b.tree() / ".tiersync/v1/snapshot"),
            read_file(origin.tree() / ".tiersync/v1/snapshot"));

  // SIGTERM: each stops within 5 seconds, exit 0, even with a long poll in flight.
  EXPECT_TRUE(d_b.stop(5s));
  EXPECT_TRUE(d_a.stop(5s));
  EXPECT_TRUE(d_origin.stop(5s));
}

// SIGTERM in the middle of a long download: the daemon stops within 5 seconds, exit 0, without
// installing anything of the half-fetched snapshot; started again, it converges.
TEST_F(DaemonTest, SigtermDuringALongDownloadStopsPromptlyAndCleanly) {
  // 24 MiB at 1 MiB/s: the download lasts far longer than the 5 seconds SIGTERM may take.
  std::string big(24u << 20, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 24);
  write_file(source / "edge/main/x86_64/zz-big-1.0-r0.apk", big, 1'700'000'000);

  ASSERT_TRUE(have_curl()) << "curl is not installed: .ci/setup.sh installs it";
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}},
                        {"listen", loopback_listen()}});
  ASSERT_TRUE(Exited(origin.once(), 0));
  Daemon d_origin(origin);
  Node mirror = make_mirror(root / "mirror", "mirror", d_origin.url(), {key.pub});
  amend_config(mirror, {{"upstream", {{"poll_seconds", 60}, {"max_bytes_per_second", 1 << 20}}}});
  std::optional<Daemon> d_mirror(std::in_place, mirror);

  // Wait (bounded) until the big file is being staged.
  const fs::path staging = mirror.tree() / ".tiersync/staging/files";
  bool staging_big = false;
  for (int i = 0; i < 300 && !staging_big; ++i) {
    std::error_code ec;
    for (const auto& f : fs::directory_iterator(staging, ec))
      if (fs::file_size(f.path(), ec) > (1u << 20)) staging_big = true;
    if (!staging_big) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(staging_big) << d_mirror->log();

  EXPECT_TRUE(d_mirror->stop(5s));  // exit 0 within the 5 seconds promised
  // Nothing of the candidate was installed: no content file at all on a first sync.
  EXPECT_TRUE(files_in(list_tree(mirror.tree())).empty()) << d_mirror->log();
  // The part of the big file already downloaded stays staged, for the next run to resume.
  std::uintmax_t kept = 0;
  {
    std::error_code ec;
    for (const auto& f : fs::directory_iterator(staging, ec))
      kept = std::max(kept, fs::file_size(f.path(), ec));
  }
  EXPECT_GE(kept, 1u << 20) << d_mirror->log();
  EXPECT_LT(kept, big.size()) << d_mirror->log();

  // Started again without the limit, it converges, fetching only the rest of the big file:
  // the parent answered a Range (206), and the first run's bytes were verified with the rest.
  amend_config(mirror, {{"upstream", {{"max_bytes_per_second", 0}}}});
  d_mirror.emplace(mirror);
  EXPECT_TRUE(converges(source, mirror.tree(), 30s)) << d_mirror->log();
  EXPECT_EQ(read_file(mirror.tree() / "edge/main/x86_64/zz-big-1.0-r0.apk"), big);
  bool resumed = false;
  for (int i = 0; i < 50 && !resumed; ++i) {
    resumed = contains_nocase(d_mirror->log(), "resumed=1");
    if (!resumed) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(resumed) << d_mirror->log();
  const RunResult metrics =
      run({"curl", "--silent", "--show-error", "--max-time", "5", d_origin.url() + "metrics"});
  ASSERT_TRUE(Exited(metrics, 0));
  EXPECT_TRUE(contains_nocase(metrics.out, "tiersync_http_requests_total{code=\"206\"}"))
      << metrics.out;
}

// tiersyncctl sync-now reaches a running daemon over its control socket (mode 0600) and starts a
// cycle at once: with poll_seconds at an hour, nothing else would.
TEST_F(DaemonTest, SyncNowStartsACycleThroughTheControlSocket) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  Node mirror = make_mirror(root / "mirror", "mirror", origin.url(), {key.pub});
  amend_config(mirror, {{"upstream", {{"poll_seconds", 3600}}}});

  // No daemon yet: sync-now says so and fails.
  RunResult none = mirror.ctl({"sync-now"});
  EXPECT_TRUE(none.exited(1)) << none.describe();
  EXPECT_TRUE(contains_nocase(none.err, "no daemon")) << none.describe();

  Daemon d_mirror(mirror);
  ASSERT_TRUE(converges(source, mirror.tree(), 30s)) << d_mirror.log();
  const fs::path socket = mirror.state() / "control.sock";
  struct stat st {};
  ASSERT_EQ(::stat(socket.c_str(), &st), 0) << d_mirror.log();
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  add_package(model, "edge/main/x86_64", "newpkg-2.0-r0.apk", 4242);
  rebuild_index(model, "edge/main/x86_64", 1'800'000'000);
  materialize(model, source);
  ASSERT_TRUE(Exited(origin.once(), 0));
  RunResult now = mirror.ctl({"sync-now"});
  EXPECT_TRUE(now.exited(0)) << now.describe();
  EXPECT_TRUE(converges(source, mirror.tree(), 20s)) << d_mirror.log();
  EXPECT_TRUE(d_mirror.stop(5s));
}

// SIGHUP reloads the configuration, or refuses the whole reload and keeps the running one: a
// file that is not JSON, a resource that fails (a signing key that does not load), and what the
// process holds for its life (state_dir, control_socket) each get a refusal naming the cause.
TEST_F(DaemonTest, ReloadRefusalsKeepTheRunningConfiguration) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  const std::string good = read_file(origin.config());
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}}});
  const std::string running = read_file(origin.config());
  Daemon d_origin(origin);
  ASSERT_TRUE(d_origin.wait_for_log("tiersyncd started", 20s)) << d_origin.log();

  auto count = [&](std::string_view needle) {
    const std::string log = d_origin.log();
    std::size_t n = 0;
    for (auto at = log.find(needle); at != std::string::npos; at = log.find(needle, at + 1)) ++n;
    return n;
  };
  // Each refusal is one more "reload refused" line, naming what is wrong.
  auto refused = [&](const std::string& config, std::string_view why) {
    const std::size_t before = count("reload refused");
    write_file(origin.config(), config);
    d_origin.signal(SIGHUP);
    for (int i = 0; i < 400 && count("reload refused") == before; ++i)
      std::this_thread::sleep_for(50ms);  // bounded: 20 s
    const std::string log = d_origin.log();
    const auto at = log.rfind("reload refused");
    return at != std::string::npos && count("reload refused") == before + 1 &&
           log.find(why, at) != std::string::npos;
  };
  json doc = json::parse(running);
  EXPECT_TRUE(refused("{\"role\": ", "JSON")) << d_origin.log();
  json bad_key = doc;
  bad_key["signing_key"] = (root / "missing.key").string();
  EXPECT_TRUE(refused(bad_key.dump(), "missing.key")) << d_origin.log();
  json moved_state = doc;
  moved_state["state_dir"] = (root / "elsewhere").string();
  EXPECT_TRUE(refused(moved_state.dump(), "state_dir changed")) << d_origin.log();
  json moved_socket = doc;
  moved_socket["control_socket"] = (root / "other.sock").string();
  EXPECT_TRUE(refused(moved_socket.dump(), "control_socket changed")) << d_origin.log();
  EXPECT_FALSE(fs::exists(root / "other.sock")) << "the socket moved although refused";
  EXPECT_EQ(count("configuration reloaded"), 0u) << d_origin.log();

  // The running configuration still works: an upload is published, and the control socket
  // where it was answers.
  write_file(origin.config(), running);
  d_origin.signal(SIGHUP);
  ASSERT_TRUE(d_origin.wait_for_log("configuration reloaded", 20s)) << d_origin.log();
  add_package(model, "edge/main/x86_64", "newpkg-2.0-r0.apk", 4242);
  rebuild_index(model, "edge/main/x86_64", 1'800'000'000);
  materialize(model, source);
  EXPECT_TRUE(converges(source, origin.tree(), 30s)) << d_origin.log();
  EXPECT_TRUE(origin.ctl({"sync-now"}).exited(0));
  EXPECT_TRUE(d_origin.stop(10s));
  write_file(origin.config(), good);
}

// At tier0, sync-now publishes at once, without waiting settle_seconds for a quiet source.
TEST_F(DaemonTest, SyncNowPublishesAtTier0WithoutWaitingToSettle) {
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 3600}}}});
  ASSERT_TRUE(Exited(origin.once(), 0));  // --once skips the settle wait
  Daemon d_origin(origin);

  add_package(model, "edge/main/x86_64", "newpkg-2.0-r0.apk", 4242);
  rebuild_index(model, "edge/main/x86_64", 1'800'000'000);
  materialize(model, source);
  // Once the daemon has seen the change (it says so), it waits for the source to settle: an
  // hour here, so nothing is published until sync-now.
  ASSERT_TRUE(
      d_origin.wait_for_log("source changed: publishing once it has been quiet for 3600 s", 20s))
      << d_origin.log();
  EXPECT_FALSE(fs::exists(origin.tree() / "edge/main/x86_64/newpkg-2.0-r0.apk"));
  // The control socket needs a moment after start; retry a few times, bounded.
  RunResult now;
  for (int i = 0; i < 50; ++i) {
    now = origin.ctl({"sync-now"});
    if (now.exited(0)) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(now.exited(0)) << now.describe();
  EXPECT_TRUE(converges(source, origin.tree(), 20s)) << d_origin.log();
  EXPECT_TRUE(d_origin.stop(5s));
}

// A builder's `.tiersync-busy` holds publishing back; removing it publishes as soon as the
// source has settled (not at the next minute's re-sign check).
TEST_F(DaemonTest, Tier0PublishesOnceTheBusyMarkerGoes) {
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}}});
  ASSERT_TRUE(Exited(origin.once(), 0));
  Daemon d_origin(origin);

  write_file(source / ".tiersync-busy", "uploading\n");
  const std::string added = add_package(model, "edge/main/x86_64", "newpkg-2.0-r0.apk", 4242);
  rebuild_index(model, "edge/main/x86_64", 1'800'000'000);
  for (const std::string& path : {added, std::string("edge/main/x86_64/APKINDEX.tar.gz")})
    write_file(source / path, model.at(path).bytes, model.at(path).mtime, model.at(path).mode);
  // The daemon saw the upload and tried: the marker kept it from publishing.
  ASSERT_TRUE(d_origin.wait_for_log("source busy:", 20s)) << d_origin.log();
  EXPECT_FALSE(fs::exists(origin.tree() / "edge/main/x86_64/newpkg-2.0-r0.apk")) << d_origin.log();
  fs::remove(source / ".tiersync-busy");
  EXPECT_TRUE(converges(source, origin.tree(), 10s)) << d_origin.log();
  EXPECT_TRUE(d_origin.stop(5s));
}

// A parent whose server sends a corrupted byte: the relay refuses the file (SHA-256), installs
// nothing, and converges once the parent serves the right bytes again.
TEST_F(DaemonTest, ACorruptedByteFromTheParentIsNeverInstalled) {
  ASSERT_TRUE(Exited(origin.once(), 0));

  // Relay A takes the origin's tree over file:// and serves its own copy over HTTP.
  Node a = make_mirror(root / "mirror-a", "mirror-a", origin.url(), {key.pub});
  amend_config(a, {{"listen", loopback_listen()}, {"upstream", {{"poll_seconds", 3600}}}});
  Daemon d_a(a);
  ASSERT_TRUE(converges(source, a.tree(), 30s)) << d_a.log();

  // One byte of one package flipped on A's disk, size unchanged.
  const std::string victim = packages_in(model_of(source), "edge/main/x86_64")[0];
  const std::string good = read_file(a.tree() / victim);
  std::string bad = good;
  bad[bad.size() / 2] ^= 0x01;
  {
    std::ofstream out(a.tree() / victim, std::ios::binary | std::ios::in | std::ios::out);
    out.write(bad.data(), static_cast<std::streamsize>(bad.size()));
  }

  Node b = make_mirror(root / "mirror-b", "mirror-b", d_a.url(), {key.pub});
  RunResult refused = b.once();
  EXPECT_TRUE(refused.exited(1)) << refused.describe();
  EXPECT_TRUE(contains_nocase(refused.err, "SHA-256")) << refused.describe();
  EXPECT_TRUE(contains_nocase(refused.err, victim)) << refused.describe();
  EXPECT_TRUE(files_in(list_tree(b.tree())).empty()) << "something was installed";

  {
    std::ofstream out(a.tree() / victim, std::ios::binary | std::ios::in | std::ios::out);
    out.write(good.data(), static_cast<std::streamsize>(good.size()));
  }
  RunResult fixed = b.once();
  EXPECT_TRUE(fixed.exited(0)) << fixed.describe();
  EXPECT_TRUE(diff_listings(list_tree(source), list_tree(b.tree())).empty());
}

// The systemd notification protocol, without systemd: a datagram socket of the test's own as
// NOTIFY_SOCKET. READY=1 once started, STATUS= lines, WATCHDOG=1 when WATCHDOG_USEC is set,
// STOPPING=1 on SIGTERM.
TEST_F(DaemonTest, NotifiesAFakeSystemd) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  Node mirror = make_mirror(root / "mirror", "mirror", origin.url(), {key.pub});

  const fs::path socket_path = root / "notify.sock";
  int fd = ::socket(AF_UNIX, SOCK_DGRAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  timeval tv{0, 200'000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  // The child inherits the environment at fork.
  ::setenv("NOTIFY_SOCKET", socket_path.c_str(), 1);
  ::setenv("WATCHDOG_USEC", "200000", 1);
  auto daemon = std::make_unique<Daemon>(mirror);
  ::unsetenv("NOTIFY_SOCKET");
  ::unsetenv("WATCHDOG_USEC");

  std::string received;
  auto receive_until = [&](std::string_view what, std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (received.find(what) == std::string::npos &&
           std::chrono::steady_clock::now() < deadline) {
      char buf[4096];
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) received.append(buf, static_cast<std::size_t>(n)).push_back('\n');
    }
    return received.find(what) != std::string::npos;
  };
  EXPECT_TRUE(receive_until("READY=1", 20s)) << received << daemon->log();
  EXPECT_TRUE(receive_until("STATUS=serial 1", 20s)) << received << daemon->log();
  EXPECT_TRUE(receive_until("WATCHDOG=1", 20s)) << received << daemon->log();
  EXPECT_TRUE(daemon->stop(5s));
  EXPECT_TRUE(receive_until("STOPPING=1", 5s)) << received;
  ::close(fd);
}

// A fake systemd: a datagram socket of the test's own, given to the daemon as NOTIFY_SOCKET
// (with WATCHDOG_USEC) through the environment it inherits at fork.
class FakeSystemd {
 public:
  explicit FakeSystemd(const fs::path& socket_path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_path.c_str(), sizeof addr.sun_path - 1);
    bound_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    timeval tv{0, 200'000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~FakeSystemd() { ::close(fd_); }
  bool bound() const { return bound_; }

  /// Starts a daemon whose environment names this socket, with a watchdog of `watchdog_usec`.
  std::unique_ptr<Daemon> start(const Node& node, const fs::path& socket_path,
                                const std::string& watchdog_usec) {
    ::setenv("NOTIFY_SOCKET", socket_path.c_str(), 1);
    ::setenv("WATCHDOG_USEC", watchdog_usec.c_str(), 1);
    auto daemon = std::make_unique<Daemon>(node);
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("WATCHDOG_USEC");
    return daemon;
  }

  /// The next message, or "" when none came within `limit`.
  std::string next(std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) return std::string(buf, static_cast<std::size_t>(n));
    }
    return {};
  }
  /// Reads messages until one contains `what` (bounded by `limit`); all of them, in order.
  std::vector<std::string> until(std::string_view what, std::chrono::seconds limit) {
    std::vector<std::string> seen;
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      std::string m = next(1s);
      if (m.empty()) continue;
      seen.push_back(m);
      if (m.find(what) != std::string::npos) break;
    }
    return seen;
  }

 private:
  int fd_ = -1;
  bool bound_ = false;
};

bool any_contains(const std::vector<std::string>& messages, std::string_view what) {
  for (const auto& m : messages)
    if (m.find(what) != std::string::npos) return true;
  return false;
}

std::string joined(const std::vector<std::string>& messages) {
  std::string out;
  for (const auto& m : messages) out += m + "\n";
  return out;
}

// The watchdog is fed by the cycle's progress, not by a clock: while a fetch from the parent is
// stalled, the daemon says so and stops pinging (systemd would restart it); once the parent goes
// on, the pings come back. Every assertion is on the messages received, in their order.
TEST_F(DaemonTest, TheWatchdogIsFedByTheCyclesProgress) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  StallingParent parent(origin.tree());
  const std::string victim = packages_in(model, "edge/main/x86_64")[0];
  parent.stall(victim, 100);
  Node mirror = make_mirror(root / "mirror", "mirror", parent.url(), {key.pub});
  // One connection: once the stalled file holds it, nothing else moves.
  amend_config(mirror, {{"upstream", {{"poll_seconds", 3600}, {"connections", 1}}}});

  const fs::path socket_path = root / "notify.sock";
  FakeSystemd systemd(socket_path);
  ASSERT_TRUE(systemd.bound());
  auto daemon = systemd.start(mirror, socket_path, "400000");
  ASSERT_TRUE(parent.wait_stalled(60s)) << daemon->log();

  // The stall is seen: the daemon says "watchdog not fed" at each check instead of pinging. A run
  // of five such checks with no ping between them (earlier messages may come from before the
  // stall, when a slow step under the sanitizers missed a check).
  std::vector<std::string> seen;
  int run_of_unfed = 0;
  for (int i = 0; i < 2000 && run_of_unfed < 5; ++i) {
    std::string m = systemd.next(30s);
    ASSERT_FALSE(m.empty()) << "no message while stalled\n" << joined(seen) << daemon->log();
    seen.push_back(m);
    if (m.find("WATCHDOG=1") != std::string::npos) run_of_unfed = 0;
    if (m.find("watchdog not fed") != std::string::npos) ++run_of_unfed;
  }
  ASSERT_EQ(run_of_unfed, 5) << joined(seen) << daemon->log();

  // The parent goes on: the cycle ends, the pings come back.
  parent.release();
  std::vector<std::string> after = systemd.until("WATCHDOG=1", 60s);
  EXPECT_TRUE(any_contains(after, "WATCHDOG=1")) << joined(after) << daemon->log();
  EXPECT_TRUE(converges(source, mirror.tree(), 30s)) << daemon->log();
  EXPECT_TRUE(daemon->stop(5s));
}

// SIGTERM while a fetch is stalled: the daemon ends with exit 0 and the tree as it was (nothing
// of the candidate installed). The stalled request ends at the transport's read timeout (the
// bound is generous until the transport takes the stop token); the stop is seen at the next byte.
TEST_F(DaemonTest, SigtermDuringAStalledFetchExitsCleanly) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  StallingParent parent(origin.tree());
  const std::string victim = packages_in(model, "edge/main/x86_64")[0];
  parent.stall(victim, 100);
  Node mirror = make_mirror(root / "mirror", "mirror", parent.url(), {key.pub});
  amend_config(mirror, {{"upstream", {{"poll_seconds", 3600}, {"connections", 1}}}});
  Daemon daemon(mirror);
  ASSERT_TRUE(parent.wait_stalled(60s)) << daemon.log();

  EXPECT_TRUE(daemon.stop(150s));
  EXPECT_TRUE(files_in(list_tree(mirror.tree())).empty()) << daemon.log();
  EXPECT_TRUE(contains_nocase(daemon.log(), "stopping on signal")) << daemon.log();
  // The next run converges from what was left.
  parent.release();
  EXPECT_TRUE(Exited(mirror.once(), 0));
  EXPECT_TRUE(diff_listings(list_tree(source), list_tree(mirror.tree())).empty());
}

// One tiersyncd per state_dir, for the daemon's whole life: a second daemon, or a --once, on the
// same state_dir leaves at once (exit 1) naming the holder's pid, and never takes over the first
// one's control socket. tiersyncctl's readers work beside the daemon.
TEST_F(DaemonTest, OneDaemonPerStateDir) {
  ASSERT_TRUE(Exited(origin.once(), 0));
  Node mirror = make_mirror(root / "mirror", "mirror", origin.url(), {key.pub});
  amend_config(mirror, {{"upstream", {{"poll_seconds", 3600}}}});
  Daemon first(mirror);
  ASSERT_TRUE(converges(source, mirror.tree(), 30s)) << first.log();
  RunResult woken;
  for (int i = 0; i < 50 && !woken.exited(0); ++i) {  // the control socket opens at start
    woken = mirror.ctl({"sync-now"});
    if (!woken.exited(0)) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(woken.exited(0)) << woken.describe() << first.log();
  const fs::path socket = mirror.state() / "control.sock";
  struct stat before {};
  ASSERT_EQ(::stat(socket.c_str(), &before), 0);

  const std::string holder = "pid " + std::to_string(first.pid());
  const RunResult second = run({kTiersyncd, "--config", mirror.config().string()}, {}, 60s);
  EXPECT_TRUE(second.exited(1)) << second.describe();
  EXPECT_TRUE(contains_nocase(second.err, holder)) << second.describe();
  EXPECT_TRUE(contains_nocase(second.err, "state_dir")) << second.describe();
  const RunResult once = mirror.once();
  EXPECT_TRUE(once.exited(1)) << once.describe();
  EXPECT_TRUE(contains_nocase(once.err, holder)) << once.describe();

  // The socket is still the first daemon's, and it answers there.
  struct stat after {};
  ASSERT_EQ(::stat(socket.c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino);
  EXPECT_TRUE(Exited(mirror.ctl({"sync-now"}), 0));
  EXPECT_TRUE(Exited(mirror.ctl({"status"}), 0));
  EXPECT_TRUE(Exited(mirror.ctl({"verify"}), 0));

  EXPECT_TRUE(first.stop(5s));
  EXPECT_FALSE(fs::exists(socket)) << "the daemon removes its own socket";
  EXPECT_TRUE(Exited(mirror.once(), 0)) << "the lock goes with the daemon";
}

}  // namespace
}  // namespace tiersync::it
