#pragma once
/// A parent tree written by hand with proto/: it serves whatever a test puts there, including
/// what no honest tier0 would ever publish (in the spirit of Envoy's fake upstreams).

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "proto/dsse.h"
#include "proto/keys.h"
#include "proto/manifest.h"
#include "proto/snapshot.h"
#include "tests/integration/support.h"

namespace tiersync::it {

/// Manifests of every partition of `model`, entries sorted, `index` set on kIndexName.
std::map<std::string, proto::Manifest> manifests_of(const TreeModel& model);

/// Everything a parent serves for one snapshot, with hooks to break any part of it. `publish`
/// writes it; each hook runs at the point named.
struct Offer {
  TreeModel content;  ///< the files the parent serves
  std::map<std::string, proto::Manifest> manifests;
  /// partition -> bytes used instead of encode_manifest (the snapshot names their hash).
  std::map<std::string, std::string> raw_manifests;
  /// partition -> bytes served under the name (hash) of the manifest's real bytes.
  std::map<std::string, std::string> served_instead;
  /// Partitions whose manifest file is not written at all.
  std::set<std::string> withheld;
  /// Files written anywhere (absolute paths), e.g. where an escaping path would lead.
  std::map<fs::path, std::string> files_outside;
  /// Files written below the parent tree under a raw (unchecked) relative name.
  std::map<std::string, std::string> raw_files;

  std::uint64_t serial = 1;
  std::string origin = "origin";
  std::int64_t created = 0;  ///< 0: now - 60 s
  std::int64_t expires = 0;  ///< 0: now + 7 days
  std::string payload_type = std::string(proto::kSnapshotPayloadType);
  std::vector<proto::PrivateKey> signers;
  /// Runs after the partition references are filled in, before signing.
  std::function<void(proto::Snapshot&)> patch_snapshot;
  /// Runs after signing.
  std::function<void(proto::Envelope&)> patch_envelope;
  /// Served instead of the envelope when set.
  std::optional<std::string> raw_envelope;
  /// Runs last, on the written parent tree.
  std::function<void(const fs::path& tree)> patch_tree;

  /// An honest offer of `model`.
  static Offer of(const TreeModel& model, std::uint64_t serial, const proto::PrivateKey& key);
};

class FakeParent {
 public:
  explicit FakeParent(fs::path tree) : tree_(std::move(tree)) {}

  const fs::path& tree() const { return tree_; }
  std::string url() const { return "file://" + tree_.string(); }

  /// Replaces everything the parent serves by `offer`.
  void publish(const Offer& offer) const;

 private:
  fs::path tree_;
};

/// An HTTP parent on 127.0.0.1 (its port is the kernel's pick, known before any daemon starts)
/// serving the files below `tree` (a published tree), one response per connection. A GET of a
/// path given to stall() gets its headers and its first bytes, then silence: the stalled fetch a
/// hung or hostile parent makes, until release() or destruction. Every request the parent saw
/// is counted; every thread is joined on destruction.
class StallingParent {
 public:
  explicit StallingParent(fs::path tree);
  ~StallingParent();
  StallingParent(const StallingParent&) = delete;
  StallingParent& operator=(const StallingParent&) = delete;

  std::string url() const;
  /// From now on a GET of `path` (a tree path, no leading '/') sends `first_bytes` bytes (more on
  /// each repeated request, so a resumed request brings new bytes), then nothing.
  void stall(std::string path, std::size_t first_bytes);
  /// Lets every stalled response go on to its end; nothing stalls any more.
  void release();
  /// Waits at most `limit` until a response is stalled; true once one is.
  bool wait_stalled(std::chrono::seconds limit);

 private:
  void accept_loop();
  void answer(int fd);

  fs::path tree_;
  int listen_fd_ = -1;
  std::uint16_t port_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::size_t> stalled_;  ///< path -> first bytes (guarded by mu_)
  std::map<std::string, int> requests_;         ///< path -> GETs seen (guarded by mu_)
  int holding_ = 0;                             ///< responses stalled now (guarded by mu_)
  bool released_ = false;                       ///< guarded by mu_
  std::atomic<bool> stopping_{false};
  std::vector<std::thread> connections_;  ///< guarded by mu_
  std::thread acceptor_;
};

/// Writes `key`'s public half as an SPKI PEM file.
void write_public_key(const proto::PrivateKey& key, const fs::path& file);

}  // namespace tiersync::it
