#pragma once
/// file:// parents: a local or NFS-mounted tree published by another node.

#include <filesystem>

#include "daemon/transport/transport.h"

namespace tiersync::transport {

class FileTransport final : public Transport {
 public:
  explicit FileTransport(std::filesystem::path root) : root_(std::move(root)) {}

  Result<std::string> fetch_snapshot() override;
  Result<std::string> fetch_manifest(const proto::Digest& digest) override;
  Status fetch_file(std::string_view path, std::uint64_t max_bytes, const Sink& sink) override;
  std::string describe() const override { return "file://" + root_.string(); }

 private:
  Result<std::string> read_small(const std::filesystem::path& file, std::size_t limit);
  std::filesystem::path root_;
};

}  // namespace tiersync::transport
