// The server over real sockets on 127.0.0.1, port 0: curl (and openssl s_client) as clients, a
// test PKI made with the openssl CLI (tests/common/pki.h), raw sockets for slow and excess clients.
// Needs the `curl` and `openssl` commands (.ci/setup.sh: packages curl and openssl); without them
// the network tests fail (they do not skip).

#include "daemon/serve/server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <future>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "proto/manifest.h"
#include "tests/common/pki.h"
#include "tests/unit/support.h"

namespace tiersync::serve {
namespace {

using unit::file_entry;
using unit::manifest;
using unit::read_file;
using unit::write_file;

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string quote(std::string_view arg) {
  std::string out = "'";
  for (char c : arg) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

/// Runs a shell command; returns its exit status.
int run(const std::string& command) {
  int rc = std::system(command.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

bool have(const char* tool) {
  return run(std::string(tool) + " version >/dev/null 2>&1 || " + tool +
             " --version >/dev/null 2>&1") == 0;
}

struct CurlResult {
  int exit = -1;
  int status = 0;
  std::string headers;
  std::string body;
  std::string log;  ///< stderr (-v output)

  /// The value of the last header line `name` (case-insensitive), or "".
  std::string header(std::string_view name) const {
    std::string found;
    std::istringstream in(headers);
    std::string line;
    while (std::getline(in, line)) {  // bounded by the headers' size
      if (!line.empty() && line.back() == '\r') line.pop_back();
      auto colon = line.find(':');
      if (colon == std::string::npos || colon != name.size()) continue;
      if (std::equal(name.begin(), name.end(), line.begin(),
                     [](char a, char b) { return std::tolower(a) == std::tolower(b); }))
        found = line.substr(colon + 2);
    }
    return found;
  }
};

/// A file of `size` bytes that is not all the same byte (ranges must pick the right ones).
std::string pattern(std::size_t size) {
  std::string s(size, '\0');
  for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>((i * 7 + i / 251) % 251);
  return s;
}

/// A raw TCP client for what curl cannot do: say half a request and stay silent.
class RawClient {
 public:
  /// Connects to 127.0.0.1:`port` from `source` (another loopback address: a different client).
  explicit RawClient(std::uint16_t port, const char* source = nullptr) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (source) {
      sockaddr_in from{};
      from.sin_family = AF_INET;
      ::inet_pton(AF_INET, source, &from.sin_addr);
      if (::bind(fd_, reinterpret_cast<sockaddr*>(&from), sizeof from) != 0) return;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }
  bool send(std::string_view bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  /// Closes the connection now (a client that goes away).
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  /// Reads until `text` has arrived (true), the peer closes or `timeout` passes; appends to `out`.
  bool read_until(std::string_view text, std::chrono::milliseconds timeout, std::string& out) {
    const auto deadline = Clock::now() + timeout;
    while (out.find(text) == std::string::npos && Clock::now() < deadline) {  // bounded
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      char buf[4096];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, static_cast<std::size_t>(n));
    }
    return out.find(text) != std::string::npos;
  }
  /// True while the peer has not closed the connection (nothing is read; no waiting).
  bool still_open() {
    char byte;
    const ssize_t n = ::recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
  }
  /// Reads until the peer closes or `timeout` passes; `closed` tells which.
  std::string read_until_close(std::chrono::milliseconds timeout, bool& closed) {
    std::string out;
    closed = false;
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {  // bounded by the deadline
      pollfd p{fd_, POLLIN, 0};
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (::poll(&p, 1, static_cast<int>(std::max<long>(left.count(), 1))) <= 0) continue;
      char buf[4096];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        closed = true;
        break;
      }
      out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

/// One test PKI for the suite (a CA, a server certificate for 127.0.0.1, ::1 and localhost);
/// a fresh tree, view and server (an HTTPS and a plain HTTP listener) per test.
class ServerTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!have("curl") || !have("openssl")) return;
    pki_ = new fs::path(unit::make_temp_dir("server_pki"));
    ASSERT_FALSE(pki_->empty());
    // ca.pem, server.pem and server.key in the folder (tests/common/pki.h).
    const auto ca = testing_pki::make_ca(*pki_, "ca");
    testing_pki::make_server_cert(ca, *pki_, "server", "IP:127.0.0.1,IP:::1,DNS:localhost", 2);
  }
  static void TearDownTestSuite() {
    if (pki_) fs::remove_all(*pki_);
    delete pki_;
    pki_ = nullptr;
  }

  void SetUp() override {
    ASSERT_TRUE(pki_) << "needs the curl and openssl commands (.ci/setup.sh installs them)";
    dir_ = unit::make_temp_dir("server_test");
    ASSERT_FALSE(dir_.empty());
    tree_ = dir_ / "tree";
    package_ = pattern(200000);  // several 64 KiB chunks
    write_file(tree_ / "edge/main/x86_64/APKINDEX.tar.gz", "index");
    write_file(tree_ / "edge/main/x86_64/foo-1.0-r0.apk", package_);
    write_file(tree_ / "edge/main/x86_64/secret.apk", "not in the view");
    write_file(tree_ / ".tiersync/staging/x", "staged");
    write_file(tree_ / "edge/main/x86_64/big.apk", "");
    fs::resize_file(tree_ / "edge/main/x86_64/big.apk", kBigSize);  // sparse: costs no disk
    fs::create_symlink("foo-1.0-r0.apk", tree_ / "edge/main/x86_64/foo.apk");
    fs::create_symlink("edge", tree_ / "latest-stable");
    fs::create_symlink("/etc/passwd", tree_ / "edge/main/x86_64/planted.apk");

    auto m = manifest("edge/main/x86_64",
                      {file_entry("edge/main/x86_64/APKINDEX.tar.gz", "index"),
                       file_entry("edge/main/x86_64/foo-1.0-r0.apk", package_),
                       proto::Entry::file("edge/main/x86_64/big.apk", kBigSize, {}, 1, 0644),
                       proto::Entry::symlink("edge/main/x86_64/foo.apk", "foo-1.0-r0.apk"),
                       file_entry("edge/main/x86_64/planted.apk", "x")});
    manifest_bytes_ = proto::encode_manifest(*m);
    manifest_hex_ = proto::to_hex(proto::sha256(manifest_bytes_));
    write_file(tree_ / ".tiersync/v1/manifests" / manifest_hex_, manifest_bytes_);
    write_file(tree_ / ".tiersync/v1/manifests" / std::string(64, 'b'), "not in the view");
    base_view_.depth = 3;
    base_view_.manifests["edge/main/x86_64"] = m;
    base_view_.manifests["."] = manifest(".", {proto::Entry::symlink("latest-stable", "edge")});
    base_view_.manifest_hashes.insert(proto::sha256(manifest_bytes_));
    base_view_.metrics = [] { return std::string("tiersync_applied_serial 5\n"); };

    limits_.header_timeout = 2s;
    limits_.handshake_timeout = 2s;
    limits_.idle_timeout = 3s;
    StartServer();
  }

  void TearDown() override {
    if (server_) server_->stop();
    server_.reset();
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  void StartServer() {
    std::vector<ops::ListenConfig> listen(2);
    listen[0].address = "127.0.0.1";
    listen[0].tls_cert = *pki_ / "server.pem";
    listen[0].tls_key = *pki_ / "server.key";
    listen[1].address = "127.0.0.1";
    listen[1].tls = false;
    server_ = std::make_unique<Server>(listen, tree_, limits_);
    const Status st = server_->start();
    ASSERT_TRUE(st) << st.message();
    ASSERT_EQ(server_->ports().size(), 2u);
    https_ = "https://127.0.0.1:" + std::to_string(server_->ports()[0]);
    http_ = "http://127.0.0.1:" + std::to_string(server_->ports()[1]);
    Publish(5);
  }

  void Publish(std::uint64_t serial) {
    auto view = std::make_shared<ServedView>(base_view_);
    view->serial = serial;
    view->envelope = "{\"payloadType\": \"test\", \"serial\": " + std::to_string(serial) + "}";
    view->status_json = "{\"serial\": " + std::to_string(serial) + "}";
    server_->publish(view);
  }

  /// curl with the test CA; `args` go before the URL(s).
  CurlResult Curl(const std::vector<std::string>& args, const std::string& url) {
    static std::atomic<int> counter{0};
    const fs::path out = dir_ / ("curl." + std::to_string(counter++));
    std::string cmd = "curl -sS --max-time 20 --cacert " + quote((*pki_ / "ca.pem").string()) +
                      " -o " + quote(out.string() + ".body") + " -D " +
                      quote(out.string() + ".headers") + " -w '%{http_code}'";
    for (const auto& a : args) cmd += " " + quote(a);
    cmd += " " + quote(url) + " >" + quote(out.string() + ".code") + " 2>" +
           quote(out.string() + ".log");
    CurlResult r;
    r.exit = run(cmd);
    r.status = std::atoi(read_file(out.string() + ".code").c_str());
    r.headers = read_file(out.string() + ".headers");
    r.body = read_file(out.string() + ".body");
    r.log = read_file(out.string() + ".log");
    return r;
  }

  static constexpr std::uint64_t kBigSize = 256u << 20;
  static fs::path* pki_;
  fs::path dir_;
  fs::path tree_;
  std::string package_;
  std::string manifest_bytes_;
  std::string manifest_hex_;
  ServedView base_view_;
  ServerLimits limits_;
  std::unique_ptr<Server> server_;
  std::string https_;
  std::string http_;
};

fs::path* ServerTest::pki_ = nullptr;

TEST_F(ServerTest, SnapshotWithETagAnd304) {
  CurlResult r = Curl({}, https_ + "/.tiersync/v1/snapshot");
  ASSERT_EQ(r.exit, 0) << r.log;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "{\"payloadType\": \"test\", \"serial\": 5}");
  EXPECT_EQ(r.header("ETag"), "\"5\"");
  EXPECT_EQ(r.header("Content-Type"), "application/json");

  EXPECT_EQ(Curl({"-H", "If-None-Match: \"5\""}, https_ + "/.tiersync/v1/snapshot").status, 304);
  EXPECT_EQ(Curl({"-H", "If-None-Match: \"4\""}, https_ + "/.tiersync/v1/snapshot").status, 200);
}

TEST_F(ServerTest, LongPollTimesOutWith304) {
  const auto start = Clock::now();
  CurlResult r = Curl({}, https_ + "/.tiersync/v1/snapshot?after=5&wait=1");
  const auto took = Clock::now() - start;
  EXPECT_EQ(r.status, 304) << r.log;
  EXPECT_EQ(r.header("ETag"), "\"5\"");
  EXPECT_GE(took, 900ms);  // it was held for its wait (how fast it ends is tests/bench/'s)
}

TEST_F(ServerTest, LongPollAnswersAsSoonAsANewerSerialIsPublished) {
  auto poll = std::async(std::launch::async, [&] {
    return Curl({}, https_ + "/.tiersync/v1/snapshot?after=5&wait=30");
  });
  // Bounded wait until the poll is held, then an unrelated re-publish (same serial) and the
  // newer one.
  for (int i = 0; i < 100 && server_->stats().long_polls_waiting == 0; ++i)
    std::this_thread::sleep_for(50ms);
  ASSERT_EQ(server_->stats().long_polls_waiting, 1u);
  Publish(5);
  // A request served after the re-publish (the event: the server runs with view 5 installed);
  // the poll is still held, since serial 5 does not satisfy after=5.
  EXPECT_EQ(Curl({}, http_ + "/.tiersync/v1/snapshot").status, 200);
  EXPECT_EQ(server_->stats().long_polls_waiting, 1u);
  Publish(6);
  const CurlResult r = poll.get();
  // Answered by the publish: serial 6's body (a timeout would be a 304 after the 30 s wait, an
  // answer to the re-publish serial 5's body).
  EXPECT_EQ(r.status, 200) << r.log;
  EXPECT_EQ(r.body, "{\"payloadType\": \"test\", \"serial\": 6}");
  EXPECT_EQ(r.header("ETag"), "\"6\"");
  // And a poll for what is already there answers with it (held, it would end in a 304).
  EXPECT_EQ(Curl({}, http_ + "/.tiersync/v1/snapshot?after=5&wait=30").status, 200);
}

/// Waits (bounded) until `done()` holds; returns it.
template <class F>
bool eventually(F done, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = Clock::now() + timeout;
  while (!done() && Clock::now() < deadline) std::this_thread::sleep_for(20ms);  // bounded
  return done();
}

std::size_t open_descriptors() {
  return static_cast<std::size_t>(
      std::distance(fs::directory_iterator("/proc/self/fd"), fs::directory_iterator()));
}

constexpr std::string_view kPollRequest =
    "GET /.tiersync/v1/snapshot?after=5&wait=60 HTTP/1.1\r\nHost: x\r\n\r\n";

TEST_F(ServerTest, ClosedClientFreesItsLongPollAtOnce) {
  const std::size_t idle_fds = open_descriptors();
  // Plain HTTP: the client closes while its poll (60 s) waits.
  auto plain = std::make_unique<RawClient>(server_->ports()[1]);
  ASSERT_TRUE(plain->send(kPollRequest));
  ASSERT_TRUE(eventually([&] { return server_->stats().long_polls_waiting == 1; }));
  plain->close();
  EXPECT_TRUE(eventually([&] { return server_->stats().long_polls_waiting == 0; }));
  EXPECT_TRUE(eventually([&] { return server_->stats().connections_active == 0; }));
  EXPECT_EQ(server_->stats().long_polls_abandoned, 1u);
  // TLS: curl gives up after 2 s of a 60 s poll (without close_notify).
  CurlResult r = Curl({"--max-time", "2"}, https_ + "/.tiersync/v1/snapshot?after=5&wait=60");
  EXPECT_NE(r.exit, 0);
  EXPECT_TRUE(eventually([&] { return server_->stats().long_polls_waiting == 0; }));
  EXPECT_TRUE(eventually([&] { return server_->stats().connections_active == 0; }));
  EXPECT_EQ(server_->stats().long_polls_abandoned, 2u);
  // Every descriptor is back (the server's sockets, not only its counters).
  EXPECT_TRUE(eventually([&] { return open_descriptors() <= idle_fds; }))
      << open_descriptors() << " open, " << idle_fds << " before";
  EXPECT_EQ(server_->stats().requests, 0u);  // nobody was left to answer
}

TEST_F(ServerTest, PipelinedRequestDuringALongPollWaitsItsTurn) {
  RawClient client(server_->ports()[1]);
  ASSERT_TRUE(client.send(kPollRequest));
  ASSERT_TRUE(eventually([&] { return server_->stats().long_polls_waiting == 1; }));
  ASSERT_TRUE(client.send("GET /.tiersync/v1/status HTTP/1.1\r\nHost: x\r\n\r\n"));
  // Another client's request round trip: the pipelined bytes have arrived by then, and the poll
  // still waits.
  EXPECT_EQ(Curl({}, http_ + "/metrics").status, 200);
  EXPECT_EQ(server_->stats().long_polls_waiting, 1u);
  Publish(6);
  std::string answer;
  ASSERT_TRUE(client.read_until("{\"serial\": 6}", 10s, answer)) << answer;
  const auto first = answer.find("HTTP/1.1 200");
  ASSERT_NE(first, std::string::npos) << answer;
  EXPECT_NE(answer.find("\"serial\": 6}", first), std::string::npos) << answer;    // the envelope
  EXPECT_NE(answer.find("HTTP/1.1 200", first + 1), std::string::npos) << answer;  // the status
  EXPECT_EQ(server_->stats().long_polls_abandoned, 0u);
}

TEST_F(ServerTest, LongPollsOverTheCapAre503WithRetryAfter) {
  server_->stop();
  limits_.max_long_polls = 2;
  StartServer();
  ASSERT_EQ(server_->stats().caps.long_polls, 2u);
  std::vector<std::unique_ptr<RawClient>> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(std::make_unique<RawClient>(server_->ports()[1]));
    ASSERT_TRUE(held.back()->send(kPollRequest));
  }
  ASSERT_TRUE(eventually([&] { return server_->stats().long_polls_waiting == 2; }));
  RawClient excess(server_->ports()[1]);
  ASSERT_TRUE(excess.send(kPollRequest));
  std::string answer;
  EXPECT_TRUE(excess.read_until("retry later", 10s, answer)) << answer;
  EXPECT_EQ(answer.rfind("HTTP/1.1 503", 0), 0u) << answer;
  EXPECT_NE(answer.find("Retry-After: 30\r\n"), std::string::npos) << answer;
  EXPECT_NE(answer.find("Connection: close\r\n"), std::string::npos) << answer;
  bool closed = false;
  excess.read_until_close(10s, closed);
  EXPECT_TRUE(closed);  // a refused crowd does not keep its connections
  EXPECT_EQ(server_->stats().long_polls_refused, 1u);
  // Requests other than long polls are not refused.
  CurlResult metrics = Curl({}, http_ + "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("tiersync_http_long_polls_limit 2\n"), std::string::npos);
  EXPECT_NE(metrics.body.find("tiersync_http_long_polls_refused_total{reason=\"total\"} 1\n"),
            std::string::npos)
      << metrics.body;
  // The held ones are answered when the serial moves.
  Publish(6);
  for (auto& c : held) {
    answer.clear();
    EXPECT_TRUE(c->read_until("\"serial\": 6}", 10s, answer)) << answer;
  }
}

TEST_F(ServerTest, LongPollsPerAddressAreCapped) {
  server_->stop();
  limits_.max_long_polls_per_address = 2;
  StartServer();
  std::vector<std::unique_ptr<RawClient>> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(std::make_unique<RawClient>(server_->ports()[1], "127.0.0.1"));
    ASSERT_TRUE(held.back()->send(kPollRequest));
  }
  ASSERT_TRUE(eventually([&] { return server_->stats().long_polls_waiting == 2; }));
  RawClient third(server_->ports()[1], "127.0.0.1");
  ASSERT_TRUE(third.send(kPollRequest));
  std::string answer;
  EXPECT_TRUE(third.read_until("retry later", 10s, answer)) << answer;
  EXPECT_EQ(answer.rfind("HTTP/1.1 503", 0), 0u) << answer;
  EXPECT_NE(answer.find("Retry-After: 30\r\n"), std::string::npos) << answer;
  EXPECT_NE(answer.find("from your address"), std::string::npos) << answer;
  // Another address is still welcome; and a freed slot is taken again.
  RawClient other(server_->ports()[1], "127.0.0.2");
  ASSERT_TRUE(other.connected());
  ASSERT_TRUE(other.send(kPollRequest));
  EXPECT_TRUE(eventually([&] { return server_->stats().long_polls_waiting == 3; }));
  held.back()->close();
  ASSERT_TRUE(eventually([&] { return server_->stats().long_polls_waiting == 2; }));
  RawClient again(server_->ports()[1], "127.0.0.1");
  ASSERT_TRUE(again.send(kPollRequest));
  EXPECT_TRUE(eventually([&] { return server_->stats().long_polls_waiting == 3; }));
  EXPECT_EQ(server_->stats().long_polls_refused, 1u);
}

TEST_F(ServerTest, CapsFitTheDescriptorLimit) {
  server_->stop();
  server_.reset();
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  ASSERT_GE(saved.rlim_max, 1024u);
  rlimit low = saved;
  low.rlim_cur = 1024;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  StartServer();  // the caps are fitted when the server is made
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
  const ServerCaps caps = server_->stats().caps;
  EXPECT_EQ(caps.descriptor_limit, 1024u);
  // Every connection sending a file (two descriptors each) and every cached folder together
  // still leave the reserve to the node.
  EXPECT_LE(2 * caps.connections + caps.cached_folders + limits_.reserved_descriptors, 1024u);
  EXPECT_GE(caps.connections, 100u);
  EXPECT_LT(caps.long_polls, caps.connections);  // room left for /metrics and downloads
  EXPECT_LE(caps.long_polls_per_address, caps.long_polls);
  EXPECT_EQ(Curl({}, http_ + "/metrics").status, 200);
}

TEST_F(ServerTest, Manifests) {
  CurlResult r = Curl({}, https_ + "/.tiersync/v1/manifests/" + manifest_hex_);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, manifest_bytes_);
  EXPECT_EQ(r.header("Cache-Control"), "public, max-age=31536000, immutable");
  EXPECT_EQ(Curl({}, https_ + "/.tiersync/v1/manifests/" + std::string(64, 'b')).status, 404);
  EXPECT_EQ(Curl({}, https_ + "/.tiersync/v1/manifests/nothex").status, 404);
}

TEST_F(ServerTest, FilesHeadAndSymlinks) {
  CurlResult r = Curl({}, https_ + "/edge/main/x86_64/foo-1.0-r0.apk");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body.size(), package_.size());
  EXPECT_TRUE(r.body == package_);
  EXPECT_EQ(r.header("Content-Length"), std::to_string(package_.size()));
  EXPECT_FALSE(r.header("Last-Modified").empty());

