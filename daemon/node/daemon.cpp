#include "daemon/node/daemon.h"

#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <thread>
#include <utility>

#include "daemon/node/loop.h"
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
#include "proto/path.h"
#include "proto/snapshot.h"

namespace tiersync::node {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// ---------------------------------------------------------------------------------------------
// The loop's inbox: every thread that wants a cycle (or a stop) pushes an event here; the main
// thread waits on it. Never a signal to ourselves.

class EventQueue {
 public:
  void push(EventKind kind) {
    {
      std::lock_guard lock(mu_);
      pending_.push_back(kind);
    }
    cv_.notify_one();
  }
  /// The next event, or nullopt once `deadline` passed without one.
  std::optional<EventKind> wait_until(LoopClock::time_point deadline) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_until(lock, deadline, [&] { return !pending_.empty(); })) return std::nullopt;
    const EventKind kind = pending_.front();
    pending_.pop_front();
    return kind;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<EventKind> pending_;  // guarded by mu_
};

// An eventfd a stop callback writes to, so that a thread blocked in poll() returns at once.
class Wakeup {
 public:
  Wakeup() : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
  ~Wakeup() {
    if (fd_ >= 0) ::close(fd_);
  }
  Wakeup(const Wakeup&) = delete;
  Wakeup& operator=(const Wakeup&) = delete;
  int fd() const { return fd_; }
  void wake() const {
    const std::uint64_t one = 1;
    (void)!::write(fd_, &one, sizeof one);
  }

 private:
  int fd_;
};

// ---------------------------------------------------------------------------------------------
// Signals arrive through a signalfd read by a thread of their own (they are blocked in every
// thread, the mask being set before any thread starts): SIGTERM and SIGINT request the daemon's
// stop (which a running cycle sees between files and chunks), SIGHUP asks for a reload, SIGUSR1
// for a cycle now.

class SignalThread {
 public:
  using Handler = std::function<void(int signo)>;

