#pragma once
/// Applying a candidate snapshot to the tree so that readers never see a half-updated repository:
/// stage every new file (verified), install other files, then index files, then the root
/// partition, commit, then delete and prune. A journal makes a killed apply resumable.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "daemon/sync/crash.h"
#include "daemon/sync/fs.h"
#include "daemon/sync/plan.h"
#include "daemon/sync/state.h"
#include "proto/manifest.h"
#include "proto/result.h"

namespace tiersync::sync {

/// Receives a file's bytes in order; returns an error to stop the transfer.
using ByteSink = std::function<Status(const char* data, std::size_t size)>;

/// One file of a batch: the entry, where its bytes go, and how it went.
struct FetchJob {
  const proto::Entry* entry;
  ByteSink sink;
  Status result;
  /// Bytes already staged by an earlier run: the sink wants the file from this byte on.
  std::uint64_t offset = 0;
};

/// Where the bytes of new files come from (a parent, or tier0's source folder).
class Fetcher {
 public:
  virtual ~Fetcher() = default;
  /// Streams the bytes of `entry` into `sink`. The applier checks size and SHA-256.
  virtual Status fetch(const proto::Entry& entry, const ByteSink& sink) = 0;
  /// Fetches a batch, possibly several files at once; sinks are called from the calling thread
  /// only, never two at once. Returns the first failure. By default, one after another.
  virtual Status fetch_many(std::span<FetchJob> jobs) {
    for (auto& job : jobs) {
      // From the first byte, the ones before `offset` dropped: a local source costs little.
      std::uint64_t skip = job.offset;
      job.result = fetch(*job.entry, [&](const char* data, std::size_t size) -> Status {
        const std::size_t drop = static_cast<std::size_t>(std::min<std::uint64_t>(skip, size));
        skip -= drop;
        return drop == size ? Status{} : job.sink(data + drop, size - drop);
      });
      if (!job.result) return job.result;
    }
    return {};
  }
  /// Places the file at `dest` without copying (tier0's hard link from its source), with the
  /// entry's content and metadata; returns false when that is not possible.
  virtual Result<bool> place(const proto::Entry& /*entry*/, const fs::path& /*dest*/) {
    return false;
  }
};

struct ApplyStats {
  std::uint64_t added = 0;
  std::uint64_t changed = 0;
  std::uint64_t deleted = 0;
  std::uint64_t fetched_files = 0;
  std::uint64_t fetched_bytes = 0;
  std::uint64_t reused_files = 0;   ///< copied from a local file of the same hash, or in place
  std::uint64_t resumed_files = 0;  ///< fetched from where an earlier run's download stopped
};

/// One candidate to apply: its verified envelope and pins, its effective snapshot and manifests.
/// The applied manifests are not needed: the plan says what goes and what content it leaves
/// behind. The candidate's serial may be the applied one when only its pins change.
struct ApplyRequest {
  std::string envelope;
  std::string pins;           ///< the candidate's pins document ("": none; docs/protocol.md)
  proto::Snapshot candidate;  ///< effective: the envelope's payload with `pins` substituted
  ManifestSet candidate_manifests;
  std::optional<proto::Snapshot> applied;  ///< nullopt on an initial sync
  /// Manifests kept in the store although the candidate does not name them (a held change's).
  std::set<proto::Digest> keep_manifests;
};

class Applier {
 public:
  Applier(StateStore& state, Fetcher& fetcher) : state_(state), fetcher_(fetcher) {}

  /// A flag raised on SIGTERM: staging stops at the next file or chunk, before anything is
  /// installed (what was verified stays staged for the next run). Installing is never cut.
  void set_stop_flag(const std::atomic<bool>* stop) { stop_ = stop; }

  /// Applies `req` following `plan` (made by make_plan from the request's manifests) through
  /// every phase; on error nothing is committed and the tree holds only old or new content (the
  /// journal lets the next run finish).
  Result<ApplyStats> apply(const ApplyRequest& req, const Plan& plan);

  /// True when the last apply failed because the parent's bytes contradicted their signed entry
  /// (size or SHA-256): nothing staged for that candidate deserves to be kept.
  bool content_rejected() const { return content_rejected_; }

  /// Removes everything staged for a candidate that will not be applied.
  void discard_staging();

  /// Puts back entries of the applied snapshot that the tree lost or damaged (the scrubber's and
  /// `verify --repair`'s work): `refetch` through the same verified staging and renames as an
  /// apply (an entry found intact in place is left alone), `retouch` (content intact) given its
  /// mode and mtime again. No journal: each step replaces a damaged file with a verified one.
  /// Discards what an interrupted apply staged. On error, what was installed stays installed.
  Status repair(std::vector<const proto::Entry*> refetch, std::vector<const proto::Entry*> retouch);

  /// Finishes what a killed apply left: the journaled candidate is installed and committed, or,
  /// if it was committed, its deletions are done. Returns false when there was nothing to do.
  Result<bool> recover();

 private:
  /// How each entry of the plan reaches the tree; decided while staging.
  enum class Action { kRename, kInPlace, kRetouch, kSymlink };
  /// One run of stage(): its leftovers, local copies and batch of downloads (apply.cpp).
  class Staging;
  /// Folders an install() pass has made (each is made once).
  using MadeDirs = std::unordered_set<std::string>;

  Status stage(const Plan& plan, ApplyStats& stats);
  Status install(const Plan& plan);
  Status install_entry(const TreeFs& tree, const proto::Entry& e, MadeDirs& made_dirs);
  Status commit(const ApplyRequest& req);
  Status sync_state_and_tree();
  Status finish(const proto::Snapshot& candidate, const Plan& plan,
                const std::optional<proto::Snapshot>& previous, ApplyStats& stats,
                const std::set<proto::Digest>& keep_manifests = {});
  Status republish(const Applied& applied);
  Status restore_served(const Applied& applied);
  Status finish_committed(const Journal& journal, const Applied& applied);
  Status resume_journaled(const Journal& journal, const std::optional<Applied>& applied);

  StateStore& state_;
  Fetcher& fetcher_;
  std::unordered_map<const proto::Entry*, Action> actions_;
  bool content_rejected_ = false;
  bool repairing_ = false;  ///< stage() refetches even what looks intact in place
  const std::atomic<bool>* stop_ = nullptr;
  bool stopping() const { return stop_ && stop_->load(); }
};

}  // namespace tiersync::sync
