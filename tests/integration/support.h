#pragma once
/// Support for the integration tests: temp folders, child processes, tree listings, the sample
/// tree, keys and node configurations. The tests drive the real binaries; docs/ is the contract.

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "proto/snapshot.h"

namespace tiersync::it {

namespace fs = std::filesystem;
using nlohmann::json;

/// Paths of the binaries under test (set by CMake).
inline constexpr const char* kTiersyncd = TIERSYNCD;
inline constexpr const char* kTiersyncctl = TIERSYNCCTL;

/// The layout of every test tree: edge/main/x86_64 is a partition, `last-updated` is in ".".
inline constexpr std::string_view kLayout = "{release}/{repo}/{arch}";
inline constexpr std::size_t kDepth = 3;
inline constexpr std::string_view kIndexName = "APKINDEX.tar.gz";
inline constexpr std::string_view kRoot = ".";
/// Sample files get mtimes from here on (well in the past, so "now" never collides).
inline constexpr std::int64_t kBaseMtime = 1'700'000'000;

// ---------------------------------------------------------------------------------------------
// Temp folders and files

/// A fresh folder from mkdtemp, removed with its content on destruction (kept when the
/// environment has TIERSYNC_IT_KEEP=1, for debugging a failure).
class TempDir {
 public:
  explicit TempDir(std::string_view tag = "tiersync-it");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const fs::path& path() const { return path_; }
  fs::path operator/(std::string_view rel) const { return path_ / rel; }

 private:
  fs::path path_;
};

/// Writes `bytes` to a temporary file beside `file` and renames it over `file` (a new inode, as
/// a builder's upload does: hard links to the old file keep the old bytes). Creates parents.
/// Sets the permission bits and, when given, the mtime.
void write_file(const fs::path& file, std::string_view bytes,
                std::optional<std::int64_t> mtime = std::nullopt, std::uint32_t mode = 0644);
/// Creates (or replaces) a symlink `link` -> `target`. Creates parents.
void write_symlink(const fs::path& link, std::string_view target);
std::string read_file(const fs::path& file);
std::string sha256_hex(std::string_view bytes);
/// Removes `dir` and everything in it, then copies `from` there with `cp -a`.
void replace_with_copy(const fs::path& from, const fs::path& dir);

// ---------------------------------------------------------------------------------------------
// Child processes

using Env = std::map<std::string, std::string>;

struct RunResult {
  std::string command;
  int exit_code = -1;   ///< when the process exited
  int term_signal = 0;  ///< when a signal killed it
  bool timed_out = false;
  std::string out;
  std::string err;

