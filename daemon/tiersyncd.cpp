// tiersyncd: one daemon for every role. Parses arguments and hands off to the node.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>

#include "daemon/node/daemon.h"
#include "daemon/node/node.h"
#include "daemon/ops/config.h"
#include "daemon/ops/fd_limit.h"
#include "daemon/ops/log.h"

namespace {

constexpr const char* kUsage =
    "usage: tiersyncd [--config FILE] [--once | --check-config]\n"
    "  --config FILE   configuration (default /etc/tiersync/tiersync.json)\n"
    "  --once          run one cycle and exit (0 ok, 1 failure, 2 config, 3 held)\n"
    "  --check-config  validate the configuration and exit\n";

}  // namespace

int main(int argc, char** argv) {
  using namespace tiersync;
  std::string config_path(ops::kDefaultConfigPath);
  bool once = false, check = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (a.starts_with("--config=")) {
      config_path = a.substr(9);
    } else if (a == "--once") {
      once = true;
    } else if (a == "--check-config") {
      check = true;
    } else if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return node::kExitOk;
    } else {
      std::fprintf(stderr, "tiersyncd: unknown argument \"%s\"\n%s", a.c_str(), kUsage);
      return node::kExitUsage;
    }
  }
  auto config = ops::load_config(config_path);
  if (config) {
    if (auto st = ops::check_resources(*config); !st) config = st.error();
  }
  if (!config) {
    std::fprintf(stderr, "tiersyncd: %s\n", config.message().c_str());
    return node::kExitUsage;
  }
  if (check) {
    std::printf("%s: valid configuration for role %s, node %s\n", config->file.c_str(),
                std::string(ops::role_name(config->role)).c_str(), config->name.c_str());
    return node::kExitOk;
  }
  ops::setup_logging(config->log);
  ops::raise_fd_limit();  // systemd's soft 1,024 is too few for a crowd of long polls
  // One tiersyncd per state_dir, daemon or --once, for the whole life of the process: a second
  // one leaves at once, before it touches any state or the control socket.
  auto lock = node::lock_state_dir(*config);
  if (!lock) {
    std::fprintf(stderr, "tiersyncd: %s\n", lock.message().c_str());
    return node::kExitFailure;
  }
  if (once) {
    auto outcome =
        config->role == ops::Role::kTier0 ? node::publish_once(*config) : node::sync_once(*config);
    return outcome.exit_code;
  }
  // Returns once every thread it started is joined: the process ends normally.
  return node::run_daemon(config_path, std::move(*config));
}
