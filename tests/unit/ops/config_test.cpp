#include "daemon/ops/config.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "proto/keys.h"
#include "tests/unit/support.h"

namespace tiersync::ops {
namespace {

using unit::Contains;

using nlohmann::json;

/// True when `haystack` contains `needle`; the failure message shows both.

/// Where the configs of these tests claim to live (parse_config reads no file).
const fs::path kFile = "/etc/tiersync/tiersync.json";

json tier0() {
  return json::parse(R"({
    "role": "tier0",
    "name": "dl-master",
    "tree": "/srv/mirror/alpine",
    "state_dir": "/var/lib/tiersync",
    "layout": "{release}/{repo}/{arch}",
    "index_files": ["APKINDEX.tar.gz"],
    "source": {"dir": "/srv/incoming", "settle_seconds": 30},
    "signing_key": "/etc/tiersync/origin.key",
    "snapshot_ttl_hours": 48,
    "guard": {"max_delete_ratio": 0.1, "min_files": 5,
              "partitions": {"edge/testing/*": {"max_delete_ratio": 0.5}}},
    "listen": [{"address": "0.0.0.0", "port": 8443, "tls_cert": "/etc/tiersync/cert.pem",
                "tls_key": "/etc/tiersync/key.pem"}],
    "control_socket": "/run/tiersync/control.sock",
    "log": {"level": "debug", "format": "json"}
  })");
}

json tier1() {
  return json::parse(R"({
    "role": "tier1",
    "name": "cdn-backend-1",
    "tree": "/srv/mirror/alpine",
    "state_dir": "/var/lib/tiersync",
    "upstream": {"url": "https://dl-master.example.org:8443/", "ca_file": "/etc/tiersync/ca.pem",
                 "connections": 16, "poll_seconds": 60, "max_bytes_per_second": 1000000,
                 "min_bytes_per_second": 4096, "range_split_bytes": 0},
    "trusted_keys": ["/etc/tiersync/origin.pub", "/etc/tiersync/origin2.pub"],
    "threshold": 2,
    "guard": {"max_delete_ratio": 0.2, "min_files": 10, "trust_upstream_approvals": false,
              "partitions": {"edge/testing/*": {"max_delete_ratio": 0.5, "min_files": 3}}},
    "listen": [{"address": "0.0.0.0", "port": 8443, "tls_cert": "/etc/tiersync/cert.pem",
                "tls_key": "/etc/tiersync/key.pem"},
               {"address": "127.0.0.1", "port": 8080, "tls": false}],
    "log": {"level": "info", "format": "text"}
  })");
}

json mirror() {
  return json::parse(R"({
    "role": "mirror",
    "name": "mirror.example.net",
    "tree": "/srv/mirror/alpine",
    "state_dir": "/var/lib/tiersync",
    "upstream": {"url": "file:///srv/parent-tree"},
    "trusted_keys": ["/etc/tiersync/origin.pub"]
  })");
}

json minimal_tier0() {
  return json::parse(R"({
    "role": "tier0", "name": "origin", "tree": "/srv/tree", "state_dir": "/var/lib/tiersync",
    "layout": "{release}/{repo}/{arch}", "source": {"dir": "/srv/incoming"},
    "signing_key": "/etc/tiersync/origin.key"
  })");
}

Config parse(const json& doc, const fs::path& file = kFile) {
  auto c = parse_config(doc.dump(), file);
  EXPECT_TRUE(c) << c.message();
  return c ? std::move(*c) : Config{};
}

std::string parse_text_error(std::string_view text, const fs::path& file = kFile) {
  auto c = parse_config(text, file);
  EXPECT_FALSE(c) << text;
  return c ? std::string() : c.message();
}
std::string parse_error(const json& doc) {
  return parse_text_error(doc.dump());
}

/// Expects `doc` to be refused with a message naming `key` (as `key "<key>"`).
void expect_key_error(const json& doc, const std::string& key) {
  SCOPED_TRACE(doc.dump());
  const std::string msg = parse_error(doc);
  EXPECT_TRUE(Contains(msg, "\"" + key + "\"")) << "expected key " << key;
}

// --- valid configurations -----------------------------------------------------------------------

TEST(ParseConfig, Tier0) {
  const Config c = parse(tier0());
  EXPECT_EQ(c.file, kFile);
  EXPECT_EQ(c.role, Role::kTier0);
  EXPECT_FALSE(c.is_relay());
  EXPECT_EQ(c.name, "dl-master");
  EXPECT_EQ(c.tree, "/srv/mirror/alpine");
  EXPECT_EQ(c.state_dir, "/var/lib/tiersync");
  EXPECT_EQ(c.layout, "{release}/{repo}/{arch}");
  EXPECT_EQ(c.index_files, std::vector<std::string>{"APKINDEX.tar.gz"});
  EXPECT_EQ(c.source_dir, "/srv/incoming");
  EXPECT_EQ(c.settle_seconds, 30u);
  ASSERT_EQ(c.signing_keys.size(), 1u);
  EXPECT_EQ(c.signing_keys[0], "/etc/tiersync/origin.key");
  EXPECT_EQ(c.snapshot_ttl_hours, 48u);
  EXPECT_DOUBLE_EQ(c.guard.max_delete_ratio, 0.1);
  EXPECT_EQ(c.guard.min_files, 5u);
  ASSERT_EQ(c.guard.partitions.size(), 1u);
  EXPECT_EQ(c.guard.partitions[0].pattern, "edge/testing/*");
  EXPECT_EQ(c.guard.partitions[0].max_delete_ratio, 0.5);
  EXPECT_EQ(c.guard.partitions[0].min_files, std::nullopt);
  ASSERT_EQ(c.listen.size(), 1u);
  EXPECT_EQ(c.listen[0].address, "0.0.0.0");
  EXPECT_EQ(c.listen[0].port, 8443);
  EXPECT_TRUE(c.listen[0].tls);
  EXPECT_EQ(c.listen[0].tls_cert, "/etc/tiersync/cert.pem");
  EXPECT_EQ(c.listen[0].tls_key, "/etc/tiersync/key.pem");
  EXPECT_EQ(c.control_socket, "/run/tiersync/control.sock");
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.log.format, "json");
}