  /// `set` must already be blocked in the calling thread (and so in every thread it starts).
  static Result<std::unique_ptr<SignalThread>> start(const sigset_t& set, Handler handler) {
    const int fd = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0) return make_error(std::string("signalfd: ") + std::strerror(errno));
    std::unique_ptr<SignalThread> self(new SignalThread(fd, std::move(handler)));
    self->thread_ = std::jthread([raw = self.get()](std::stop_token stop) { raw->run(stop); });
    return self;
  }
  ~SignalThread() {
    thread_.request_stop();
    if (thread_.joinable()) thread_.join();
    ::close(fd_);
  }
  SignalThread(const SignalThread&) = delete;
  SignalThread& operator=(const SignalThread&) = delete;

 private:
  SignalThread(int fd, Handler handler) : fd_(fd), handler_(std::move(handler)) {}

  void run(std::stop_token stop) {
    std::stop_callback on_stop(stop, [this] { wakeup_.wake(); });
    while (!stop.stop_requested()) {
      pollfd fds[2] = {{fd_, POLLIN, 0}, {wakeup_.fd(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;  // cannot happen with valid fds
      signalfd_siginfo info;
      while (::read(fd_, &info, sizeof info) == static_cast<ssize_t>(sizeof info))
        handler_(static_cast<int>(info.ssi_signo));
    }
  }

  int fd_;
  Handler handler_;
  Wakeup wakeup_;
  std::jthread thread_;  // last: started once the members above exist
};

// ---------------------------------------------------------------------------------------------
// The long poll on an HTTP(S) parent: one request open, asking for a serial above the applied
// one. A newer serial, verified, becomes a kNewSerial event; the cycle does the rest.

class Poller {
 public:
  Poller(const ops::Config& config, std::vector<proto::PublicKey> keys,
         std::unique_ptr<transport::Transport> transport, EventQueue& events, std::uint64_t applied,
         std::stop_token daemon_stop)
      : keys_(std::move(keys)),
        threshold_(config.threshold),
        period_(std::min<std::chrono::seconds>(std::chrono::seconds(config.upstream.poll_seconds),
                                               300s)),
        wait_(period_),
        transport_([&] {
          // A stop ends the request in flight within about 100 ms (docs/architecture.md).
          transport->set_stop_flag(&stop_flag_);
          return std::move(transport);
        }()),
        events_(events),
        applied_(applied),
        thread_([this](std::stop_token stop) { run(stop); }),
        on_daemon_stop_(std::move(daemon_stop), [this] { thread_.request_stop(); }),
        on_stop_(thread_.get_stop_token(), [this] { stop_flag_ = true; }) {}
  ~Poller() {
    thread_.request_stop();
    if (thread_.joinable()) thread_.join();
  }
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;

  /// The serial the loop applied (or looked at and held): the poll asks for a higher one.
  void set_applied(std::uint64_t serial) {
    {
      std::lock_guard lock(mu_);
      applied_ = serial;
    }
    cv_.notify_all();
  }

 private:
  std::uint64_t applied() {
    std::lock_guard lock(mu_);
    return applied_;
  }
  /// Sleeps `d` or until stop; with `known`, also until the applied serial moves from it.
  void pause(std::stop_token& stop, std::chrono::milliseconds d,
             std::optional<std::uint64_t> known = std::nullopt) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, stop, d, [&] { return known && applied_ != *known; });
  }
  void run(std::stop_token stop) {
    PollSchedule schedule{period_};  // every wait below is next_poll's (loop.h)
    while (!stop.stop_requested()) {
      const std::uint64_t known = applied();
      const auto asked = std::chrono::steady_clock::now();
      auto r = transport_->poll_snapshot(known, wait_);
      if (stop.stop_requested()) return;
      if (r && !*r) {  // not modified: ask again
        if (schedule.failures > 0) spdlog::info("long poll: the parent answers again");
        (void)next_poll(schedule, PollAnswer::kNotModified);
        // A parent that does not hold the request answers at once: ask once per wait, not in
        // a spin.
        if (std::chrono::steady_clock::now() - asked < wait_ / 2) pause(stop, wait_);
        continue;
      }
      if (!r && r.retry_after) {
        // The parent is stopping (a restart: it comes back within seconds) or over its caps: it
        // says when to ask again. Neither an upstream error nor a parent without long polls.
        const auto wait = next_poll(schedule, PollAnswer::kRetryLater, 0, *r.retry_after);
        spdlog::log(schedule.failures > 1 ? spdlog::level::warn : spdlog::level::info,
                    "long poll: the parent asks to be asked again in {} s ({}); next poll in {} ms",
                    r.retry_after->count(), r.message(), wait.count());
        pause(stop, wait);
        continue;
      }
      std::uint64_t serial = 0;
      std::string why;
      if (r) {
        auto verified = polled_serial(**r, keys_, threshold_);
        if (verified) {
          serial = *verified;
        } else {
          why = "envelope refused: " + verified.message();
        }
      } else {
        ++ops::process_metrics().upstream_errors;
        why = r.message();
      }
      if (serial > known) {
        if (schedule.failures > 0) spdlog::info("long poll: the parent answers again");
        // The same serial again: the cycle could not apply it (refused, or the parent failed
        // half-way). Retried after a growing pause, not every time.
        pause(stop, next_poll(schedule, PollAnswer::kNewer, serial));
        if (stop.stop_requested()) return;
        events_.push(EventKind::kNewSerial);
        // Give the cycle time to apply before asking again.
        pause(stop, 5s, known);
      } else {
        // An error, a refused envelope, or a parent answering at once without anything newer.
        const auto backoff = next_poll(schedule, PollAnswer::kFailed);
        if (why.empty()) why = "serial " + std::to_string(serial) + " is not newer";
        spdlog::warn("long poll: {}; next poll in {} ms", why, backoff.count());
        pause(stop, backoff);
      }
    }
  }

  const std::vector<proto::PublicKey> keys_;
  const unsigned threshold_;
  const std::chrono::seconds period_;   ///< poll_seconds (at most 300): the longest backoff
  const std::chrono::seconds wait_;     ///< one poll's wait: the period
  std::atomic<bool> stop_flag_{false};  ///< the transport's view of the thread's stop token
  std::unique_ptr<transport::Transport> transport_;
  EventQueue& events_;
  std::mutex mu_;
  std::condition_variable_any cv_;
  std::uint64_t applied_;  // guarded by mu_
  std::jthread thread_;    // after everything run() uses
  std::stop_callback<std::function<void()>> on_daemon_stop_;
  std::stop_callback<std::function<void()>> on_stop_;  ///< raises stop_flag_
};