  CurlResult head = Curl({"-I"}, https_ + "/edge/main/x86_64/foo-1.0-r0.apk");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.header("Content-Length"), std::to_string(package_.size()));

  // Symlink entries are followed within the view: a file link and a folder link.
  EXPECT_TRUE(Curl({}, https_ + "/edge/main/x86_64/foo.apk").body == package_);
  EXPECT_EQ(Curl({}, http_ + "/latest-stable/main/x86_64/APKINDEX.tar.gz").body, "index");
}

TEST_F(ServerTest, RangesAndConditionalGet) {
  const std::string url = https_ + "/edge/main/x86_64/foo-1.0-r0.apk";
  CurlResult part = Curl({"-r", "70000-70009"}, url);
  EXPECT_EQ(part.status, 206);
  EXPECT_EQ(part.body, package_.substr(70000, 10));
  EXPECT_EQ(part.header("Content-Range"), "bytes 70000-70009/200000");

  CurlResult tail = Curl({"-H", "Range: bytes=-5"}, url);
  EXPECT_EQ(tail.status, 206);
  EXPECT_EQ(tail.body, package_.substr(package_.size() - 5));
  CurlResult from = Curl({"-r", "199990-"}, url);
  EXPECT_EQ(from.status, 206);
  EXPECT_EQ(from.body, package_.substr(199990));

  CurlResult bad = Curl({"-H", "Range: bytes=300000-"}, url);
  EXPECT_EQ(bad.status, 416);
  EXPECT_EQ(bad.header("Content-Range"), "bytes */200000");
  CurlResult multi = Curl({"-H", "Range: bytes=0-1,5-6"}, url);
  EXPECT_EQ(multi.status, 200);
  EXPECT_EQ(multi.body.size(), package_.size());

  const std::string last_modified = part.header("Last-Modified");
  ASSERT_FALSE(last_modified.empty());
  EXPECT_EQ(Curl({"-H", "If-Modified-Since: " + last_modified}, url).status, 304);
  EXPECT_EQ(Curl({"-H", "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT"}, url).status, 200);
}

