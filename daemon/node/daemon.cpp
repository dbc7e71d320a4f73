#include "daemon/node/daemon.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <unistd.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "daemon/node/node.h"
#include "daemon/node/scrub.h"
#include "daemon/node/watch.h"
#include "daemon/ops/control.h"
#include "daemon/ops/log.h"
#include "daemon/ops/metrics.h"
#include "daemon/ops/notify.h"
#include "daemon/serve/server.h"
#include "daemon/sync/scan.h"
#include "daemon/sync/state.h"
#include "daemon/transport/transport.h"
#include "proto/dsse.h"
#include "proto/snapshot.h"

namespace tiersync::node {

namespace fs = std::filesystem;

namespace {

// The source's fingerprint: any upload, rename or removal changes it ("" if it cannot be read),
// and so does `.tiersync-busy` appearing or going (the scan leaves the marker out): a builder's
// finished upload is published once it has settled, not at the next minute's check.
std::string source_fingerprint(const ops::Config& config) {
  auto scan = sync::scan_tree(config.source_dir, /*sorted=*/false);
  const bool busy = ::access((config.source_dir / ".tiersync-busy").c_str(), F_OK) == 0;
  return scan ? sync::scan_fingerprint(*scan, busy ? "busy" : "") : std::string();
}

// Keeps one long poll open on an HTTP(S) parent and wakes the main loop (SIGUSR1) as soon as the
// parent serves a newer serial. Shared with its thread, which is detached: a poll in flight
// cannot be interrupted, and SIGTERM must not wait for it.
struct Poller {
  std::atomic<std::uint64_t> applied{0};
  std::atomic<bool> stop{false};
  /// Set once the daemon's own first cycle is done: polling before it would only wake a second
  /// cycle for the serial the first one is applying.
  std::atomic<bool> primed{false};

  static void start(std::shared_ptr<Poller> self, const ops::Config& config) {
    transport::TransportOptions options;
    options.ca_file = config.upstream.ca_file;
    options.connections = 1;
    auto t = transport::make_transport(config.upstream.url, options);
    if (!t) {
      spdlog::error("long poll disabled: {}", t.message());
      return;
    }
    const auto wait = std::chrono::seconds(std::min(config.upstream.poll_seconds, 300u));
    std::thread([self, t = std::shared_ptr<transport::Transport>(std::move(*t)), wait] {
      while (!self->primed && !self->stop)  // bounded by the first cycle, or SIGTERM
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::uint64_t last_woken = 0;  // the serial the last wake-up was for
      unsigned repeats = 0;          // wake-ups in a row for it that did not get it applied
      for (unsigned failures = 0; !self->stop;) {
        const std::uint64_t known = self->applied;
        auto r = t->poll_snapshot(known, wait);
        if (self->stop) return;
        std::uint64_t serial = 0;
        if (r && *r) {
          // Not verified here: the cycle verifies. The serial only decides whether to wake it.
          auto env = proto::decode_envelope(**r);
          auto snap =
              env ? proto::decode_snapshot(env->payload) : Result<proto::Snapshot>(env.error());
          if (snap) serial = snap->serial;
        }
        if (serial > known) {
          failures = 0;
          // The same serial again: the cycle could not apply it (refused, or the parent failed
          // half-way). Retried after 5, 10, 20... seconds, up to the wait, not every 5 seconds.
          repeats = serial == last_woken ? std::min(repeats + 1, 6u) : 0;
          last_woken = serial;
          const auto pause = std::min<std::chrono::milliseconds>(
              std::chrono::seconds(5) * ((1u << repeats) - 1), wait);
          for (auto waited = std::chrono::milliseconds(0); waited < pause && !self->stop;
               waited += std::chrono::milliseconds(100))
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
          if (self->stop) return;
          ::kill(::getpid(), SIGUSR1);
          // Give the cycle time to apply before asking again.
          for (int i = 0; i < 50 && !self->stop && self->applied == known; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        } else if (!r || (*r && serial <= known)) {
          // An error, or a parent answering at once without anything newer: back off.
          failures = std::min(failures + 1, 6u);
          if (!r) {
            ++ops::process_metrics().upstream_errors;
            spdlog::warn("long poll: {}", r.message());
          }
          for (unsigned i = 0; i < (1u << failures) * 5 && !self->stop; ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
      }
    }).detach();
  }
};

// One thread takes every signal with sigwait and queues it for the loop; SIGTERM and SIGINT
// also raise `stop`, which a running cycle checks between files and chunks. Detached like the
// poller: the process ends with _Exit.
struct Signals {
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable cv;
  std::deque<int> pending;

  static void start(std::shared_ptr<Signals> self, sigset_t set) {
    std::thread([self, set] {
      while (true) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) continue;
        if (sig == SIGTERM || sig == SIGINT) self->stop = true;
        std::lock_guard lock(self->mu);
        self->pending.push_back(sig);
        self->cv.notify_all();
      }
    }).detach();
  }
  /// The next signal, or -1 once `timeout` passed without one.
  int wait(std::chrono::seconds timeout) {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, timeout, [&] { return !pending.empty(); })) return -1;
    int sig = pending.front();
    pending.pop_front();
    return sig;
  }
};

std::uint64_t applied_serial(const ops::Config& config) {
  sync::StateStore state(config.state_dir, config.tree);
  auto applied = state.load_applied();
  return applied && *applied ? (*applied)->snapshot.serial : 0;
}

}  // namespace

