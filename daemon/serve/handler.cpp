// Request handling (docs/protocol.md, "HTTP endpoints"): a pure function of (request, view) naming
// the bytes to send. Nothing outside the applied snapshot is ever named: a tree path is served only
// when the view's manifests list it, and the file is opened without following a symlink on the way.

#include "daemon/serve/handler.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "proto/path.h"
#include "proto/wire.h"

namespace tiersync::serve {

namespace {

constexpr int kMaxLinkHops = 16;
/// Manifests are content-addressed: a URL's bytes never change.
constexpr std::string_view kImmutable = "public, max-age=31536000, immutable";
/// How long a client without a snapshot to fetch should wait before asking again.
constexpr std::string_view kRetryAfterSeconds = "60";

Response body_response(std::string body, std::string content_type, std::string cache_control) {
  Response r;
  r.set("Content-Type", std::move(content_type));
  r.set("Cache-Control", std::move(cache_control));
  r.body = std::move(body);
  r.content_length = r.body.size();
  return r;
}

Response not_found() {
  return text_response(404, "not found");
}

std::string_view content_type_of(std::string_view path) {
  auto ends_with = [&](std::string_view suffix) { return path.ends_with(suffix); };
  if (ends_with(".json")) return "application/json";
  if (ends_with(".xml")) return "application/xml";
  if (ends_with(".txt")) return "text/plain; charset=utf-8";
  return "application/octet-stream";
}

// A served file, opened without following symlinks: through the server's folder cache, or
// walking from the top where the context has none.
Result<base::UniqueFd> open_served(const HandlerContext& ctx, std::string_view rel) {
  return ctx.dirs ? ctx.dirs->open_file(rel) : open_beneath(ctx.tree, rel);
}

/// A strong entity tag from a content hash: the quoted lowercase hex SHA-256.
std::string etag_of(const proto::Digest& d) {
  return "\"" + proto::to_hex(d) + "\"";
}

/// A regular file as the response: conditional requests, then a single range. `etag` is the
/// content's SHA-256 (etag_of); empty when the bytes on disk are not known to be the entry's
/// (no ETag is sent then, If-None-Match never matches and If-Range sends the whole file).
Response file_response(const Request& req, base::UniqueFd fd, std::string_view content_type,
                       std::string etag, std::string_view cache_control) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return not_found();
  const auto size = static_cast<std::uint64_t>(st.st_size);
  const std::string last_modified = http_date(st.st_mtime);
  auto validators = [&](Response& r) {
    if (!etag.empty()) r.set("ETag", etag);
    r.set("Last-Modified", last_modified);
    if (!cache_control.empty()) r.set("Cache-Control", std::string(cache_control));
  };

  // RFC 9110 13.2.2: If-None-Match decides when present; If-Modified-Since only without it.
  bool not_modified = false;
  if (!req.if_none_match.empty()) {
    not_modified = !etag.empty() && etag_matches(req.if_none_match, etag);
  } else if (!req.if_modified_since.empty()) {
    auto since = parse_http_date(req.if_modified_since);
    not_modified = since && st.st_mtime <= *since;
  }
  if (not_modified) {
    Response r;
    r.status = 304;
    validators(r);
    return r;
  }

  // Range applies to GET only (RFC 9110 14.2); an invalid or multi-range header is ignored and the
  // whole file sent, which the RFC allows and every client handles.
  ByteRange range;
  if (req.method == "GET" && !req.range.empty() && if_range_allows(req.if_range, etag))
    range = parse_range(req.range, size);

