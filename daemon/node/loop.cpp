#include "daemon/node/loop.h"

#include <algorithm>

namespace tiersync::node {

Step decide(LoopState s, const Event& e) {
  const auto& p = s.policy;
  switch (e.kind) {
    case EventKind::kStop:
      return {s, Action::kStop, {}};
    case EventKind::kReload:
      return {s, Action::kReload, {}};
    case EventKind::kStarted:
      s.due = true;
      s.quiet_since = e.now;
      s.next_check = e.now + (p.tier0 ? p.resign : p.poll);
      break;
    case EventKind::kReloaded:
      if (e.policy) s.policy = *e.policy;
      s.due = true;  // the parent, the source or the guard may have changed
      s.next_check = e.now + (s.policy.tier0 ? s.policy.resign : s.policy.poll);
      break;
    case EventKind::kTimer:
      // tier0 re-signs on time even when the source is quiet (publish_once decides whether it is
      // due); a relay cycles every poll period whatever the long poll says.
      if (e.now >= s.next_check) {
        s.due = true;
        s.next_check = e.now + (p.tier0 ? p.resign : p.poll);
      }
      break;
    case EventKind::kSourceChanged:
      s.quiet_since = e.now;
      s.due = true;
      break;
    case EventKind::kSyncNow:
      s.due = s.forced = true;
      break;
    case EventKind::kNewSerial:
      s.due = true;
      break;
    case EventKind::kCycleDone:
      s.due = s.forced = false;
      if (!p.tier0) s.next_check = e.now + p.poll;
      break;
  }
  const auto& q = s.policy;
  if (s.due && (!q.tier0 || s.forced || e.now - s.quiet_since >= q.settle))
    return {s, Action::kCycle, {}};
  // tier0 looks at its source every `look` (and counts the settle time in those steps); a relay
  // sleeps until its next scheduled cycle unless an event comes first.
  const LoopClock::duration wait =
      q.tier0 ? LoopClock::duration(q.look)
              : std::max(LoopClock::duration::zero(), s.next_check - e.now);
  return {s, Action::kWait, wait};
}

std::chrono::milliseconds next_poll(PollSchedule& s, PollAnswer answer, std::uint64_t serial,
                                    std::chrono::seconds retry_after) {
  using namespace std::chrono_literals;
  switch (answer) {
    case PollAnswer::kNotModified:
      s.failures = 0;
      return 0ms;
    case PollAnswer::kFailed:
      s.failures = std::min(s.failures + 1, 6u);
      return 500ms * (1u << s.failures);
    case PollAnswer::kRetryLater: {
      // Retry-After: 0 (or a negative or huge value from a hostile parent) can neither make the
      // poll spin nor put it to sleep for long.
      s.failures = std::min(s.failures + 1, 6u);
      const std::chrono::milliseconds asked = std::clamp(retry_after, 1s, kMaxRetryAfter);
      return std::max(asked, 500ms * (1u << s.failures));
    }
    case PollAnswer::kNewer:
      s.failures = 0;
      s.repeats = serial == s.last_woken ? std::min(s.repeats + 1, 6u) : 0;
      s.last_woken = serial;
      return std::min<std::chrono::milliseconds>(5s * ((1u << s.repeats) - 1), s.period);
  }
  return 0ms;  // unreachable: every answer is handled above
}

}  // namespace tiersync::node