TEST(ParseConfig, Tier1) {
  const Config c = parse(tier1());
  EXPECT_EQ(c.role, Role::kTier1);
  EXPECT_TRUE(c.is_relay());
  EXPECT_EQ(c.name, "cdn-backend-1");
  EXPECT_EQ(c.upstream.url, "https://dl-master.example.org:8443/");
  EXPECT_EQ(c.upstream.ca_file, "/etc/tiersync/ca.pem");
  EXPECT_EQ(c.upstream.connections, 16u);
  EXPECT_EQ(c.upstream.poll_seconds, 60u);
  EXPECT_EQ(c.upstream.max_bytes_per_second, 1000000u);
  EXPECT_EQ(c.upstream.min_bytes_per_second, 4096u);
  EXPECT_EQ(c.upstream.range_split_bytes, 0u);
  EXPECT_EQ(c.trusted_keys,
            (std::vector<fs::path>{"/etc/tiersync/origin.pub", "/etc/tiersync/origin2.pub"}));
  EXPECT_EQ(c.threshold, 2u);
  EXPECT_FALSE(c.guard.trust_upstream_approvals);
  ASSERT_EQ(c.guard.partitions.size(), 1u);
  EXPECT_EQ(c.guard.partitions[0].min_files, 3u);
  ASSERT_EQ(c.listen.size(), 2u);
  EXPECT_FALSE(c.listen[1].tls);
  EXPECT_EQ(c.listen[1].port, 8080);
  EXPECT_EQ(c.listen[1].address, "127.0.0.1");
  EXPECT_EQ(c.log.format, "text");
}

TEST(ParseConfig, MirrorDefaults) {
  const Config c = parse(mirror());
  EXPECT_EQ(c.role, Role::kMirror);
  EXPECT_TRUE(c.is_relay());
  EXPECT_EQ(c.upstream.url, "file:///srv/parent-tree");
  EXPECT_TRUE(c.upstream.ca_file.empty());
  EXPECT_DOUBLE_EQ(c.guard.max_delete_ratio, 0.2);
  EXPECT_EQ(c.guard.min_files, 10u);
  EXPECT_TRUE(c.guard.trust_upstream_approvals);
  EXPECT_TRUE(c.guard.partitions.empty());
  EXPECT_EQ(c.upstream.connections, 8u);
  EXPECT_EQ(c.upstream.poll_seconds, 300u);
  EXPECT_EQ(c.upstream.max_bytes_per_second, 0u);
  EXPECT_EQ(c.upstream.min_bytes_per_second, 1024u);
  EXPECT_EQ(c.upstream.range_split_bytes, 8u << 20);
  EXPECT_EQ(c.threshold, 1u);
  EXPECT_TRUE(c.listen.empty());  // a mirror may listen, need not
  EXPECT_EQ(c.control_socket, "/var/lib/tiersync/control.sock");
  EXPECT_EQ(c.log.level, "info");
  EXPECT_EQ(c.log.format, "text");
}

TEST(ParseConfig, Tier0Defaults) {
  const Config c = parse(minimal_tier0());
  EXPECT_EQ(c.settle_seconds, 10u);
  EXPECT_EQ(c.snapshot_ttl_hours, 168u);
  EXPECT_DOUBLE_EQ(c.guard.max_delete_ratio, 0.2);
  EXPECT_EQ(c.guard.min_files, 10u);
  EXPECT_EQ(c.index_files,
            (std::vector<std::string>{"APKINDEX.tar.gz", "Release", "InRelease", "repomd.xml"}));
  EXPECT_TRUE(c.listen.empty());
}

TEST(ParseConfig, ScrubForEveryRole) {
  EXPECT_EQ(parse(mirror()).scrub.mb_per_second, 20u) << "on by default, gently";
  EXPECT_EQ(parse(minimal_tier0()).scrub.mb_per_second, 20u);
  for (json doc : {mirror(), minimal_tier0(), tier1()}) {
    doc["scrub"] = {{"mb_per_second", 0}};
    EXPECT_EQ(parse(doc).scrub.mb_per_second, 0u) << "0 turns it off";
    doc["scrub"] = {{"mb_per_second", 250}};
    EXPECT_EQ(parse(doc).scrub.mb_per_second, 250u);
  }
}

TEST(ParseConfigError, BadScrub) {
  json doc = mirror();
  for (const json& bad : {json(-1), json(100001), json(1.5), json("20")}) {
    doc["scrub"] = {{"mb_per_second", bad}};
    expect_key_error(doc, "scrub.mb_per_second");
  }
  doc["scrub"] = {{"mb_per_secnd", 20}};
  expect_key_error(doc, "scrub.mb_per_secnd");
  doc["scrub"] = 20;
  expect_key_error(doc, "scrub");
}

TEST(ParseConfig, MirrorMayListen) {
  json doc = mirror();
  doc["listen"] = json::parse(R"([{"address": "::", "port": 0, "tls": false}])");
  const Config c = parse(doc);
  ASSERT_EQ(c.listen.size(), 1u);
  EXPECT_EQ(c.listen[0].port, 0);
}

