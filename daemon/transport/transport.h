#pragma once
/// Where a parent's bytes come from: an interface, with file://, https:// and http:// behind it.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "proto/digest.h"
#include "proto/result.h"

namespace tiersync::transport {

/// Receives a file's bytes in order; returns an error to stop the transfer.
using Sink = std::function<Status(const char* data, std::size_t size)>;

/// One file of a batch (Transport::fetch_files).
struct FileRequest {
  std::string path;  ///< a validated tree path
  /// The expected size: a larger body is an error, and an HTTP(S) answer announcing another
  /// size is not this file's (a parent answering pipelined requests out of order).
  std::uint64_t max_bytes = 0;
  Sink sink;
  /// Called when the parent sends the file again from its first byte after the sink already
  /// received some (a resume the parent refused): the receiver forgets what it got (truncates,
  /// resets its hash). Without it, the transport discards the bytes the sink already has.
  std::function<Status()> restart;
  Status result;  ///< set by fetch_files
  /// The sink already holds the file's first `offset` bytes (a download resumed across runs):
  /// asked for with a Range where the parent takes one, else dropped as they arrive.
  std::uint64_t offset = 0;
};

/// One manifest of a batch (Transport::fetch_manifests).
struct ManifestRequest {
  proto::Digest digest;
  Sink sink;                        ///< as for fetch_manifest: the receiver hashes what arrives
  std::function<Status()> restart;  ///< as for fetch_manifest
  Status result;                    ///< set by fetch_manifests
};

/// The outcome of a long poll: the envelope, or nothing when the serial did not move. A failure
/// the parent answered `503` with a `Retry-After` in seconds (it is stopping, or over its caps:
/// docs/protocol.md) carries that delay as sent, saturated at a day; the poller bounds it.
struct [[nodiscard]] PollResult : Result<std::optional<std::string>> {
  using Result::Result;
  std::optional<std::chrono::seconds> retry_after;  ///< with an error only
};

class Transport {
 public:
  virtual ~Transport() = default;
  /// The parent's snapshot envelope, as served (not yet verified).
  virtual Result<std::string> fetch_snapshot() = 0;
  /// Waits up to `wait` for a snapshot whose serial exceeds `after_serial` (a parent that cannot
  /// hold the request answers at once). nullopt: not modified.
  virtual PollResult poll_snapshot(std::uint64_t /*after_serial*/, std::chrono::seconds /*wait*/) {
    auto bytes = fetch_snapshot();
    if (!bytes) return bytes.error();
    return std::optional<std::string>(std::move(*bytes));
  }
  /// Streams the manifest named `digest` into `sink` (not checked against `digest`: the receiver
  /// hashes what arrives), at most proto::kMaxManifestBytes. `restart` is called when the parent
  /// sends it again from its first byte after the sink got some.
  virtual Status fetch_manifest(const proto::Digest& digest, const Sink& sink,
                                const std::function<Status()>& restart) = 0;
  /// Streams the file at `path` (a validated tree path) into `sink`; stops at `max_bytes` + 1.
  virtual Status fetch_file(std::string_view path, std::uint64_t max_bytes, const Sink& sink) = 0;
  /// Fetches a batch, concurrently where the transport can; sets each request's `result`. After
  /// the first failure no further request starts (those get an error saying so). Sinks are
  /// called on the calling thread, never two at once. Returns the first failure.
  virtual Status fetch_files(std::span<FileRequest> requests) {
    Status first;
    for (auto& req : requests) {
      std::uint64_t skip = req.offset;
      const Sink from_offset = [&](const char* data, std::size_t size) -> Status {
        const std::size_t drop = static_cast<std::size_t>(std::min<std::uint64_t>(skip, size));
        skip -= drop;
        return drop == size ? Status{} : req.sink(data + drop, size - drop);
      };
      req.result = first ? fetch_file(req.path, req.max_bytes, from_offset)
                         : Status(make_error(req.path + ": not fetched after an earlier failure"));
      if (first && !req.result) first = req.result;
    }
    return first;
  }
  /// Fetches a batch of manifests, concurrently where the transport can; sets each request's
  /// `result`. After the first failure no further request starts. Sinks are called on the
  /// calling thread, never two at once. Returns the first failure.
  virtual Status fetch_manifests(std::span<ManifestRequest> requests) {
    Status first;
    for (auto& req : requests) {
      req.result = first
                       ? fetch_manifest(req.digest, req.sink, req.restart)
                       : Status(make_error(describe() + ": manifest " + proto::to_hex(req.digest) +
                                           " not fetched after an earlier failure"));
      if (first && !req.result) first = req.result;
    }
    return first;
  }
  /// Answers the parent got wrong so far (one that did not belong to its request, bytes nobody
  /// asked for): each was detected, its connection dropped and its requests asked again. The
  /// caller counts them against the parent's health.
  virtual std::uint64_t faults() const { return 0; }
  /// The parent's status JSON (not verified: informational, like a Debian trace file). A parent
  /// that serves none (file://, a plain static server) gives an error.
  virtual Result<std::string> fetch_status() {
    return make_error(describe() + " serves no status");
  }
  /// A small document below the parent's tree (`path`, e.g. ".tiersync/v1/pins/58"), whole in
  /// memory, at most `max_bytes`; nullopt when the parent has none (404, no such file).
  virtual Result<std::optional<std::string>> fetch_document(std::string_view path,
                                                            std::size_t max_bytes) = 0;
  /// Asks for the small document at `path` (as fetch_document) in the pipelines of the next
  /// fetch_manifests batch, so that it costs no round trip of its own; the next
  /// fetch_document(path) returns that answer. An optimisation only: a transport without
  /// batches fetches the document when asked.
  virtual void fetch_document_beside_manifests(std::string_view /*path*/,
                                               std::size_t /*max_bytes*/) {}
  /// The parent, for messages.
  virtual std::string describe() const = 0;
  /// A flag that, once raised, ends whatever fetch is running within a fraction of a second
  /// (with an error saying so) and refuses new ones; replaces TransportOptions::stop. The flag
  /// must outlive the transport or be replaced first.
  virtual void set_stop_flag(const std::atomic<bool>* /*stop*/) {}
};

/// How to reach an HTTP(S) parent (`upstream`, docs/configuration.md); file:// ignores it.
struct TransportOptions {
  std::filesystem::path ca_file;  ///< empty: the system's trust store
  unsigned connections = 8;       ///< the pool's size (fetch_files' concurrency)
  /// Requests in flight per connection in a batch (HTTP/1.1 pipelining, docs/protocol.md): sent
  /// back to back, answered in order. 1: one at a time.
  unsigned pipeline_depth = 32;
  /// A file larger than this is fetched in ranges of half of it over the pool's connections
  /// (docs/protocol.md, "Large files"); 0: never.
  std::uint64_t range_split_bytes = 8u << 20;
  std::chrono::milliseconds connect_timeout{10'000};  ///< resolve, connect and TLS handshake
  std::chrono::milliseconds read_timeout{30'000};     ///< longest silence while reading or writing
  std::uint64_t max_bytes_per_second = 0;             ///< across the pool; 0: unlimited
  unsigned max_attempts = 4;                          ///< per request, for transient failures
  std::chrono::milliseconds retry_base_delay{200};    ///< doubled per attempt, with jitter
  /// A response body must arrive at this average rate at least, after the grace below: a body of
  /// N bytes fails after grace + N / min_bytes_per_second, however the parent spreads it (the
  /// read timeout alone restarts with every byte). 0: no minimum.
  std::uint64_t min_bytes_per_second = 1024;
  std::chrono::milliseconds min_rate_grace{30'000};
  /// Raised: every fetch ends within about 100 ms with an error (SIGTERM). May be null.
  const std::atomic<bool>* stop = nullptr;
};

/// A transport for `url`: file:///path/to/parent/tree, https://host[:port]/prefix/ or http://...
/// Errors name the URL.
Result<std::unique_ptr<Transport>> make_transport(const std::string& url,
                                                  const TransportOptions& options = {});

}  // namespace tiersync::transport
