#pragma once
/// Fault injection for the crash tests (docs/crash-safety.md, "How it is tested"): with
/// TIERSYNC_CRASH_AT=N in the environment, the process kills itself with SIGKILL right before
/// its N-th mutating step. Inert (one load and a compare) when the variable is unset.

namespace tiersync::sync {

/// Marks the step that follows as a mutating one: the N-th call kills the process.
void crash_point();

/// Files of at least this size are also killed half-way through their download: their first
/// half written, the rest not (Applier's staging).
inline constexpr unsigned long kMidFileCrashBytes = 64 * 1024;

}  // namespace tiersync::sync
