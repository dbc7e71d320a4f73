// The network side of the server: listeners, TLS, HTTP/1.1 keep-alive, long-polls, limits.
// What to answer is handle_request() (handler.cpp); the coroutines here only move bytes, each
// operation under a timeout. The only translation unit that includes Asio and Beast.

#include "daemon/serve/server.h"

#include <openssl/ssl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <exception>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>

#include "daemon/base/tls.h"
#include "daemon/ops/fd_limit.h"
#include "daemon/ops/metrics.h"
#include "daemon/serve/handler.h"

namespace tiersync::serve {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

// Errors are values: every co_await yields (error_code, ...) instead of throwing.
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

constexpr std::size_t kFirstReadBytes = 4096;
constexpr std::size_t kChunkBytes = 64 * 1024;
constexpr auto kTlsShutdownTimeout = 2s;
constexpr auto kAcceptRetryDelay = 100ms;
constexpr auto kAcceptMaxRetryDelay = 2s;
/// What a client refused a long poll should wait before asking again. The poll only saves
/// latency: its periodic poll keeps working meanwhile.
constexpr std::string_view kLongPollRetryAfterSeconds = "30";
// A long poll held (or asked for) while the server stops: the parent is going away for a
// moment (a restart), so its children ask again at once rather than after their poll period
// (docs/protocol.md, "GET /.tiersync/v1/snapshot").
constexpr std::string_view kStoppingRetryAfterSeconds = "1";

std::string_view sv(beast::string_view s) {
  return {s.data(), s.size()};
}

std::string endpoint_name(const tcp::endpoint& ep) {
  const std::string addr = ep.address().to_string();
  return (ep.address().is_v6() ? "[" + addr + "]" : addr) + ":" + std::to_string(ep.port());
}

std::string peer_name(const tcp::socket& socket) {
  boost::system::error_code ec;
  auto ep = socket.remote_endpoint(ec);
  return ec ? std::string("?") : endpoint_name(ep);
}

/// co_spawn completion: a coroutine that throws (it should not: errors are values) is logged,
/// not silently dropped.
auto log_exception(std::string what) {
  return [what = std::move(what)](const std::exception_ptr& e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      spdlog::error("serve: {}: unexpected exception: {}", what, x.what());
    }
  };
}

Result<std::unique_ptr<ssl::context>> make_tls_context(const ops::ListenConfig& l) {
  auto native = base::make_server_tls(l.tls_cert, l.tls_key);
  if (!native) return native.error();
  return std::make_unique<ssl::context>(native->release());  // which takes ownership
}

/// A live connection as the server sees it: owned jointly by its session and the registry. The
/// pointers are set and read only on the connection's strand.
struct Connection {
  Connection(asio::any_io_executor ex, std::string addr)
      : strand(std::move(ex)), address(std::move(addr)) {}
  asio::any_io_executor strand;
  const std::string address;                 ///< the client's IP address: per-address caps
  beast::tcp_stream* stream = nullptr;       ///< while the session lives
  asio::steady_timer* poll_timer = nullptr;  ///< while a long-poll waits
  std::uint64_t poll_after = 0;
  bool writing = false;  ///< a request is being answered: stop() lets it finish
};

/// A long poll's watch on its client (Server::Impl::watch_client), shared with the long poll on
/// the connection's strand.
struct ClientWatch {
  ClientWatch(asio::any_io_executor ex, asio::steady_timer& poll)
      : poll_timer(poll), finished(std::move(ex), asio::steady_timer::time_point::max()) {}
  asio::steady_timer& poll_timer;  ///< the long poll's: cancelled when the client goes
  asio::steady_timer finished;     ///< cancelled when the watch ends
  bool poll_over = false;          ///< the poll ended (publish, expiry, stop): stop watching
  bool running = true;
  bool client_gone = false;  ///< the client closed the connection or it failed
};

struct Listener {
  ops::ListenConfig config;
  std::string name;  ///< "listen[0] 0.0.0.0:8443", for logs and errors
  /// Replaced by reload_tls (under Impl::mu); a connection keeps the context it started with.
  std::shared_ptr<ssl::context> tls;
  std::optional<tcp::acceptor> acceptor;
  std::uint16_t port = 0;  ///< bound: the configured one, or the kernel's pick for port 0
  std::string bound;       ///< "127.0.0.1:43517": the bound address, for the log
};

