#pragma once
/// file:// parents: a local or NFS-mounted tree published by another node.

#include <filesystem>

#include "daemon/transport/transport.h"

namespace tiersync::transport {

class FileTransport final : public Transport {
 public:
  explicit FileTransport(std::filesystem::path root, const std::atomic<bool>* stop = nullptr)
      : root_(std::move(root)), stop_(stop) {}

  Result<std::string> fetch_snapshot() override;
  Status fetch_manifest(const proto::Digest& digest, const Sink& sink,
                        const std::function<Status()>& restart) override;
  Status fetch_file(std::string_view path, std::uint64_t max_bytes, const Sink& sink) override;
  Result<std::optional<std::string>> fetch_document(std::string_view path,
                                                    std::size_t max_bytes) override;
  std::string describe() const override { return "file://" + root_.string(); }
  void set_stop_flag(const std::atomic<bool>* stop) override { stop_ = stop; }

 private:
  Result<std::string> read_small(const std::filesystem::path& file, std::size_t limit);
  std::filesystem::path root_;
  const std::atomic<bool>* stop_;
};

}  // namespace tiersync::transport
