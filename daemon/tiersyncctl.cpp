// tiersyncctl: the operator's tool. keygen, status, approve, verify, sync-now.

#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "daemon/node/node.h"
#include "daemon/ops/config.h"
#include "daemon/ops/control.h"
#include "daemon/sync/fs.h"
#include "proto/keys.h"

namespace {

using namespace tiersync;

constexpr const char* kUsage =
    "usage: tiersyncctl keygen --out PREFIX [--force]\n"
    "       tiersyncctl [--config FILE] status [--json]\n"
    "       tiersyncctl [--config FILE] approve PARTITION... | --all\n"
    "       tiersyncctl [--config FILE] verify [--full | --repair]\n"
    "       tiersyncctl [--config FILE] sync-now\n"
    "exit: 0 ok, 1 failure or differences, 2 usage or configuration error\n";

int usage_error(const std::string& what) {
  std::fprintf(stderr, "tiersyncctl: %s\n%s", what.c_str(), kUsage);
  return node::kExitUsage;
}

int keygen(const std::vector<std::string>& args) {
  std::string prefix;
  bool force = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--out" && i + 1 < args.size()) {
      prefix = args[++i];
    } else if (args[i] == "--force") {
      force = true;
    } else {
      return usage_error("keygen: unknown argument \"" + args[i] + "\"");
    }
  }
  if (prefix.empty()) return usage_error("keygen: --out PREFIX is required");
  // A signing key replaced by mistake cannot be had back, and every relay trusting it would
  // refuse the next snapshot: replacing one takes --force.
  if (!force)
    for (const std::string& file : {prefix + ".key", prefix + ".pub"}) {
      struct stat st;
      if (::lstat(file.c_str(), &st) == 0) {
        std::fprintf(stderr, "tiersyncctl: keygen: %s exists; not replacing it without --force\n",
                     file.c_str());
        return node::kExitUsage;
      }
    }
  auto key = proto::PrivateKey::generate();
  if (!key) {
    std::fprintf(stderr, "tiersyncctl: %s\n", key.message().c_str());
    return node::kExitFailure;
  }
  // The private key is never written with a mode wider than 0600, even for a moment.
  if (auto st = sync::write_file_atomic(prefix + ".key", key->to_pem(), 0600); !st) {
    std::fprintf(stderr, "tiersyncctl: %s\n", st.message().c_str());
    return node::kExitFailure;
  }
  if (auto st = sync::write_file_atomic(prefix + ".pub", key->public_key().to_pem(), 0644); !st) {
    std::fprintf(stderr, "tiersyncctl: %s\n", st.message().c_str());
    return node::kExitFailure;
  }
  std::printf("%s\n", key->public_key().keyid().c_str());
  return node::kExitOk;
}

// verify --repair works on the tree while no daemon does: a running daemon's scrubber repairs in
// the background, and the two would fight over the state_dir lock (a cycle refused meanwhile).
int verify_repair(const ops::Config& config) {
  if (ops::control_request(config.control_socket, "status")) {
    std::fprintf(stderr,
                 "tiersyncctl: verify --repair: a tiersyncd runs for this node (%s answers); its "
                 "scrubber repairs in the background (scrub.mb_per_second, see status). Stop it "
                 "to repair everything at once.\n",
                 config.control_socket.c_str());
    return node::kExitFailure;
  }
  auto report = node::verify_and_repair(config);
  if (!report) {
    std::fprintf(stderr, "tiersyncctl: verify --repair: %s\n", report.message().c_str());
    return node::kExitFailure;
  }
  for (const auto& l : report->lines) std::printf("%s\n", l.c_str());
  std::fprintf(stderr, "tiersyncctl: verify --repair: %s\n",
               report->clean ? "tree matches the applied snapshot"
                             : "differences are left (listed as \"left:\")");
  return report->clean ? node::kExitOk : node::kExitFailure;
}

int status(const ops::Config& config, const std::vector<std::string>& args) {
  bool json = false;
  for (const auto& a : args) {
    if (a != "--json") return usage_error("status: unknown argument \"" + a + "\"");
    json = true;
  }
  std::fputs((json ? node::status_json(config) : node::status_text(config)).c_str(), stdout);
  return node::kExitOk;
}