/// The caps of `limits` fitted to a soft descriptor limit of `fds`: the reserve is kept for the
/// rest of the node; each connection may hold two descriptors (its socket and the file it
/// sends); long polls get at most seven eighths of the connections, so that a crowd of them
/// leaves room for /metrics, status and downloads.
ServerCaps fit_caps(const ServerLimits& limits, std::uint64_t fds) {
  ServerCaps caps;
  caps.descriptor_limit = fds;
  const std::uint64_t usable =
      fds > limits.reserved_descriptors ? fds - limits.reserved_descriptors : 0;
  caps.cached_folders = static_cast<std::size_t>(std::clamp<std::uint64_t>(usable / 16, 16, 4096));
  const std::uint64_t for_connections =
      usable > caps.cached_folders ? usable - caps.cached_folders : 0;
  caps.connections = static_cast<std::size_t>(std::min<std::uint64_t>(
      std::max<std::uint64_t>(for_connections / 2, 8), limits.max_connections));
  caps.long_polls = std::clamp<std::size_t>(caps.connections - caps.connections / 8, 1,
                                            std::max<std::size_t>(limits.max_long_polls, 1));
  caps.long_polls_per_address =
      std::clamp<std::size_t>(limits.max_long_polls_per_address, 1, caps.long_polls);
  return caps;
}

}  // namespace

ServerLimits server_limits(const ops::ServeConfig& serve) {
  ServerLimits limits;
  limits.max_connections = serve.max_connections;
  limits.max_long_polls = serve.max_long_polls;
  limits.max_long_polls_per_address = serve.max_long_polls_per_address;
  return limits;
}

struct Server::Impl {
  Impl(std::vector<ops::ListenConfig> listen, fs::path tree_dir, ServerLimits l)
      : configs(std::move(listen)), limits(l) {
    limits.threads = std::max(1u, limits.threads);
    caps = fit_caps(limits, ops::fd_limit().soft);
    context.tree = std::move(tree_dir);
    context.dirs = std::make_shared<DirCache>(context.tree, caps.cached_folders);
    context.max_wait = limits.max_wait;
    context.server_metrics = [this] { return metrics_text(); };
    auto empty = std::make_shared<ServedView>();
    empty->status_json = "{\"serial\": null}\n";
    view = std::move(empty);
  }

  std::vector<ops::ListenConfig> configs;
  ServerLimits limits;
  ServerCaps caps;
  HandlerContext context;

  // Shared between the server threads and the owner's; declared before the io_context, which
  // may destroy sessions (and so touch these) when it is destroyed.
  mutable std::mutex mu;
  std::condition_variable drained;
  std::shared_ptr<const ServedView> view;             // guarded by mu
  std::set<std::shared_ptr<Connection>> connections;  // guarded by mu
  std::set<std::shared_ptr<Connection>> pollers;      // guarded by mu: long-polls waiting
  std::unordered_map<std::string, std::size_t> polls_by_address;  // guarded by mu: of pollers
  std::atomic<bool> stopping{false};
  bool started = false;  // owner thread only
  bool stopped = false;  // owner thread only

  std::atomic<std::uint64_t> accepted{0};
  std::atomic<std::uint64_t> rejected{0};
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> bytes_sent{0};
  std::atomic<std::uint64_t> polls_refused_total{0};    // over max_long_polls
  std::atomic<std::uint64_t> polls_refused_address{0};  // over max_long_polls_per_address
  std::atomic<std::uint64_t> polls_abandoned{0};
  std::atomic<std::uint64_t> accept_failures{0};
  std::array<std::atomic<std::uint64_t>, 600> responses_by_code{};

  asio::io_context ioc;
  std::vector<Listener> listeners;  // after ioc: acceptors go first
  std::vector<std::thread> threads;

  std::shared_ptr<const ServedView> current_view() const {
    std::lock_guard lock(mu);
    return view;
  }

  /// Unregisters a connection when its session ends (RAII: also when its frame is destroyed).
  struct Registration {
    Impl& impl;
    std::shared_ptr<Connection> conn;
    ~Registration() {
      conn->stream = nullptr;
      conn->poll_timer = nullptr;
      std::lock_guard lock(impl.mu);
      impl.forget_poll(conn);
      impl.connections.erase(conn);
      if (impl.connections.empty()) impl.drained.notify_all();
    }
  };

  /// Removes `conn` from the long polls waiting, if it is there. Call with `mu` held.
  void forget_poll(const std::shared_ptr<Connection>& conn) {
    if (!pollers.erase(conn)) return;
    auto it = polls_by_address.find(conn->address);
    if (it != polls_by_address.end() && --it->second == 0) polls_by_address.erase(it);
  }

