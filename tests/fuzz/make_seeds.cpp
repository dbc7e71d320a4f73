// Writes the seed corpora (tests/fuzz/corpus/<harness>/) from real outputs: the project's own
// encoders (a signed envelope, its snapshot payload, manifests), the state files StateStore
// writes, the example configurations, and request heads and header values as clients send them.
// Run by tests/fuzz/make_seeds.sh; the seeds are committed, so run it again only when a format
// changes.

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>

#include "daemon/sync/state.h"
#include "proto/dsse.h"
#include "proto/keys.h"
#include "proto/manifest.h"
#include "proto/snapshot.h"
#include "tests/fuzz/fuzz.h"

namespace {

using namespace tiersync;
namespace fs = std::filesystem;

fs::path g_root;

void seed(const std::string& harness, const std::string& name, std::string_view bytes) {
  fs::create_directories(g_root / harness);
  std::ofstream(g_root / harness / name, std::ios::binary | std::ios::trunc)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string slurp(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

proto::Entry file(std::string path, std::string_view content, bool index = false) {
  return proto::Entry::file(path, content.size(), proto::sha256(content), 1700000000, 0644, index);
}

proto::Manifest manifest(std::string partition, std::vector<proto::Entry> entries) {
  proto::Manifest m{std::move(partition), std::move(entries)};
  std::sort(m.entries.begin(), m.entries.end(),
            [](const proto::Entry& a, const proto::Entry& b) { return a.path() < b.path(); });
  if (!proto::validate_manifest(m, 3)) std::abort();
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: make_seeds CORPUS_DIR CONFIG_DIR\n";
    return 2;
  }
  g_root = argv[1];
  const fs::path config_dir = argv[2];

  // Manifests of a layout {release}/{repo}/{arch}, and the root partition.
  const auto main_x86 =
      manifest("v3.20/main/x86_64",
               {file("v3.20/main/x86_64/APKINDEX.tar.gz", "index", true),
                file("v3.20/main/x86_64/busybox-1.36.1-r29.apk", "busybox"),
                file("v3.20/main/x86_64/musl-1.2.5-r0.apk", "musl"),
                proto::Entry::symlink("v3.20/main/x86_64/musl.apk", "musl-1.2.5-r0.apk"),
                file("v3.20/main/x86_64/caf\xc3\xa9 \"q\".apk", "utf-8 and a quote")});
  const auto root = manifest(".", {proto::Entry::symlink("latest-stable", "v3.20"),
                                   file("README", "readme\n"), file("MIRRORS.txt", "")});
  const std::string main_bytes = proto::encode_manifest(main_x86);
  const std::string root_bytes = proto::encode_manifest(root);
  seed("manifest", "partition", "3 v3.20/main/x86_64\n" + main_bytes);
  seed("manifest", "root", "3 .\n" + root_bytes);
  seed("manifest", "empty", "1 edge\n" + proto::encode_manifest({"edge", {}}));

  proto::Snapshot snap;
  snap.origin = "dl-master";
  snap.serial = 42;
  snap.created = 1764378000;
  snap.expires = snap.created + 168 * 3600;
  snap.layout = "{release}/{repo}/{arch}";
  snap.depth = 3;
  snap.partitions["v3.20/main/x86_64"] = {proto::sha256(main_bytes), 5, 1234};
  snap.partitions["."] = {proto::sha256(root_bytes), 3, 7};
  snap.approved_deletions["v3.19/main/x86_64"] = {
      tiersync::proto::to_hex(tiersync::proto::sha256("old")), "removed", 40, snap.expires};
  const std::string payload = proto::encode_snapshot(snap);
  seed("snapshot", "snapshot", payload);
  proto::Snapshot flat = snap;
  flat.layout = "{release}";
  flat.depth = 1;
  flat.partitions = {{"v3.20", {proto::sha256(main_bytes), 1, 2}}};
  flat.approved_deletions.clear();
  seed("snapshot", "flat", proto::encode_snapshot(flat));

  auto key = proto::PrivateKey::from_pem(fuzz::kTestKeyPem, "test key");
  auto key2 = proto::PrivateKey::generate();
  if (!key || !key2) return 1;
  const std::string envelope =
      proto::encode_envelope(proto::sign_envelope(proto::kSnapshotPayloadType, payload, {*key}));
  seed("envelope", "signed", envelope);
  seed("envelope", "two-keys",
       proto::encode_envelope(
           proto::sign_envelope(proto::kSnapshotPayloadType, payload, {*key, *key2})));
  seed("envelope", "keyid-null",
       R"({"payloadType":"application/vnd.tiersync.snapshot+json","payload":"e30_",)"
       R"("signatures":[{"keyid":null,"sig":"AAECAw-_"}]})");

  // state_dir as StateStore writes it.
  const fs::path dir = fuzz::scratch_dir() / "state";
  fs::create_directories(dir);
  sync::StateStore store(dir, fuzz::scratch_dir() / "tree");
  if (!store.save_applied(envelope)) return 1;
  seed("state", "snapshot", std::string(1, '\0') + slurp(dir / "snapshot"));
  sync::Journal journal{
      42, {{"v3.20/main/x86_64", proto::sha256(main_bytes)}, {".", proto::sha256(root_bytes)}}};
  if (!store.save_journal(journal)) return 1;
  seed("state", "journal", "\x01" + slurp(dir / "journal.json"));
  sync::HeldState held{43, 1764378000, {{{"v3.20/main/x86_64", 4, 5, 0.8, 0.2}, "43"}}};
  if (!store.save_held(held)) return 1;
  seed("state", "held", "\x02" + slurp(dir / "held.json"));
  if (!store.save_approvals({{"v3.20/main/x86_64", "43"}})) return 1;
  seed("state", "approvals", "\x03" + slurp(dir / "approvals.json"));
  sync::CycleRecord cycle{"held", 1764378000, "v3.20/main/x86_64: 4 of 5 files deleted",
                          43,     1764377000, {"tier1-a", "dl-master"}};
  if (!store.save_cycle(cycle)) return 1;
  seed("state", "cycle", "\x04" + slurp(dir / "cycle.json"));

  // The example configurations, and the shapes they do not show.
  for (const auto& e : fs::directory_iterator(config_dir))
    seed("config", e.path().filename().string(), slurp(e.path()));
  seed("config", "tier0-rotation.json", R"({
  "role": "tier0", "name": "origin", "tree": "tree", "state_dir": "/var/lib/tiersync",
  "layout": "{release}/{repo}/{arch}", "index_files": ["APKINDEX.tar.gz"],
  "source": {"dir": "/srv/source", "settle_seconds": 5},
  "signing_key": ["old.key", "new.key"], "snapshot_ttl_hours": 24,
  "guard": {"max_delete_ratio": 0.5, "min_files": 0,
            "partitions": {"edge/*": {"max_delete_ratio": 1.0, "min_files": 100}}},
  "listen": [{"address": "::", "port": 0, "tls": false}],
  "control_socket": "/run/tiersync/control.sock", "log": {"level": "debug", "format": "text"}
})");
  seed("config", "mirror-file.json", R"({"role": "mirror", "name": "m1", "tree": "/srv/m",
  "state_dir": "/var/lib/m", "upstream": {"url": "file:///srv/tier1/", "max_bytes_per_second": 0},
  "trusted_keys": ["a.pub", "b.pub"], "threshold": 2})");