TEST_F(ServerTest, NothingOutsideTheAppliedTree) {
  for (const auto& base : {https_, http_}) {
    for (const std::string path :
         {"/../etc/passwd", "/%2e%2e/x", "/%2e%2e/%2e%2e/etc/passwd", "/edge/%2e%2e/%2e%2e/etc",
          "/.tiersync/staging/x", "/edge/main/x86_64/secret.apk", "/edge/main/x86_64/planted.apk",
          "/edge/main/x86_64/foo-1.0-r0.apk%00", "/edge%2f..%2f..%2fetc/passwd", "/",
          "/edge/main/"}) {
      CurlResult r = Curl({"--path-as-is"}, base + path);
      EXPECT_TRUE(r.status == 400 || r.status == 404) << path << " -> " << r.status;
      EXPECT_EQ(r.body.find("root:"), std::string::npos) << path;
    }
  }
  EXPECT_EQ(Curl({"--path-as-is"}, http_ + "/%2e%2e/x").status, 400);
  EXPECT_EQ(Curl({"--path-as-is"}, http_ + "/.tiersync/staging/x").status, 404);
  CurlResult post = Curl({"-X", "POST", "-d", "x"}, http_ + "/edge/main/x86_64/APKINDEX.tar.gz");
  EXPECT_EQ(post.status, 405);
  EXPECT_EQ(post.header("Allow"), "GET, HEAD");
  EXPECT_EQ(Curl({"-X", "DELETE"}, http_ + "/metrics").status, 405);
}