// ---------------------------------------------------------------------------------------------
// systemd's watchdog, fed by the cycle's progress: pinged while no cycle runs, or while the
// running one moves (ops::note_progress). A cycle stuck on a silent parent or a hung disk stops
// the pings, and systemd restarts the service after WatchdogSec.

class Watchdog {
 public:
  Watchdog(std::chrono::microseconds interval, const std::atomic<bool>& cycle_running,
           std::stop_token daemon_stop)
      : interval_(interval),
        cycle_running_(cycle_running),
        thread_([this](std::stop_token stop) { run(stop); }),
        on_daemon_stop_(std::move(daemon_stop), [this] { thread_.request_stop(); }) {}
  ~Watchdog() {
    thread_.request_stop();
    if (thread_.joinable()) thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  void run(std::stop_token stop) {
    // Checked four times per interval: a cycle must stay silent for most of an interval before
    // systemd, which waits one whole interval after the last ping, restarts it.
    const auto check = std::max<std::chrono::microseconds>(interval_ / 4, 1ms);
    std::uint64_t seen = ops::progress();
    auto last_moved = std::chrono::steady_clock::now();
    bool withheld = false;
    std::mutex mu;
    std::condition_variable_any cv;
    while (!stop.stop_requested()) {
      const std::uint64_t now = ops::progress();
      if (!cycle_running_ || now != seen) {
        ops::notify_systemd("WATCHDOG=1");
        if (withheld) spdlog::info("watchdog: the cycle progresses again");
        withheld = false;
        last_moved = std::chrono::steady_clock::now();
      } else {
        // Said at every check, for systemctl status (and tests) to see; logged once.
        const auto still = std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::steady_clock::now() - last_moved)
                               .count();
        if (!withheld)
          spdlog::warn("watchdog: the cycle makes no progress; not feeding the watchdog");
        withheld = true;
        ops::notify_systemd("STATUS=cycle stalled: no progress for " + std::to_string(still) +
                            " ms; watchdog not fed");
      }
      seen = now;
      std::unique_lock lock(mu);
      cv.wait_for(lock, stop, check, [] { return false; });
    }
  }

  const std::chrono::microseconds interval_;
  const std::atomic<bool>& cycle_running_;
  std::jthread thread_;
  std::stop_callback<std::function<void()>> on_daemon_stop_;
};

// ---------------------------------------------------------------------------------------------

// Each partition's fingerprint (docs/architecture.md, "Incremental publish"): any upload,
// rename or removal changes its partition's (none if the source cannot be read: every partition
// then looks changed once, and the publish says what is wrong), and
// `.tiersync-busy` appearing or going (the scan leaves the marker out) shows as a change too: a
// builder's finished upload is published once it has settled, not at the next minute's check.
std::map<std::string, std::string> source_prints(const ops::Config& config) {
  auto depth = proto::layout_depth(config.layout);
  if (!depth) return {};
  auto prints = sync::partition_prints(config.source_dir, *depth);
  if (!prints) return {};
  if (::access((config.source_dir / ".tiersync-busy").c_str(), F_OK) == 0)
    (*prints)[".tiersync-busy"] = "busy";
  return std::move(*prints);
}

std::uint64_t applied_serial(const ops::Config& config) {
  sync::StateStore state(config.state_dir, config.tree);
  auto applied = state.load_applied();
  return applied && *applied ? (*applied)->snapshot.serial : 0;
}

LoopPolicy policy_of(const ops::Config& config) {
  LoopPolicy p;
  p.tier0 = config.role == ops::Role::kTier0;
  p.poll = std::chrono::seconds(config.upstream.poll_seconds);
  p.settle = std::chrono::seconds(config.settle_seconds);
  return p;
}

