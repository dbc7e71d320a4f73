#pragma once
/// The scrubber: re-hashes the tree against the applied manifests in the background at a bounded
/// rate, one pass after another, reports what differs and repairs it (from the parent, or tier0's
/// source). `verify` and `verify --repair` use the same checks. See docs/architecture.md, "Scrub".

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "daemon/ops/config.h"
#include "daemon/sync/fs.h"
#include "daemon/sync/plan.h"
#include "proto/manifest.h"

namespace tiersync::sync {
class StateStore;
}

namespace tiersync::node {

namespace fs = std::filesystem;

/// What is wrong with one entry of the applied snapshot in the tree.
struct Damage {
  enum class Kind {
    kMissing,   ///< nothing there, or a folder on the way is not a folder
    kContent,   ///< a file of another size or SHA-256, or unreadable
    kType,      ///< a symlink, folder or device where a file is, or a wrong symlink
    kMetadata,  ///< the right content with another mode or mtime
  };
  Kind kind = Kind::kContent;
  std::string detail;  ///< e.g. "size 3, manifest 4", "SHA-256"
};
std::string_view damage_name(Damage::Kind kind);
/// verify's line: "missing: PATH" or "differs: PATH (DETAIL)".
std::string describe_damage(std::string_view path, const Damage& damage);

/// A token bucket on bytes read: `bytes_per_second` tokens a second, at most kBurst held. Sleeps
/// are cut short by a stop token. The clock and the sleep are injectable (tests count bytes per
/// refill on a clock of their own).
class ByteBudget {
 public:
  using Clock = std::chrono::steady_clock;
  using Now = std::function<Clock::time_point()>;
  /// Waits `d`, returning false at once when `stop` is requested.
  using Sleep = std::function<bool(Clock::duration d, const std::stop_token& stop)>;
  static constexpr std::uint64_t kBurst = 256 << 10;  ///< also the largest single take

  /// `bytes_per_second` 0: unlimited (take never waits).
  explicit ByteBudget(std::uint64_t bytes_per_second, Now now = {}, Sleep sleep = {});
  /// Takes `bytes` (at most kBurst), waiting for refills; false when `stop` was requested.
  bool take(std::uint64_t bytes, const std::stop_token& stop);
  std::uint64_t bytes_per_second() const { return rate_; }

  /// A sleep on a condition variable that a stop request wakes.
  static bool interruptible_sleep(Clock::duration d, const std::stop_token& stop);

 private:
  std::uint64_t rate_;
  Now now_;
  Sleep sleep_;
  double tokens_ = 0;
  Clock::time_point last_{};
};

/// Compares entries with what the tree holds. Never follows a symlink the tree holds: every
/// folder on the way is opened relative to its parent with O_NOFOLLOW (docs/security.md).
class TreeInspector {
 public:
  /// `budget` null: reads at full speed.
  explicit TreeInspector(fs::path tree, ByteBudget* budget = nullptr);
  /// nullopt: intact (or stopped, see stopped()). Without `hash`, a file's size, mtime and mode
  /// are compared but its content is not read.
  std::optional<Damage> inspect(const proto::Entry& e, bool hash, const std::stop_token& stop = {});
  bool stopped() const { return stopped_; }
  std::uint64_t bytes_hashed() const { return bytes_hashed_; }
  /// Forgets the cached folder (the tree may have been changed under it).
  void forget_folders();

 private:
  /// The folder `dir` of the tree ("" its root), or -1 with errno set.
  int folder(std::string_view dir);
  /// The file `name` in folder `dfd` read through (at the budget's rate) and compared with the
  /// entry's size and SHA-256; nullopt when it matches, or when `stop` cut it short (stopped_).
  std::optional<Damage> check_content(int dfd, const std::string& name, const proto::Entry& e,
                                      const std::stop_token& stop);

