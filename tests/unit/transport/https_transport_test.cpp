#include "daemon/transport/https_transport.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "daemon/transport/file_transport.h"
#include "proto/digest.h"
#include "tests/unit/support.h"

namespace tiersync::transport {
namespace {

using unit::Contains;
using unit::write_file;

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

/// `n` bytes that differ from one offset to the next, so that a misplaced byte shows.
std::string pattern(std::size_t n, unsigned seed = 1) {
  std::string out(n, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : out) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return out;
}

std::string percent_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// --- A test PKI, made once with the openssl CLI ---------------------------------------------

/// A CA, a server certificate for 127.0.0.1, ::1 and localhost, one for "otherhost" only, and a
/// stranger CA that signed nothing here.
struct Pki {
  fs::path dir;
  fs::path ca, stranger_ca;
  fs::path server_cert, server_key;
  fs::path other_cert, other_key;
};

bool run(const std::string& line) {
  return std::system((line + " >/dev/null 2>&1").c_str()) == 0;
}

bool make_ca(const fs::path& dir, const std::string& name) {
  return run(
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
      " -subj '/CN=" +
      name + "' -keyout '" + (dir / (name + ".key")).string() + "' -out '" +
      (dir / (name + ".pem")).string() +
      "' -addext basicConstraints=critical,CA:TRUE"
      " -addext keyUsage=critical,keyCertSign,cRLSign");
}

bool make_leaf(const fs::path& dir, const std::string& name, const std::string& san, int serial) {
  const fs::path ext = dir / (name + ".ext");
  write_file(
      ext, "subjectAltName=" + san + "\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
  const std::string key = (dir / (name + ".key")).string();
  const std::string csr = (dir / (name + ".csr")).string();
  return run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
             " -subj '/CN=" +
             name + "' -keyout '" + key + "' -out '" + csr + "'") &&
         run("openssl x509 -req -days 2 -in '" + csr + "' -CA '" + (dir / "test-ca.pem").string() +
             "' -CAkey '" + (dir / "test-ca.key").string() + "' -set_serial " +
             std::to_string(serial) + " -extfile '" + ext.string() + "' -out '" +
             (dir / (name + ".pem")).string() + "'");
}

// --- A fake upstream --------------------------------------------------------------------------

/// What the server does wrong, on purpose.
struct Faults {
  int cut_responses = 0;          ///< this many responses close the connection after...
  std::uint64_t cut_after = 0;    ///< ...this many body bytes
  std::uint64_t stall_after = 0;  ///< with `stall`: stop sending after this many body bytes
  bool stall = false;
  std::uint64_t extra_bytes = 0;      ///< send (and announce) more bytes than the file has
  bool ignore_range = false;          ///< answer 200 to a Range request
  bool close_delimited = false;       ///< no Content-Length: the body ends when the connection does
  bool close_after_response = false;  ///< close kept-alive connections without saying so
  int fail_503 = 0;                   ///< this many responses are 503
  std::string retry_after{};          ///< with fail_503: their Retry-After, when not empty
  std::chrono::milliseconds hold{0};  ///< wait before answering
  std::chrono::milliseconds trickle{0};  ///< send the body one byte at a time, this far apart
  // Pipelines answered wrongly (each counts down across the server's connections):
  int swap_answers = 0;       ///< wait for two requests and answer the second first
  int duplicate_answers = 0;  ///< answer a request twice
  int skip_answers = 0;       ///< read a request and never answer it
  /// As nginx before 1.19.10 (keepalive_requests 100): the Nth answer on a connection says
  /// `Connection: close`, and the connection closes (lingering) with the requests behind it.
  int answers_per_connection = 0;
  std::chrono::milliseconds hold_snapshot{0};  ///< wait before answering a snapshot request
  std::chrono::milliseconds idle_close{0};     ///< close a connection idle this long (not 10 s)
  bool shift_ranges = false;  ///< a 206's Content-Range starts a byte later than its bytes do
  bool short_ranges = false;  ///< a closed range is answered with its first half only (a 206)
};

/// A small HTTP/1.1 server (Envoy's fake upstream, in miniature) on 127.0.0.1 and port 0: serves
/// a folder, over TLS when given a certificate, one thread per connection, every wait bounded.
/// `/.tiersync/v1/snapshot` has ETag "<serial>", If-None-Match and `?after=N&wait=S`.
class TestServer {
 public:
  TestServer(fs::path root, const fs::path& cert, const fs::path& key, Faults faults = {})
      : root_(std::move(root)), faults_(faults) {
    if (!cert.empty()) {
      ctx_ = SSL_CTX_new(TLS_server_method());
      if (SSL_CTX_use_certificate_chain_file(ctx_, cert.c_str()) != 1 ||
          SSL_CTX_use_PrivateKey_file(ctx_, key.c_str(), SSL_FILETYPE_PEM) != 1)
        throw std::runtime_error("test server: cannot load " + cert.string());
    }
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, 64) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      throw std::runtime_error("test server: cannot listen");
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  ~TestServer() {
    stop_ = true;
    acceptor_.join();
    {
      std::lock_guard lock(mu_);
      for (int fd : open_fds_) ::shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : workers_) t.join();
    ::close(listen_fd_);
    if (ctx_) SSL_CTX_free(ctx_);
  }

  std::uint16_t port() const { return port_; }
  std::string url(const std::string& host = "127.0.0.1") const {
    return std::string(ctx_ ? "https://" : "http://") + host + ":" + std::to_string(port_) + "/";
  }

  std::atomic<int> serial{7};
  std::atomic<int> connections{0};
  std::atomic<int> requests{0};
  std::atomic<int> not_modified{0};
  std::atomic<int> in_flight{0};
  std::atomic<int> max_in_flight{0};
  /// The most requests a connection had received and not yet answered (pipelining).
  std::atomic<int> max_pipelined{0};
  std::atomic<int> closed_waiting{0};  ///< connections closed while waiting for a request

  std::vector<std::string> ranges() {
    std::lock_guard lock(mu_);
    return ranges_;
  }

 private:
  /// One accepted connection, plain or TLS.
  struct Conn {
    int fd;
    SSL* ssl = nullptr;
    ~Conn() {
      if (ssl) SSL_free(ssl);
      // A lingering close, as nginx's: requests the client pipelined behind the last answer would
      // otherwise turn the close into a reset, which can destroy answers not yet read. Bounded:
      // the client closes once it sees the end, or the receive timeout passes.
      ::shutdown(fd, SHUT_WR);
      char buf[4096];
      for (int i = 0; i < 10000 && ::recv(fd, buf, sizeof buf, 0) > 0; ++i) {
      }
      ::close(fd);
    }
    long read(char* buf, std::size_t n) {
      if (ssl) return SSL_read(ssl, buf, static_cast<int>(n));
      return ::recv(fd, buf, n, 0);
    }
    bool write(std::string_view bytes) {
      while (!bytes.empty()) {
        long n = ssl ? SSL_write(ssl, bytes.data(), static_cast<int>(bytes.size()))
                     : ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n <= 0) return false;
        bytes.remove_prefix(static_cast<std::size_t>(n));
      }
      return true;
    }
  };

  bool stopping_sleep(std::chrono::milliseconds d) {
    const auto until = Clock::now() + d;
    while (Clock::now() < until) {
      if (stop_) return true;
      std::this_thread::sleep_for(10ms);
    }
    return stop_;
  }

