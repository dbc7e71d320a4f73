#include "tests/integration/fake_parent.h"

#include <ctime>

#include "proto/digest.h"

namespace tiersync::it {

std::map<std::string, proto::Manifest> manifests_of(const TreeModel& model) {
  std::map<std::string, proto::Manifest> out;
  for (const auto& [path, spec] : model) {
    proto::Manifest& m = out[partition_of(path)];
    m.partition = partition_of(path);
    if (spec.link) {
      m.entries.push_back(proto::Entry::symlink(path, spec.bytes));
    } else {
      bool index = fs::path(path).filename() == kIndexName;
      m.entries.push_back(proto::Entry::file(path, spec.bytes.size(), proto::sha256(spec.bytes),
                                             spec.mtime, spec.mode, index));
    }
  }
  // std::map orders std::string keys bytewise, as manifests require.
  return out;
}

Offer Offer::of(const TreeModel& model, std::uint64_t serial, const proto::PrivateKey& key) {
  Offer o;
  o.content = model;
  o.manifests = manifests_of(model);
  o.serial = serial;
  o.signers = {key};
  return o;
}

void FakeParent::publish(const Offer& o) const {
  fs::remove_all(tree_);
  fs::create_directories(tree_ / ".tiersync/v1/manifests");
  materialize(o.content, tree_);
  for (const auto& [file, bytes] : o.files_outside) write_file(file, bytes);
  for (const auto& [rel, bytes] : o.raw_files) write_file(tree_.string() + "/" + rel, bytes);

  std::int64_t now = std::time(nullptr);
  proto::Snapshot s;
  s.origin = o.origin;
  s.serial = o.serial;
  s.created = o.created ? o.created : now - 60;
  s.expires = o.expires ? o.expires : now + 7 * 86400;
  s.layout = std::string(kLayout);
  s.depth = kDepth;
  for (const auto& [partition, manifest] : o.manifests) {
    auto raw = o.raw_manifests.find(partition);
    std::string bytes = raw != o.raw_manifests.end() ? raw->second : encode_manifest(manifest);
    proto::Digest digest = proto::sha256(bytes);
    if (!o.withheld.count(partition)) {
      auto served = o.served_instead.find(partition);
      write_file(tree_ / ".tiersync/v1/manifests" / proto::to_hex(digest),
                 served != o.served_instead.end() ? served->second : bytes);
    }
    s.partitions[partition] = {digest, manifest.entries.size(), manifest.total_bytes()};
  }
  if (o.patch_snapshot) o.patch_snapshot(s);
  proto::Envelope envelope =
      proto::sign_envelope(o.payload_type, proto::encode_snapshot(s), o.signers);
  if (o.patch_envelope) o.patch_envelope(envelope);
  write_file(tree_ / ".tiersync/v1/snapshot",
             o.raw_envelope ? *o.raw_envelope : proto::encode_envelope(envelope));
  if (o.patch_tree) o.patch_tree(tree_);
}

void write_public_key(const proto::PrivateKey& key, const fs::path& file) {
  write_file(file, key.public_key().to_pem());
}

}  // namespace tiersync::it
