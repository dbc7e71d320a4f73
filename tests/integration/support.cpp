#include "tests/integration/support.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "proto/digest.h"
#include "proto/dsse.h"
#include "proto/path.h"

extern char** environ;

namespace tiersync::it {

namespace {

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what);
}

[[noreturn]] void fail_errno(const std::string& what, const fs::path& path) {
  fail(what + " " + path.string() + ": " + std::strerror(errno));
}

void set_times(const fs::path& file, std::int64_t mtime, bool follow) {
  struct timespec times[2];
  times[0].tv_sec = mtime;
  times[0].tv_nsec = 0;
  times[1] = times[0];
  if (::utimensat(AT_FDCWD, file.c_str(), times, follow ? 0 : AT_SYMLINK_NOFOLLOW) != 0)
    fail_errno("utimensat", file);
}

/// `s` with control characters (but newline and tab) and bytes that are not UTF-8 as \xNN, so
/// that hostile output stays readable in test logs.
std::string printable(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
    bool ok = c < 0x80 ? (c >= 0x20 || c == '\n' || c == '\t') && c != 0x7F
                       : i + n <= s.size() && proto::is_valid_utf8(s.substr(i, n));
    if (ok) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
      ++i;
    }
  }
  return out;
}

std::string truncated(const std::string& s, std::size_t limit = 6000) {
  if (s.size() <= limit) return s;
  return s.substr(0, limit / 2) + "\n[... " + std::to_string(s.size() - limit) +
         " bytes left out ...]\n" + s.substr(s.size() - limit / 2);
}

std::string to_lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Temp folders and files

TempDir::TempDir(std::string_view tag) {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl =
      std::string(base && *base ? base : "/tmp") + "/" + std::string(tag) + "-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) fail_errno("mkdtemp", tmpl);
  // Resolve symlinks (e.g. a TMPDIR behind one) so paths compare as the daemon sees them.
  path_ = fs::canonical(tmpl);
}

TempDir::~TempDir() {
  const char* keep = std::getenv("TIERSYNC_IT_KEEP");
  if (keep && std::string_view(keep) == "1") return;
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void write_file(const fs::path& file, std::string_view bytes, std::optional<std::int64_t> mtime,
                std::uint32_t mode) {
  fs::create_directories(file.parent_path());
  fs::path tmp = file.parent_path() / (".it-tmp-" + file.filename().string());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail_errno("open", tmp);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) fail_errno("write", tmp);
  }
  if (::chmod(tmp.c_str(), mode) != 0) fail_errno("chmod", tmp);
  if (mtime) set_times(tmp, *mtime, true);
  if (::rename(tmp.c_str(), file.c_str()) != 0) fail_errno("rename", file);
}

void write_symlink(const fs::path& link, std::string_view target) {
  fs::create_directories(link.parent_path());
  fs::path tmp = link.parent_path() / (".it-tmp-" + link.filename().string());
  ::unlink(tmp.c_str());
  if (::symlink(std::string(target).c_str(), tmp.c_str()) != 0) fail_errno("symlink", tmp);
  if (::rename(tmp.c_str(), link.c_str()) != 0) fail_errno("rename", link);
}

std::string read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail_errno("open", file);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string sha256_hex(std::string_view bytes) {
  return proto::to_hex(proto::sha256(bytes));
}

void replace_with_copy(const fs::path& from, const fs::path& dir) {
  fs::remove_all(dir);
  RunResult r = run({"cp", "-a", from.string(), dir.string()});
  if (!r.exited(0)) fail("copy failed: " + r.describe());
}

// ---------------------------------------------------------------------------------------------
// Child processes

std::string RunResult::describe() const {
  std::string out_text = "$ " + command + "\n";
  if (timed_out) {
    out_text += "TIMED OUT (killed)\n";
  } else if (term_signal != 0) {
    out_text +=
        "killed by signal " + std::to_string(term_signal) + " (" + strsignal(term_signal) + ")\n";
  } else {
    out_text += "exit code " + std::to_string(exit_code) + "\n";
  }
  out_text += "--- stdout ---\n" + printable(truncated(out)) + "\n--- stderr ---\n" +
              printable(truncated(err));
  return out_text;
}

