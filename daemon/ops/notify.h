#pragma once
/// The systemd notification protocol without libsystemd: datagrams to $NOTIFY_SOCKET. Works (and
/// does nothing) where systemd is absent.

#include <chrono>
#include <string_view>

namespace tiersync::ops {

/// Sends `state` ("READY=1", "STATUS=...", "WATCHDOG=1", "STOPPING=1"); false when there is no
/// NOTIFY_SOCKET or the send failed.
bool notify_systemd(std::string_view state);

/// The interval of systemd's watchdog for this process (WATCHDOG_USEC, when WATCHDOG_PID is
/// absent or ours), or zero.
std::chrono::microseconds watchdog_interval();

}  // namespace tiersync::ops
