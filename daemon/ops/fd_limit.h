#pragma once
/// The process's descriptor limit (RLIMIT_NOFILE): raised at start, read by the server to size
/// its caps so that serving never takes the descriptors the node's own sync needs.

#include <cstdint>

namespace tiersync::ops {

/// The soft and hard RLIMIT_NOFILE.
struct FdLimit {
  std::uint64_t soft = 0;
  std::uint64_t hard = 0;
};

/// The current limits; {0, 0} when getrlimit fails.
FdLimit fd_limit();

/// Raises the soft limit to the hard one (systemd's default soft limit is 1,024 whatever
/// LimitNOFILE allows; select(2) is not used here, so nothing needs the low soft limit). Logs the
/// change, or a warning when it fails. Returns the limits in force afterwards.
FdLimit raise_fd_limit();

}  // namespace tiersync::ops