  Status bind(Listener& l);
  asio::awaitable<void> accept_loop(Listener& l);
  asio::awaitable<void> run_plain(tcp::socket socket, std::shared_ptr<Connection> conn);
  asio::awaitable<void> run_tls(tcp::socket socket, std::shared_ptr<ssl::context> tls,
                                std::shared_ptr<Connection> conn);
  template <class Stream>
  asio::awaitable<bool> serve_requests(Stream& stream, const std::shared_ptr<Connection>& conn,
                                       const std::string& peer);
  template <class Stream>
  asio::awaitable<std::optional<Response>> long_poll(Stream& stream, beast::flat_buffer& buffer,
                                                     const std::shared_ptr<Connection>& conn,
                                                     Request request, LongPoll poll);
  template <class Stream>
  asio::awaitable<void> watch_client(Stream& stream, beast::flat_buffer& buffer,
                                     ClientWatch& watch);
  template <class Stream>
  asio::awaitable<bool> write_response(Stream& stream, Response& res, unsigned version,
                                       bool keep_alive, bool head);
  std::string metrics_text() const;
  std::size_t stats_connections() const {
    std::lock_guard lock(mu);
    return connections.size();
  }
};

Status Server::Impl::bind(Listener& l) {
  boost::system::error_code ec;
  auto address = asio::ip::make_address(l.config.address, ec);
  if (ec) return make_error(l.name + ": address \"" + l.config.address + "\" is not an IP address");
  if (l.config.tls) {
    auto tls = make_tls_context(l.config);
    if (!tls) return make_error(l.name + ": " + tls.message());
    l.tls = std::move(*tls);
  }
  const tcp::endpoint ep(address, l.config.port);
  l.acceptor.emplace(asio::make_strand(ioc));
  l.acceptor->open(ep.protocol(), ec);
  if (ec) return make_error(l.name + ": cannot open a socket: " + ec.message());
  // Restarting while old connections sit in TIME_WAIT must not fail to bind.
  l.acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  l.acceptor->bind(ep, ec);
  if (ec) return make_error(l.name + ": cannot bind: " + ec.message());
  l.acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return make_error(l.name + ": cannot listen: " + ec.message());
  const auto local = l.acceptor->local_endpoint(ec);
  if (ec) return make_error(l.name + ": " + ec.message());
  l.port = local.port();
  l.bound = endpoint_name(local);
  return {};
}

asio::awaitable<void> Server::Impl::accept_loop(Listener& l) {
  asio::steady_timer backoff(co_await asio::this_coro::executor);
  std::uint64_t failures = 0;  // accept failures in a row (a burst)
  while (!stopping) {          // ends when stop() closes the acceptor
    // Each connection gets its own strand: its session, timers and wake-ups never run
    // concurrently with each other, while different connections use both threads.
    auto [ec, socket] = co_await l.acceptor->async_accept(asio::make_strand(ioc), use_tuple);
    if (ec == asio::error::operation_aborted || stopping) co_return;
    if (ec) {
      // Out of descriptors (or memory): retrying at once would spin, the pending connections
      // wait in the backlog. The delay doubles while the burst lasts, and the burst is logged
      // once when it starts and once when it ends, not at every retry.
      ++accept_failures;
      if (failures++ == 0)
        spdlog::warn("serve: {}: accept failed: {} (retrying with back-off; {} connections open)",
                     l.name, ec.message(), stats_connections());
      backoff.expires_after(std::min<std::chrono::milliseconds>(
          kAcceptRetryDelay * (1u << std::min<std::uint64_t>(failures - 1, 5)),
          kAcceptMaxRetryDelay));
      co_await backoff.async_wait(use_tuple);
      continue;
    }
    if (failures > 0) {
      spdlog::info("serve: {}: accepting again after {} failed attempts", l.name, failures);
      failures = 0;
    }
    boost::system::error_code peer_ec;
    const auto peer = socket.remote_endpoint(peer_ec);
    auto conn = std::make_shared<Connection>(
        socket.get_executor(), peer_ec ? std::string("?") : peer.address().to_string());
    {
      std::lock_guard lock(mu);
      if (connections.size() >= caps.connections)
        conn.reset();
      else
        connections.insert(conn);
    }
    if (!conn) {
      // Over the limit: closing at once costs nothing, where a 503 would cost a TLS handshake.
      ++rejected;
      boost::system::error_code ignored;
      socket.close(ignored);
      continue;
    }
    ++accepted;
    boost::system::error_code ignored;
    // Headers and small bodies go out in separate writes; Nagle would hold the second one back
    // until the client's (delayed) ACK of the first.
    socket.set_option(tcp::no_delay(true), ignored);
    auto strand = conn->strand;
    std::shared_ptr<ssl::context> tls;
    {
      std::lock_guard lock(mu);
      tls = l.tls;
    }
    if (tls)
      asio::co_spawn(strand, run_tls(std::move(socket), std::move(tls), std::move(conn)),
                     log_exception(l.name));
    else
      asio::co_spawn(strand, run_plain(std::move(socket), std::move(conn)), log_exception(l.name));
  }
}

