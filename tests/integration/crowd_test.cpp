// Crowds of clients (docs/performance.md, "Crowds"): one tier0 started with the usual soft
// descriptor limit of 1,024 holds 5,000 long polls on loopback, keeps answering /metrics, answers
// every poll when the next serial arrives, and gets its descriptors back when the clients vanish.
// The clients are plain non-blocking sockets from many 127.0.x.y addresses (the per-address cap).
// Every loop is bounded in count and time; the only time limits are generous deadlines.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr int kCrowd = 5000;
constexpr int kSourceAddresses = 250;  // 20 polls each: under the default cap of 32 per address

/// Open descriptors of process `pid` (0 when it cannot be read).
std::size_t descriptors_of(int pid) {
  std::error_code ec;
  std::size_t n = 0;
  for (fs::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec), end; !ec && it != end;
       it.increment(ec))
    ++n;
  return n;
}

/// VmRSS of `pid` in KiB.
std::uint64_t rss_kib(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))  // bounded by the file
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  return 0;
}

/// A non-blocking TCP socket to 127.0.0.1:`port` from `source`; -1 on failure.
int connect_from(const std::string& source, std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  sockaddr_in from{};
  from.sin_family = AF_INET;
  ::inet_pton(AF_INET, source.c_str(), &from.sin_addr);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) != 0 ||
      (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0 && errno != EINPROGRESS)) {
    ::close(fd);
    return -1;
  }
  return fd;
}

/// One HTTP response (head and Content-Length body) read from a non-blocking socket; nullopt when
/// the peer closed first, an error occurred or `deadline` passed.
struct Answer {
  int status = 0;
  std::string head;
  std::string body;
};
std::optional<Answer> read_answer(int fd, Clock::time_point deadline) {
  std::string got;
  while (Clock::now() < deadline) {  // bounded by the deadline
    const auto end = got.find("\r\n\r\n");
    if (end != std::string::npos) {
      std::size_t length = 0;
      const auto cl = got.find("Content-Length: ");
      if (cl != std::string::npos && cl < end)
        length = std::strtoul(got.c_str() + cl + 16, nullptr, 10);
      if (got.size() >= end + 4 + length) {
        Answer a;
        a.status = std::atoi(got.c_str() + 9);
        a.head = got.substr(0, end + 4);
        a.body = got.substr(end + 4, length);
        return a;
      }
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[8192];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return std::nullopt;
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
  }
  return std::nullopt;
}

/// A blocking-style request on a fresh connection (bounded by `timeout`).
std::optional<Answer> get(std::uint16_t port, const std::string& path,
                          std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  int fd = connect_from("127.0.0.1", port);
  if (fd < 0) return std::nullopt;
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  pollfd p{fd, POLLOUT, 0};
  std::optional<Answer> a;
  const int left = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
  if (::poll(&p, 1, std::max(left, 1)) == 1 &&
      ::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size()))
    a = read_answer(fd, deadline);
  ::close(fd);
  return a;
}

/// The value of an unlabelled metric in Prometheus text, or -1.
long long metric(const std::string& text, const std::string& name) {
  const auto at = text.find("\n" + name + " ");
  return at == std::string::npos ? -1 : std::atoll(text.c_str() + at + name.size() + 2);
}

/// The crowd: kCrowd sockets, connected and each sending `request` once, all read together.
class Crowd {
 public:
  explicit Crowd(int size = kCrowd) : size_(size) {}
  ~Crowd() { vanish(); }