int run_daemon(const std::string& config_path, ops::Config config) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGUSR1}) sigaddset(&set, s);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before any thread starts: all inherit it
  auto signals = std::make_shared<Signals>();
  Signals::start(signals, set);

  // The control socket: tiersyncctl sync-now, and approve, start a cycle at once.
  {
    std::error_code ec;
    fs::create_directories(config.control_socket.parent_path(), ec);
    auto st = ops::serve_control_socket(config.control_socket, [](const std::string& command) {
      if (command == "sync-now" || command == "approved") {
        ::kill(::getpid(), SIGUSR1);
        return std::string("ok: a cycle starts now");
      }
      return "error: unknown command \"" + command.substr(0, 64) + "\"";
    });
    if (!st) spdlog::error("{}; sync-now will not reach this daemon", st.message());
  }
  spdlog::info("tiersyncd started: role={} name={} tree={}", ops::role_name(config.role),
               config.name, config.tree.string());

  // The server: the applied snapshot, republished after every cycle.
  std::unique_ptr<serve::Server> server;
  std::shared_ptr<const serve::ServedView> view;
  auto publish_view = [&] {
    if (!server) return;
    sync::StateStore state(config.state_dir, config.tree);
    const ops::Config snapshot_of_config = config;
    auto v = serve::load_view(
        state, status_json(config),
        [snapshot_of_config] { return metrics_text(snapshot_of_config); }, view.get());
    if (!v) {
      spdlog::error("cannot serve the applied snapshot: {}", v.message());
      return;
    }
    view = std::move(*v);
    server->publish(view);
  };
  if (!config.listen.empty()) {
    server = std::make_unique<serve::Server>(config.listen, config.tree,
                                             serve::server_limits(config.serve));
    if (auto st = server->start(); !st) {
      spdlog::error("cannot listen: {}", st.message());
      return kExitFailure;
    }
    publish_view();
  }
  // The long poll on the parent; started again with a reloaded configuration (its URL or CA
  // file may have changed). A stopped poller's thread ends after its request in flight.
  std::shared_ptr<Poller> poller;
  bool long_poll = false;
  auto start_poller = [&] {
    if (poller) poller->stop = true;
    poller = std::make_shared<Poller>();
    long_poll = config.is_relay() && !config.upstream.url.starts_with("file:");
    if (long_poll) {
      poller->applied = applied_serial(config);
      Poller::start(poller, config);
    }
  };
  start_poller();
  auto after_cycle = [&] {
    sync::StateStore state(config.state_dir, config.tree);
    const auto cycle = state.load_cycle();
    const auto serial = applied_serial(config);
    // A held serial was looked at: the long poll waits for the next one (an approval wakes the
    // loop through the control socket), not one cycle every few seconds for the same serial.
    if (long_poll) {
      poller->applied = cycle.result == "held" ? std::max(serial, cycle.upstream_serial) : serial;
      poller->primed = true;
    }
    publish_view();
    const auto held = state.load_held().partitions.size();
    ops::notify_systemd("STATUS=serial " + std::to_string(serial) + ", upstream " +
                        std::to_string(std::max(cycle.upstream_serial, serial)) + ", lag " +
                        std::to_string(std::max(cycle.upstream_serial, serial) - serial) +
                        ", held " + std::to_string(held) + ", last cycle " + cycle.result);
  };

  // Ready once state is loaded and listeners are open. The watchdog is fed from a thread of its
  // own: a long initial sync must not look like a hang.
  ops::notify_systemd("READY=1\nSTATUS=serial " + std::to_string(applied_serial(config)));
  if (const auto interval = ops::watchdog_interval(); interval.count() > 0) {
    std::thread([interval] {
      while (true) {
        ops::notify_systemd("WATCHDOG=1");
        std::this_thread::sleep_for(interval / 2);
      }
    }).detach();
  }

  // tier0 learns of uploads from inotify, with a full fingerprint scan once a minute as a safety
  // net (a lost event, a file system inotify does not see, such as NFS); without inotify it
  // scans every second.
  std::unique_ptr<SourceWatcher> watcher;
  auto start_watcher = [&] {
    watcher.reset();
    if (config.role != ops::Role::kTier0) return;
    watcher = std::make_unique<SourceWatcher>(config.source_dir);
    if (!watcher->available())
      spdlog::warn("{}; looking at the source by scanning it every second", watcher->why());
  };
  start_watcher();
  // The scrubber's thread (docs/architecture.md): requested to stop and joined when run_daemon
  // returns. It keeps the configuration it started with (a reload does not change its rate).
  const std::jthread scrubber = start_scrubber(config);
  constexpr std::int64_t kSafetyScanSeconds = 60;
  std::string last_print;
  std::int64_t last_scan = 0;
  auto rescan = [&](std::int64_t now) {  // true when the source's fingerprint moved
    std::string print = source_fingerprint(config);
    last_scan = now;
    if (print == last_print) return false;
    last_print = std::move(print);
    return true;
  };
  std::int64_t quiet_since = std::time(nullptr);
  bool run_now = true;
  bool forced = false;  // tier0: sync-now publishes without waiting for a quiet source
  std::unique_ptr<transport::Transport> upstream;  // a relay's, kept across cycles
  while (true) {
    if (config.role == ops::Role::kTier0) {
      std::int64_t now = std::time(nullptr);
      const bool watched = watcher && watcher->available();
      bool changed = watched && watcher->changed();
      if (!watched || now - last_scan >= kSafetyScanSeconds) changed = rescan(now) || changed;
      if (changed) {
        quiet_since = now;
        run_now = true;
      }
      if (run_now &&
          (forced || now - quiet_since >= static_cast<std::int64_t>(config.settle_seconds))) {
        if (watched) rescan(now);  // the source as published, to compare with afterwards
        publish_once(config, &signals->stop);
        after_cycle();
        run_now = false;
        forced = false;
        if (watched) {
          // The publish's own hard links touched the source's files (IN_ATTRIB): its events
          // are dropped, and a scan tells whether a builder changed anything meanwhile.
          watcher->changed();
          now = std::time(nullptr);
          if (rescan(now)) {
            quiet_since = now;
            run_now = true;
          }
        }
      }
    } else if (run_now) {
      sync_once(config, &signals->stop, &upstream);
      after_cycle();
      run_now = false;
    }
    // tier0 looks at its source's events every second (and re-signs on time); relays poll.
    int wait =
        config.role == ops::Role::kTier0 ? 1 : static_cast<int>(config.upstream.poll_seconds);
    int sig = signals->wait(std::chrono::seconds(wait));
    if (sig == SIGTERM || sig == SIGINT) {
      spdlog::info("tiersyncd stopping on signal {}", sig);
      ops::notify_systemd("STOPPING=1");
      poller->stop = true;
      if (server) server->stop();
      return kExitOk;
    }
    if (sig == SIGHUP) {
      auto next = ops::load_config(config_path);
      if (next) {
        if (auto st = ops::check_resources(*next); !st) next = st.error();
      }
      // The listeners' certificates are part of the configuration: reloaded with it, or the
      // whole reload is refused (renewed certificates take effect without a restart).
      if (next && server) {
        if (auto st = server->reload_tls(next->listen); !st) next = st.error();
      } else if (next && !next->listen.empty()) {
        next = make_error("listen entries were added: restart tiersyncd to start serving");
      }
      if (!next) {
        spdlog::error("reload refused, keeping the running configuration: {}", next.message());
      } else {
        config = std::move(*next);
        upstream.reset();  // the parent's URL or TLS settings may have changed
        start_poller();
        start_watcher();  // source.dir may have moved
        ops::setup_logging(config.log);
        spdlog::info("configuration reloaded from {}", config.file.string());
        ops::notify_systemd("READY=1");
        run_now = true;
      }
    }
    if (sig == SIGUSR1) run_now = forced = true;  // sync now
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