  void accept_loop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      // A client that says nothing for 10 s (or idle_close) is gone.
      const auto idle = faults_.idle_close.count() > 0 ? faults_.idle_close : 10'000ms;
      timeval tv{static_cast<time_t>(idle.count() / 1000),
                 static_cast<suseconds_t>(idle.count() % 1000 * 1000)};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      ++connections;
      std::lock_guard lock(mu_);
      open_fds_.push_back(fd);
      workers_.emplace_back([this, fd] { serve(fd); });
    }
  }

  void serve(int fd) {
    Conn c{fd};
    if (ctx_) {
      c.ssl = SSL_new(ctx_);
      SSL_set_fd(c.ssl, fd);
      if (SSL_accept(c.ssl) != 1) return forget(fd);  // e.g. the client refused our certificate
    }
    std::string pending;
    char buf[16384];
    // The next request's head, read whole (a client that says nothing for 10 s is gone).
    auto next_head = [&](std::string& head) {
      std::size_t end;
      while ((end = pending.find("\r\n\r\n")) == std::string::npos && pending.size() < 65536) {
        long n = c.read(buf, sizeof buf);
        if (n <= 0) return false;
        pending.append(buf, static_cast<std::size_t>(n));
      }
      if (end == std::string::npos) return false;
      head = pending.substr(0, end);
      pending.erase(0, end + 4);
      ++requests;
      // What else has arrived: requests written behind this one before its answer.
      for (pollfd p{fd, POLLIN, 0}; (c.ssl && SSL_pending(c.ssl) > 0) || ::poll(&p, 1, 0) > 0;) {
        long n = c.read(buf, sizeof buf);
        if (n <= 0) break;
        pending.append(buf, static_cast<std::size_t>(n));
      }
      int queued = 1;  // this one and those behind it, already received
      for (auto at = pending.find("\r\n\r\n"); at != std::string::npos;
           at = pending.find("\r\n\r\n", at + 4))
        ++queued;
      raise(max_pipelined, queued);
      return true;
    };
    for (int n_requests = 0; n_requests < 1000 && !stop_; ++n_requests) {
      std::string head;
      if (!next_head(head)) {
        ++closed_waiting;
        return forget(fd);
      }
      raise(max_in_flight, ++in_flight);
      bool keep = true;
      if (take(faults_.skip_answers)) {
        // Never answered: the next answer goes to this request.
      } else if (take(faults_.swap_answers)) {
        std::string second;
        if (!next_head(second)) return forget(fd);
        keep = respond(c, second) && respond(c, head);
      } else {
        const bool last =
            faults_.answers_per_connection > 0 && n_requests + 1 >= faults_.answers_per_connection;
        keep = respond(c, head, last) && (!take(faults_.duplicate_answers) || respond(c, head));
      }
      --in_flight;
      if (!keep) return forget(fd);
      if (faults_.answers_per_connection > 0 && n_requests + 1 >= faults_.answers_per_connection)
        return forget(fd);
    }
    forget(fd);
  }

  static void raise(std::atomic<int>& max, int now) {
    for (int seen = max; now > seen && !max.compare_exchange_weak(seen, now);) {
    }
  }

  /// Counts one down from a fault's budget: true when there was one left.
  bool take(int& budget) {
    std::lock_guard lock(mu_);
    if (budget <= 0) return false;
    --budget;
    return true;
  }

  void forget(int fd) {
    std::lock_guard lock(mu_);
    std::erase(open_fds_, fd);
  }

  static std::string header(const std::string& head, const std::string& name) {
    std::istringstream in(head);
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.size() > name.size() + 1 &&
          strncasecmp(line.c_str(), name.c_str(), name.size()) == 0 && line[name.size()] == ':') {
        std::string v = line.substr(name.size() + 1);
        while (!v.empty() && v.front() == ' ') v.erase(0, 1);
        return v;
      }
    }
    return {};
  }

  static std::string reply(int status, const std::string& reason, const std::string& fields,
                           const std::string& body = {}) {
    return "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\n" + fields +
           "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  }

  /// Answers one request; false closes the connection.
  bool respond(Conn& c, const std::string& head, bool last = false) {
    if (faults_.hold.count() > 0 && stopping_sleep(faults_.hold)) return false;
    const std::string line = head.substr(0, head.find("\r\n"));
    const auto sp1 = line.find(' '), sp2 = line.rfind(' ');
    const std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    const std::string path = percent_decode(target.substr(0, target.find('?')));
    const std::string query =
        target.find('?') == std::string::npos ? "" : target.substr(target.find('?') + 1);
    const std::string range = header(head, "Range");
    if (!range.empty()) {
      std::lock_guard lock(mu_);
      ranges_.push_back(range);
    }
    if (faults_.fail_503 > 0) {
      --faults_.fail_503;
      return c.write(
          reply(503, "Service Unavailable",
                faults_.retry_after.empty() ? "" : "Retry-After: " + faults_.retry_after + "\r\n"));
    }

    std::string fields;
    if (path == "/.tiersync/v1/snapshot") {
      if (faults_.hold_snapshot.count() > 0 && stopping_sleep(faults_.hold_snapshot)) return false;
      const std::string etag = "\"" + std::to_string(serial) + "\"";
      fields += "ETag: " + etag + "\r\n";
      bool unchanged = header(head, "If-None-Match") == etag;
      if (auto a = query.find("after="); a != std::string::npos) {
        const int after = std::stoi(query.substr(a + 6));
        int wait = 0;
        if (auto w = query.find("wait="); w != std::string::npos)
          wait = std::stoi(query.substr(w + 5));
        // Held until the serial passes `after`, or `wait` (at most 5 s here) passes.
        const auto until = Clock::now() + std::chrono::seconds(std::min(wait, 5));
        while (serial <= after && Clock::now() < until && !stop_) std::this_thread::sleep_for(10ms);
        unchanged = serial <= after;
      }
      if (unchanged) {
        ++not_modified;
        return c.write("HTTP/1.1 304 Not Modified\r\n" + fields + "\r\n");
      }
    }

    std::ifstream in(root_ / path.substr(1), std::ios::binary);
    if (path.find("..") != std::string::npos || !in || fs::is_directory(root_ / path.substr(1)))
      return c.write(reply(404, "Not Found", "", "no such file\n"));
    std::ostringstream s;
    s << in.rdbuf();
    std::string content = s.str();

    int status = 200;
    std::uint64_t start = 0;
    std::uint64_t end = content.size();  // past the last byte served
    if (range.starts_with("bytes=") && !faults_.ignore_range) {
      start = std::stoull(range.substr(6));
      if (start >= content.size())
        return c.write(reply(416, "Range Not Satisfiable",
                             "Content-Range: bytes */" + std::to_string(content.size()) + "\r\n"));
      if (const auto dash = range.find('-'); dash + 1 < range.size()) {  // a closed range
        end = std::min<std::uint64_t>(end, std::stoull(range.substr(dash + 1)) + 1);
        if (faults_.short_ranges) end = start + (end - start + 1) / 2;
      }
      status = 206;
      fields += "Content-Range: bytes " + std::to_string(start + (faults_.shift_ranges ? 1 : 0)) +
                "-" + std::to_string(end - 1) + "/" + std::to_string(content.size()) + "\r\n";
    }
    std::string body = content.substr(start, end - start) + std::string(faults_.extra_bytes, 'x');
    std::string out = "HTTP/1.1 " + std::to_string(status) +
                      (status == 200 ? " OK" : " Partial Content") + "\r\n" + fields;
    if (last) out += "Connection: close\r\n";
    if (faults_.close_delimited)
      out += "Connection: close\r\n\r\n";
    else
      out += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
    if (!c.write(out)) return false;

    std::uint64_t limit = body.size();
    bool cut = false;
    if (faults_.cut_responses > 0) {
      --faults_.cut_responses;
      limit = std::min<std::uint64_t>(limit, faults_.cut_after);
      cut = true;
    }
    if (faults_.stall) limit = std::min<std::uint64_t>(limit, faults_.stall_after);
    if (faults_.trickle.count() > 0) {
      // Never silent for long, so a read timeout alone never fires.
      for (std::uint64_t sent = 0; sent < limit; ++sent)
        if (!c.write(std::string_view(body).substr(sent, 1)) || stopping_sleep(faults_.trickle))
          return false;
      return !cut && !faults_.close_delimited && !faults_.close_after_response;
    }
    for (std::uint64_t sent = 0; sent < limit;) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(16384, limit - sent));
      if (!c.write(std::string_view(body).substr(sent, n))) return false;
      sent += n;
    }
    if (faults_.stall) {
      stopping_sleep(10s);
      return false;
    }
    if (cut || faults_.close_delimited) return false;  // closed without TLS close_notify
    return !faults_.close_after_response;
  }

  fs::path root_;
  Faults faults_;
  SSL_CTX* ctx_ = nullptr;
  int listen_fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> workers_;
  std::vector<int> open_fds_;
  std::vector<std::string> ranges_;
};

/// `count` files of distinct sizes under edge/main/x86_64/p<i>.apk, and a batch asking for them
/// whose sinks collect into `got`.
struct PipelineBatch {
  std::vector<std::string> contents;
  std::vector<std::string> got;
  std::vector<FileRequest> requests;