asio::awaitable<void> Server::Impl::run_plain(tcp::socket socket,
                                              std::shared_ptr<Connection> conn) {
  Registration registration{*this, conn};
  const std::string peer = peer_name(socket);
  beast::tcp_stream stream(std::move(socket));
  conn->stream = &stream;
  const bool orderly = co_await serve_requests(stream, conn, peer);
  if (!orderly) co_return;
  // Half-close after the last response: closing outright while the client may still be sending
  // would make our kernel answer with RST, which can discard the response before it is read.
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
}

asio::awaitable<void> Server::Impl::run_tls(tcp::socket socket, std::shared_ptr<ssl::context> tls,
                                            std::shared_ptr<Connection> conn) {
  Registration registration{*this, conn};
  const std::string peer = peer_name(socket);
  beast::ssl_stream<beast::tcp_stream> stream(std::move(socket), *tls);
  auto& lowest = beast::get_lowest_layer(stream);
  conn->stream = &lowest;
  if (stopping) co_return;

  lowest.expires_after(limits.handshake_timeout);
  auto [ec] = co_await stream.async_handshake(ssl::stream_base::server, use_tuple);
  if (ec) {
    // Scanners, TLS 1.0/1.1 clients and plain HTTP sent to the TLS port end here: debug, not a
    // warning per attempt.
    spdlog::debug("serve: {}: TLS handshake failed: {}", peer, ec.message());
    co_return;
  }
  const bool orderly = co_await serve_requests(stream, conn, peer);
  if (!orderly) co_return;

  // Orderly TLS close: send close_notify. Clients usually close TCP without answering with their
  // own, so the errors here (stream_truncated, eof, timeout) are expected and ignored: every
  // response was delimited by Content-Length, so no message can have been cut short unnoticed.
  lowest.expires_after(kTlsShutdownTimeout);
  auto [shutdown_ec] = co_await stream.async_shutdown(use_tuple);
  (void)shutdown_ec;
}

template <class Stream>
asio::awaitable<bool> Server::Impl::serve_requests(Stream& stream,
                                                   const std::shared_ptr<Connection>& conn,
                                                   const std::string& peer) {
  auto& lowest = beast::get_lowest_layer(stream);
  beast::flat_buffer buffer;
  for (unsigned n = 0; n < limits.max_requests_per_connection; ++n) {
    if (stopping) co_return true;

    // Waiting for a request: its first byte must come within the idle timeout (keep-alive), or,
    // on a new connection, within the header timeout (a client that connects and says nothing
    // is a slowloris too). Bytes of a pipelined request may already be buffered.
    if (buffer.size() == 0) {
      lowest.expires_after(n == 0 ? limits.header_timeout : limits.idle_timeout);
      auto [ec, got] = co_await stream.async_read_some(buffer.prepare(kFirstReadBytes), use_tuple);
      // Timeout, peer gone or stop(). A TLS peer that closes TCP without close_notify gives
      // ssl::error::stream_truncated: between requests that is an ordinary end, since HTTP
      // framing, not TLS, says where a message ends.
      if (ec) co_return false;
      buffer.commit(got);
    }

    // Reading it: header and (tiny) body must be complete within the header timeout of the first
    // byte, so a client dribbling its header holds a connection that long at most.
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(limits.max_header_bytes));
    parser.body_limit(limits.max_body_bytes);
    lowest.expires_after(limits.header_timeout);
    auto [ec, used] = co_await http::async_read(stream, buffer, parser, use_tuple);
    (void)used;
    if (ec) {
      // A refusal is answered, then the connection closed: the rest of the stream cannot be
      // parsed reliably.
      std::optional<Response> refusal;
      if (ec == http::error::header_limit)
        refusal = text_response(431, "request header fields too large");
      else if (ec == http::error::body_limit)
        refusal = text_response(413, "request body too large (only GET and HEAD are served)");
      else if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
               ec != http::error::end_of_stream && ec != http::error::partial_message)
        refusal = text_response(400, "malformed request");
      if (!refusal) co_return false;  // timeout, peer gone, stop()
      conn->writing = true;
      spdlog::debug("serve: {}: refused: {}", peer, ec.message());
      const bool ok = co_await write_response(stream, *refusal, 11, false, false);
      conn->writing = false;
      co_return ok;
    }

    const auto& req = parser.get();
    conn->writing = true;
    Request request{sv(req.method_string()),
                    sv(req.target()),
                    sv(req[http::field::if_none_match]),
                    sv(req[http::field::if_modified_since]),
                    sv(req[http::field::if_range]),
                    sv(req[http::field::range])};
    Response res;
    // RFC 9112 3.2: an HTTP/1.1 request without Host is answered 400.
    if (req.version() >= 11 && req.find(http::field::host) == req.end())
      res = text_response(400, "missing Host header");
    else
      res = handle_request(request, *current_view(), context);
    bool close_after = false;
    if (res.poll) {
      auto answer = co_await long_poll(stream, buffer, conn, request, *res.poll);
      if (!answer) co_return false;  // the client left while it waited: nobody to answer
      // A refused long poll closes its connection: a refused crowd must not keep the connection
      // slots that /metrics and downloads need.
      close_after = answer->status == 503;
      res = std::move(*answer);
    }

    const bool keep_alive =
        req.keep_alive() && !close_after && !stopping && n + 1 < limits.max_requests_per_connection;
    const bool ok = co_await write_response(stream, res, req.version(), keep_alive,
                                            req.method() == http::verb::head);
    conn->writing = false;
    spdlog::debug("serve: {} \"{} {}\" {} {}", peer, request.method, request.target, res.status,
                  res.content_length.value_or(0));
    if (!ok) co_return false;
    if (!keep_alive) co_return true;
  }
  co_return true;
}

