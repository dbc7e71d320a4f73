#include "daemon/sync/history.h"

#include <sys/stat.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "daemon/sync/crash.h"
#include "daemon/sync/fs.h"

namespace tiersync::sync {

using nlohmann::json;

namespace {

// A history covers at most a year of records per partition; more is a damaged file.
constexpr std::size_t kMaxRecordsPerPartition = 4096;

bool covers(const PartitionSize& a, const PartitionSize& b) {
  return a.files >= b.files && a.bytes >= b.bytes && a.index_files >= b.index_files;
}

}  // namespace

GuardHistory GuardHistory::load(const std::filesystem::path& file, std::string* warning) {
  GuardHistory h;
  struct stat st;
  auto exists = lstat_path(file, st);
  if (!exists || !*exists) return h;
  auto bytes = read_file(file, 64u << 20);
  auto damaged = [&](const std::string& why) {
    if (warning)
      *warning = file.string() + ": damaged (" + why +
                 "); the guard compares with the applied state only until it is rewritten";
    return GuardHistory();
  };
  if (!bytes) return damaged(bytes.message());
  json j = json::parse(*bytes, nullptr, false);
  if (!j.is_object()) return damaged("not JSON");
  auto parts = j.find("partitions");
  if (parts == j.end() || !parts->is_object()) return damaged("no partitions");
  for (const auto& [name, list] : parts->items()) {
    if (!list.is_array() || list.size() > kMaxRecordsPerPartition)
      return damaged("partition \"" + name + "\" is not a list of records");
    auto& records = h.records_[name];
    for (const auto& r : list) {
      if (!r.is_array() || r.size() != 4 || !r[0].is_number_integer() ||
          !r[1].is_number_unsigned() || !r[2].is_number_unsigned() || !r[3].is_number_unsigned())
        return damaged("partition \"" + name +
                       "\" has a record that is not [time, files, bytes, "
                       "index_files]");
      records.push_back(
          {r[0].get<std::int64_t>(),
           {r[1].get<std::uint64_t>(), r[2].get<std::uint64_t>(), r[3].get<std::uint64_t>()}});
    }
  }
  return h;
}

Status GuardHistory::save(const std::filesystem::path& file) const {
  json parts = json::object();
  for (const auto& [name, records] : records_) {
    json list = json::array();
    for (const auto& r : records)
      list.push_back({r.time, r.size.files, r.size.bytes, r.size.index_files});
    parts[name] = std::move(list);
  }
  json j = {{"partitions", std::move(parts)}};
  crash_point();
  return write_file_atomic(file, j.dump() + "\n", 0644, /*durable=*/true);
}

PartitionSize GuardHistory::baseline(const std::string& partition, const PartitionSize& current,
                                     std::int64_t now, unsigned window_hours) const {
  PartitionSize high = current;
  if (window_hours == 0) return high;
  const std::int64_t since = now - static_cast<std::int64_t>(window_hours) * 3600;
  auto it = records_.find(partition);
  if (it == records_.end()) return high;
  for (const auto& r : it->second) {
    if (r.time < since) continue;
    high.files = std::max(high.files, r.size.files);
    high.bytes = std::max(high.bytes, r.size.bytes);
    high.index_files = std::max(high.index_files, r.size.index_files);
  }
  return high;
}

void GuardHistory::record(const std::string& partition, const PartitionSize& size, std::int64_t now,
                          unsigned window_hours) {
  auto& records = records_[partition];
  const std::int64_t since = now - static_cast<std::int64_t>(window_hours) * 3600;
  // A record from the future was made while the clock was wrong (a clock set back since): it
  // counts as made now, so that it leaves the window one window from now instead of ruling
  // the baseline until the clock catches up with it.
  for (auto& r : records) r.time = std::min(r.time, now);
  // A record older than the window, or one the new record covers in every field, can never be
  // the high-water mark again: the new one outlives it.
  std::erase_if(records, [&](const Record& r) { return r.time < since || covers(size, r.size); });
  if (window_hours > 0) records.push_back({now, size});
  // Bounded as load() expects; what goes first is the oldest, the first to leave the window.
  if (records.size() > kMaxRecordsPerPartition)
    records.erase(records.begin(), records.end() - kMaxRecordsPerPartition);
  if (records.empty()) records_.erase(partition);
  changed_ = true;
}

void GuardHistory::reset(const std::string& partition, const PartitionSize& size,
                         std::int64_t now) {
  records_[partition] = {{now, size}};
  changed_ = true;
}

void GuardHistory::forget(const std::string& partition) {
  changed_ = records_.erase(partition) > 0 || changed_;
}

}  // namespace tiersync::sync