  /// Connects everyone, in batches of non-blocking connects (within the listen backlog); false
  /// when one fails to connect by `deadline`.
  bool connect(std::uint16_t port, Clock::time_point deadline) {
    constexpr int kBatch = 500;
    for (int first = 0; first < size_; first += kBatch) {  // bounded by size_
      for (int i = first; i < std::min(first + kBatch, size_); ++i) {
        const int a = i % kSourceAddresses;
        const std::string source =
            "127.0." + std::to_string(1 + a / 250) + "." + std::to_string(1 + a % 250);
        const int fd = connect_from(source, port);
        if (fd < 0) return false;
        fds_.push_back(fd);
      }
      for (std::size_t i = static_cast<std::size_t>(first); i < fds_.size(); ++i) {
        pollfd p{fds_[i], POLLOUT, 0};
        while (::poll(&p, 1, 100) == 0 && Clock::now() < deadline) {  // bounded by the deadline
        }
        int err = 0;
        socklen_t len = sizeof err;
        if (!(p.revents & POLLOUT) ||
            ::getsockopt(fds_[i], SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err)
          return false;
      }
    }
    return true;
  }
  /// Sends `request` on every socket; the number of sockets it could not be sent on.
  int send(const std::string& request) {
    int failed = 0;
    for (int fd : fds_)
      failed += ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
                static_cast<ssize_t>(request.size());
    return failed;
  }
  /// Reads one response on every socket (in turn: the daemon answers them all at once); the
  /// status of each, 0 for none.
  std::vector<int> answers(Clock::time_point deadline, std::string* one_body) {
    std::vector<int> out;
    for (int fd : fds_) {
      auto a = read_answer(fd, deadline);
      out.push_back(a ? a->status : 0);
      if (a && one_body) *one_body = a->body;
    }
    return out;
  }
  /// Every client closes its connection at once.
  void vanish() {
    for (int fd : fds_) ::close(fd);
    fds_.clear();
  }

 private:
  int size_;
  std::vector<int> fds_;
};

class CrowdTest : public OriginTest {
 protected:
  void SetUp() override {
    // The test's own sockets: raise its soft limit (the daemon's hard limit is inherited too).
    rlimit rl{};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 2 * kCrowd + 1024)
      FAIL() << "the hard descriptor limit (" << rl.rlim_max << ") is below " << 2 * kCrowd + 1024
             << ": this test cannot run here (raise it: ulimit -Hn, LimitNOFILE=)";
    hard_ = rl.rlim_max;
    rl.rlim_cur = rl.rlim_max;
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &rl), 0);
    amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}},
                          {"listen", loopback_listen()}});
  }

  /// The serial the daemon serves, waiting (bounded) for it to exceed `after`; 0 if it does not.
  std::uint64_t served_serial_after(std::uint64_t after, std::chrono::seconds limit) {
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {  // bounded by the deadline
      auto a = get(port_, "/.tiersync/v1/snapshot", 5s);
      if (a && a->status == 200) {
        const auto etag = a->head.find("ETag: \"");
        const std::uint64_t serial =
            etag == std::string::npos ? 0 : std::strtoull(a->head.c_str() + etag + 7, nullptr, 10);
        if (serial > after) return serial;
      }
      std::this_thread::sleep_for(100ms);
    }
    return 0;
  }

  /// /metrics, waiting (bounded) until `name` reads `value`; the last text read.
  bool metric_reaches(const std::string& name, long long value, std::chrono::seconds limit,
                      std::string* text = nullptr) {
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {  // bounded by the deadline
      auto a = get(port_, "/metrics", 10s);
      if (a && text) *text = a->body;
      if (a && a->status == 200 && metric("\n" + a->body, name) == value) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }

  rlim_t hard_ = 0;
  std::uint16_t port_ = 0;  ///< the port the daemon reported it bound (port 0 in its listen)
};

TEST_F(CrowdTest, FiveThousandLongPollsOnASoftLimitOf1024) {
  // Started as systemd starts services: a soft limit of 1024, the hard one as the test's.
  Daemon daemon(origin, "daemon.log", DescriptorLimit{1024, hard_});
  port_ = daemon.port();
  const std::uint64_t first = served_serial_after(0, 60s);
  ASSERT_GT(first, 0u) << daemon.log();
  EXPECT_NE(daemon.log().find("descriptor limit: raised from 1024"), std::string::npos)
      << daemon.log();

  // Idle: the first publish done, nothing connected.
  ASSERT_TRUE(metric_reaches("tiersync_http_connections_active", 1, 30s));  // this request
  std::size_t idle_fds = descriptors_of(daemon.pid());
  for (int i = 0; i < 5; ++i) {  // the lowest of a few looks: the request's socket is closing
    std::this_thread::sleep_for(100ms);
    idle_fds = std::min(idle_fds, descriptors_of(daemon.pid()));
  }
  ASSERT_GT(idle_fds, 0u);
  const std::uint64_t idle_rss = rss_kib(daemon.pid());

  // The crowd: every client long-polls for anything after the served serial.
  Crowd crowd;
  const std::string poll = "GET /.tiersync/v1/snapshot?after=" + std::to_string(first) +
                           "&wait=300 HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_TRUE(crowd.connect(port_, Clock::now() + 120s));
  ASSERT_EQ(crowd.send(poll), 0);
  std::string text;
  ASSERT_TRUE(metric_reaches("tiersync_http_long_polls_waiting", kCrowd, 180s, &text))
      << text << daemon.log();

  // /metrics answers under the crowd (a generous bound: ASan on busy cores).
  const auto asked = Clock::now();
  auto metrics = get(port_, "/metrics", 10s);
  const auto metrics_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - asked).count();
  ASSERT_TRUE(metrics && metrics->status == 200) << daemon.log();
  const std::size_t loaded_fds = descriptors_of(daemon.pid());
  const std::uint64_t loaded_rss = rss_kib(daemon.pid());
  EXPECT_GE(loaded_fds, idle_fds + kCrowd);

  // The next serial answers every one of them.
  add_package(model, "edge/main/x86_64", "crowd-1.0-r0.apk", 5000);
  rebuild_index(model, "edge/main/x86_64", 1'800'000'000);
  materialize(model, source);
  std::string envelope;
  const auto statuses = crowd.answers(Clock::now() + 180s, &envelope);
  int ok = 0;
  for (int s : statuses) ok += s == 200;
  EXPECT_EQ(ok, kCrowd) << daemon.log();
  const std::uint64_t second = served_serial_after(first, 10s);
  EXPECT_GT(second, first);
  EXPECT_EQ(envelope, read_file(origin.tree() / ".tiersync/v1/snapshot"));

  // They poll again on the same connections, then all vanish at once while their polls wait.
  ASSERT_EQ(crowd.send("GET /.tiersync/v1/snapshot?after=" + std::to_string(second) +
                       "&wait=300 HTTP/1.1\r\nHost: x\r\n\r\n"),
            0);
  ASSERT_TRUE(metric_reaches("tiersync_http_long_polls_waiting", kCrowd, 180s, &text)) << text;
  const auto vanished = Clock::now();
  crowd.vanish();
  ASSERT_TRUE(metric_reaches("tiersync_http_long_polls_waiting", 0, 60s, &text)) << text;
  EXPECT_EQ(metric("\n" + text, "tiersync_http_long_polls_abandoned_total"), kCrowd) << text;
  const auto deadline = Clock::now() + 60s;
  std::size_t after_fds = descriptors_of(daemon.pid());
  while (after_fds > idle_fds && Clock::now() < deadline) {  // bounded by the deadline
    std::this_thread::sleep_for(100ms);
    after_fds = descriptors_of(daemon.pid());
  }
  EXPECT_LE(after_fds, idle_fds);
  const auto freed_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - vanished).count();

  std::printf(
      "crowd figures: %d long polls; descriptors idle %zu, under load %zu, after %zu (%lld ms "
      "after the clients closed); "
      "RSS idle %llu KiB, under load %llu KiB; /metrics under load answered in %lld ms\n",
      kCrowd, idle_fds, loaded_fds, after_fds, static_cast<long long>(freed_ms),
      static_cast<unsigned long long>(idle_rss), static_cast<unsigned long long>(loaded_rss),
      static_cast<long long>(metrics_ms));
  EXPECT_TRUE(daemon.stop());
}

