#include "daemon/ops/config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "daemon/base/tls.h"
#include "proto/keys.h"
#include "proto/path.h"

namespace tiersync::ops {

using nlohmann::json;

std::string_view role_name(Role role) {
  switch (role) {
    case Role::kTier0:
      return "tier0";
    case Role::kTier1:
      return "tier1";
    case Role::kMirror:
      return "mirror";
  }
  return "?";
}

namespace {

// What every section parser shares: the configuration file's folder (relative paths resolve
// against it), the role, the first error, and (for the man page test) the keys looked up.
struct ParseContext {
  fs::path base;
  Role role = Role::kMirror;
  std::string error;
  std::set<std::string>* keys_read = nullptr;
};

constexpr bool kRequired = true;

// Walks one JSON object, remembering which keys were read so the unknown ones can be named.
// `prefix` names a key in errors (`listen[1].port`); `doc_prefix` names it as
// docs/configuration.md does (`listen[].port`), for `config_keys_read`.
class Reader {
 public:
  Reader(const json& obj, std::string prefix, std::string doc_prefix, ParseContext& ctx)
      : obj_(obj), prefix_(std::move(prefix)), doc_prefix_(std::move(doc_prefix)), ctx_(ctx) {}

  /// A reader of `obj`, which lies at `k` of this one (a section or an entry of a list).
  Reader nested(const json& obj, const std::string& k, const std::string& doc_k) const {
    return Reader(obj, prefix_ + k + ".", doc_prefix_ + doc_k + ".", ctx_);
  }

  ParseContext& context() const { return ctx_; }
  std::string key(std::string_view k) const { return prefix_ + std::string(k); }
  bool failed() const { return !ctx_.error.empty(); }
  void fail(std::string_view k, const std::string& what) {
    if (ctx_.error.empty()) ctx_.error = "key \"" + key(k) + "\": " + what;
  }
  /// Whether `k` is there, without reading it (a key that does not fit the role).
  bool has(std::string_view k) const { return obj_.contains(k); }
  /// Whether `k` is there, reading it.
  bool present(std::string_view k) { return get(k) != nullptr; }

  const json* get(std::string_view k) {
    seen_.insert(std::string(k));
    if (ctx_.keys_read) ctx_.keys_read->insert(doc_prefix_ + std::string(k));
    auto it = obj_.find(k);
    return it == obj_.end() ? nullptr : &*it;
  }
  void string(std::string_view k, std::string& out, bool required = false) {
    const json* v = get(k);
    if (!v) {
      if (required) fail(k, "missing (required)");
      return;
    }
    if (!v->is_string()) return fail(k, "must be a string");
    out = v->get<std::string>();
  }
  void path(std::string_view k, fs::path& out, bool required = false) {
    std::string s;
    string(k, s, required);
    if (s.empty()) {
      if (has(k) && !failed()) fail(k, "must not be empty");
      return;
    }
    out = (ctx_.base / s).lexically_normal();
  }
  /// A non-empty array of at most `max` file paths; `shape` says what is expected otherwise.
  void path_list(std::string_view k, const json& v, std::vector<fs::path>& out, std::size_t max,
                 const std::string& shape) {
    if (!v.is_array() || v.empty() || v.size() > max) return fail(k, shape);
    for (const auto& p : v) {
      if (!p.is_string() || p.get<std::string>().empty())
        return fail(k, "each entry must be a file path");
      out.push_back((ctx_.base / p.get<std::string>()).lexically_normal());
    }
  }
  template <class T>
  void integer(std::string_view k, T& out, std::int64_t min, std::int64_t max) {
    const json* v = get(k);
    if (!v) return;
    if (!v->is_number_integer()) return fail(k, "must be an integer");
    auto n = v->get<std::int64_t>();
    if (n < min || n > max)
      return fail(k, "must be between " + std::to_string(min) + " and " + std::to_string(max));
    out = static_cast<T>(n);
  }
  void boolean(std::string_view k, bool& out) {
    const json* v = get(k);
    if (!v) return;
    if (!v->is_boolean()) return fail(k, "must be true or false");
    out = v->get<bool>();
  }
  void ratio(std::string_view k, double& out) {
    const json* v = get(k);
    if (!v) return;
    if (!v->is_number()) return fail(k, "must be a number");
    double d = v->get<double>();
    if (!(d >= 0.0 && d <= 1.0)) return fail(k, "must be between 0 and 1");
    out = d;
  }
  /// A key that does not fit the role: an error when it is there.
  void misfit(std::string_view k, std::string_view why) {
    if (has(k))
      fail(k, "does not fit role " + std::string(role_name(ctx_.role)) + std::string(why));
  }
  /// Fails on the first key that was never read.
  void finish() {
    for (const auto& [k, v] : obj_.items())
      if (!seen_.count(k)) return fail(k, "unknown key");
  }