// The daemon: the main thread runs the loop (decide, then cycles, reloads and the served view);
// the other threads only turn what they see into events. Members are destroyed in reverse order:
// the threads that push events stop before what they push into.
class Daemon {
 public:
  Daemon(std::string config_path, ops::Config config)
      : config_path_(std::move(config_path)), config_(std::move(config)) {}

  int run(const sigset_t& signals);

 private:
  Status start_signals(const sigset_t& signal_set);
  void start_control_socket();
  Status start_threads();
  Event next_event(std::deque<Event>& follow_ups, LoopClock::time_point deadline);
  Status start_server();
  void publish_view();
  void after_cycle();
  void run_cycle(std::deque<Event>& follow_ups);
  bool reload();
  void start_watcher();
  bool look_at_source(LoopClock::time_point now);
  bool rescan(LoopClock::time_point now);
  bool wants_long_poll() const {
    return config_.is_relay() && !config_.upstream.url.starts_with("file:");
  }
  void start_poller(std::uint64_t applied);
  void shutdown();

  const std::string config_path_;
  ops::Config config_;
  LoopState loop_;
  EventQueue events_;
  std::stop_source stop_;                // SIGTERM / SIGINT
  std::atomic<bool> cycle_stop_{false};  // the same, for the cycle's apply (checked per chunk)
  std::atomic<bool> cycle_running_{false};
  std::optional<std::stop_callback<std::function<void()>>> raise_cycle_stop_;

  std::unique_ptr<transport::Transport> upstream_;  // a relay's, kept across cycles
  std::unique_ptr<serve::Server> server_;
  std::shared_ptr<const serve::ServedView> view_;
  std::unique_ptr<SourceWatcher> watcher_;  // tier0
  SourceChanges source_changes_;            // tier0: what the next publish looks at
  std::optional<std::map<std::string, std::string>> last_prints_;  // tier0: at the last scan
  LoopClock::time_point last_scan_{};
  bool long_poll_ = false;

  // The threads (see docs/architecture.md). Started in this order, stopped in the reverse one.
  std::unique_ptr<SignalThread> signals_;
  std::unique_ptr<ops::ControlSocket> control_;
  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<Poller> poller_;
  std::jthread scrubber_;  // its own stop token; it keeps the configuration it started with
};

Status Daemon::start_server() {
  if (config_.listen.empty()) {
    remove_ports_report(config_);  // a previous daemon's, which listened
    return {};
  }
  server_ = std::make_unique<serve::Server>(config_.listen, config_.tree,
                                            serve::server_limits(config_.serve));
  if (auto st = server_->start(); !st) return make_error("cannot listen: " + st.message());
  // Port 0 is the kernel's pick: operators and tests read what was bound from state_dir.
  if (auto st = write_ports_report(config_, server_->ports()); !st)
    return make_error("cannot report the bound ports: " + st.message());
  publish_view();
  return {};
}

// The server's view: the applied snapshot, republished after every cycle.
void Daemon::publish_view() {
  if (!server_) return;
  sync::StateStore state(config_.state_dir, config_.tree);
  const ops::Config snapshot_of_config = config_;
  auto v = serve::load_view(
      state, status_json(config_),
      [snapshot_of_config] { return metrics_text(snapshot_of_config); }, view_.get());
  if (!v) {
    spdlog::error("cannot serve the applied snapshot: {}", v.message());
    return;
  }
  view_ = std::move(*v);
  server_->publish(view_);
}

void Daemon::start_poller(std::uint64_t applied) {
  poller_.reset();  // joins the old one (its request in flight stops within about 100 ms)
  auto keys = ops::load_trusted_keys(config_);
  transport::TransportOptions options;
  options.ca_file = config_.upstream.ca_file;
  options.connections = 1;
  options.max_attempts = 1;  // the poller backs off itself
  options.min_bytes_per_second = config_.upstream.min_bytes_per_second;
  auto t = keys ? transport::make_transport(config_.upstream.url, options)
                : Result<std::unique_ptr<transport::Transport>>(keys.error());
  if (!t) {
    spdlog::error("long poll disabled: {}", t.message());
    long_poll_ = false;  // until the next reload
    return;
  }
  poller_ = std::make_unique<Poller>(config_, std::move(*keys), std::move(*t), events_, applied,
                                     stop_.get_token());
}