  // Request heads: method, target, If-None-Match, If-Modified-Since, If-Range, Range, waited.
  // The fixture's a.apk has mtime 1700000000 and 10 bytes: ETag "6553f100-a".
  const std::string manifest_url =
      "/.tiersync/v1/manifests/" + proto::to_hex(proto::sha256(main_bytes));
  const std::vector<std::pair<std::string, std::string>> requests = {
      {"file", "GET\n/edge/main/x86_64/a.apk\n\n\n\n\n"},
      {"range", "GET\n/edge/main/x86_64/a.apk\n\n\n\nbytes=2-5\n"},
      {"if-range", "GET\n/edge/main/x86_64/a.apk\n\n\n\"6553f100-a\"\nbytes=-3\n"},
      {"if-none-match", "GET\n/edge/main/x86_64/a.apk\nW/\"x\", \"6553f100-a\"\n\n\n\n"},
      {"if-modified-since", "HEAD\n/README\n\nTue, 14 Nov 2023 22:13:20 GMT\n\n\n"},
      {"symlink-folder", "GET\n/latest-stable/main/x86_64/b.apk\n\n\n\n\n"},
      {"escape", "GET\n/edge/main/x86_64/%2e%2e/%2e%2e/%2e%2e/etc/passwd\n\n\n\n\n"},
      {"loop", "GET\n/edge/main/x86_64/loop1?x=1\n\n\n\n\n"},
      {"snapshot", "GET\n/.tiersync/v1/snapshot\n\"5\"\n\n\n\n"},
      {"long-poll", "GET\n/.tiersync/v1/snapshot?after=5&wait=30\n\n\n\n\n"},
      {"long-poll-waited", "GET\n/.tiersync/v1/snapshot?after=7&wait=300\n\n\n\n\nwaited"},
      {"manifest", "GET\n" + manifest_url + "\n\n\n\nbytes=0-\n"},
      {"status", "GET\n/.tiersync/v1/status\n\n\n\n\n"},
      {"metrics", "GET\n/metrics\n\n\n\n\n"},
      {"staging", "GET\n/.tiersync/staging/edge/main/x86_64/a.apk\n\n\n\n\n"},
      {"post", "POST\n/README\n\n\n\n\n"},
  };
  for (const auto& [name, text] : requests) seed("request", name, text);

