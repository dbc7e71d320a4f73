#pragma once
/// Walking a tree and hashing its files, with a cache so that an unchanged file is never read
/// twice.

#include <sys/stat.h>

#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/sync/fs.h"
#include "proto/digest.h"
#include "proto/result.h"

namespace tiersync::sync {

namespace fs = std::filesystem;

struct ScannedFile {
  std::string path;  ///< relative to the scanned root, '/'-separated
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
  std::uint64_t ino = 0;
  std::uint64_t dev = 0;
  std::uint32_t mode = 0;  ///< permission bits
  bool link = false;
  std::string target;  ///< for a symlink
};

struct ScanResult {
  std::vector<ScannedFile> files;    ///< sorted bytewise by path
  std::vector<std::string> skipped;  ///< what was left out and why, one line each
};

/// Walks `root` without following symlinks. Leaves out the top-level `.tiersync/` and
/// `.tiersync-busy`, paths that break the path rules (docs/protocol.md), symlinks that leave the
/// tree and special files (each noted in `skipped`).
Result<ScanResult> scan_tree(const fs::path& root, bool sorted = true);

/// Sorts a scan made with `sorted = false` (and its `skipped` lines).
void sort_scan(ScanResult& scan);

/// A partial scan, for tier0's incremental publish (docs/architecture.md, "Incremental
/// publish"): exactly what scan_tree() gives for the files of the root partition, of each of
/// `partitions` (names under a layout of `depth` segments) and of every partition below each of
/// `subtrees` (paths of fewer than `depth` components), and nothing else. A partition or subtree
/// that is gone, or is now a symlink or a file, has no files (a symlink there is the root
/// partition's). Sorted.
Result<ScanResult> scan_partitions(const fs::path& root, std::size_t depth,
                                   const std::set<std::string>& partitions,
                                   const std::set<std::string>& subtrees);

/// scan_fingerprint() of each partition's files (unsalted), from one walk that keeps no file:
/// the daemon's safety net compares two of them to find the partitions whose change inotify did
/// not report. Memory follows the number of partitions, not of files.
Result<std::map<std::string, std::string>> partition_prints(const fs::path& root,
                                                            std::size_t depth);

/// A 128-bit fingerprint of everything a scan says about each file (path, size, mtime, inode,
/// mode, symlink target) and of `salt`, independent of the order of `files`: two scans with the
/// same fingerprint produce the same manifests, so tier0's no-op needs no sort and no hashing.
std::string scan_fingerprint(const ScanResult& scan, std::string_view salt);

/// True when `st` (of an open file) is the regular file `f` describes: inode, device, size, mtime.
bool same_file(const struct stat& st, const ScannedFile& f);

/// Streams a file through SHA-256 (the last component is not followed).
Result<proto::Digest> hash_file(const fs::path& path, std::uint64_t* size_out = nullptr);

/// Opens the regular file `rel` (a validated relative path) below the folder `dir_fd`, following
/// no symlink at any component (its folder through open_dir_beneath(), the file O_NOFOLLOW): a
/// folder or file swapped for a symlink meanwhile gives an error, never another file. `shown`
/// names `dir_fd` in errors. (tier0's source walk.)
Result<UniqueFd> open_file_beneath(int dir_fd, std::string_view rel, const fs::path& shown);

/// What copy_and_hash() wrote.
struct CopiedFile {
  std::uint64_t size = 0;
  proto::Digest sha256{};
  bool cloned = false;  ///< shares extents with the source (FICLONE), no byte copied
};

/// Copies the open file `in_fd` into the empty file `out_fd` (opened for reading and writing):
/// a reflink (FICLONE) where the file system can, else copy_file_range, else read and write;
/// at most `max_bytes` are copied. Then hashes what `out_fd` holds: the digest is the copy's,
/// whatever happens to the source meanwhile.
Result<CopiedFile> copy_and_hash(int in_fd, int out_fd, const fs::path& out_path,
                                 std::uint64_t max_bytes);

/// size, mtime and inode -> SHA-256, persisted in state_dir in a compact binary form. Loading
/// keeps the file's bytes and points into them: a no-op rescan of a large tree allocates nothing
/// per file.
class HashCache {
 public:
  /// A missing file gives an empty cache; a damaged one too, with `warning` set.
  static HashCache load(const fs::path& file, std::string* warning = nullptr);
  Status save(const fs::path& file) const;

  /// tier0's cache is one file per partition in the folder `dir` (docs/architecture.md,
  /// "State"), so that a publish that rescans a few partitions reads and writes only theirs.
  /// Loads the files of `only` (nullptr: every file in `dir`); a damaged file is left out, with
  /// `warning` set.
  static HashCache load_partitions(const fs::path& dir, const std::set<std::string>* only,
                                   std::string* warning = nullptr);
  /// Writes the file of each partition of `only` (nullptr: of every partition, and the files of
  /// partitions with no record left are removed); a partition with no record has no file.
  Status save_partitions(const fs::path& dir, std::size_t depth,
                         const std::set<std::string>* only) const;
  /// An earlier version's single file becomes one file per partition (then it is removed).
  static void migrate_single_file(const fs::path& file, const fs::path& dir, std::size_t depth);

  /// Room for `files` records when the cache is empty (a first publish, or a lost cache): the
  /// records are not copied as they grow.
  void expect(std::size_t files);
  /// The cached digest if `f` is unchanged since it was hashed.
  std::optional<proto::Digest> lookup(const ScannedFile& f);
  /// Records `f`'s digest (a copy of its path is kept). Cheapest in path order, as a sorted
  /// scan gives them.
  void store(const ScannedFile& f, const proto::Digest& digest);
  /// Drops what is known of `path`: its next digest_of() reads it (a file rewritten in place
  /// with its size and mtime kept, which the cache cannot see).
  void forget(std::string_view path);
  /// Hashes `f` under `root` unless the cache knows it; counts reads in `hashed`. The file is
  /// opened with open_file_beneath() and must still be the scanned one (inode, size, mtime).
  Result<proto::Digest> digest_of(const fs::path& root, const ScannedFile& f);

  std::size_t size() const { return records_.size(); }
  std::size_t hashed() const { return hashed_; }
  /// True when the saved form would differ: files hashed, or files gone since the last save.
  bool needs_save() const { return dirty_ || used_ != records_.size(); }

 private:
  struct Record {
    std::string_view path;  ///< into bytes_ or owned_
    std::uint64_t size;
    std::int64_t mtime_ns;
    std::uint64_t ino;
    proto::Digest digest;
    bool used;
  };
  Record* find(std::string_view path);
  /// Appends the records of `file`; false when it is damaged (its records are left out).
  bool load_file(const fs::path& file);
  void sort_loaded();
  std::string encode(const std::vector<const Record*>& records) const;
  /// A copy of `path` in the arena.
  std::string_view keep(std::string_view path);

  // Memory per stored record is the record and its path's bytes (docs/performance.md, "Where
  // the memory goes"): no string object, allocation or index node per path.
  std::deque<std::string> bytes_;               ///< the loaded files
  std::vector<std::unique_ptr<char[]>> arena_;  ///< blocks holding the paths stored since
  char* arena_next_ = nullptr;                  ///< the free end of the last block
  std::size_t arena_left_ = 0;                  ///< its size
  /// The loaded records sorted by path, then the stored ones, sorted by path too (a store out
  /// of order is inserted in place).
  std::vector<Record> records_;
  std::size_t sorted_ = 0;  ///< how many loaded records lead records_
  std::size_t hashed_ = 0;
  std::size_t used_ = 0;
  bool dirty_ = false;
};

}  // namespace tiersync::sync
