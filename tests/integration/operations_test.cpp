// What an operator watches from outside: /metrics parsed as Prometheus text, with every metric
// of the operations issue, and the status chain of node names up to the origin. Real daemons on
// loopback ports; every wait is bounded.

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

using namespace std::chrono_literals;

class OperationsTest : public OriginTest {};

// ---------------------------------------------------------------------------------------------
// A strict reader of the Prometheus text exposition format (version 0.0.4).

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> types;  ///< family -> counter, gauge, histogram...
  std::vector<Sample> samples;

  /// The value of the one sample `name` with exactly `labels`; NaN when absent.
  double value(const std::string& name,
               const std::map<std::string, std::string>& labels = {}) const {
    for (const auto& s : samples)
      if (s.name == name && s.labels == labels) return s.value;
    return std::nan("");
  }
};

// The family a sample belongs to: a histogram's _bucket, _sum and _count are its own.
std::string family_of(const std::string& name, const std::map<std::string, std::string>& types) {
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string s(suffix);
    if (name.size() > s.size() && name.ends_with(s)) {
      auto base = name.substr(0, name.size() - s.size());
      auto it = types.find(base);
      if (it != types.end() && it->second == "histogram") return base;
    }
  }
  return name;
}

double parse_value(const std::string& text, std::string& error) {
  if (text == "+Inf") return INFINITY;
  if (text == "-Inf") return -INFINITY;
  if (text == "NaN") return NAN;
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty()) error = "value \"" + text + "\" is not a number";
  return v;
}

// Every line is a HELP, a TYPE or a sample of a family whose TYPE came first; names and labels
// are well formed; each histogram's buckets are cumulative, end with +Inf, and match _count.
// Returns the parsed exposition, or fails with the first bad line.
::testing::AssertionResult ParsesAsPrometheus(const std::string& text, Exposition& out) {
  static const std::regex kName("[a-zA-Z_:][a-zA-Z0-9_:]*");
  static const std::regex kHelp("# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .*");
  static const std::regex kType(
      "# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)");
  static const std::regex kSample(
      R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? ([^ ]+)( -?[0-9]+)?)");
  static const std::regex kLabel(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)")re");
  if (text.empty() || text.back() != '\n')
    return ::testing::AssertionFailure() << "the exposition does not end with a newline";
  std::istringstream in(text);
  std::string line;
  int number = 0;
  std::set<std::string> seen_samples;
  auto fail = [&](const std::string& why) {
    return ::testing::AssertionFailure()
           << "line " << number << ": " << why << ": \"" << line << "\"\n--- exposition ---\n"
           << text;
  };
  std::smatch m;
  while (std::getline(in, line)) {
    ++number;
    if (line.starts_with("# HELP ")) {
      if (!std::regex_match(line, m, kHelp)) return fail("malformed HELP");
      continue;
    }
    if (line.starts_with("# TYPE ")) {
      if (!std::regex_match(line, m, kType)) return fail("malformed TYPE");
      if (out.types.count(m[1])) return fail("second TYPE for one family");
      out.types[m[1]] = m[2];
      continue;
    }
    if (line.starts_with("#")) continue;  // a comment
    if (line.empty()) return fail("empty line");
    if (!std::regex_match(line, m, kSample)) return fail("malformed sample");
    Sample s;
    s.name = m[1];
    std::string labels = m[3];
    std::string error;
    s.value = parse_value(m[4], error);
    if (!error.empty()) return fail(error);
    // Labels: name="value" separated by commas.
    std::string rest = labels;
    while (!rest.empty()) {
      std::smatch lm;
      if (!std::regex_search(rest, lm, kLabel) || lm.position(0) != 0)
        return fail("malformed labels");
      if (s.labels.count(lm[1])) return fail("a label twice");
      s.labels[lm[1]] = lm[2];
      rest = rest.substr(lm.length(0));
      if (!rest.empty()) {
        if (rest[0] != ',') return fail("labels not separated by commas");
        rest = rest.substr(1);
      }
    }
    const std::string family = family_of(s.name, out.types);
    if (!out.types.count(family)) return fail("sample before its family's TYPE");
    if (!seen_samples.insert(s.name + "{" + labels + "}").second) return fail("a sample twice");
    out.samples.push_back(std::move(s));
  }
  // Histograms: cumulative buckets ending in +Inf, equal to _count.
  for (const auto& [family, type] : out.types) {
    if (type != "histogram") continue;
    double previous = 0;
    double last_le = -INFINITY;
    bool inf = false;
    for (const auto& s : out.samples) {
      if (s.name != family + "_bucket") continue;
      auto le = s.labels.find("le");
      if (le == s.labels.end())
        return ::testing::AssertionFailure() << family << ": a bucket without le";
      std::string error;
      const double bound = parse_value(le->second, error);
      if (!error.empty() || bound <= last_le)
        return ::testing::AssertionFailure()
               << family << ": buckets out of order at " << le->second;
      if (s.value < previous)
        return ::testing::AssertionFailure() << family << ": buckets are not cumulative";
      previous = s.value;
      last_le = bound;
      inf = std::isinf(bound);
    }
    if (!inf) return ::testing::AssertionFailure() << family << ": no +Inf bucket";
    if (out.value(family + "_count") != previous)
      return ::testing::AssertionFailure() << family << ": _count differs from the +Inf bucket";
    if (std::isnan(out.value(family + "_sum")))
      return ::testing::AssertionFailure() << family << ": no _sum";
  }
  return ::testing::AssertionSuccess();
}