 private:
  const json& obj_;
  std::string prefix_;
  std::string doc_prefix_;
  ParseContext& ctx_;
  std::set<std::string> seen_;
};

// The section (an object) at `k`, read by `parse` into `out`: `out` keeps its defaults (the
// member initialisers of config.h, the one table of them) when the section is absent, and a
// required section that is absent is an error naming the role.
template <class T, class Parse>
void section(Reader& r, std::string_view k, T& out, Parse parse, bool required = false) {
  const json* v = r.get(k);
  if (!v) {
    if (required)
      r.fail(k, "missing (required for role " + std::string(role_name(r.context().role)) + ")");
    return;
  }
  if (!v->is_object()) return r.fail(k, "must be an object");
  Reader s = r.nested(*v, std::string(k), std::string(k));
  out = parse(s);
  s.finish();
}

bool valid_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
      return false;
  return true;
}

// True when `a` is `b` or lies below it (both absolute and normal).
bool inside(const fs::path& a, const fs::path& b) {
  fs::path rel = a.lexically_relative(b);
  return !rel.empty() && *rel.begin() != "..";
}

Result<Role> parse_role(const std::string& role) {
  if (role == "tier0") return Role::kTier0;
  if (role == "tier1") return Role::kTier1;
  if (role == "mirror") return Role::kMirror;
  return make_error("key \"role\": must be \"tier0\", \"tier1\" or \"mirror\", not \"" + role +
                    "\"");
}

// --- the sections of docs/configuration.md, one parser each -------------------------------------

std::vector<std::string> parse_index_files(Reader& r) {
  std::vector<std::string> names;
  const json* ix = r.get("index_files");
  if (!ix) return Config{}.index_files;
  if (!ix->is_array()) {
    r.fail("index_files", "must be an array of file names");
    return names;
  }
  for (const auto& n : *ix) {
    if (!n.is_string() || n.get<std::string>().empty() ||
        n.get<std::string>().find('/') != std::string::npos) {
      r.fail("index_files", "each entry must be a file name without '/'");
      break;
    }
    names.push_back(n.get<std::string>());
  }
  return names;
}

// `source` (tier0): where builders upload.
struct SourceConfig {
  fs::path dir;
  unsigned settle_seconds = Config{}.settle_seconds;
};
SourceConfig parse_source(Reader& s) {
  SourceConfig src;
  s.path("dir", src.dir, kRequired);
  s.integer("settle_seconds", src.settle_seconds, 0, 86400);
  return src;
}

// `signing_key`: one file, or an array of 1 to 8.
std::vector<fs::path> parse_signing_keys(Reader& r) {
  std::vector<fs::path> keys;
  if (const json* v = r.get("signing_key"); v && v->is_array()) {
    r.path_list("signing_key", *v, keys, 8,
                "must be a private key file or an array of 1 to 8 of them");
  } else {
    fs::path one;
    r.path("signing_key", one, kRequired);
    if (!one.empty()) keys.push_back(std::move(one));
  }
  return keys;
}

// The keys of tier0, the origin: what it publishes and how it signs.
void parse_tier0(Reader& r, Config& c) {
  for (auto k : {"upstream", "trusted_keys", "threshold"}) r.misfit(k, "");
  r.string("layout", c.layout, kRequired);
  if (!r.failed()) {
    auto depth = proto::layout_depth(c.layout);
    if (!depth) r.fail("layout", depth.message());
  }
  c.index_files = parse_index_files(r);
  SourceConfig src;
  section(r, "source", src, parse_source, kRequired);
  c.source_dir = src.dir;
  c.settle_seconds = src.settle_seconds;
  c.signing_keys = parse_signing_keys(r);
  r.integer("snapshot_ttl_hours", c.snapshot_ttl_hours, 1, 24 * 365);
}

// `upstream` (relays): the parent and how to fetch from it.
UpstreamConfig parse_upstream(Reader& u) {
  constexpr std::int64_t kMaxRate = std::numeric_limits<std::int64_t>::max();
  UpstreamConfig up;
  u.string("url", up.url, kRequired);
  if (!u.failed() && !(up.url.starts_with("file:///") || up.url.starts_with("https://") ||
                       up.url.starts_with("http://")))
    u.fail("url", "must start with https://, http:// or file:///");
  u.path("ca_file", up.ca_file);
  u.integer("connections", up.connections, 1, 64);
  u.integer("pipeline_depth", up.pipeline_depth, 1, 256);
  u.integer("range_split_bytes", up.range_split_bytes, 0, std::int64_t{1} << 40);
  u.integer("poll_seconds", up.poll_seconds, 1, 86400);
  u.integer("max_bytes_per_second", up.max_bytes_per_second, 0, kMaxRate);
  u.integer("min_bytes_per_second", up.min_bytes_per_second, 0, kMaxRate);
  return up;
}

// The keys of a relay (tier1, mirror): its parent and whom it trusts.
void parse_relay(Reader& r, Config& c) {
  for (auto k : {"layout", "index_files", "source", "signing_key", "snapshot_ttl_hours"})
    r.misfit(k, "");
  section(r, "upstream", c.upstream, parse_upstream, kRequired);
  if (const json* keys = r.get("trusted_keys")) {
    r.path_list("trusted_keys", *keys, c.trusted_keys, 64,
                "must be a non-empty array of public key files");
  } else {
    r.fail("trusted_keys", "missing (required for role " + std::string(role_name(c.role)) + ")");
  }
  r.integer("threshold", c.threshold, 1, 64);
  if (!r.failed() && c.threshold > c.trusted_keys.size())
    r.fail("threshold", "is larger than the number of trusted_keys");
}

constexpr std::string_view kNoUpstream = " (it has no upstream)";

// One entry of `guard.partitions`: limits for the partitions matching `pattern`.
base::PartitionPolicy parse_partition(Reader& p, const std::string& pattern) {
  base::PartitionPolicy out;
  out.pattern = pattern;
  if (p.present("max_delete_ratio")) p.ratio("max_delete_ratio", out.max_delete_ratio.emplace());
  if (p.present("max_bytes_loss_ratio"))
    p.ratio("max_bytes_loss_ratio", out.max_bytes_loss_ratio.emplace());
  if (p.present("min_files"))
    p.integer("min_files", out.min_files.emplace(), 0, std::numeric_limits<std::int64_t>::max());
  if (p.context().role == Role::kTier0) {
    p.misfit("trust_upstream_approvals", kNoUpstream);
  } else if (p.present("trust_upstream_approvals")) {
    p.boolean("trust_upstream_approvals", out.trust_upstream_approvals.emplace());
  }
  return out;
}

// `guard.partitions`: an object of glob -> limits.
std::vector<base::PartitionPolicy> parse_partitions(Reader& g) {
  std::vector<base::PartitionPolicy> out;
  const json* parts = g.get("partitions");
  if (!parts) return out;
  if (!parts->is_object()) {
    g.fail("partitions", "must be an object of glob -> limits");
    return out;
  }
  for (const auto& [pattern, limits] : parts->items()) {
    if (g.failed()) break;
    if (!limits.is_object()) {
      g.fail("partitions", "\"" + pattern + "\" must map to an object");
      break;
    }
    Reader p = g.nested(limits, "partitions." + pattern, "partitions.GLOB");
    out.push_back(parse_partition(p, pattern));
    p.finish();
  }
  return out;
}

// `guard` (docs/guard.md): the node's limits, then one entry per partition glob. Keys that only
// a relay can use are refused at tier0, which has no parent.
base::GuardPolicy parse_guard(Reader& g) {
  constexpr std::int64_t kMaxCount = std::numeric_limits<std::int64_t>::max();
  constexpr std::int64_t kYearHours = 24 * 365;
  base::GuardPolicy out;
  g.ratio("max_delete_ratio", out.max_delete_ratio);
  g.ratio("max_bytes_loss_ratio", out.max_bytes_loss_ratio);
  g.integer("min_files", out.min_files, 0, kMaxCount);
  g.integer("small_max_deletes", out.small_max_deletes, 0, kMaxCount);
  g.integer("root_max_changes", out.root_max_changes, 0, kMaxCount);
  g.integer("window_hours", out.window_hours, 0, kYearHours);
  g.integer("approval_hours", out.approval_hours, 1, kYearHours);
  if (g.context().role == Role::kTier0) {
    for (const char* k : {"trust_upstream_approvals", "trust_parent_approvals"})
      g.misfit(k, kNoUpstream);
  } else {
    g.boolean("trust_upstream_approvals", out.trust_upstream_approvals);
    g.boolean("trust_parent_approvals", out.trust_parent_approvals);
  }
  out.partitions = parse_partitions(g);
  return out;
}

// `scrub`: the background re-hashing of the tree.
ScrubConfig parse_scrub(Reader& s) {
  ScrubConfig out;
  s.integer("mb_per_second", out.mb_per_second, 0, 100000);
  return out;
}

// One entry of `listen`: an address to serve the tree on.
ListenConfig parse_listener(Reader& l) {
  ListenConfig out;
  l.string("address", out.address, kRequired);
  l.integer("port", out.port, 0, 65535);
  if (!l.has("port")) l.fail("port", "missing (required)");
  l.boolean("tls", out.tls);
  l.path("tls_cert", out.tls_cert);
  l.path("tls_key", out.tls_key);
  if (out.tls && !l.failed() && (out.tls_cert.empty() || out.tls_key.empty()))
    l.fail("tls_cert", "tls_cert and tls_key are required unless \"tls\": false");
  return out;
}

// `listen`: an array of listeners.
std::vector<ListenConfig> parse_listen(Reader& r) {
  std::vector<ListenConfig> out;
  const json* ls = r.get("listen");
  if (!ls) return out;
  if (!ls->is_array()) r.fail("listen", "must be an array");
  for (std::size_t i = 0; ls->is_array() && i < ls->size() && !r.failed(); ++i) {
    const json& entry = (*ls)[i];
    if (!entry.is_object()) {
      r.fail("listen", "entry " + std::to_string(i) + " must be an object");
      break;
    }
    Reader l = r.nested(entry, "listen[" + std::to_string(i) + "]", "listen[]");
    out.push_back(parse_listener(l));
    l.finish();
  }
  return out;
}

// `serve`: the server's caps against crowds; each at most the one above it.
ServeConfig parse_serve(Reader& s) {
  constexpr std::int64_t kMax = 1'000'000;
  ServeConfig out;
  s.integer("max_connections", out.max_connections, 1, kMax);
  s.integer("max_long_polls", out.max_long_polls, 1, kMax);
  s.integer("max_long_polls_per_address", out.max_long_polls_per_address, 1, kMax);
  if (!s.failed() && out.max_long_polls > out.max_connections)
    s.fail("max_long_polls",
           "must not exceed serve.max_connections (" + std::to_string(out.max_connections) + ")");
  if (!s.failed() && out.max_long_polls_per_address > out.max_long_polls)
    s.fail("max_long_polls_per_address",
           "must not exceed serve.max_long_polls (" + std::to_string(out.max_long_polls) + ")");
  return out;
}

// `log`: level and format.
LogConfig parse_log(Reader& l) {
  static const std::set<std::string> kLevels = {"trace", "debug",    "info", "warn",
                                                "error", "critical", "off"};
  LogConfig out;
  l.string("level", out.level);
  l.string("format", out.format);
  if (!kLevels.count(out.level))
    l.fail("level", "must be one of trace, debug, info, warn, error, critical, off");
  if (out.format != "text" && out.format != "json")
    l.fail("format", "must be \"text\" or \"json\"");
  return out;
}

// What no single key shows: folders that must not overlap.
Status check_folders(const Config& c) {
  if (inside(c.state_dir, c.tree))
    return make_error("key \"state_dir\": must not lie inside tree (it would be served)");
  if (c.role == Role::kTier0 && (inside(c.tree, c.source_dir) || inside(c.source_dir, c.tree)))
    return make_error("key \"source.dir\": must not overlap tree");
  return {};
}

// The whole document, section by section in the order of docs/configuration.md (the first
// error found is the one reported).
Result<Config> parse_document(const json& doc, Config c, ParseContext& ctx) {
  Reader r(doc, "", "", ctx);
  std::string role;
  r.string("role", role, kRequired);
  if (r.failed()) return make_error(ctx.error);
  auto parsed_role = parse_role(role);
  if (!parsed_role) return parsed_role.error();
  c.role = ctx.role = *parsed_role;

  r.string("name", c.name, kRequired);
  if (r.failed()) return make_error(ctx.error);
  if (!valid_name(c.name)) r.fail("name", "must be 1 to 64 letters, digits, '.', '-' or '_'");
  r.path("tree", c.tree, kRequired);
  r.path("state_dir", c.state_dir, kRequired);
  if (c.role == Role::kTier0) {
    parse_tier0(r, c);
  } else {
    parse_relay(r, c);
  }
  section(r, "guard", c.guard, parse_guard);
  section(r, "scrub", c.scrub, parse_scrub);
  c.listen = parse_listen(r);
  section(r, "serve", c.serve, parse_serve);
  if (c.role == Role::kTier1 && c.listen.empty() && !r.failed())
    r.fail("listen", "missing: a tier1 must listen");
  r.path("control_socket", c.control_socket);
  if (c.control_socket.empty() && !c.state_dir.empty())
    c.control_socket = c.state_dir / "control.sock";
  section(r, "log", c.log, parse_log);
  r.finish();
  if (r.failed()) return make_error(ctx.error);
  if (auto st = check_folders(c); !st) return st.error();
  return c;
}

Result<Config> parse_config_text(std::string_view text, const fs::path& file,
                                 std::set<std::string>* keys_read) {
  Config c;
  c.file = fs::absolute(file).lexically_normal();
  const std::string where = "config " + c.file.string() + ": ";
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for 1e999 (fuzz_config)
    return make_error(where + "not valid JSON (" + e.what() + ")");
  }
  if (!doc.is_object()) return make_error(where + "must be a JSON object");
  ParseContext ctx;
  ctx.base = c.file.parent_path();
  ctx.keys_read = keys_read;
  auto parsed = parse_document(doc, std::move(c), ctx);
  if (!parsed) return make_error(where + parsed.message());
  return parsed;
}

}  // namespace

