// libtiersync_powerloss_sync.so, preloaded into tiersyncd by the power-loss test: forwards
// syncfs(2) on a FUSE mount to tiersync_powerloss_fs, which the kernel never tells (it sends
// FUSE_SYNCFS to virtiofs only). Everything else about the call is the real syncfs.

#include <dlfcn.h>
#include <errno.h>
#include <sys/ioctl.h>
#include <sys/vfs.h>

#include "tests/powerloss/powerloss.h"

namespace {
constexpr long kFuseSuperMagic = 0x65735546;
}

extern "C" int syncfs(int fd) {
  using Syncfs = int (*)(int);
  static const auto real = reinterpret_cast<Syncfs>(::dlsym(RTLD_NEXT, "syncfs"));
  if (!real) {
    errno = ENOSYS;
    return -1;
  }
  if (real(fd) != 0) return -1;
  struct statfs sfs;
  if (::fstatfs(fd, &sfs) != 0 || sfs.f_type != kFuseSuperMagic) return 0;
  // ENOTTY: another FUSE file system, for which the real call was all there is.
  if (::ioctl(fd, POWERLOSS_SYNCFS) == 0 || errno == ENOTTY) return 0;
  return -1;
}