  PipelineBatch(const fs::path& tree, int count) : got(count), requests(count) {
    for (int i = 0; i < count; ++i) {
      contents.push_back(pattern(1000 + 37 * i, i + 100));
      write_file(tree / path(i), contents.back());
      requests[i].path = path(i);
      requests[i].max_bytes = contents.back().size();
      requests[i].sink = [this, i](const char* data, std::size_t size) {
        got[i].append(data, size);
        return Status{};
      };
    }
  }
  static std::string path(int i) { return "edge/main/x86_64/p" + std::to_string(i) + ".apk"; }
  /// Every request succeeded with its own file's bytes.
  testing::AssertionResult all_fetched() const {
    for (std::size_t i = 0; i < requests.size(); ++i) {
      if (!requests[i].result)
        return testing::AssertionFailure()
               << requests[i].path << ": " << requests[i].result.message();
      if (got[i] != contents[i])
        return testing::AssertionFailure() << requests[i].path << ": " << got[i].size()
                                           << " bytes, not its own " << contents[i].size();
    }
    return testing::AssertionSuccess();
  }
};

/// A pipelined batch and where it ran: the pipelining tests' common setup
/// (HttpsTransportTest::run_pipeline).
struct PipelineRun {
  PipelineRun(const fs::path& tree, int files) : batch(tree, files) {}
  PipelineBatch batch;
  std::unique_ptr<TestServer> server;
  std::unique_ptr<Transport> transport;
  Status status;  ///< fetch_files'
};

// --- The fixture ------------------------------------------------------------------------------

/// A tree to serve (a snapshot, a manifest, files) in a fresh folder per test; the PKI is shared.
class HttpsTransportTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    ::signal(SIGPIPE, SIG_IGN);
    pki_.dir = unit::make_temp_dir("https_pki");
    ASSERT_FALSE(pki_.dir.empty());
    ASSERT_TRUE(make_ca(pki_.dir, "test-ca"));
    ASSERT_TRUE(make_ca(pki_.dir, "stranger-ca"));
    ASSERT_TRUE(make_leaf(pki_.dir, "server", "IP:127.0.0.1,IP:::1,DNS:localhost", 2));
    ASSERT_TRUE(make_leaf(pki_.dir, "other", "DNS:otherhost", 3));
    pki_.ca = pki_.dir / "test-ca.pem";
    pki_.stranger_ca = pki_.dir / "stranger-ca.pem";
    pki_.server_cert = pki_.dir / "server.pem";
    pki_.server_key = pki_.dir / "server.key";
    pki_.other_cert = pki_.dir / "other.pem";
    pki_.other_key = pki_.dir / "other.key";
  }
  static void TearDownTestSuite() { fs::remove_all(pki_.dir); }

  void SetUp() override {
    tree_ = unit::make_temp_dir("https_tree");
    ASSERT_FALSE(tree_.empty());
    write_file(tree_ / ".tiersync/v1/snapshot", snapshot_);
    write_file(tree_ / ".tiersync/v1/manifests" / proto::to_hex(proto::sha256(manifest_)),
               manifest_);
    write_file(tree_ / "edge/main/x86_64/big.apk", big_);
  }
  void TearDown() override { fs::remove_all(tree_); }

  std::unique_ptr<TestServer> serve(Faults faults = {}) {
    return std::make_unique<TestServer>(tree_, pki_.server_cert, pki_.server_key, faults);
  }

  TransportOptions options(unsigned connections = 2) {
    TransportOptions o;
    o.ca_file = pki_.ca;
    o.connections = connections;
    o.connect_timeout = 5s;
    o.read_timeout = 5s;
    o.retry_base_delay = 10ms;
    return o;
  }
  /// Three connections, and files above 100,000 bytes in parts of 50,000.
  TransportOptions ranged_options() {
    TransportOptions o = options(3);
    o.range_split_bytes = 100'000;
    return o;
  }

  std::unique_ptr<Transport> connect(const std::string& url, const TransportOptions& o) {
    auto t = make_transport(url, o);
    EXPECT_TRUE(t) << (t ? "" : t.message());
    return t ? std::move(*t) : nullptr;
  }

  /// Serves `files` small files with `faults` and fetches them in one batch over `connections`
  /// connections, `depth` requests deep.
  std::unique_ptr<PipelineRun> run_pipeline(int files, Faults faults, unsigned connections,
                                            unsigned depth, unsigned max_attempts = 4) {
    auto run = std::make_unique<PipelineRun>(tree_, files);
    run->server = serve(faults);
    TransportOptions o = options(connections);
    o.pipeline_depth = depth;
    o.max_attempts = max_attempts;
    run->transport = connect(run->server->url(), o);
    run->status = run->transport ? run->transport->fetch_files(run->batch.requests)
                                 : Status(make_error("no transport"));
    return run;
  }

  /// Fetches a file whole into a string.
  static Result<std::string> fetch(Transport& t, const std::string& path, std::uint64_t max) {
    std::string got;
    auto st = t.fetch_file(path, max, [&](const char* data, std::size_t size) {
      got.append(data, size);
      return Status{};
    });
    if (!st) return st.error();
    return got;
  }

  static Pki pki_;
  fs::path tree_;
  const std::string snapshot_ = "{\"payloadType\": \"application/vnd.tiersync.snapshot+json\"}";
  const std::string manifest_ = "{\"type\": \"tiersync.manifest\"}";
  const std::string big_ = pattern(300'000);
};

Pki HttpsTransportTest::pki_;

TEST_F(HttpsTransportTest, FetchesSnapshotManifestAndFileWithTheRightCa) {
  auto server = serve();
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->describe(), server->url());

  auto snap = t->fetch_snapshot();
  ASSERT_TRUE(snap) << snap.message();
  EXPECT_EQ(*snap, snapshot_);
  std::string manifest;
  auto got = t->fetch_manifest(
      proto::sha256(manifest_),
      [&](const char* data, std::size_t size) {
        manifest.append(data, size);
        return Status{};
      },
      [&] {
        manifest.clear();
        return Status{};
      });
  ASSERT_TRUE(got) << got.message();
  EXPECT_EQ(manifest, manifest_);
  auto file = fetch(*t, "edge/main/x86_64/big.apk", big_.size());
  ASSERT_TRUE(file) << file.message();
  EXPECT_TRUE(*file == big_);
  // One keep-alive connection served all three: the snapshot opens no other (a no-op costs the
  // parent one handshake).
  EXPECT_EQ(server->connections, 1);
  EXPECT_EQ(server->requests, 3);
}

TEST_F(HttpsTransportTest, VerifiesAHostName) {
  auto server = serve();
  auto t = connect(server->url("localhost"), options());
  ASSERT_TRUE(t);
  auto snap = t->fetch_snapshot();
  ASSERT_TRUE(snap) << snap.message();
  EXPECT_EQ(*snap, snapshot_);
}

TEST_F(HttpsTransportTest, RefusesAServerSignedByAStrangerCa) {
  auto server = serve();
  TransportOptions o = options();
  o.ca_file = pki_.stranger_ca;
  auto t = connect(server->url(), o);
  ASSERT_TRUE(t);
  auto snap = t->fetch_snapshot();
  ASSERT_FALSE(snap);
  EXPECT_EQ(snap.message(), server->url() + ".tiersync/v1/snapshot: certificate verify failed " +
                                "(unable to get local issuer certificate)");
  EXPECT_EQ(server->requests, 0);
}

TEST_F(HttpsTransportTest, RefusesACertificateForAnotherHost) {
  auto server = std::make_unique<TestServer>(tree_, pki_.other_cert, pki_.other_key);
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  auto snap = t->fetch_snapshot();
  ASSERT_FALSE(snap);
  EXPECT_TRUE(Contains(snap.message(), "certificate verify failed (IP address mismatch)"));

  auto by_name = connect(server->url("localhost"), options());
  ASSERT_TRUE(by_name);
  auto snap2 = by_name->fetch_snapshot();
  ASSERT_FALSE(snap2);
  EXPECT_TRUE(Contains(snap2.message(), "https://localhost:"));
  EXPECT_TRUE(Contains(snap2.message(), "certificate verify failed (hostname mismatch)"));
  EXPECT_EQ(server->requests, 0);
}

TEST_F(HttpsTransportTest, MissingCaFileNamesTheKey) {
  TransportOptions o = options();
  o.ca_file = tree_ / "no-such-ca.pem";
  auto t = make_transport("https://127.0.0.1:1/", o);
  ASSERT_FALSE(t);
  EXPECT_TRUE(Contains(t.message(), "upstream.ca_file"));
  EXPECT_TRUE(Contains(t.message(), "no-such-ca.pem"));
}