int approve(const ops::Config& config, const std::vector<std::string>& args) {
  bool all = false;
  std::vector<std::string> parts;
  for (const auto& a : args) {
    if (a == "--all") {
      all = true;
    } else if (a.starts_with("-")) {
      return usage_error("approve: unknown option \"" + a + "\"");
    } else {
      parts.push_back(a);
    }
  }
  if (!all && parts.empty()) return usage_error("approve: name partitions or give --all");
  auto lines = node::approve(config, parts, all);
  if (!lines) {
    std::fprintf(stderr, "tiersyncctl: approve: %s\n", lines.message().c_str());
    return node::kExitFailure;
  }
  for (const auto& l : *lines) std::printf("%s\n", l.c_str());
  // A running daemon applies it at once; without one, the next --once does.
  if (ops::control_request(config.control_socket, "approved"))
    std::printf("the running daemon starts a cycle now\n");
  return node::kExitOk;
}

int verify(const ops::Config& config, const std::vector<std::string>& args) {
  bool full = false, repair = false;
  for (const auto& a : args) {
    if (a == "--full") {
      full = true;
    } else if (a == "--repair") {
      repair = true;
    } else {
      return usage_error("verify: unknown argument \"" + a + "\"");
    }
  }
  if (repair) return verify_repair(config);
  auto diffs = node::verify(config, full);
  if (!diffs) {
    std::fprintf(stderr, "tiersyncctl: verify: %s\n", diffs.message().c_str());
    return node::kExitFailure;
  }
  for (const auto& d : *diffs) std::printf("%s\n", d.c_str());
  if (!diffs->empty()) {
    std::fprintf(stderr, "tiersyncctl: verify: %zu difference(s)\n", diffs->size());
    return node::kExitFailure;
  }
  std::fprintf(stderr, "tiersyncctl: verify: tree matches the applied snapshot\n");
  return node::kExitOk;
}

int sync_now(const ops::Config& config, const std::vector<std::string>& args) {
  if (!args.empty()) return usage_error("sync-now takes no argument");
  auto reply = ops::control_request(config.control_socket, "sync-now");
  if (!reply) {
    std::fprintf(stderr, "tiersyncctl: sync-now: %s\n", reply.message().c_str());
    return node::kExitFailure;
  }
  std::printf("%s\n", reply->c_str());
  return reply->starts_with("ok") ? node::kExitOk : node::kExitFailure;
}

// The command line: the global options before the command, then the command and its arguments.
struct CommandLine {
  std::string config_path{ops::kDefaultConfigPath};
  bool help = false;
  std::string command;
  std::vector<std::string> args;
};

CommandLine parse_command_line(int argc, char** argv) {
  CommandLine cl;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const bool before_command = cl.command.empty();
    if (a == "--config" && i + 1 < argc && before_command) {
      cl.config_path = argv[++i];
    } else if (a.starts_with("--config=") && before_command) {
      cl.config_path = a.substr(9);
    } else if ((a == "--help" || a == "-h") && before_command) {
      cl.help = true;
      return cl;
    } else if (before_command) {
      cl.command = a;
    } else {
      cl.args.push_back(a);
    }
  }
  return cl;
}

// The commands that work on a configured node, by name.
int run_command(const CommandLine& cl, const ops::Config& config) {
  if (cl.command == "status") return status(config, cl.args);
  if (cl.command == "approve") return approve(config, cl.args);
  if (cl.command == "verify") return verify(config, cl.args);
  if (cl.command == "sync-now") return sync_now(config, cl.args);
  return usage_error("unknown command \"" + cl.command + "\"");
}

}  // namespace

int main(int argc, char** argv) {
  const CommandLine cl = parse_command_line(argc, argv);
  if (cl.help) {
    std::fputs(kUsage, stdout);
    return node::kExitOk;
  }
  if (cl.command.empty()) return usage_error("a command is required");
  if (cl.command == "keygen") return keygen(cl.args);
  auto config = ops::load_config(cl.config_path);
  if (!config) {
    std::fprintf(stderr, "tiersyncctl: %s\n", config.message().c_str());
    return node::kExitUsage;
  }
  return run_command(cl, *config);
}