template <class Stream>
asio::awaitable<std::optional<Response>> Server::Impl::long_poll(
    Stream& stream, beast::flat_buffer& buffer, const std::shared_ptr<Connection>& conn,
    Request request, LongPoll poll) {
  const auto ex = co_await asio::this_coro::executor;
  asio::steady_timer timer(ex, poll.wait);
  enum class Admit { kAnswerNow, kWait, kTooMany, kTooManyFromAddress } admit = Admit::kAnswerNow;
  {
    // Checked and registered under the lock publish() takes to swap the view: a view published
    // after this check posts its wake-up to our strand, where it runs only once async_wait below
    // has started. The same holds for stop().
    std::lock_guard lock(mu);
    if (view->serial <= poll.after && !stopping) {
      const auto from_address = polls_by_address.find(conn->address);
      if (pollers.size() >= caps.long_polls) {
        admit = Admit::kTooMany;
      } else if (from_address != polls_by_address.end() &&
                 from_address->second >= caps.long_polls_per_address) {
        admit = Admit::kTooManyFromAddress;
      } else {
        conn->poll_timer = &timer;
        conn->poll_after = poll.after;
        pollers.insert(conn);
        ++polls_by_address[conn->address];
        admit = Admit::kWait;
      }
    }
  }
  if (admit == Admit::kTooMany || admit == Admit::kTooManyFromAddress) {
    // Over a cap: refused at once, and the connection closed after the answer (no log line per
    // refusal: a crowd would flood the log; the metrics count them).
    const bool total = admit == Admit::kTooMany;
    ++(total ? polls_refused_total : polls_refused_address);
    Response r = text_response(503, total ? "too many long polls: retry later"
                                          : "too many long polls from your address: retry later");
    r.set("Retry-After", std::string(kLongPollRetryAfterSeconds));
    co_return r;
  }
  if (admit == Admit::kWait) {
    // While the poll waits, the client is watched: a client that closes its connection ends
    // the poll at once and frees its descriptor, instead of holding it in CLOSE_WAIT until the
    // wait runs out.
    ClientWatch watch(ex, timer);
    asio::co_spawn(ex, watch_client(stream, buffer, watch), log_exception("long poll watch"));
    auto [ec] = co_await timer.async_wait(use_tuple);  // expiry, or cancel() by publish/stop/watch
    (void)ec;
    conn->poll_timer = nullptr;
    watch.poll_over = true;
    if (watch.running) {
      // Ends the watch's read (a cancelled read completes at once: bounded), and waits for it,
      // since it uses the stream and buffer this frame's caller owns.
      beast::get_lowest_layer(stream).cancel();
      auto [fec] = co_await watch.finished.async_wait(use_tuple);
      (void)fec;
    }
    // Counted as abandoned before it stops counting as waiting: /metrics (read from another
    // thread) never shows a poll in neither.
    if (watch.client_gone) ++polls_abandoned;
    {
      std::lock_guard lock(mu);
      forget_poll(conn);
    }
    if (watch.client_gone) co_return std::nullopt;
  }
  request.waited = true;
  const auto answering = current_view();
  if (stopping && answering->serial <= poll.after) {
    // Not 304 ("unchanged", which a child takes for a parent that does not hold polls and asks
    // again only after its poll period): 503 with Retry-After, and the connection closed.
    Response r = text_response(503, "stopping: ask again in a moment");
    r.set("Retry-After", std::string(kStoppingRetryAfterSeconds));
    co_return r;
  }
  co_return handle_request(request, *answering, context);
}