// The parser itself must refuse what Prometheus refuses, or the tests below prove nothing.
TEST(PrometheusReaderTest, RefusesMalformedExpositions) {
  Exposition e;
  EXPECT_TRUE(ParsesAsPrometheus("# HELP a_total x\n# TYPE a_total counter\na_total 3\n", e));
  EXPECT_EQ(e.value("a_total"), 3);
  for (const char* bad : {
           "a_total 3\n",                              // no TYPE
           "# TYPE a gauge\na 1",                      // no final newline
           "# TYPE a gauge\na one\n",                  // not a number
           "# TYPE a gauge\na{x=\"1\" 1\n",            // unclosed labels
           "# TYPE a gauge\na{x=1} 1\n",               // unquoted label
           "# TYPE a gauge\n# TYPE a counter\na 1\n",  // two TYPEs
           "# TYPE a gauge\na 1\na 2\n",               // a sample twice
           "# TYPE 1a gauge\n1a 1\n",                  // a bad name
           "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
           "h_sum 1\nh_count 1\n",                                               // not cumulative
           "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",     // no +Inf
           "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",  // count differs
       }) {
    Exposition x;
    EXPECT_FALSE(ParsesAsPrometheus(bad, x)) << bad;
  }
}

// ---------------------------------------------------------------------------------------------

std::string http_get(const std::string& url) {
  RunResult r = run({"curl", "--silent", "--show-error", "--fail", "--max-time", "10", url});
  if (!r.exited(0)) throw std::runtime_error("GET " + url + " failed:\n" + r.describe());
  return r.out;
}

std::string base(std::uint16_t port) {
  return "http://127.0.0.1:" + std::to_string(port) + "/";
}

// The metrics of the operations issue that every node exposes, with their types.
const std::map<std::string, std::string> kRequired = {
    {"tiersync_snapshot_serial", "gauge"},
    {"tiersync_upstream_serial", "gauge"},
    {"tiersync_held_partitions", "gauge"},
    {"tiersync_last_success_timestamp_seconds", "gauge"},
    {"tiersync_sync_duration_seconds", "histogram"},
    {"tiersync_files_total", "counter"},
    {"tiersync_bytes_downloaded_total", "counter"},
    {"tiersync_verify_failures_total", "counter"},
    {"tiersync_upstream_errors_total", "counter"},
    {"tiersync_http_requests_total", "counter"},
};

::testing::AssertionResult HasRequiredMetrics(const Exposition& e) {
  for (const auto& [name, type] : kRequired) {
    auto it = e.types.find(name);
    if (it == e.types.end()) return ::testing::AssertionFailure() << "no " << name;
    if (it->second != type)
      return ::testing::AssertionFailure() << name << " is a " << it->second << ", not a " << type;
  }
  for (const char* op : {"add", "change", "delete"})
    if (std::isnan(e.value("tiersync_files_total", {{"op", op}})))
      return ::testing::AssertionFailure() << "no tiersync_files_total{op=\"" << op << "\"}";
  return ::testing::AssertionSuccess();
}