TEST_F(HttpsTransportTest, PlainHttpWorks) {
  TestServer server(tree_, {}, {});
  auto t = connect(server.url(), options());
  ASSERT_TRUE(t);
  auto snap = t->fetch_snapshot();
  ASSERT_TRUE(snap) << snap.message();
  EXPECT_EQ(*snap, snapshot_);
  auto file = fetch(*t, "edge/main/x86_64/big.apk", big_.size());
  ASSERT_TRUE(file) << file.message();
  EXPECT_TRUE(*file == big_);
}

TEST_F(HttpsTransportTest, NotFoundNamesTheUrl) {
  auto server = serve();
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  auto file = fetch(*t, "edge/main/x86_64/missing.apk", 10);
  ASSERT_FALSE(file);
  EXPECT_EQ(file.message(), server->url() + "edge/main/x86_64/missing.apk: HTTP 404");
  EXPECT_EQ(server->requests, 1);  // a 404 is not retried
}

TEST_F(HttpsTransportTest, EncodesPathsAndServesAPrefix) {
  write_file(tree_ / "mirror/alpine/edge/g++ 1%.apk", "plus");
  auto server = serve();
  auto t = connect(server->url() + "mirror/alpine", options());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->describe(), server->url() + "mirror/alpine/");
  auto file = fetch(*t, "edge/g++ 1%.apk", 4);
  ASSERT_TRUE(file) << file.message();
  EXPECT_EQ(*file, "plus");
}