template <class Stream>
asio::awaitable<void> Server::Impl::watch_client(Stream& stream, beast::flat_buffer& buffer,
                                                 ClientWatch& watch) {
  // Reads whatever the client sends while its poll waits: end of stream or an error (reset, a
  // TLS peer gone without close_notify) means it has gone. Pipelined bytes are kept in `buffer`
  // for the requests after the poll, up to one request's worth; a client that sends more than
  // that is answered at once rather than read further (or ignored until the wait runs out).
  const std::size_t max_buffered = limits.max_header_bytes + limits.max_body_bytes;
  beast::get_lowest_layer(stream).expires_never();  // the poll's own timer bounds the wait
  while (!watch.poll_over && buffer.size() < max_buffered) {  // bounded by max_buffered
    auto [ec, got] = co_await stream.async_read_some(
        buffer.prepare(std::min(kFirstReadBytes, max_buffered - buffer.size())), use_tuple);
    buffer.commit(got);
    if (watch.poll_over) break;  // cancelled by the poll's end: not the client's doing
    if (ec) {
      watch.client_gone = true;
      break;
    }
  }
  if (!watch.poll_over) watch.poll_timer.cancel();  // gone, or a full buffer: end the poll now
  watch.running = false;
  watch.finished.cancel();
}

template <class Stream>
asio::awaitable<bool> Server::Impl::write_response(Stream& stream, Response& res, unsigned version,
                                                   bool keep_alive, bool head) {
  ++requests;
  if (res.status < responses_by_code.size()) ++responses_by_code[res.status];

  // The head is written by hand (serialize_head): Beast's fields would allocate per field.
  // Content-Length is the GET body's, also for a HEAD response that carries none.
  std::string head_text = serialize_head(res, version, keep_alive, std::time(nullptr));
  auto& lowest = beast::get_lowest_layer(stream);
  const std::uint64_t length = res.content_length.value_or(0);
  const bool no_body = head || res.status == 304 || length == 0;
  // The head leaves in one contiguous write with the body, or with the first chunk of a file:
  // one TCP segment and, over TLS, one record for a small file instead of two of each.
  if (no_body || !res.file.valid()) {
    if (!no_body) head_text += res.body;
    lowest.expires_after(limits.write_timeout);
    auto [ec, sent] = co_await asio::async_write(stream, asio::buffer(head_text), use_tuple);
    bytes_sent += sent;
    co_return !ec;
  }

  // A file body, in chunks: a package is never held in memory whole, and each chunk must leave
  // within the write timeout (a client that stops reading is dropped). The buffer is not
  // zeroed: pread fills what is sent.
  const std::size_t head_size = head_text.size();
  const auto chunk_size = static_cast<std::size_t>(std::min<std::uint64_t>(kChunkBytes, length));
  const auto buffer = std::make_unique_for_overwrite<char[]>(head_size + chunk_size);
  std::memcpy(buffer.get(), head_text.data(), head_size);
  std::size_t start = head_size;  // the head goes out before the first chunk only
  std::uint64_t offset = res.file_offset;
  std::uint64_t left = length;
  while (left > 0) {  // bounded: `left` shrinks every turn or the loop returns
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(left, chunk_size));
    char* const data = buffer.get() + head_size;
    const ssize_t got = ::pread(res.file.get(), data, want, static_cast<off_t>(offset));
    if (got <= 0) {
      // The file shrank or failed after its length was announced. Installs replace files by
      // rename, never in place, so this is damage; closing is the only honest signal left.
      spdlog::warn("serve: a file shrank or failed while being sent ({})",
                   got < 0 ? std::strerror(errno) : "short read");
      co_return false;
    }
    lowest.expires_after(limits.write_timeout);
    auto [wec, wrote] = co_await asio::async_write(
        stream, asio::buffer(data - start, start + static_cast<std::size_t>(got)), use_tuple);
    if (wec) co_return false;
    bytes_sent += wrote;
    start = 0;
    offset += static_cast<std::uint64_t>(got);
    left -= static_cast<std::uint64_t>(got);
  }
  co_return true;
}