// tier0 -> tier1 -> mirror over HTTP: each node's /metrics parses and carries every required
// metric with values that match what happened; each status names its chain up to the origin.
TEST_F(OperationsTest, MetricsAndStatusChainAcrossThreeTiers) {
  ASSERT_TRUE(have_curl()) << "curl is not installed: .ci/setup.sh installs it";

  // Every node on port 0, each parent started first: a child's URL holds the port its parent
  // reported.
  amend_config(origin, {{"source", {{"dir", source.string()}, {"settle_seconds", 0}}},
                        {"listen", loopback_listen()}});
  Daemon d_origin(origin);
  Node tier1 = make_mirror(root / "tier1", "tier1-eu", d_origin.url(), {key.pub});
  amend_config(
      tier1,
      {{"role", "tier1"}, {"listen", loopback_listen()}, {"upstream", {{"poll_seconds", 60}}}});
  Daemon d_tier1(tier1);
  Node mirror = make_mirror(root / "mirror", "mirror-b", d_tier1.url(), {key.pub});
  amend_config(mirror, {{"listen", loopback_listen()}, {"upstream", {{"poll_seconds", 60}}}});
  Daemon d_mirror(mirror);
  const std::vector<std::uint16_t> bound = {d_origin.port(), d_tier1.port(), d_mirror.port()};
  auto logs = [&] {
    return "--- origin ---\n" + d_origin.log() + "--- tier1 ---\n" + d_tier1.log() +
           "--- mirror ---\n" + d_mirror.log();
  };
  ASSERT_TRUE(converges(source, mirror.tree(), 30s)) << logs();
  const std::size_t files = files_in(listing_of(model)).size();

  // The status endpoint of each node: its chain of names up to the origin. The status is
  // republished after the cycle, so wait (bounded) for the mirror's to name its serial.
  const std::uint64_t serial = read_published_snapshot(origin.tree()).serial;
  json status;
  for (int i = 0; i < 100; ++i) {
    status = json::parse(http_get(base(bound[2]) + ".tiersync/v1/status"));
    if (status.value("serial", json()) == serial && status["chain"].size() == 3) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(status["chain"], json({"mirror-b", "tier1-eu", "dl-master"})) << status.dump(2);
  EXPECT_EQ(json::parse(http_get(base(bound[1]) + ".tiersync/v1/status"))["chain"],
            json({"tier1-eu", "dl-master"}));
  EXPECT_EQ(json::parse(http_get(base(bound[0]) + ".tiersync/v1/status"))["chain"],
            json({"dl-master"}));
  // tiersyncctl reads the same from state_dir, as JSON and as the table.
  EXPECT_EQ(mirror.status()["chain"], json({"mirror-b", "tier1-eu", "dl-master"}));
  RunResult table = mirror.ctl({"status"});
  ASSERT_TRUE(Exited(table, 0));
  EXPECT_TRUE(Mentions(table, "mirror-b <- tier1-eu <- dl-master"));
  EXPECT_TRUE(Mentions(table, "last success"));

  // The ports each daemon bound on port 0 (docs/configuration.md, "Bound ports"): the log line,
  // status as JSON and as the table, the report in state_dir.
  const std::string mirror_at = "127.0.0.1:" + std::to_string(bound[2]);
  EXPECT_TRUE(d_mirror.wait_for_log("listening on " + mirror_at + " (http", 10s)) << logs();
  const json listening = mirror.status()["listening"];
  ASSERT_EQ(listening.size(), 1u) << listening.dump(2);
  EXPECT_EQ(listening[0]["port"], bound[2]);
  EXPECT_EQ(listening[0]["address"], "127.0.0.1");
  EXPECT_EQ(listening[0]["tls"], false);
  EXPECT_EQ(listening[0]["url"], "http://" + mirror_at);
  EXPECT_TRUE(Mentions(table, mirror_at + " (http)"));
  EXPECT_NE(bound[1], bound[2]);

  // /metrics of the mirror: the initial sync added every file and downloaded their bytes.
  Exposition m;
  ASSERT_TRUE(ParsesAsPrometheus(http_get(base(bound[2]) + "metrics"), m));
  EXPECT_TRUE(HasRequiredMetrics(m));
  EXPECT_EQ(m.value("tiersync_snapshot_serial"), static_cast<double>(serial));
  EXPECT_EQ(m.value("tiersync_upstream_serial"), static_cast<double>(serial));
  EXPECT_EQ(m.value("tiersync_held_partitions"), 0);
  EXPECT_EQ(m.value("tiersync_files_total", {{"op", "add"}}), static_cast<double>(files));
  EXPECT_EQ(m.value("tiersync_files_total", {{"op", "delete"}}), 0);
  std::uint64_t bytes = 0;
  for (const auto& [path, spec] : model)
    if (!spec.link) bytes += spec.bytes.size();
  EXPECT_GE(m.value("tiersync_bytes_downloaded_total"), static_cast<double>(bytes));
  EXPECT_EQ(m.value("tiersync_verify_failures_total"), 0);
  EXPECT_GE(m.value("tiersync_sync_duration_seconds_count"), 1);
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_GT(m.value("tiersync_last_success_timestamp_seconds"), now - 120);
  EXPECT_LE(m.value("tiersync_last_success_timestamp_seconds"), now + 1);

  // tier1 answered the mirror's requests: 200s counted by code.
  Exposition t1;
  ASSERT_TRUE(ParsesAsPrometheus(http_get(base(bound[1]) + "metrics"), t1));
  EXPECT_TRUE(HasRequiredMetrics(t1));
  EXPECT_GE(t1.value("tiersync_http_requests_total", {{"code", "200"}}),
            static_cast<double>(files));

  // A replaced package: the change is counted as one add and one delete at the mirror.
  const std::string old_pkg = packages_in(model, "edge/main/x86_64")[0];
  model.erase(old_pkg);
  add_package(model, "edge/main/x86_64", "replaced-2.0-r0.apk", 77);
  rebuild_index(model, "edge/main/x86_64", kBaseMtime + 5000);
  materialize(model, source);
  ASSERT_TRUE(converges(source, mirror.tree(), 30s)) << logs();
  Exposition after;
  for (int i = 0; i < 100; ++i) {
    after = {};
    ASSERT_TRUE(ParsesAsPrometheus(http_get(base(bound[2]) + "metrics"), after));
    if (after.value("tiersync_files_total", {{"op", "delete"}}) >= 1) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(after.value("tiersync_files_total", {{"op", "add"}}), static_cast<double>(files + 1));
  EXPECT_EQ(after.value("tiersync_files_total", {{"op", "change"}}), 1);  // the index
  EXPECT_EQ(after.value("tiersync_files_total", {{"op", "delete"}}), 1);
  EXPECT_GE(after.value("tiersync_sync_duration_seconds_count"), 2);

  // A clean stop removes the report: status no longer names a port nobody listens on.
  EXPECT_TRUE(d_mirror.stop());
  EXPECT_TRUE(d_tier1.stop());
  EXPECT_TRUE(d_origin.stop());
  EXPECT_FALSE(fs::exists(mirror.state() / "ports.json"));
  EXPECT_TRUE(mirror.status()["listening"].empty());
}

// A parent that serves a corrupted byte: the relay's /metrics counts the refusal, its last
// success stays at "never", and its status still names no serial.
TEST_F(OperationsTest, MetricsCountVerifyFailures) {
  ASSERT_TRUE(have_curl()) << "curl is not installed: .ci/setup.sh installs it";
  ASSERT_TRUE(Exited(origin.once(), 0));

  Node a = make_mirror(root / "mirror-a", "mirror-a", origin.url(), {key.pub});
  amend_config(a, {{"listen", loopback_listen()}, {"upstream", {{"poll_seconds", 3600}}}});
  Daemon d_a(a);
  ASSERT_TRUE(converges(source, a.tree(), 30s)) << d_a.log();
  // A file:// parent serves no status: it stands in the chain by its URL.
  EXPECT_EQ(a.status()["chain"], json({"mirror-a", origin.url()}));

  const std::string victim = packages_in(model_of(source), "edge/main/x86_64")[0];
  std::string bytes = read_file(a.tree() / victim);
  bytes[bytes.size() / 2] ^= 0x01;
  {
    std::fstream out(a.tree() / victim, std::ios::binary | std::ios::in | std::ios::out);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }

  Node b = make_mirror(root / "mirror-b", "mirror-b", d_a.url(), {key.pub});
  amend_config(b, {{"listen", loopback_listen()}, {"upstream", {{"poll_seconds", 1}}}});
  Daemon d_b(b);
  const std::string b_metrics = d_b.url() + "metrics";  // listening once it reported its port
  Exposition m;
  for (int i = 0; i < 150; ++i) {
    m = {};
    ASSERT_TRUE(ParsesAsPrometheus(http_get(b_metrics), m));
    if (m.value("tiersync_verify_failures_total") >= 1) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(HasRequiredMetrics(m));
  EXPECT_GE(m.value("tiersync_verify_failures_total"), 1) << d_b.log();
  EXPECT_EQ(m.value("tiersync_last_success_timestamp_seconds"), 0);
  EXPECT_EQ(m.value("tiersync_snapshot_serial"), 0);
  EXPECT_EQ(m.value("tiersync_files_total", {{"op", "add"}}), 0);
  EXPECT_TRUE(files_in(list_tree(b.tree())).empty()) << "something was installed";
  const json st = b.status();
  EXPECT_TRUE(st["last_success"].is_null()) << st.dump(2);
  EXPECT_EQ(st["last_cycle"]["result"], "failed") << st.dump(2);
  EXPECT_EQ(st["chain"], json({"mirror-b", "mirror-a", origin.url()})) << st.dump(2);
  EXPECT_TRUE(d_b.stop());
  EXPECT_TRUE(d_a.stop());
}

// The key rotation of docs/security.md with a threshold: tier0 signs with the old and the new
// key; relays that require both (threshold 2) accept; the old key is then retired. A rotation
// re-signs at once, without waiting for content to change or for half the TTL.
TEST(KeyRotationTest, OldAndNewKeyWithAThreshold) {
  TempDir root("tiersync-ops");
  const KeyFiles old_key = keygen(root / "keys/old");
  const KeyFiles new_key = keygen(root / "keys/new");
  const fs::path source = root / "incoming";
  materialize(make_sample(), source);
  Node origin = make_origin(root / "origin", "dl-master", source, old_key.key);
  ASSERT_TRUE(Exited(origin.once(), 0));
  Node mirror = make_mirror(root / "mirror", "mirror", origin.url(), {old_key.pub});
  ASSERT_TRUE(Exited(mirror.once(), 0));
  const std::uint64_t first = read_published_snapshot(origin.tree()).serial;

  // Step 1: tier0 signs with both keys; the next publish re-signs although nothing changed.
  amend_config(origin, {{"signing_key", {old_key.key.string(), new_key.key.string()}}});
  ASSERT_TRUE(Exited(origin.ctl({"status"}), 0));
  RunResult resigned = origin.once();
  ASSERT_TRUE(Exited(resigned, 0));
  EXPECT_TRUE(Mentions(resigned, "signing keys changed"));
  const std::uint64_t both = read_published_snapshot(origin.tree()).serial;
  EXPECT_EQ(both, first + 1);
  const json envelope = json::parse(read_file(origin.tree() / ".tiersync/v1/snapshot"));
  EXPECT_EQ(envelope["signatures"].size(), 2u) << envelope.dump(2);
  RunResult again = origin.once();  // keys unchanged now: nothing to do
  ASSERT_TRUE(Exited(again, 0));
  EXPECT_EQ(read_published_snapshot(origin.tree()).serial, both);

  // Step 2: the relay requires both keys.
  amend_config(mirror,
               {{"trusted_keys", {old_key.pub.string(), new_key.pub.string()}}, {"threshold", 2}});
  ASSERT_TRUE(Exited(mirror.once(), 0));
  EXPECT_EQ(mirror.status().value("serial", json()), both);

  // A snapshot signed by one of them falls short of the threshold.
  amend_config(origin, {{"signing_key", new_key.key.string()}});
  ASSERT_TRUE(Exited(origin.once(), 0));
  RunResult short_of = mirror.once();
  EXPECT_TRUE(short_of.exited(1)) << short_of.describe();
  EXPECT_TRUE(contains_nocase(short_of.err, "threshold") ||
              contains_nocase(short_of.err, "signature"))
      << short_of.describe();
  EXPECT_EQ(mirror.status().value("serial", json()), both);

  // Step 3: the old key retired at the relay; the new key alone is enough, the old alone is not.
  amend_config(mirror, {{"trusted_keys", {new_key.pub.string()}}, {"threshold", 1}});
  ASSERT_TRUE(Exited(mirror.once(), 0));
  EXPECT_EQ(mirror.status().value("serial", json()), read_published_snapshot(origin.tree()).serial);
  Node stale = make_mirror(root / "stale", "stale", origin.url(), {old_key.pub});
  EXPECT_TRUE(stale.once().exited(1));
  EXPECT_TRUE(files_in(list_tree(stale.tree())).empty());
}

}  // namespace
}  // namespace tiersync::it
