#include "daemon/node/cycle.h"

#include <spdlog/spdlog.h>

#include <ctime>

#include "daemon/ops/metrics.h"
#include "proto/path.h"
#include "proto/printable.h"

namespace tiersync::node {

std::mutex& tree_mutex() {
  static std::mutex mu;
  return mu;
}

Cycle::Cycle(const ops::Config& config)
    : config_(config),
      state_(config.state_dir, config.tree),
      previous_(state_.load_cycle()),
      start_(std::chrono::steady_clock::now()) {}

std::string_view to_string(CycleResult result) {
  switch (result) {
    case CycleResult::kOk:
      return "ok";
    case CycleResult::kNoop:
      return "noop";
    case CycleResult::kHeld:
      return "held";
    case CycleResult::kFailed:
      return "failed";
  }
  return "?";
}

std::optional<CycleResult> parse_cycle_result(std::string_view name) {
  for (auto r : {CycleResult::kOk, CycleResult::kNoop, CycleResult::kHeld, CycleResult::kFailed})
    if (to_string(r) == name) return r;
  return std::nullopt;
}

CycleOutcome Cycle::record(int exit_code, CycleResult result, const std::string& raw) {
  // A message may quote a parent's bytes: recorded, returned and logged cut short and escaped.
  const std::string message = proto::printable(raw, sync::kMaxCycleMessageBytes);
  const std::int64_t now = std::time(nullptr);
  const bool success = is_success(result);
  sync::CycleRecord r{std::string(to_string(result)),
                      now,
                      message,
                      upstream_serial_,
                      success ? now : previous_.last_success,
                      parent_chain_ ? *parent_chain_ : previous_.parent_chain};
  ops::process_metrics().observe_cycle(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  if (auto st = state_.save_cycle(r); !st)
    spdlog::warn("cannot record the cycle: {}", st.message());
  return CycleOutcome{exit_code, result, message};
}

CycleOutcome Cycle::fail(const std::string& message) {
  spdlog::error("cycle failed: {}", proto::printable(message, sync::kMaxCycleMessageBytes));
  return record(kExitFailure, CycleResult::kFailed, message);
}

CycleOutcome Cycle::noop(std::uint64_t serial, bool clear_holds) {
  if (upstream_serial_ == 0) upstream_serial_ = serial;
  if (clear_holds) clear_held();
  std::string msg = "in sync at serial " + std::to_string(serial);
  spdlog::info("{}", msg);
  return record(kExitOk, CycleResult::kNoop, msg);
}

void Cycle::save_holds(const std::vector<sync::HeldPartition>& held,
                       std::uint64_t candidate_serial) {
  sync::HeldState prev = state_.load_held();
  sync::HeldState next{candidate_serial, std::time(nullptr), held};
  if (!prev.partitions.empty() && prev.candidate_serial == candidate_serial)
    next.since = prev.since;
  for (const auto& h : held)
    spdlog::error(
        "hold: partition={} rule={} deleted={} files={} ratio={:.3f} limit={:.3f} lost={} of={} "
        "candidate={}{} (approve with: tiersyncctl --config {} approve {})",
        h.hold.partition, sync::rule_name(h.hold.rule), h.hold.deleted, h.hold.files, h.hold.ratio,
        h.hold.limit, h.hold.count, h.hold.of, h.candidate, h.stale_since ? " stale" : "",
        config_.file.string(), h.hold.partition);
  if (auto st = state_.save_held(next); !st)
    spdlog::warn("cannot record the hold: {}", st.message());
}

std::vector<sync::Approval> Cycle::live_approvals(std::int64_t now) {
  auto all = state_.load_approvals();
  std::vector<sync::Approval> live;
  for (auto& a : all) {
    if (a.expires > now) {
      live.push_back(std::move(a));
      continue;
    }
    spdlog::warn(
        "approval expired: partition={} from={} to={} expired={} (approve again if the "
        "change is still wanted)",
        a.partition, a.from.substr(0, 16), a.to.substr(0, 16), proto::format_time(a.expires));
  }
  if (live.size() != all.size())
    if (auto st = state_.save_approvals(live); !st)
      spdlog::warn("cannot drop the expired approvals: {}", st.message());
  return live;
}

void Cycle::consume_approvals(const std::set<std::string>& partitions) {
  if (partitions.empty()) return;
  auto all = state_.load_approvals();
  const auto before = all.size();
  std::erase_if(all, [&](const sync::Approval& a) { return partitions.count(a.partition) > 0; });
  if (all.size() != before)
    if (auto st = state_.save_approvals(all); !st)
      spdlog::warn("cannot clear the used approvals: {}", st.message());
}

CycleOutcome Cycle::held(const std::vector<sync::HeldPartition>& held,
                         std::uint64_t candidate_serial) {
  std::string names;
  for (const auto& h : held) names += (names.empty() ? "" : ", ") + h.hold.partition;
  save_holds(held, candidate_serial);
  return record(kExitHeld, CycleResult::kHeld,
                "serial " + std::to_string(candidate_serial) + " held by the guard: " + names);
}

void Cycle::clear_held() {
  if (auto st = state_.save_held({}); !st) spdlog::warn("cannot clear the hold: {}", st.message());
}

CycleOutcome Cycle::held_only(std::uint64_t serial) {
  if (upstream_serial_ == 0) upstream_serial_ = serial;
  return record(kExitHeld, CycleResult::kHeld,
                "serial " + std::to_string(serial) + " kept: every changed partition is held");
}

CycleOutcome Cycle::applied(std::uint64_t serial, const sync::ApplyStats& s,
                            const std::string& verb, int exit_code, const std::string& note) {
  std::string msg = verb + " serial " + std::to_string(serial) +
                    ": added=" + std::to_string(s.added) + " changed=" + std::to_string(s.changed) +
                    " deleted=" + std::to_string(s.deleted) +
                    " fetched=" + std::to_string(s.fetched_files) +
                    " fetched_bytes=" + std::to_string(s.fetched_bytes) +
                    " reused=" + std::to_string(s.reused_files) +
                    (s.resumed_files ? " resumed=" + std::to_string(s.resumed_files) : "") + note;
  if (upstream_serial_ == 0) upstream_serial_ = serial;
  auto& metrics = ops::process_metrics();
  metrics.files_added += s.added;
  metrics.files_changed += s.changed;
  metrics.files_deleted += s.deleted;
  spdlog::info("{}", msg);
  return record(exit_code, exit_code == kExitHeld ? CycleResult::kHeld : CycleResult::kOk, msg);
}

Status check_partitions_disjoint(const proto::Snapshot& snapshot, const sync::ManifestSet& set) {
  auto root = set.find(std::string(proto::kRootPartition));
  if (root == set.end()) return {};
  for (const auto& [name, ref] : snapshot.partitions) {
    if (name == proto::kRootPartition) continue;
    for (std::size_t slash = 0; slash != std::string::npos;) {
      slash = name.find('/', slash + 1);
      std::string prefix = name.substr(0, slash);
      if (root->second->find(prefix))
        return make_error("partition \"" + name + "\" lies below the root partition's entry \"" +
                          prefix + "\"");
    }
  }
  return {};
}

}  // namespace tiersync::node
