// A request as the server hands it to handle_request: the method, the request-target (path,
// percent-escapes, the long poll's query) and the header fields tiersync reads. The input holds
// them one per line: method, target, If-None-Match, If-Modified-Since, If-Range, Range, and a
// last line "waited" for a long poll that already waited. The view is fixed: a small tree of
// depth 3 with files, symlinks (to a file, to a folder, in a loop), and a manifest.
//
// Properties: only GET and HEAD succeed; no header field carries CR, LF or NUL (a target must
// not inject a header); a file body lies inside its file; a string body matches its length; a
// long poll never waits longer than the server's maximum; the serialized head ends once.

#include <sys/stat.h>
#include <sys/time.h>

#include <algorithm>
#include <fstream>

#include "daemon/serve/handler.h"
#include "proto/digest.h"
#include "proto/manifest.h"
#include "tests/fuzz/fuzz.h"

namespace {

using namespace tiersync;
namespace fs = std::filesystem;

constexpr std::time_t kMtime = 1700000000;  // "Tue, 14 Nov 2023 22:13:20 GMT": seeds name it

void write(const fs::path& file, std::string_view content) {
  fs::create_directories(file.parent_path());
  std::ofstream(file, std::ios::binary).write(content.data(), std::streamsize(content.size()));
  const struct timeval times[2] = {{kMtime, 0}, {kMtime, 0}};
  ::utimes(file.c_str(), times);
}

proto::Entry file(std::string path, std::string_view content) {
  return proto::Entry::file(path, content.size(), proto::sha256(content), kMtime, 0644);
}

std::shared_ptr<proto::Manifest> manifest(std::string partition, std::vector<proto::Entry> e) {
  auto m = std::make_shared<proto::Manifest>();
  m->partition = std::move(partition);
  m->entries = std::move(e);
  std::sort(m->entries.begin(), m->entries.end(),
            [](const proto::Entry& a, const proto::Entry& b) { return a.path() < b.path(); });
  return m;
}

struct Fixture {
  serve::ServedView view;
  serve::HandlerContext plain;   // walks from the top
  serve::HandlerContext cached;  // through the folder cache
  Fixture() {
    const fs::path tree = fuzz::scratch_dir() / "tree";
    write(tree / "edge/main/x86_64/a.apk", "0123456789");
    write(tree / "edge/main/x86_64/APKINDEX.tar.gz", "index");
    write(tree / "edge/main/x86_64/secret.apk", "not listed");
    write(tree / "README", "readme\n");
    write(tree / ".tiersync/staging/edge/main/x86_64/a.apk", "staged");
    std::error_code ec;
    fs::create_symlink("/etc", tree / "edge/main/x86_64/planted", ec);
    view.envelope = "{\"envelope\": true}";
    view.serial = 5;
    view.depth = 3;
    view.status_json = "{\"serial\": 5}";
    view.metrics = [] { return std::string("tiersync_fuzz 1"); };
    view.manifests["edge/main/x86_64"] =
        manifest("edge/main/x86_64",
                 {file("edge/main/x86_64/a.apk", "0123456789"),
                  file("edge/main/x86_64/APKINDEX.tar.gz", "index"),
                  proto::Entry::symlink("edge/main/x86_64/b.apk", "a.apk"),
                  proto::Entry::symlink("edge/main/x86_64/loop1", "loop2"),
                  proto::Entry::symlink("edge/main/x86_64/loop2", "loop1"),
                  proto::Entry::symlink("edge/main/x86_64/escape", "../../../../etc/passwd"),
                  file("edge/main/x86_64/planted", "x")});
    view.manifests["."] =
        manifest(".", {proto::Entry::symlink("latest-stable", "edge"), file("README", "readme\n")});
    const std::string bytes = proto::encode_manifest(*view.manifests["edge/main/x86_64"]);
    const proto::Digest digest = proto::sha256(bytes);
    view.manifest_hashes.insert(digest);
    write(tree / ".tiersync/v1/manifests" / proto::to_hex(digest), bytes);
    plain.tree = cached.tree = tree;
    cached.dirs = std::make_shared<serve::DirCache>(tree);
    plain.max_wait = cached.max_wait = std::chrono::seconds(300);
    plain.server_metrics = cached.server_metrics = [] { return std::string("tiersync_http 2\n"); };
  }
};

bool clean(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Fixture fx;
  const auto f = fuzz::fields(fuzz::bytes(data, size), '\n', 7);
  serve::Request req;
  req.method = f[0];
  req.target = f[1];
  req.if_none_match = f[2];
  req.if_modified_since = f[3];
  req.if_range = f[4];
  req.range = f[5];
  req.waited = f[6].starts_with("waited");
  const bool use_cache = size % 2 == 0;
  const serve::Response res = serve::handle_request(req, fx.view, use_cache ? fx.cached : fx.plain);

  FUZZ_CHECK(res.status >= 200 && res.status < 600);
  if (req.method != "GET" && req.method != "HEAD") FUZZ_CHECK(res.status == 405);
  for (const auto& [name, value] : res.fields) FUZZ_CHECK(clean(name) && clean(value));
  if (res.poll) {
    FUZZ_CHECK(res.poll->wait.count() > 0 && res.poll->wait <= fx.plain.max_wait);
    return 0;
  }
  if (res.file.valid()) {
    struct stat st {};
    FUZZ_CHECK(::fstat(res.file.get(), &st) == 0 && S_ISREG(st.st_mode));
    FUZZ_CHECK(res.content_length.has_value());
    FUZZ_CHECK(res.file_offset + *res.content_length <= static_cast<std::uint64_t>(st.st_size));
    if (res.status == 206) FUZZ_CHECK(!res.field("Content-Range").empty());
  } else if (res.content_length) {
    FUZZ_CHECK(*res.content_length == res.body.size());
  }
  const std::string head = serve::serialize_head(res, 11, true, kMtime);
  FUZZ_CHECK(head.ends_with("\r\n\r\n") && head.find("\r\n\r\n") == head.size() - 4);
  return 0;
}