std::string Server::Impl::metrics_text() const {
  ops::PrometheusText out;
  out.family("tiersync_http_requests_total", "counter", "HTTP responses sent, by status code.");
  for (std::size_t code = 100; code < responses_by_code.size(); ++code)
    if (auto n = responses_by_code[code].load())
      out.sample("tiersync_http_requests_total{code=\"" + std::to_string(code) + "\"}", n);
  std::size_t active = 0;
  std::size_t waiting = 0;
  {
    std::lock_guard lock(mu);
    active = connections.size();
    waiting = pollers.size();
  }
  out.single("tiersync_http_connections_accepted_total", "counter", "Connections accepted.",
             accepted.load());
  out.single("tiersync_http_connections_rejected_total", "counter",
             "Connections closed at once: over the connection limit.", rejected.load());
  out.single("tiersync_http_connections_active", "gauge", "Open connections.", active);
  out.single("tiersync_http_long_polls_waiting", "gauge", "Snapshot long-polls being held.",
             waiting);
  out.single("tiersync_http_sent_bytes_total", "counter", "Bytes of HTTP headers and bodies sent.",
             bytes_sent.load());
  out.family("tiersync_http_long_polls_refused_total", "counter",
             "Long polls answered 503: over the total or the per-address cap.");
  out.sample("tiersync_http_long_polls_refused_total{reason=\"total\"}",
             polls_refused_total.load());
  out.sample("tiersync_http_long_polls_refused_total{reason=\"address\"}",
             polls_refused_address.load());
  out.single("tiersync_http_long_polls_abandoned_total", "counter",
             "Long polls ended by their client closing the connection.", polls_abandoned.load());
  out.single("tiersync_http_accept_failures_total", "counter",
             "accept() failures (out of descriptors, say), each retried after a back-off.",
             accept_failures.load());
  out.single("tiersync_http_connections_limit", "gauge",
             "The connection cap in force (serve.max_connections fitted to the descriptor limit).",
             caps.connections);
  out.single("tiersync_http_long_polls_limit", "gauge",
             "The long-poll cap in force (serve.max_long_polls fitted to the descriptor limit).",
             caps.long_polls);
  return out.take();
}

Server::Server(std::vector<ops::ListenConfig> listen, fs::path tree, ServerLimits limits)
    : impl_(std::make_unique<Impl>(std::move(listen), std::move(tree), limits)) {}

Server::~Server() {
  stop();
}

Status Server::start() {
  Impl& s = *impl_;
  if (s.started) return make_error("the server was already started");
  s.listeners.reserve(s.configs.size());  // accept loops hold references: no reallocation
  for (std::size_t i = 0; i < s.configs.size(); ++i) {
    Listener l;
    l.config = s.configs[i];
    l.name = "listen[" + std::to_string(i) + "] " + l.config.address + ":" +
             std::to_string(l.config.port);
    s.listeners.push_back(std::move(l));
    if (auto st = s.bind(s.listeners.back()); !st) {
      s.listeners.clear();
      return st;
    }
  }
  s.started = true;
  spdlog::info(
      "serve: caps: {} connections, {} long polls ({} per address), {} cached folders, for a "
      "descriptor limit of {} ({} reserved for the node)",
      s.caps.connections, s.caps.long_polls, s.caps.long_polls_per_address, s.caps.cached_folders,
      s.caps.descriptor_limit, s.limits.reserved_descriptors);
  for (std::size_t i = 0; i < s.listeners.size(); ++i) {
    Listener& l = s.listeners[i];
    // The bound port, not the configured one: port 0 is the kernel's pick (docs/configuration.md,
    // "Bound ports").
    spdlog::info("serve: listening on {} ({}, listen[{}])", l.bound, l.tls ? "https" : "http", i);
    asio::co_spawn(l.acceptor->get_executor(), s.accept_loop(l), log_exception(l.name));
  }
  for (unsigned i = 0; i < s.limits.threads; ++i)
    s.threads.emplace_back([&s] {
      try {
        s.ioc.run();
      } catch (const std::exception& e) {
        spdlog::error("serve: server thread failed: {}", e.what());
      }
    });
  return {};
}