  bool exited(int code) const { return term_signal == 0 && !timed_out && exit_code == code; }
  bool killed_by(int sig) const { return term_signal == sig && !timed_out; }
  /// The command, how it ended and its output: for assertion messages.
  std::string describe() const;
};

/// Runs argv (PATH searched) with the test's environment minus TIERSYNC_* variables plus `env`,
/// capturing stdout and stderr. A process still running after `timeout` is killed (SIGKILL).
/// With TIERSYNC_IT_VERBOSE=1 in the environment every run is printed.
RunResult run(const std::vector<std::string>& argv, const Env& env = {},
              std::chrono::seconds timeout = std::chrono::seconds(60));

// ---------------------------------------------------------------------------------------------
// Tree listings

struct NodeInfo {
  char type = '?';  ///< 'f' file, 'l' symlink, 'd' folder, '?' anything else
  std::string sha256;
  std::uint64_t size = 0;
  std::uint32_t mode = 0;  ///< permission bits
  std::int64_t mtime = 0;
  std::string target;  ///< of a symlink
  std::uint64_t ino = 0;
};

/// Relative path ('/'-separated) -> what stands there.
using Listing = std::map<std::string, NodeInfo>;

struct ListOptions {
  bool skip_meta = true;  ///< leave out the top-level `.tiersync/` (never content)
  bool hash = true;
  std::vector<fs::path> exclude;  ///< absolute paths left out with everything below them
};

/// Walks `root` without following symlinks. A missing root lists as empty.
Listing list_tree(const fs::path& root, const ListOptions& options = {});

struct CompareOptions {
  bool dirs = true;   ///< folders must match too (existence only)
  bool mtime = true;  ///< of files
  bool mode = true;   ///< of files
  /// Files and symlinks must be the same inode: a rewrite shows even with the same bytes within
  /// the same second (mtimes are compared in whole seconds).
  bool inode = false;
};

/// The differences between two listings, one per line ("missing", "unexpected", "differs");
/// empty when they match.
std::string diff_listings(const Listing& expected, const Listing& actual,
                          const CompareOptions& options = {});

/// Paths of regular files and symlinks (no folders) in a listing.
std::vector<std::string> files_in(const Listing& listing);

// ---------------------------------------------------------------------------------------------
// Tree models: what a source or a tree should hold

struct FileSpec {
  std::string bytes;  ///< content, or the target of a symlink
  std::int64_t mtime = kBaseMtime;
  std::uint32_t mode = 0644;
  bool link = false;
  bool operator==(const FileSpec&) const = default;
};

/// Path -> file or symlink; folders are implied.
using TreeModel = std::map<std::string, FileSpec>;

/// The partition of a path under kLayout ("." for the root partition).
std::string partition_of(std::string_view path);
std::set<std::string> partitions_of(const TreeModel& model);
std::vector<std::string> paths_in(const TreeModel& model, std::string_view partition);

struct SampleShape {
  std::vector<std::string> releases = {"edge"};
  std::vector<std::string> repos = {"main", "community"};
  std::vector<std::string> arches = {"x86_64", "aarch64", "armv7"};
  int min_packages = 20;
  int max_packages = 40;
  std::uint64_t seed = 1;
};

/// An Alpine-like tree: {release}/{repo}/{arch}/ with packages of a few KB of deterministic
/// random bytes and an APKINDEX.tar.gz listing them, a root `last-updated` (mode 0664) and a
/// root symlink `latest -> edge`.
TreeModel make_sample(const SampleShape& shape = {});
/// Adds a small partition of `packages` packages plus its index.
void add_partition(TreeModel& model, std::string_view partition, int packages, std::uint64_t seed);
/// Adds (or rebuilds) a package of deterministic bytes; returns its path. Does not touch the index.
std::string add_package(TreeModel& model, std::string_view partition, std::string_view file_name,
                        std::uint64_t seed, std::int64_t mtime = kBaseMtime + 1000);
/// Rewrites the index of `partition` from its current files, with the given mtime.
void rebuild_index(TreeModel& model, std::string_view partition, std::int64_t mtime);
void remove_partition(TreeModel& model, std::string_view partition);
/// Gives `last-updated` new content and mtime.
void touch_last_updated(TreeModel& model, std::int64_t mtime);
/// Package paths (everything but the index) of a partition.
std::vector<std::string> packages_in(const TreeModel& model, std::string_view partition);

/// V2 of a sample (at least 5 packages in edge/main/x86_64): per partition two new packages and
/// one removed, one package of edge/main/x86_64 rebuilt with other bytes, every index changed,
/// last-updated changed. The root symlink `latest` stays: the guard's `root` rule holds any
/// retarget in the root partition.
TreeModel next_version(const TreeModel& v1);
/// Makes `dir` hold exactly `model` (outside a top-level `.tiersync/`): writes what differs (by
/// rename, so unchanged files keep their inode), removes the rest, prunes empty folders.
void materialize(const TreeModel& model, const fs::path& dir);
/// The listing `list_tree` gives of a folder holding exactly `model`.
Listing listing_of(const TreeModel& model);
/// The model of what a folder holds (files and symlinks; folders left out).
TreeModel model_of(const fs::path& dir);

// ---------------------------------------------------------------------------------------------
// Crash safety (docs/crash-safety.md)

/// Same paths with the same content (mtime and mode aside).
bool same_files(const TreeModel& a, const TreeModel& b);
/// What breaks docs/crash-safety.md in `tree`, caught between `before` and `after`: a file with
/// neither its old nor its new content (or in neither version), a partition whose index is in
/// place without every entry of that index's version, a new `last-updated` before every other
/// partition is new. One line each; empty when the tree is sound.
std::vector<std::string> crash_violations(const fs::path& tree, const TreeModel& before,
                                          const TreeModel& after);
/// The first `limit` lines, indented, one per line, and how many more there are.
std::string join_lines(const std::vector<std::string>& lines, std::size_t limit = 20);

// ---------------------------------------------------------------------------------------------
// Keys, snapshots, status

struct KeyFiles {
  fs::path key;
  fs::path pub;
  std::string keyid;  ///< as printed by keygen
};

/// `tiersyncctl keygen --out PREFIX`; throws with the command's output when it fails.
KeyFiles keygen(const fs::path& prefix);

/// The snapshot published in a tree (`.tiersync/v1/snapshot`), decoded without verification.
proto::Snapshot read_published_snapshot(const fs::path& tree);

/// Names of the partitions a `status --json` document lists as held.
std::set<std::string> held_partitions(const json& status);
/// The held entry of `partition`, or null json.
json held_entry(const json& status, std::string_view partition);

// ---------------------------------------------------------------------------------------------
// Nodes

/// One node: a home folder with its config (tiersync.json), tree/ and state/ (relative paths in
/// the config, resolved against its folder).
struct Node {
  std::string name;
  fs::path home;

