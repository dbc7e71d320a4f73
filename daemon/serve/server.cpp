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

/// TLS 1.2 suites: forward secret AEAD only (TLS 1.3 keeps OpenSSL's defaults, all AEAD).
constexpr const char* kTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

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
  for (const auto& [key, file] : {std::pair{"tls_cert", &l.tls_cert}, {"tls_key", &l.tls_key}})
    if (::access(file->c_str(), R_OK) != 0)
      return make_error(std::string(key) + " " + file->string() + ": " + std::strerror(errno));
  auto ctx = std::make_unique<ssl::context>(ssl::context::tls_server);
  // TLS 1.2 and 1.3 only: SSLv3, TLS 1.0 and 1.1 are broken or deprecated (RFC 8996) and every
  // client we serve speaks 1.2. No compression (CRIME). No renegotiation: a client could make us
  // redo a full handshake's work at will.
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                   ssl::context::no_compression);
  SSL_CTX* native = ctx->native_handle();
  SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
  SSL_CTX_set_options(native, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (SSL_CTX_set_cipher_list(native, kTls12Ciphers) != 1)
    return make_error("cannot set the TLS 1.2 cipher list");
  boost::system::error_code ec;
  ctx->use_certificate_chain_file(l.tls_cert.string(), ec);
  if (ec) return make_error("tls_cert " + l.tls_cert.string() + ": " + ec.message());
  ctx->use_private_key_file(l.tls_key.string(), ssl::context::pem, ec);
  if (ec) return make_error("tls_key " + l.tls_key.string() + ": " + ec.message());
  if (SSL_CTX_check_private_key(native) != 1)
    return make_error("tls_key " + l.tls_key.string() + " does not match tls_cert " +
                      l.tls_cert.string());
  return ctx;
}

/// A live connection as the server sees it: owned jointly by its session and the registry. The
/// pointers are set and read only on the connection's strand.
struct Connection {
  explicit Connection(asio::any_io_executor ex) : strand(std::move(ex)) {}
  asio::any_io_executor strand;
  beast::tcp_stream* stream = nullptr;       ///< while the session lives
  asio::steady_timer* poll_timer = nullptr;  ///< while a long-poll waits
  std::uint64_t poll_after = 0;
  bool writing = false;  ///< a request is being answered: stop() lets it finish
};

struct Listener {
  ops::ListenConfig config;
  std::string name;  ///< "listen[0] 0.0.0.0:8443", for logs and errors
  /// Replaced by reload_tls (under Impl::mu); a connection keeps the context it started with.
  std::shared_ptr<ssl::context> tls;
  std::optional<tcp::acceptor> acceptor;
  std::uint16_t port = 0;
};

}  // namespace

struct Server::Impl {
  Impl(std::vector<ops::ListenConfig> listen, fs::path tree_dir, ServerLimits l)
      : configs(std::move(listen)), limits(l) {
    limits.threads = std::max(1u, limits.threads);
    context.tree = std::move(tree_dir);
    context.dirs = std::make_shared<DirCache>(context.tree);
    context.max_wait = limits.max_wait;
    context.server_metrics = [this] { return metrics_text(); };
    auto empty = std::make_shared<ServedView>();
    empty->status_json = "{\"serial\": null}\n";
    view = std::move(empty);
  }

  std::vector<ops::ListenConfig> configs;
  ServerLimits limits;
  HandlerContext context;

  // Shared between the server threads and the owner's; declared before the io_context, which
  // may destroy sessions (and so touch these) when it is destroyed.
  mutable std::mutex mu;
  std::condition_variable drained;
  std::shared_ptr<const ServedView> view;             // guarded by mu
  std::set<std::shared_ptr<Connection>> connections;  // guarded by mu
  std::set<std::shared_ptr<Connection>> pollers;      // guarded by mu: long-polls waiting
  std::atomic<bool> stopping{false};
  bool started = false;  // owner thread only
  bool stopped = false;  // owner thread only

