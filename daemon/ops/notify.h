#pragma once
/// The systemd notification protocol without libsystemd: datagrams to $NOTIFY_SOCKET. Works (and
/// does nothing) where systemd is absent.

#include <chrono>
#include <cstdint>
#include <string_view>

namespace tiersync::ops {

/// Sends `state` ("READY=1", "STATUS=...", "WATCHDOG=1", "STOPPING=1"); false when there is no
/// NOTIFY_SOCKET or the send failed.
bool notify_systemd(std::string_view state);

/// The interval of systemd's watchdog for this process (WATCHDOG_USEC, when WATCHDOG_PID is
/// absent or ours), or zero.
std::chrono::microseconds watchdog_interval();

/// Called by whatever moves a cycle forward (a chunk of a file received, a source file hashed
/// or placed): the daemon feeds systemd's watchdog only while this count moves or no cycle runs,
/// so a cycle stuck on a silent parent or a hung disk is seen, and restarted, by systemd.
void note_progress();
/// The count note_progress() has reached (process-wide, never decreasing).
std::uint64_t progress();

}  // namespace tiersync::ops