TEST_F(HttpsTransportTest, ResumesAnInterruptedDownloadWithRange) {
  auto server = serve({.cut_responses = 1, .cut_after = 100'000});
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  auto file = fetch(*t, "edge/main/x86_64/big.apk", big_.size());
  ASSERT_TRUE(file) << file.message();
  EXPECT_TRUE(*file == big_);
  EXPECT_EQ(server->ranges(), std::vector<std::string>{"bytes=100000-"});
}

TEST_F(HttpsTransportTest, ResumesWithoutRangeSupportByDroppingTheRepeat) {
  auto server = serve({.cut_responses = 1, .cut_after = 70'000, .ignore_range = true});
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  auto file = fetch(*t, "edge/main/x86_64/big.apk", big_.size());
  ASSERT_TRUE(file) << file.message();
  EXPECT_TRUE(*file == big_);
  EXPECT_EQ(server->ranges().size(), 1u);
}

// A download resumed across runs: the request names the bytes the receiver already has; the
// parent is asked for the rest with a Range, and a parent that ignores it has the repeat dropped.
TEST_F(HttpsTransportTest, AnOffsetAsksForTheRestOnly) {
  for (bool ignore_range : {false, true}) {
    auto server = serve({.ignore_range = ignore_range});
    auto t = connect(server->url(), options());
    ASSERT_TRUE(t);
    std::string got;
    std::vector<FileRequest> batch(1);
    batch[0].path = "edge/main/x86_64/big.apk";
    batch[0].max_bytes = big_.size();
    batch[0].offset = 123'456;
    batch[0].sink = [&](const char* data, std::size_t size) {
      got.append(data, size);
      return Status{};
    };
    ASSERT_TRUE(t->fetch_files(batch)) << batch[0].result.message();
    EXPECT_TRUE(got == big_.substr(123'456)) << "ignore_range=" << ignore_range;
    EXPECT_EQ(server->ranges(), std::vector<std::string>{"bytes=123456-"});
  }
}

TEST_F(HttpsTransportTest, RestartsTheReceiverWhenTheParentIgnoresRange) {
  auto server = serve({.cut_responses = 1, .cut_after = 70'000, .ignore_range = true});
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  std::string got;
  int restarts = 0;
  std::vector<FileRequest> batch(1);
  batch[0].path = "edge/main/x86_64/big.apk";
  batch[0].max_bytes = big_.size();
  batch[0].sink = [&](const char* data, std::size_t size) {
    got.append(data, size);
    return Status{};
  };
  batch[0].restart = [&] {
    ++restarts;
    got.clear();
    return Status{};
  };
  auto st = t->fetch_files(batch);
  ASSERT_TRUE(st) << st.message();
  EXPECT_TRUE(batch[0].result);
  EXPECT_EQ(restarts, 1);
  EXPECT_TRUE(got == big_);
}

TEST_F(HttpsTransportTest, RefusesMoreBytesThanExpected) {
  auto server = serve({.extra_bytes = 10});
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  std::uint64_t received = 0;
  auto st = t->fetch_file("edge/main/x86_64/big.apk", big_.size(), [&](const char*, std::size_t n) {
    received += n;
    return Status{};
  });
  ASSERT_FALSE(st);
  EXPECT_EQ(st.message(), server->url() + "edge/main/x86_64/big.apk: the body of 300010 bytes " +
                              "is larger than the expected 300000");
  EXPECT_EQ(received, 0u);
}

TEST_F(HttpsTransportTest, RefusesMoreBytesThanExpectedWithoutContentLength) {
  auto server = serve({.extra_bytes = 10, .close_delimited = true});
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  std::uint64_t received = 0;
  auto st = t->fetch_file("edge/main/x86_64/big.apk", big_.size(), [&](const char*, std::size_t n) {
    received += n;
    return Status{};
  });
  ASSERT_FALSE(st);
  EXPECT_TRUE(Contains(st.message(), "larger than the expected 300000 bytes"));
  EXPECT_LE(received, big_.size());
}

TEST_F(HttpsTransportTest, ReadsABodyThatEndsWithTheConnection) {
  auto server = serve({.close_delimited = true});
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  auto file = fetch(*t, "edge/main/x86_64/big.apk", big_.size());
  ASSERT_TRUE(file) << file.message();
  EXPECT_TRUE(*file == big_);
  auto again = fetch(*t, "edge/main/x86_64/big.apk", big_.size());
  ASSERT_TRUE(again) << again.message();
  EXPECT_EQ(server->connections, 2);
}

TEST_F(HttpsTransportTest, AStalledBodyTimesOut) {
  auto server = serve({.stall_after = 50'000, .stall = true});
  TransportOptions o = options();
  o.read_timeout = 700ms;
  o.max_attempts = 1;
  auto t = connect(server->url(), o);
  ASSERT_TRUE(t);
  auto file = fetch(*t, "edge/main/x86_64/big.apk", big_.size());
  ASSERT_FALSE(file);
  // The read timeout ended it (the server stalls for 10 s), with what had arrived.
  EXPECT_EQ(file.message(), server->url() + "edge/main/x86_64/big.apk: timed out (no data for " +
                                "700 ms) after 50000 bytes");
  EXPECT_EQ(server->requests, 1);
}

TEST_F(HttpsTransportTest, ATricklingParentFailsAtTheMinimumRate) {
  // A byte every 20 ms: never silent long enough for the read timeout (5 s here).
  auto server = serve({.trickle = 20ms});
  TransportOptions o = options();
  o.max_attempts = 1;
  o.min_bytes_per_second = 1000;
  o.min_rate_grace = 200ms;
  auto t = connect(server->url(), o);
  ASSERT_TRUE(t);
  std::uint64_t received = 0;
  auto st =
      t->fetch_file("edge/main/x86_64/big.apk", big_.size(), [&](const char*, std::size_t size) {
        received += size;
        return Status{};
      });
  ASSERT_FALSE(st);
  EXPECT_TRUE(Contains(st.message(), server->url() + "edge/main/x86_64/big.apk: slower than the " +
                                         "minimum rate of 1000 bytes/s ("));
  // Far from the 300,000 bytes it would have taken 100 minutes to trickle.
  EXPECT_LT(received, 10'000u);
}

TEST_F(HttpsTransportTest, AStopFlagEndsATrickle) {
  auto server = serve({.trickle = 20ms});
  std::atomic<bool> stop{false};
  TransportOptions o = options();
  o.min_bytes_per_second = 0;  // only the flag can end it
  o.stop = &stop;
  auto t = connect(server->url(), o);
  ASSERT_TRUE(t);
  std::uint64_t received = 0;
  auto st =
      t->fetch_file("edge/main/x86_64/big.apk", big_.size(), [&](const char*, std::size_t size) {
        received += size;
        if (received >= 10) stop = true;
        return Status{};
      });
  ASSERT_FALSE(st);
  EXPECT_EQ(st.message(), server->url() + "edge/main/x86_64/big.apk: stopped");
  EXPECT_LT(received, 10'000u);
  // Still raised: nothing more is asked of the parent.
  const int requests = server->requests;
  auto snap = t->fetch_snapshot();
  ASSERT_FALSE(snap);
  EXPECT_EQ(snap.message(), server->url() + ".tiersync/v1/snapshot: stopped");
  EXPECT_EQ(server->requests, requests);
}

TEST_F(HttpsTransportTest, AStopFlagEndsAManifestFetchWaitingForItsAnswer) {
  // The parent holds the answer for 5 s; the flag, raised by another thread once the request has
  // arrived, ends the wait (set_stop_flag replaces the options' flag).
  auto server = serve({.hold = 5s});
  std::atomic<bool> stop{false};
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  t->set_stop_flag(&stop);
  std::thread raiser([&] {
    for (int i = 0; i < 1000 && server->requests == 0; ++i) std::this_thread::sleep_for(10ms);
    stop = true;
  });
  std::string manifest;
  auto st = t->fetch_manifest(
      proto::sha256(manifest_),
      [&](const char* data, std::size_t size) {
        manifest.append(data, size);
        return Status{};
      },
      [] { return Status{}; });
  raiser.join();
  ASSERT_FALSE(st);
  EXPECT_EQ(st.message(), server->url() + ".tiersync/v1/manifests/" +
                              proto::to_hex(proto::sha256(manifest_)) + ": stopped");
  EXPECT_EQ(manifest, "");
}

TEST_F(HttpsTransportTest, RetriesA503ThenSucceeds) {
  auto server = serve({.fail_503 = 2});
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  auto snap = t->fetch_snapshot();
  ASSERT_TRUE(snap) << snap.message();
  EXPECT_EQ(*snap, snapshot_);
  EXPECT_EQ(server->requests, 3);
}

// A long poll answered 503 with Retry-After (a parent stopping, or over its caps) carries the
// delay in seconds as sent, saturated at a day; an HTTP-date, garbage or no header is a plain
// failure. The poller bounds it (PollScheduleTest.RetryAfterIsHonouredWithinBoundsAndBacksOff).
TEST_F(HttpsTransportTest, ALongPollAnswered503CarriesItsRetryAfter) {
  const std::vector<std::pair<std::string, std::optional<std::chrono::seconds>>> cases = {
      {"1", 1s},
      {" 7\t", 7s},
      {"0", 0s},
      {"99999999999999999999999999", 86400s},
      {"Wed, 21 Oct 2026 07:28:00 GMT", std::nullopt},
      {"-5", std::nullopt},
      {"", std::nullopt},
  };
  for (const auto& [header, expected] : cases) {
    SCOPED_TRACE("Retry-After: \"" + header + "\"");
    auto server = serve({.fail_503 = 1, .retry_after = header});
    TransportOptions o = options(1);
    o.max_attempts = 1;  // as the poller's
    auto t = connect(server->url(), o);
    ASSERT_TRUE(t);
    auto polled = t->poll_snapshot(7, 30s);
    ASSERT_FALSE(polled);
    EXPECT_NE(polled.message().find("HTTP 503"), std::string::npos) << polled.message();
    EXPECT_EQ(polled.retry_after, expected);
    EXPECT_EQ(server->requests, 1);
  }
}

TEST_F(HttpsTransportTest, GivesUpAfterBoundedAttempts) {
  auto server = serve({.fail_503 = 100});
  TransportOptions o = options();
  o.max_attempts = 3;
  auto t = connect(server->url(), o);
  ASSERT_TRUE(t);
  auto snap = t->fetch_snapshot();
  ASSERT_FALSE(snap);
  EXPECT_EQ(snap.message(), server->url() + ".tiersync/v1/snapshot: HTTP 503 (3 attempts)");
  EXPECT_EQ(server->requests, 3);
}

TEST_F(HttpsTransportTest, ConnectionRefusedIsRetriedThenReported) {
  int port = 0;
  {
    TestServer gone(tree_, {}, {});
    port = gone.port();
  }
  TransportOptions o = options();
  o.max_attempts = 2;
  auto t = connect("http://127.0.0.1:" + std::to_string(port) + "/", o);
  ASSERT_TRUE(t);
  auto snap = t->fetch_snapshot();
  ASSERT_FALSE(snap);
  EXPECT_TRUE(Contains(snap.message(), "http://127.0.0.1:" + std::to_string(port) +
                                           "/.tiersync/v1/snapshot: cannot connect to"));
  EXPECT_TRUE(Contains(snap.message(), "(2 attempts)"));
}

TEST_F(HttpsTransportTest, ReconnectsWhenTheParentClosedAKeptAliveConnection) {
  auto server = serve({.close_after_response = true});
  TransportOptions o = options();
  o.max_attempts = 1;  // a stale connection is not a failed attempt
  auto t = connect(server->url(), o);
  ASSERT_TRUE(t);
  for (int i = 0; i < 3; ++i) {
    auto file = fetch(*t, "edge/main/x86_64/big.apk", big_.size());
    ASSERT_TRUE(file) << file.message();
  }
  EXPECT_EQ(server->connections, 3);
}

TEST_F(HttpsTransportTest, ConditionalSnapshotAndLongPoll) {
  auto server = serve();
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  auto first = t->fetch_snapshot();
  ASSERT_TRUE(first) << first.message();
  auto second = t->fetch_snapshot();  // If-None-Match: "7" -> 304, the same bytes
  ASSERT_TRUE(second) << second.message();
  EXPECT_EQ(*second, snapshot_);
  EXPECT_EQ(server->not_modified, 1);

  auto newer = t->poll_snapshot(6, 30s);  // serial 7 > 6: at once
  ASSERT_TRUE(newer) << newer.message();
  ASSERT_TRUE(newer->has_value());
  EXPECT_EQ(**newer, snapshot_);

  const auto start = Clock::now();
  auto same = t->poll_snapshot(7, 1s);  // held for a second, then 304
  ASSERT_TRUE(same) << same.message();
  EXPECT_FALSE(same->has_value());
  EXPECT_GE(Clock::now() - start, 900ms);
  EXPECT_EQ(server->not_modified, 2);
}

TEST_F(HttpsTransportTest, ACycleWokenByALongPollStartsFromItsEnvelope) {
  // The daemon's poller and its cycle hold a transport each: the envelope the poll brought is
  // the cycle's snapshot, without a request of its own; taken once.
  auto server = serve();
  auto poller = connect(server->url(), options(1));
  auto cycle = connect(server->url(), options(1));
  ASSERT_TRUE(poller && cycle);
  auto polled = poller->poll_snapshot(6, 30s);
  ASSERT_TRUE(polled) << polled.message();
  ASSERT_TRUE(polled->has_value());
  EXPECT_EQ(server->requests, 1);
  auto snap = cycle->fetch_snapshot();
  ASSERT_TRUE(snap) << snap.message();
  EXPECT_EQ(*snap, snapshot_);
  EXPECT_EQ(server->requests, 1);
  auto again = cycle->fetch_snapshot();  // asks, conditionally on the polled envelope's ETag
  ASSERT_TRUE(again) << again.message();
  EXPECT_EQ(*again, snapshot_);
  EXPECT_EQ(server->requests, 2);
  EXPECT_EQ(server->not_modified, 1);
}

TEST_F(HttpsTransportTest, FetchesABatchOverAPoolOfFourConnections) {
  std::vector<std::string> contents;
  for (int i = 0; i < 12; ++i) {
    contents.push_back(pattern(20'000 + 1000 * i, i + 2));
    write_file(tree_ / ("edge/main/x86_64/f" + std::to_string(i) + ".apk"), contents.back());
  }
  auto server = serve({.hold = 150ms});
  auto t = connect(server->url(), options(4));
  ASSERT_TRUE(t);
  std::vector<std::string> got(contents.size());
  std::vector<FileRequest> batch(contents.size());
  for (std::size_t i = 0; i < batch.size(); ++i) {
    batch[i].path = "edge/main/x86_64/f" + std::to_string(i) + ".apk";
    batch[i].max_bytes = contents[i].size();
    batch[i].sink = [&got, i](const char* data, std::size_t size) {
      got[i].append(data, size);
      return Status{};
    };
  }
  auto st = t->fetch_files(batch);
  ASSERT_TRUE(st) << st.message();
  for (std::size_t i = 0; i < batch.size(); ++i) {
    EXPECT_TRUE(batch[i].result) << batch[i].result.message();
    EXPECT_TRUE(got[i] == contents[i]) << batch[i].path;
  }
  EXPECT_EQ(server->connections, 4);
  EXPECT_EQ(server->requests, 12);
  EXPECT_GE(server->max_in_flight, 2);
  EXPECT_LE(server->max_in_flight, 4);  // not one at a time: several answers held at once
}

TEST_F(HttpsTransportTest, ABatchStopsAfterAFailure) {
  write_file(tree_ / "a", "a");
  write_file(tree_ / "c", "c");
  auto server = serve();
  auto t = connect(server->url(), options(1));
  ASSERT_TRUE(t);
  std::vector<FileRequest> batch(3);
  const char* paths[] = {"a", "b", "c"};
  for (int i = 0; i < 3; ++i) {
    batch[i].path = paths[i];
    batch[i].max_bytes = 1;
    batch[i].sink = [](const char*, std::size_t) { return Status{}; };
  }
  auto st = t->fetch_files(batch);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.message(), server->url() + "b: HTTP 404");
  EXPECT_TRUE(batch[0].result);
  EXPECT_FALSE(batch[1].result);
  ASSERT_FALSE(batch[2].result);
  EXPECT_TRUE(Contains(batch[2].result.message(), "not fetched after an earlier failure"));
}

TEST_F(HttpsTransportTest, ASinkErrorStopsTheTransfer) {
  auto server = serve();
  auto t = connect(server->url(), options());
  ASSERT_TRUE(t);
  auto st = t->fetch_file("edge/main/x86_64/big.apk", big_.size(),
                          [](const char*, std::size_t) { return Status(make_error("disk full")); });
  ASSERT_FALSE(st);
  EXPECT_EQ(st.message(), "disk full");
  EXPECT_EQ(server->requests, 1);
}

TEST_F(HttpsTransportTest, HonoursMaxBytesPerSecond) {
  write_file(tree_ / "edge/main/x86_64/200k.apk", pattern(200'000));
  auto server = serve();
  TransportOptions o = options();
  o.max_bytes_per_second = 100'000;
  auto t = connect(server->url(), o);
  ASSERT_TRUE(t);
  const auto start = Clock::now();
  auto file = fetch(*t, "edge/main/x86_64/200k.apk", 200'000);
  const auto elapsed = Clock::now() - start;
  ASSERT_TRUE(file) << file.message();
  EXPECT_EQ(file->size(), 200'000u);
  EXPECT_GE(elapsed, 1500ms);  // 200,000 bytes at 100,000 a second, less the first chunk
}

// --- Pipelining (docs/protocol.md) ------------------------------------------------------------

TEST_F(HttpsTransportTest, PipelinesABatchOverOneConnection) {
  auto run = run_pipeline(40, {}, 1, 8);
  ASSERT_TRUE(run->status) << run->status.message();
  EXPECT_TRUE(run->batch.all_fetched());
  EXPECT_EQ(run->server->connections, 1);
  EXPECT_EQ(run->server->requests, 40);
  // How many requests the server finds waiting depends on scheduling; the client's own count
  // does not: at least 8 were written before the first answer was read (more once the pipeline
  // follows the measured bandwidth-delay product), and the server never saw more.
  auto* https = dynamic_cast<HttpsTransport*>(run->transport.get());
  ASSERT_NE(https, nullptr);
  EXPECT_GE(https->link().deepest_pipeline, 8u);
  EXPECT_GE(run->server->max_pipelined, 1);
  EXPECT_LE(static_cast<std::size_t>(run->server->max_pipelined), https->link().deepest_pipeline);
  EXPECT_EQ(run->transport->faults(), 0u);
}

TEST_F(HttpsTransportTest, DepthOneSendsOneRequestAtATime) {
  auto run = run_pipeline(10, {}, 1, 1);
  ASSERT_TRUE(run->status) << run->status.message();
  EXPECT_TRUE(run->batch.all_fetched());
  EXPECT_EQ(run->server->max_pipelined, 1);
  EXPECT_EQ(dynamic_cast<HttpsTransport&>(*run->transport).link().deepest_pipeline, 1u);
}

TEST_F(HttpsTransportTest, ThePipelineGrowsWithTheBandwidthDelayProduct) {
  // A round trip of 20 ms (the snapshot's answer waits that long), then files as fast as
  // loopback: twice rate x round trip is far beyond 4 requests, so the pipeline deepens past the
  // configured 4, up to 256 and no further.
  PipelineBatch batch(tree_, 1200);
  auto server = serve({.hold_snapshot = 20ms});
  TransportOptions o = options(1);
  o.pipeline_depth = 4;
  auto made = HttpsTransport::create(server->url(), o);
  ASSERT_TRUE(made) << made.message();
  HttpsTransport& t = **made;
  ASSERT_TRUE(t.fetch_snapshot());
  ASSERT_TRUE(t.link().round_trip);
  EXPECT_GE(*t.link().round_trip, 20ms);
  ASSERT_TRUE(t.fetch_files(batch.requests));
  EXPECT_TRUE(batch.all_fetched());
  EXPECT_GT(t.link().bytes_per_second, 0);
  EXPECT_GT(t.link().deepest_pipeline, 4u);
  EXPECT_LE(t.link().deepest_pipeline, 256u);
  EXPECT_EQ(t.faults(), 0u);
}

TEST_F(HttpsTransportTest, AServerThatClosesAfterNAnswersKeepsThePipeline) {
  // nginx before 1.19.10 closes a connection after 100 requests (`Connection: close` on the
  // last answer): a normal end. The requests behind it go out again, still pipelined, and the
  // parent is not at fault.
  auto run = run_pipeline(60, {.answers_per_connection = 10}, 1, 8);
  ASSERT_TRUE(run->status) << run->status.message();
  EXPECT_TRUE(run->batch.all_fetched());
  EXPECT_EQ(run->transport->faults(), 0u);
  EXPECT_GE(run->server->connections, 6);
  // Pipelining is still on for this parent: a second batch goes (at least) 8 deep again.
  PipelineBatch again(tree_, 30);
  ASSERT_TRUE(run->transport->fetch_files(again.requests));
  EXPECT_TRUE(again.all_fetched());
  EXPECT_GE(dynamic_cast<HttpsTransport&>(*run->transport).link().deepest_pipeline, 8u);
  EXPECT_EQ(run->transport->faults(), 0u);
}

TEST_F(HttpsTransportTest, AnswersOutOfOrderAreDetectedAndAskedAgain) {
  auto run = run_pipeline(20, {.swap_answers = 1}, 2, 4);
  ASSERT_TRUE(run->status) << run->status.message();
  EXPECT_TRUE(run->batch.all_fetched());  // nothing of another file reached a sink
  EXPECT_EQ(run->transport->faults(), 1u);
  // One at a time from then on: a second batch is not pipelined.
  const int before = run->server->max_pipelined;
  PipelineBatch again(tree_, 20);
  ASSERT_TRUE(run->transport->fetch_files(again.requests));
  EXPECT_TRUE(again.all_fetched());
  EXPECT_EQ(run->server->max_pipelined, before);
  EXPECT_EQ(dynamic_cast<HttpsTransport&>(*run->transport).link().deepest_pipeline, 1u);
}

TEST_F(HttpsTransportTest, MoreAnswersThanRequestsAreDetected) {
  auto run = run_pipeline(20, {.duplicate_answers = 1}, 1, 4);
  ASSERT_TRUE(run->status) << run->status.message();
  EXPECT_TRUE(run->batch.all_fetched());
  EXPECT_GE(run->transport->faults(), 1u);
}

TEST_F(HttpsTransportTest, FewerAnswersThanRequestsAreDetected) {
  auto run = run_pipeline(20, {.skip_answers = 1}, 1, 4);
  ASSERT_TRUE(run->status) << run->status.message();
  EXPECT_TRUE(run->batch.all_fetched());
  // The answer after the skipped one was not the skipped file's.
  EXPECT_EQ(run->transport->faults(), 1u);
}

TEST_F(HttpsTransportTest, AConnectionClosedMidPipelineLeavesTheRestToBeAskedAgain) {
  // Every connection answers one request, then closes with the others unanswered: legitimate
  // (a server may close a kept-alive connection at any time), so not a fault.
  auto run = run_pipeline(12, {.close_after_response = true}, 2, 6);
  ASSERT_TRUE(run->status) << run->status.message();
  EXPECT_TRUE(run->batch.all_fetched());
  EXPECT_EQ(run->transport->faults(), 0u);
  EXPECT_GE(run->server->connections, 12);
}

TEST_F(HttpsTransportTest, ABodyCutMidPipelineIsResumedElsewhere) {
  auto run = run_pipeline(12, {.cut_responses = 2, .cut_after = 500}, 2, 6);
  ASSERT_TRUE(run->status) << run->status.message();
  EXPECT_TRUE(run->batch.all_fetched());
  EXPECT_EQ(run->server->ranges().size(), 2u);  // the two cut files resumed from byte 500
  EXPECT_EQ(run->transport->faults(), 0u);
}

TEST_F(HttpsTransportTest, AParentThatKeepsCuttingFailsTheBatchAfterBoundedAttempts) {
  auto run = run_pipeline(6, {.cut_responses = 1000, .cut_after = 0}, 2, 4, 3);
  ASSERT_FALSE(run->status);
  EXPECT_TRUE(Contains(run->status.message(), "(3 attempts)")) << run->status.message();
  for (const auto& r : run->batch.requests) EXPECT_FALSE(r.result) << r.path;
  EXPECT_LE(run->server->requests, 6 * 3);
}

TEST_F(HttpsTransportTest, FetchesABatchOfManifests) {
  std::vector<std::string> manifests;
  std::vector<ManifestRequest> requests(5);
  std::vector<std::string> got(5);
  for (int i = 0; i < 5; ++i) {
    manifests.push_back("{\"type\": \"tiersync.manifest\", \"n\": " + std::to_string(i) + "}");
    const auto digest = proto::sha256(manifests.back());
    write_file(tree_ / ".tiersync/v1/manifests" / proto::to_hex(digest), manifests.back());
    requests[i].digest = digest;
    requests[i].sink = [&got, i](const char* data, std::size_t size) {
      got[i].append(data, size);
      return Status{};
    };
  }
  write_file(tree_ / ".tiersync/v1/status", "{\"name\": \"parent\"}");
  auto server = serve();
  auto t = connect(server->url(), options(1));
  ASSERT_TRUE(t);
  auto st = t->fetch_manifests(requests);
  ASSERT_TRUE(st) << st.message();
  for (int i = 0; i < 5; ++i) EXPECT_EQ(got[i], manifests[i]);
  EXPECT_EQ(server->connections, 1);
  // How many requests the server finds waiting depends on scheduling; one connection and six
  // requests (below) show the batch went down one pipeline.
  EXPECT_GE(server->max_pipelined, 1);
  // The parent's status came in the same pipeline: reading it costs no request of its own.
  EXPECT_EQ(server->requests, 6);
  auto status = t->fetch_status();
  ASSERT_TRUE(status) << status.message();
  EXPECT_EQ(*status, "{\"name\": \"parent\"}");
  EXPECT_EQ(server->requests, 6);
  ASSERT_TRUE(t->fetch_status());  // the next one asks
  EXPECT_EQ(server->requests, 7);
}

TEST_F(HttpsTransportTest, AMissingStatusBesideManifestsFailsOnlyItself) {
  std::vector<ManifestRequest> requests(1);
  std::string got;
  requests[0].digest = proto::sha256(manifest_);
  requests[0].sink = [&got](const char* data, std::size_t size) {
    got.append(data, size);
    return Status{};
  };
  auto server = serve();
  auto t = connect(server->url(), options(1));
  ASSERT_TRUE(t);
  auto st = t->fetch_manifests(requests);
  ASSERT_TRUE(st) << st.message();
  EXPECT_EQ(got, manifest_);
  auto status = t->fetch_status();
  ASSERT_FALSE(status);
  EXPECT_TRUE(Contains(status.message(), "HTTP 404")) << status.message();
}

TEST_F(HttpsTransportTest, DocumentsBesideManifestsCostNoRequestOfTheirOwn) {
  std::vector<ManifestRequest> requests(1);
  std::string got;
  requests[0].digest = proto::sha256(manifest_);
  requests[0].sink = [&got](const char* data, std::size_t size) {
    got.append(data, size);
    return Status{};
  };
  requests[0].restart = [&got] {
    got.clear();
    return Status{};
  };
  write_file(tree_ / ".tiersync/v1/pins/8", "{\"pins\": {}}");
  write_file(tree_ / ".tiersync/v1/status", "{\"name\": \"parent\"}");
  auto server = serve();
  auto t = connect(server->url(), options(1));
  ASSERT_TRUE(t);
  t->fetch_document_beside_manifests(".tiersync/v1/pins/8", 1024);
  // The parent has none: its 404 ends its connection, so it is asked for last (in path order).
  t->fetch_document_beside_manifests(".tiersync/v1/pins/9", 1024);
  ASSERT_TRUE(t->fetch_manifests(requests));
  EXPECT_EQ(got, manifest_);
  EXPECT_EQ(server->requests, 4);  // the manifest, the status and the two documents
  auto pins = t->fetch_document(".tiersync/v1/pins/8", 1024);
  ASSERT_TRUE(pins) << pins.message();
  ASSERT_TRUE(pins->has_value());
  EXPECT_EQ(**pins, "{\"pins\": {}}");
  auto none = t->fetch_document(".tiersync/v1/pins/9", 1024);
  ASSERT_TRUE(none) << none.message();
  EXPECT_FALSE(none->has_value());
  EXPECT_EQ(server->requests, 4);
  ASSERT_TRUE(t->fetch_document(".tiersync/v1/pins/8", 1024));  // once only: this one asks
  EXPECT_EQ(server->requests, 5);
}

TEST_F(HttpsTransportTest, ADocumentWantedWithoutABatchIsAskedForWhenRead) {
  write_file(tree_ / ".tiersync/v1/pins/8", "{}");
  auto server = serve();
  auto t = connect(server->url(), options(1));
  ASSERT_TRUE(t);
  t->fetch_document_beside_manifests(".tiersync/v1/pins/8", 1024);
  EXPECT_EQ(server->requests, 0);
  auto pins = t->fetch_document(".tiersync/v1/pins/8", 1024);
  ASSERT_TRUE(pins) << pins.message();
  ASSERT_TRUE(pins->has_value());
  EXPECT_EQ(**pins, "{}");
  EXPECT_EQ(server->requests, 1);
}

TEST_F(HttpsTransportTest, ASnapshotFetchOpensOneConnectionAndTheBatchTheRest) {
  // A no-op cycle costs the parent one handshake: the snapshot goes on one connection, and the
  // batch after a changed snapshot opens the pool's others; none of them is at fault.
  auto server = serve();
  TransportOptions o = options(4);
  o.pipeline_depth = 2;
  auto t = connect(server->url(), o);
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->fetch_snapshot());
  EXPECT_EQ(server->connections, 1);
  EXPECT_EQ(server->requests, 1);
  PipelineBatch batch(tree_, 40);
  ASSERT_TRUE(t->fetch_files(batch.requests));
  EXPECT_TRUE(batch.all_fetched());
  EXPECT_EQ(server->connections, 4);
  EXPECT_EQ(t->faults(), 0u);
}

TEST_F(HttpsTransportTest, AKeptAliveConnectionTheParentClosedIsNotAFailure) {
  // The parent closes connections idle for 300 ms: kept-alive ones it closed between two
  // batches are stale, so one attempt each is enough and pipelining stays on.
  auto server = serve({.idle_close = 300ms});
  TransportOptions o = options(3);
  o.pipeline_depth = 4;
  o.max_attempts = 1;
  auto made = HttpsTransport::create(server->url(), o);
  ASSERT_TRUE(made) << made.message();
  HttpsTransport& t = **made;
  PipelineBatch first(tree_, 30);
  ASSERT_TRUE(t.fetch_files(first.requests));
  EXPECT_TRUE(first.all_fetched());
  EXPECT_EQ(server->connections, 3);
  for (int i = 0; i < 1000 && server->closed_waiting < 3; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(server->closed_waiting, 3);
  PipelineBatch batch(tree_, 30);
  auto st = t.fetch_files(batch.requests);
  ASSERT_TRUE(st) << st.message();
  EXPECT_TRUE(batch.all_fetched());
  EXPECT_EQ(t.faults(), 0u);
  PipelineBatch again(tree_, 30);  // still pipelined
  ASSERT_TRUE(t.fetch_files(again.requests));
  EXPECT_TRUE(again.all_fetched());
  EXPECT_GE(t.link().deepest_pipeline, 4u);
}

// --- Large files in ranges (docs/protocol.md, "Large files") ------------------------------

/// A batch of the test tree's big file, received into `got` from `offset` on.
std::vector<FileRequest> big_file(std::string& got, std::uint64_t size, std::uint64_t offset = 0) {
  std::vector<FileRequest> batch(1);
  batch[0].path = "edge/main/x86_64/big.apk";
  batch[0].max_bytes = size;
  batch[0].offset = offset;
  batch[0].sink = [&got](const char* data, std::size_t n) {
    got.append(data, n);
    return Status{};
  };
  return batch;
}

TEST_F(HttpsTransportTest, ALargeFileComesInRangesOverThePool) {
  auto server = serve();
  auto t = connect(server->url(), ranged_options());  // parts of 50,000 bytes
  ASSERT_TRUE(t);
  std::string got;
  auto batch = big_file(got, big_.size());
  ASSERT_TRUE(t->fetch_files(batch)) << batch[0].result.message();
  EXPECT_TRUE(got == big_);  // in order, every byte in its place
  auto ranges = server->ranges();
  std::sort(ranges.begin(), ranges.end());
  EXPECT_EQ(ranges, (std::vector<std::string>{"bytes=0-49999", "bytes=100000-149999",
                                              "bytes=150000-199999", "bytes=200000-249999",
                                              "bytes=250000-299999", "bytes=50000-99999"}));
  EXPECT_EQ(server->requests, 6);
  EXPECT_LE(server->connections, 3);
  EXPECT_GE(server->max_in_flight, 1);
  EXPECT_EQ(t->faults(), 0u);
}

TEST_F(HttpsTransportTest, ALargeFileResumedAtAnOffsetAsksForTheRestInRanges) {
  auto server = serve();
  auto t = connect(server->url(), ranged_options());
  ASSERT_TRUE(t);
  std::string got = big_.substr(0, 120'000);  // the sink holds these already
  auto batch = big_file(got, big_.size(), got.size());
  ASSERT_TRUE(t->fetch_files(batch)) << batch[0].result.message();
  EXPECT_TRUE(got == big_);
  auto ranges = server->ranges();
  std::sort(ranges.begin(), ranges.end());
  EXPECT_EQ(ranges, (std::vector<std::string>{"bytes=120000-169999", "bytes=170000-219999",
                                              "bytes=220000-269999", "bytes=270000-299999"}));
}

TEST_F(HttpsTransportTest, ASmallFileIsNotSplit) {
  auto server = serve();
  TransportOptions o = options(3);
  o.range_split_bytes = big_.size();  // not larger than the threshold
  auto t = connect(server->url(), o);
  ASSERT_TRUE(t);
  std::string got;
  auto batch = big_file(got, big_.size());
  ASSERT_TRUE(t->fetch_files(batch));
  EXPECT_TRUE(got == big_);
  EXPECT_TRUE(server->ranges().empty());
  EXPECT_EQ(server->requests, 1);
}

/// A parent that mishandles ranges (`faults`): the file still arrives whole and in order through
/// one whole fetch, and the next large file is not split.
void expect_whole_fetch_after_bad_ranges(TestServer& server, Transport& t,
                                         const std::string& content) {
  for (int round = 0; round < 2; ++round) {
    std::string got;
    auto batch = big_file(got, content.size());
    batch[0].restart = [&got] {
      got.clear();
      return Status{};
    };
    const int before = server.requests;
    auto st = t.fetch_files(batch);
    ASSERT_TRUE(st) << st.message();
    EXPECT_TRUE(got == content) << got.size();
    // At most a part per connection, then the whole file (resumed, dropped where refused).
    EXPECT_LE(server.requests - before, round == 0 ? 3 + 4 : 1);
  }
}

TEST_F(HttpsTransportTest, AParentIgnoringRangesGetsOneWholeFetch) {
  auto server = serve({.ignore_range = true});
  auto t = connect(server->url(), ranged_options());
  ASSERT_TRUE(t);
  expect_whole_fetch_after_bad_ranges(*server, *t, big_);
}

TEST_F(HttpsTransportTest, AWrongContentRangeGetsOneWholeFetch) {
  auto server = serve({.shift_ranges = true});
  auto t = connect(server->url(), ranged_options());
  ASSERT_TRUE(t);
  expect_whole_fetch_after_bad_ranges(*server, *t, big_);
}

TEST_F(HttpsTransportTest, AShortRangeGetsOneWholeFetch) {
  auto server = serve({.short_ranges = true});
  auto t = connect(server->url(), ranged_options());
  ASSERT_TRUE(t);
  expect_whole_fetch_after_bad_ranges(*server, *t, big_);
}

TEST_F(HttpsTransportTest, ACutPartIsResumedWithinItsRange) {
  auto server = serve({.cut_responses = 1, .cut_after = 10'000});
  auto t = connect(server->url(), ranged_options());
  ASSERT_TRUE(t);
  std::string got;
  auto batch = big_file(got, big_.size());
  ASSERT_TRUE(t->fetch_files(batch)) << batch[0].result.message();
  EXPECT_TRUE(got == big_);
  EXPECT_EQ(server->requests, 7);  // 6 parts, one of them asked again from where it was cut
  EXPECT_EQ(t->faults(), 0u);
}

// --- URLs and the interface's defaults --------------------------------------------------------

TEST(HttpsUrlTest, ParsesHostPortAndPrefix) {
  auto u = parse_http_url("https://Dl-Master.example.org:8443/alpine");
  ASSERT_TRUE(u) << u.message();
  EXPECT_TRUE(u->tls);
  EXPECT_EQ(u->host, "dl-master.example.org");
  EXPECT_EQ(u->port, 8443);
  EXPECT_EQ(u->prefix, "/alpine/");
  EXPECT_EQ(u->base(), "https://dl-master.example.org:8443/alpine/");

  auto plain = parse_http_url("http://mirror");
  ASSERT_TRUE(plain) << plain.message();
  EXPECT_FALSE(plain->tls);
  EXPECT_EQ(plain->port, 80);
  EXPECT_EQ(plain->base(), "http://mirror/");

  auto v6 = parse_http_url("https://[::1]:8443/");
  ASSERT_TRUE(v6) << v6.message();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->authority(), "[::1]:8443");
}

TEST(HttpsUrlTest, RefusesMalformedUrls) {
  for (const char* url :
       {"ftp://x/", "https://", "https://:80/", "https://host:0/", "https://host:99999/",
        "https://host:/", "https://user@host/", "https://host/?q", "https://host/#f",
        "https://[::1/", "https://[zz]/", "https://ho st/", "https://host/a b"}) {
    auto u = parse_http_url(url);
    EXPECT_FALSE(u) << url;
    if (!u) {
      EXPECT_TRUE(Contains(u.message(), "upstream.url \"" + std::string(url) + "\""));
    }
  }
}

TEST(HttpsUrlTest, EncodesEverythingButUnreservedBytesAndSlashes) {
  EXPECT_EQ(encode_path("edge/main/x86_64/APKINDEX.tar.gz"), "edge/main/x86_64/APKINDEX.tar.gz");
  EXPECT_EQ(encode_path("pool/g++_1:2 3%~.deb"), "pool/g%2B%2B_1%3A2%203%25~.deb");
  EXPECT_EQ(encode_path("caf\xc3\xa9?#"), "caf%C3%A9%3F%23");
}

TEST(HttpsTransportInterfaceTest, FileTransportFetchesABatchOneByOne) {
  const fs::path dir = unit::make_temp_dir("https_file");
  ASSERT_FALSE(dir.empty());
  write_file(dir / "a", "alpha");
  write_file(dir / "c", "gamma");
  auto t = make_transport("file://" + dir.string());
  ASSERT_TRUE(t) << t.message();
  std::vector<FileRequest> batch(3);
  std::vector<std::string> got(3);
  const char* paths[] = {"a", "c", "missing"};
  for (int i = 0; i < 3; ++i) {
    batch[i].path = paths[i];
    batch[i].max_bytes = 5;
    batch[i].sink = [&got, i](const char* data, std::size_t size) {
      got[i].append(data, size);
      return Status{};
    };
  }
  batch[1].offset = 2;  // resumed: the receiver has "ga" already
  auto st = (*t)->fetch_files(batch);
  EXPECT_FALSE(st);
  EXPECT_TRUE(batch[0].result);
  EXPECT_TRUE(batch[1].result);
  EXPECT_FALSE(batch[2].result);
  EXPECT_EQ(got[0], "alpha");
  EXPECT_EQ(got[1], "mma");

  write_file(dir / ".tiersync/v1/snapshot", "envelope");
  auto polled = (*t)->poll_snapshot(1, 0s);
  ASSERT_TRUE(polled) << polled.message();
  ASSERT_TRUE(polled->has_value());
  EXPECT_EQ(**polled, "envelope");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tiersync::transport