TEST(ParseConfig, RelativePathsResolveAgainstTheConfigFolder) {
  json doc = tier1();
  doc["tree"] = "tree";
  doc["state_dir"] = "../state";
  doc["upstream"]["ca_file"] = "certs/ca.pem";
  doc["trusted_keys"] = {"keys/origin.pub", "./keys/../other.pub"};
  doc["listen"][0]["tls_cert"] = "tls/cert.pem";
  doc["listen"][0]["tls_key"] = "tls/key.pem";
  doc["control_socket"] = "run/control.sock";
  const Config c = parse(doc, "/opt/ts/etc/tiersync.json");
  EXPECT_EQ(c.tree, "/opt/ts/etc/tree");
  EXPECT_EQ(c.state_dir, "/opt/ts/state");
  EXPECT_EQ(c.upstream.ca_file, "/opt/ts/etc/certs/ca.pem");
  EXPECT_EQ(c.trusted_keys,
            (std::vector<fs::path>{"/opt/ts/etc/keys/origin.pub", "/opt/ts/etc/other.pub"}));
  EXPECT_EQ(c.listen[0].tls_cert, "/opt/ts/etc/tls/cert.pem");
  EXPECT_EQ(c.listen[0].tls_key, "/opt/ts/etc/tls/key.pem");
  EXPECT_EQ(c.control_socket, "/opt/ts/etc/run/control.sock");

  json t0 = minimal_tier0();
  t0["source"]["dir"] = "incoming";
  t0["signing_key"] = "origin.key";
  t0["tree"] = "../tree";
  const Config c0 = parse(t0, "/opt/ts/etc/tiersync.json");
  EXPECT_EQ(c0.source_dir, "/opt/ts/etc/incoming");
  ASSERT_EQ(c0.signing_keys.size(), 1u);
  EXPECT_EQ(c0.signing_keys[0], "/opt/ts/etc/origin.key");
  EXPECT_EQ(c0.tree, "/opt/ts/tree");
}

TEST(ParseConfig, RelativeConfigFileIsMadeAbsolute) {
  json doc = mirror();
  doc["tree"] = "tree";
  const Config c = parse(doc, "conf/tiersync.json");
  EXPECT_TRUE(c.file.is_absolute());
  EXPECT_EQ(c.file, (fs::current_path() / "conf/tiersync.json").lexically_normal());
  EXPECT_EQ(c.tree, (fs::current_path() / "conf/tree").lexically_normal());
}

TEST(ParseConfig, RatioBoundsAreInclusive) {
  json doc = mirror();
  doc["guard"] = {{"max_delete_ratio", 0}};
  EXPECT_DOUBLE_EQ(parse(doc).guard.max_delete_ratio, 0.0);
  doc["guard"] = {{"max_delete_ratio", 1}};
  EXPECT_DOUBLE_EQ(parse(doc).guard.max_delete_ratio, 1.0);
  doc["guard"] = {{"max_delete_ratio", 1.0}};
  EXPECT_DOUBLE_EQ(parse(doc).guard.max_delete_ratio, 1.0);
}

TEST(ParseConfig, StateDirBesideTheTreeIsFine) {
  json doc = mirror();
  doc["tree"] = "/srv/tree";
  doc["state_dir"] = "/srv/tree-state";  // shares a prefix, not a folder
  EXPECT_EQ(parse(doc).state_dir, "/srv/tree-state");
}

// --- errors naming the key ----------------------------------------------------------------------

TEST(ParseConfigError, InvalidJson) {
  for (std::string_view text : {"", "{", "{\"role\": \"tier0\",}", "role = tier0"})
    EXPECT_TRUE(Contains(parse_text_error(text), "not valid JSON")) << text;
  EXPECT_TRUE(Contains(parse_text_error("[]"), "JSON object"));
  EXPECT_TRUE(Contains(parse_text_error("[]"), kFile.string()));
}

// Found by tests/fuzz/fuzz_config: a number beyond a double's range is not a parse_error but an
// out_of_range exception, which escaped parse_config and terminated the daemon.
TEST(ParseConfigError, NumberOutOfRangeIsInvalidJson) {
  EXPECT_TRUE(
      Contains(parse_text_error(R"({"role": "tier1", "guard": {"max_delete_ratio": 1e999}})"),
               "not valid JSON"));
}

TEST(ParseConfigError, BadRole) {
  json doc = mirror();
  doc["role"] = "tier2";
  expect_key_error(doc, "role");
  EXPECT_TRUE(Contains(parse_error(doc), "tier2"));
  doc["role"] = 1;
  expect_key_error(doc, "role");
  doc.erase("role");
  expect_key_error(doc, "role");
}

TEST(ParseConfigError, UnknownKeyTopLevel) {
  json doc = mirror();
  doc["bogus"] = 1;
  expect_key_error(doc, "bogus");
  EXPECT_TRUE(Contains(parse_error(doc), "unknown"));
}

