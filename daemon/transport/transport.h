#pragma once
/// Where a parent's bytes come from: an interface, with file:// behind it (https:// joins later).

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "proto/digest.h"
#include "proto/result.h"

namespace tiersync::transport {

/// Receives a file's bytes in order; returns an error to stop the transfer.
using Sink = std::function<Status(const char* data, std::size_t size)>;

class Transport {
 public:
  virtual ~Transport() = default;
  /// The parent's snapshot envelope, as served (not yet verified).
  virtual Result<std::string> fetch_snapshot() = 0;
  /// The bytes of a manifest (not yet checked against `digest`).
  virtual Result<std::string> fetch_manifest(const proto::Digest& digest) = 0;
  /// Streams the file at `path` (a validated tree path) into `sink`; stops at `max_bytes` + 1.
  virtual Status fetch_file(std::string_view path, std::uint64_t max_bytes, const Sink& sink) = 0;
  /// The parent, for messages.
  virtual std::string describe() const = 0;
};

/// A transport for `url`: file:///path/to/parent/tree. Errors name the URL.
Result<std::unique_ptr<Transport>> make_transport(const std::string& url);

}  // namespace tiersync::transport