// The defect as it was seen: a node whose hard limit is the usual 1,024 (nothing to raise) and a
// crowd larger than it can hold. The excess long polls are refused (503) or their connections
// closed, /metrics answers, the node's own cycle still publishes (its lock, state and journal
// files need descriptors too), the held polls get the new serial, and accept never runs out of
// descriptors.
TEST_F(CrowdTest, AtAHardLimitOf1024TheExcessIsRefusedAndTheNodeStillPublishes) {
  Daemon daemon(origin, "daemon.log", DescriptorLimit{1024, 1024});
  port_ = daemon.port();
  const std::uint64_t first = served_serial_after(0, 60s);
  ASSERT_GT(first, 0u) << daemon.log();
  std::string text;
  ASSERT_TRUE(metric_reaches("tiersync_http_connections_active", 1, 30s, &text));
  const long long held = metric("\n" + text, "tiersync_http_long_polls_limit");
  ASSERT_GT(held, 100);
  ASSERT_LT(held, 1024);

  constexpr int kTooMany = 1500;
  Crowd crowd(kTooMany);
  ASSERT_TRUE(crowd.connect(port_, Clock::now() + 120s));
  crowd.send("GET /.tiersync/v1/snapshot?after=" + std::to_string(first) +
             "&wait=300 HTTP/1.1\r\nHost: x\r\n\r\n");  // some were closed at once
  ASSERT_TRUE(metric_reaches("tiersync_http_long_polls_waiting", held, 120s, &text))
      << text << daemon.log();

  add_package(model, "edge/main/x86_64", "crowd-2.0-r0.apk", 5001);
  rebuild_index(model, "edge/main/x86_64", 1'800'000'000);
  materialize(model, source);
  EXPECT_GT(served_serial_after(first, 60s), first) << daemon.log();

  int ok = 0, refused = 0, closed = 0;
  for (int s : crowd.answers(Clock::now() + 60s, nullptr)) {
    ok += s == 200;
    refused += s == 503;
    closed += s == 0;
  }
  EXPECT_EQ(ok, held);
  EXPECT_GT(refused, 0);
  EXPECT_EQ(ok + refused + closed, kTooMany);
  ASSERT_TRUE(metric_reaches("tiersync_http_long_polls_waiting", 0, 30s, &text)) << text;
  EXPECT_EQ(daemon.log().find("Too many open files"), std::string::npos) << daemon.log();
  std::printf("hard limit 1024: %d clients, %d answered 200, %d refused 503, %d closed at once\n",
              kTooMany, ok, refused, closed);
  crowd.vanish();
  EXPECT_TRUE(daemon.stop());
}

}  // namespace
}  // namespace tiersync::it