RunResult run(const std::vector<std::string>& argv, const Env& env, std::chrono::seconds timeout) {
  RunResult result;
  for (const auto& a : argv) result.command += (result.command.empty() ? "" : " ") + a;
  for (const auto& [k, v] : env) result.command = k + "=" + v + " " + result.command;

  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    if (std::string_view(*e).starts_with("TIERSYNC_")) continue;
    std::string_view kv(*e);
    std::string key(kv.substr(0, kv.find('=')));
    if (env.count(key)) continue;
    env_strings.emplace_back(*e);
  }
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args(argv);
  std::vector<char*> argvp;
  for (auto& a : args) argvp.push_back(a.data());
  argvp.push_back(nullptr);

  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0)
    fail_errno("pipe2", "");
  pid_t pid = ::fork();
  if (pid < 0) fail_errno("fork", argv.front());
  if (pid == 0) {
    // Child: own process group (so a timeout kills everything it started), output to the pipes.
    ::setpgid(0, 0);
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, 0);
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    ::execvpe(argvp[0], argvp.data(), envp.data());
    const char msg[] = "exec failed\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);

  auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_fds = 2;
  char buf[65536];
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) {
      result.timed_out = true;
      ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
      break;
    }
    int n = ::poll(fds, 2, static_cast<int>(std::min<long long>(left, 1000)));
    if (n < 0 && errno != EINTR) fail_errno("poll", "");
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        sinks[i]->append(buf, static_cast<std::size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) ::close(f.fd);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) fail_errno("waitpid", argv.front());
  }
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.term_signal = WTERMSIG(status);
  if (const char* verbose = std::getenv("TIERSYNC_IT_VERBOSE"); verbose && *verbose == '1')
    std::fprintf(stderr, "%s\n", result.describe().c_str());
  return result;
}

// ---------------------------------------------------------------------------------------------
// Tree listings

namespace {

void walk(const fs::path& root, const std::string& rel, const ListOptions& options, Listing& out) {
  fs::path dir = rel.empty() ? root : root / rel;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT && rel.empty()) return;
    fail_errno("opendir", dir);
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string_view name(e->d_name);
    if (name == "." || name == "..") continue;
    names.emplace_back(name);
  }
  ::closedir(d);
  for (const auto& name : names) {
    std::string child_rel = rel.empty() ? name : rel + "/" + name;
    if (rel.empty() && options.skip_meta && name == proto::kMetaDir) continue;
    fs::path child = root / child_rel;
    if (std::find(options.exclude.begin(), options.exclude.end(), child) != options.exclude.end())
      continue;
    struct stat st;
    if (::lstat(child.c_str(), &st) != 0) fail_errno("lstat", child);
    NodeInfo info;
    info.mode = st.st_mode & 07777;
    info.mtime = st.st_mtim.tv_sec;
    info.ino = st.st_ino;
    info.size = static_cast<std::uint64_t>(st.st_size);
    if (S_ISREG(st.st_mode)) {
      info.type = 'f';
      if (options.hash) info.sha256 = sha256_hex(read_file(child));
    } else if (S_ISLNK(st.st_mode)) {
      info.type = 'l';
      std::string target(static_cast<std::size_t>(st.st_size) + 1, '\0');
      ssize_t n = ::readlink(child.c_str(), target.data(), target.size());
      if (n < 0) fail_errno("readlink", child);
      target.resize(static_cast<std::size_t>(n));
      info.target = target;
    } else if (S_ISDIR(st.st_mode)) {
      info.type = 'd';
    }
    out[child_rel] = info;
    if (info.type == 'd') walk(root, child_rel, options, out);
  }
}

std::string octal(std::uint32_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", mode);
  return buf;
}

