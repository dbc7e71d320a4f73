#pragma once
/// A parent tree written by hand with proto/: it serves whatever a test puts there, including
/// what no honest tier0 would ever publish (in the spirit of Envoy's fake upstreams).

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
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

/// Writes `key`'s public half as an SPKI PEM file.
void write_public_key(const proto::PrivateKey& key, const fs::path& file);

}  // namespace tiersync::it
