#pragma once
/// https:// and http:// parents: a pool of keep-alive connections with timeouts, retries with
/// backoff, resumed downloads and a rate limit. Asio and Beast stay inside the .cpp.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "daemon/transport/transport.h"

namespace tiersync::transport {

/// The parts of an upstream URL that locate a parent: `https://host[:port]/prefix/`.
struct HttpUrl {
  bool tls = true;
  std::string host;  ///< a name, an IPv4 address or an IPv6 address (without brackets)
  std::uint16_t port = 443;
  std::string prefix = "/";  ///< the tree's path on the server; starts and ends with '/'

  /// `host[:port]` as in a Host header: brackets around IPv6, the port when not the default.
  std::string authority() const;
  /// `https://authority/prefix/`, for messages.
  std::string base() const;
};

/// Parses an https:// or http:// URL; refuses user info, queries and fragments.
Result<HttpUrl> parse_http_url(std::string_view url);

/// Percent-encodes a tree path for a request target (every byte but unreserved ones and '/').
std::string encode_path(std::string_view path);

class HttpsTransport final : public Transport {
 public:
  /// Parses `url` and loads the trust store (`options.ca_file`, or the system's).
  static Result<std::unique_ptr<HttpsTransport>> create(const std::string& url,
                                                        const TransportOptions& options);
  ~HttpsTransport() override;
  HttpsTransport(const HttpsTransport&) = delete;
  HttpsTransport& operator=(const HttpsTransport&) = delete;

  /// Conditional (If-None-Match) after the first fetch: a 304 returns the bytes fetched before.
  /// An envelope another transport to the same parent got from a long poll in the last 5 s, and
  /// this one has not, is returned without a request (the cycle a poll woke).
  Result<std::string> fetch_snapshot() override;
  /// The long poll `?after=N&wait=S` (S at most 300); a new envelope (with an ETag) is kept for
  /// the next fetch_snapshot of any transport to this parent.
  PollResult poll_snapshot(std::uint64_t after_serial, std::chrono::seconds wait) override;
  Status fetch_manifest(const proto::Digest& digest, const Sink& sink,
                        const std::function<Status()>& restart) override;
  Status fetch_file(std::string_view path, std::uint64_t max_bytes, const Sink& sink) override;
  /// GET .tiersync/v1/status (at most 64 KiB); the first call after fetch_manifests returns
  /// what that batch fetched.
  Result<std::string> fetch_status() override;
  /// Asked for in the pipelines of the next fetch_manifests (and forgotten at the next
  /// fetch_snapshot).
  void fetch_document_beside_manifests(std::string_view path, std::size_t max_bytes) override;
  /// GET of a small document; a 404 is nullopt. One fetched beside manifests is returned once.
  Result<std::optional<std::string>> fetch_document(std::string_view path,
                                                    std::size_t max_bytes) override;
  /// Each pooled connection keeps up to `pipeline_depth` requests in flight (HTTP/1.1
  /// pipelining), answered in order, and more, up to 256, while the bytes in flight stay below
  /// twice the measured bandwidth-delay product (link()). An answer whose
  /// size is not its file's ends its connection; the unanswered requests go out again elsewhere,
  /// and pipelining stops for this parent (faults()).
  Status fetch_files(std::span<FileRequest> requests) override;
  /// As fetch_files (a manifest's size is not known ahead: its receiver's hash is the check).
  /// The parent's status goes in the same pipelines, kept for the next fetch_status().
  Status fetch_manifests(std::span<ManifestRequest> requests) override;
  std::uint64_t faults() const override;

  /// What the pipelines follow (docs/protocol.md, "Pipelining"): the smallest round trip
  /// measured, one connection's peak rate, and the most requests in flight on one connection
  /// during the last batch.
  struct Link {
    std::optional<std::chrono::milliseconds> round_trip;
    double bytes_per_second = 0;
    std::size_t deepest_pipeline = 0;
  };
  Link link() const;
  std::string describe() const override;
  void set_stop_flag(const std::atomic<bool>* stop) override;

 private:
  struct Impl;
  explicit HttpsTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tiersync::transport