void Daemon::after_cycle() {
  // A full walk or an initial sync holds a structure per entry for its length: given back to the
  // system afterwards, so that a daemon's resident memory between cycles follows what it keeps
  // (docs/performance.md, "Scale"), not its largest cycle.
  ::malloc_trim(0);
  sync::StateStore state(config_.state_dir, config_.tree);
  const auto cycle = state.load_cycle();
  const auto serial = applied_serial(config_);
  // A held serial was looked at: the long poll waits for the next one (an approval wakes the
  // loop through the control socket), not one cycle every few seconds for the same serial.
  // Started after the first cycle: polling before it would only wake a second cycle for the
  // serial the first one is applying.
  if (long_poll_) {
    const std::uint64_t known = parse_cycle_result(cycle.result) == CycleResult::kHeld
                                    ? std::max(serial, cycle.upstream_serial)
                                    : serial;
    if (poller_) {
      poller_->set_applied(known);
    } else {
      start_poller(known);
    }
  }
  publish_view();
  const auto held = state.load_held().partitions.size();
  const auto upstream = std::max(cycle.upstream_serial, serial);
  ops::notify_systemd("STATUS=serial " + std::to_string(serial) + ", upstream " +
                      std::to_string(upstream) + ", lag " + std::to_string(upstream - serial) +
                      ", held " + std::to_string(held) + ", last cycle " + cycle.result);
}

void Daemon::run_cycle(std::deque<Event>& follow_ups) {
  cycle_running_ = true;
  if (config_.role == ops::Role::kTier0) {
    // Only what changed is rescanned (docs/architecture.md, "Incremental publish"); what the
    // publish did not look at (a busy source, a failure) waits for the next one.
    if (watcher_) watcher_->changed();
    if (watcher_) source_changes_.merge(watcher_->take());
    SourceChanges changes = std::exchange(source_changes_, {});
    publish_once(config_, &cycle_stop_, &changes);
    source_changes_.merge(std::move(changes));
    // What a builder changed during the publish is published next.
    if (watcher_ && watcher_->changed()) {
      source_changes_.merge(watcher_->take());
      follow_ups.push_back({EventKind::kSourceChanged, LoopClock::now()});
    }
  } else {
    sync_once(config_, &cycle_stop_, &upstream_);
  }
  cycle_running_ = false;
  after_cycle();
}

// tier0 learns of uploads from inotify, with a fingerprint scan once a minute as a safety net (a
// lost event, a file system inotify does not see, such as NFS); without inotify it scans every
// second. The first publish after a start or a reload walks the whole source.
void Daemon::start_watcher() {
  watcher_.reset();
  source_changes_ = {};
  last_prints_.reset();
  if (config_.role != ops::Role::kTier0) return;
  source_changes_.all = true;
  auto depth = proto::layout_depth(config_.layout);
  watcher_ = std::make_unique<SourceWatcher>(config_.source_dir, depth ? *depth : 1);
  if (!watcher_->available()) {
    spdlog::warn("{}; looking at the source by scanning it every second", watcher_->why());
    watcher_.reset();
  }
}

// The partitions whose fingerprint changed since the last scan are published next. The first
// scan counts as a change of everything: what changed before it (before the watches were set,
// or after the first publish's walk) is published by a full walk, a quick no-op when nothing
// did (the source's fingerprint in state_dir).
bool Daemon::rescan(LoopClock::time_point now) {
  auto prints = source_prints(config_);
  last_scan_ = now;
  bool changed = !last_prints_;
  if (changed) source_changes_.all = true;
  if (last_prints_) {
    std::set<std::string> names;
    for (const auto& [name, print] : prints) names.insert(name);
    for (const auto& [name, print] : *last_prints_) names.insert(name);
    for (const auto& name : names) {
      auto a = prints.find(name);
      auto b = last_prints_->find(name);
      if (a != prints.end() && b != last_prints_->end() && a->second == b->second) continue;
      changed = true;
      if (name != ".tiersync-busy") source_changes_.paths.insert(name);
    }
  }
  last_prints_ = std::move(prints);
  return changed;
}

