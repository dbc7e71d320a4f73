// tiersyncd over HTTPS on loopback: a test PKI made with the openssl CLI at test time (a CA, a
// server certificate for 127.0.0.1 and localhost, a stranger CA with its own server certificate),
// a relay chain over TLS, certificate and host-name failures, Range requests, a parent killed
// mid-transfer and clients that connect and say nothing. Every wait is bounded.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "tests/common/pki.h"
#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

using namespace std::chrono_literals;

// A TCP connection to 127.0.0.1:port, or -1.
int connect_to(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Waits (bounded) until something accepts connections on the port.
bool listening(std::uint16_t port, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (int fd = connect_to(port); fd >= 0) {
      ::close(fd);
      return true;
    }
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

// Waits (bounded) until a tier0 has published the source: its tree matches, the snapshot is
// there and the port it reported accepts connections.
bool published(const Node& origin, Daemon& daemon, const fs::path& source,
               std::chrono::seconds limit) {
  const std::uint16_t port = daemon.port();
  const auto deadline = std::chrono::steady_clock::now() + limit;
  if (!converges(source, origin.tree(), limit)) return false;
  while (std::chrono::steady_clock::now() < deadline) {
    if (fs::exists(origin.tree() / ".tiersync/v1/snapshot")) break;
    std::this_thread::sleep_for(100ms);
  }
  return fs::exists(origin.tree() / ".tiersync/v1/snapshot") &&
         listening(port, std::chrono::duration_cast<std::chrono::seconds>(
                             std::max(deadline - std::chrono::steady_clock::now(),
                                      std::chrono::steady_clock::duration(1s))));
}

// ---------------------------------------------------------------------------------------------
// The test PKI

using testing_pki::CertKey;
using testing_pki::make_pki;
using testing_pki::make_server_cert;
using testing_pki::Pki;

// HTTPS on 127.0.0.1, port 0: the daemon reports the port it bound (Daemon::port()).
json tls_listen(const CertKey& cert) {
  return loopback_listen(cert.cert, cert.key);
}

// A tier0 serving `source` over HTTPS with `cert`.
Node https_origin(const fs::path& home, const fs::path& source, const KeyFiles& key,
                  const CertKey& cert) {
  Node origin = make_origin(home, "dl-master", source, key.key);
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}},
                        {"listen", tls_listen(cert)}});
  return origin;
}

// A mirror of `parent_url` (a running parent's Daemon::url()) verifying against `ca`.
Node https_mirror(const fs::path& home, const std::string& name, const std::string& parent_url,
                  const CertKey& ca, const KeyFiles& key) {
  Node m = make_mirror(home, name, parent_url, {key.pub});
  amend_config(m, {{"upstream", {{"ca_file", ca.cert.string()}, {"poll_seconds", 60}}}});
  return m;
}

RunResult once(const Node& node, std::chrono::seconds limit) {
  return run({kTiersyncd, "--config", node.config().string(), "--once"}, {}, limit);
}

// A fixture: a temp folder, the PKI, an origin key and a sample source.
class HttpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pki = make_pki(root / "pki");
    key = keygen(root / "keys/origin");
    model = make_sample();
    materialize(model, source);
  }

  TempDir root{"tiersync-https"};
  Pki pki;
  KeyFiles key;
  TreeModel model;
  fs::path source = root / "incoming";
};

// ---------------------------------------------------------------------------------------------