TEST(ParseConfigError, UnknownKeyNested) {
  json doc = mirror();
  doc["upstream"]["bogus"] = 1;
  expect_key_error(doc, "upstream.bogus");

  doc = mirror();
  doc["guard"] = {{"bogus", 1}};
  expect_key_error(doc, "guard.bogus");

  doc = mirror();
  doc["guard"] = json::parse(R"({"partitions": {"edge/*/*": {"max_delete_ratio": 0.5, "x": 1}}})");
  expect_key_error(doc, "guard.partitions.edge/*/*.x");

  doc = mirror();
  doc["log"] = {{"colour", true}};
  expect_key_error(doc, "log.colour");

  doc = tier1();
  doc["listen"][1]["bogus"] = 1;
  expect_key_error(doc, "listen[1].bogus");

  doc = tier0();
  doc["source"]["bogus"] = 1;
  expect_key_error(doc, "source.bogus");
}

TEST(ParseConfigError, WrongType) {
  const std::vector<std::pair<std::string, json>> cases = {
      {"/name", 5},
      {"/tree", true},
      {"/upstream/url", 5},
      {"/upstream/connections", "8"},
      {"/upstream/connections", 8.5},
      {"/upstream/range_split_bytes", "8MiB"},
      {"/upstream/poll_seconds", json::array()},
      {"/upstream/ca_file", 1},
      {"/threshold", 1.5},
      {"/trusted_keys", "/etc/tiersync/origin.pub"},
      {"/guard/max_delete_ratio", "0.2"},
      {"/guard/min_files", 1.5},
      {"/guard/trust_upstream_approvals", "yes"},
      {"/guard/partitions", json::array()},
      {"/guard/partitions/edge~1testing~1*", 0.5},
      {"/listen/0/port", "8443"},
      {"/listen/0/tls", "false"},
      {"/listen/0/address", 0},
      {"/log/level", 3},
      {"/log", "info"},
      {"/upstream", "https://x/"},
      {"/guard", 0.2},
      {"/listen", json::object()},
  };
  for (const auto& [pointer, value] : cases) {
    json doc = tier1();
    doc[json::json_pointer(pointer)] = value;
    // "/upstream/url" -> "upstream.url", "/listen/0/port" -> "listen[0].port"
    std::string key;
    for (std::size_t i = 1; i < pointer.size(); ++i) {
      char ch = pointer[i];
      if (ch == '/') {
        if (i + 1 < pointer.size() && std::isdigit(static_cast<unsigned char>(pointer[i + 1]))) {
          key += '[';
          while (i + 1 < pointer.size() && pointer[i + 1] != '/') key += pointer[++i];
          key += ']';
        } else {
          key += '.';
        }
      } else {
        key += ch;
      }
    }
    if (key == "guard.partitions.edge~1testing~1*") key = "guard.partitions";
    const std::string msg = parse_error(doc);
    EXPECT_TRUE(Contains(msg, key)) << pointer;
  }
}

TEST(ParseConfigError, ValueOutOfRange) {
  const std::vector<std::pair<std::string, json>> cases = {
      {"/upstream/connections", 0},
      {"/upstream/connections", 65},
      {"/upstream/poll_seconds", 0},
      {"/upstream/max_bytes_per_second", -1},
      {"/upstream/min_bytes_per_second", -1},
      {"/threshold", 0},
      {"/listen/0/port", 65536},
      {"/listen/0/port", -1},
      {"/guard/min_files", -1},
      {"/name", ""},
      {"/name", "has space"},
      {"/name", std::string(65, 'n')},
      {"/tree", ""},
      {"/upstream/url", "ftp://x/"},
      {"/upstream/url", "/srv/parent"},
      {"/log/level", "verbose"},
  };
  for (const auto& [pointer, value] : cases) {
    json doc = tier1();
    doc[json::json_pointer(pointer)] = value;
    std::string key = pointer.substr(1);
    std::replace(key.begin(), key.end(), '/', '.');
    if (key == "listen.0.port") key = "listen[0].port";
    EXPECT_TRUE(Contains(parse_error(doc), "\"" + key + "\"")) << pointer << " = " << value;
  }
}

TEST(ParseConfigError, MissingRequiredKey) {
  for (const char* key : {"name", "tree", "state_dir", "upstream", "trusted_keys"}) {
    json doc = mirror();
    doc.erase(key);
    expect_key_error(doc, key);
  }
  for (const char* key : {"name", "tree", "state_dir", "layout", "source", "signing_key"}) {
    json doc = minimal_tier0();
    doc.erase(key);
    expect_key_error(doc, key);
  }
  json doc = mirror();
  doc["upstream"].erase("url");
  expect_key_error(doc, "upstream.url");

  doc = minimal_tier0();
  doc["source"].erase("dir");
  expect_key_error(doc, "source.dir");

  doc = tier1();
  doc["listen"][1].erase("port");
  expect_key_error(doc, "listen[1].port");
  doc = tier1();
  doc["listen"][0].erase("address");
  expect_key_error(doc, "listen[0].address");
}

TEST(ParseConfigError, KeyThatDoesNotFitTheRole) {
  const json relay_only = tier1();
  const json tier0_only = tier0();
  for (const char* key : {"layout", "index_files", "source", "signing_key", "snapshot_ttl_hours"}) {
    for (json doc : {mirror(), tier1()}) {
      doc[key] = tier0_only[key];
      expect_key_error(doc, key);
      EXPECT_TRUE(Contains(parse_error(doc), "role")) << key;
    }
  }
  for (const char* key : {"upstream", "trusted_keys", "threshold"}) {
    json doc = tier0();
    doc[key] = relay_only[key];
    expect_key_error(doc, key);
    EXPECT_TRUE(Contains(parse_error(doc), "role")) << key;
  }
  json doc = tier0();
  doc["guard"]["trust_upstream_approvals"] = true;
  expect_key_error(doc, "guard.trust_upstream_approvals");
  doc["guard"]["trust_upstream_approvals"] = false;
  expect_key_error(doc, "guard.trust_upstream_approvals");
}

TEST(ParseConfigError, Tier1WithoutListen) {
  json doc = tier1();
  doc.erase("listen");
  expect_key_error(doc, "listen");
  doc["listen"] = json::array();
  expect_key_error(doc, "listen");
}

TEST(ParseConfigError, TlsWithoutCertificate) {
  json doc = tier1();
  doc["listen"][0].erase("tls_cert");
  expect_key_error(doc, "listen[0].tls_cert");
  doc = tier1();
  doc["listen"][0].erase("tls_key");
  expect_key_error(doc, "listen[0].tls_cert");  // the message names both
  EXPECT_TRUE(Contains(parse_error(doc), "tls_key"));
  doc = tier1();
  doc["listen"][0]["tls_cert"] = "";
  expect_key_error(doc, "listen[0].tls_cert");
}

TEST(ParseConfigError, ThresholdLargerThanTheKeys) {
  json doc = tier1();
  doc["threshold"] = 3;  // two keys
  expect_key_error(doc, "threshold");
  doc = mirror();
  doc["threshold"] = 2;  // one key
  expect_key_error(doc, "threshold");
  doc["trusted_keys"] = json::array();
  doc.erase("threshold");
  expect_key_error(doc, "trusted_keys");
}

TEST(ParseConfigError, RatioOutOfRange) {
  for (const json& ratio : {json(1.5), json(-0.1), json(2), json(1.0000001)}) {
    json doc = mirror();
    doc["guard"] = {{"max_delete_ratio", ratio}};
    expect_key_error(doc, "guard.max_delete_ratio");
    doc["guard"] = {{"partitions", {{"edge/*/*", {{"max_delete_ratio", ratio}}}}}};
    expect_key_error(doc, "guard.partitions.edge/*/*.max_delete_ratio");
  }
}

TEST(ParseConfigError, StateDirInsideTree) {
  for (const char* state_dir :
       {"/srv/mirror/alpine/.state", "/srv/mirror/alpine", "/srv/mirror/alpine/a/../state"}) {
    json doc = mirror();
    doc["state_dir"] = state_dir;
    expect_key_error(doc, "state_dir");
  }
  // Relative paths are resolved first.
  json doc = mirror();
  doc["tree"] = "tree";
  doc["state_dir"] = "tree/state";
  expect_key_error(doc, "state_dir");
}

TEST(ParseConfigError, SourceDirOverlappingTree) {
  for (const char* source :
       {"/srv/mirror/alpine", "/srv/mirror/alpine/incoming", "/srv/mirror", "/"}) {
    json doc = tier0();
    doc["source"]["dir"] = source;
    expect_key_error(doc, "source.dir");
  }
  json doc = tier0();
  doc["source"]["dir"] = "/srv/mirror/alpine-incoming";
  parse(doc);
}

TEST(ParseConfigError, BadLog) {
  json doc = mirror();
  doc["log"] = {{"format", "xml"}};
  expect_key_error(doc, "log.format");
  doc["log"] = {{"level", "loud"}};
  expect_key_error(doc, "log.level");
}

TEST(ParseConfig, ServeCaps) {
  const Config defaults = parse(mirror());
  EXPECT_EQ(defaults.serve.max_connections, 16384u);
  EXPECT_EQ(defaults.serve.max_long_polls, 8192u);
  EXPECT_EQ(defaults.serve.max_long_polls_per_address, 32u);
  json doc = tier1();
  doc["serve"] = {
      {"max_connections", 100}, {"max_long_polls", 50}, {"max_long_polls_per_address", 5}};
  const Config c = parse(doc);
  EXPECT_EQ(c.serve.max_connections, 100u);
  EXPECT_EQ(c.serve.max_long_polls, 50u);
  EXPECT_EQ(c.serve.max_long_polls_per_address, 5u);
}

TEST(ParseConfigError, BadServe) {
  json doc = tier1();
  doc["serve"] = 5;
  expect_key_error(doc, "serve");
  doc["serve"] = {{"max_long_polls", 0}};
  expect_key_error(doc, "serve.max_long_polls");
  doc["serve"] = {{"max_connections", "many"}};
  expect_key_error(doc, "serve.max_connections");
  doc["serve"] = {{"max_connections", 10}, {"max_long_polls", 20}};
  expect_key_error(doc, "serve.max_long_polls");
  doc["serve"] = {{"max_long_polls", 10}, {"max_long_polls_per_address", 11}};
  expect_key_error(doc, "serve.max_long_polls_per_address");
  doc["serve"] = {{"max_polls", 10}};
  expect_key_error(doc, "serve.max_polls");
}

TEST(ParseConfigError, BadLayoutOrIndexFiles) {
  json doc = tier0();
  doc["layout"] = "release/repo";
  expect_key_error(doc, "layout");
  doc = tier0();
  doc["index_files"] = {"sub/APKINDEX.tar.gz"};
  expect_key_error(doc, "index_files");
  doc["index_files"] = {""};
  expect_key_error(doc, "index_files");
  doc["index_files"] = "APKINDEX.tar.gz";
  expect_key_error(doc, "index_files");
}

TEST(ParseConfigError, MessageNamesTheFile) {
  json doc = mirror();
  doc["bogus"] = 1;
  EXPECT_TRUE(Contains(parse_error(doc), kFile.string()));
}

// --- check_resources ----------------------------------------------------------------------------

/// A fresh folder per test, removed afterwards, with a real key pair in it.
class CheckResourcesTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = unit::make_temp_dir("config_test");
    ASSERT_FALSE(dir_.empty());
    auto key = proto::PrivateKey::generate();
    ASSERT_TRUE(key) << key.message();
    std::ofstream(dir_ / "origin.key") << key->to_pem();
    fs::permissions(dir_ / "origin.key", fs::perms::owner_read | fs::perms::owner_write);
    std::ofstream(dir_ / "origin.pub") << key->public_key().to_pem();
    fs::create_directories(dir_ / "incoming");
  }
  void TearDown() override { fs::remove_all(dir_); }

  Config tier0_config() {
    json doc = minimal_tier0();
    doc["tree"] = "tree";
    doc["state_dir"] = "state";
    doc["source"]["dir"] = "incoming";
    doc["signing_key"] = "origin.key";
    return parse(doc, dir_ / "tiersync.json");
  }
  Config mirror_config() {
    json doc = mirror();
    doc["tree"] = "tree";
    doc["state_dir"] = "state";
    doc["trusted_keys"] = {"origin.pub"};
    return parse(doc, dir_ / "tiersync.json");
  }

  fs::path dir_;
};

