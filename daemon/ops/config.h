#pragma once
/// The configuration (docs/configuration.md), parsed into a typed, immutable object. Every error
/// names the key; defaults live in one place (the member initialisers below, and GuardPolicy's
/// in daemon/sync/guard.h), read by one parser per section (daemon/ops/config.cpp).

#include <cstdint>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/base/guard_policy.h"
#include "proto/keys.h"
#include "proto/result.h"

namespace tiersync::ops {

namespace fs = std::filesystem;

enum class Role { kTier0, kTier1, kMirror };
std::string_view role_name(Role role);

inline constexpr std::string_view kDefaultConfigPath = "/etc/tiersync/tiersync.json";

struct ListenConfig {
  std::string address;
  std::uint16_t port = 0;
  bool tls = true;
  fs::path tls_cert;
  fs::path tls_key;
};

struct UpstreamConfig {
  std::string url;
  fs::path ca_file;
  unsigned connections = 8;
  unsigned pipeline_depth = 32;  ///< requests in flight per connection (HTTP/1.1 pipelining)
  unsigned poll_seconds = 300;
  std::uint64_t max_bytes_per_second = 0;  ///< 0: unlimited
  /// Every fetch's body must keep this average rate after a 30 s grace; 0: no minimum.
  std::uint64_t min_bytes_per_second = 1024;
  std::uint64_t range_split_bytes = 8u << 20;  ///< larger files come in ranges; 0: never
};

/// The built-in server's caps against crowds (`serve`); the server lowers them further to fit the
/// descriptor limit (docs/configuration.md).
struct ServeConfig {
  std::uint32_t max_connections = 16384;          ///< open connections, long polls included
  std::uint32_t max_long_polls = 8192;            ///< snapshot long polls held at once; more: 503
  std::uint32_t max_long_polls_per_address = 32;  ///< of them from one client address; more: 503
};

/// Background re-hashing of the tree against the applied manifests (docs/configuration.md).
struct ScrubConfig {
  unsigned mb_per_second = 20;  ///< bytes read per second, in MB (10^6); 0: scrub is off
};

struct LogConfig {
  std::string level = "info";
  std::string format = "text";  ///< text or json
};

struct Config {
  fs::path file;  ///< where it was read from (absolute)
  Role role = Role::kMirror;
  std::string name;
  fs::path tree;
  fs::path state_dir;

  // tier0
  std::string layout;
  std::vector<std::string> index_files = {"APKINDEX.tar.gz", "Release", "InRelease", "repomd.xml"};
  fs::path source_dir;
  unsigned settle_seconds = 10;
  /// `signing_key`: one private key file, or an array of them (a key rotation with a relay
  /// `threshold` of 2 signs with the old and the new key). Each signs every snapshot.
  std::vector<fs::path> signing_keys;
  unsigned snapshot_ttl_hours = 168;

  // relays
  UpstreamConfig upstream;
  std::vector<fs::path> trusted_keys;
  unsigned threshold = 1;

  base::GuardPolicy guard;
  ScrubConfig scrub;
  std::vector<ListenConfig> listen;
  ServeConfig serve;
  fs::path control_socket;  ///< default: state_dir/control.sock
  LogConfig log;

  bool is_relay() const { return role != Role::kTier0; }
};

/// Parses and validates configuration text; `file` resolves relative paths and names errors.
Result<Config> parse_config(std::string_view text, const fs::path& file);
/// The keys `parse_config` looks up in this text, named as tiersync.json(5) names them
/// (`upstream.url`, `listen[].port`, `guard.partitions.GLOB.min_files`): what the man page test
/// (tests/man_test.cpp) holds against the page. A key looked up is a key the parser accepts.
Result<std::set<std::string>> config_keys_read(std::string_view text, const fs::path& file);
/// Reads and parses a configuration file.
Result<Config> load_config(const fs::path& file);
/// What parsing cannot see: the keys load, TLS files exist, the folders can be made.
Status check_resources(const Config& config);

/// tier0's `signing_key` files, loaded; errors name the key (`signing_key[1]` in a list) and
/// refuse a key listed twice.
Result<std::vector<proto::PrivateKey>> load_signing_keys(const Config& config);
/// A relay's `trusted_keys`, loaded; errors name the entry (`trusted_keys[0]`).
Result<std::vector<proto::PublicKey>> load_trusted_keys(const Config& config);

}  // namespace tiersync::ops
