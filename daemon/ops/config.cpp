#include "daemon/ops/config.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
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

// Walks one JSON object, remembering which keys were read so the unknown ones can be named.
class Reader {
 public:
  Reader(const json& obj, std::string prefix, std::string* error)
      : obj_(obj), prefix_(std::move(prefix)), error_(error) {}

  std::string key(std::string_view k) const { return prefix_ + std::string(k); }
  bool failed() const { return !error_->empty(); }
  void fail(std::string_view k, const std::string& what) {
    if (error_->empty()) *error_ = "key \"" + key(k) + "\": " + what;
  }
  bool has(std::string_view k) const { return obj_.contains(k); }

  const json* get(std::string_view k) {
    seen_.insert(std::string(k));
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
  void path(std::string_view k, fs::path& out, const fs::path& base, bool required = false) {
    std::string s;
    string(k, s, required);
    if (s.empty()) {
      if (has(k) && !failed()) fail(k, "must not be empty");
      return;
    }
    out = (base / s).lexically_normal();
  }
  /// A non-empty array of at most `max` file paths; `shape` says what is expected otherwise.
  void path_list(std::string_view k, const json& v, std::vector<fs::path>& out,
                 const fs::path& base, std::size_t max, const std::string& shape) {
    if (!v.is_array() || v.empty() || v.size() > max) return fail(k, shape);
    for (const auto& p : v) {
      if (!p.is_string() || p.get<std::string>().empty())
        return fail(k, "each entry must be a file path");
      out.push_back((base / p.get<std::string>()).lexically_normal());
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
  /// Fails on the first key that was never read.
  void finish() {
    for (const auto& [k, v] : obj_.items())
      if (!seen_.count(k)) return fail(k, "unknown key");
  }

 private:
  const json& obj_;
  std::string prefix_;
  std::string* error_;
  std::set<std::string> seen_;
};

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

// The `guard` section (docs/configuration.md, docs/guard.md): the node's limits, then one entry
// per partition glob. Keys that only a relay can use are refused at tier0, which has no parent.
void parse_guard(const json& g, Role role, sync::GuardPolicy& out, std::string& err) {
  constexpr std::int64_t kMaxCount = std::numeric_limits<std::int64_t>::max();
  constexpr std::int64_t kYearHours = 24 * 365;
  Reader gr(g, "guard.", &err);
  gr.ratio("max_delete_ratio", out.max_delete_ratio);
  gr.ratio("max_bytes_loss_ratio", out.max_bytes_loss_ratio);
  gr.integer("min_files", out.min_files, 0, kMaxCount);
  gr.integer("small_max_deletes", out.small_max_deletes, 0, kMaxCount);
  gr.integer("root_max_changes", out.root_max_changes, 0, kMaxCount);
  gr.integer("window_hours", out.window_hours, 0, kYearHours);
  gr.integer("approval_hours", out.approval_hours, 1, kYearHours);
  if (role == Role::kTier0) {
    for (const char* k : {"trust_upstream_approvals", "trust_parent_approvals"})
      if (gr.has(k)) gr.fail(k, "does not fit role tier0 (it has no upstream)");
  } else {
    gr.boolean("trust_upstream_approvals", out.trust_upstream_approvals);
    gr.boolean("trust_parent_approvals", out.trust_parent_approvals);
  }
  const json* parts = gr.get("partitions");
  if (parts && !parts->is_object()) gr.fail("partitions", "must be an object of glob -> limits");
  if (parts && parts->is_object()) {
    for (const auto& [pattern, limits] : parts->items()) {
      if (gr.failed()) break;
      if (!limits.is_object()) {
        gr.fail("partitions", "\"" + pattern + "\" must map to an object");
        break;
      }
      Reader pr(limits, "guard.partitions." + pattern + ".", &err);
      sync::PartitionPolicy p;
      p.pattern = pattern;
      if (pr.has("max_delete_ratio")) {
        double ratio = 0;
        pr.ratio("max_delete_ratio", ratio);
        p.max_delete_ratio = ratio;
      }
      if (pr.has("max_bytes_loss_ratio")) {
        double ratio = 0;
        pr.ratio("max_bytes_loss_ratio", ratio);
        p.max_bytes_loss_ratio = ratio;
      }
      if (pr.has("min_files")) {
        std::uint64_t min = 0;
        pr.integer("min_files", min, 0, kMaxCount);
        p.min_files = min;
      }
      if (pr.has("trust_upstream_approvals")) {
        if (role == Role::kTier0) {
          pr.fail("trust_upstream_approvals", "does not fit role tier0 (it has no upstream)");
        } else {
          bool trust = false;
          pr.boolean("trust_upstream_approvals", trust);
          p.trust_upstream_approvals = trust;
        }
      }
      pr.finish();
      out.partitions.push_back(std::move(p));
    }
  }
  gr.finish();
}

}  // namespace

Result<Config> parse_config(std::string_view text, const fs::path& file) {
  Config c;
  c.file = fs::absolute(file).lexically_normal();
  const fs::path base = c.file.parent_path();
  const std::string where = "config " + c.file.string() + ": ";

  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for 1e999 (fuzz_config)
    return make_error(where + "not valid JSON (" + e.what() + ")");
  }
  if (!doc.is_object()) return make_error(where + "must be a JSON object");

  std::string err;
  Reader r(doc, "", &err);
  std::string role;
  r.string("role", role, true);
  if (!err.empty()) return make_error(where + err);
  if (role == "tier0") {
    c.role = Role::kTier0;
  } else if (role == "tier1") {
    c.role = Role::kTier1;
  } else if (role == "mirror") {
    c.role = Role::kMirror;
  } else {
    return make_error(where + "key \"role\": must be \"tier0\", \"tier1\" or \"mirror\", not \"" +
                      role + "\"");
  }
  auto misfit = [&](std::string_view k) {
    if (r.has(k)) r.fail(k, "does not fit role " + std::string(role_name(c.role)));
  };

  r.string("name", c.name, true);
  if (!err.empty()) return make_error(where + err);
  if (!valid_name(c.name)) r.fail("name", "must be 1 to 64 letters, digits, '.', '-' or '_'");
  r.path("tree", c.tree, base, true);
  r.path("state_dir", c.state_dir, base, true);

  if (c.role == Role::kTier0) {
    for (auto k : {"upstream", "trusted_keys", "threshold"}) misfit(k);
    r.string("layout", c.layout, true);
    if (!r.failed()) {
      auto depth = proto::layout_depth(c.layout);
      if (!depth) r.fail("layout", depth.message());
    }
    if (const json* ix = r.get("index_files")) {
      if (!ix->is_array()) {
        r.fail("index_files", "must be an array of file names");
      } else {
        c.index_files.clear();
        for (const auto& n : *ix) {
          if (!n.is_string() || n.get<std::string>().empty() ||
              n.get<std::string>().find('/') != std::string::npos) {
            r.fail("index_files", "each entry must be a file name without '/'");
            break;
          }
          c.index_files.push_back(n.get<std::string>());
        }
      }
    }
    if (const json* src = r.get("source")) {
      if (!src->is_object()) {
        r.fail("source", "must be an object");
      } else {
        Reader s(*src, "source.", &err);
        s.path("dir", c.source_dir, base, true);
        s.integer("settle_seconds", c.settle_seconds, 0, 86400);
        s.finish();
      }
    } else {
      r.fail("source", "missing (required for role tier0)");
    }
    if (const json* keys = r.get("signing_key"); keys && keys->is_array()) {
      r.path_list("signing_key", *keys, c.signing_keys, base, 8,
                  "must be a private key file or an array of 1 to 8 of them");
    } else {
      fs::path one;
      r.path("signing_key", one, base, true);
      if (!one.empty()) c.signing_keys.push_back(std::move(one));
    }
    r.integer("snapshot_ttl_hours", c.snapshot_ttl_hours, 1, 24 * 365);
  } else {
    for (auto k : {"layout", "index_files", "source", "signing_key", "snapshot_ttl_hours"})
      misfit(k);
    if (const json* up = r.get("upstream")) {
      if (!up->is_object()) {
        r.fail("upstream", "must be an object");
      } else {
        Reader u(*up, "upstream.", &err);
        u.string("url", c.upstream.url, true);
        if (!u.failed() &&
            !(c.upstream.url.starts_with("file:///") || c.upstream.url.starts_with("https://") ||
              c.upstream.url.starts_with("http://")))
          u.fail("url", "must start with https://, http:// or file:///");
        u.path("ca_file", c.upstream.ca_file, base);
        u.integer("connections", c.upstream.connections, 1, 64);
        u.integer("pipeline_depth", c.upstream.pipeline_depth, 1, 256);
        u.integer("poll_seconds", c.upstream.poll_seconds, 1, 86400);
        u.integer("max_bytes_per_second", c.upstream.max_bytes_per_second, 0,
                  std::numeric_limits<std::int64_t>::max());
        u.integer("min_bytes_per_second", c.upstream.min_bytes_per_second, 0,
                  std::numeric_limits<std::int64_t>::max());
        u.integer("range_split_bytes", c.upstream.range_split_bytes, 0, std::int64_t{1} << 40);
        u.finish();
      }
    } else {
      r.fail("upstream", "missing (required for role " + std::string(role_name(c.role)) + ")");
    }
    if (const json* keys = r.get("trusted_keys")) {
      r.path_list("trusted_keys", *keys, c.trusted_keys, base, 64,
                  "must be a non-empty array of public key files");
    } else {
      r.fail("trusted_keys", "missing (required for role " + std::string(role_name(c.role)) + ")");
    }
    r.integer("threshold", c.threshold, 1, 64);
    if (!r.failed() && c.threshold > c.trusted_keys.size())
      r.fail("threshold", "is larger than the number of trusted_keys");
  }

  if (const json* g = r.get("guard")) {
    if (!g->is_object()) {
      r.fail("guard", "must be an object");
    } else {
      parse_guard(*g, c.role, c.guard, err);
    }
  }

  if (const json* sc = r.get("scrub")) {
    if (!sc->is_object()) {
      r.fail("scrub", "must be an object");
    } else {
      Reader sr(*sc, "scrub.", &err);
      sr.integer("mb_per_second", c.scrub.mb_per_second, 0, 100000);
      sr.finish();
    }
  }

  if (const json* ls = r.get("listen")) {
    if (!ls->is_array()) r.fail("listen", "must be an array");
    for (std::size_t i = 0; ls->is_array() && i < ls->size() && !r.failed(); ++i) {
      const json& l = (*ls)[i];
      std::string prefix = "listen[" + std::to_string(i) + "].";
      if (!l.is_object()) {
        r.fail("listen", "entry " + std::to_string(i) + " must be an object");
        break;
      }
      Reader lr(l, prefix, &err);
      ListenConfig lc;
      lr.string("address", lc.address, true);
      lr.integer("port", lc.port, 0, 65535);
      if (!lr.has("port")) lr.fail("port", "missing (required)");
      lr.boolean("tls", lc.tls);
      lr.path("tls_cert", lc.tls_cert, base);
      lr.path("tls_key", lc.tls_key, base);
      if (lc.tls && !lr.failed() && (lc.tls_cert.empty() || lc.tls_key.empty()))
        lr.fail("tls_cert", "tls_cert and tls_key are required unless \"tls\": false");
      lr.finish();
      c.listen.push_back(std::move(lc));
    }
  }
  if (const json* sv = r.get("serve")) {
    if (!sv->is_object()) {
      r.fail("serve", "must be an object");
    } else {
      Reader sr(*sv, "serve.", &err);
      constexpr std::int64_t kMax = 1'000'000;
      sr.integer("max_connections", c.serve.max_connections, 1, kMax);
      sr.integer("max_long_polls", c.serve.max_long_polls, 1, kMax);
      sr.integer("max_long_polls_per_address", c.serve.max_long_polls_per_address, 1, kMax);
      if (!sr.failed() && c.serve.max_long_polls > c.serve.max_connections)
        sr.fail("max_long_polls", "must not exceed serve.max_connections (" +
                                      std::to_string(c.serve.max_connections) + ")");
      if (!sr.failed() && c.serve.max_long_polls_per_address > c.serve.max_long_polls)
        sr.fail("max_long_polls_per_address", "must not exceed serve.max_long_polls (" +
                                                  std::to_string(c.serve.max_long_polls) + ")");
      sr.finish();
    }
  }
  if (c.role == Role::kTier1 && c.listen.empty() && !r.failed())
    r.fail("listen", "missing: a tier1 must listen");
  r.path("control_socket", c.control_socket, base);
  if (c.control_socket.empty() && !c.state_dir.empty())
    c.control_socket = c.state_dir / "control.sock";

  if (const json* lg = r.get("log")) {
    if (!lg->is_object()) {
      r.fail("log", "must be an object");
    } else {
      Reader lr(*lg, "log.", &err);
      lr.string("level", c.log.level);
      lr.string("format", c.log.format);
      static const std::set<std::string> kLevels = {"trace", "debug",    "info", "warn",
                                                    "error", "critical", "off"};
      if (!kLevels.count(c.log.level))
        lr.fail("level", "must be one of trace, debug, info, warn, error, critical, off");
      if (c.log.format != "text" && c.log.format != "json")
        lr.fail("format", "must be \"text\" or \"json\"");
      lr.finish();
    }
  }
  r.finish();
  if (!err.empty()) return make_error(where + err);

  if (inside(c.state_dir, c.tree))
    return make_error(where + "key \"state_dir\": must not lie inside tree (it would be served)");
  if (c.role == Role::kTier0) {
    if (inside(c.tree, c.source_dir) || inside(c.source_dir, c.tree))
      return make_error(where + "key \"source.dir\": must not overlap tree");
  }
  return c;
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

// The first certificate of `cert` (a PEM chain) and the private key in `key` form a pair: what
// the server will load at start or on SIGHUP, checked before it matters.
Status check_tls_pair(const fs::path& cert, const fs::path& key) {
  auto open = [](const fs::path& p) {
    return std::unique_ptr<BIO, decltype(&BIO_free)>(BIO_new_file(p.c_str(), "r"), &BIO_free);
  };
  auto cert_bio = open(cert);
  std::unique_ptr<X509, decltype(&X509_free)> x509(
      cert_bio ? PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr) : nullptr,
      &X509_free);
  if (!x509) return make_error("tls_cert " + cert.string() + ": not a PEM certificate");
  auto key_bio = open(key);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pkey(
      key_bio ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr) : nullptr,
      &EVP_PKEY_free);
  ERR_clear_error();
  if (!pkey) return make_error("tls_key " + key.string() + ": not a PEM private key");
  const bool match = X509_check_private_key(x509.get(), pkey.get()) == 1;
  ERR_clear_error();
  if (!match)
    return make_error("tls_key " + key.string() + " does not match tls_cert " + cert.string());
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