  fs::path config() const { return home / "tiersync.json"; }
  fs::path tree() const { return home / "tree"; }
  fs::path state() const { return home / "state"; }
  std::string url() const { return "file://" + tree().string(); }

  /// `tiersyncd --config F --once`.
  RunResult once(const Env& env = {}) const;
  /// `tiersyncctl --config F ARGS...`.
  RunResult ctl(const std::vector<std::string>& args) const;
  /// `tiersyncctl --config F status --json`, parsed; throws with the output when it is not JSON.
  json status() const;
};

/// Writes a tier0 config in `home` (tree/ and state/ below it); nothing else is created. `guard`
/// is left out when null.
Node make_origin(const fs::path& home, const std::string& name, const fs::path& source,
                 const fs::path& signing_key, const json& guard = nullptr);
/// Writes a mirror config in `home`; nothing else is created. `guard` is left out when null.
Node make_mirror(const fs::path& home, const std::string& name, const std::string& upstream_url,
                 const std::vector<fs::path>& trusted_keys, const json& guard = nullptr,
                 unsigned threshold = 1);

/// Adds (merges) keys into a node's config file.
void amend_config(const Node& node, const json& extra);

/// A `listen` array of one entry on 127.0.0.1, port 0: tiersyncd binds a port the kernel picks
/// and reports it (Daemon::port()). Plain HTTP, or HTTPS with `cert` and `key`.
json loopback_listen(const fs::path& cert = {}, const fs::path& key = {});

/// How long a daemon has to exit after SIGTERM: a cycle stops between files, the server gives
/// responses in flight 5 s (docs/architecture.md, "Threads"); the rest is a sanitizer build's
/// margin on a busy machine.
inline constexpr std::chrono::seconds kStopLimit{15};

/// A soft and hard RLIMIT_NOFILE for a child, as systemd's LimitNOFILE= sets them.
struct DescriptorLimit {
  std::uint64_t soft = 0;
  std::uint64_t hard = 0;
};

/// A background child (stdout and stderr into `log`); SIGKILLed and reaped if still running when
/// the object goes. With `nofile`, the child starts with that descriptor limit.
class Process {
 public:
  Process(std::vector<std::string> argv, fs::path log,
          std::optional<DescriptorLimit> nofile = std::nullopt);
  ~Process() { kill(); }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  /// SIGKILL and reap (no-op once reaped).
  void kill();
  /// Sends `sig` while the process runs (no-op once reaped).
  void signal(int sig);
  /// Waits at most `limit`; the exit code (128 + signal when killed), or -1 if still running.
  int wait(std::chrono::milliseconds limit);
  /// SIGTERM, then wait(limit).
  int terminate(std::chrono::milliseconds limit);
  std::string log() const;
  /// Waits (bounded, looking every 50 ms) until the log holds `needle`; false if it never does.
  bool wait_for_log(std::string_view needle, std::chrono::milliseconds limit) const;
  /// The process id while it runs (-1 once reaped).
  int pid() const { return pid_; }

