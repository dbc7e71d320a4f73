#include "daemon/ops/metrics.h"

#include <cmath>
#include <cstdio>

namespace tiersync::ops {

void ProcessMetrics::observe_cycle(double seconds) {
  if (!(seconds >= 0)) seconds = 0;  // NaN or a clock step back
  std::size_t i = 0;
  while (i < kDurationBuckets.size() && seconds > kDurationBuckets[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  duration_micros_.fetch_add(static_cast<std::uint64_t>(std::llround(seconds * 1e6)),
                             std::memory_order_relaxed);
  cycles_.fetch_add(1, std::memory_order_relaxed);
}

void PrometheusText::family(std::string_view name, std::string_view type, std::string_view help) {
  out_.append("# HELP ").append(name).append(" ").append(help).append("\n");
  out_.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void PrometheusText::sample(std::string_view series, std::string_view value) {
  out_.append(series).append(" ").append(value).append("\n");
}

void PrometheusText::sample(std::string_view series, std::uint64_t value) {
  sample(series, std::to_string(value));
}

std::string ProcessMetrics::text() const {
  PrometheusText out;
  out.family("tiersync_files_total", "counter",
             "Files this process installed or removed, by operation.");
  out.sample("tiersync_files_total{op=\"add\"}", files_added.load());
  out.sample("tiersync_files_total{op=\"change\"}", files_changed.load());
  out.sample("tiersync_files_total{op=\"delete\"}", files_deleted.load());
  out.single("tiersync_bytes_downloaded_total", "counter",
             "Bytes of manifests and files received from the parent.", bytes_downloaded.load());
  out.single("tiersync_verify_failures_total", "counter",
             "Snapshots, manifests or files refused because a signature or a hash did not match.",
             verify_failures.load());
  out.single("tiersync_upstream_errors_total", "counter",
             "Failed requests to the parent (after the transport's own retries).",
             upstream_errors.load());
  out.single("tiersync_scrub_bytes_hashed_total", "counter",
             "Bytes of the tree the scrubber read and hashed.", scrub_bytes_hashed.load());
  out.single("tiersync_scrub_files_checked_total", "counter",
             "Files and symlinks of the tree the scrubber checked against the applied manifests.",
             scrub_files_checked.load());
  out.single("tiersync_scrub_mismatches_total", "counter",
             "Damaged files the scrubber found: missing, other content, other type or metadata.",
             scrub_damaged_found.load());
  out.single("tiersync_scrub_repaired_total", "counter",
             "Damaged files the scrubber put back (from the parent, or tier0's source).",
             scrub_repaired.load());
  out.single("tiersync_scrub_passes_total", "counter",
             "Scrub passes completed over the whole tree.", scrub_passes.load());

  out.family("tiersync_sync_duration_seconds", "histogram",
             "Duration of each cycle (a publish at tier0, a sync at a relay).");
  std::uint64_t cumulative = 0;
  char le[32];
  for (std::size_t i = 0; i < kDurationBuckets.size(); ++i) {
    cumulative += buckets_[i].load();
    std::snprintf(le, sizeof le, "%g", kDurationBuckets[i]);
    out.sample(std::string("tiersync_sync_duration_seconds_bucket{le=\"") + le + "\"}", cumulative);
  }
  // +Inf and _count from the same reading, so the histogram stays consistent under updates.
  cumulative += buckets_.back().load();
  out.sample("tiersync_sync_duration_seconds_bucket{le=\"+Inf\"}", cumulative);
  char sum[64];
  std::snprintf(sum, sizeof sum, "%.6f", static_cast<double>(duration_micros_.load()) / 1e6);
  out.sample("tiersync_sync_duration_seconds_sum", std::string_view(sum));
  out.sample("tiersync_sync_duration_seconds_count", cumulative);
  return out.take();
}

ProcessMetrics& process_metrics() {
  static ProcessMetrics metrics;
  return metrics;
}

}  // namespace tiersync::ops
