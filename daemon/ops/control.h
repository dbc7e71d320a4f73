#pragma once
/// The control socket: a Unix stream socket (mode 0600) on which tiersyncctl reaches a running
/// daemon. One command per connection, one line each way.

#include <sys/types.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "proto/result.h"

namespace tiersync::ops {

/// Answers one command line (without its newline) with one reply line. Called on the control
/// socket's thread.
using ControlHandler = std::function<std::string(const std::string& command)>;

/// Listens on the control socket on a thread of its own until destroyed (or until `stop`, the
/// daemon's, is requested); the destructor joins the thread and removes the socket if it is
/// still this one.
class ControlSocket {
 public:
  /// Binds `path` (a stale socket there, one nobody answers on, is replaced; one another daemon
  /// answers on is never taken over) and starts answering. Errors name the path.
  static Result<std::unique_ptr<ControlSocket>> start(const std::filesystem::path& path,
                                                      ControlHandler handler,
                                                      std::stop_token stop = {});
  ~ControlSocket();
  ControlSocket(const ControlSocket&) = delete;
  ControlSocket& operator=(const ControlSocket&) = delete;

 private:
  ControlSocket() = default;
  void serve(std::stop_token stop);

  std::filesystem::path path_;
  ControlHandler handler_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  ///< an eventfd, written when stop is requested: poll() returns at once
  dev_t dev_ = 0;     ///< the bound socket's identity, to remove only our own
  ino_t ino_ = 0;
  std::stop_token daemon_stop_;
  std::jthread thread_;  ///< last: joined before the descriptors above are closed
};

/// Sends `command` to the daemon listening on `path` and returns its reply; an error says that
/// no daemon is running when nothing listens there.
Result<std::string> control_request(const std::filesystem::path& path, const std::string& command);

}  // namespace tiersync::ops
