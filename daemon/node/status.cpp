// The operator's commands that read or write state_dir directly: status, approve, verify.

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>
#include <set>

#include "daemon/node/node.h"
#include "daemon/node/scrub.h"
#include "daemon/ops/metrics.h"
#include "daemon/sync/apply.h"
#include "daemon/sync/fs.h"
#include "daemon/sync/scan.h"
#include "daemon/sync/state.h"
#include "proto/path.h"
#include "proto/printable.h"

namespace tiersync::node {

using nlohmann::json;

namespace {

// The scrubber's record (node/scrub.h), as it stood at its last save.
json scrub_object(const ops::Config& config) {
  const ScrubRecord r = load_scrub_record(config.state_dir);
  json damaged = json::array();
  for (const auto& d : r.damaged)
    damaged.push_back({{"path", d.path},
                       {"problem", d.problem},
                       {"detail", d.detail},
                       {"found", proto::format_time(d.found)},
                       {"repair", d.repair}});
  return {{"mb_per_second", config.scrub.mb_per_second},
          {"passes", r.passes},
          {"pass_files", r.pass_files},
          {"pass_bytes", r.pass_bytes},
          {"position", r.after_partition.empty() ? json(nullptr) : json(r.after_path)},
          {"last_pass_end", r.last_pass_end ? json(proto::format_time(r.last_pass_end)) : json()},
          {"last_pass_end_unix", r.last_pass_end},
          {"last_pass_seconds", r.last_pass_seconds},
          {"last_pass_files", r.last_pass_files},
          {"last_pass_bytes", r.last_pass_bytes},
          {"found", r.found},
          {"repaired", r.repaired},
          {"damaged", damaged}};
}

fs::path ports_report_path(const ops::Config& config) {
  return config.state_dir / "ports.json";
}

// What the running daemon reported it bound (write_ports_report); empty when no daemon serves.
json listening_array(const ops::Config& config) {
  std::error_code ec;
  if (!fs::exists(ports_report_path(config), ec)) return json::array();
  auto bytes = sync::read_file(ports_report_path(config), 64 * 1024);
  if (!bytes) return json::array();
  json doc = json::parse(*bytes, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || !doc.contains("listen") || !doc["listen"].is_array())
    return json::array();
  return doc["listen"];
}

// What status reads from state_dir, once.
struct NodeState {
  Result<std::optional<sync::Applied>> applied;
  sync::CycleRecord cycle;
  sync::HeldState held;
};

NodeState load_node_state(const ops::Config& config) {
  sync::StateStore state(config.state_dir, config.tree);
  auto applied = state.load_applied();
  return {std::move(applied), state.load_cycle(), state.load_held()};
}

// The applied snapshot: its serial, origin, validity and size (or why none can be read).
void add_applied(json& j, const NodeState& s) {
  if (!s.applied || !*s.applied) {
    j["serial"] = nullptr;
    if (!s.applied) j["error"] = proto::printable(s.applied.message(), sync::kMaxCycleMessageBytes);
    return;
  }
  const auto& snap = (*s.applied)->snapshot;
  j["serial"] = snap.serial;
  j["origin"] = snap.origin;
  j["created"] = proto::format_time(snap.created);
  j["expires"] = proto::format_time(snap.expires);
  j["expires_unix"] = snap.expires;
  std::uint64_t files = 0;
  for (const auto& [name, ref] : snap.partitions) files += ref.files;
  j["partitions"] = snap.partitions.size();
  j["files"] = files;
}

std::uint64_t applied_serial(const NodeState& s) {
  return s.applied && *s.applied ? (*s.applied)->snapshot.serial : 0;
}

// The parent's latest serial as the last cycle saw it, and how far behind this node is.
void add_upstream(json& j, const ops::Config& config, const NodeState& s) {
  const std::uint64_t serial = applied_serial(s);
  std::uint64_t upstream = std::max(s.cycle.upstream_serial, serial);
  if (config.role == ops::Role::kTier0) upstream = serial;
  j["upstream_serial"] = upstream == 0 ? json(nullptr) : json(upstream);
  j["lag"] = upstream >= serial ? upstream - serial : 0;
}

json held_array(const sync::HeldState& held) {
  json holds = json::array();
  for (const auto& h : held.partitions)
    holds.push_back({{"partition", h.hold.partition},
                     {"rule", sync::rule_name(h.hold.rule)},
                     {"deleted", h.hold.deleted},
                     {"files", h.hold.files},
                     {"lost", h.hold.count},
                     {"of", h.hold.of},
                     {"ratio", h.hold.ratio},
                     {"limit", h.hold.limit},
                     {"candidate", h.candidate},
                     {"from", h.from},
                     {"to", h.to},
                     {"stale", h.stale_since != 0},
                     {"since", proto::format_time(held.since)}});
  return holds;
}

// Partitions served at an older signed manifest than the envelope's (docs/protocol.md, "Pins"):
// this node's holds and its parent's. Stale once the proving snapshot expired.
json pins_array(const NodeState& s) {
  json pins = json::array();
  if (!s.applied || !*s.applied) return pins;
  const std::int64_t now = std::time(nullptr);
  std::set<std::string> held_here;
  for (const auto& h : s.held.partitions) held_here.insert(h.hold.partition);
  for (const auto& [name, pin] : (*s.applied)->pins.pins) {
    auto proof = sync::decode_proof((*s.applied)->pins.proofs.at(pin.serial));
    const std::int64_t expires = proof ? proof->expires : 0;
    pins.push_back({{"partition", name},
                    {"serial", pin.serial},
                    {"manifest", proto::to_hex(pin.ref.manifest)},
                    {"files", pin.ref.files},
                    {"expires", proto::format_time(expires)},
                    {"stale", expires <= now},
                    {"held_here", held_here.count(name) > 0}});
  }
  return pins;
}

// Like Debian's trace files: this node, then its parent's chain up to the origin. A parent that
// serves no status (file://, a static server) stands in by its URL.
json chain_array(const ops::Config& config, const sync::CycleRecord& cycle) {
  json chain = json::array({config.name});
  if (config.role == ops::Role::kTier0) return chain;
  if (cycle.parent_chain.empty()) {
    chain.push_back(config.upstream.url);
  } else {
    for (const auto& name : cycle.parent_chain) chain.push_back(name);
  }
  return chain;
}

// The last cycle's outcome and the last success.
void add_last_cycle(json& j, const sync::CycleRecord& cycle) {
  j["last_success"] =
      cycle.last_success ? json(proto::format_time(cycle.last_success)) : json(nullptr);
  j["last_success_unix"] = cycle.last_success;
  if (cycle.result.empty()) {
    j["last_cycle"] = nullptr;
  } else {
    j["last_cycle"] = {{"result", cycle.result},
                       {"time", proto::format_time(cycle.time)},
                       {"message", cycle.message}};
  }
}

// The status document (docs/status.md): one line per field or group of fields.
json status_object(const ops::Config& config) {
  const NodeState s = load_node_state(config);
  json j;
  j["role"] = ops::role_name(config.role);
  j["name"] = config.name;
  add_applied(j, s);
  add_upstream(j, config, s);
  j["held"] = held_array(s.held);
  j["pins"] = pins_array(s);
  j["chain"] = chain_array(config, s.cycle);
  add_last_cycle(j, s.cycle);
  j["scrub"] = scrub_object(config);
  j["listening"] = listening_array(config);
  return j;
}

}  // namespace

Status write_ports_report(const ops::Config& config, const std::vector<std::uint16_t>& ports) {
  json listen = json::array();
  for (std::size_t i = 0; i < ports.size() && i < config.listen.size(); ++i) {
    const auto& l = config.listen[i];
    const bool v6 = l.address.find(':') != std::string::npos;
    const std::string host = v6 ? "[" + l.address + "]" : l.address;
    listen.push_back({{"address", l.address},
                      {"port", ports[i]},
                      {"tls", l.tls},
                      {"url", std::string(l.tls ? "https" : "http") + "://" + host + ":" +
                                  std::to_string(ports[i])}});
  }
  const json doc = {{"pid", ::getpid()}, {"listen", listen}};
  return sync::write_file_atomic(ports_report_path(config), doc.dump(2) + "\n", 0644,
                                 /*durable=*/false);
}

void remove_ports_report(const ops::Config& config) {
  std::error_code ec;
  fs::remove(ports_report_path(config), ec);
}

std::string status_json(const ops::Config& config) {
  return status_object(config).dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string metrics_text(const ops::Config& config) {
  json j = status_object(config);
  auto number = [](const json& v) { return v.is_number() ? v.dump() : std::string("0"); };
  ops::PrometheusText out;
  auto gauge = [&](std::string_view name, std::string_view help, const std::string& value) {
    out.family(name, "gauge", help);
    out.sample(name, value);
  };
  gauge("tiersync_snapshot_serial", "Serial of the applied snapshot.", number(j["serial"]));
  gauge("tiersync_upstream_serial", "Latest serial seen at the parent.",
        number(j["upstream_serial"]));
  gauge("tiersync_held_partitions", "Partitions held by the deletion guard.",
        std::to_string(j["held"].size()));
  std::size_t stale_pins = 0;
  for (const auto& p : j["pins"]) stale_pins += p.value("stale", false) ? 1 : 0;
  gauge("tiersync_pinned_partitions",
        "Partitions served at an older signed manifest than the snapshot's (held here or above).",
        std::to_string(j["pins"].size()));
  gauge("tiersync_stale_pins", "Pinned partitions whose proving snapshot has expired.",
        std::to_string(stale_pins));
  gauge("tiersync_lag", "Serials between the applied snapshot and the parent's latest.",
        number(j["lag"]));
  gauge("tiersync_snapshot_expires_timestamp_seconds",
        "Unix time at which the applied snapshot expires (0: nothing applied).",
        number(j.value("expires_unix", json())));
  gauge("tiersync_last_success_timestamp_seconds",
        "Unix time of the last cycle that applied, published or found nothing to do (0: never).",
        number(j["last_success_unix"]));
  const auto last = j["last_cycle"].is_object()
                        ? parse_cycle_result(j["last_cycle"]["result"].get<std::string>())
                        : std::nullopt;
  const bool success = last && is_success(*last);
  gauge("tiersync_last_cycle_success", "1 if the last cycle applied or found nothing to do.",
        success ? "1" : "0");
  const json& scrub = j["scrub"];
  gauge("tiersync_scrub_last_pass_end_timestamp_seconds",
        "Unix time at which the last scrub pass over the whole tree ended (0: never).",
        number(scrub["last_pass_end_unix"]));
  gauge("tiersync_scrub_damaged_files",
        "Damaged files the scrubber found and has not repaired yet (as listed in status).",
        std::to_string(scrub["damaged"].size()));
  return out.take() + ops::process_metrics().text();
}

namespace {

// A status value as text: "-" for none, strings as they are.
std::string text_of(const json& v) {
  return v.is_null()     ? std::string("-")
         : v.is_string() ? v.get<std::string>()
                         : v.dump(-1, ' ', false, json::error_handler_t::replace);
}

// status_text's output: rows of "key  value", and lines printf-formatted.
class TextTable {
 public:
  void row(const char* key, const std::string& value) { line("%-16s %s\n", key, value.c_str()); }
  template <class... Args>
  void line(const char* format, Args... args) {
    char buf[512];
    std::snprintf(buf, sizeof buf, format, args...);
    out_ += buf;
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

unsigned long long ull(const json& v) {
  return static_cast<unsigned long long>(v.get<std::uint64_t>());
}

// Who the node is, what it serves, and how its cycles went.
void node_rows(TextTable& t, const json& j) {
  t.row("name", text_of(j["name"]));
  t.row("role", text_of(j["role"]));
  t.row("serial", text_of(j["serial"]));
  t.row("upstream serial", text_of(j["upstream_serial"]));
  t.row("lag", text_of(j["lag"]));
  std::string chain;
  for (const auto& name : j["chain"]) chain += (chain.empty() ? "" : " <- ") + text_of(name);
  t.row("chain", chain);
  if (j.contains("expires")) t.row("expires", text_of(j["expires"]));
  if (j.contains("files"))
    t.row("files", text_of(j["files"]) + " in " + text_of(j["partitions"]) + " partitions");
  if (j["last_cycle"].is_null()) {
    t.row("last cycle", "-");
  } else {
    t.row("last cycle",
          text_of(j["last_cycle"]["result"]) + " at " + text_of(j["last_cycle"]["time"]));
    t.row("", text_of(j["last_cycle"]["message"]));
  }
  t.row("last success", text_of(j["last_success"]));
  std::string listening;
  for (const auto& l : j["listening"])
    listening += (listening.empty() ? "" : ", ") + text_of(l["address"]) + ":" +
                 text_of(l["port"]) + " (" + (l.value("tls", false) ? "https" : "http") + ")";
  t.row("listening", listening.empty() ? "-" : listening);
}

void scrub_rows(TextTable& t, const json& scrub) {
  if (scrub["mb_per_second"] == 0) {
    t.row("scrub", "off");
  } else {
    t.row("scrub", text_of(scrub["mb_per_second"]) + " MB/s, " + text_of(scrub["passes"]) +
                       " passes, last ended " + text_of(scrub["last_pass_end"]) + " (" +
                       text_of(scrub["last_pass_files"]) + " files in " +
                       text_of(scrub["last_pass_seconds"]) + " s)");
    t.row("",
          "found " + text_of(scrub["found"]) + " damaged, repaired " + text_of(scrub["repaired"]));
  }
  for (const auto& d : scrub["damaged"])
    t.line("  damaged: %s (%s: %s) %s\n", text_of(d["path"]).c_str(), text_of(d["problem"]).c_str(),
           text_of(d["detail"]).c_str(), text_of(d["repair"]).c_str());
}

void pin_lines(TextTable& t, const json& pins) {
  for (const auto& p : pins) {
    const bool stale = p["stale"].get<bool>();
    t.line("  pinned: %s at serial %llu (%llu files, %s)%s%s\n", text_of(p["partition"]).c_str(),
           ull(p["serial"]), ull(p["files"]),
           p["held_here"].get<bool>() ? "held here" : "held upstream",
           stale ? ", stale: expired at " : "", stale ? text_of(p["expires"]).c_str() : "");
  }
}

void held_table(TextTable& t, const json& held) {
  if (held.empty()) return t.row("held", "none");
  t.line("held:\n  %-28s %-7s %8s %8s %10s %10s %7s %7s  %s\n", "PARTITION", "RULE", "DELETED",
         "FILES", "LOST", "OF", "RATIO", "LIMIT", "CANDIDATE");
  for (const auto& h : held)
    t.line("  %-28s %-7s %8llu %8llu %10llu %10llu %7.3f %7.3f  %s%s\n",
           h["partition"].get<std::string>().c_str(), h["rule"].get<std::string>().c_str(),
           ull(h["deleted"]), ull(h["files"]), ull(h["lost"]), ull(h["of"]),
           h["ratio"].get<double>(), h["limit"].get<double>(),
           h["candidate"].get<std::string>().substr(0, 16).c_str(),
           h["stale"].get<bool>() ? " (stale)" : "");
}

}  // namespace

std::string status_text(const ops::Config& config) {
  const json j = status_object(config);
  TextTable t;
  node_rows(t, j);
  scrub_rows(t, j["scrub"]);
  pin_lines(t, j["pins"]);
  held_table(t, j["held"]);
  return t.take();
}

Result<std::vector<std::string>> approve(const ops::Config& config,
                                         const std::vector<std::string>& partitions, bool all) {
  sync::StateStore state(config.state_dir, config.tree);
  auto held = state.load_held();
  // An approval of what is not held is refused naming it (docs/guard.md, "Approvals").
  if (held.partitions.empty())
    return make_error(partitions.empty()
                          ? std::string("nothing is held: there is nothing to approve")
                          : "partition \"" + partitions.front() +
                                "\" is not held (nothing is held)");
  std::vector<const sync::HeldPartition*> chosen;
  for (const auto& h : held.partitions)
    if (all) chosen.push_back(&h);
  for (const auto& name : partitions) {
    const sync::HeldPartition* found = nullptr;
    for (const auto& h : held.partitions)
      if (h.hold.partition == name) found = &h;
    if (!found) {
      std::string names;
      for (const auto& h : held.partitions) names += " " + h.hold.partition;
      return make_error("partition \"" + name + "\" is not held (held:" + names + ")");
    }
    chosen.push_back(found);
  }
  auto approvals = state.load_approvals();
  const std::int64_t now = std::time(nullptr);
  const std::int64_t expires = now + static_cast<std::int64_t>(config.guard.approval_hours) * 3600;
  std::vector<std::string> lines;
  for (const auto* h : chosen) {
    // One approval per partition: the change it names replaces any earlier one's.
    std::erase_if(approvals,
                  [&](const sync::Approval& a) { return a.partition == h->hold.partition; });
    approvals.push_back({h->hold.partition, h->from, h->to, h->hold.deleted, h->hold.files,
                         std::string(sync::rule_name(h->hold.rule)), expires});
    lines.push_back("approved: partition " + h->hold.partition + " (rule " +
                    std::string(sync::rule_name(h->hold.rule)) + ": deletes " +
                    std::to_string(h->hold.deleted) + " of " + std::to_string(h->hold.files) +
                    " files, loses " + std::to_string(h->hold.count) + " of " +
                    std::to_string(h->hold.of) + "; from " + h->from.substr(0, 16) + " to " +
                    h->to.substr(0, 16) + ", valid until " + proto::format_time(expires) +
                    "); the next cycle applies it");
  }
  if (auto st = state.save_approvals(approvals); !st) return st.error();
  return lines;
}

namespace {

// One difference between the tree and the applied manifests: verify's line, and the entry it is
// about (null for a file the snapshot does not name).
struct Difference {
  std::string line;
  const proto::Entry* entry = nullptr;
  Damage damage;
};

// The same checks as the scrubber's (TreeInspector: no symlink in the tree is followed), at full
// speed; `full` hashes every file.
Result<std::vector<Difference>> differences(const ops::Config& config,
                                            const sync::ManifestSet& manifests, bool full) {
  std::vector<Difference> diffs;
  std::set<std::string_view> known;
  TreeInspector inspector(config.tree);
  for (const auto& [name, m] : manifests) {
    for (const auto& e : m->entries) {
      known.insert(e.path());
      if (auto damage = inspector.inspect(e, full))
        diffs.push_back({describe_damage(e.path(), *damage), &e, std::move(*damage)});
    }
  }
  auto scan = sync::scan_tree(config.tree);
  if (!scan) return scan.error();
  for (const auto& f : scan->files)
    if (!known.count(f.path)) diffs.push_back({"extra: " + f.path, nullptr, {}});
  return diffs;
}

}  // namespace

Result<std::vector<std::string>> verify(const ops::Config& config, bool full) {
  sync::StateStore state(config.state_dir, config.tree);
  auto applied = state.load_applied();
  if (!applied) return applied.error();
  if (!*applied)
    return make_error("nothing applied yet: no snapshot in " + config.state_dir.string());
  auto manifests = state.load_manifests((*applied)->snapshot);
  if (!manifests) return manifests.error();
  auto diffs = differences(config, *manifests, full);
  if (!diffs) return diffs.error();
  std::vector<std::string> lines;
  for (auto& d : *diffs) lines.push_back(std::move(d.line));
  return lines;
}

Result<RepairReport> verify_and_repair(const ops::Config& config) {
  sync::StateStore state(config.state_dir, config.tree);
  if (auto st = state.open(); !st) return st.error();  // no cycle runs meanwhile
  auto applied = state.load_applied();
  if (!applied) return applied.error();
  if (!*applied)
    return make_error("nothing applied yet: no snapshot in " + config.state_dir.string());
  auto journal = state.load_journal();
  if (!journal) return journal.error();
  if (*journal)
    return make_error("an interrupted apply waits to be finished: run a cycle first " +
                      std::string("(tiersyncd --once), then verify --repair"));
  auto manifests = state.load_manifests((*applied)->snapshot);
  if (!manifests) return manifests.error();
  auto diffs = differences(config, *manifests, /*full=*/true);
  if (!diffs) return diffs.error();

  RepairReport report;
  std::vector<std::pair<const proto::Entry*, Damage>> damaged;
  for (const auto& d : *diffs) {
    report.lines.push_back(d.line);
    if (d.entry) damaged.emplace_back(d.entry, d.damage);
  }
  const auto why = repair_entries(config, state, damaged);
  for (std::size_t i = 0; i < damaged.size(); ++i) {
    const std::string path(damaged[i].first->path());
    report.lines.push_back(why[i].empty() ? "repaired: " + path
                                          : "not repaired: " + path + ": " + why[i]);
  }
  // The tree as it ends, checked again in full: what is left is listed once more.
  auto left = differences(config, *manifests, /*full=*/true);
  if (!left) return left.error();
  for (const auto& d : *left) report.lines.push_back("left: " + d.line);
  report.clean = left->empty();
  return report;
}

}  // namespace tiersync::node
