#include "daemon/node/daemon.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <ctime>

#include "daemon/node/node.h"
#include "daemon/ops/log.h"
#include "daemon/sync/scan.h"

namespace tiersync::node {

namespace {

// A cheap fingerprint of the source: any upload, rename or removal changes it.
std::uint64_t source_fingerprint(const ops::Config& config) {
  auto scan = sync::scan_tree(config.source_dir);
  if (!scan) return 0;
  std::uint64_t h = 1469598103934665603ull;
  auto mix = [&](std::uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  for (const auto& f : scan->files) {
    for (char c : f.path) mix(static_cast<unsigned char>(c));
    mix(f.size);
    mix(static_cast<std::uint64_t>(f.mtime_ns));
    mix(f.ino);
  }
  return h;
}

}  // namespace

int run_daemon(const std::string& config_path, ops::Config config) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGUSR1}) sigaddset(&set, s);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  spdlog::info("tiersyncd started: role={} name={} tree={}", ops::role_name(config.role),
               config.name, config.tree.string());

  std::uint64_t last_print = 0;
  std::int64_t quiet_since = std::time(nullptr);
  bool run_now = true;
  while (true) {
    if (config.role == ops::Role::kTier0) {
      std::uint64_t print = source_fingerprint(config);
      std::int64_t now = std::time(nullptr);
      if (print != last_print) {
        last_print = print;
        quiet_since = now;
        run_now = true;
      }
      if (run_now && now - quiet_since >= static_cast<std::int64_t>(config.settle_seconds)) {
        publish_once(config);
        run_now = false;
      }
    } else if (run_now) {
      sync_once(config);
      run_now = false;
    }
    // tier0 looks at its source every second (and re-signs on time); relays poll.
    int wait =
        config.role == ops::Role::kTier0 ? 1 : static_cast<int>(config.upstream.poll_seconds);
    timespec timeout{wait, 0};
    int sig = sigtimedwait(&set, nullptr, &timeout);
    if (sig == SIGTERM || sig == SIGINT) {
      spdlog::info("tiersyncd stopping on signal {}", sig);
      return kExitOk;
    }
    if (sig == SIGHUP) {
      auto next = ops::load_config(config_path);
      if (next) {
        if (auto st = ops::check_resources(*next); !st) next = st.error();
      }
      if (!next) {
        spdlog::error("reload refused, keeping the running configuration: {}", next.message());
      } else {
        config = std::move(*next);
        ops::setup_logging(config.log);
        spdlog::info("configuration reloaded from {}", config.file.string());
        run_now = true;
      }
    }
    if (sig == SIGUSR1) run_now = true;  // sync now
    if (sig < 0 && config.role != ops::Role::kTier0) run_now = true;
    if (sig < 0 && config.role == ops::Role::kTier0) {
      // Re-sign on time even when the source is quiet: publish_once decides whether it is due.
      static std::int64_t last_check = 0;
      std::int64_t now = std::time(nullptr);
      if (now - last_check >= 60) {
        last_check = now;
        run_now = true;
      }
    }
  }
}

}  // namespace tiersync::node
