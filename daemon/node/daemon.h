#pragma once
/// The long-running loop: cycles on a schedule until SIGTERM, SIGHUP reloads the configuration.
/// Its threads, what each owns and how each stops: docs/architecture.md.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/ops/config.h"
#include "daemon/sync/fs.h"
#include "proto/keys.h"

namespace tiersync::node {

/// Takes `state_dir/lock` for the rest of the process's life (one tiersyncd, daemon or --once,
/// per state_dir); the cycles this process runs share it. The error names the holder's pid, or
/// the first damaged state file (sync::StateStore::check_at_start): tiersyncd exits 1 then,
/// having changed nothing.
Result<sync::FileLock> lock_state_dir(const ops::Config& config);

/// The serial of an envelope the long poll received, read only once `threshold` distinct keys of
/// `trusted` signed it: nothing of an unverified payload is parsed (a hostile parent, or anyone
/// on an http:// path, could send anything).
Result<std::uint64_t> polled_serial(std::string_view envelope,
                                    const std::vector<proto::PublicKey>& trusted,
                                    unsigned threshold);

/// Runs in the foreground until SIGTERM or SIGINT; returns the process exit code once every
/// thread it started has been joined. The caller holds lock_state_dir().
int run_daemon(const std::string& config_path, ops::Config config);

}  // namespace tiersync::node