TEST_F(CheckResourcesTest, Tier0WithItsKey) {
  const Status st = check_resources(tier0_config());
  EXPECT_TRUE(st) << st.message();
}

TEST_F(CheckResourcesTest, MissingSigningKey) {
  fs::remove(dir_ / "origin.key");
  const Status st = check_resources(tier0_config());
  ASSERT_FALSE(st);
  EXPECT_TRUE(Contains(st.message(), "\"signing_key\""));
  EXPECT_TRUE(Contains(st.message(), (dir_ / "origin.key").string()));
}

TEST_F(CheckResourcesTest, SigningKeyThatIsNotAKey) {
  std::ofstream(dir_ / "origin.key") << "not a key";
  const Status st = check_resources(tier0_config());
  ASSERT_FALSE(st);
  EXPECT_TRUE(Contains(st.message(), "\"signing_key\""));
}

// A key rotation: signing_key may list several keys; each must load, none twice.
TEST_F(CheckResourcesTest, SeveralSigningKeys) {
  auto second = tiersync::proto::PrivateKey::generate();
  ASSERT_TRUE(second) << second.message();
  std::ofstream(dir_ / "new.key") << second->to_pem();
  fs::permissions(dir_ / "new.key", fs::perms::owner_read | fs::perms::owner_write);
  json doc = minimal_tier0();
  doc["tree"] = "tree";
  doc["state_dir"] = "state";
  doc["source"]["dir"] = "incoming";
  doc["signing_key"] = {"origin.key", "new.key"};
  Config c = parse(doc, dir_ / "tiersync.json");
  ASSERT_EQ(c.signing_keys.size(), 2u);
  EXPECT_EQ(c.signing_keys[1], dir_ / "new.key");
  EXPECT_TRUE(check_resources(c)) << check_resources(c).message();

  doc["signing_key"] = {"origin.key", "origin.key"};
  Status twice = check_resources(parse(doc, dir_ / "tiersync.json"));
  ASSERT_FALSE(twice);
  EXPECT_TRUE(Contains(twice.message(), "listed twice")) << twice.message();

  doc["signing_key"] = {"origin.key", "missing.key"};
  Status missing = check_resources(parse(doc, dir_ / "tiersync.json"));
  ASSERT_FALSE(missing);
  EXPECT_TRUE(Contains(missing.message(), "\"signing_key[1]\"")) << missing.message();

  for (const json& bad : {json::array(), json::array({""}), json::array({1})}) {
    doc["signing_key"] = bad;
    auto r = parse_config(doc.dump(), dir_ / "tiersync.json");
    ASSERT_FALSE(r) << bad.dump();
    EXPECT_TRUE(Contains(r.message(), "\"signing_key\"")) << r.message();
  }
}

