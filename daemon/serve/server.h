#pragma once
/// The built-in HTTP(S) server (docs/protocol.md, "HTTP endpoints"): the applied snapshot with a
/// long-poll, its manifests, the files of the applied tree, status and metrics. Asio and Beast stay
/// in server.cpp.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/ops/config.h"
#include "daemon/sync/plan.h"
#include "daemon/sync/state.h"
#include "proto/digest.h"
#include "proto/manifest.h"
#include "proto/result.h"

namespace tiersync::serve {

namespace fs = std::filesystem;

/// Prometheus text from the rest of the daemon; called on a server thread, so it must be
/// thread-safe.
using MetricsProvider = std::function<std::string()>;

/// What is served, immutable once published: requests in flight keep the view they started with.
struct ServedView {
  std::string envelope;         ///< the applied snapshot's envelope, byte for byte ("": none yet)
  std::uint64_t serial = 0;     ///< its serial (0: nothing applied yet)
  std::size_t depth = 0;        ///< segments of its layout: finds a path's partition
  sync::ManifestSet manifests;  ///< its manifests: the only paths served (files and symlinks)
  std::set<proto::Digest> manifest_hashes;           ///< this snapshot's manifests
  std::set<proto::Digest> previous_manifest_hashes;  ///< the previous snapshot's, still fetched
  std::string pins;                                  ///< the pins document of `serial` ("": none)
  std::uint64_t previous_serial = 0;  ///< the serial served before, and its pins ("": none)
  std::string previous_pins;
  std::string approvals;  ///< the approvals offered to children (.tiersync/v1/approvals; "": none)
  std::string status_json;  ///< body of /.tiersync/v1/status
  MetricsProvider metrics;  ///< first part of /metrics (may be empty)

  /// The entry of the applied snapshot at `path`, or nullptr.
  const proto::Entry* find(std::string_view path) const;
  /// True when manifest `d` may be served (this snapshot's or the previous one's).
  bool serves_manifest(const proto::Digest& d) const {
    return manifest_hashes.count(d) || previous_manifest_hashes.count(d);
  }
};

/// Builds the view of `applied` from its manifests already in memory (shared, not copied).
/// `previous`, the view served until now, keeps its manifests fetchable for children still
/// reading its snapshot. An empty `status_json` gets a minimal document (serial, origin).
std::shared_ptr<const ServedView> make_view(const sync::Applied& applied,
                                            sync::ManifestSet manifests,
                                            std::string status_json = {},
                                            MetricsProvider metrics = {},
                                            const ServedView* previous = nullptr);

/// make_view() of the applied snapshot in `state`, its manifests read from the store; with
/// nothing applied yet, an empty view (serial 0: the snapshot URL answers 503).
Result<std::shared_ptr<const ServedView>> load_view(const sync::StateStore& state,
                                                    std::string status_json = {},
                                                    MetricsProvider metrics = {},
                                                    const ServedView* previous = nullptr);

/// Limits against slow, hostile or crowding clients; the defaults are what tiersyncd uses. The
/// server lowers max_connections and max_long_polls to fit the descriptor limit (see
/// docs/configuration.md, `serve`).
struct ServerLimits {
  std::size_t max_connections = 16384;          ///< beyond it, new connections are closed at once
  std::size_t max_long_polls = 8192;            ///< snapshot long polls held at once; more: 503
  std::size_t max_long_polls_per_address = 32;  ///< of them from one client address; more: 503
  /// Descriptors the server leaves to the rest of the node (its lock, state and journal files,
  /// downloads from the parent, the control socket, logs), whatever the crowd.
  std::size_t reserved_descriptors = 256;
  std::size_t max_header_bytes = 8 * 1024;  ///< request line and fields; more: 431
  std::size_t max_body_bytes = 4 * 1024;    ///< requests are GET/HEAD; more: 413
  unsigned max_requests_per_connection = 1000;
  std::chrono::seconds handshake_timeout{10};  ///< TLS handshake
  /// A new connection's first byte, and a request's whole header from its first byte (slowloris).
  std::chrono::seconds header_timeout{10};
  std::chrono::seconds idle_timeout{30};   ///< keep-alive: between two requests
  std::chrono::seconds write_timeout{60};  ///< per chunk written (a stalled reader)
  std::chrono::seconds max_wait{300};      ///< long-poll `wait` is clamped to this
  std::chrono::seconds stop_timeout{5};    ///< stop(): in-flight responses get this long
  unsigned threads = 2;
};

/// The caps in force once fitted to the descriptor limit.
struct ServerCaps {
  std::size_t connections = 0;
  std::size_t long_polls = 0;
  std::size_t long_polls_per_address = 0;
  std::size_t cached_folders = 0;      ///< folder descriptors kept open (DirCache)
  std::uint64_t descriptor_limit = 0;  ///< the soft RLIMIT_NOFILE they were fitted to
};

/// ServerLimits from the configuration's `serve` section, the rest at their defaults.
ServerLimits server_limits(const ops::ServeConfig& serve);

/// Counters, for tests and the operator.
struct ServerStats {
  std::uint64_t connections_accepted = 0;
  std::uint64_t connections_rejected = 0;  ///< over max_connections
  std::uint64_t connections_active = 0;
  std::uint64_t requests = 0;
  std::uint64_t long_polls_waiting = 0;
  std::uint64_t long_polls_refused = 0;    ///< answered 503: over a long-poll cap
  std::uint64_t long_polls_abandoned = 0;  ///< ended by their client closing the connection
  std::uint64_t accept_failures = 0;       ///< accept() errors (out of descriptors, say)
  ServerCaps caps;
};

/// Listens on every configured address (HTTPS, or plain HTTP with `"tls": false`) and serves the
/// last published view from `tree` on its own threads. Not copyable; stop() or the destructor
/// ends it.
class Server {
 public:
  Server(std::vector<ops::ListenConfig> listen, fs::path tree, ServerLimits limits = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Loads the TLS certificates, binds every listener and starts serving. All or nothing; an
  /// error names the listen entry and the reason. Call once.
  Status start();
  /// The bound port of each listen entry, in configuration order (port 0 becomes the real one).
  std::vector<std::uint16_t> ports() const;
  /// Loads the certificate and key of every TLS listener again, from `listen` (a reloaded
  /// configuration, entries matched by position): new connections get them, open ones keep
  /// theirs. All or nothing: on an error, which names the entry and the file, the certificates
  /// in use stay. Listeners are not rebound: a changed address, port or `tls` flag is an error.
  Status reload_tls(const std::vector<ops::ListenConfig>& listen);
  /// Serves `view` from now on and answers the long-polls it satisfies. Thread-safe.
  void publish(std::shared_ptr<const ServedView> view);
  /// Stops accepting, closes idle connections, lets responses in flight finish for at most
  /// `stop_timeout`, then closes the rest. Idempotent.
  void stop();
  ServerStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tiersync::serve