  fs::path tree_;
  ByteBudget* budget_;
  std::string cached_dir_;
  sync::UniqueFd cached_fd_;
  sync::UniqueFd root_fd_;
  bool stopped_ = false;
  std::uint64_t bytes_hashed_ = 0;
};

/// One damaged entry as status lists it.
struct DamagedFile {
  std::string path;
  std::string problem;  ///< damage_name()
  std::string detail;
  std::int64_t found = 0;
  std::string repair;      ///< pending, or why it could not be repaired yet
  std::uint64_t pass = 0;  ///< the pass that last found it
};

/// The scrubber's record in state_dir (scrub.json): where the pass is, what it found. Read by
/// `status`; lets a restarted daemon go on where it stopped.
struct ScrubRecord {
  std::uint64_t passes = 0;     ///< completed, since state_dir was made
  std::string after_partition;  ///< the pass resumes after this entry ("": from the start)
  std::string after_path;
  std::int64_t pass_started = 0;
  std::uint64_t pass_files = 0;  ///< of the current pass so far
  std::uint64_t pass_bytes = 0;
  std::int64_t last_pass_end = 0;  ///< 0: never
  std::int64_t last_pass_seconds = 0;
  std::uint64_t last_pass_files = 0;
  std::uint64_t last_pass_bytes = 0;
  std::uint64_t found = 0;           ///< damaged files found, ever
  std::uint64_t repaired = 0;        ///< damaged files repaired, ever
  std::vector<DamagedFile> damaged;  ///< not repaired yet, at most kMaxListed
  static constexpr std::size_t kMaxListed = 100;
};
fs::path scrub_record_path(const fs::path& state_dir);
/// The record, or an empty one when none was written (or it is unreadable: it is only a cache).
ScrubRecord load_scrub_record(const fs::path& state_dir);
Status save_scrub_record(const fs::path& state_dir, const ScrubRecord& record);

/// Repairs `damaged` entries of the applied snapshot through sync::Applier::repair: a relay from
/// its parent, tier0 from its source (refused where the source no longer holds the published
/// content). The caller holds the state_dir lock. Returns, per entry, "" when repaired or why not.
std::vector<std::string> repair_entries(
    const ops::Config& config, sync::StateStore& state,
    const std::vector<std::pair<const proto::Entry*, Damage>>& damaged,
    const std::atomic<bool>* stop = nullptr);

struct ScrubOptions {
  std::uint64_t bytes_per_second = 20'000'000;  ///< 0: unlimited
  std::chrono::seconds pause{3600};             ///< from the end of a pass to the start of the next
  bool repair = true;
  ByteBudget::Now now;  ///< tests' clock and sleep (empty: steady_clock, interruptible sleep)
  ByteBudget::Sleep sleep;
  /// Tests: runs after a damaged entry is found, before it is confirmed under the locks (where
  /// a concurrent apply would land).
  std::function<void()> before_confirm;
};

class Scrubber {
 public:
  Scrubber(ops::Config config, ScrubOptions options);

  /// Passes one after another until `stop`, the record saved as it goes.
  void run(const std::stop_token& stop);
  /// One pass, from where the last one stopped to the end of the applied snapshot; false when
  /// stopped first (or nothing is applied yet).
  bool run_pass(const std::stop_token& stop);
  const ScrubRecord& record() const { return record_; }

 private:
  enum class Verdict { kRecheck, kReported };
  /// Reloads the applied snapshot's manifests when the snapshot changed; false if none.
  bool refresh_manifests();
  /// Confirms the damage under the tree's locks (a concurrent apply makes it a re-check),
  /// reports it and repairs it.
  Verdict confirm_and_repair(const proto::Entry& entry, const Damage& damage,
                             const std::stop_token& stop);
  void note_intact(std::string_view path);
  /// An entry of the applied manifests and its partition (none: the pass is at its end).
  struct Position {
    std::string partition;
    const proto::Entry* entry = nullptr;
  };
  /// The entry after where the pass stands, in manifest order.
  Position next_entry() const;
  /// Records the pass's end and drops the listed damage it did not find again.
  void finish_pass();
  void save();

  ops::Config config_;
  ScrubOptions options_;
  ByteBudget budget_;
  TreeInspector inspector_;
  ScrubRecord record_;
  std::string snapshot_identity_;  ///< of state_dir/snapshot when the manifests were loaded
  std::string envelope_;
  sync::ManifestSet manifests_;
  ByteBudget::Clock::time_point last_save_{};
};

/// The daemon's scrubber thread (std::jthread: stopped and joined when it goes), or an empty
/// one when `scrub.mb_per_second` is 0. TIERSYNC_SCRUB_PAUSE_SECONDS in the environment shortens
/// the pause between passes (for tests).
std::jthread start_scrubber(const ops::Config& config);

}  // namespace tiersync::node
