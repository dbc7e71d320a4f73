// The HTTP(S) client behind https:// and http:// parents, and the only translation unit of the
// daemon that includes Asio and Beast. The public methods are synchronous: each spawns coroutines
// on a private io_context and runs it on the calling thread until they finish, so sinks run on
// the caller's thread, one at a time, and no lock is needed anywhere.

#include "daemon/transport/https_transport.h"

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cassert>
#include <cctype>
#include <charconv>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <vector>

#include "daemon/base/tls.h"
#include "proto/dsse.h"
#include "proto/manifest.h"
#include "proto/printable.h"
#include "proto/wire.h"

namespace tiersync::transport {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// Every asynchronous operation completes with its error code as a value: on a network, failure
// is expected, not exceptional.
constexpr auto kAsTuple = net::as_tuple(net::use_awaitable);

constexpr std::size_t kReadChunk = 64 * 1024;
// How often a raised stop flag is looked at: the longest a fetch runs on after SIGTERM.
constexpr milliseconds kStopCheck{100};
constexpr std::chrono::seconds kMaxPollWait{300};
constexpr milliseconds kMaxBackoff{30'000};
constexpr const char* kUserAgent = "tiersync";
constexpr std::string_view kSnapshotPath = proto::wire::kSnapshot;
constexpr std::string_view kManifestsPath = proto::wire::kManifestsPrefix;
constexpr std::string_view kStatusPath = proto::wire::kStatus;
constexpr std::uint64_t kMaxStatusBytes = 64 * 1024;
// The deepest a pipeline grows to follow the bandwidth-delay product (docs/protocol.md,
// "Pipelining"); also upstream.pipeline_depth's upper bound.
constexpr std::size_t kMaxPipelineDepth = 256;
// What a request in flight is counted as beyond its body: its answer's head and the request.
constexpr std::uint64_t kAnswerOverhead = 300;
// A manifest's size is not known before it arrives: counted as this much in flight.
constexpr std::uint64_t kUnknownBodyBytes = 16 * 1024;

bool is_ip_address(const std::string& host) {
  beast::error_code ec;
  net::ip::make_address(host, ec);
  return !ec;
}

std::string str(beast::string_view v) {
  return std::string(v.data(), v.size());
}

std::string ms_text(milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
  return std::to_string(d.count()) + " ms";
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`): START, or nullopt when malformed.
std::optional<std::uint64_t> content_range_start(std::string_view v) {
  if (!v.starts_with("bytes ")) return std::nullopt;
  v.remove_prefix(6);
  std::uint64_t start = 0, end = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), start);
  if (ec != std::errc() || p == v.data() + v.size() || *p != '-') return std::nullopt;
  auto [q, ec2] = std::from_chars(p + 1, v.data() + v.size(), end);
  if (ec2 != std::errc() || q == v.data() + v.size() || *q != '/' || end < start)
    return std::nullopt;
  return start;
}

/// The END of `bytes START-END/TOTAL`, or nullopt when malformed.
std::optional<std::uint64_t> content_range_end(std::string_view v) {
  const auto dash = v.find('-'), slash = v.rfind('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || slash < dash)
    return std::nullopt;
  std::uint64_t end = 0;
  auto [p, ec] = std::from_chars(v.data() + dash + 1, v.data() + slash, end);
  if (ec != std::errc() || p != v.data() + slash) return std::nullopt;
  return end;
}

/// The TOTAL of `bytes START-END/TOTAL`: nullopt when it is `*` or malformed.
std::optional<std::uint64_t> content_range_total(std::string_view v) {
  const auto slash = v.rfind('/');
  if (slash == std::string_view::npos) return std::nullopt;
  v.remove_prefix(slash + 1);
  std::uint64_t total = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), total);
  if (ec != std::errc() || p != v.data() + v.size()) return std::nullopt;
  return total;
}

/// A `Retry-After` in delay-seconds (RFC 9110 10.2.3), saturated at a day; nullopt for an
/// HTTP-date or anything else (the answer is then a plain failure). The long poll bounds it
/// further (node::next_poll).
std::optional<std::chrono::seconds> retry_after_seconds(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  if (v.empty() || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  constexpr std::uint64_t kDay = 86400;
  std::uint64_t n = 0;
  for (char c : v) n = std::min(kDay, n * 10 + static_cast<std::uint64_t>(c - '0'));
  return std::chrono::seconds(n);
}

/// How one attempt at a request ended.
struct Outcome {
  enum Kind {
    kDone,
    kRetry,    ///< transient (network, 5xx): try again after a pause
    kStale,    ///< a kept-alive connection the parent had closed: the request never reached it
    kFatal,    ///< retrying cannot help (4xx, certificate, oversized body)
    kRefused,  ///< the receiver stopped the transfer: its message is returned as it is
    /// The answer is not this request's (its size contradicts the request's): a parent that
    /// answered pipelined requests out of order, or sent more or fewer answers than asked for.
    /// Asked again one at a time; without pipelining, retrying cannot help.
    kMismatch,
  };
  Kind kind = kDone;
  std::string reason;  ///< what went wrong, without the URL (but kRefused's)
};

Outcome done() {
  return {};
}
Outcome retry(std::string reason) {
  return {Outcome::kRetry, std::move(reason)};
}
Outcome stale(std::string reason) {
  return {Outcome::kStale, std::move(reason)};
}
Outcome fatal(std::string reason) {
  return {Outcome::kFatal, std::move(reason)};
}
Outcome refused(std::string message) {
  return {Outcome::kRefused, std::move(message)};
}
Outcome mismatch(std::string reason) {
  return {Outcome::kMismatch, std::move(reason)};
}

/// One GET and where its body goes, kept across attempts so that a retry resumes.
struct Download {
  std::string target;  ///< the request-target, percent-encoded
  std::string url;     ///< for messages
  std::uint64_t max_bytes = 0;
  bool exact_size = false;  ///< max_bytes is the size: an answer of another size is not ours
  const Sink* sink = nullptr;
  const std::function<Status()>* restart = nullptr;  ///< may be null or empty
  std::string if_none_match;
  bool not_modified_ok = false;     ///< a 304 is an answer (conditional GET, long poll)
  milliseconds first_byte_wait{0};  ///< when set: how long the parent may hold the request
  /// Written on a connection with nothing else in flight: the wait for its answer's head is a
  /// sample of the round trip (plus the parent's think time).
  bool alone = false;
  Clock::time_point sent_at;  ///< when its request was written

  std::uint64_t delivered = 0;  ///< bytes the sink has accepted
  bool may_resume = true;       ///< false once the parent mishandled a Range
  /// A part of a large file (Impl::fetch_ranged): `max_bytes` from byte `part_of_at` of a file of
  /// `part_of` bytes, asked for with a closed Range and accepted only as that 206.
  std::uint64_t part_of = 0;
  std::uint64_t part_of_at = 0;
  bool range_refused = false;  ///< a part's answer was not its range (200, another range)
  unsigned status = 0;         ///< of the last response
  std::string etag;
  /// A 503's Retry-After (delay-seconds): the parent asks to be asked again after it.
  std::optional<std::chrono::seconds> retry_after;
};

/// The whole-transfer deadline of a body (TransportOptions::min_bytes_per_second): the bytes
/// received must keep up with the minimum rate once the grace period is over. Time spent in our
/// own rate limiter's pauses does not count against the parent.
class RateFloor {
 public:
  RateFloor(std::uint64_t min_bytes_per_second, milliseconds grace)
      : rate_(min_bytes_per_second), start_(Clock::now()), grace_(grace) {}

  void received(std::size_t bytes) { bytes_ += bytes; }
  void paused(Clock::duration d) { start_ += d; }
  /// When the bytes received so far stop being enough; max() without a minimum rate.
  Clock::time_point deadline() const {
    if (rate_ == 0) return Clock::time_point::max();
    const std::chrono::duration<double> earned(static_cast<double>(bytes_) /
                                               static_cast<double>(rate_));
    return start_ + grace_ + std::chrono::duration_cast<Clock::duration>(earned);
  }
  std::string describe() const {
    const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - start_);
    return "slower than the minimum rate of " + std::to_string(rate_) + " bytes/s (" +
           std::to_string(bytes_) + " bytes in " + ms_text(took) + ")";
  }

 private:
  std::uint64_t rate_;
  Clock::time_point start_;
  milliseconds grace_;
  std::uint64_t bytes_ = 0;
};

/// A pooled connection; closed until first used, and again after any error.
struct Connection {
  std::unique_ptr<beast::tcp_stream> tcp;                     // http://
  std::unique_ptr<beast::ssl_stream<beast::tcp_stream>> tls;  // https://
  beast::flat_buffer buffer;
  std::vector<char> body;
  unsigned served = 0;         ///< responses read whole on this connection
  std::uint64_t received = 0;  ///< bytes of answers read (heads and bodies): the rate estimate

  bool is_open() const { return tcp || tls; }
  /// A close before the next answer's first byte is a kept-alive connection the parent ended
  /// (Outcome::kStale), not a failure: it answered before.
  bool reused() const { return served > 0; }
  beast::tcp_stream& lowest() { return tls ? beast::get_lowest_layer(*tls) : *tcp; }

  void close() {
    // No TLS close_notify: HTTP frames its messages, so the parent loses nothing, and a polite
    // shutdown could wait on a parent that stopped answering.
    if (is_open()) lowest().close();
    tls.reset();
    tcp.reset();
    buffer.clear();
    served = 0;
  }
};

/// A token bucket with no burst, shared by the pool: every chunk read books its share of time at
/// `bytes_per_second`, and its reader pauses until that time has come.
class RateLimiter {
 public:
  explicit RateLimiter(std::uint64_t bytes_per_second) : rate_(bytes_per_second) {}

  /// How much to read at once: small enough for a smooth rate.
  std::size_t chunk() const {
    if (rate_ == 0) return kReadChunk;
    return static_cast<std::size_t>(std::clamp<std::uint64_t>(rate_ / 16, 1024, kReadChunk));
  }

  /// Books `bytes`; returns when the reader may go on.
  Clock::time_point book(std::size_t bytes) {
    const auto now = Clock::now();
    if (rate_ == 0) return now;
    const std::chrono::duration<double> cost(static_cast<double>(bytes) /
                                             static_cast<double>(rate_));
    next_ = std::max(next_, now) + std::chrono::duration_cast<Clock::duration>(cost);
    return next_;
  }

 private:
  std::uint64_t rate_;
  Clock::time_point next_{};
};

/// Envelopes long polls brought, by parent URL, for the next fetch_snapshot of another transport
/// to that parent in this process: the daemon's poller and its cycle hold one transport each, and
/// the cycle a poll woke starts from the envelope the poll brought instead of asking again (one
/// round trip less per hop of propagation, docs/protocol.md, "Pipelining"). Taken once, and only
/// while fresh: an older one is asked for again.
class PolledEnvelopes {
 public:
  static constexpr milliseconds kFresh{5'000};

  void put(const std::string& url, std::string etag, std::string bytes) {
    std::lock_guard lock(mu_);
    by_url_.insert_or_assign(url, Entry{std::move(etag), std::move(bytes), Clock::now()});
  }
  /// The envelope polled from `url` within kFresh, if its ETag is not `known`; forgotten.
  std::optional<std::pair<std::string, std::string>> take(const std::string& url,
                                                          const std::string& known) {
    std::lock_guard lock(mu_);
    auto it = by_url_.find(url);
    if (it == by_url_.end()) return std::nullopt;
    Entry e = std::move(it->second);
    by_url_.erase(it);
    if (e.etag == known || Clock::now() - e.at > kFresh) return std::nullopt;
    return std::make_pair(std::move(e.etag), std::move(e.bytes));
  }

 private:
  struct Entry {
    std::string etag, bytes;
    Clock::time_point at;
  };
  std::mutex mu_;
  std::map<std::string, Entry> by_url_;
};

PolledEnvelopes& polled_envelopes() {
  static PolledEnvelopes envelopes;
  return envelopes;
}

std::string describe_error(const beast::error_code& ec, milliseconds timeout) {
  if (ec == beast::error::timeout) return "timed out (no data for " + ms_text(timeout) + ")";
  if (ec == http::error::partial_message || ec == net::error::eof ||
      ec == ssl::error::stream_truncated)
    return "the connection closed early";
  return ec.message();
}

}  // namespace

// --- URLs -------------------------------------------------------------------------------------

std::string HttpUrl::authority() const {
  std::string out = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  if (port != (tls ? 443 : 80)) out += ":" + std::to_string(port);
  return out;
}

std::string HttpUrl::base() const {
  return (tls ? "https://" : "http://") + authority() + prefix;
}

Result<HttpUrl> parse_http_url(std::string_view url) {
  auto bad = [&](const std::string& why) {
    return make_error("upstream.url \"" + std::string(url) + "\": " + why);
  };
  HttpUrl out;
  std::string_view rest;
  if (url.starts_with("https://")) {
    rest = url.substr(8);
  } else if (url.starts_with("http://")) {
    out.tls = false;
    out.port = 80;
    rest = url.substr(7);
  } else {
    return bad("scheme must be https:// or http://");
  }
  if (rest.find_first_of("?#") != std::string_view::npos)
    return bad("a query or fragment has no place in a parent's URL");
  for (char c : rest)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f)
      return bad("spaces and control characters must be percent-encoded");
  const auto slash = rest.find('/');
  const std::string_view authority = rest.substr(0, slash);
  const std::string_view path = slash == std::string_view::npos ? "/" : rest.substr(slash);
  if (authority.find('@') != std::string_view::npos) return bad("user info is not supported");

  std::string_view host, port;
  bool has_port = false;
  if (authority.starts_with('[')) {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated IPv6 address");
    host = authority.substr(1, close - 1);
    beast::error_code ec;
    net::ip::make_address_v6(std::string(host), ec);
    if (ec) return bad("\"" + std::string(host) + "\" is not an IPv6 address");
    const auto after = authority.substr(close + 1);
    if (!after.empty() && after[0] != ':') return bad("junk after the IPv6 address");
    has_port = !after.empty();
    if (has_port) port = after.substr(1);
  } else {
    const auto colon = authority.find(':');
    host = authority.substr(0, colon);
    has_port = colon != std::string_view::npos;
    if (has_port) port = authority.substr(colon + 1);
    for (char c : host)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_')
        return bad("malformed host name");
  }
  if (host.empty()) return bad("no host");
  if (has_port) {
    unsigned value = 0;
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || ec != std::errc() || p != port.data() + port.size() || value == 0 ||
        value > 65535)
      return bad("malformed port \"" + std::string(port) + "\"");
    out.port = static_cast<std::uint16_t>(value);
  }
  out.host.reserve(host.size());
  for (char c : host)
    out.host.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  out.prefix = std::string(path);
  if (!out.prefix.ends_with('/')) out.prefix.push_back('/');
  return out;
}

std::string encode_path(std::string_view path) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(path.size());
  for (char c : path) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 15]);
    }
  }
  return out;
}

// --- The client -------------------------------------------------------------------------------

struct HttpsTransport::Impl {
  Impl(HttpUrl u, const TransportOptions& o, std::optional<ssl::context> ctx)
      : url(std::move(u)),
        options(o),
        tls(std::move(ctx)),
        pool(std::max(1u, o.connections)),
        limiter(o.max_bytes_per_second),
        stop(o.stop) {}

  ~Impl() {
    for (auto& c : pool) c.close();
  }

  /// A GET of `path` (a tree path, or a path under .tiersync/) streaming into `sink`.
  Download download(std::string_view path, std::uint64_t max_bytes, const Sink& sink) const {
    Download d;
    d.target = url.prefix + encode_path(path);
    d.url = url.base() + std::string(path);
    d.max_bytes = max_bytes;
    d.sink = &sink;
    return d;
  }

  /// Runs everything spawned on `io` to its end, on this thread. A raised stop flag closes every
  /// connection, which cancels what waits on them; pauses look at `stopped` themselves.
  void run() {
    io.restart();
    stopped = false;
    for (bool closed = false; !io.stopped();) {
      io.run_for(kStopCheck);
      if (!closed && stop_requested()) {
        closed = true;
        for (auto& c : pool)
          if (c.is_open()) c.lowest().close();  // not c.close(): a coroutine still uses it
      }
    }
    if (failure) std::rethrow_exception(std::exchange(failure, nullptr));
  }

  /// True once the stop flag was seen raised during this run().
  bool stop_requested() {
    if (!stopped && stop && stop->load()) stopped = true;
    return stopped;
  }

  void spawn(net::awaitable<void> task) {
    net::co_spawn(io, std::move(task), [this](std::exception_ptr e) {
      if (e && !failure) failure = e;
    });
  }

  /// One request on the first pooled connection.
  Status fetch_one(Download& d) {
    Status result;
    spawn(fetch_into(pool.front(), d, result));
    run();
    return result;
  }

  net::awaitable<void> fetch_into(Connection& c, Download& d, Status& result) {
    result = co_await fetch(c, d);
  }

  // --- Large files: in ranges over the pool -------------------------------------------------

  /// A large file in progress (fetch_ranged): parts handed out from `next`, delivered to the
  /// sink in order from `delivered`; those that arrived ahead wait in `ahead`.
  struct RangedFile {
    FileRequest* req = nullptr;
    std::uint64_t part = 0;  ///< bytes per part
    std::uint64_t next = 0;
    std::uint64_t delivered = 0;
    std::map<std::uint64_t, std::string> ahead;  ///< by first byte
    bool ended = false;                          ///< failed, or fell back
    bool fall_back = false;  ///< the parent mishandled a range: the rest in one whole fetch
    Status result;
    std::vector<net::steady_timer*> idle;
  };

  /// Whether `r` goes in ranges over the pool: larger than upstream.range_split_bytes, a pool
  /// of several connections, no rate limit (the pool shares it: parts in parallel would only
  /// arrive together at the end, held in memory, and a stop would lose them), and a parent that
  /// has not mishandled a range.
  bool split(const FileRequest& r) const {
    return options.range_split_bytes > 0 && pool.size() > 1 && !ranges_refused &&
           options.max_bytes_per_second == 0 && r.max_bytes > r.offset &&
           r.max_bytes - r.offset > options.range_split_bytes;
  }

  /// Fetches `r` in parts of range_split_bytes / 2 over the pool, each part a closed Range on a
  /// connection of its own (docs/protocol.md, "Large files"), delivered to the sink in order: the
  /// sink verifies the whole file as for any other. At most one part per connection waits in
  /// memory. A parent that answers a part with anything but that range (a 200, another range, a
  /// short one) gets the rest asked for in one whole fetch, and no more ranges.
  Status fetch_ranged(FileRequest& r) {
    RangedFile f;
    f.req = &r;
    f.part = std::max<std::uint64_t>(1, options.range_split_bytes / 2);
    f.next = f.delivered = r.offset;
    for (auto& c : pool) spawn(range_worker(c, f));
    run();
    if (!f.fall_back) return f.result;
    ranges_refused = true;
    Download d = download(r.path, r.max_bytes, r.sink);
    d.exact_size = true;
    d.restart = &r.restart;
    d.delivered = f.delivered;  // resumed with a Range (or the repeated bytes are dropped)
    return fetch_one(d);
  }

  void end_ranged(RangedFile& f, Status st, bool fall_back = false) {
    if (!f.ended) {
      f.ended = true;
      f.fall_back = fall_back;
      f.result = std::move(st);
    }
    for (auto* t : f.idle) t->cancel();
  }

  /// One connection's share of a large file: a part at a time, while fewer than one part per
  /// connection wait to be delivered.
  net::awaitable<void> range_worker(Connection& c, RangedFile& f) {
    const std::uint64_t size = f.req->max_bytes;
    while (!f.ended && f.next < size) {
      if (f.ahead.size() >= pool.size()) {
        net::steady_timer timer(io);
        timer.expires_after(kStopCheck);
        f.idle.push_back(&timer);
        co_await timer.async_wait(kAsTuple);
        std::erase(f.idle, &timer);
        if (stop_requested()) end_ranged(f, make_error(url.base() + f.req->path + ": stopped"));
        continue;
      }
      const std::uint64_t at = f.next;
      f.next = std::min(size, at + f.part);
      std::string bytes;
      const Sink collect = [&bytes](const char* data, std::size_t n) {
        bytes.append(data, n);
        return Status{};
      };
      Download d = download(f.req->path, f.next - at, collect);
      d.exact_size = true;
      d.part_of = size;
      d.part_of_at = at;
      Status st = co_await fetch(c, d);
      if (f.ended) co_return;
      if (!st) co_return end_ranged(f, std::move(st), d.range_refused);
      f.ahead.emplace(at, std::move(bytes));
      // Delivered in order: the sink hashes the file as it comes.
      for (auto it = f.ahead.find(f.delivered); it != f.ahead.end();
           it = f.ahead.find(f.delivered)) {
        Status sunk;
        try {
          sunk = f.req->sink(it->second.data(), it->second.size());
        } catch (const std::exception& e) {
          sunk = make_error(url.base() + f.req->path + ": the receiver failed: " + e.what());
        }
        if (!sunk) co_return end_ranged(f, std::move(sunk));
        f.delivered += it->second.size();
        f.ahead.erase(it);
      }
      for (auto* t : f.idle) t->cancel();
    }
  }

  // --- Batches: pipelined over the pool ------------------------------------------------------

  /// One request of a batch (fetch_files, fetch_manifests) and what its retries need.
  struct Job {
    Download d;
    Status* result = nullptr;
    bool finished = false;
    unsigned attempts = 0;     ///< failed attempts (kRetry) so far: the retry budget
    bool in_pipeline = false;  ///< its last attempt shared its connection with other requests
    bool optional = false;     ///< its failure is not the batch's (the status beside manifests)
  };

  /// A batch in progress: jobs not yet sent (those to ask again first), and how many are not
  /// finished. Workers with nothing to send wait for a job to come back (`idle`).
  struct Batch {
    std::vector<Job> jobs;
    std::deque<Job*> ready;
    std::size_t unfinished = 0;
    Status first;
    std::vector<net::steady_timer*> idle;
  };

  /// Whether a connection with `sent` in flight takes one more request (docs/protocol.md,
  /// "Pipelining"): an idle one always; otherwise up to upstream.pipeline_depth requests, and
  /// beyond, up to kMaxPipelineDepth, while the bytes in flight stay below twice the measured
  /// bandwidth-delay product (one connection's peak rate x the round trip). A pipeline held back
  /// by its depth so doubles its rate each round trip, as TCP's slow start does, until the link
  /// is the limit. A depth of 1 (configured, or once the parent answered a pipeline wrongly):
  /// one request at a time.
  bool has_room(const std::deque<Job*>& sent) const {
    if (sent.empty()) return true;
    const std::size_t configured =
        std::min<std::size_t>(std::max(1u, options.pipeline_depth), kMaxPipelineDepth);
    if (pipelining_off || configured == 1) return false;
    if (sent.size() < configured) return true;
    if (sent.size() >= kMaxPipelineDepth || !round_trip || peak_rate <= 0) return false;
    std::uint64_t in_flight = 0;
    for (const Job* j : sent)
      in_flight +=
          kAnswerOverhead + (j->d.exact_size ? j->d.max_bytes - j->d.delivered : kUnknownBodyBytes);
    const double window = 2 * peak_rate * std::chrono::duration<double>(*round_trip).count();
    return static_cast<double>(in_flight) < window;
  }

  /// A round trip measured: the smallest sample is the link's (the others include the parent's
  /// think time or a queue).
  void note_round_trip(milliseconds sample) {
    sample = std::max(sample, milliseconds(1));
    round_trip = round_trip ? std::min(*round_trip, sample) : sample;
  }

  /// Answers read on one connection since `start`: a sample of its rate once it spans a round
  /// trip. A window opens at an answer's end, so the first round trip of a pipeline, when
  /// nothing arrives yet, does not dilute it.
  struct RateWindow {
    bool open = false;
    Clock::time_point start;
    std::uint64_t from = 0;  ///< Connection::received at `start`
  };

  /// An answer was read whole on `c`: the peak per-connection rate follows (has_room).
  void note_answer(const Connection& c, RateWindow& w) {
    constexpr milliseconds kMinWindow{5};
    const auto now = Clock::now();
    if (w.open && round_trip && now - w.start >= std::max(*round_trip, kMinWindow)) {
      const double seconds = std::chrono::duration<double>(now - w.start).count();
      peak_rate = std::max(peak_rate, static_cast<double>(c.received - w.from) / seconds);
    } else if (w.open) {
      return;
    }
    w = {true, now, c.received};
  }

  /// Runs `b` to its end: one pipelining worker per pooled connection (no more than the jobs).
  Status run_batch(Batch& b) {
    b.unfinished = b.jobs.size();
    deepest = 0;
    for (auto& j : b.jobs) b.ready.push_back(&j);
    const std::size_t workers = std::min(pool.size(), b.jobs.size());
    for (std::size_t i = 0; i < workers; ++i) spawn(pipeline(pool[i], b));
    run();
    return b.first;
  }

  void wake(Batch& b) {
    for (auto* t : b.idle) t->cancel();
  }

  void finish(Batch& b, Job& j, Status st) {
    assert(!j.finished);
    j.finished = true;
    *j.result = std::move(st);
    --b.unfinished;
    if (!*j.result && b.first && !j.optional) {
      b.first = *j.result;
      // After the first failure no further request starts.
      for (Job* k : std::exchange(b.ready, {}))
        finish(b, *k, make_error(k->d.url + ": not fetched after an earlier failure"));
    }
    wake(b);
  }

  /// `j` goes out again, on whichever connection has room first.
  void ask_again(Batch& b, Job& j) {
    if (!b.first) {
      finish(b, j, make_error(j.d.url + ": not fetched after an earlier failure"));
      return;
    }
    b.ready.push_front(&j);
    wake(b);
  }

  net::awaitable<void> ask_again_after(Batch& b, Job& j, milliseconds pause) {
    co_await pause_until(Clock::now() + pause);
    if (stop_requested())
      finish(b, j, make_error(j.d.url + ": stopped"));
    else
      ask_again(b, j);
  }

  /// What becomes of `j` after an attempt that ended with `o` (as fetch() does for one request;
  /// kStale never comes here: see pipeline()).
  void failed(Batch& b, Job& j, const Outcome& o) {
    if (stop_requested()) return finish(b, j, make_error(j.d.url + ": stopped"));
    switch (o.kind) {
      case Outcome::kDone:
        return finish(b, j, {});
      case Outcome::kRefused:
        return finish(b, j, make_error(o.reason));
      case Outcome::kFatal:
        return finish(b, j, make_error(j.d.url + ": " + o.reason));
      case Outcome::kMismatch:
        ++faults;
        if (j.in_pipeline) {
          // The parent cannot be trusted to keep a pipeline in order: one request at a time from
          // now on (every byte is verified either way; this keeps the sync going).
          pipelining_off = true;
          return ask_again(b, j);
        }
        return finish(b, j, make_error(j.d.url + ": " + o.reason));
      case Outcome::kStale:
      case Outcome::kRetry:
        break;
    }
    if (++j.attempts >= std::max(1u, options.max_attempts)) {
      std::string msg = j.d.url + ": " + o.reason;
      if (j.attempts > 1) msg += " (" + std::to_string(j.attempts) + " attempts)";
      return finish(b, j, make_error(std::move(msg)));
    }
    spawn(ask_again_after(b, j, backoff(j.attempts)));
  }

  /// The connection ended with `sent` unanswered (a parent may close a kept-alive connection
  /// after any response): they were never answered, so they go out again elsewhere, at no cost
  /// to their retry budget. Each connection answers or charges its oldest request, so this ends.
  void unanswered(Batch& b, std::deque<Job*>& sent) {
    while (!sent.empty()) {
      Job* j = sent.back();
      sent.pop_back();
      if (stop_requested())
        finish(b, *j, make_error(j->d.url + ": stopped"));
      else
        ask_again(b, *j);
    }
  }

  /// Bytes on an idle connection, where no request is waiting for them: the parent sent more
  /// answers than it was asked for. The connection cannot be trusted to stay in step.
  void drop_unsolicited(Connection& c) {
    if (!c.is_open() || c.buffer.size() == 0) return;
    ++faults;
    c.close();
  }

  /// One pooled connection's share of a batch: as many requests as has_room() allows, written back
  /// to back, their answers read in order, a new request sent as each answer completes.
  net::awaitable<void> pipeline(Connection& c, Batch& b) {
    std::deque<Job*> sent;  // written, not yet answered: oldest first
    RateWindow window;
    while (b.unfinished > 0) {
      if (stop_requested()) {
        c.close();
        unanswered(b, sent);
        for (Job* k : std::exchange(b.ready, {})) finish(b, *k, make_error(k->d.url + ": stopped"));
        if (b.unfinished > 0) co_await wait_for_work(b);  // others finish theirs
        continue;
      }
      while (!b.ready.empty() && has_room(sent)) {
        Job* j = b.ready.front();
        b.ready.pop_front();
        if (sent.empty()) {
          drop_unsolicited(c);
          if (!c.is_open()) {
            const Outcome o = co_await connect(c);
            if (o.kind != Outcome::kDone) {
              // This connection waits like its request does, rather than try the next at once.
              const unsigned charged = j->attempts + 1;
              failed(b, *j, o);
              if (b.first) co_await pause_until(Clock::now() + backoff(charged));
              break;
            }
          }
        }
        // Not `c.tls ? co_await ... : co_await ...`: GCC 12 miscompiles co_await in a conditional
        // expression (the temporaries are destroyed twice).
        j->d.status = 0;
        j->d.alone = sent.empty();
        Outcome o;
        if (c.tls)
          o = co_await send_request(*c.tls, c, j->d);
        else
          o = co_await send_request(*c.tcp, c, j->d);
        j->in_pipeline = !sent.empty();
        if (!sent.empty()) sent.front()->in_pipeline = true;  // (the others already are)
        sent.push_back(j);
        deepest = std::max(deepest, sent.size());
        if (o.kind != Outcome::kDone) {
          lost(b, sent, o);
          break;
        }
      }
      if (sent.empty()) {
        if (b.unfinished > 0 && b.ready.empty()) co_await wait_for_work(b);
        continue;
      }
      Job* j = sent.front();
      j->d.status = 0;
      j->d.etag.clear();
      const bool reused = c.reused();
      Outcome o;
      if (c.tls)
        o = co_await read_response(*c.tls, c, j->d, reused);
      else
        o = co_await read_response(*c.tcp, c, j->d, reused);
      if (o.kind != Outcome::kDone) {
        lost(b, sent, o);
        continue;
      }
      sent.pop_front();
      note_answer(c, window);
      finish(b, *j, {});
      // Answered, then closed (Connection: close; nginx before 1.19.10 does so after 100
      // requests): the rest go out again on a new connection, pipelined as before.
      if (!c.is_open()) unanswered(b, sent);
      if (sent.empty()) drop_unsolicited(c);
    }
  }

  /// The connection failed with `sent` unanswered. kStale (closed without a word after answering
  /// others: servers close kept-alive connections at will) leaves them all to be asked again;
  /// otherwise the oldest takes the failure. The connection answered or charged one, so the
  /// batch moves on.
  void lost(Batch& b, std::deque<Job*>& sent, const Outcome& o) {
    assert(!sent.empty());
    if (o.kind == Outcome::kStale) return unanswered(b, sent);
    Job* front = sent.front();
    if (o.kind == Outcome::kRetry && front->in_pipeline && front->d.status == 0 &&
        !pipelining_off) {
      // Nothing of the oldest answer came. A server that closes a connection with requests
      // unread (without a lingering close) resets it, which can destroy what it sent: pipelining
      // made this happen, so one request at a time from now on, and nobody is charged for it.
      pipelining_off = true;
      return unanswered(b, sent);
    }
    sent.pop_front();
    unanswered(b, sent);
    failed(b, *front, o);
  }

  /// Waits until a job comes back to be asked again, or a job finishes (or kStopCheck passes).
  net::awaitable<void> wait_for_work(Batch& b) {
    net::steady_timer timer(io);
    timer.expires_after(kStopCheck);
    b.idle.push_back(&timer);
    co_await timer.async_wait(kAsTuple);
    std::erase(b.idle, &timer);
  }

  /// A request with its retries: transient failures are tried again, up to
  /// `options.max_attempts` times, after exponentially growing pauses with jitter.
  net::awaitable<Status> fetch(Connection& c, Download& d) {
    bool stale_retried = false;
    for (unsigned attempt = 1;;) {
      if (stop_requested()) {
        c.close();
        co_return make_error(d.url + ": stopped");
      }
      d.status = 0;
      d.etag.clear();
      d.retry_after.reset();
      const Outcome o = co_await attempt_once(c, d);
      if (stop_requested()) {
        c.close();
        co_return make_error(d.url + ": stopped");
      }
      switch (o.kind) {
        case Outcome::kDone:
          co_return Status{};
        case Outcome::kRefused:
          co_return make_error(o.reason);
        case Outcome::kFatal:
          co_return make_error(d.url + ": " + o.reason);
        case Outcome::kMismatch:
          ++faults;
          c.close();
          co_return make_error(d.url + ": " + o.reason);
        case Outcome::kStale:
          // Servers close idle keep-alive connections at will; once, that is not a failure.
          if (!stale_retried) {
            stale_retried = true;
            continue;
          }
          break;
        case Outcome::kRetry:
          break;
      }
      if (attempt >= std::max(1u, options.max_attempts)) {
        std::string msg = d.url + ": " + o.reason;
        if (attempt > 1) msg += " (" + std::to_string(attempt) + " attempts)";
        co_return make_error(std::move(msg));
      }
      co_await pause_until(Clock::now() + backoff(attempt));
      ++attempt;
    }
  }

  /// The pause after failed attempt `attempt` (1-based): base * 2^(attempt-1), between half of
  /// that and all of it, so that a pool of clients does not come back in step.
  milliseconds backoff(unsigned attempt) {
    const auto base = options.retry_base_delay.count();
    const auto full =
        std::min<std::int64_t>(kMaxBackoff.count(), base << std::min(attempt - 1, 16u));
    std::uniform_int_distribution<std::int64_t> pick(full / 2, std::max<std::int64_t>(full, 0));
    return milliseconds(pick(rng));
  }

  /// Waits until `when`, in slices, so that a raised stop flag ends the wait.
  net::awaitable<void> pause_until(Clock::time_point when) {
    net::steady_timer timer(io);
    for (auto now = Clock::now(); now < when && !stop_requested(); now = Clock::now()) {
      timer.expires_at(std::min(when, now + kStopCheck));
      co_await timer.async_wait(kAsTuple);
    }
  }

  net::awaitable<Outcome> attempt_once(Connection& c, Download& d) {
    drop_unsolicited(c);
    if (!c.is_open()) {
      Outcome o = co_await connect(c);
      if (o.kind != Outcome::kDone) co_return o;
    }
    if (c.tls) co_return co_await exchange(*c.tls, c, d);
    co_return co_await exchange(*c.tcp, c, d);
  }

  net::awaitable<Outcome> connect(Connection& c) {
    c.close();
    // No timeout here: Asio cannot interrupt getaddrinfo, which the system bounds itself
    // (resolv.conf's timeout and attempts); an address literal resolves at once.
    tcp::resolver resolver(io);
    auto [rec, endpoints] =
        co_await resolver.async_resolve(url.host, std::to_string(url.port), kAsTuple);
    if (rec) co_return retry("cannot resolve " + url.host + ": " + rec.message());

    if (tls) {
      c.tls = std::make_unique<beast::ssl_stream<beast::tcp_stream>>(io, *tls);
      SSL* ssl = c.tls->native_handle();
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
      X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      bool named = false;
      if (is_ip_address(url.host)) {
        // An address is checked against the certificate's IP entries; SNI carries names only.
        named = X509_VERIFY_PARAM_set1_ip_asc(param, url.host.c_str()) == 1;
      } else {
        named = X509_VERIFY_PARAM_set1_host(param, url.host.c_str(), url.host.size()) == 1 &&
                SSL_set_tlsext_host_name(ssl, url.host.c_str()) == 1;
      }
      if (!named) {
        c.close();
        co_return fatal("cannot set the expected host name \"" + url.host + "\"");
      }
    } else {
      c.tcp = std::make_unique<beast::tcp_stream>(io);
    }

    beast::tcp_stream& s = c.lowest();
    s.expires_after(options.connect_timeout);
    auto [cec, endpoint] = co_await s.async_connect(endpoints, kAsTuple);
    if (cec) {
      c.close();
      co_return retry("cannot connect to " + url.authority() + ": " +
                      describe_error(cec, options.connect_timeout));
    }
    beast::error_code ignored;
    s.socket().set_option(tcp::no_delay(true), ignored);

    if (c.tls) {
      s.expires_after(options.connect_timeout);
      auto [hec] = co_await c.tls->async_handshake(ssl::stream_base::client, kAsTuple);
      if (hec) {
        const long verify = SSL_get_verify_result(c.tls->native_handle());
        c.close();
        if (verify != X509_V_OK)
          co_return fatal(std::string("certificate verify failed (") +
                          X509_verify_cert_error_string(verify) + ")");
        co_return retry("TLS handshake failed: " + describe_error(hec, options.connect_timeout));
      }
    }
    co_return done();
  }

  /// One request and its response on an open connection.
  template <class Stream>
  net::awaitable<Outcome> exchange(Stream& stream, Connection& c, Download& d) {
    const bool reused = c.reused();
    d.alone = true;
    Outcome sent = co_await send_request(stream, c, d);
    if (sent.kind != Outcome::kDone) co_return sent;
    co_return co_await read_response(stream, c, d, reused);
  }

  /// Writes the GET of `d` (with a Range from what the sink already has). On an error the
  /// connection is closed.
  template <class Stream>
  net::awaitable<Outcome> send_request(Stream& stream, Connection& c, Download& d) {
    const bool reused = c.reused();
    http::request<http::empty_body> req{http::verb::get, d.target, 11};
    req.set(http::field::host, url.authority());
    req.set(http::field::user_agent, kUserAgent);
    if (d.part_of > 0)
      req.set(http::field::range, "bytes=" + std::to_string(d.part_of_at + d.delivered) + "-" +
                                      std::to_string(d.part_of_at + d.max_bytes - 1));
    else if (d.delivered > 0 && d.may_resume)
      req.set(http::field::range, "bytes=" + std::to_string(d.delivered) + "-");
    if (!d.if_none_match.empty()) req.set(http::field::if_none_match, d.if_none_match);

    c.lowest().expires_after(options.read_timeout);
    d.sent_at = Clock::now();
    auto [wec, written] = co_await http::async_write(stream, req, kAsTuple);
    if (wec) {
      c.close();
      const std::string why = describe_error(wec, options.read_timeout);
      co_return reused ? stale(why) : retry(why);
    }
    co_return done();
  }

  /// Reads the response to `d`, the oldest request unanswered on the connection (`reused`: it
  /// was sent after the connection had answered another). The body goes to the sink; bytes the
  /// sink already has (a parent that ignored our Range) are read and dropped. Every outcome but
  /// kDone closes the connection; so does a kDone whose response did not keep it alive.
  template <class Stream>
  net::awaitable<Outcome> read_response(Stream& stream, Connection& c, Download& d, bool reused) {
    const bool ranged = d.delivered > 0 && d.may_resume;
    http::response_parser<http::buffer_body> parser;
    parser.body_limit(boost::none);  // checked below, once the status says whose body it is
    const milliseconds header_wait =
        d.first_byte_wait.count() > 0 ? d.first_byte_wait : options.read_timeout;
    c.lowest().expires_after(header_wait);
    auto [hec, header_bytes] = co_await http::async_read_header(stream, c.buffer, parser, kAsTuple);
    if (hec) {
      const bool silent = !parser.got_some() && hec != beast::error::timeout;
      c.close();
      const std::string why = describe_error(hec, header_wait);
      co_return reused&& silent ? stale(why) : retry(why);
    }

    c.received += header_bytes;
    if (d.alone && d.first_byte_wait.count() == 0)
      note_round_trip(std::chrono::duration_cast<milliseconds>(Clock::now() - d.sent_at));
    auto& res = parser.get();
    d.status = res.result_int();
    std::uint64_t offset = 0;  // where in the file the body starts
    if (d.status == 304 && d.not_modified_ok) {
      ++c.served;
      if (!parser.keep_alive()) c.close();
      co_return done();
    }
    if (d.status >= 500 || d.status == 429 || d.status == 408) {
      c.close();
      if (d.status == 503) d.retry_after = retry_after_seconds(str(res[http::field::retry_after]));
      co_return retry("HTTP " + std::to_string(d.status));
    }
    if (d.part_of > 0) {
      // A part of a large file: exactly the range asked for, or the parent cannot do ranges
      // (fetch_ranged then falls back to one whole fetch).
      const std::string range = str(res[http::field::content_range]);
      const std::uint64_t first = d.part_of_at + d.delivered;
      const std::uint64_t last = d.part_of_at + d.max_bytes - 1;
      if (d.status != 200 && d.status != 206 && d.status != 416) {
        c.close();
        co_return fatal("HTTP " + std::to_string(d.status));
      }
      if (d.status != 206 || content_range_start(range) != first ||
          content_range_end(range) != last || content_range_total(range) != d.part_of) {
        c.close();
        d.range_refused = true;
        co_return fatal("answered HTTP " + std::to_string(d.status) + " with Content-Range \"" +
                        proto::printable(range) + "\" to a request for bytes " +
                        std::to_string(first) + "-" + std::to_string(last));
      }
      offset = d.delivered;
    } else if (d.status == 206 && ranged) {
      const std::string range = str(res[http::field::content_range]);
      if (const auto total = content_range_total(range);
          d.exact_size && total && *total != d.max_bytes) {
        c.close();
        co_return mismatch("answered with Content-Range \"" + proto::printable(range) +
                           "\", for a file of " + std::to_string(d.max_bytes) + " bytes");
      }
      const auto start = content_range_start(range);
      if (start != d.delivered) {
        c.close();
        d.may_resume = false;
        co_return retry("the parent answered a resume at byte " + std::to_string(d.delivered) +
                        " with Content-Range \"" + proto::printable(range) + "\"");
      }
      offset = d.delivered;
    } else if (d.status == 416 && ranged) {
      c.close();
      d.may_resume = false;
      co_return retry("HTTP 416 for a resume at byte " + std::to_string(d.delivered));
    } else if (d.status != 200) {
      c.close();
      co_return fatal("HTTP " + std::to_string(d.status));
    } else if (d.delivered > 0 && d.restart && *d.restart) {
      // The whole file again: the receiver starts over (its hash too).
      Status st;
      try {
        st = (*d.restart)();
      } catch (const std::exception& e) {
        st = make_error(d.url + ": restarting the receiver failed: " + e.what());
      }
      if (!st) {
        c.close();
        co_return refused(st.message());
      }
      d.delivered = 0;
    }

    // The body limit: an announced length is checked at once; chunked and close-delimited
    // bodies are counted below (Beast's body_limit over-counts a close-delimited body read
    // through a buffer_body). A read asks for at most one byte more than may come, so that an
    // oversized body shows without taking more of it.
    if (const auto length = parser.content_length();
        d.exact_size && length && offset + *length != d.max_bytes) {
      c.close();
      co_return mismatch("answered with " + std::to_string(offset + *length) +
                         " bytes, for a file of " + std::to_string(d.max_bytes));
    }
    if (const auto length = parser.content_length(); length && offset + *length > d.max_bytes) {
      c.close();
      co_return fatal("the body of " + std::to_string(offset + *length) +
                      " bytes is larger than the expected " + std::to_string(d.max_bytes));
    }
    if (c.body.size() < kReadChunk) c.body.resize(kReadChunk);
    // Beast reads max(512, free capacity) at a time into the connection's buffer: with only the
    // headers' capacity, a body would come in ~500-byte reads (a million for 500 MB).
    if (c.buffer.capacity() < kReadChunk) c.buffer.reserve(kReadChunk);
    std::uint64_t position = offset;  // the file offset of the next byte read
    RateFloor floor(options.min_bytes_per_second, options.min_rate_grace);
    while (!parser.is_done()) {
      const std::size_t want = static_cast<std::size_t>(
          std::min<std::uint64_t>(limiter.chunk(), d.max_bytes - position + 1));
      res.body().data = c.body.data();
      res.body().size = want;
      // Silence is bounded by the read timeout, the whole body by the minimum rate.
      const auto now = Clock::now();
      const auto floor_deadline = floor.deadline();
      const bool floor_bound = floor_deadline < now + options.read_timeout;
      if (floor_deadline <= now) {
        c.close();
        co_return retry(floor.describe() + " after " + std::to_string(position) + " bytes");
      }
      if (floor_bound)
        c.lowest().expires_at(floor_deadline);
      else
        c.lowest().expires_after(options.read_timeout);
      auto [ec, consumed] = co_await http::async_read_some(stream, c.buffer, parser, kAsTuple);
      if (ec == http::error::need_buffer) ec = {};
      const std::size_t got = want - res.body().size;
      floor.received(got);
      c.received += got;
      if (ec == beast::error::timeout && floor_bound) {
        c.close();
        co_return retry(floor.describe() + " after " + std::to_string(position + got) + " bytes");
      }
      if (got > 0) {
        // Bytes before `delivered` are a repeat (a parent that ignored our Range) and dropped:
        // the receiver verifies the whole file, so skipping them is as safe as a resume.
        const std::size_t skip =
            position < d.delivered
                ? static_cast<std::size_t>(std::min<std::uint64_t>(got, d.delivered - position))
                : 0;
        position += got;
        if (position > d.max_bytes) {
          c.close();
          co_return fatal("the body is larger than the expected " + std::to_string(d.max_bytes) +
                          " bytes");
        }
        if (got > skip) {
          Status st;
          try {
            st = (*d.sink)(c.body.data() + skip, got - skip);
          } catch (const std::exception& e) {
            st = make_error(d.url + ": the receiver failed: " + e.what());
          }
          if (!st) {
            c.close();
            co_return refused(st.message());
          }
          d.delivered += got - skip;
        }
        const auto before_pause = Clock::now();
        co_await pause_until(limiter.book(got));
        floor.paused(Clock::now() - before_pause);
      }
      if (!ec) continue;
      if (ec == ssl::error::stream_truncated && parser.need_eof()) {
        // A body that ends when the connection does, closed without TLS close_notify (common):
        // a cut here could truncate it, but every byte is verified against the signed snapshot,
        // so a short body is caught there. Take the close as the end.
        beast::error_code eof;
        parser.put_eof(eof);
        if (!eof) break;
      }
      c.close();
      co_return retry(describe_error(ec, options.read_timeout) + " after " +
                      std::to_string(position) + " bytes");
    }

    if (d.exact_size && position != d.max_bytes) {
      c.close();
      co_return mismatch("answered with " + std::to_string(position) + " bytes, for a file of " +
                         std::to_string(d.max_bytes));
    }
    d.etag = str(res[http::field::etag]);
    ++c.served;
    if (!parser.keep_alive()) c.close();
    co_return done();
  }

  // Destroyed in reverse: the connections go before the io_context their sockets live in.
  HttpUrl url;
  TransportOptions options;
  net::io_context io{1};
  std::optional<ssl::context> tls;  ///< for https:// only
  std::vector<Connection> pool;
  RateLimiter limiter;
  std::mt19937_64 rng{std::random_device{}()};
  std::exception_ptr failure;
  const std::atomic<bool>* stop;  ///< TransportOptions::stop, or set_stop_flag's
  bool stopped = false;           ///< the stop flag was seen raised during this run()
  std::string snapshot_etag;      ///< of `snapshot_bytes`, for If-None-Match
  std::string snapshot_bytes;     ///< the last snapshot fetched
  std::uint64_t faults = 0;       ///< HttpsTransport::faults
  bool pipelining_off = false;    ///< the parent answered a pipeline wrongly: one at a time
  bool ranges_refused = false;    ///< the parent mishandled a part's range: no more (split())
  std::optional<milliseconds> round_trip;  ///< the smallest measured (note_round_trip)
  double peak_rate = 0;                    ///< bytes/s, one connection's best (note_answer)
  std::size_t deepest = 0;  ///< most requests in flight on one connection in the last batch
  /// The status asked for beside the last batch of manifests, for the next fetch_status().
  std::optional<Result<std::string>> status_fetched;
  /// Documents to ask for beside the next batch of manifests (fetch_document_beside_manifests),
  /// and those fetched so, for the next fetch_document of each.
  std::map<std::string, std::size_t> documents_wanted;
  std::map<std::string, Result<std::optional<std::string>>> documents_fetched;
};

// --- The public face --------------------------------------------------------------------------

Result<std::unique_ptr<HttpsTransport>> HttpsTransport::create(const std::string& url,
                                                               const TransportOptions& options) {
  auto parsed = parse_http_url(url);
  if (!parsed) return parsed.error();
  std::optional<ssl::context> ctx;
  if (parsed->tls) {
    auto native = base::make_client_tls(options.ca_file);
    if (!native) return native.error();
    ctx.emplace(native->release());  // which takes ownership
  }
  auto impl = std::make_unique<Impl>(std::move(*parsed), options, std::move(ctx));
  return std::unique_ptr<HttpsTransport>(new HttpsTransport(std::move(impl)));
}

namespace {

// A response body collected in memory (a snapshot, a manifest), forgotten when the parent sends
// the transfer again from its first byte.
struct BodyCollector {
  std::string bytes;
  const Sink sink = [this](const char* data, std::size_t size) {
    bytes.append(data, size);
    return Status{};
  };
  const std::function<Status()> restart = [this] {
    bytes.clear();
    return Status{};
  };

  BodyCollector() = default;
  BodyCollector(const BodyCollector&) = delete;  // the callbacks point at this object
  BodyCollector& operator=(const BodyCollector&) = delete;
};

}  // namespace

HttpsTransport::HttpsTransport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpsTransport::~HttpsTransport() = default;

std::string HttpsTransport::describe() const {
  return impl_->url.base();
}

Result<std::string> HttpsTransport::fetch_snapshot() {
  // A new cycle: the status and documents are read afresh.
  impl_->status_fetched.reset();
  impl_->documents_wanted.clear();
  impl_->documents_fetched.clear();
  BodyCollector body;
  Download d = impl_->download(kSnapshotPath, proto::kMaxEnvelopeBytes, body.sink);
  d.restart = &body.restart;
  if (!impl_->snapshot_etag.empty()) {
    d.if_none_match = impl_->snapshot_etag;
    d.not_modified_ok = true;
  }
  if (auto polled = polled_envelopes().take(impl_->url.base(), impl_->snapshot_etag)) {
    impl_->snapshot_etag = std::move(polled->first);
    impl_->snapshot_bytes = polled->second;
    return std::move(polled->second);
  }
  // One connection: a no-op (most cycles of a cron mirror) costs the parent one handshake, not
  // one per pooled connection; the batch after a changed snapshot opens the others.
  if (auto st = impl_->fetch_one(d); !st) return st.error();
  if (d.status == 304) return impl_->snapshot_bytes;
  impl_->snapshot_etag = d.etag;
  impl_->snapshot_bytes = d.etag.empty() ? std::string() : body.bytes;
  return std::move(body.bytes);
}

PollResult HttpsTransport::poll_snapshot(std::uint64_t after_serial, std::chrono::seconds wait) {
  wait = std::clamp(wait, std::chrono::seconds(0), kMaxPollWait);
  BodyCollector body;
  Download d = impl_->download(kSnapshotPath, proto::kMaxEnvelopeBytes, body.sink);
  d.restart = &body.restart;
  d.target += "?after=" + std::to_string(after_serial) + "&wait=" + std::to_string(wait.count());
  d.url += "?after=" + std::to_string(after_serial) + "&wait=" + std::to_string(wait.count());
  d.not_modified_ok = true;
  d.first_byte_wait = wait + impl_->options.read_timeout;
  if (auto st = impl_->fetch_one(d); !st) {
    PollResult failed = st.error();
    // A parent stopping, or over its caps, asks to be asked again later (docs/protocol.md).
    if (d.status == 503) failed.retry_after = d.retry_after;
    return failed;
  }
  if (d.status == 304) return std::optional<std::string>();
  if (!d.etag.empty()) {
    impl_->snapshot_etag = d.etag;
    impl_->snapshot_bytes = body.bytes;
    polled_envelopes().put(impl_->url.base(), d.etag, body.bytes);
  }
  return std::optional<std::string>(std::move(body.bytes));
}

Status HttpsTransport::fetch_manifest(const proto::Digest& digest, const Sink& sink,
                                      const std::function<Status()>& restart) {
  Download d = impl_->download(std::string(kManifestsPath) + proto::to_hex(digest),
                               proto::kMaxManifestBytes, sink);
  d.restart = &restart;
  return impl_->fetch_one(d);
}

void HttpsTransport::set_stop_flag(const std::atomic<bool>* stop) {
  impl_->stop = stop;
}

Result<std::string> HttpsTransport::fetch_status() {
  if (auto fetched = std::exchange(impl_->status_fetched, std::nullopt)) return *fetched;
  BodyCollector body;
  Download d = impl_->download(kStatusPath, kMaxStatusBytes, body.sink);
  d.restart = &body.restart;
  if (auto st = impl_->fetch_one(d); !st) return st.error();
  return std::move(body.bytes);
}

void HttpsTransport::fetch_document_beside_manifests(std::string_view path, std::size_t max_bytes) {
  impl_->documents_wanted[std::string(path)] = max_bytes;
}

Result<std::optional<std::string>> HttpsTransport::fetch_document(std::string_view path,
                                                                  std::size_t max_bytes) {
  if (auto it = impl_->documents_fetched.find(std::string(path));
      it != impl_->documents_fetched.end()) {
    auto fetched = std::move(it->second);
    impl_->documents_fetched.erase(it);
    return fetched;
  }
  impl_->documents_wanted.erase(std::string(path));  // no batch came: asked for now
  BodyCollector body;
  Download d = impl_->download(path, max_bytes, body.sink);
  d.restart = &body.restart;
  if (auto st = impl_->fetch_one(d); !st) {
    if (d.status == 404) return std::optional<std::string>();
    return st.error();
  }
  return std::optional<std::string>(std::move(body.bytes));
}

Status HttpsTransport::fetch_file(std::string_view path, std::uint64_t max_bytes,
                                  const Sink& sink) {
  Download d = impl_->download(path, max_bytes, sink);
  return impl_->fetch_one(d);
}

Status HttpsTransport::fetch_files(std::span<FileRequest> requests) {
  Impl::Batch b;
  b.jobs.reserve(requests.size());  // never reallocated: `ready` points into it
  std::vector<FileRequest*> large;  // in ranges over the pool, after the batch
  for (auto& r : requests) {
    if (impl_->split(r)) {
      large.push_back(&r);
      continue;
    }
    Impl::Job& j = b.jobs.emplace_back();
    j.d = impl_->download(r.path, r.max_bytes, r.sink);
    j.d.exact_size = true;
    j.d.restart = &r.restart;
    j.d.delivered = r.offset;  // resumed with a Range (or the repeated bytes are dropped)
    j.result = &r.result;
  }
  Status first = b.jobs.empty() ? Status() : impl_->run_batch(b);
  for (FileRequest* r : large) {
    r->result =
        first ? impl_->fetch_ranged(*r)
              : Status(make_error(describe() + r->path + ": not fetched after an earlier failure"));
    if (first && !r->result) first = r->result;
  }
  return first;
}

Status HttpsTransport::fetch_manifests(std::span<ManifestRequest> requests) {
  Impl::Batch b;
  for (auto& r : requests) {
    Impl::Job& j = b.jobs.emplace_back();
    j.d = impl_->download(std::string(kManifestsPath) + proto::to_hex(r.digest),
                          proto::kMaxManifestBytes, r.sink);
    j.d.restart = &r.restart;
    j.result = &r.result;
  }
  // A new candidate's manifests: its relay reads the parent's status next (the chain, which may
  // have changed with the serial). Asked for in the same pipelines, it costs no round trip of its
  // own; a parent without one (a static server) fails only that request.
  BodyCollector status;
  Status status_result;
  // Documents asked for beside this batch (fetch_document_beside_manifests): the same.
  const auto wanted = requests.empty() ? decltype(impl_->documents_wanted)()
                                       : std::exchange(impl_->documents_wanted, {});
  std::vector<std::unique_ptr<BodyCollector>> documents;
  std::vector<Status> document_results(wanted.size());
  b.jobs.reserve(requests.size() + 1 + wanted.size());
  if (!requests.empty()) {
    Impl::Job& j = b.jobs.emplace_back();
    j.d = impl_->download(kStatusPath, kMaxStatusBytes, status.sink);
    j.d.restart = &status.restart;
    j.result = &status_result;
    j.optional = true;
  }
  for (const auto& [path, max_bytes] : wanted) {
    auto& body = documents.emplace_back(std::make_unique<BodyCollector>());
    Impl::Job& j = b.jobs.emplace_back();
    j.d = impl_->download(path, max_bytes, body->sink);
    j.d.restart = &body->restart;
    j.result = &document_results[documents.size() - 1];
    j.optional = true;
  }
  Status result = impl_->run_batch(b);
  std::size_t k = 0;
  for (const auto& [path, max_bytes] : wanted) {
    // Kept for fetch_document: the document, or none (404). Any other failure (not asked after
    // an earlier one, a network error) is left for fetch_document to ask again and report.
    const Impl::Job& j = b.jobs[requests.size() + 1 + k];
    if (document_results[k])
      impl_->documents_fetched.insert_or_assign(
          path, std::optional<std::string>(std::move(documents[k]->bytes)));
    else if (j.d.status == 404)
      impl_->documents_fetched.insert_or_assign(path, std::optional<std::string>());
    ++k;
  }
  impl_->status_fetched.reset();
  if (!requests.empty()) {
    if (status_result)
      impl_->status_fetched = std::move(status.bytes);
    else
      impl_->status_fetched = status_result.error();
  }
  return result;
}

std::uint64_t HttpsTransport::faults() const {
  return impl_->faults;
}

HttpsTransport::Link HttpsTransport::link() const {
  return {impl_->round_trip, impl_->peak_rate, impl_->deepest};
}

}  // namespace tiersync::transport
