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

}  // namespace

int main(int argc, char** argv) {
  std::string config_path(ops::kDefaultConfigPath);
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--config" && i + 1 < argc && args.empty()) {
      config_path = argv[++i];
    } else if (a.starts_with("--config=") && args.empty()) {
      config_path = a.substr(9);
    } else if ((a == "--help" || a == "-h") && args.empty()) {
      std::fputs(kUsage, stdout);
      return node::kExitOk;
    } else {
      args.push_back(a);
    }
  }
  if (args.empty()) return usage_error("a command is required");
  const std::string cmd = args.front();
  args.erase(args.begin());
  if (cmd == "keygen") return keygen(args);

  auto config = ops::load_config(config_path);
  if (!config) {
    std::fprintf(stderr, "tiersyncctl: %s\n", config.message().c_str());
    return node::kExitUsage;
  }
  if (cmd == "status") {
    bool json = false;
    for (const auto& a : args) {
      if (a != "--json") return usage_error("status: unknown argument \"" + a + "\"");
      json = true;
    }
    std::fputs((json ? node::status_json(*config) : node::status_text(*config)).c_str(), stdout);
    return node::kExitOk;
  }
  if (cmd == "approve") {
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
    auto lines = node::approve(*config, parts, all);
    if (!lines) {
      std::fprintf(stderr, "tiersyncctl: approve: %s\n", lines.message().c_str());
      return node::kExitFailure;
    }
    for (const auto& l : *lines) std::printf("%s\n", l.c_str());
    // A running daemon applies it at once; without one, the next --once does.
    if (ops::control_request(config->control_socket, "approved"))
      std::printf("the running daemon starts a cycle now\n");
    return node::kExitOk;
  }
  if (cmd == "verify") {
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
    if (repair) return verify_repair(*config);
    auto diffs = node::verify(*config, full);
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
  if (cmd == "sync-now") {
    if (!args.empty()) return usage_error("sync-now takes no argument");
    auto reply = ops::control_request(config->control_socket, "sync-now");
    if (!reply) {
      std::fprintf(stderr, "tiersyncctl: sync-now: %s\n", reply.message().c_str());
      return node::kExitFailure;
    }
    std::printf("%s\n", reply->c_str());
    return reply->starts_with("ok") ? node::kExitOk : node::kExitFailure;
  }
  return usage_error("unknown command \"" + cmd + "\"");
}