std::string describe_node(const NodeInfo& n) {
  switch (n.type) {
    case 'f':
      return "file size " + std::to_string(n.size) + " sha256 " + n.sha256.substr(0, 12) +
             " mode " + octal(n.mode) + " mtime " + std::to_string(n.mtime);
    case 'l':
      return "symlink -> " + n.target;
    case 'd':
      return "folder";
    default:
      return "special file";
  }
}

}  // namespace

Listing list_tree(const fs::path& root, const ListOptions& options) {
  Listing out;
  walk(root, "", options, out);
  return out;
}

std::string diff_listings(const Listing& expected, const Listing& actual,
                          const CompareOptions& options) {
  std::string out;
  int lines = 0;
  auto add = [&](const std::string& line) {
    if (++lines <= 60) out += line + "\n";
  };
  for (const auto& [path, want] : expected) {
    if (want.type == 'd' && !options.dirs) continue;
    auto it = actual.find(path);
    if (it == actual.end()) {
      add("missing:    " + path + " (" + describe_node(want) + ")");
      continue;
    }
    const NodeInfo& got = it->second;
    bool same = want.type == got.type;
    if (same && want.type == 'f') {
      same = want.size == got.size && want.sha256 == got.sha256 &&
             (!options.mtime || want.mtime == got.mtime) &&
             (!options.mode || want.mode == got.mode);
    } else if (same && want.type == 'l') {
      same = want.target == got.target;
    }
    if (!same)
      add("differs:    " + path + ": expected " + describe_node(want) + ", found " +
          describe_node(got));
    else if (options.inode && want.type != 'd' && want.ino != got.ino)
      add("rewritten:  " + path + " (inode " + std::to_string(want.ino) + ", now " +
          std::to_string(got.ino) + ")");
  }
  for (const auto& [path, got] : actual) {
    if (got.type == 'd' && !options.dirs) continue;
    if (!expected.count(path)) add("unexpected: " + path + " (" + describe_node(got) + ")");
  }
  if (lines > 60) out += "... and " + std::to_string(lines - 60) + " more differences\n";
  return out;
}

