#pragma once
/// The control socket: a Unix stream socket (mode 0600) on which tiersyncctl reaches a running
/// daemon. One command per connection, one line each way.

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "proto/result.h"

namespace tiersync::ops {

/// Answers one command line (without its newline) with one reply line.
using ControlHandler = std::function<std::string(const std::string& command)>;

/// Listens on `path` (a stale socket there is replaced) on a thread of its own, for as long as
/// the process lives. Errors name the path.
Status serve_control_socket(const std::filesystem::path& path, ControlHandler handler);

/// Sends `command` to the daemon listening on `path` and returns its reply; an error says that
/// no daemon is running when nothing listens there.
Result<std::string> control_request(const std::filesystem::path& path, const std::string& command);

}  // namespace tiersync::ops
