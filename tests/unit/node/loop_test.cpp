// The daemon loop's "what next" (daemon/node/loop.h), driven event by event without a daemon:
// when a cycle runs, when it waits and how long, for a relay and for tier0.

#include "daemon/node/loop.h"

#include <gtest/gtest.h>

#include <vector>

namespace tiersync::node {
namespace {

using namespace std::chrono_literals;

const LoopClock::time_point t0 = LoopClock::time_point{} + 1000s;

LoopState relay_state(std::chrono::seconds poll = 60s) {
  LoopState s;
  s.policy.poll = poll;
  return s;
}

LoopState tier0_state(std::chrono::seconds settle = 10s) {
  LoopState s;
  s.policy.tier0 = true;
  s.policy.settle = settle;
  return s;
}

Step feed(LoopState& s, EventKind kind, LoopClock::time_point now) {
  Step step = decide(s, {kind, now, std::nullopt});
  s = step.state;
  return step;
}

TEST(LoopTest, ARelayCyclesAtStartThenWaitsItsPollPeriod) {
  LoopState s = relay_state(60s);
  EXPECT_EQ(feed(s, EventKind::kStarted, t0).action, Action::kCycle);
  Step after = feed(s, EventKind::kCycleDone, t0 + 5s);
  EXPECT_EQ(after.action, Action::kWait);
  EXPECT_EQ(after.wait, LoopClock::duration(60s));
  // A timer that fires early (a spurious wake-up) waits for the rest only.
  Step early = feed(s, EventKind::kTimer, t0 + 25s);
  EXPECT_EQ(early.action, Action::kWait);
  EXPECT_EQ(early.wait, LoopClock::duration(40s));
  EXPECT_EQ(feed(s, EventKind::kTimer, t0 + 65s).action, Action::kCycle);
}

TEST(LoopTest, ANewSerialOrSyncNowStartsARelayCycleAtOnce) {
  LoopState s = relay_state(3600s);
  feed(s, EventKind::kStarted, t0);
  feed(s, EventKind::kCycleDone, t0 + 1s);
  EXPECT_EQ(feed(s, EventKind::kNewSerial, t0 + 2s).action, Action::kCycle);
  feed(s, EventKind::kCycleDone, t0 + 3s);
  EXPECT_EQ(feed(s, EventKind::kSyncNow, t0 + 4s).action, Action::kCycle);
  Step done = feed(s, EventKind::kCycleDone, t0 + 5s);
  EXPECT_EQ(done.action, Action::kWait);
  EXPECT_EQ(done.wait, LoopClock::duration(3600s)) << "the schedule restarts after each cycle";
}

TEST(LoopTest, StopAndReloadWinOverEverythingAndKeepTheState) {
  LoopState s = relay_state();
  feed(s, EventKind::kStarted, t0);
  const LoopState before = s;
  Step stop = feed(s, EventKind::kStop, t0 + 1s);
  EXPECT_EQ(stop.action, Action::kStop);
  EXPECT_TRUE(stop.state.due) << "the state is left as it was";
  Step reload = decide(before, {EventKind::kReload, t0 + 1s, std::nullopt});
  EXPECT_EQ(reload.action, Action::kReload);
}

TEST(LoopTest, AReloadTakesTheNewPolicyAndCyclesAtOnce) {
  LoopState s = relay_state(60s);
  feed(s, EventKind::kStarted, t0);
  feed(s, EventKind::kCycleDone, t0 + 1s);
  LoopPolicy slower;
  slower.poll = 600s;
  Step reloaded = decide(s, {EventKind::kReloaded, t0 + 2s, slower});
  EXPECT_EQ(reloaded.action, Action::kCycle);
  s = reloaded.state;
  EXPECT_EQ(s.policy.poll, 600s);
  EXPECT_EQ(feed(s, EventKind::kCycleDone, t0 + 3s).wait, LoopClock::duration(600s));
}

TEST(LoopTest, Tier0WaitsForTheSourceToSettle) {
  LoopState s = tier0_state(10s);
  // At start the source counts as just changed: the first publish waits to settle too.
  Step start = feed(s, EventKind::kStarted, t0);
  EXPECT_EQ(start.action, Action::kWait);
  EXPECT_EQ(start.wait, LoopClock::duration(1s)) << "tier0 looks at its source every second";
  EXPECT_EQ(feed(s, EventKind::kTimer, t0 + 5s).action, Action::kWait);
  // An upload at +6 s restarts the quiet period.
  EXPECT_EQ(feed(s, EventKind::kSourceChanged, t0 + 6s).action, Action::kWait);
  EXPECT_EQ(feed(s, EventKind::kTimer, t0 + 12s).action, Action::kWait);
  EXPECT_EQ(feed(s, EventKind::kTimer, t0 + 16s).action, Action::kCycle);
  EXPECT_EQ(feed(s, EventKind::kCycleDone, t0 + 17s).action, Action::kWait);
  EXPECT_EQ(feed(s, EventKind::kTimer, t0 + 18s).action, Action::kWait) << "nothing changed";
}

TEST(LoopTest, Tier0SyncNowPublishesWithoutWaitingToSettle) {
  LoopState s = tier0_state(3600s);
  feed(s, EventKind::kStarted, t0);
  feed(s, EventKind::kSourceChanged, t0 + 1s);
  EXPECT_EQ(feed(s, EventKind::kTimer, t0 + 2s).action, Action::kWait);
  EXPECT_EQ(feed(s, EventKind::kSyncNow, t0 + 3s).action, Action::kCycle);
  feed(s, EventKind::kCycleDone, t0 + 4s);
  EXPECT_FALSE(s.forced) << "sync-now forces one publish, not every later one";
  EXPECT_EQ(feed(s, EventKind::kSourceChanged, t0 + 5s).action, Action::kWait);
}

TEST(LoopTest, Tier0ChecksForReSigningEveryMinuteOfAQuietSource) {
  LoopState s = tier0_state(0s);
  EXPECT_EQ(feed(s, EventKind::kStarted, t0).action, Action::kCycle);
  feed(s, EventKind::kCycleDone, t0 + 1s);
  EXPECT_EQ(feed(s, EventKind::kTimer, t0 + 30s).action, Action::kWait);
  EXPECT_EQ(feed(s, EventKind::kTimer, t0 + 61s).action, Action::kCycle);
  feed(s, EventKind::kCycleDone, t0 + 62s);
  EXPECT_EQ(feed(s, EventKind::kTimer, t0 + 63s).action, Action::kWait);
}

// The long poll's waits (next_poll): a failing parent is asked again after 1, 2, 4... 32 s, and
// an answer resets that; a newer serial wakes the loop at once, but the same serial coming back
// unapplied (held or refused) waits 5, 10, 20... s, never more than the poll period.
TEST(PollScheduleTest, FailuresBackOffUpToACapAndAnyAnswerResetsThem) {
  PollSchedule s{300s};
  std::vector<std::chrono::milliseconds> waits;
  for (int i = 0; i < 9; ++i) waits.push_back(next_poll(s, PollAnswer::kFailed));
  EXPECT_EQ(waits,
            (std::vector<std::chrono::milliseconds>{1s, 2s, 4s, 8s, 16s, 32s, 32s, 32s, 32s}));
  EXPECT_EQ(next_poll(s, PollAnswer::kNotModified), 0ms);
  EXPECT_EQ(next_poll(s, PollAnswer::kFailed), 1s);
  EXPECT_EQ(next_poll(s, PollAnswer::kFailed), 2s);
  EXPECT_EQ(next_poll(s, PollAnswer::kNewer, 7), 0ms);
  EXPECT_EQ(next_poll(s, PollAnswer::kFailed), 1s);
}

TEST(PollScheduleTest, TheSameSerialAgainWaitsLongerUpToThePeriod) {
  PollSchedule s{60s};
  EXPECT_EQ(next_poll(s, PollAnswer::kNewer, 5), 0ms);
  std::vector<std::chrono::milliseconds> waits;
  for (int i = 0; i < 8; ++i) waits.push_back(next_poll(s, PollAnswer::kNewer, 5));
  EXPECT_EQ(waits, (std::vector<std::chrono::milliseconds>{5s, 15s, 35s, 60s, 60s, 60s, 60s, 60s}));
  // A new serial wakes the loop at once again.
  EXPECT_EQ(next_poll(s, PollAnswer::kNewer, 6), 0ms);
  EXPECT_EQ(next_poll(s, PollAnswer::kNewer, 6), 5s);
  // Failures in between do not make a repeated serial look new.
  EXPECT_EQ(next_poll(s, PollAnswer::kFailed), 1s);
  EXPECT_EQ(next_poll(s, PollAnswer::kNewer, 6), 15s);
}

// A 503 with Retry-After (a parent stopping for a restart, or over its caps): asked again after
// what it says, bounded to 1..60 s, and counted in the backoff so that a parent saying it again
// and again (Retry-After: 0 included) is not asked more often than a failing one.
TEST(PollScheduleTest, RetryAfterIsHonouredWithinBoundsAndBacksOff) {
  PollSchedule s{300s};
  EXPECT_EQ(next_poll(s, PollAnswer::kRetryLater, 0, 1s), 1s);  // a restart: at once
  EXPECT_EQ(next_poll(s, PollAnswer::kFailed), 2s);        // down meanwhile: the backoff goes on
  EXPECT_EQ(next_poll(s, PollAnswer::kNotModified), 0ms);  // back: the count starts again
  EXPECT_EQ(next_poll(s, PollAnswer::kRetryLater, 0, 30s), 30s);  // over its caps

  // Hostile values: never a spin, never a long sleep.
  PollSchedule zero{300s};
  std::vector<std::chrono::milliseconds> waits;
  for (int i = 0; i < 8; ++i) waits.push_back(next_poll(zero, PollAnswer::kRetryLater, 0, 0s));
  EXPECT_EQ(waits, (std::vector<std::chrono::milliseconds>{1s, 2s, 4s, 8s, 16s, 32s, 32s, 32s}));
  PollSchedule huge{300s};
  EXPECT_EQ(next_poll(huge, PollAnswer::kRetryLater, 0, std::chrono::seconds::max()), 60s);
  EXPECT_EQ(next_poll(huge, PollAnswer::kRetryLater, 0, std::chrono::seconds::min()), 2s);
  EXPECT_EQ(next_poll(huge, PollAnswer::kRetryLater, 0, 86400s), 60s);
  // An answer resets it, as after a failure.
  EXPECT_EQ(next_poll(huge, PollAnswer::kNewer, 9), 0ms);
  EXPECT_EQ(next_poll(huge, PollAnswer::kRetryLater, 0, 1s), 1s);
}

}  // namespace
}  // namespace tiersync::node
