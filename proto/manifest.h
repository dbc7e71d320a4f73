#pragma once
/// The manifest of one partition: its entries, held as compact records (docs/protocol.md, "The
/// manifest").

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

/// The only permission bits a published file may carry: no setuid, setgid or sticky bit, nothing
/// writable by group or others (docs/security.md, "Modes"). tier0 publishes `mode & 0755`.
inline constexpr std::uint16_t kPublishableModeBits = 0755;

/// What a manifest's modes are checked against: documents from a parent (and tier0's own) must
/// be publishable; a manifest this node applied before the rule existed still loads.
enum class ModeRule { kPublishable, kAny };

/// One file or symlink: 64 bytes plus the path, exactly. A relay holds every entry of a large
/// tree in memory (the budget is 200 bytes an entry: docs/performance.md, "resident memory per
/// entry"), so no JSON objects, no std::string (32 bytes, and a second allocation size class) and
/// no second string for a symlink's target.
class Entry {
 public:
  Digest sha256{};
  std::uint64_t size = 0;
  std::int64_t mtime = 0;

 private:
  char* text_ = nullptr;  // the path; for a symlink: path, NUL, target (paths hold no NUL)
  std::uint32_t text_size_ = 0;

 public:
  std::uint16_t mode = 0;  ///< permission bits (e.g. 0644)
  bool index = false;      ///< installed after every other file of its partition
  bool link = false;

  Entry() = default;
  Entry(const Entry& o)
      : sha256(o.sha256), size(o.size), mtime(o.mtime), mode(o.mode), index(o.index), link(o.link) {
    assign(o.text());
  }
  Entry(Entry&& o) noexcept { swap(o); }
  Entry& operator=(Entry o) noexcept {
    swap(o);
    return *this;
  }
  ~Entry() { delete[] text_; }

  static Entry file(std::string_view path, std::uint64_t size, const Digest& sha256,
                    std::int64_t mtime, std::uint32_t mode, bool index = false);
  static Entry symlink(std::string_view path, std::string_view target);

  /// The path, and for a symlink NUL and target: what identifies the entry's place and kind.
  std::string_view text() const { return {text_, text_size_}; }
  std::string_view path() const { return link ? text().substr(0, text().find('\0')) : text(); }
  std::string_view target() const {
    return link ? text().substr(text().find('\0') + 1) : std::string_view();
  }
  /// Same content and metadata (what a relay must reproduce).
  bool same_as(const Entry& o) const {
    return text() == o.text() && link == o.link && sha256 == o.sha256 && size == o.size &&
           mtime == o.mtime && mode == o.mode && index == o.index;
  }

 private:
  void assign(std::string_view s);
  void swap(Entry& o) noexcept;
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
/// another entry, modes within kPublishableModeBits (unless `modes` is kAny). The whole document
/// is refused on the first broken rule, naming the entry.
Result<Manifest> decode_manifest(std::string_view bytes, std::string_view expected_partition,
                                 std::size_t depth, ModeRule modes = ModeRule::kPublishable);

/// Runs the same checks on a manifest built in memory (tier0, before publishing).
Status validate_manifest(const Manifest& manifest, std::size_t depth,
                         ModeRule modes = ModeRule::kPublishable);

}  // namespace tiersync::proto