std::vector<std::string> files_in(const Listing& listing) {
  std::vector<std::string> out;
  for (const auto& [path, info] : listing)
    if (info.type != 'd') out.push_back(path);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tree models

std::string partition_of(std::string_view path) {
  return std::string(proto::partition_of(path, kDepth));
}

std::set<std::string> partitions_of(const TreeModel& model) {
  std::set<std::string> out;
  for (const auto& [path, spec] : model) out.insert(partition_of(path));
  return out;
}

std::vector<std::string> paths_in(const TreeModel& model, std::string_view partition) {
  std::vector<std::string> out;
  for (const auto& [path, spec] : model)
    if (partition_of(path) == partition) out.push_back(path);
  return out;
}

std::vector<std::string> packages_in(const TreeModel& model, std::string_view partition) {
  std::vector<std::string> out;
  for (const auto& path : paths_in(model, partition))
    if (fs::path(path).filename() != kIndexName) out.push_back(path);
  return out;
}

namespace {

std::string random_bytes(std::uint64_t seed, std::size_t size) {
  std::mt19937_64 rng(seed);
  std::string out(size, '\0');
  for (std::size_t i = 0; i < size; i += 8) {
    std::uint64_t v = rng();
    std::memcpy(out.data() + i, &v, std::min<std::size_t>(8, size - i));
  }
  return out;
}

std::uint64_t mix(std::uint64_t seed, std::string_view text) {
  std::uint64_t h = seed ^ 0x9e3779b97f4a7c15ull;
  for (unsigned char c : text) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

}  // namespace

std::string add_package(TreeModel& model, std::string_view partition, std::string_view file_name,
                        std::uint64_t seed, std::int64_t mtime) {
  std::string path = std::string(partition) + "/" + std::string(file_name);
  std::uint64_t s = mix(seed, path);
  std::size_t size = 1024 + static_cast<std::size_t>(s % 3072);
  model[path] = FileSpec{random_bytes(s, size), mtime, 0644, false};
  return path;
}

void rebuild_index(TreeModel& model, std::string_view partition, std::int64_t mtime) {
  std::string index =
      "APKINDEX for " + std::string(partition) + " @" + std::to_string(mtime) + "\n";
  for (const auto& path : packages_in(model, partition)) {
    const FileSpec& f = model.at(path);
    index += fs::path(path).filename().string() + " " + sha256_hex(f.bytes) + " " +
             std::to_string(f.bytes.size()) + "\n";
  }
  model[std::string(partition) + "/" + std::string(kIndexName)] =
      FileSpec{index, mtime, 0644, false};
}

void add_partition(TreeModel& model, std::string_view partition, int packages, std::uint64_t seed) {
  for (int i = 0; i < packages; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "pkg%02d-1.%d-r0.apk", i, i % 7);
    add_package(model, partition, name, seed, kBaseMtime + i);
  }
  rebuild_index(model, partition, kBaseMtime + 500);
}

void remove_partition(TreeModel& model, std::string_view partition) {
  for (const auto& path : paths_in(model, partition)) model.erase(path);
}

void touch_last_updated(TreeModel& model, std::int64_t mtime) {
  // 0640: a mode other than the default, which must reach every tree as it is (0664 would be
  // published as 0644: docs/security.md, "Modes").
  model["last-updated"] = FileSpec{std::to_string(mtime) + "\n", mtime, 0640, false};
}

TreeModel make_sample(const SampleShape& shape) {
  TreeModel model;
  std::mt19937_64 rng(shape.seed);
  for (const auto& release : shape.releases)
    for (const auto& repo : shape.repos)
      for (const auto& arch : shape.arches) {
        int span = shape.max_packages - shape.min_packages + 1;
        int count = shape.min_packages + static_cast<int>(rng() % static_cast<unsigned>(span));
        add_partition(model, release + "/" + repo + "/" + arch, count, shape.seed);
      }
  touch_last_updated(model, kBaseMtime + 600);
  model["latest"] = FileSpec{shape.releases.front(), 0, 0777, true};
  return model;
}

TreeModel next_version(const TreeModel& v1) {
  TreeModel v2 = v1;
  std::uint64_t seed = 100;
  for (const auto& part : partitions_of(v1)) {
    if (part == kRoot) continue;
    v2.erase(packages_in(v2, part).at(1));
    add_package(v2, part, "zz-new-a-2.0-r0.apk", ++seed, kBaseMtime + 10000);
    add_package(v2, part, "aa-new-b-2.0-r0.apk", ++seed, kBaseMtime + 10000);
    if (part == "edge/main/x86_64") {
      const std::string rebuilt = packages_in(v2, part).at(4);
      std::string name = fs::path(rebuilt).filename().string();
      add_package(v2, part, name, ++seed, kBaseMtime + 10001);
    }
    rebuild_index(v2, part, kBaseMtime + 10002);
  }
  touch_last_updated(v2, kBaseMtime + 10003);
  return v2;
}

void materialize(const TreeModel& model, const fs::path& dir) {
  fs::create_directories(dir);
  Listing have = list_tree(dir, {.skip_meta = true, .hash = true, .exclude = {}});
  for (const auto& [path, spec] : model) {
    auto it = have.find(path);
    // A parent that is a file or symlink in the old tree must become a folder.
    for (fs::path p = fs::path(path).parent_path(); !p.empty(); p = p.parent_path()) {
      auto pit = have.find(p.string());
      if (pit != have.end() && pit->second.type != 'd') {
        fs::remove(dir / p);
        pit->second.type = 'd';  // made a folder below: not to be removed again
      }
    }
    if (spec.link) {
      if (it != have.end() && it->second.type == 'l' && it->second.target == spec.bytes) continue;
      if (it != have.end() && it->second.type == 'd') fs::remove_all(dir / path);
      write_symlink(dir / path, spec.bytes);
      continue;
    }
    if (it != have.end() && it->second.type == 'f' && it->second.sha256 == sha256_hex(spec.bytes) &&
        it->second.mtime == spec.mtime && it->second.mode == spec.mode)
      continue;
    if (it != have.end() && it->second.type == 'd') fs::remove_all(dir / path);
    write_file(dir / path, spec.bytes, spec.mtime, spec.mode);
  }
  // Remove what the model does not have, deepest first, then prune empty folders.
  have = list_tree(dir, {.skip_meta = true, .hash = false, .exclude = {}});
  for (auto it = have.rbegin(); it != have.rend(); ++it) {
    const auto& [path, info] = *it;
    if (model.count(path)) continue;
    fs::path p = dir / path;
    if (info.type == 'd') {
      std::error_code ec;
      if (fs::is_empty(p, ec)) fs::remove(p);
    } else {
      fs::remove(p);
    }
  }
}

Listing listing_of(const TreeModel& model) {
  Listing out;
  for (const auto& [path, spec] : model) {
    NodeInfo info;
    if (spec.link) {
      info.type = 'l';
      info.target = spec.bytes;
      info.size = spec.bytes.size();
    } else {
      info.type = 'f';
      info.sha256 = sha256_hex(spec.bytes);
      info.size = spec.bytes.size();
      info.mode = spec.mode;
      info.mtime = spec.mtime;
    }
    out[path] = info;
    for (fs::path p = fs::path(path).parent_path(); !p.empty(); p = p.parent_path())
      out[p.string()].type = 'd';
  }
  return out;
}

TreeModel model_of(const fs::path& dir) {
  TreeModel out;
  for (const auto& [path, info] :
       list_tree(dir, {.skip_meta = true, .hash = false, .exclude = {}})) {
    if (info.type == 'f') {
      out[path] = FileSpec{read_file(dir / path), info.mtime, info.mode, false};
    } else if (info.type == 'l') {
      out[path] = FileSpec{info.target, 0, 0777, true};
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Keys, snapshots, status

KeyFiles keygen(const fs::path& prefix) {
  fs::create_directories(prefix.parent_path());
  RunResult r = run({kTiersyncctl, "keygen", "--out", prefix.string()});
  if (!r.exited(0)) fail("keygen failed:\n" + r.describe());
  KeyFiles k{prefix.string() + ".key", prefix.string() + ".pub", ""};
  std::string out = r.out;
  while (!out.empty() && std::isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
  // The keyid is the last word printed.
  k.keyid = out.substr(
      out.find_last_of(" \t\n") == std::string::npos ? 0 : out.find_last_of(" \t\n") + 1);
  return k;
}

proto::Snapshot read_published_snapshot(const fs::path& tree) {
  fs::path file = tree / ".tiersync/v1/snapshot";
  auto env = proto::decode_envelope(read_file(file));
  if (!env) fail(file.string() + ": " + env.message());
  auto snap = proto::decode_snapshot(env->payload);
  if (!snap) fail(file.string() + ": " + snap.message());
  return *snap;
}

std::set<std::string> held_partitions(const json& status) {
  std::set<std::string> out;
  auto held = status.find("held");
  if (held == status.end() || !held->is_array()) return out;
  for (const auto& h : *held)
    if (h.is_object() && h.contains("partition") && h["partition"].is_string())
      out.insert(h["partition"].get<std::string>());
  return out;
}

json held_entry(const json& status, std::string_view partition) {
  auto held = status.find("held");
  if (held == status.end() || !held->is_array()) return nullptr;
  for (const auto& h : *held)
    if (h.is_object() && h.value("partition", json()) == partition) return h;
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Nodes

RunResult Node::once(const Env& env) const {
  return run({kTiersyncd, "--config", config().string(), "--once"}, env);
}

RunResult Node::ctl(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {kTiersyncctl, "--config", config().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv);
}

json Node::status() const {
  RunResult r = ctl({"status", "--json"});
  json j = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    fail("status --json of " + name + " did not print a JSON object:\n" + r.describe());
  return j;
}

namespace {

void write_config(const fs::path& file, const json& config) {
  write_file(file, config.dump(2) + "\n");
}

}  // namespace

Node make_origin(const fs::path& home, const std::string& name, const fs::path& source,
                 const fs::path& signing_key, const json& guard) {
  Node node{name, home};
  json config = {{"role", "tier0"},
                 {"name", name},
                 {"tree", "tree"},
                 {"state_dir", "state"},
                 {"layout", kLayout},
                 {"index_files", {kIndexName}},
                 {"source", {{"dir", source.string()}, {"settle_seconds", 1}}},
                 {"signing_key", signing_key.string()},
                 {"snapshot_ttl_hours", 168}};
  if (!guard.is_null()) config["guard"] = guard;
  write_config(node.config(), config);
  return node;
}

Node make_mirror(const fs::path& home, const std::string& name, const std::string& upstream_url,
                 const std::vector<fs::path>& trusted_keys, const json& guard, unsigned threshold) {
  Node node{name, home};
  json keys = json::array();
  for (const auto& k : trusted_keys) keys.push_back(k.string());
  json config = {{"role", "mirror"},
                 {"name", name},
                 {"tree", "tree"},
                 {"state_dir", "state"},
                 {"upstream", {{"url", upstream_url}}},
                 {"trusted_keys", keys},
                 {"threshold", threshold}};
  if (!guard.is_null()) config["guard"] = guard;
  write_config(node.config(), config);
  return node;
}

bool contains_nocase(std::string_view haystack, std::string_view needle) {
  return to_lower(haystack).find(to_lower(needle)) != std::string::npos;
}

// ---------------------------------------------------------------------------------------------
// Crash safety

namespace {

bool same_content(const FileSpec& a, const FileSpec& b) {
  return a.link == b.link && a.bytes == b.bytes;
}

const FileSpec* find(const TreeModel& m, const std::string& path) {
  auto it = m.find(path);
  return it == m.end() ? nullptr : &it->second;
}

}  // namespace

bool same_files(const TreeModel& a, const TreeModel& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
    return x.first == y.first && same_content(x.second, y.second);
  });
}

std::vector<std::string> crash_violations(const fs::path& tree, const TreeModel& before,
                                          const TreeModel& after) {
  std::vector<std::string> out;
  const TreeModel now = model_of(tree);
  // (a) Every file under its final name has its old or its new content.
  for (const auto& [path, spec] : now) {
    const FileSpec* old_spec = find(before, path);
    const FileSpec* new_spec = find(after, path);
    if (!old_spec && !new_spec) {
      out.push_back(path + ": in neither version");
    } else if (!(old_spec && same_content(spec, *old_spec)) &&
               !(new_spec && same_content(spec, *new_spec))) {
      out.push_back(path + ": neither its old nor its new content");
    }
  }
  auto complete = [&](const TreeModel& version, std::string_view part, bool exact,
                      const std::string& why) {
    for (const auto& path : paths_in(version, part)) {
      const FileSpec* have = find(now, path);
      if (!have)
        out.push_back(why + ": " + path + " is missing");
      else if (exact && !same_content(*have, version.at(path)))
        out.push_back(why + ": " + path + " has its old content");
    }
  };
  // (b) A partition whose index is in place is whole in that index's version.
  std::set<std::string> parts = partitions_of(before);
  for (const auto& p : partitions_of(after)) parts.insert(p);
  for (const auto& part : parts) {
    if (part == kRoot) continue;
    const std::string index = part + "/" + std::string(kIndexName);
    const FileSpec* have = find(now, index);
    if (!have) continue;
    const FileSpec* new_index = find(after, index);
    const FileSpec* old_index = find(before, index);
    if (new_index && same_content(*have, *new_index)) {
      complete(after, part, true, "new index of " + part + " in place");
    } else if (old_index && same_content(*have, *old_index)) {
      complete(before, part, false, "old index of " + part + " in place");
    }
  }
  // (c) The root partition goes last: new last-updated means every partition is new.
  const FileSpec* stamp = find(now, "last-updated");
  const FileSpec* new_stamp = find(after, "last-updated");
  const FileSpec* old_stamp = find(before, "last-updated");
  if (stamp && new_stamp && same_content(*stamp, *new_stamp) &&
      !(old_stamp && same_content(*old_stamp, *new_stamp))) {
    for (const auto& part : partitions_of(after))
      if (part != kRoot) complete(after, part, true, "new last-updated in place");
  }
  return out;
}

std::string join_lines(const std::vector<std::string>& lines, std::size_t limit) {
  std::string out;
  for (std::size_t i = 0; i < lines.size() && i < limit; ++i) out += "  " + lines[i] + "\n";
  if (lines.size() > limit) out += "  ... " + std::to_string(lines.size() - limit) + " more\n";
  return out;
}

// ---------------------------------------------------------------------------------------------
// Assertions

::testing::AssertionResult Exited(const RunResult& run, int code) {
  if (run.exited(code)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "expected exit code " << code << ", got:\n"
                                       << run.describe();
}

::testing::AssertionResult TreeMatches(const fs::path& dir, const TreeModel& model,
                                       const CompareOptions& options) {
  std::string diff = diff_listings(listing_of(model), list_tree(dir), options);
  if (diff.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << dir.string() << " does not hold what it should:\n"
                                       << diff;
}

::testing::AssertionResult HasStatusShape(const json& st) {
  std::string missing;
  for (const char* key : {"role", "name", "serial", "upstream_serial", "lag", "held", "last_cycle"})
    if (!st.contains(key)) missing += std::string(" ") + key;
  if (st.contains("held")) {
    if (!st["held"].is_array())
      missing += " held[]";
    else
      for (const auto& h : st["held"])
        for (const char* key : {"partition", "deleted", "files", "ratio", "limit", "candidate"})
          if (!h.contains(key)) missing += std::string(" held.") + key;
  }
  if (st.contains("last_cycle"))
    for (const char* key : {"result", "time", "message"})
      if (!st["last_cycle"].contains(key)) missing += std::string(" last_cycle.") + key;
  if (missing.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "status --json lacks" << missing << ":\n" << st.dump(2);
}

::testing::AssertionResult Mentions(const RunResult& run, std::string_view text) {
  if (run.out.find(text) != std::string::npos || run.err.find(text) != std::string::npos)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "the output does not mention \"" << text << "\":\n"
                                       << run.describe();
}

::testing::AssertionResult StderrNames(const RunResult& run,
                                       const std::vector<std::vector<std::string>>& groups) {
  for (const auto& group : groups) {
    bool found = false;
    for (const auto& word : group) found = found || contains_nocase(run.err, word);
    if (!found) {
      std::string words;
      for (const auto& word : group) words += (words.empty() ? "\"" : ", \"") + word + "\"";
      return ::testing::AssertionFailure() << "stderr names none of " << words << ":\n"
                                           << run.describe();
    }
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------------
// Daemons

void amend_config(const Node& node, const json& extra) {
  json config = json::parse(read_file(node.config()));
  config.update(extra, /*merge_objects=*/true);
  std::ofstream(node.config()) << config.dump(2);
}

json loopback_listen(const fs::path& cert, const fs::path& key) {
  json entry = {{"address", "127.0.0.1"}, {"port", 0}};
  if (cert.empty()) {
    entry["tls"] = false;
  } else {
    entry["tls_cert"] = cert.string();
    entry["tls_key"] = key.string();
  }
  return json::array({entry});
}

Process::Process(std::vector<std::string> argv, fs::path log, std::optional<DescriptorLimit> nofile)
    : log_(std::move(log)) {
  pid_ = ::fork();
  if (pid_ == 0) {
    if (nofile) {
      const rlimit rl{static_cast<rlim_t>(nofile->soft), static_cast<rlim_t>(nofile->hard)};
      if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) ::_exit(126);
    }
    int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 2);
    ::dup2(fd, 1);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
}

void Process::kill() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
}

bool Process::wait_for_log(std::string_view needle, std::chrono::milliseconds limit) const {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (log().find(needle) != std::string::npos) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::size_t count_of(std::string_view text, std::string_view needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string_view::npos; at = text.find(needle, at + 1))
    ++n;
  return n;
}

bool wait_for_count(const Process& p, std::string_view needle, std::size_t n,
                    std::chrono::seconds limit) {
  for (long i = 0; i <= limit / std::chrono::milliseconds(50); ++i) {
    if (count_of(p.log(), needle) >= n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

namespace {

// The node's state_dir, from its configuration (relative paths resolve against its folder).
fs::path state_dir_of(const Node& node) {
  const json config = json::parse(read_file(node.config()));
  const fs::path dir = config.value("state_dir", std::string("state"));
  return dir.is_absolute() ? dir : node.config().parent_path() / dir;
}

std::string log_tail(const std::string& text) {
  return text.size() > 8000 ? "..." + text.substr(text.size() - 8000) : text;
}

}  // namespace

Daemon::Daemon(const Node& node, std::string_view log_name, std::optional<DescriptorLimit> nofile)
    : Process({TIERSYNCD, "--config", node.config().string()}, node.home / log_name, nofile),
      state_dir_(state_dir_of(node)) {}

std::vector<std::uint16_t> Daemon::ports(std::chrono::seconds limit) {
  const fs::path report = state_dir_ / "ports.json";
  const int my_pid = pid();
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    std::error_code ec;
    if (my_pid > 0 && fs::exists(report, ec)) {
      const json doc = json::parse(read_file(report), nullptr, /*allow_exceptions=*/false);
      if (doc.is_object() && doc.value("pid", -1) == my_pid) {
        std::vector<std::uint16_t> out;
        for (const auto& l : doc.at("listen")) out.push_back(l.at("port").get<std::uint16_t>());
        return out;
      }
    }
    if (my_pid <= 0 || wait(std::chrono::milliseconds(0)) != -1)
      throw std::runtime_error("tiersyncd exited before it reported its ports; its log:\n" +
                               log_tail(log()));
    if (std::chrono::steady_clock::now() >= deadline)
      throw std::runtime_error("tiersyncd reported no bound ports in " +
                               std::to_string(limit.count()) + " s; its log:\n" + log_tail(log()));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::string Daemon::url(std::size_t listener) {
  ports();  // waits for this daemon's report
  const json doc = json::parse(read_file(state_dir_ / "ports.json"));
  return doc.at("listen").at(listener).at("url").get<std::string>() + "/";
}

::testing::AssertionResult Daemon::stop(std::chrono::seconds limit) {
  const int code = terminate(limit);
  const std::string text = log();
  for (const char* report : {"Sanitizer", ": runtime error: "})
    if (text.find(report) != std::string::npos)
      return ::testing::AssertionFailure()
             << "tiersyncd's log holds a sanitizer report (\"" << report << "\"):\n"
             << log_tail(text);
  if (code == -1) {
    kill();
    return ::testing::AssertionFailure()
           << "tiersyncd still ran " << limit.count() << " s after SIGTERM; its log:\n"
           << log_tail(text);
  }
  if (code != 0)
    return ::testing::AssertionFailure()
           << "tiersyncd exited " << code << " on SIGTERM (0 expected); its log:\n"
           << log_tail(text);
  return ::testing::AssertionSuccess();
}

Daemon::~Daemon() {
  if (pid() <= 0) return;
  if (auto stopped = stop(); !stopped)
    ADD_FAILURE() << "at the end of the test: " << stopped.message();
}

void Process::signal(int sig) {
  if (pid_ > 0) ::kill(pid_, sig);
}

int Process::wait(std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (pid_ > 0) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return code_;
}

int Process::terminate(std::chrono::milliseconds limit) {
  if (pid_ > 0) ::kill(pid_, SIGTERM);
  return wait(limit);
}

std::string Process::log() const {
  return fs::exists(log_) ? read_file(log_) : std::string();
}

bool converges(const fs::path& source, const fs::path& tree, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (fs::exists(tree) && diff_listings(list_tree(source), list_tree(tree)).empty()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

bool have_curl() {
  return run({"sh", "-c", "command -v curl"}).exited(0);
}

OriginTest::OriginTest() : key(keygen(root / "keys/origin")) {
  materialize(model, source);
  origin = make_origin(root / "origin", "dl-master", source, key.key);
}

}  // namespace tiersync::it