// A listener's certificate and key are loaded and matched, as the server will at start.
TEST_F(CheckResourcesTest, TlsKeyMustMatchItsCertificate) {
  auto make = [&](const std::string& name) {
    const std::string cmd =
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
        "-days 1 -subj /CN=t -keyout '" +
        (dir_ / (name + ".key")).string() + "' -out '" + (dir_ / (name + ".pem")).string() +
        "' >/dev/null 2>&1";
    return std::system(cmd.c_str()) == 0;
  };
  ASSERT_TRUE(make("a") && make("b")) << "the openssl command failed (.ci/run installs it)";
  json doc = minimal_tier0();
  doc["tree"] = "tree";
  doc["state_dir"] = "state";
  doc["source"]["dir"] = "incoming";
  doc["signing_key"] = "origin.key";
  doc["listen"] = {
      {{"address", "127.0.0.1"}, {"port", 8443}, {"tls_cert", "a.pem"}, {"tls_key", "a.key"}}};
  EXPECT_TRUE(check_resources(parse(doc, dir_ / "tiersync.json")));

  doc["listen"][0]["tls_key"] = "b.key";
  Status mismatch = check_resources(parse(doc, dir_ / "tiersync.json"));
  ASSERT_FALSE(mismatch);
  EXPECT_TRUE(Contains(mismatch.message(), "does not match")) << mismatch.message();
  EXPECT_TRUE(Contains(mismatch.message(), "listen[0]")) << mismatch.message();

  std::ofstream(dir_ / "junk.pem") << "not a certificate";
  doc["listen"][0]["tls_cert"] = "junk.pem";
  Status junk = check_resources(parse(doc, dir_ / "tiersync.json"));
  ASSERT_FALSE(junk);
  EXPECT_TRUE(Contains(junk.message(), "not a PEM certificate")) << junk.message();
}

// As ssh: a private key that group or others may read is refused, naming the key and its mode.
TEST_F(CheckResourcesTest, SigningKeyReadableByOthersIsRefused) {
  for (mode_t mode : {0644, 0640, 0604, 0660, 0602}) {
    ASSERT_EQ(::chmod((dir_ / "origin.key").c_str(), mode), 0);
    const Status st = check_resources(tier0_config());
    ASSERT_FALSE(st) << std::oct << mode;
    EXPECT_TRUE(Contains(st.message(), "\"signing_key\""));
    EXPECT_TRUE(Contains(st.message(), (dir_ / "origin.key").string()));
    char octal[8];
    std::snprintf(octal, sizeof octal, "%04o", static_cast<unsigned>(mode));
    EXPECT_TRUE(Contains(st.message(), std::string("mode ") + octal));
    // Every publish loads the keys again: a key opened up later stops it too.
    EXPECT_FALSE(load_signing_keys(tier0_config()));
  }
  for (mode_t mode : {0600, 0400}) {
    ASSERT_EQ(::chmod((dir_ / "origin.key").c_str(), mode), 0);
    const Status st = check_resources(tier0_config());
    EXPECT_TRUE(st) << std::oct << mode << ": " << st.message();
  }
  // A public key may be read by anyone.
  ASSERT_EQ(::chmod((dir_ / "origin.pub").c_str(), 0644), 0);
  EXPECT_TRUE(check_resources(mirror_config()));
}

