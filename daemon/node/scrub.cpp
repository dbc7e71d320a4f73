// The scrubber (docs/architecture.md, "Scrub"): the tree checked against the applied manifests,
// entry by entry at a bounded rate, and what differs repaired through the applier.

#include "daemon/node/scrub.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>

#include "daemon/node/cycle.h"
#include "daemon/ops/metrics.h"
#include "daemon/sync/apply.h"
#include "daemon/sync/state.h"
#include "daemon/transport/transport.h"
#include "proto/digest.h"
#include "proto/path.h"

namespace tiersync::node {

using nlohmann::json;

namespace {

// A path as a log line shows it: quoted and escaped, cut short (a hostile manifest's path is
// validated, but a log line is no place for 4 KB of it).
std::string printable(std::string_view path) {
  constexpr std::size_t kMax = 200;
  std::string out;
  proto::append_json_string(out, path.substr(0, kMax));
  if (path.size() > kMax) out += "...";
  return out;
}

std::string cut(std::string s, std::size_t max = 300) {
  if (s.size() > max) {
    s.resize(max);
    s += "...";
  }
  return s;
}

}  // namespace

std::string_view damage_name(Damage::Kind kind) {
  switch (kind) {
    case Damage::Kind::kMissing:
      return "missing";
    case Damage::Kind::kContent:
      return "content";
    case Damage::Kind::kType:
      return "type";
    case Damage::Kind::kMetadata:
      return "metadata";
  }
  return "content";
}

std::string describe_damage(std::string_view path, const Damage& damage) {
  if (damage.kind == Damage::Kind::kMissing)
    return "missing: " + std::string(path) +
           (damage.detail.empty() ? std::string() : " (" + damage.detail + ")");
  return "differs: " + std::string(path) + " (" + damage.detail + ")";
}

// ---------------------------------------------------------------------------------------------
// ByteBudget

ByteBudget::ByteBudget(std::uint64_t bytes_per_second, Now now, Sleep sleep)
    : rate_(bytes_per_second),
      now_(now ? std::move(now) : Now(&Clock::now)),
      sleep_(sleep ? std::move(sleep) : Sleep(&ByteBudget::interruptible_sleep)),
      tokens_(static_cast<double>(kBurst)) {}

bool ByteBudget::interruptible_sleep(Clock::duration d, const std::stop_token& stop) {
  std::mutex mu;
  std::condition_variable_any cv;
  std::unique_lock lock(mu);
  cv.wait_for(lock, stop, d, [] { return false; });
  return !stop.stop_requested();
}

bool ByteBudget::take(std::uint64_t bytes, const std::stop_token& stop) {
  if (stop.stop_requested()) return false;
  if (rate_ == 0) return true;
  const double want = static_cast<double>(std::min(bytes, kBurst));
  const double burst = static_cast<double>(kBurst);
  while (true) {
    const auto t = now_();
    if (last_ != Clock::time_point{} && t > last_)
      tokens_ = std::min(burst, tokens_ + std::chrono::duration<double>(t - last_).count() *
                                              static_cast<double>(rate_));
    last_ = t;
    if (tokens_ >= want) {
      tokens_ -= want;
      return true;
    }
    const auto wait = std::chrono::duration<double>((want - tokens_) / static_cast<double>(rate_));
    if (!sleep_(std::chrono::ceil<Clock::duration>(wait), stop)) return false;
  }
}

// ---------------------------------------------------------------------------------------------
// TreeInspector

TreeInspector::TreeInspector(fs::path tree, ByteBudget* budget)
    : tree_(std::move(tree)), budget_(budget) {}

void TreeInspector::forget_folders() {
  cached_dir_.clear();
  cached_fd_.reset();
  root_fd_.reset();
}

// The one folder walk of the scrubber: each component opened relative to its parent with
// O_NOFOLLOW, so a symlink or file standing where a folder belongs ends the walk (ELOOP,
// ENOTDIR). The last folder stays open: entries come in manifest order, folder by folder.
int TreeInspector::folder(std::string_view dir) {
  if (!root_fd_.valid()) {
    root_fd_ = sync::UniqueFd(::open(tree_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root_fd_.valid()) return -1;
  }
  if (dir.empty()) return root_fd_.get();
  if (cached_fd_.valid() && dir == cached_dir_) return cached_fd_.get();
  sync::UniqueFd cur;
  int at = root_fd_.get();
  for (std::size_t start = 0; start < dir.size();) {
    std::size_t slash = dir.find('/', start);
    if (slash == std::string_view::npos) slash = dir.size();
    const std::string name(dir.substr(start, slash - start));
    sync::UniqueFd next(
        ::openat(at, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next.valid()) return -1;  // errno from openat: the destructors below do not close a fd
    cur = std::move(next);
    at = cur.get();
    start = slash + 1;
  }
  cached_dir_ = std::string(dir);
  cached_fd_ = std::move(cur);
  return cached_fd_.get();
}

std::optional<Damage> TreeInspector::check_content(int dfd, const std::string& name,
                                                   const proto::Entry& e,
                                                   const std::stop_token& stop) {
  using Kind = Damage::Kind;
  // O_NONBLOCK: a FIFO swapped in after the fstatat must not block the thread.
  sync::UniqueFd fd(::openat(dfd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd.valid()) {
    if (errno == ENOENT) return Damage{Kind::kMissing, ""};
    if (errno == ELOOP) return Damage{Kind::kType, "not a regular file: a symlink"};
    return Damage{Kind::kContent, std::string("cannot open: ") + std::strerror(errno)};
  }
  struct stat fst {};
  if (::fstat(fd.get(), &fst) != 0 || !S_ISREG(fst.st_mode))
    return Damage{Kind::kType, "not a regular file"};
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  static thread_local std::vector<char> buf(ByteBudget::kBurst);
  proto::Sha256 hasher;
  std::uint64_t got = 0;
  while (true) {
    // A read of at least one block is paid for: an empty file costs something too.
    const std::uint64_t want =
        std::clamp<std::uint64_t>(e.size > got ? e.size - got : 0, 4096, ByteBudget::kBurst);
    if (budget_ && !budget_->take(want, stop)) {
      stopped_ = true;
      return std::nullopt;
    }
    if (stop.stop_requested()) {
      stopped_ = true;
      return std::nullopt;
    }
    const ssize_t n = ::read(fd.get(), buf.data(), static_cast<std::size_t>(want));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Damage{Kind::kContent, std::string("unreadable: ") + std::strerror(errno)};
    if (n == 0) break;
    hasher.update(buf.data(), static_cast<std::size_t>(n));
    got += static_cast<std::uint64_t>(n);
    bytes_hashed_ += static_cast<std::uint64_t>(n);
    if (got > e.size) break;  // grew while read: the sizes differ, no need to read on
  }
  if (got != e.size)
    return Damage{Kind::kContent,
                  "size " + std::to_string(got) + ", manifest " + std::to_string(e.size)};
  if (hasher.finish() != e.sha256) return Damage{Kind::kContent, "SHA-256"};
  return std::nullopt;
}

std::optional<Damage> TreeInspector::inspect(const proto::Entry& e, bool hash,
                                             const std::stop_token& stop) {
  using Kind = Damage::Kind;
  stopped_ = false;
  const std::string_view path = e.path();
  const std::size_t slash = path.rfind('/');
  const std::string_view dir =
      slash == std::string_view::npos ? std::string_view() : path.substr(0, slash);
  const std::string name(slash == std::string_view::npos ? path : path.substr(slash + 1));
  const int dfd = folder(dir);
  if (dfd < 0) {
    if (errno == ENOENT) return Damage{Kind::kMissing, ""};
    if (errno == ELOOP || errno == ENOTDIR)
      return Damage{Kind::kMissing, "a folder on the way is a symlink or a file"};
    return Damage{Kind::kMissing,
                  std::string("its folder cannot be opened: ") + std::strerror(errno)};
  }
  struct stat st {};
  if (::fstatat(dfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return Damage{Kind::kMissing, ""};
    return Damage{Kind::kContent, std::string("cannot stat: ") + std::strerror(errno)};
  }
  if (e.link) {
    const Damage wrong{Kind::kType, "not a symlink to " + std::string(e.target())};
    if (!S_ISLNK(st.st_mode)) return wrong;
    char target[4096];
    const ssize_t n = ::readlinkat(dfd, name.c_str(), target, sizeof target);
    if (n < 0 || std::string_view(target, static_cast<std::size_t>(n)) != e.target()) return wrong;
    return std::nullopt;
  }
  if (!S_ISREG(st.st_mode))
    return Damage{Kind::kType, S_ISLNK(st.st_mode)   ? "not a regular file: a symlink"
                               : S_ISDIR(st.st_mode) ? "not a regular file: a folder"
                                                     : "not a regular file"};
  if (static_cast<std::uint64_t>(st.st_size) != e.size)
    return Damage{Kind::kContent,
                  "size " + std::to_string(st.st_size) + ", manifest " + std::to_string(e.size)};
  if (hash) {
    if (auto damage = check_content(dfd, name, e, stop); damage || stopped_) return damage;
  }
  if (st.st_mtim.tv_sec != e.mtime)
    return Damage{Kind::kMetadata, "mtime " + std::to_string(st.st_mtim.tv_sec) + ", manifest " +
                                       std::to_string(e.mtime)};
  if ((st.st_mode & 07777) != e.mode) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "mode %04o, manifest %04o", st.st_mode & 07777, e.mode);
    return Damage{Kind::kMetadata, buf};
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// The record in state_dir

fs::path scrub_record_path(const fs::path& state_dir) {
  return state_dir / "scrub.json";
}

ScrubRecord load_scrub_record(const fs::path& state_dir) {
  ScrubRecord r;
  auto bytes = sync::read_file(scrub_record_path(state_dir), 1u << 20);
  if (!bytes) return r;
  json j = json::parse(*bytes, nullptr, false);
  if (!j.is_object()) return r;
  try {
    r.passes = j.value("passes", std::uint64_t{0});
    r.after_partition = j.value("after_partition", std::string());
    r.after_path = j.value("after_path", std::string());
    r.pass_started = j.value("pass_started", std::int64_t{0});
    r.pass_files = j.value("pass_files", std::uint64_t{0});
    r.pass_bytes = j.value("pass_bytes", std::uint64_t{0});
    r.last_pass_end = j.value("last_pass_end", std::int64_t{0});
    r.last_pass_seconds = j.value("last_pass_seconds", std::int64_t{0});
    r.last_pass_files = j.value("last_pass_files", std::uint64_t{0});
    r.last_pass_bytes = j.value("last_pass_bytes", std::uint64_t{0});
    r.found = j.value("found", std::uint64_t{0});
    r.repaired = j.value("repaired", std::uint64_t{0});
    if (auto it = j.find("damaged"); it != j.end() && it->is_array())
      for (const auto& d : *it) {
        if (r.damaged.size() >= ScrubRecord::kMaxListed) break;
        r.damaged.push_back({d.value("path", std::string()), d.value("problem", std::string()),
                             d.value("detail", std::string()), d.value("found", std::int64_t{0}),
                             d.value("repair", std::string()), d.value("pass", std::uint64_t{0})});
      }
  } catch (const json::exception&) {
    return ScrubRecord{};  // a damaged cache: start again
  }
  return r;
}

Status save_scrub_record(const fs::path& state_dir, const ScrubRecord& r) {
  json damaged = json::array();
  for (const auto& d : r.damaged)
    damaged.push_back({{"path", d.path},
                       {"problem", d.problem},
                       {"detail", d.detail},
                       {"found", d.found},
                       {"repair", d.repair},
                       {"pass", d.pass}});
  json j = {{"passes", r.passes},
            {"after_partition", r.after_partition},
            {"after_path", r.after_path},
            {"pass_started", r.pass_started},
            {"pass_files", r.pass_files},
            {"pass_bytes", r.pass_bytes},
            {"last_pass_end", r.last_pass_end},
            {"last_pass_seconds", r.last_pass_seconds},
            {"last_pass_files", r.last_pass_files},
            {"last_pass_bytes", r.last_pass_bytes},
            {"found", r.found},
            {"repaired", r.repaired},
            {"damaged", damaged}};
  // Not durable: a record lost to a power cut only costs a pass starting over.
  return sync::write_file_atomic(scrub_record_path(state_dir),
                                 j.dump(2, ' ', false, json::error_handler_t::replace) + "\n", 0644,
                                 /*durable=*/false);
}

// ---------------------------------------------------------------------------------------------
// Repair

std::vector<std::string> repair_entries(
    const ops::Config& config, sync::StateStore& state,
    const std::vector<std::pair<const proto::Entry*, Damage>>& damaged,
    const std::atomic<bool>* stop) {
  std::vector<std::string> why(damaged.size());
  if (damaged.empty()) return why;
  std::unique_ptr<transport::Transport> parent;
  std::unique_ptr<sync::Fetcher> fetcher;
  if (config.role == ops::Role::kTier0) {
    fetcher = source_fetcher(config.source_dir);
  } else {
    auto made = transport::make_transport(
        config.upstream.url, {.ca_file = config.upstream.ca_file,
                              .connections = std::min(config.upstream.connections, 2u),
                              .max_bytes_per_second = config.upstream.max_bytes_per_second});
    if (!made) {
      std::fill(why.begin(), why.end(), "cannot reach the parent: " + made.message());
      return why;
    }
    parent = std::move(*made);
    fetcher = parent_fetcher(*parent);
  }
  sync::Applier applier(state, *fetcher);
  applier.set_stop_flag(stop);
  // Content intact, metadata not: touched up; anything else fetched again.
  auto split = [&](std::size_t from, std::size_t to) {
    std::pair<std::vector<const proto::Entry*>, std::vector<const proto::Entry*>> lists;
    for (std::size_t i = from; i < to; ++i)
      (damaged[i].second.kind == Damage::Kind::kMetadata ? lists.second : lists.first)
          .push_back(damaged[i].first);
    return lists;
  };
  auto check_result = [&] {  // what the applier put in place, seen without following symlinks
    TreeInspector inspector(config.tree);
    for (std::size_t i = 0; i < damaged.size(); ++i)
      if (why[i].empty())
        if (auto left = inspector.inspect(*damaged[i].first, /*hash=*/true))
          why[i] = "still damaged after the repair (" + std::string(damage_name(left->kind)) +
                   (left->detail.empty() ? "" : ": " + left->detail) + ")";
  };
  // All at once first (one batch for the parent); one by one when that fails, so that one file
  // that cannot be repaired does not keep the others damaged.
  if (damaged.size() > 1) {
    auto [refetch, retouch] = split(0, damaged.size());
    if (applier.repair(std::move(refetch), std::move(retouch))) {
      check_result();
      return why;
    }
  }
  for (std::size_t i = 0; i < damaged.size(); ++i) {
    if (stop && *stop) {
      why[i] = "stopped";
      continue;
    }
    auto [refetch, retouch] = split(i, i + 1);
    if (auto st = applier.repair(std::move(refetch), std::move(retouch)); !st) {
      if (!applier.content_rejected())
        why[i] = cut(st.message());
      else if (config.role == ops::Role::kTier0)
        why[i] = "held: the source no longer holds the published content (" + cut(st.message()) +
                 "); the next publish carries the source's version";
      else
        why[i] = "the parent's copy does not match the applied manifest (" + cut(st.message()) +
                 "); the next cycle brings what the parent serves now";
    }
  }
  check_result();
  return why;
}

// ---------------------------------------------------------------------------------------------
// Scrubber

namespace {

// What a pass compares with: the applied envelope and its pins (docs/protocol.md, "Pins"), whose
// effective snapshot names the manifests. The same serial can get other pins (an approval).
std::string applied_identity(const sync::Applied& applied) {
  return applied.envelope + '\0' + applied.pins_document;
}

}  // namespace

Scrubber::Scrubber(ops::Config config, ScrubOptions options)
    : config_(std::move(config)),
      options_(std::move(options)),
      budget_(options_.bytes_per_second, options_.now, options_.sleep),
      inspector_(config_.tree, &budget_),
      record_(load_scrub_record(config_.state_dir)) {}

void Scrubber::save() {
  if (auto st = save_scrub_record(config_.state_dir, record_); !st)
    spdlog::warn("scrub: cannot save its record: {}", st.message());
  last_save_ = ByteBudget::Clock::now();
}

bool Scrubber::refresh_manifests() {
  struct stat st {};
  if (::stat((config_.state_dir / "snapshot").c_str(), &st) != 0) {
    manifests_.clear();
    snapshot_identity_.clear();
    return false;
  }
  std::string identity = std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
                         std::to_string(st.st_mtim.tv_sec) + "." +
                         std::to_string(st.st_mtim.tv_nsec);
  if (identity == snapshot_identity_) return true;
  sync::StateStore state(config_.state_dir, config_.tree);
  auto applied = state.load_applied();
  if (!applied || !*applied) return false;
  auto manifests = state.load_manifests((*applied)->snapshot);
  if (!manifests) {
    // An apply committed a newer snapshot and collected these manifests meanwhile: next time.
    spdlog::debug("scrub: {}", manifests.message());
    return false;
  }
  manifests_ = std::move(*manifests);
  envelope_ = applied_identity(**applied);
  snapshot_identity_ = std::move(identity);
  inspector_.forget_folders();
  return true;
}

void Scrubber::note_intact(std::string_view path) {
  auto it = std::find_if(record_.damaged.begin(), record_.damaged.end(),
                         [&](const DamagedFile& d) { return d.path == path; });
  if (it == record_.damaged.end()) return;
  record_.damaged.erase(it);
  save();
}

Scrubber::Verdict Scrubber::confirm_and_repair(const proto::Entry& entry, const Damage& damage,
                                               const std::stop_token& stop) {
  if (options_.before_confirm) options_.before_confirm();
  // The cycle's lock, then the state_dir lock (another process: `verify --repair`). A cycle in
  // progress is waited for: the scrubber has nothing better to do than let it finish.
  std::unique_lock lock(tree_mutex(), std::defer_lock);
  while (!lock.try_lock())
    if (!ByteBudget::interruptible_sleep(std::chrono::milliseconds(200), stop))
      return Verdict::kRecheck;
  sync::StateStore state(config_.state_dir, config_.tree);
  if (auto st = state.open(); !st) {
    spdlog::debug("scrub: {}", st.message());
    return Verdict::kRecheck;
  }
  // What the pass compared with must still be the applied snapshot, with no apply half done
  // (the next cycle finishes it): otherwise the difference may be the apply's, not damage.
  auto applied = state.load_applied();
  if (!applied || !*applied || applied_identity(**applied) != envelope_) return Verdict::kRecheck;
  auto journal = state.load_journal();
  if (!journal || *journal) return Verdict::kRecheck;
  TreeInspector fresh(config_.tree);
  auto confirmed = fresh.inspect(entry, /*hash=*/true);
  if (!confirmed) return Verdict::kRecheck;  // changed back meanwhile
  (void)damage;

  const std::string path(entry.path());
  const std::string problem(damage_name(confirmed->kind));
  ++record_.found;
  ++ops::process_metrics().scrub_damaged_found;
  spdlog::warn("scrub: damaged file path={} problem={} detail={}", printable(path), problem,
               printable(confirmed->detail));
  auto listed = std::find_if(record_.damaged.begin(), record_.damaged.end(),
                             [&](const DamagedFile& d) { return d.path == path; });
  if (listed == record_.damaged.end() && record_.damaged.size() < ScrubRecord::kMaxListed)
    listed = record_.damaged.insert(record_.damaged.end(), DamagedFile{path, {}, {}, 0, {}, 0});
  if (listed != record_.damaged.end()) {
    listed->problem = problem;
    listed->detail = confirmed->detail;
    if (listed->found == 0) listed->found = std::time(nullptr);
    listed->repair = options_.repair ? "pending" : "not repaired";
    listed->pass = record_.passes + 1;
  }
  if (!options_.repair) {
    save();
    return Verdict::kReported;
  }

  std::atomic<bool> stopping{false};
  std::stop_callback on_stop(stop, [&] { stopping = true; });
  const auto why = repair_entries(config_, state, {{&entry, *confirmed}}, &stopping);
  listed = std::find_if(record_.damaged.begin(), record_.damaged.end(),
                        [&](const DamagedFile& d) { return d.path == path; });
  if (why.front().empty()) {
    ++record_.repaired;
    ++ops::process_metrics().scrub_repaired;
    spdlog::info("scrub: repaired path={} from {}", printable(path),
                 config_.role == ops::Role::kTier0 ? "the source" : "the parent");
    if (listed != record_.damaged.end()) record_.damaged.erase(listed);
  } else {
    spdlog::error("scrub: cannot repair path={}: {}", printable(path), why.front());
    if (listed != record_.damaged.end()) listed->repair = why.front();
  }
  save();
  return Verdict::kReported;
}

Scrubber::Position Scrubber::next_entry() const {
  auto it = record_.after_partition.empty() ? manifests_.begin()
                                            : manifests_.lower_bound(record_.after_partition);
  for (; it != manifests_.end(); ++it) {
    const auto& entries = it->second->entries;
    auto e = entries.begin();
    if (it->first == record_.after_partition)
      e = std::upper_bound(entries.begin(), entries.end(), std::string_view(record_.after_path),
                           [](std::string_view p, const proto::Entry& x) { return p < x.path(); });
    if (e != entries.end()) return {it->first, &*e};
  }
  return {};
}

void Scrubber::finish_pass() {
  const std::int64_t now = std::time(nullptr);
  ++record_.passes;
  ++ops::process_metrics().scrub_passes;
  record_.last_pass_end = now;
  record_.last_pass_seconds = record_.pass_started ? now - record_.pass_started : 0;
  record_.last_pass_files = record_.pass_files;
  record_.last_pass_bytes = record_.pass_bytes;
  record_.after_partition.clear();
  record_.after_path.clear();
  // Listed but not found again by this pass: repaired by an apply, or no longer in the snapshot.
  std::erase_if(record_.damaged, [&](const DamagedFile& d) { return d.pass < record_.passes; });
  save();
  spdlog::info("scrub: pass {} done: {} files, {} bytes in {} s; {} damaged file(s) outstanding",
               record_.passes, record_.last_pass_files, record_.last_pass_bytes,
               record_.last_pass_seconds, record_.damaged.size());
}

bool Scrubber::run_pass(const std::stop_token& stop) {
  if (!refresh_manifests()) return false;
  if (record_.after_partition.empty()) {
    record_.pass_started = std::time(nullptr);
    record_.pass_files = record_.pass_bytes = 0;
  }
  auto& metrics = ops::process_metrics();
  std::string rechecked;  // an entry is checked again once at most, then left for the next pass
  while (true) {
    if (stop.stop_requested() || !refresh_manifests()) {
      save();
      return false;
    }
    // The next entry in manifest order after where the pass stands (in the manifests applied
    // now: a new snapshot is picked up at the next entry, without starting over).
    const Position next = next_entry();
    if (!next.entry) break;
    const proto::Entry& entry = *next.entry;

    const std::uint64_t before = inspector_.bytes_hashed();
    auto damage = inspector_.inspect(entry, /*hash=*/true, stop);
    if (inspector_.stopped()) {
      save();
      return false;
    }
    const std::uint64_t read = inspector_.bytes_hashed() - before;
    metrics.scrub_bytes_hashed += read;
    ++metrics.scrub_files_checked;
    record_.pass_bytes += read;
    ++record_.pass_files;
    if (damage) {
      const std::string path(entry.path());
      if (confirm_and_repair(entry, *damage, stop) == Verdict::kRecheck && rechecked != path) {
        rechecked = path;
        inspector_.forget_folders();
        continue;  // the same entry again (of the snapshot applied by then)
      }
    } else {
      note_intact(entry.path());
    }
    record_.after_partition = next.partition;
    record_.after_path = std::string(entry.path());
    if (ByteBudget::Clock::now() - last_save_ > std::chrono::seconds(10)) save();
  }
  finish_pass();
  return true;
}

void Scrubber::run(const std::stop_token& stop) {
  auto sleep = [&](std::chrono::seconds d) {
    return options_.sleep ? options_.sleep(d, stop) : ByteBudget::interruptible_sleep(d, stop);
  };
  // A restart between passes keeps the pause; one in the middle of a pass goes on from there.
  if (record_.after_partition.empty() && record_.last_pass_end > 0) {
    const std::int64_t due = record_.last_pass_end + options_.pause.count() - std::time(nullptr);
    if (due > 0 &&
        !sleep(std::chrono::seconds(std::min<std::int64_t>(due, options_.pause.count()))))
      return;
  }
  while (!stop.stop_requested()) {
    const bool done = run_pass(stop);
    if (stop.stop_requested()) break;
    // Nothing applied yet (or the snapshot moving under it): looked at again shortly.
    if (!sleep(done ? options_.pause : std::chrono::seconds(10))) break;
  }
  save();
}

std::jthread start_scrubber(const ops::Config& config) {
  if (config.scrub.mb_per_second == 0) {
    spdlog::info("scrub: off (scrub.mb_per_second is 0)");
    return {};
  }
  ScrubOptions options;
  options.bytes_per_second = std::uint64_t{config.scrub.mb_per_second} * 1'000'000;
  if (const char* pause = std::getenv("TIERSYNC_SCRUB_PAUSE_SECONDS"))
    options.pause = std::chrono::seconds(std::strtoul(pause, nullptr, 10));
  spdlog::info("scrub: on at {} MB/s, {} s between passes", config.scrub.mb_per_second,
               options.pause.count());
  auto scrubber = std::make_shared<Scrubber>(config, std::move(options));
  return std::jthread([scrubber](std::stop_token stop) { scrubber->run(stop); });
}

}  // namespace tiersync::node
