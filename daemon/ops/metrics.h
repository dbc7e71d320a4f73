#pragma once
/// The process's counters for /metrics: what the cycles of this run did (files, bytes, failures,
/// durations). Gauges read from state_dir (serials, holds) are node::metrics_text's.

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

namespace tiersync::ops {

/// Builds Prometheus text (exposition format 0.0.4): each family's HELP and TYPE lines, then its
/// samples. The one writer of /metrics text: the node's gauges, these counters, the server's.
class PrometheusText {
 public:
  /// `type`: counter, gauge or histogram.
  void family(std::string_view name, std::string_view type, std::string_view help);
  /// `series`: the metric name with its labels, e.g. `x_total{op="add"}`.
  void sample(std::string_view series, std::uint64_t value);
  void sample(std::string_view series, std::string_view value);
  /// One family with one sample.
  void single(std::string_view name, std::string_view type, std::string_view help,
              std::uint64_t value) {
    family(name, type, help);
    sample(name, value);
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

class ProcessMetrics {
 public:
  /// Upper bounds of tiersync_sync_duration_seconds' buckets (+Inf is implied).
  static constexpr std::array<double, 12> kDurationBuckets = {0.05, 0.1, 0.25, 0.5, 1,   2.5,
                                                              5,    10,  30,   60,  300, 1800};

  std::atomic<std::uint64_t> files_added{0};
  std::atomic<std::uint64_t> files_changed{0};
  std::atomic<std::uint64_t> files_deleted{0};
  std::atomic<std::uint64_t> bytes_downloaded{0};  ///< manifests and files
  std::atomic<std::uint64_t> verify_failures{0};   ///< signatures, manifest and file hashes
  std::atomic<std::uint64_t> upstream_errors{0};   ///< failed requests to the parent

  // The scrubber's (node/scrub.h): what it read, and what it found and repaired.
  std::atomic<std::uint64_t> scrub_bytes_hashed{0};
  std::atomic<std::uint64_t> scrub_files_checked{0};
  std::atomic<std::uint64_t> scrub_damaged_found{0};  ///< missing, differing or wrong type
  std::atomic<std::uint64_t> scrub_repaired{0};
  std::atomic<std::uint64_t> scrub_passes{0};  ///< passes completed

  /// One finished cycle (publish at tier0, sync at a relay), whatever its result.
  void observe_cycle(double seconds);

  /// Every counter and the histogram in Prometheus text format (HELP and TYPE included).
  std::string text() const;

 private:
  std::array<std::atomic<std::uint64_t>, kDurationBuckets.size() + 1> buckets_{};
  std::atomic<std::uint64_t> cycles_{0};
  std::atomic<std::uint64_t> duration_micros_{0};
};

/// The process-wide instance.
ProcessMetrics& process_metrics();

}  // namespace tiersync::ops