  if (range.kind == ByteRange::kUnsatisfiable) {
    Response r = text_response(416, "range not satisfiable");
    r.set("Content-Range", "bytes */" + std::to_string(size));
    return r;
  }
  Response r;
  validators(r);
  r.set("Accept-Ranges", "bytes");
  r.set("Content-Type", std::string(content_type));
  if (range.kind == ByteRange::kSingle) {
    r.status = 206;
    r.set("Content-Range", "bytes " + std::to_string(range.first) + "-" +
                               std::to_string(range.last) + "/" + std::to_string(size));
    r.file_offset = range.first;
    r.content_length = range.last - range.first + 1;
  } else {
    r.content_length = size;
  }
  r.file = std::move(fd);
  return r;
}

/// A tree file's ETag: its SHA-256 from the applied manifest, so that a changed file always gets
/// a new one (mtime and size may stay the same). An apply installs files before its view is
/// published: a file on disk whose size or mtime is not the entry's is such a newer file, and
/// gets no ETag rather than the old content's.
std::string tree_file_etag(const ServedView& view, const std::string& path,
                           const base::UniqueFd& fd) {
  const proto::Entry* e = view.find(path);
  struct stat st {};
  if (!e || e->link || ::fstat(fd.get(), &st) != 0 ||
      static_cast<std::uint64_t>(st.st_size) != e->size || st.st_mtime != e->mtime)
    return {};
  return etag_of(e->sha256);
}

struct SnapshotQuery {
  std::optional<std::uint64_t> after;
  std::optional<std::uint64_t> wait;
  bool bad = false;
};

SnapshotQuery parse_snapshot_query(std::string_view query) {
  SnapshotQuery q;
  std::size_t start = 0;
  while (start <= query.size() && !q.bad) {  // bounded: start grows every turn
    std::size_t amp = query.find('&', start);
    if (amp == std::string_view::npos) amp = query.size();
    std::string_view part = query.substr(start, amp - start);
    start = amp + 1;
    std::size_t eq = part.find('=');
    std::string_view key = part.substr(0, eq);
    std::string_view value = eq == std::string_view::npos ? "" : part.substr(eq + 1);
    if (key == "after" || key == "wait") {
      auto v = parse_uint(value);
      if (!v) q.bad = true;
      (key == "after" ? q.after : q.wait) = v;
    }  // other parameters (cache busters) are ignored
  }
  return q;
}

Response no_snapshot() {
  Response r = text_response(503, "no snapshot applied yet");
  r.set("Retry-After", std::string(kRetryAfterSeconds));
  return r;
}

Response snapshot_response(const Request& req, std::string_view query, const ServedView& view,
                           const HandlerContext& ctx) {
  SnapshotQuery q = parse_snapshot_query(query);
  if (q.bad) return text_response(400, "bad query: after and wait take a decimal number");
  const std::string etag = "\"" + std::to_string(view.serial) + "\"";
  auto full = [&] {
    Response r = body_response(view.envelope, "application/json", "no-cache");
    r.set("ETag", etag);
    return r;
  };
  auto unchanged = [&] {
    Response r;
    r.status = 304;
    r.set("ETag", etag);
    r.set("Cache-Control", "no-cache");
    return r;
  };
  if (q.after) {
    // Long-poll: a child that has serial N asks for anything newer.
    if (view.serial > *q.after) return full();
    if (!req.waited && q.wait.value_or(0) > 0) {
      Response r;
      const auto max = static_cast<std::uint64_t>(ctx.max_wait.count());
      r.poll = LongPoll{*q.after, std::chrono::seconds(std::min(*q.wait, max))};
      return r;
    }
    return view.serial == 0 ? no_snapshot() : unchanged();
  }
  if (view.serial == 0) return no_snapshot();
  if (!req.if_none_match.empty() && etag_matches(req.if_none_match, etag)) return unchanged();
  return full();
}

Response manifest_response(const Request& req, std::string_view hex, const ServedView& view,
                           const HandlerContext& ctx) {
  auto digest = proto::digest_from_hex(hex);
  if (!digest || !view.serves_manifest(*digest)) return not_found();
  std::string etag = etag_of(*digest);
  if (!req.if_none_match.empty() && etag_matches(req.if_none_match, etag)) {
    Response r;
    r.status = 304;
    r.set("ETag", etag);
    r.set("Cache-Control", std::string(kImmutable));
    return r;
  }
  const std::string rel = proto::wire::manifest_path(*digest);
  auto fd = open_served(ctx, rel);
  if (!fd) return not_found();
  return file_response(req, std::move(*fd), "application/json", std::move(etag), kImmutable);
}

/// The pins of the served serial or of the one before (docs/protocol.md, "Pins"); 404 for any
/// other serial and for a serial without pins. They change when an approval is applied at the
/// same serial: never cached without asking.
Response pins_response(std::string_view serial_text, const ServedView& view) {
  auto serial = parse_uint(serial_text);
  if (!serial || std::to_string(*serial) != serial_text || *serial == 0) return not_found();
  const std::string* doc = *serial == view.serial            ? &view.pins
                           : *serial == view.previous_serial ? &view.previous_pins
                                                             : nullptr;
  if (!doc || doc->empty()) return not_found();
  return body_response(*doc, "application/json", "no-cache");
}

/// Joins a symlink's folder and its relative target lexically; nullopt when it climbs above the
/// tree's top or is absolute.
std::optional<std::string> join_lexically(std::string_view dir, std::string_view target) {
  if (!target.empty() && target.front() == '/') return std::nullopt;
  std::vector<std::string_view> parts;
  for (std::string_view s : {dir, target}) {
    std::size_t start = 0;
    while (start <= s.size()) {  // bounded: start grows every turn
      std::size_t slash = s.find('/', start);
      if (slash == std::string_view::npos) slash = s.size();
      std::string_view comp = s.substr(start, slash - start);
      start = slash + 1;
      if (comp.empty() || comp == ".") continue;
      if (comp == "..") {
        if (parts.empty()) return std::nullopt;
        parts.pop_back();
        continue;
      }
      parts.push_back(comp);
    }
  }
  std::string out;
  for (auto p : parts) {
    if (!out.empty()) out += '/';
    out += p;
  }
  return out;
}

std::string_view parent_of(std::string_view path) {
  std::size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? std::string_view() : path.substr(0, slash);
}

}  // namespace