TEST_F(HttpsTest, ThreeNodesOverHttpsConvergeByteForByte) {
  // Each parent first: a child's URL holds the port its parent reported.
  Node origin = https_origin(root / "origin", source, key, pki.server);
  Daemon d_origin(origin);
  Node a = https_mirror(root / "mirror-a", "mirror-a", d_origin.url(), pki.ca, key);
  amend_config(a, {{"listen", tls_listen(pki.server)}});
  Daemon d_a(a);
  Node b = https_mirror(root / "mirror-b", "mirror-b", d_a.url(), pki.ca, key);
  Daemon d_b(b);
  const auto logs = [&] {
    return "--- origin ---\n" + d_origin.log() + "--- mirror-a ---\n" + d_a.log() +
           "--- mirror-b ---\n" + d_b.log();
  };
  ASSERT_TRUE(converges(source, b.tree(), 30s)) << "mirror-b never matched the source\n" << logs();
  EXPECT_TRUE(TreeMatches(b.tree(), model));

  // The snapshot is re-served byte for byte (waited for: it may land just after the content).
  const fs::path origin_snap = origin.tree() / ".tiersync/v1/snapshot";
  const fs::path b_snap = b.tree() / ".tiersync/v1/snapshot";
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline &&
         !(fs::exists(b_snap) && read_file(b_snap) == read_file(origin_snap)))
    std::this_thread::sleep_for(100ms);
  ASSERT_TRUE(fs::exists(b_snap)) << logs();
  EXPECT_EQ(read_file(b_snap), read_file(origin_snap)) << logs();
  EXPECT_TRUE(d_b.stop());
  EXPECT_TRUE(d_a.stop());
  EXPECT_TRUE(d_origin.stop());
}