Result<Config> parse_config(std::string_view text, const fs::path& file) {
  return parse_config_text(text, file, nullptr);
}

Result<std::set<std::string>> config_keys_read(std::string_view text, const fs::path& file) {
  std::set<std::string> keys;
  auto parsed = parse_config_text(text, file, &keys);
  if (!parsed) return parsed.error();
  return keys;
}

Result<Config> load_config(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in)
    return make_error("config " + file.string() + ": cannot be read (" + std::strerror(errno) +
                      ")");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), file);
}

namespace {

// The certificate chain `cert` and the private key `key` make the server's TLS context: what
// the server will load at start or on SIGHUP, built the same way and checked before it matters.
Status check_tls_pair(const fs::path& cert, const fs::path& key) {
  if (auto ctx = base::make_server_tls(cert, key); !ctx) return ctx.error();
  return {};
}

// A private key that group or others may read (or write) is refused, as ssh refuses one: the
// operator learns of it from tiersyncd before anyone else reads the key. The mode of the file a
// symlink names is what counts. A missing file is left to the loader, which names it.
Status check_private_key_mode(const std::string& key, const fs::path& file) {
  struct stat st;
  if (::stat(file.c_str(), &st) != 0 || (st.st_mode & 077) == 0) return {};
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  return make_error("key \"" + key + "\": " + file.string() + " has mode " + mode +
                    ": a private key must not be readable or writable by group or others (chmod "
                    "600 " +
                    file.string() + ")");
}

}  // namespace