 private:
  fs::path log_;
  int pid_ = -1;
  int code_ = -1;
};

/// `tiersyncd --config F` in the background, its output in the node's home. One still running
/// when the test ends is stopped as an operator would (SIGTERM) and must exit 0: a daemon that
/// aborts on its way out (a sanitizer's report, a leak, a hung thread) fails the test.
struct Daemon : Process {
  explicit Daemon(const Node& node, std::string_view log_name = "daemon.log",
                  std::optional<DescriptorLimit> nofile = std::nullopt);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  /// The ports this daemon bound, one per `listen` entry in order, from the report it writes
  /// once every listener is bound (`state_dir/ports.json` naming its pid; docs/configuration.md,
  /// "Bound ports"). Waits for it (bounded); throws, with the log, when none comes or the daemon
  /// exits first.
  std::vector<std::uint16_t> ports(std::chrono::seconds limit = std::chrono::seconds(60));
  std::uint16_t port(std::size_t listener = 0) { return ports().at(listener); }
  /// "https://127.0.0.1:PORT/" (or http://) of a listen entry, as reported.
  std::string url(std::size_t listener = 0);
  /// SIGTERM; success when it exits 0 within `limit` with no sanitizer report in its log.
  ::testing::AssertionResult stop(std::chrono::seconds limit = kStopLimit);

 private:
  fs::path state_dir_;
};

/// How often `needle` occurs in `text`.
std::size_t count_of(std::string_view text, std::string_view needle);
/// Waits (bounded, every 50 ms) until `p`'s log holds `needle` at least `n` times.
bool wait_for_count(const Process& p, std::string_view needle, std::size_t n,
                    std::chrono::seconds limit);

/// Waits (bounded, polling every 100 ms) until `tree` holds exactly the files of `source`.
bool converges(const fs::path& source, const fs::path& tree, std::chrono::seconds limit);

/// True when the curl command is on PATH (.ci/setup.sh installs it: a test that needs it fails
/// without it, it does not skip).
bool have_curl();

/// Case-insensitive substring search.
bool contains_nocase(std::string_view haystack, std::string_view needle);

/// A fixture for the tests that run daemons: a temp root, an origin key, a sample source
/// (`model`, materialized in `source`) and a tier0 "dl-master" configured on it (not run).
class OriginTest : public ::testing::Test {
 protected:
  OriginTest();

  TempDir root{"tiersync-it"};
  KeyFiles key;
  fs::path source = root / "incoming";
  TreeModel model = make_sample();
  Node origin;
};

// ---------------------------------------------------------------------------------------------
// Assertions (use as ASSERT_TRUE(Exited(node.once(), 0)))

/// The run exited with `code`; otherwise the message holds its command and output.
::testing::AssertionResult Exited(const RunResult& run, int code);
/// `dir` holds exactly `model` (outside `.tiersync/`); otherwise the message lists the differences.
::testing::AssertionResult TreeMatches(const fs::path& dir, const TreeModel& model,
                                       const CompareOptions& options = {});
/// A `status --json` document has every field of the contract: role, name, serial,
/// upstream_serial, lag, held[] (partition, deleted, files, ratio, limit, candidate) and
/// last_cycle (result, time, message).
::testing::AssertionResult HasStatusShape(const json& status);
/// stdout or stderr contains `text`.
::testing::AssertionResult Mentions(const RunResult& run, std::string_view text);
/// For every group, stderr contains one of its words (case-insensitive).
::testing::AssertionResult StderrNames(const RunResult& run,
                                       const std::vector<std::vector<std::string>>& groups);

}  // namespace tiersync::it