Response text_response(unsigned status, std::string_view text) {
  Response r;
  r.status = status;
  r.set("Content-Type", "text/plain; charset=utf-8");
  r.body = std::string(text) + "\n";
  r.content_length = r.body.size();
  return r;
}

std::string_view Response::field(std::string_view name) const {
  for (const auto& [k, v] : fields)
    if (k == name) return v;
  return {};
}

std::optional<std::string> resolve_in_view(const ServedView& view, std::string path) {
  for (int hop = 0; hop <= kMaxLinkHops; ++hop) {
    if (proto::path_error(path)) return std::nullopt;
    if (const proto::Entry* e = view.find(path)) {
      if (!e->link) return path;
      auto next = join_lexically(parent_of(path), e->target());
      if (!next) return std::nullopt;
      path = std::move(*next);
      continue;
    }
    // Not an entry itself: a symlink entry to a folder may stand on the way
    // (`latest-stable/main/x86_64/APKINDEX.tar.gz`), the first one counts.
    std::optional<std::string> next;
    for (std::size_t slash = path.find('/'); slash != std::string::npos;
         slash = path.find('/', slash + 1)) {
      std::string_view prefix = std::string_view(path).substr(0, slash);
      const proto::Entry* e = view.find(prefix);
      if (!e) continue;
      if (!e->link) return std::nullopt;  // a file has no children
      auto target = join_lexically(parent_of(prefix), e->target());
      if (!target) return std::nullopt;
      next = target->empty() ? path.substr(slash + 1) : *target + path.substr(slash);
      break;
    }
    if (!next) return std::nullopt;
    path = std::move(*next);
  }
  return std::nullopt;  // a loop, or a chain too long to be honest
}

Result<base::UniqueFd> open_beneath(const fs::path& tree, std::string_view rel) {
  return DirCache(tree).open_file(rel);  // the same walk, with nothing kept afterwards
}