bool Daemon::look_at_source(LoopClock::time_point now) {
  constexpr auto kSafetyScan = 60s;
  const bool changed = watcher_ && watcher_->changed();
  if (watcher_ && changed) source_changes_.merge(watcher_->take());
  if (!watcher_ || now - last_scan_ >= kSafetyScan) return rescan(now) || changed;
  return changed;
}

bool Daemon::reload() {
  auto next = ops::load_config(config_path_);
  if (next) {
    if (auto st = ops::check_resources(*next); !st) next = st.error();
  }
  // What this process holds for its whole life cannot move under it.
  if (next && next->state_dir != config_.state_dir)
    next = make_error("state_dir changed: restart tiersyncd to move it (its lock is held)");
  if (next && next->control_socket != config_.control_socket)
    next = make_error("control_socket changed: restart tiersyncd to move it");
  // The listeners' certificates are part of the configuration: reloaded with it, or the whole
  // reload is refused (renewed certificates take effect without a restart).
  if (next && server_) {
    if (auto st = server_->reload_tls(next->listen); !st) next = st.error();
  } else if (next && !next->listen.empty()) {
    next = make_error("listen entries were added: restart tiersyncd to start serving");
  }
  if (!next) {
    spdlog::error("reload refused, keeping the running configuration: {}", next.message());
    return false;
  }
  config_ = std::move(*next);
  upstream_.reset();  // the parent's URL or TLS settings may have changed
  poller_.reset();    // started again after the next cycle, with the new parent and keys
  long_poll_ = wants_long_poll();
  start_watcher();  // source.dir may have moved
  ops::setup_logging(config_.log);
  spdlog::info("configuration reloaded from {}", config_.file.string());
  ops::notify_systemd("READY=1");
  return true;
}

// Every thread stops and is joined, those that push events first. The cycle has returned.
void Daemon::shutdown() {
  scrubber_ = {};                // stop requested and joined: within one file's chunk
  poller_.reset();               // within about 100 ms (the transport's stop flag)
  watchdog_.reset();             // at once
  control_.reset();              // at once, or after the one client it is answering (1 s at most)
  if (server_) server_->stop();  // responses in flight get a few seconds
  if (server_) remove_ports_report(config_);
  signals_.reset();  // at once
}

// SIGTERM and SIGINT stop the daemon, SIGHUP reloads it, SIGUSR1 starts a cycle.
Status Daemon::start_signals(const sigset_t& signal_set) {
  raise_cycle_stop_.emplace(stop_.get_token(), [this] { cycle_stop_ = true; });
  auto signals = SignalThread::start(signal_set, [this](int signo) {
    if (signo == SIGTERM || signo == SIGINT) {
      if (!stop_.stop_requested()) {
        spdlog::info("tiersyncd stopping on signal {}", signo);
        ops::notify_systemd("STOPPING=1");
      }
      stop_.request_stop();
      events_.push(EventKind::kStop);
    } else if (signo == SIGHUP) {
      events_.push(EventKind::kReload);
    } else if (signo == SIGUSR1) {
      events_.push(EventKind::kSyncNow);
    }
  });
  if (!signals) return signals.error();
  signals_ = std::move(*signals);
  return {};
}

// The control socket: tiersyncctl sync-now, and approve, start a cycle at once.
void Daemon::start_control_socket() {
  std::error_code ec;
  fs::create_directories(config_.control_socket.parent_path(), ec);
  auto control = ops::ControlSocket::start(
      config_.control_socket,
      [this](const std::string& command) {
        if (command == "sync-now" || command == "approved") {
          events_.push(EventKind::kSyncNow);
          return std::string("ok: a cycle starts now");
        }
        return "error: unknown command \"" + command.substr(0, 64) + "\"";
      },
      stop_.get_token());
  if (control) {
    control_ = std::move(*control);
  } else {
    spdlog::error("{}; sync-now will not reach this daemon", control.message());
  }
}

