#pragma once
/// The long-running loop: cycles on a schedule until SIGTERM, SIGHUP reloads the configuration.

#include <string>

#include "daemon/ops/config.h"

namespace tiersync::node {

/// Runs in the foreground until SIGTERM or SIGINT; returns the process exit code.
int run_daemon(const std::string& config_path, ops::Config config);

}  // namespace tiersync::node