TEST_F(CheckResourcesTest, TlsKeyReadableByOthersIsRefused) {
  const std::string cmd =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=t "
      "-keyout '" +
      (dir_ / "tls.key").string() + "' -out '" + (dir_ / "tls.pem").string() + "' >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "the openssl command failed (.ci/run installs it)";
  ASSERT_EQ(::chmod((dir_ / "tls.key").c_str(), 0600), 0);
  Config c = mirror_config();
  c.listen.push_back(ListenConfig{"127.0.0.1", 0, true, dir_ / "tls.pem", dir_ / "tls.key"});
  EXPECT_TRUE(check_resources(c)) << check_resources(c).message();
  ASSERT_EQ(::chmod((dir_ / "tls.key").c_str(), 0644), 0);
  const Status st = check_resources(c);
  ASSERT_FALSE(st);
  EXPECT_TRUE(Contains(st.message(), "\"listen[0].tls_key\"")) << st.message();
  EXPECT_TRUE(Contains(st.message(), (dir_ / "tls.key").string())) << st.message();
  EXPECT_TRUE(Contains(st.message(), "mode 0644")) << st.message();
}

TEST_F(CheckResourcesTest, MissingSourceDir) {
  fs::remove(dir_ / "incoming");
  const Status st = check_resources(tier0_config());
  ASSERT_FALSE(st);
  EXPECT_TRUE(Contains(st.message(), "\"source.dir\""));
}

TEST_F(CheckResourcesTest, MirrorWithItsKey) {
  const Status st = check_resources(mirror_config());
  EXPECT_TRUE(st) << st.message();
}

TEST_F(CheckResourcesTest, MissingTrustedKey) {
  fs::remove(dir_ / "origin.pub");
  const Status st = check_resources(mirror_config());
  ASSERT_FALSE(st);
  EXPECT_TRUE(Contains(st.message(), "\"trusted_keys[0]\""));
}

TEST_F(CheckResourcesTest, MissingCaFileAndTlsFiles) {
  Config c = mirror_config();
  c.upstream.ca_file = dir_ / "ca.pem";
  Status st = check_resources(c);
  ASSERT_FALSE(st);
  EXPECT_TRUE(Contains(st.message(), "\"upstream.ca_file\""));

  c = mirror_config();
  c.listen.push_back(ListenConfig{"127.0.0.1", 0, false, {}, {}});
  c.listen.push_back(ListenConfig{"127.0.0.1", 0, true, dir_ / "cert.pem", dir_ / "key.pem"});
  st = check_resources(c);
  ASSERT_FALSE(st);
  EXPECT_TRUE(Contains(st.message(), "\"listen[1].tls_cert\""));
  std::ofstream(dir_ / "cert.pem") << "x";
  st = check_resources(c);
  ASSERT_FALSE(st);
  EXPECT_TRUE(Contains(st.message(), "\"listen[1].tls_key\""));
}

TEST_F(CheckResourcesTest, LoadConfigReadsTheFile) {
  json doc = mirror();
  doc["trusted_keys"] = {"origin.pub"};
  std::ofstream(dir_ / "tiersync.json") << doc.dump();
  const auto c = load_config(dir_ / "tiersync.json");
  ASSERT_TRUE(c) << c.message();
  EXPECT_EQ(c->trusted_keys, std::vector<fs::path>{dir_ / "origin.pub"});

  const auto missing = load_config(dir_ / "nope.json");
  ASSERT_FALSE(missing);
  EXPECT_TRUE(Contains(missing.message(), (dir_ / "nope.json").string()));
}

// --- the guard's keys (docs/configuration.md, docs/guard.md) -----------------------------------

TEST(ParseConfig, GuardDefaults) {
  for (const json& doc : {mirror(), minimal_tier0()}) {
    const base::GuardPolicy g = parse(doc).guard;
    EXPECT_DOUBLE_EQ(g.max_delete_ratio, 0.2);
    EXPECT_DOUBLE_EQ(g.max_bytes_loss_ratio, 0.5);
    EXPECT_EQ(g.min_files, 10u);
    EXPECT_EQ(g.small_max_deletes, 2u);
    EXPECT_EQ(g.root_max_changes, 0u);
    EXPECT_EQ(g.window_hours, 24u);
    EXPECT_EQ(g.approval_hours, 24u);
    EXPECT_FALSE(g.trust_parent_approvals);
    EXPECT_TRUE(g.partitions.empty());
  }
  EXPECT_TRUE(parse(mirror()).guard.trust_upstream_approvals);
}

TEST(ParseConfig, GuardKeys) {
  json doc = tier1();
  doc["guard"] = json::parse(R"({
    "max_delete_ratio": 0.3, "max_bytes_loss_ratio": 0.4, "min_files": 7,
    "small_max_deletes": 5, "root_max_changes": 3, "window_hours": 48, "approval_hours": 2,
    "trust_upstream_approvals": false, "trust_parent_approvals": true,
    "partitions": {
      "edge/testing/*": {"max_bytes_loss_ratio": 0.9, "trust_upstream_approvals": true},
      "edge/main/*": {"max_delete_ratio": 0.1, "min_files": 100}
    }})");
  const base::GuardPolicy g = parse(doc).guard;
  EXPECT_DOUBLE_EQ(g.max_delete_ratio, 0.3);
  EXPECT_DOUBLE_EQ(g.max_bytes_loss_ratio, 0.4);
  EXPECT_EQ(g.min_files, 7u);
  EXPECT_EQ(g.small_max_deletes, 5u);
  EXPECT_EQ(g.root_max_changes, 3u);
  EXPECT_EQ(g.window_hours, 48u);
  EXPECT_EQ(g.approval_hours, 2u);
  EXPECT_FALSE(g.trust_upstream_approvals);
  EXPECT_TRUE(g.trust_parent_approvals);
  ASSERT_EQ(g.partitions.size(), 2u);
  // nlohmann's objects iterate in key order.
  EXPECT_EQ(g.partitions[0].pattern, "edge/main/*");
  EXPECT_EQ(g.partitions[0].max_delete_ratio, 0.1);
  EXPECT_EQ(g.partitions[0].min_files, 100u);
  EXPECT_EQ(g.partitions[0].max_bytes_loss_ratio, std::nullopt);
  EXPECT_EQ(g.partitions[0].trust_upstream_approvals, std::nullopt);
  EXPECT_EQ(g.partitions[1].pattern, "edge/testing/*");
  EXPECT_EQ(g.partitions[1].max_delete_ratio, std::nullopt);
  EXPECT_EQ(g.partitions[1].min_files, std::nullopt);
  EXPECT_EQ(g.partitions[1].max_bytes_loss_ratio, 0.9);
  EXPECT_EQ(g.partitions[1].trust_upstream_approvals, true);
}