Status check_resources(const Config& c) {
  const std::string where = "config " + c.file.string() + ": ";
  if (c.role == Role::kTier0) {
    if (auto keys = load_signing_keys(c); !keys) return make_error(where + keys.message());
    if (::access(c.source_dir.c_str(), R_OK | X_OK) != 0)
      return make_error(where + "key \"source.dir\": " + c.source_dir.string() + ": " +
                        std::strerror(errno));
  } else {
    if (auto keys = load_trusted_keys(c); !keys) return make_error(where + keys.message());
    if (!c.upstream.ca_file.empty() && ::access(c.upstream.ca_file.c_str(), R_OK) != 0)
      return make_error(where + "key \"upstream.ca_file\": " + c.upstream.ca_file.string() + ": " +
                        std::strerror(errno));
  }
  for (std::size_t i = 0; i < c.listen.size(); ++i) {
    const auto& l = c.listen[i];
    if (!l.tls) continue;
    for (const auto& [k, p] : {std::pair{"tls_cert", &l.tls_cert}, {"tls_key", &l.tls_key}})
      if (::access(p->c_str(), R_OK) != 0)
        return make_error(where + "key \"listen[" + std::to_string(i) + "]." + k +
                          "\": " + p->string() + ": " + std::strerror(errno));
    if (auto st = check_private_key_mode("listen[" + std::to_string(i) + "].tls_key", l.tls_key);
        !st)
      return make_error(where + st.message());
    if (auto st = check_tls_pair(l.tls_cert, l.tls_key); !st)
      return make_error(where + "key \"listen[" + std::to_string(i) + "]\": " + st.message());
  }
  return {};
}

