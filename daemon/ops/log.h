#pragma once
/// Logging through spdlog: text for a terminal (no timestamp under journald, which adds its own),
/// or JSON lines.

#include "daemon/ops/config.h"

namespace tiersync::ops {

/// Sets the default logger; `format` is "text" or "json".
void setup_logging(const LogConfig& config);

}  // namespace tiersync::ops