TEST_F(ServerTest, StatusAndMetrics) {
  CurlResult status = Curl({}, https_ + "/.tiersync/v1/status");
  EXPECT_EQ(status.status, 200);
  EXPECT_EQ(status.body, "{\"serial\": 5}");
  EXPECT_EQ(status.header("Content-Type"), "application/json");
  CurlResult metrics = Curl({}, http_ + "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_EQ(metrics.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(metrics.body.find("tiersync_applied_serial 5\n"), std::string::npos);
  EXPECT_NE(metrics.body.find("tiersync_http_requests_total{code=\"200\"} 1\n"), std::string::npos)
      << metrics.body;
  EXPECT_NE(metrics.body.find("tiersync_http_connections_active "), std::string::npos);
}

TEST_F(ServerTest, OversizedHeaderIs431) {
  CurlResult r = Curl({"-H", "X-Big: " + std::string(9000, 'a')}, http_ + "/metrics");
  EXPECT_EQ(r.status, 431);
  CurlResult ok = Curl({"-H", "X-Fine: " + std::string(4000, 'a')}, https_ + "/metrics");
  EXPECT_EQ(ok.status, 200);
}

TEST_F(ServerTest, SlowClientsDoNotBlockOthers) {
  // Header and handshake timeouts long enough for two curl runs on a sanitizer build: the slow
  // clients are still connected while the others are served.
  server_->stop();
  limits_.header_timeout = 8s;
  limits_.handshake_timeout = 8s;
  StartServer();
  std::vector<std::unique_ptr<RawClient>> slow;
  for (int i = 0; i < 20; ++i) {
    auto c = std::make_unique<RawClient>(server_->ports()[i % 2 ? 1 : 0]);
    ASSERT_TRUE(c->connected());
    if (i % 2) c->send("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ");  // half a header
    slow.push_back(std::move(c));
  }
  EXPECT_EQ(Curl({}, https_ + "/edge/main/x86_64/APKINDEX.tar.gz").status, 200);
  EXPECT_EQ(Curl({}, http_ + "/edge/main/x86_64/APKINDEX.tar.gz").status, 200);
  // Served beside the slow ones, not after them: every slow connection is still open.
  int open = 0;
  for (auto& c : slow) open += c->still_open() ? 1 : 0;
  EXPECT_EQ(open, 20) << "the server closed slow clients before it served the others";
  // And the slow ones are dropped at the header (or handshake) timeout.
  for (auto& c : slow) {
    bool closed = false;
    c->read_until_close(30s, closed);
    EXPECT_TRUE(closed);
  }
}

TEST_F(ServerTest, ExcessConnectionsAreClosedAtOnce) {
  server_->stop();
  limits_.max_connections = 3;
  StartServer();
  std::vector<std::unique_ptr<RawClient>> held;
  for (int i = 0; i < 3; ++i) held.push_back(std::make_unique<RawClient>(server_->ports()[1]));
  for (int i = 0; i < 50 && server_->stats().connections_active < 3; ++i)
    std::this_thread::sleep_for(20ms);
  ASSERT_EQ(server_->stats().connections_active, 3u);
  RawClient excess(server_->ports()[1]);
  bool closed = false;
  excess.read_until_close(1s, closed);
  EXPECT_TRUE(closed);
  EXPECT_EQ(server_->stats().connections_rejected, 1u);
}

TEST_F(ServerTest, PlainHttpListener) {
  CurlResult r = Curl({}, http_ + "/edge/main/x86_64/APKINDEX.tar.gz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "index");
  // Plain HTTP to the TLS port is not answered as HTTP.
  EXPECT_NE(Curl({}, "http://127.0.0.1:" + std::to_string(server_->ports()[0]) + "/metrics").status,
            200);
}

TEST_F(ServerTest, TlsVersionsAndHostName) {
  const std::string url = https_ + "/.tiersync/v1/status";
  EXPECT_EQ(Curl({"--tlsv1.2", "--tls-max", "1.2"}, url).status, 200);
  EXPECT_EQ(Curl({"--tlsv1.3"}, url).status, 200);
  CurlResult old = Curl({"--tlsv1.1", "--tls-max", "1.1"}, url);
  EXPECT_NE(old.exit, 0);
  EXPECT_EQ(old.status, 0);
  // The client's own policy may forbid TLS 1.1 as well; s_client at security level 0 asks for it
  // for real, and the server must refuse.
  const std::string port = std::to_string(server_->ports()[0]);
  const fs::path log = dir_ / "s_client.log";
  int rc =
      run("openssl s_client -connect 127.0.0.1:" + port +
          " -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' </dev/null >" + quote(log.string()) + " 2>&1");
  EXPECT_NE(rc, 0) << read_file(log);
  EXPECT_NE(read_file(log).find("alert protocol version"), std::string::npos) << read_file(log);
  EXPECT_NE(read_file(log).find("Cipher is (NONE)"), std::string::npos) << read_file(log);
  // The certificate matches the host name too.
  CurlResult named = Curl({"--resolve", "localhost:" + port + ":127.0.0.1"},
                          "https://localhost:" + port + "/.tiersync/v1/status");
  EXPECT_EQ(named.status, 200) << named.log;
}

TEST_F(ServerTest, KeepAliveReusesTheConnection) {
  const auto before = server_->stats().connections_accepted;
  const fs::path log = dir_ / "keepalive.log";
  const std::string url = https_ + "/edge/main/x86_64/APKINDEX.tar.gz";
  int rc = run("curl -sS -v --max-time 20 --cacert " + quote((*pki_ / "ca.pem").string()) +
               " -o /dev/null -o /dev/null " + quote(url) + " " + quote(url) + " 2>" +
               quote(log.string()));
  EXPECT_EQ(rc, 0);
  EXPECT_NE(read_file(log).find("Re-using existing connection"), std::string::npos)
      << read_file(log);
  EXPECT_EQ(server_->stats().connections_accepted - before, 1u);
}

// A relay pipelines its file and manifest requests (docs/protocol.md): sent back to back in one
// write, they are answered whole and in the order asked, on the one connection.
TEST_F(ServerTest, PipelinedRequestsAreAnsweredInOrder) {
  const auto before = server_->stats().connections_accepted;
  RawClient client(server_->ports()[1]);
  ASSERT_TRUE(client.connected());
  const std::vector<std::string> targets = {
      "/edge/main/x86_64/foo-1.0-r0.apk", "/edge/main/x86_64/APKINDEX.tar.gz",
      "/.tiersync/v1/manifests/" + manifest_hex_, "/edge/main/x86_64/missing.apk",
      "/edge/main/x86_64/APKINDEX.tar.gz"};
  std::string pipeline;
  for (const auto& t : targets) pipeline += "GET " + t + " HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_TRUE(client.send(pipeline));
  // Read until both answers of the index are in (bounded: 200 reads of up to 100 ms).
  std::string answer;
  const std::string index_tail = "\r\n\r\nindex";
  auto both_in = [&] {
    const auto first = answer.find(index_tail);
    return first != std::string::npos && answer.find(index_tail, first + 1) != std::string::npos;
  };
  for (int i = 0; i < 200 && !both_in(); ++i) client.read_until("\x7f\x7f never", 100ms, answer);
  // Split into answers by their status lines, in order.
  std::vector<std::size_t> starts;
  for (auto at = answer.find("HTTP/1.1 "); at != std::string::npos;
       at = answer.find("HTTP/1.1 ", at + 1))
    starts.push_back(at);
  ASSERT_EQ(starts.size(), targets.size()) << answer.substr(0, 2000);
  auto part = [&](std::size_t i) {
    const auto end = i + 1 < starts.size() ? starts[i + 1] : answer.size();
    return answer.substr(starts[i], end - starts[i]);
  };
  EXPECT_TRUE(part(0).starts_with("HTTP/1.1 200")) << part(0).substr(0, 200);
  EXPECT_TRUE(part(0).ends_with("\r\n\r\n" + package_));
  EXPECT_TRUE(part(1).starts_with("HTTP/1.1 200"));
  EXPECT_TRUE(part(1).ends_with("\r\n\r\nindex"));
  EXPECT_TRUE(part(2).ends_with("\r\n\r\n" + manifest_bytes_));
  EXPECT_TRUE(part(3).starts_with("HTTP/1.1 404")) << part(3).substr(0, 200);
  EXPECT_TRUE(part(4).ends_with("\r\n\r\nindex"));
  EXPECT_EQ(server_->stats().connections_accepted - before, 1u);
}

TEST_F(ServerTest, StopIsPromptWithIdleConnectionsAndLongPolls) {
  RawClient idle(server_->ports()[1]);
  ASSERT_TRUE(idle.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto poll = std::async(std::launch::async, [&] {
    return Curl({}, http_ + "/.tiersync/v1/snapshot?after=5&wait=60");
  });
  for (int i = 0; i < 100 && server_->stats().long_polls_waiting == 0; ++i)
    std::this_thread::sleep_for(50ms);
  ASSERT_EQ(server_->stats().long_polls_waiting, 1u);
  server_->stop();
  // The poll was answered by the stop, not cut at stop_timeout (no status) nor held for its
  // 60 s: 503 with Retry-After, not 304 "unchanged" (docs/protocol.md).
  const CurlResult answered = poll.get();
  EXPECT_EQ(answered.status, 503) << answered.log;
  EXPECT_EQ(answered.header("Retry-After"), "1") << answered.headers;
  EXPECT_EQ(answered.header("Connection"), "close") << answered.headers;
  bool closed = false;
  std::string answer = idle.read_until_close(2s, closed);
  EXPECT_TRUE(closed);
  EXPECT_NE(answer.find("HTTP/1.1 200"), std::string::npos);
}

// A download whose client reads nothing: the server serves others meanwhile, stop() gives it
// the stop timeout, then cuts it off: its client sees the connection closed (after the bytes
// already on their way), while the server object still exists.
TEST_F(ServerTest, StopCutsOffAStalledDownloadAfterTheStopTimeout) {
  server_->stop();
  limits_.stop_timeout = 1s;
  StartServer();
  RawClient stalled(server_->ports()[1]);  // asks for 256 MiB and reads none of it
  ASSERT_TRUE(stalled.send("GET /edge/main/x86_64/big.apk HTTP/1.1\r\nHost: x\r\n\r\n"));
  for (int i = 0; i < 100 && server_->stats().requests == 0; ++i) std::this_thread::sleep_for(20ms);
  ASSERT_EQ(server_->stats().requests, 1u);

  const CurlResult other = Curl({}, http_ + "/edge/main/x86_64/foo-1.0-r0.apk");
  EXPECT_EQ(other.status, 200) << other.log;
  EXPECT_TRUE(other.body == package_) << "the other client got " << other.body.size() << " bytes";
  EXPECT_TRUE(stalled.still_open());  // its download is still in flight

  const auto start = Clock::now();
  server_->stop();
  const auto took = Clock::now() - start;
  EXPECT_GE(took, 900ms);  // the response in flight got its chance (its stop timeout)
  bool closed = false;
  const std::string got = stalled.read_until_close(60s, closed);  // drains what was sent
  EXPECT_TRUE(closed) << "the stalled download's connection is still open after stop()";
  EXPECT_TRUE(got.starts_with("HTTP/1.1 200")) << got.substr(0, 200);
  EXPECT_LT(got.size(), kBigSize) << "the download was not cut off";
}

TEST(ServerStart, ErrorsNameTheListenEntry) {
  std::vector<ops::ListenConfig> listen(1);
  listen[0].address = "127.0.0.1";
  listen[0].tls_cert = "/nonexistent/cert.pem";
  listen[0].tls_key = "/nonexistent/key.pem";
  Server tls(listen, "/nonexistent");
  Status st = tls.start();
  ASSERT_FALSE(st);
  EXPECT_NE(st.message().find("listen[0]"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("tls_cert"), std::string::npos) << st.message();

  listen[0].tls = false;
  listen[0].address = "not-an-address";
  Server bad(listen, "/nonexistent");
  st = bad.start();
  ASSERT_FALSE(st);
  EXPECT_NE(st.message().find("listen[0]"), std::string::npos) << st.message();

  listen[0].address = "127.0.0.1";
  Server first(listen, "/nonexistent");
  ASSERT_TRUE(first.start());
  listen[0].port = first.ports()[0];
  Server second(listen, "/nonexistent");
  st = second.start();
  ASSERT_FALSE(st);
  EXPECT_NE(st.message().find("cannot bind"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace tiersync::serve