Result<std::vector<proto::PrivateKey>> load_signing_keys(const Config& c) {
  std::vector<proto::PrivateKey> keys;
  std::set<std::string> keyids;
  for (std::size_t i = 0; i < c.signing_keys.size(); ++i) {
    const std::string name =
        c.signing_keys.size() == 1 ? "signing_key" : "signing_key[" + std::to_string(i) + "]";
    if (auto st = check_private_key_mode(name, c.signing_keys[i]); !st) return st.error();
    auto key = proto::PrivateKey::load(c.signing_keys[i]);
    if (!key) return make_error("key \"" + name + "\": " + key.message());
    if (!keyids.insert(key->public_key().keyid()).second)
      return make_error("key \"" + name + "\": the same key is listed twice (keyid " +
                        key->public_key().keyid() + ")");
    keys.push_back(std::move(*key));
  }
  if (keys.empty()) return make_error("key \"signing_key\": no key");
  return keys;
}

Result<std::vector<proto::PublicKey>> load_trusted_keys(const Config& c) {
  std::vector<proto::PublicKey> keys;
  for (std::size_t i = 0; i < c.trusted_keys.size(); ++i) {
    auto key = proto::PublicKey::load(c.trusted_keys[i]);
    if (!key)
      return make_error("key \"trusted_keys[" + std::to_string(i) + "]\": " + key.message());
    keys.push_back(std::move(*key));
  }
  return keys;
}

}  // namespace tiersync::ops
