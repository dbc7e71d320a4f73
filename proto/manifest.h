#pragma once
/// The manifest of one partition: its entries, held as compact records (SPEC section 3).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "proto/digest.h"
#include "proto/result.h"

namespace tiersync::proto {

/// Manifests larger than this are refused before parsing.
inline constexpr std::size_t kMaxManifestBytes = 512u << 20;

/// One file or symlink. About 88 bytes plus the path: manifests of every partition of a large
/// tree are held in memory at once, so no per-entry JSON objects and no second string.
struct Entry {
  /// The path; for a symlink, the path, a NUL and the target (paths never contain NUL).
  std::string text;
  Digest sha256{};
  std::uint64_t size = 0;
  std::int64_t mtime = 0;
  std::uint32_t mode = 0;  ///< permission bits (e.g. 0644)
  bool index = false;      ///< installed after every other file of its partition
  bool link = false;

  static Entry file(std::string path, std::uint64_t size, const Digest& sha256, std::int64_t mtime,
                    std::uint32_t mode, bool index = false);
  static Entry symlink(std::string_view path, std::string_view target);

  std::string_view path() const {
    return link ? std::string_view(text).substr(0, text.find('\0')) : std::string_view(text);
  }
  std::string_view target() const {
    return link ? std::string_view(text).substr(text.find('\0') + 1) : std::string_view();
  }
  /// Same content and metadata (what a relay must reproduce).
  bool same_as(const Entry& o) const {
    return text == o.text && link == o.link && sha256 == o.sha256 && size == o.size &&
           mtime == o.mtime && mode == o.mode && index == o.index;
  }
};

struct Manifest {
  std::string partition;
  std::vector<Entry> entries;  ///< sorted bytewise by path, unique

  std::uint64_t total_bytes() const;
  /// The entry at `path`, or nullptr (binary search).
  const Entry* find(std::string_view path) const;
};

/// Canonical bytes: the same manifest always encodes to the same bytes (it is content-addressed).
std::string encode_manifest(const Manifest& manifest);

/// Parses and validates a manifest: every path rule, sorting, uniqueness, membership of
/// `expected_partition` under a layout of `depth` segments, symlink confinement, no entry below
/// another entry. The whole document is refused on the first broken rule, naming the entry.
Result<Manifest> decode_manifest(std::string_view bytes, std::string_view expected_partition,
                                 std::size_t depth);

/// Runs the same checks on a manifest built in memory (tier0, before publishing).
Status validate_manifest(const Manifest& manifest, std::size_t depth);

}  // namespace tiersync::proto
