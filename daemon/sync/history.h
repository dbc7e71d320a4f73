#pragma once
/// The guard's baseline over time (docs/guard.md, "The window"): the sizes each partition had
/// when this node applied or published it, kept for guard.window_hours.

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "daemon/sync/guard.h"
#include "proto/result.h"

namespace tiersync::sync {

class GuardHistory {
 public:
  /// Reads state_dir/guard-history.json. A missing file is an empty history; a damaged one too,
  /// with `warning` set (the guard then compares with the applied state only).
  static GuardHistory load(const std::filesystem::path& file, std::string* warning);
  /// Written atomically (and durably: a lost history weakens the guard).
  Status save(const std::filesystem::path& file) const;

  /// The high-water mark of `partition` over the records newer than now - window_hours, each
  /// field on its own, with `current` (the applied size) included.
  PartitionSize baseline(const std::string& partition, const PartitionSize& current,
                         std::int64_t now, unsigned window_hours) const;
  /// Records an applied or published size. Drops records older than the window and records that
  /// a newer one covers in every field.
  void record(const std::string& partition, const PartitionSize& size, std::int64_t now,
              unsigned window_hours);
  /// After an approved change: the approved size is the partition's only record.
  void reset(const std::string& partition, const PartitionSize& size, std::int64_t now);
  /// The partition is gone (an approved removal).
  void forget(const std::string& partition);

  bool changed() const { return changed_; }

 private:
  struct Record {
    std::int64_t time = 0;
    PartitionSize size;
  };
  std::map<std::string, std::vector<Record>> records_;
  bool changed_ = false;
};

}  // namespace tiersync::sync