std::shared_ptr<base::UniqueFd> DirCache::folder(const std::string& dir) {
  {
    std::lock_guard lock(mu_);
    if (auto it = dirs_.find(dir); it != dirs_.end()) return it->second;
  }
  auto fd = std::make_shared<base::UniqueFd>();
  if (dir.empty()) {
    *fd = base::UniqueFd(::open(tree_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  } else {
    const std::size_t slash = dir.rfind('/');
    const std::string parent = slash == std::string::npos ? std::string() : dir.substr(0, slash);
    const std::string name = slash == std::string::npos ? dir : dir.substr(slash + 1);
    auto up = folder(parent);
    if (!up->valid()) return up;
    *fd = base::open_dir_beneath(up->get(), name);  // the one folder walk, one step of it
  }
  if (!fd->valid()) return fd;  // not cached: it may appear with the next apply
  const int saved = errno;
  std::lock_guard lock(mu_);
  if (dirs_.size() >= max_dirs_) dirs_.clear();
  dirs_.emplace(dir, fd);  // a racing thread's copy may win: both are the same folder
  errno = saved;
  return fd;
}

Result<base::UniqueFd> DirCache::open_file(std::string_view rel) {
  const std::size_t slash = rel.rfind('/');
  const std::string dir(slash == std::string_view::npos ? std::string_view()
                                                        : rel.substr(0, slash));
  const std::string name(slash == std::string_view::npos ? rel : rel.substr(slash + 1));
  auto parent = folder(dir);
  if (!parent->valid()) return make_error(base::errno_message(tree_ / rel, errno));
  // O_NOFOLLOW: a symlink planted in the tree is never followed. O_NONBLOCK: opening a FIFO must
  // not block the server thread; it is refused as not regular below.
  base::UniqueFd fd(
      ::openat(parent->get(), name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd.valid()) return make_error(base::errno_message(tree_ / rel, errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return make_error(base::errno_message(tree_ / rel, errno));
  if (!S_ISREG(st.st_mode)) return make_error((tree_ / rel).string() + ": not a regular file");
  return fd;
}

void DirCache::clear() {
  std::lock_guard lock(mu_);
  dirs_.clear();
}

namespace {

std::string_view reason_phrase(unsigned status) {
  switch (status) {
    case 200:
      return "OK";
    case 206:
      return "Partial Content";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 416:
      return "Range Not Satisfiable";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Unknown";
  }
}

// The Date field's value, formatted once a second per thread.
const std::string& cached_date(std::time_t now) {
  thread_local std::time_t second = -1;
  thread_local std::string text;
  if (now != second) {
    text = http_date(now);
    second = now;
  }
  return text;
}

}  // namespace

std::string serialize_head(const Response& res, unsigned version, bool keep_alive,
                           std::time_t now) {
  std::string out;
  out.reserve(256);
  out += version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
  out += std::to_string(res.status);
  out += ' ';
  out += reason_phrase(res.status);
  out += "\r\nServer: tiersync\r\nDate: ";
  out += cached_date(now);
  out += "\r\n";
  for (const auto& [name, value] : res.fields) {
    out += name;
    out += ": ";
    out += value;
    out += "\r\n";
  }
  if (res.content_length) {
    out += "Content-Length: ";
    out += std::to_string(*res.content_length);
    out += "\r\n";
  }
  if (version >= 11 && !keep_alive) out += "Connection: close\r\n";
  if (version < 11 && keep_alive) out += "Connection: keep-alive\r\n";
  out += "\r\n";
  return out;
}

Response handle_request(const Request& req, const ServedView& view, const HandlerContext& ctx) {
  if (req.method != "GET" && req.method != "HEAD") {
    Response r = text_response(405, "method not allowed");
    r.set("Allow", "GET, HEAD");
    return r;
  }
  // Origin-form only ("/path?query"); absolute-form is for proxies, "*" for OPTIONS.
  if (req.target.empty() || req.target.front() != '/')
    return text_response(400, "bad request target");
  const std::size_t qmark = req.target.find('?');
  const std::string_view raw_path = req.target.substr(0, qmark);
  const std::string_view query =
      qmark == std::string_view::npos ? std::string_view() : req.target.substr(qmark + 1);

  // Decode once, then validate the decoded path: `%2e%2e` becomes `..` and is refused below;
  // `%252e` stays the literal `%2e`. NUL (`%00`) never reaches a system call.
  auto decoded = proto::percent_decode(raw_path);
  if (!decoded) return text_response(400, "bad percent-encoding in path");
  const std::string_view rel = std::string_view(*decoded).substr(1);

  if (rel == proto::wire::kSnapshot) return snapshot_response(req, query, view, ctx);
  if (rel.starts_with(proto::wire::kManifestsPrefix))
    return manifest_response(req, rel.substr(proto::wire::kManifestsPrefix.size()), view, ctx);
  if (rel == proto::wire::kStatus)
    return body_response(view.status_json, "application/json", "no-store");
  if (rel.starts_with(proto::wire::kPinsPrefix))
    return pins_response(rel.substr(proto::wire::kPinsPrefix.size()), view);
  if (rel == proto::wire::kApprovals)
    return view.approvals.empty() ? not_found()
                                  : body_response(view.approvals, "application/json", "no-store");
  if (rel == proto::wire::kMetrics) {
    std::string text = view.metrics ? view.metrics() : std::string();
    if (!text.empty() && text.back() != '\n') text += '\n';
    if (ctx.server_metrics) text += ctx.server_metrics();
    return body_response(std::move(text), "text/plain; version=0.0.4; charset=utf-8", "no-store");
  }
  // `.tiersync/` is never content: staging and everything else below it stays private.
  if (rel == proto::kMetaDir || rel.starts_with(std::string(proto::kMetaDir) + "/"))
    return not_found();
  if (rel.empty() || rel.back() == '/') return not_found();  // no folder listings
  if (auto error = proto::path_error(rel)) return text_response(400, "bad path: " + *error);

  auto file = resolve_in_view(view, std::string(rel));
  if (!file) return not_found();
  // Missing on disk: removed by an apply in progress, whose view is not published yet.
  auto fd = open_served(ctx, *file);
  if (!fd) return not_found();
  return file_response(req, std::move(*fd), content_type_of(*file),
                       tree_file_etag(view, *file, *fd), {});
}

}  // namespace tiersync::serve
