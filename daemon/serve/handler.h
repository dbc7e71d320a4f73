#pragma once
/// Request handling as a pure function of (request, view): routing, path confinement, conditional
/// and range requests. No sockets here: server.cpp moves the bytes, tests call it directly.

#include <chrono>
#include <cstdint>
#include <ctime>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "daemon/base/fd.h"
#include "daemon/serve/http_codecs.h"
#include "daemon/serve/server.h"

namespace tiersync::serve {

/// The parts of a request that matter here (views into the parsed request).
struct Request {
  std::string_view method;
  std::string_view target;
  std::string_view if_none_match;
  std::string_view if_modified_since;
  std::string_view if_range;
  std::string_view range;
  bool waited = false;  ///< a long-poll already waited: answer now, whatever the serial
};

/// "Hold this request until the serial exceeds `after` or `wait` passes, then ask again."
struct LongPoll {
  std::uint64_t after = 0;
  std::chrono::seconds wait{0};
};

struct Response {
  unsigned status = 200;
  std::vector<std::pair<std::string, std::string>> fields;
  /// Content-Length; unset for 304 (no body, and no promise about one).
  std::optional<std::uint64_t> content_length;
  std::string body;  ///< the body when `file` is not open
  /// A file body: `content_length` bytes from `file_offset`, read in chunks as they are sent.
  base::UniqueFd file;
  std::uint64_t file_offset = 0;
  std::optional<LongPoll> poll;

  void set(std::string name, std::string value) {
    if (fields.empty()) fields.reserve(8);  // a file response sets six
    fields.emplace_back(std::move(name), std::move(value));
  }
  /// The value of field `name` (exact case), or "".
  std::string_view field(std::string_view name) const;
};

/// Descriptors of the tree's folders, each opened once without following a symlink on the way,
/// so that a request opens only its file. Thread-safe. Cleared when a new view is published: an
/// apply may have removed or replaced folders (a removed one only makes its files 404 until then).
class DirCache {
 public:
  /// Keeps at most `max_dirs` folders open (more: cleared and filled again).
  explicit DirCache(fs::path tree, std::size_t max_dirs = 4096)
      : tree_(std::move(tree)), max_dirs_(max_dirs) {}
  /// Opens `rel` (a tree path) like open_beneath(), its folder from the cache.
  Result<base::UniqueFd> open_file(std::string_view rel);
  void clear();
  const fs::path& tree() const { return tree_; }

 private:
  /// The folder `dir` ("" is the tree), opened through its cached parent; -1 with errno set.
  std::shared_ptr<base::UniqueFd> folder(const std::string& dir);

  fs::path tree_;
  std::size_t max_dirs_;
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<base::UniqueFd>> dirs_;
};

/// What handling needs besides the view.
struct HandlerContext {
  fs::path tree;
  std::shared_ptr<DirCache> dirs;  ///< folders of `tree`; null: each request walks from the top
  std::chrono::seconds max_wait{300};
  /// The server's own counters in Prometheus text, appended to /metrics.
  std::function<std::string()> server_metrics;
};

/// Answers one request from `view`; only GET and HEAD exist. HEAD gets GET's fields; the caller
/// omits the body.
Response handle_request(const Request& request, const ServedView& view,
                        const HandlerContext& context);

// The pieces, exposed for server.cpp and tests.

/// A short text/plain response (errors).
Response text_response(unsigned status, std::string_view text);

/// The path of the file entry that serves tree path `path`: symlink entries of the view (of the
/// file or of a folder on the way) are followed lexically, never the file system's, at most 16
/// hops, and every step stays a valid tree path. nullopt: not served.
std::optional<std::string> resolve_in_view(const ServedView& view, std::string path);

/// Opens `rel` below `tree` without following any symlink on the way (O_NOFOLLOW at every
/// component); returns the descriptor of a regular file, or the errno.
Result<base::UniqueFd> open_beneath(const fs::path& tree, std::string_view rel);

/// The status line and header fields of `res` as sent, ending with the empty line: Server, Date
/// (`now`), the response's fields, Content-Length when set, and Connection where the version's
/// default differs from `keep_alive`. Field values are the handler's own (no CR or LF).
std::string serialize_head(const Response& res, unsigned version, bool keep_alive, std::time_t now);
}  // namespace tiersync::serve