TEST(ParseConfig, GuardBoundsAreInclusive) {
  json doc = mirror();
  const std::vector<std::tuple<std::string, std::int64_t>> bounds = {
      {"window_hours", 0},
      {"window_hours", 8760},
      {"approval_hours", 1},
      {"approval_hours", 8760},
      {"small_max_deletes", 0},
      {"root_max_changes", 0},
      {"small_max_deletes", 1000000},
      {"root_max_changes", 1000000},
  };
  for (const auto& [key, value] : bounds) {
    doc["guard"] = {{key, value}};
    const base::GuardPolicy g = parse(doc).guard;
    const std::uint64_t got = key == "window_hours"        ? g.window_hours
                              : key == "approval_hours"    ? g.approval_hours
                              : key == "small_max_deletes" ? g.small_max_deletes
                                                           : g.root_max_changes;
    EXPECT_EQ(got, static_cast<std::uint64_t>(value)) << key;
  }
  for (double ratio : {0.0, 1.0}) {
    doc["guard"] = {{"max_bytes_loss_ratio", ratio},
                    {"partitions", {{"edge/*/*", {{"max_bytes_loss_ratio", ratio}}}}}};
    const base::GuardPolicy g = parse(doc).guard;
    EXPECT_DOUBLE_EQ(g.max_bytes_loss_ratio, ratio);
    EXPECT_EQ(g.partitions.at(0).max_bytes_loss_ratio, ratio);
  }
}

TEST(ParseConfigError, BadGuardValues) {
  const std::vector<std::pair<std::string, json>> cases = {
      {"window_hours", -1},
      {"window_hours", 8761},
      {"window_hours", 1.5},
      {"window_hours", "24"},
      {"window_hours", nullptr},
      {"approval_hours", 0},
      {"approval_hours", 8761},
      {"approval_hours", -24},
      {"approval_hours", 0.5},
      {"approval_hours", true},
      {"max_bytes_loss_ratio", -0.1},
      {"max_bytes_loss_ratio", 1.5},
      {"max_bytes_loss_ratio", 2},
      {"max_bytes_loss_ratio", "0.2"},
      {"max_bytes_loss_ratio", json::array()},
      {"small_max_deletes", -1},
      {"small_max_deletes", 2.5},
      {"small_max_deletes", "2"},
      {"root_max_changes", -1},
      {"root_max_changes", 0.5},
      {"root_max_changes", false},
      {"trust_parent_approvals", 1},
      {"trust_parent_approvals", "yes"},
      {"trust_parent_approvals", nullptr},
      {"trust_upstream_approvals", "true"},
  };
  for (const auto& [key, value] : cases) {
    json doc = mirror();
    doc["guard"] = {{key, value}};
    expect_key_error(doc, "guard." + key);
  }
  // Integers too large for any count: refused, not wrapped.
  json doc = mirror();
  doc["guard"] = json::parse(R"({"small_max_deletes": 18446744073709551615})");
  expect_key_error(doc, "guard.small_max_deletes");
}

TEST(ParseConfigError, BadPerPartitionGuardValues) {
  const std::vector<std::pair<std::string, json>> cases = {
      {"max_bytes_loss_ratio", -0.5},
      {"max_bytes_loss_ratio", 1.01},
      {"max_bytes_loss_ratio", "half"},
      {"trust_upstream_approvals", 1},
      {"trust_upstream_approvals", "no"},
      {"min_files", -3},
      {"window_hours", 1},               // node-wide only
      {"trust_parent_approvals", true},  // node-wide only
  };
  for (const auto& [key, value] : cases) {
    json doc = tier1();
    doc["guard"] = {{"partitions", {{"edge/*/armv7", {{key, value}}}}}};
    expect_key_error(doc, "guard.partitions.edge/*/armv7." + key);
  }
}

TEST(ParseConfigError, RelayGuardKeysAtTier0) {
  for (const char* key : {"trust_parent_approvals", "trust_upstream_approvals"}) {
    for (bool value : {true, false}) {
      json doc = tier0();
      doc["guard"][key] = value;
      expect_key_error(doc, std::string("guard.") + key);
      EXPECT_TRUE(Contains(parse_error(doc), "tier0"));
    }
  }
  json doc = tier0();
  doc["guard"]["partitions"]["edge/main/*"] = {{"trust_upstream_approvals", true}};
  expect_key_error(doc, "guard.partitions.edge/main/*.trust_upstream_approvals");
  EXPECT_TRUE(Contains(parse_error(doc), "tier0"));
  // Every other guard key fits tier0.
  doc = tier0();
  doc["guard"] = json::parse(R"({"window_hours": 12, "approval_hours": 6,
      "max_bytes_loss_ratio": 0.3, "small_max_deletes": 1, "root_max_changes": 2,
      "partitions": {"edge/main/*": {"max_bytes_loss_ratio": 0.1}}})");
  const base::GuardPolicy g = parse(doc).guard;
  EXPECT_EQ(g.window_hours, 12u);
  EXPECT_EQ(g.approval_hours, 6u);
  EXPECT_EQ(g.root_max_changes, 2u);
}

}  // namespace
}  // namespace tiersync::ops