// The server, the source's watcher, the scrubber; then READY=1 and the watchdog.
Status Daemon::start_threads() {
  if (auto st = start_server(); !st) return st;
  long_poll_ = wants_long_poll();
  start_watcher();
  scrubber_ = start_scrubber(config_);  // docs/architecture.md: a reload does not change it

  // Ready once state is loaded and listeners are open.
  ops::notify_systemd("READY=1\nSTATUS=serial " + std::to_string(applied_serial(config_)));
  if (const auto interval = ops::watchdog_interval(); interval.count() > 0)
    watchdog_ = std::make_unique<Watchdog>(interval, cycle_running_, stop_.get_token());
  return {};
}

// The loop's next event: a stop, a follow-up of the last step, or what the queue brings by the
// deadline decide() set (a timer at tier0 also looks at the source).
Event Daemon::next_event(std::deque<Event>& follow_ups, LoopClock::time_point deadline) {
  if (stop_.stop_requested()) return {EventKind::kStop, LoopClock::now()};
  if (!follow_ups.empty()) {
    Event event = follow_ups.front();
    follow_ups.pop_front();
    return event;
  }
  Event event;
  event.kind = events_.wait_until(deadline).value_or(EventKind::kTimer);
  event.now = LoopClock::now();
  if (event.kind == EventKind::kTimer && loop_.policy.tier0 && look_at_source(event.now)) {
    spdlog::info("source changed: publishing once it has been quiet for {} s",
                 config_.settle_seconds);
    follow_ups.push_back({EventKind::kSourceChanged, event.now});
  }
  return event;
}

int Daemon::run(const sigset_t& signal_set) {
  if (auto st = start_signals(signal_set); !st) {
    spdlog::error("{}", st.message());
    return kExitFailure;
  }
  start_control_socket();
  spdlog::info("tiersyncd started: role={} name={} tree={}", ops::role_name(config_.role),
               config_.name, config_.tree.string());
  if (auto st = start_threads(); !st) {
    spdlog::error("{}", st.message());
    return kExitFailure;
  }

  loop_.policy = policy_of(config_);
  std::deque<Event> follow_ups{{EventKind::kStarted, LoopClock::now()}};
  auto deadline = LoopClock::now();
  while (true) {  // ends at kStop; each turn waits for an event or the deadline decide() set
    const Event event = next_event(follow_ups, deadline);
    const Step step = decide(loop_, event);
    loop_ = step.state;
    switch (step.action) {
      case Action::kStop:
        shutdown();
        return kExitOk;
      case Action::kReload:
        if (reload())
          follow_ups.push_back({EventKind::kReloaded, LoopClock::now(), policy_of(config_)});
        break;
      case Action::kCycle:
        run_cycle(follow_ups);
        follow_ups.push_back({EventKind::kCycleDone, LoopClock::now()});
        break;
      case Action::kWait:
        deadline = event.now + step.wait;
        break;
    }
  }
}

}  // namespace

Result<std::uint64_t> polled_serial(std::string_view envelope,
                                    const std::vector<proto::PublicKey>& trusted,
                                    unsigned threshold) {
  auto snap = proto::verify_snapshot(envelope, trusted, threshold);  // verified, then parsed
  if (!snap) return snap.error();
  return snap->serial;
}

Result<sync::FileLock> lock_state_dir(const ops::Config& config) {
  if (auto st = sync::make_dirs(config.state_dir); !st) return st.error();
  auto lock = sync::FileLock::acquire(config.state_dir / "lock", sync::FileLock::Sharing::kProcess);
  if (!lock) return lock;
  // docs/crash-safety.md: a damaged state file stops the start, named, and is left as it is.
  if (auto st = sync::StateStore(config.state_dir, config.tree).check_at_start(); !st)
    return make_error("cannot start: " + st.message());
  return lock;
}

int run_daemon(const std::string& config_path, ops::Config config) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGUSR1}) sigaddset(&set, s);
  // Before any thread starts: all inherit the mask, and the signals reach only the signalfd.
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return Daemon(config_path, std::move(config)).run(set);
}

}  // namespace tiersync::node