  std::atomic<std::uint64_t> accepted{0};
  std::atomic<std::uint64_t> rejected{0};
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> bytes_sent{0};
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
      impl.pollers.erase(conn);
      impl.connections.erase(conn);
      if (impl.connections.empty()) impl.drained.notify_all();
    }
  };

  Status bind(Listener& l);
  asio::awaitable<void> accept_loop(Listener& l);
  asio::awaitable<void> run_plain(tcp::socket socket, std::shared_ptr<Connection> conn);
  asio::awaitable<void> run_tls(tcp::socket socket, std::shared_ptr<ssl::context> tls,
                                std::shared_ptr<Connection> conn);
  template <class Stream>
  asio::awaitable<bool> serve_requests(Stream& stream, const std::shared_ptr<Connection>& conn,
                                       const std::string& peer);
  asio::awaitable<Response> long_poll(const std::shared_ptr<Connection>& conn, Request request,
                                      LongPoll poll);
  template <class Stream>
  asio::awaitable<bool> write_response(Stream& stream, Response& res, unsigned version,
                                       bool keep_alive, bool head);
  std::string metrics_text() const;
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
  l.port = l.acceptor->local_endpoint(ec).port();
  if (ec) return make_error(l.name + ": " + ec.message());
  return {};
}

asio::awaitable<void> Server::Impl::accept_loop(Listener& l) {
  asio::steady_timer backoff(co_await asio::this_coro::executor);
  while (!stopping) {  // ends when stop() closes the acceptor
    // Each connection gets its own strand: its session, timers and wake-ups never run
    // concurrently with each other, while different connections use both threads.
    auto [ec, socket] = co_await l.acceptor->async_accept(asio::make_strand(ioc), use_tuple);
    if (ec == asio::error::operation_aborted || stopping) co_return;
    if (ec) {
      // Out of descriptors or memory: retrying at once would spin; the pending connections wait
      // in the backlog.
      spdlog::warn("serve: {}: accept failed: {}", l.name, ec.message());
      backoff.expires_after(kAcceptRetryDelay);
      co_await backoff.async_wait(use_tuple);
      continue;
    }
    auto conn = std::make_shared<Connection>(socket.get_executor());
    {
      std::lock_guard lock(mu);
      if (connections.size() >= limits.max_connections)
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
    if (res.poll) res = co_await long_poll(conn, request, *res.poll);

    const bool keep_alive =
        req.keep_alive() && !stopping && n + 1 < limits.max_requests_per_connection;
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

asio::awaitable<Response> Server::Impl::long_poll(const std::shared_ptr<Connection>& conn,
                                                  Request request, LongPoll poll) {
  asio::steady_timer timer(co_await asio::this_coro::executor, poll.wait);
  bool wait = false;
  {
    // Checked and registered under the lock publish() takes to swap the view: a view published
    // after this check posts its wake-up to our strand, where it runs only once async_wait below
    // has started. The same holds for stop().
    std::lock_guard lock(mu);
    if (view->serial <= poll.after && !stopping) {
      conn->poll_timer = &timer;
      conn->poll_after = poll.after;
      pollers.insert(conn);
      wait = true;
    }
  }
  if (wait) {
    auto [ec] = co_await timer.async_wait(use_tuple);  // expiry, or cancel() by publish/stop
    (void)ec;
    conn->poll_timer = nullptr;
    std::lock_guard lock(mu);
    pollers.erase(conn);
  }
  request.waited = true;
  co_return handle_request(request, *current_view(), context);
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
  for (auto& l : s.listeners) {
    spdlog::info("serve: listening on {} ({}, port {})", l.name, l.tls ? "https" : "http", l.port);
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
  spdlog::info("serve: stopped");
}

ServerStats Server::stats() const {
  const Impl& s = *impl_;
  ServerStats out;
  out.connections_accepted = s.accepted.load();
  out.connections_rejected = s.rejected.load();
  out.requests = s.requests.load();
  std::lock_guard lock(s.mu);
  out.connections_active = s.connections.size();
  out.long_polls_waiting = s.pollers.size();
  return out;
}

}  // namespace tiersync::serve
