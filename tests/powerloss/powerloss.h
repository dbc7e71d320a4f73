#pragma once
/// The commands of tiersync_powerloss_fs (tests/powerloss/README.md): ioctls on any file or
/// folder of its mount, usually the mount point itself.

#include <linux/ioctl.h>
#include <stdint.h>

/// What the file system counted since it was mounted.
struct powerloss_stats {
  uint64_t ops;         ///< requests that changed something (writes, creates, renames...)
  uint64_t fsyncs;      ///< fsync/fdatasync of a file
  uint64_t dir_fsyncs;  ///< fsync of a folder
  uint64_t syncfs;      ///< syncfs(2), forwarded by libtiersync_powerloss_sync.so
  uint64_t faults;      ///< requests failed by the fault set with POWERLOSS_FAULT
};

#define POWERLOSS_IOC_MAGIC 0xB7
/// syncfs(2): everything becomes durable. The kernel never sends FUSE_SYNCFS to a /dev/fuse
/// server (only virtiofs has it), so the preloaded shim forwards syncfs with this.
#define POWERLOSS_SYNCFS _IO(POWERLOSS_IOC_MAGIC, 1)
/// Power loss: only what is durable survives. The backing folder is rewritten to it and every
/// later request fails with EIO until the mount is gone.
#define POWERLOSS_CUT_NONE _IO(POWERLOSS_IOC_MAGIC, 2)
/// Power loss after the file system wrote back every namespace change (creates, renames,
/// unlinks, attributes) but no file data that was not made durable: the ordering of a journaling
/// file system with delayed allocation, where a renamed file can come back empty.
#define POWERLOSS_CUT_META _IO(POWERLOSS_IOC_MAGIC, 3)
/// Power loss after every file's data was written back, but no namespace change that was not
/// made durable.
#define POWERLOSS_CUT_DATA _IO(POWERLOSS_IOC_MAGIC, 4)
#define POWERLOSS_STATS _IOR(POWERLOSS_IOC_MAGIC, 5, struct powerloss_stats)

/// What a cut would leave, written to a new folder instead of the backing one; the power stays
/// on. A test cuts once per stop of the process and still checks every kind of survivor.
struct powerloss_dump {
  uint32_t cut;       ///< 2, 3 or 4: the number of POWERLOSS_CUT_NONE, _META or _DATA
  char folder[4092];  ///< absolute path, NUL-terminated; must not exist
};
#define POWERLOSS_DUMP _IOW(POWERLOSS_IOC_MAGIC, 6, struct powerloss_dump)

/// A fault on command (a full disk, a failing one): from now on every request of the kinds in
/// `ops` on a name containing `name` (or a name in a folder whose name contains it; for a write,
/// the name the file was created or last renamed as) fails with `error`; writes only once
/// `after_bytes` bytes of such writes went through (the disk fills up mid-file). The power stays
/// on; `error` 0 ends the fault.
#define POWERLOSS_FAULT_WRITE 1u   ///< write(2) of a file's data
#define POWERLOSS_FAULT_CREATE 2u  ///< create, mknod, mkdir, symlink, link (the new name)
#define POWERLOSS_FAULT_RENAME 4u  ///< rename (either name)
#define POWERLOSS_FAULT_UNLINK 8u  ///< unlink, rmdir
#define POWERLOSS_FAULT_FSYNC 16u  ///< fsync of a file or folder, syncfs (any name)
struct powerloss_fault {
  int32_t error;         ///< the errno to fail with (ENOSPC, EIO, ...); 0: no fault
  uint32_t ops;          ///< POWERLOSS_FAULT_* bits
  uint64_t after_bytes;  ///< with POWERLOSS_FAULT_WRITE: bytes written before the first failure
  char name[240];        ///< a part of the name, NUL-terminated ("": every name)
};
#define POWERLOSS_FAULT _IOW(POWERLOSS_IOC_MAGIC, 7, struct powerloss_fault)