Status Server::reload_tls(const std::vector<ops::ListenConfig>& listen) {
  Impl& s = *impl_;
  if (listen.size() != s.listeners.size())
    return make_error("the reloaded configuration has " + std::to_string(listen.size()) +
                      " listen entries where " + std::to_string(s.listeners.size()) +
                      " are bound: restart tiersyncd to change listeners");
  std::vector<std::shared_ptr<ssl::context>> fresh(listen.size());
  for (std::size_t i = 0; i < listen.size(); ++i) {
    const auto& now = s.listeners[i].config;
    const auto& next = listen[i];
    if (next.address != now.address || next.port != now.port || next.tls != now.tls)
      return make_error("listen[" + std::to_string(i) + "] changed (" + now.address + ":" +
                        std::to_string(now.port) + (now.tls ? " tls" : " plain") + " -> " +
                        next.address + ":" + std::to_string(next.port) +
                        (next.tls ? " tls" : " plain") + "): restart tiersyncd to rebind");
    if (!next.tls) continue;
    auto ctx = make_tls_context(next);
    if (!ctx) return make_error(s.listeners[i].name + ": " + ctx.message());
    fresh[i] = std::move(*ctx);
  }
  std::lock_guard lock(s.mu);
  for (std::size_t i = 0; i < listen.size(); ++i) {
    if (!fresh[i]) continue;
    s.listeners[i].tls = std::move(fresh[i]);
    s.listeners[i].config.tls_cert = listen[i].tls_cert;
    s.listeners[i].config.tls_key = listen[i].tls_key;
  }
  return {};
}

std::vector<std::uint16_t> Server::ports() const {
  std::vector<std::uint16_t> out;
  for (const auto& l : impl_->listeners) out.push_back(l.port);
  return out;
}

void Server::publish(std::shared_ptr<const ServedView> view) {
  if (!view) return;
  Impl& s = *impl_;
  const std::uint64_t serial = view->serial;
  std::vector<std::shared_ptr<Connection>> waiting;
  s.context.dirs->clear();  // the apply before this view may have replaced folders
  {
    std::lock_guard lock(s.mu);
    s.view = std::move(view);
    waiting.assign(s.pollers.begin(), s.pollers.end());
  }
  // Wake the long-polls this serial satisfies, each on its own strand.
  for (auto& c : waiting)
    asio::post(c->strand, [c, serial] {
      if (c->poll_timer && serial > c->poll_after) c->poll_timer->cancel();
    });
}

void Server::stop() {
  Impl& s = *impl_;
  if (!s.started || s.stopped) return;
  s.stopped = true;
  s.stopping = true;
  for (auto& l : s.listeners)
    asio::post(l.acceptor->get_executor(), [&l] {
      boost::system::error_code ignored;
      l.acceptor->close(ignored);
    });
  std::vector<std::shared_ptr<Connection>> all;
  {
    std::lock_guard lock(s.mu);
    all.assign(s.connections.begin(), s.connections.end());
  }
  for (auto& c : all)
    asio::post(c->strand, [c] {
      if (c->poll_timer) c->poll_timer->cancel();         // answered now, then closed
      if (c->stream && !c->writing) c->stream->cancel();  // idle, handshaking or reading
    });
  {
    std::unique_lock lock(s.mu);
    s.drained.wait_for(lock, s.limits.stop_timeout, [&] { return s.connections.empty(); });
  }
  s.ioc.stop();  // whatever is still running (a slow download) is cut off here
  for (auto& t : s.threads) t.join();
  s.threads.clear();
  // The sessions cut off stay suspended in the io_context until the server is destroyed, and
  // their sockets open with them: closed now (no thread runs them any more), so that their
  // clients see the cut when stop() returns.
  {
    std::lock_guard lock(s.mu);
    for (const auto& c : s.connections)
      if (c->stream) c->stream->close();
  }
  spdlog::info("serve: stopped");
}

ServerStats Server::stats() const {
  const Impl& s = *impl_;
  ServerStats out;
  out.connections_accepted = s.accepted.load();
  out.connections_rejected = s.rejected.load();
  out.requests = s.requests.load();
  out.long_polls_refused = s.polls_refused_total.load() + s.polls_refused_address.load();
  out.long_polls_abandoned = s.polls_abandoned.load();
  out.accept_failures = s.accept_failures.load();
  out.caps = s.caps;
  std::lock_guard lock(s.mu);
  out.connections_active = s.connections.size();
  out.long_polls_waiting = s.pollers.size();
  return out;
}

}  // namespace tiersync::serve