// The empty-$arch accident over HTTPS, three daemons: the builder's upload deletes every
// architecture of edge/main but x86_64 at the source. tier0 holds them, publishes the healthy
// change, and the mirror two hops down serves every file it served before, over TLS.
TEST_F(HttpsTest, TheAccidentIsHeldAndEveryFileStillServed) {
  ASSERT_TRUE(have_curl()) << "curl is not installed: .ci/setup.sh installs it";
  Node origin = https_origin(root / "origin", source, key, pki.server);
  Daemon d_origin(origin);
  Node tier1 = https_mirror(root / "tier1", "tier1", d_origin.url(), pki.ca, key);
  amend_config(tier1, {{"role", "tier1"}, {"listen", tls_listen(pki.server)}});
  Daemon d_tier1(tier1);
  Node mirror = https_mirror(root / "mirror", "mirror", d_tier1.url(), pki.ca, key);
  amend_config(mirror, {{"listen", tls_listen(pki.server)}});
  Daemon d_mirror(mirror);
  const auto logs = [&] {
    return "--- origin ---\n" + d_origin.log() + "--- tier1 ---\n" + d_tier1.log() +
           "--- mirror ---\n" + d_mirror.log();
  };
  ASSERT_TRUE(converges(source, mirror.tree(), 30s)) << logs();
  const TreeModel before = model;

  // rsync --delete-delay $repo/$arch with an empty $arch: edge/main/ now holds x86_64 alone,
  // with the package the builder meant to upload.
  TreeModel upload = model;
  std::set<std::string> lost;
  for (const auto& partition : partitions_of(model))
    if (partition.starts_with("edge/main/") && partition != "edge/main/x86_64") {
      lost.insert(partition);
      remove_partition(upload, partition);
    }
  ASSERT_FALSE(lost.empty());
  const std::string added = add_package(upload, "edge/main/x86_64", "newpkg-2.0-r0.apk", 99);
  rebuild_index(upload, "edge/main/x86_64", kBaseMtime + 9000);
  materialize(upload, source);

  // The healthy partition goes through to the mirror; the lost ones are held at tier0.
  TreeModel expected = before;
  for (const auto& path : paths_in(upload, "edge/main/x86_64")) expected[path] = upload.at(path);
  bool arrived = false;
  for (int i = 0; i < 300 && !arrived; ++i) {
    arrived = fs::exists(mirror.tree() / added) && TreeMatches(mirror.tree(), expected);
    if (!arrived) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(arrived) << TreeMatches(mirror.tree(), expected).message() << logs();
  EXPECT_EQ(held_partitions(origin.status()), lost) << logs();

  // Every file the mirror served before the accident is still served, byte for byte, over TLS.
  int checked = 0;
  for (const auto& [path, spec] : before) {
    if (spec.link || !lost.count(partition_of(path))) continue;
    const RunResult r = run({"curl", "--silent", "--show-error", "--fail", "--cacert",
                             pki.ca.cert.string(), d_mirror.url() + path},
                            {}, 30s);
    ASSERT_TRUE(Exited(r, 0)) << path;
    EXPECT_TRUE(r.out == spec.bytes) << path;
    ++checked;
  }
  EXPECT_GT(checked, 20);
  EXPECT_TRUE(d_mirror.stop());
  EXPECT_TRUE(d_tier1.stop());
  EXPECT_TRUE(d_origin.stop());
}

TEST_F(HttpsTest, UnknownCaIsRefusedAndNothingIsWritten) {
  Node origin = https_origin(root / "origin", source, key, pki.server);
  Daemon d_origin(origin);
  ASSERT_TRUE(published(origin, d_origin, source, 30s)) << d_origin.log();

  Node m = https_mirror(root / "mirror", "mirror", d_origin.url(), pki.stranger_ca, key);
  const RunResult r = once(m, 30s);
  EXPECT_TRUE(Exited(r, 1));
  EXPECT_TRUE(StderrNames(r, {{"certificate verify failed"}}));
  EXPECT_TRUE(list_tree(m.tree()).empty()) << "content written despite the failed verification";

  // The same parent with the right CA works: the refusal was the CA's doing.
  amend_config(m, {{"upstream", {{"ca_file", pki.ca.cert.string()}}}});
  EXPECT_TRUE(Exited(once(m, 30s), 0));
  EXPECT_TRUE(TreeMatches(m.tree(), model));
}

TEST_F(HttpsTest, ParentWithAStrangersCertificateIsRefused) {
  Node origin = https_origin(root / "origin", source, key, pki.stranger_server);
  Daemon d_origin(origin);
  ASSERT_TRUE(published(origin, d_origin, source, 30s)) << d_origin.log();

  Node m = https_mirror(root / "mirror", "mirror", d_origin.url(), pki.ca, key);
  const RunResult r = once(m, 30s);
  EXPECT_TRUE(Exited(r, 1));
  EXPECT_TRUE(StderrNames(r, {{"certificate verify failed"}}));
  EXPECT_TRUE(list_tree(m.tree()).empty()) << "content written despite the failed verification";
}

TEST_F(HttpsTest, HostNameMismatchIsRefused) {
  const CertKey other = make_server_cert(pki.ca, root / "pki", "otherhost", "DNS:otherhost", 4);
  Node origin = https_origin(root / "origin", source, key, other);
  Daemon d_origin(origin);
  ASSERT_TRUE(published(origin, d_origin, source, 30s)) << d_origin.log();

  Node m = https_mirror(root / "mirror", "mirror", d_origin.url(), pki.ca, key);
  const RunResult r = once(m, 30s);
  EXPECT_TRUE(Exited(r, 1));
  EXPECT_TRUE(StderrNames(r, {{"mismatch"}}));
  EXPECT_TRUE(list_tree(m.tree()).empty()) << "content written despite the failed verification";
}

TEST_F(HttpsTest, RangeRequestGetsExactlyThoseBytes) {
  ASSERT_TRUE(have_curl()) << "curl is not installed: .ci/setup.sh installs it";
  Node origin = https_origin(root / "origin", source, key, pki.server);
  Daemon d_origin(origin);
  ASSERT_TRUE(published(origin, d_origin, source, 30s)) << d_origin.log();

  const std::vector<std::string> packages = packages_in(model, "edge/main/x86_64");
  ASSERT_FALSE(packages.empty());
  const std::string& path = packages.front();
  const std::string& bytes = model.at(path).bytes;
  ASSERT_GE(bytes.size(), 20u);

  const RunResult r =
      run({"curl", "--silent", "--show-error", "--fail", "--cacert", pki.ca.cert.string(), "-r",
           "10-19", "-w", "\n%{http_code}", d_origin.url() + path},
          {}, 30s);
  ASSERT_TRUE(Exited(r, 0));
  const std::size_t nl = r.out.rfind('\n');
  ASSERT_NE(nl, std::string::npos) << r.describe();
  EXPECT_EQ(r.out.substr(nl + 1), "206");
  EXPECT_EQ(r.out.substr(0, nl), bytes.substr(10, 10));
  EXPECT_TRUE(d_origin.stop());
}

// SIGHUP reloads the listeners' certificates: new connections get the renewed one without a
// restart. A reload whose certificate does not load is refused and the one in use stays.
TEST_F(HttpsTest, SighupReloadsTheCertificate) {
  ASSERT_TRUE(have_curl()) << "curl is not installed: .ci/setup.sh installs it";
  const CertKey live{root / "live.pem", root / "live.key"};
  fs::copy_file(pki.server.cert, live.cert);
  fs::copy_file(pki.server.key, live.key);
  Node origin = https_origin(root / "origin", source, key, live);
  Daemon d_origin(origin);
  ASSERT_TRUE(published(origin, d_origin, source, 30s)) << d_origin.log();

  const std::string url = d_origin.url() + ".tiersync/v1/status";
  auto trusted_by = [&](const CertKey& ca) {
    return run({"curl", "--silent", "--fail", "--max-time", "5", "--cacert", ca.cert.string(), "-o",
                "/dev/null", url},
               {}, 10s)
        .exited(0);
  };
  ASSERT_TRUE(trusted_by(pki.ca));
  ASSERT_FALSE(trusted_by(pki.stranger_ca));

  // Renewed in place, as certbot or an operator would, then SIGHUP.
  fs::copy_file(pki.stranger_server.cert, live.cert, fs::copy_options::overwrite_existing);
  fs::copy_file(pki.stranger_server.key, live.key, fs::copy_options::overwrite_existing);
  d_origin.signal(SIGHUP);
  bool renewed = false;
  for (int i = 0; i < 100 && !renewed; ++i) {
    renewed = trusted_by(pki.stranger_ca);
    if (!renewed) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(renewed) << d_origin.log();
  EXPECT_FALSE(trusted_by(pki.ca));

  // A certificate that does not load: the reload is refused, logged with the file, and the
  // renewed certificate stays in use.
  std::ofstream(live.cert, std::ios::trunc) << "not a certificate\n";
  d_origin.signal(SIGHUP);
  bool refused = false;
  for (int i = 0; i < 100 && !refused; ++i) {
    refused = contains_nocase(d_origin.log(), "reload refused");
    if (!refused) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(refused) << d_origin.log();
  EXPECT_TRUE(contains_nocase(d_origin.log(), live.cert.string())) << d_origin.log();
  EXPECT_TRUE(trusted_by(pki.stranger_ca)) << d_origin.log();
  EXPECT_TRUE(d_origin.stop());
}

// 64 MiB of deterministic bytes (xorshift64*).
std::string big_bytes(std::size_t size, std::uint64_t seed) {
  std::string out(size, '\0');
  std::uint64_t x = seed | 1;
  for (std::size_t i = 0; i < size; i += 8) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    const std::uint64_t v = x * 0x2545F4914F6CDD1DULL;
    for (std::size_t j = 0; j < 8 && i + j < size; ++j)
      out[i + j] = static_cast<char>(v >> (8 * j));
  }
  return out;
}

TEST_F(HttpsTest, ParentKilledMidTransferThenRestartedConverges) {
  const std::string big = "edge/main/x86_64/big-1.0-r0.apk";
  model[big] = FileSpec{big_bytes(64u << 20, 77), kBaseMtime + 500};
  rebuild_index(model, "edge/main/x86_64", kBaseMtime + 600);
  materialize(model, source);

  Node origin = https_origin(root / "origin", source, key, pki.server);
  auto d_origin = std::make_unique<Daemon>(origin);
  ASSERT_TRUE(published(origin, *d_origin, source, 30s)) << d_origin->log();
  Node m = https_mirror(root / "mirror", "mirror", d_origin->url(), pki.ca, key);
  amend_config(m, {{"upstream", {{"max_bytes_per_second", 8u << 20}}}});

  {
    Process first({kTiersyncd, "--config", m.config().string(), "--once"},
                  root / "mirror-first.log");
    // Killed mid-transfer: once the big file is partly staged (bounded: 30 s), not after a
    // guessed delay.
    const fs::path staging = m.tree() / ".tiersync/staging/files";
    bool staging_big = false;
    for (int i = 0; i < 300 && !staging_big; ++i) {
      std::error_code ec;
      for (const auto& f : fs::directory_iterator(staging, ec))
        if (fs::file_size(f.path(), ec) > (1u << 20)) staging_big = true;
      if (!staging_big) std::this_thread::sleep_for(100ms);
    }
    ASSERT_TRUE(staging_big) << first.log();
    ASSERT_EQ(first.wait(0ms), -1) << "the throttled download ended before the parent was killed\n"
                                   << first.log();
    d_origin->kill();
    const int code = first.wait(30s);
    EXPECT_EQ(code, 1) << first.log();
  }
  EXPECT_FALSE(fs::exists(m.tree() / big)) << "a file appeared before its download completed";

  // Restarted on port 0, it binds another port: the mirror is told the new URL.
  d_origin = std::make_unique<Daemon>(origin, "daemon-restarted.log");
  ASSERT_TRUE(published(origin, *d_origin, source, 30s)) << d_origin->log();
  amend_config(m, {{"upstream", {{"url", d_origin->url()}}}});
  const RunResult r = once(m, 30s);
  EXPECT_TRUE(Exited(r, 0)) << d_origin->log();
  EXPECT_TRUE(TreeMatches(m.tree(), model));
  EXPECT_TRUE(d_origin->stop());
}

TEST_F(HttpsTest, SilentClientsDoNotBlockTheServer) {
  Node origin = https_origin(root / "origin", source, key, pki.server);
  Daemon d_origin(origin);
  ASSERT_TRUE(published(origin, d_origin, source, 30s)) << d_origin.log();

  // Ten connections that say nothing, ten that stop halfway through a ClientHello's record.
  struct Fds {
    std::vector<int> fds;
    ~Fds() {
      for (int fd : fds) ::close(fd);
    }
  } silent;
  const unsigned char partial_hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc};
  for (int i = 0; i < 20; ++i) {
    const int fd = connect_to(d_origin.port());
    ASSERT_GE(fd, 0);
    silent.fds.push_back(fd);
    if (i % 2 == 1) {
      ASSERT_EQ(::send(fd, partial_hello, sizeof partial_hello, 0),
                static_cast<ssize_t>(sizeof partial_hello));
    }
  }

  // The mirror syncs while every silent connection is still open (the server closes them only
  // at its handshake timeout): it was served beside them, not after them.
  Node m = https_mirror(root / "mirror", "mirror", d_origin.url(), pki.ca, key);
  const RunResult r = once(m, 30s);
  EXPECT_TRUE(Exited(r, 0)) << d_origin.log();
  EXPECT_TRUE(TreeMatches(m.tree(), model));
  for (int fd : silent.fds) {
    char byte;
    const ssize_t got = ::recv(fd, &byte, 1, MSG_DONTWAIT);
    EXPECT_TRUE(got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        << "a silent connection was closed before the mirror finished: it had to wait for it";
  }
  EXPECT_TRUE(d_origin.stop());
}

}  // namespace
}  // namespace tiersync::it
