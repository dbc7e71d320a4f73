#pragma once
/// The daemon loop's "what next": a pure function from (state, event) to the next state and the
/// action to take. No I/O, no clock of its own: daemon.cpp feeds it events and carries out its
/// actions, tests/unit/node/loop_test.cpp drives it directly.

#include <chrono>
#include <cstdint>
#include <optional>

namespace tiersync::node {

using LoopClock = std::chrono::steady_clock;

/// What the configuration says about scheduling (replaced on SIGHUP).
struct LoopPolicy {
  bool tier0 = false;
  std::chrono::seconds poll{60};    ///< relay: a cycle at least this often
  std::chrono::seconds settle{0};   ///< tier0: the source quiet this long before a publish
  std::chrono::seconds look{1};     ///< tier0: how often the source is looked at
  std::chrono::seconds resign{60};  ///< tier0: how often a quiet source is re-checked (re-sign)
};

struct LoopState {
  LoopPolicy policy;
  bool due = false;     ///< a cycle is wanted
  bool forced = false;  ///< tier0: publish without waiting for the source to settle (sync-now)
  LoopClock::time_point quiet_since{};  ///< tier0: the last change seen in the source
  LoopClock::time_point next_check{};   ///< relay: the next scheduled cycle; tier0: re-sign check
};

enum class EventKind {
  kStarted,        ///< the daemon is up: a first cycle at once
  kTimer,          ///< the wait the last step asked for has passed
  kSourceChanged,  ///< tier0: inotify or a fingerprint scan saw the source change
  kSyncNow,        ///< `tiersyncctl sync-now` or `approve`, SIGUSR1
  kNewSerial,      ///< relay: the long poll saw a newer serial at the parent
  kReload,         ///< SIGHUP
  kReloaded,       ///< the reload succeeded; `policy` is the new configuration's
  kCycleDone,      ///< a cycle ended (whatever its outcome)
  kStop,           ///< SIGTERM or SIGINT
};

struct Event {
  Event() = default;
  Event(EventKind k, LoopClock::time_point at, std::optional<LoopPolicy> p = std::nullopt)
      : kind(k), now(at), policy(p) {}

  EventKind kind = EventKind::kTimer;
  LoopClock::time_point now{};
  std::optional<LoopPolicy> policy;  ///< with kReloaded
};

enum class Action {
  kWait,    ///< wait for the next event, at most `wait`
  kCycle,   ///< run a cycle now, then report kCycleDone
  kReload,  ///< load the configuration again, then report kReloaded (or nothing if refused)
  kStop,    ///< leave the loop
};

struct Step {
  LoopState state;
  Action action = Action::kWait;
  LoopClock::duration wait{};  ///< with kWait
};

/// The next state and what to do, from the current state and one event.
Step decide(LoopState state, const Event& event);

// ---------------------------------------------------------------------------------------------
// The relay's long poll (daemon.cpp's Poller): how long it waits after each answer.

struct PollSchedule {
  std::chrono::seconds period{60};  ///< poll_seconds (at most 300): the longest retry of a serial
  unsigned failures = 0;            ///< failed or refused polls in a row
  std::uint64_t last_woken = 0;     ///< the serial the last wake-up was for
  unsigned repeats = 0;             ///< wake-ups in a row for it that did not get it applied
};

enum class PollAnswer {
  kNotModified,  ///< nothing above the applied serial: ask again
  kFailed,       ///< an error, a refused envelope, or nothing newer answered at once
  /// `503` with a `Retry-After`: the parent is stopping (a restart) or over its caps, and says
  /// when to ask again (docs/protocol.md). Not a failure of the parent, but a parent that keeps
  /// saying it is still backed off.
  kRetryLater,
  kNewer,  ///< a verified serial above the applied (or held) one
};

/// The longest Retry-After the poll honours: a parent cannot put its children to sleep longer.
inline constexpr std::chrono::seconds kMaxRetryAfter{60};

/// The wait before the next step: after kFailed, 1, 2, 4... 32 s (reset by kNotModified and
/// kNewer); after kRetryLater, the parent's `retry_after` bounded to 1 s..kMaxRetryAfter, or the
/// backoff of kFailed if longer (it counts in the same run: a parent answering 503 again and
/// again, with Retry-After: 0, is asked at most every 32 s); after kNewer, the pause before waking
/// the loop: none the first time, then 5, 10, 20... s up to the period while the same serial
/// keeps coming back unapplied (a refused or held serial does not wake a cycle every few
/// seconds).
std::chrono::milliseconds next_poll(PollSchedule& schedule, PollAnswer answer,
                                    std::uint64_t serial = 0,
                                    std::chrono::seconds retry_after = {});

}  // namespace tiersync::node