  seed("range", "first", "10\nbytes=0-4");
  seed("range", "suffix", "10\nbytes=-3");
  seed("range", "open", "1048576\nbytes=1000-");
  seed("range", "past-end", "10\nbytes=10-20");
  seed("range", "list", "10\nbytes=0-1, 3-4");
  seed("range", "empty-file", "0\nBYTES = 0-");
  seed("range", "huge", "18446744073709551615\nbytes=18446744073709551614-18446744073709551615");

  seed("conditional", "list",
       "W/\"6553f100-a\", \"other\"\n\"6553f100-a\"\n"
       "Tue, 14 Nov 2023 22:13:20 GMT");
  seed("conditional", "star", "*\n\"42\"\nSunday, 06-Nov-94 08:49:37 GMT");
  seed("conditional", "asctime", "\"a,b\", \"c\"\n\"c\"\nSun Nov  6 08:49:37 1994");
  seed("conditional", "if-range-date",
       "Tue, 14 Nov 2023 22:13:20 GMT\n\"" + proto::to_hex(proto::sha256(main_bytes)) +
           "\"\nTue, 14 Nov 2023 22:13:20 GMT");

  seed("url", "https-port", "https://dl-master.example.org:8443/");
  seed("url", "http-prefix", "http://mirror.example.org/alpine/v3");
  seed("url", "ipv6", "https://[2001:db8::1]:443/tree/");
  seed("url", "upper", "HTTPS://Mirror.Example.ORG");
  seed("url", "https-upper", "https://Mirror.Example.ORG:65535");
  seed("url", "file", "file:///srv/tier1/alpine%20mirror/");
  seed("url", "file-localhost", "file://localhost/srv/tier1/");

  seed("percent", "plain", "v3.20/main/x86_64/busybox-1.36.1-r29.apk");
  seed("percent", "escapes", "edge/caf%C3%A9%20%22q%22.apk");
  seed("percent", "dots", "%2e%2e/%2E%2e/etc/passwd");
  seed("percent", "double", "%252e%252e/%25");
  seed("percent", "nul", "a%00b");
  seed("percent", "truncated", "a%2");
  return 0;
}
