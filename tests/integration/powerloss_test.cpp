// Power loss (docs/crash-safety.md): a node whose machine loses power at any moment of an apply
// restarts with the guarantees of a SIGKILL, although the file system then also forgets every
// change that was not made durable. The node's tree and state_dir live on
// tiersync_powerloss_fs (tests/powerloss/README.md), which keeps such changes apart and drops
// them on command. TIERSYNC_CRASH_AT=N stops tiersyncd right before its N-th mutating step; the
// power is then cut in each of the file system's ways; what is left must hold the invariants of
// docs/crash-safety.md, the next run must converge and `tiersyncctl verify --full` must pass.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>
#include <stdexcept>

#include <gtest/gtest.h>

#include "tests/integration/support.h"
#include "tests/powerloss/powerloss.h"

namespace tiersync::it {
namespace {

constexpr const char* kPowerLossFs = TIERSYNC_POWERLOSS_FS;
constexpr const char* kSyncShim = TIERSYNC_POWERLOSS_SHIM;
constexpr int kMaxSteps = 1000;
constexpr int kStartupMs = 30'000;

/// The ways the power goes (tests/powerloss/powerloss.h). The first is a real cut of the mount;
/// the others are written apart by POWERLOSS_DUMP just before it, from the same stopped run.
struct Cut {
  const char* name;
  unsigned long request;
};
constexpr Cut kCuts[] = {
    {"nothing unsynced survives", POWERLOSS_CUT_NONE},
    {"namespace changes survive, unsynced data does not", POWERLOSS_CUT_META},
    {"all data survives, unsynced namespace changes do not", POWERLOSS_CUT_DATA},
};

/// What a folder holds (files with content, mode and mtime; symlinks; folders), but the pid in a
/// state lock, rewritten by every run: two disks with the same fingerprint recover the same way.
std::string fingerprint(const fs::path& dir) {
  std::string out;
  for (const auto& [path, n] : list_tree(dir, {.skip_meta = false, .hash = true, .exclude = {}})) {
    if (path.ends_with("/state/lock")) continue;
    out += path + " " + n.type + " " + n.target;
    if (n.type == 'f')
      out += " " + n.sha256 + " " + std::to_string(n.mode) + " " + std::to_string(n.mtime);
    out += "\n";
  }
  return out;
}

std::string tail_of(const fs::path& log) {
  std::string text;
  try {
    text = read_file(log);
  } catch (const std::exception&) {
  }
  return text.size() > 4000 ? "..." + text.substr(text.size() - 4000) : text;
}

/// tiersync_powerloss_fs serving the folder `disk` at `point`, from the mount to the unmount.
class Mount {
 public:
  Mount(const fs::path& disk, const fs::path& point, const fs::path& log)
      : point_(point), log_(log) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a test killed by its timeout leaves no mount behind
      const int err = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (err < 0 || ::dup2(out[1], 1) < 0 || ::dup2(err, 2) < 0) ::_exit(127);
      ::execl(kPowerLossFs, kPowerLossFs, disk.c_str(), point.c_str(), nullptr);
      ::_exit(127);
    }
    ::close(out[1]);
    out_ = out[0];
    // The server prints "ready" once mounted; EOF means it gave up.
    std::string said;
    char buf[64];
    while (said.find('\n') == std::string::npos) {
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, kStartupMs) <= 0) break;
      const ssize_t n = ::read(out_, buf, sizeof buf);
      if (n <= 0) break;
      said.append(buf, static_cast<std::size_t>(n));
    }
    if (said != "ready\n") {
      stop();
      throw std::runtime_error("tiersync_powerloss_fs did not mount " + point.string() + ":\n" +
                               tail_of(log));
    }
  }
  ~Mount() { stop(); }
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;

  /// An ioctl of powerloss.h on the mount point.
  ::testing::AssertionResult command(unsigned long request, void* arg = nullptr) const {
    const int fd = ::open(point_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    const bool ok = fd >= 0 && ::ioctl(fd, request, arg) == 0;
    const int err = errno;
    if (fd >= 0) ::close(fd);
    if (ok) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "ioctl on " << point_ << ": " << std::strerror(err) << "\n"
           << tail_of(log_);
  }

  /// What a cut of kind `cut` would leave, written to the new folder `folder`.
  ::testing::AssertionResult dump(const Cut& cut, const fs::path& folder) const {
    powerloss_dump d{};
    d.cut = _IOC_NR(cut.request);
    const std::string path = folder.string();
    if (path.size() >= sizeof d.folder) return ::testing::AssertionFailure() << "path too long";
    std::memcpy(d.folder, path.c_str(), path.size() + 1);
    return command(POWERLOSS_DUMP, &d);
  }

  /// From now on requests of `ops` on names containing `name` fail with `error` (0: no more).
  ::testing::AssertionResult fault(int error, std::uint32_t ops, std::string_view name = "",
                                   std::uint64_t after_bytes = 0) const {
    powerloss_fault f{};
    f.error = error;
    f.ops = ops;
    f.after_bytes = after_bytes;
    if (name.size() >= sizeof f.name) return ::testing::AssertionFailure() << "name too long";
    std::memcpy(f.name, name.data(), name.size());
    return command(POWERLOSS_FAULT, &f);
  }

  powerloss_stats stats() const {
    powerloss_stats st{};
    EXPECT_TRUE(command(POWERLOSS_STATS, &st));
    return st;
  }

  /// fusermount3 -u, then the server must write the disk and exit 0.
  ::testing::AssertionResult unmount() {
    RunResult r = run({"fusermount3", "-u", point_.string()});
    if (!r.exited(0)) {
      stop();
      return ::testing::AssertionFailure() << "unmounting: " << r.describe();
    }
    const int code = reap(kStartupMs);
    if (code == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "tiersync_powerloss_fs ended with " << code << ":\n"
                                         << tail_of(log_);
  }

 private:
  /// Waits for the server's end (its stdout closes) at most `ms`; its exit code, 128 + signal,
  /// or -1 when it still runs.
  int reap(int ms) {
    if (pid_ < 0) return -1;
    char buf[64];
    for (;;) {
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, ms) <= 0) return -1;
      if (::read(out_, buf, sizeof buf) <= 0) break;
    }
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    ::close(out_);
    out_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  /// After a failure: the mount goes (lazily, if busy), the server ends.
  void stop() {
    if (pid_ < 0) return;
    ::umount2(point_.c_str(), MNT_DETACH);
    ::kill(pid_, SIGTERM);
    if (reap(10'000) < 0) {
      ::kill(pid_, SIGKILL);
      reap(10'000);
    }
  }

  fs::path point_;
  fs::path log_;
  pid_t pid_ = -1;
  int out_ = -1;  // the server's stdout: "ready", then EOF when it ends
};

class PowerLossTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // No silent skip (docs/testing.md): without /dev/fuse the power-loss promise is unproven.
    ASSERT_EQ(::access("/dev/fuse", F_OK), 0)
        << "/dev/fuse is absent, no FUSE file system can be mounted here (a container needs "
           "--device /dev/fuse); .ci/run installs fuse3";
    fs::create_directories(disk_);
    fs::create_directories(point_);
    key_ = keygen(root_ / "keys/origin");
    SampleShape shape;
    shape.repos = {"main"};  // two partitions and the root one: about 20 steps an apply
    shape.arches = {"x86_64", "aarch64"};
    shape.min_packages = 5;
    shape.max_packages = 6;
    v1_ = make_sample(shape);
    v2_ = next_version(v1_);
  }

  /// The node `name` as the disk holds it (nothing mounted) and as tiersyncd sees it.
  Node on_disk(const std::string& name) const { return Node{name, disk_ / name}; }
  Node mounted(const std::string& name) const { return Node{name, point_ / name}; }

  void mount() { mount_.emplace(disk_, point_, root_ / "powerloss-fs.log"); }
  ::testing::AssertionResult unmount() {
    auto r = mount_->unmount();
    mount_.reset();
    return r;
  }

  /// `tiersyncd --once` of `name` on the mounted file system, its syncfs calls forwarded.
  RunResult once(const std::string& name, std::optional<int> crash_at = std::nullopt) const {
    const char* asan = std::getenv("ASAN_OPTIONS");
    // The shim comes before the sanitizer's runtime in the list of libraries: allowed.
    Env env{{"LD_PRELOAD", kSyncShim},
            {"ASAN_OPTIONS", std::string(asan && *asan ? std::string(asan) + ":" : "") +
                                 "verify_asan_link_order=0"}};
    if (crash_at) env["TIERSYNC_CRASH_AT"] = std::to_string(*crash_at);
    return mounted(name).once(env);
  }

  /// Runs `name` once, unmounted cleanly (everything durable), and keeps the disk as it is.
  void settle(const std::string& name) {
    mount();
    RunResult r = once(name);
    ASSERT_TRUE(Exited(r, 0));
    ASSERT_TRUE(unmount());
    replace_with_copy(disk_, pristine_);
  }

  /// Stops `name`'s cycle (from the saved disk, going from `before` to `after`) before step
  /// N = 1, 2, ... until a run completes, and cuts the power there in every way of kCuts. Each
  /// survivor must hold the invariants; each distinct one must then recover: the next run
  /// converges, staging is empty, verify --full passes. Returns the number of steps.
  int sweep(const std::string& name, const TreeModel& before, const TreeModel& after) {
    const auto start = std::chrono::steady_clock::now();
    const Node node = on_disk(name);
    std::set<std::string> recovered;  // fingerprints of survivors already run again
    int steps = 0, cuts = 0, torn = 0, failed = 0;
    for (int n = 1; n <= kMaxSteps && steps == 0 && failed < 3; ++n) {
      SCOPED_TRACE(name + ": stopped before step " + std::to_string(n));
      replace_with_copy(pristine_, disk_);
      mount();
      RunResult r = once(name, n);
      if (r.exited(0)) {  // no step N: the whole cycle ran
        steps = n - 1;
        const powerloss_stats st = mount_->stats();
        // The apply's two barriers at least: else the shim did not forward them.
        EXPECT_GE(st.syncfs, 2u) << "syncfs(2) never reached the file system";
        EXPECT_TRUE(unmount());
        EXPECT_TRUE(TreeMatches(node.tree(), after));
        break;
      }
      if (!r.killed_by(SIGKILL)) {
        ADD_FAILURE() << "expected SIGKILL:\n" << r.describe();
        EXPECT_TRUE(unmount());
        break;
      }
      std::vector<std::pair<const Cut*, fs::path>> survivors;
      for (const Cut& cut : kCuts) {
        if (&cut == &kCuts[0]) continue;
        const fs::path folder = root_ / ("survivor-" + std::to_string(survivors.size()));
        fs::remove_all(folder);
        EXPECT_TRUE(mount_->dump(cut, folder));
        survivors.emplace_back(&cut, folder);
      }
      EXPECT_TRUE(mount_->command(kCuts[0].request));
      EXPECT_TRUE(unmount());
      const fs::path first = root_ / "survivor-cut";
      replace_with_copy(disk_, first);
      survivors.emplace(survivors.begin(), &kCuts[0], first);

      for (const auto& [cut, folder] : survivors) {
        SCOPED_TRACE(std::string("power cut: ") + cut->name);
        ++cuts;
        const fs::path tree = folder / name / "tree";
        const TreeModel caught = model_of(tree);
        if (!same_files(caught, before) && !same_files(caught, after)) ++torn;
        auto violations = crash_violations(tree, before, after);
        EXPECT_TRUE(violations.empty()) << "after the power cut:\n" << join_lines(violations);
        if (!recovered.insert(fingerprint(folder)).second) continue;  // seen: same recovery

        replace_with_copy(folder, disk_);
        mount();
        RunResult again = once(name);
        EXPECT_TRUE(Exited(again, 0)) << "the next cycle must complete the sync";
        EXPECT_TRUE(unmount());
        EXPECT_TRUE(TreeMatches(node.tree(), after)) << "after the recovery";
        const Listing staging = list_tree(node.tree() / ".tiersync/staging",
                                          {.skip_meta = false, .hash = false, .exclude = {}});
        EXPECT_EQ(files_in(staging), std::vector<std::string>{}) << "staging must be empty";
        EXPECT_TRUE(Exited(node.ctl({"verify", "--full"}), 0));
        if (HasFailure() && ++failed >= 3) break;  // enough to diagnose
      }
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf(
        "[ power    ] %s: %d steps, %d power cuts checked (%zu distinct recovered), %d torn, "
        "in %.1f s\n",
        name.c_str(), steps, cuts, recovered.size(), torn, secs);
    EXPECT_GT(steps, 0) << "the cycle never completed";
    // Cuts that all fall before the first install or after the last would prove nothing.
    EXPECT_GT(torn, 0) << "no power cut caught the tree between the two versions";
    return steps;
  }

  TempDir root_{"tiersync-powerloss"};
  fs::path disk_ = root_ / "disk";          // what the file system's disk holds
  fs::path point_ = root_ / "mnt";          // where it is mounted
  fs::path pristine_ = root_ / "pristine";  // the disk before the cycle under test
  std::optional<Mount> mount_;              // goes before root_
  KeyFiles key_;
  TreeModel v1_, v2_;
};

TEST_F(PowerLossTest, MirrorUpdateSurvivesAPowerCutAtEveryStep) {
  // The parent is a plain folder (file://); only the mirror is on the file system under test.
  const fs::path source = root_ / "incoming";
  const Node origin = make_origin(root_ / "dl-master", "dl-master", source, key_.key);
  make_mirror(on_disk("mirror").home, "mirror", origin.url(), {key_.pub});
  materialize(v1_, source);
  ASSERT_TRUE(Exited(origin.once(), 0));
  ASSERT_NO_FATAL_FAILURE(settle("mirror"));
  ASSERT_TRUE(TreeMatches(on_disk("mirror").tree(), v1_));
  materialize(v2_, source);
  ASSERT_TRUE(Exited(origin.once(), 0));

  sweep("mirror", v1_, v2_);
  EXPECT_EQ(on_disk("mirror").status().value("serial", json()),
            read_published_snapshot(origin.tree()).serial);
}

TEST_F(PowerLossTest, OriginPublishSurvivesAPowerCutAtEveryStep) {
  // The builders' source is a plain folder; tier0's tree and state_dir are on the file system.
  const fs::path source = root_ / "incoming";
  make_origin(on_disk("dl-master").home, "dl-master", source, key_.key);
  materialize(v1_, source);
  ASSERT_NO_FATAL_FAILURE(settle("dl-master"));
  ASSERT_TRUE(TreeMatches(on_disk("dl-master").tree(), v1_));
  const std::uint64_t s1 = read_published_snapshot(on_disk("dl-master").tree()).serial;
  materialize(v2_, source);

  sweep("dl-master", v1_, v2_);
  EXPECT_GT(read_published_snapshot(on_disk("dl-master").tree()).serial, s1);
  // What the recovered origin publishes is whole: a fresh mirror gets exactly V2.
  const Node mirror = make_mirror(root_ / "mirror", "mirror",
                                  "file://" + on_disk("dl-master").tree().string(), {key_.pub});
  ASSERT_TRUE(Exited(mirror.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror.tree(), v2_));
}

// ---------------------------------------------------------------------------------------------
// A full disk (ENOSPC) or a failing one (EIO) in each phase of a cycle (docs/crash-safety.md,
// "Bad input"): the cycle ends with a message naming the error and exit 1; what the tree holds
// is still one version or the other, file by file (nothing half-written is in place); once the
// fault is gone the next run converges, with staging empty and verify --full clean.

struct Fault {
  const char* phase;
  int error;
  std::uint32_t ops;
  const char* name;  ///< a part of the names that fail ("": any)
  std::uint64_t after_bytes = 0;
};

constexpr Fault kMirrorFaults[] = {
    // Staging: the disk fills up while the new files are written to .tiersync/staging/files.
    {"staging", ENOSPC, POWERLOSS_FAULT_WRITE | POWERLOSS_FAULT_CREATE, "files", 6000},
    {"staging", EIO, POWERLOSS_FAULT_WRITE, "files", 0},
    // Install: renaming a staged file to its place in the tree fails.
    {"install", EIO, POWERLOSS_FAULT_RENAME, ".apk"},
    {"install", ENOSPC, POWERLOSS_FAULT_RENAME, "APKINDEX"},
    // State: the journal cannot be written, or a durability barrier (fsync, syncfs) fails.
    {"state write", ENOSPC, POWERLOSS_FAULT_WRITE, "journal.json"},
    {"state write", EIO, POWERLOSS_FAULT_FSYNC, ""},
    {"state write", EIO, POWERLOSS_FAULT_RENAME, "snapshot"},
    // Deletions: the files V2 no longer has cannot be removed.
    {"deletions", EIO, POWERLOSS_FAULT_UNLINK, ".apk"},
};

TEST_F(PowerLossTest, MirrorEndsACycleCleanlyOnEnospcAndEioInEveryPhase) {
  const fs::path source = root_ / "incoming";
  const Node origin = make_origin(root_ / "dl-master", "dl-master", source, key_.key);
  make_mirror(on_disk("mirror").home, "mirror", origin.url(), {key_.pub});
  materialize(v1_, source);
  ASSERT_TRUE(Exited(origin.once(), 0));
  ASSERT_NO_FATAL_FAILURE(settle("mirror"));
  materialize(v2_, source);
  ASSERT_TRUE(Exited(origin.once(), 0));
  const Node node = mounted("mirror");

  for (const Fault& f : kMirrorFaults) {
    SCOPED_TRACE(std::string(f.phase) + ": " + std::strerror(f.error) + " on \"" + f.name + "\"");
    replace_with_copy(pristine_, disk_);
    mount();
    ASSERT_TRUE(mount_->fault(f.error, f.ops, f.name, f.after_bytes));
    const RunResult failed = once("mirror");
    EXPECT_GT(mount_->stats().faults, 0u) << "the fault never struck: " << failed.describe();
    EXPECT_TRUE(failed.exited(1)) << failed.describe();
    EXPECT_TRUE(contains_nocase(failed.err, std::strerror(f.error))) << failed.describe();
    EXPECT_TRUE(contains_nocase(failed.err, "cycle failed")) << failed.describe();
    auto violations = crash_violations(node.tree(), v1_, v2_);
    EXPECT_TRUE(violations.empty()) << "after the failed cycle:\n" << join_lines(violations);
    EXPECT_EQ(node.status()["last_cycle"].value("result", ""), "failed");

    ASSERT_TRUE(mount_->fault(0, 0));
    EXPECT_TRUE(Exited(once("mirror"), 0)) << "the next run must converge";
    EXPECT_TRUE(TreeMatches(node.tree(), v2_));
    const Listing staging = list_tree(node.tree() / ".tiersync/staging",
                                      {.skip_meta = false, .hash = false, .exclude = {}});
    EXPECT_EQ(files_in(staging), std::vector<std::string>{}) << "staging must be empty";
    EXPECT_TRUE(Exited(node.ctl({"verify", "--full"}), 0));
    EXPECT_TRUE(unmount());
    if (HasFailure()) break;  // enough to diagnose
  }
}

// tier0 likewise: a publish that meets a full or failing disk ends with exit 1, and publishes
// nothing new unless the fault came after the commit (deletions); once the fault is gone the
// next publish gives V2, whole.
constexpr Fault kOriginFaults[] = {
    {"staging", ENOSPC, POWERLOSS_FAULT_WRITE | POWERLOSS_FAULT_CREATE, "files", 6000},
    {"install", EIO, POWERLOSS_FAULT_RENAME, ".apk"},
    {"state write", EIO, POWERLOSS_FAULT_FSYNC, ""},
    {"state write", ENOSPC, POWERLOSS_FAULT_WRITE, "snapshot"},
    {"deletions", EIO, POWERLOSS_FAULT_UNLINK, ".apk"},
};

TEST_F(PowerLossTest, OriginEndsAPublishCleanlyOnEnospcAndEioInEveryPhase) {
  const fs::path source = root_ / "incoming";
  make_origin(on_disk("dl-master").home, "dl-master", source, key_.key);
  materialize(v1_, source);
  ASSERT_NO_FATAL_FAILURE(settle("dl-master"));
  materialize(v2_, source);
  const Node node = mounted("dl-master");

  for (const Fault& f : kOriginFaults) {
    SCOPED_TRACE(std::string(f.phase) + ": " + std::strerror(f.error) + " on \"" + f.name + "\"");
    replace_with_copy(pristine_, disk_);
    mount();
    const std::uint64_t s1 = read_published_snapshot(node.tree()).serial;
    ASSERT_TRUE(mount_->fault(f.error, f.ops, f.name, f.after_bytes));
    const RunResult failed = once("dl-master");
    EXPECT_GT(mount_->stats().faults, 0u) << "the fault never struck: " << failed.describe();
    EXPECT_TRUE(failed.exited(1)) << failed.describe();
    EXPECT_TRUE(contains_nocase(failed.err, std::strerror(f.error))) << failed.describe();
    auto violations = crash_violations(node.tree(), v1_, v2_);
    EXPECT_TRUE(violations.empty()) << "after the failed publish:\n" << join_lines(violations);
    // Deletions come after the commit (docs/crash-safety.md): the new serial is out, and the
    // journal makes the next run remove what is left. Before it, nothing new is published.
    if (std::string_view(f.phase) == "deletions") {
      EXPECT_GT(read_published_snapshot(node.tree()).serial, s1);
    } else {
      EXPECT_EQ(read_published_snapshot(node.tree()).serial, s1) << "nothing new is published";
    }

    ASSERT_TRUE(mount_->fault(0, 0));
    EXPECT_TRUE(Exited(once("dl-master"), 0)) << "the next run must converge";
    EXPECT_TRUE(TreeMatches(node.tree(), v2_));
    EXPECT_GT(read_published_snapshot(node.tree()).serial, s1);
    EXPECT_TRUE(Exited(node.ctl({"verify", "--full"}), 0));
    EXPECT_TRUE(unmount());
    if (HasFailure()) break;
  }
}

}  // namespace
}  // namespace tiersync::it
