#include "daemon/ops/fd_limit.h"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>

namespace tiersync::ops {

namespace {

std::uint64_t as_count(rlim_t v) {
  return v == RLIM_INFINITY ? UINT64_MAX : static_cast<std::uint64_t>(v);
}

}  // namespace

FdLimit fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return {};
  return {as_count(rl.rlim_cur), as_count(rl.rlim_max)};
}

FdLimit raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    spdlog::warn("descriptor limit: getrlimit failed: {}", std::strerror(errno));
    return {};
  }
  if (rl.rlim_cur == rl.rlim_max) {
    spdlog::info("descriptor limit: {} (soft = hard)", as_count(rl.rlim_cur));
    return {as_count(rl.rlim_cur), as_count(rl.rlim_max)};
  }
  const rlim_t before = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) {
    // Linux caps the limit at fs.nr_open; an infinite hard limit cannot be taken literally.
    spdlog::warn("descriptor limit: cannot raise {} to {}: {}", as_count(before),
                 as_count(rl.rlim_max), std::strerror(errno));
    return {as_count(before), as_count(rl.rlim_max)};
  }
  spdlog::info("descriptor limit: raised from {} to {} (the hard limit)", as_count(before),
               as_count(rl.rlim_cur));
  return {as_count(rl.rlim_cur), as_count(rl.rlim_max)};
}

}  // namespace tiersync::ops
