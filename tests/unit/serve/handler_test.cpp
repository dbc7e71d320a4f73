// handle_request() and its pieces, without sockets: routing, confinement, conditional and range
// requests, the long-poll decision, and load_view() from a real state_dir.

#include "daemon/serve/handler.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <string>

#include "daemon/serve/server.h"
#include "daemon/sync/state.h"
#include "proto/dsse.h"
#include "proto/manifest.h"
#include "proto/snapshot.h"
#include "tests/unit/support.h"

namespace tiersync::serve {
namespace {

using unit::file_entry;
using unit::manifest;
using unit::write_file;

/// The mtime of the served files, on disk and in their entries.
constexpr std::int64_t kMtime = 1732500000;

void set_mtime(const fs::path& file) {
  const timespec times[2] = {{kMtime, 0}, {kMtime, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, file.c_str(), times, 0), 0) << file;
}

/// The entry of a file as an apply leaves it: the disk's size and mtime.
proto::Entry served_entry(std::string path, std::string_view content) {
  return proto::Entry::file(std::move(path), content.size(), proto::sha256(content), kMtime, 0644);
}

/// A tree of depth 3 with a file, a file symlink, a folder symlink and symlinks that must not
/// resolve; files on disk as the view says, plus things the view does not list.
class ServerHandlerTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = unit::make_temp_dir("handler_test");
    ASSERT_FALSE(dir_.empty());
    tree_ = dir_ / "tree";
    write_file(tree_ / "edge/main/x86_64/a.apk", "0123456789");
    set_mtime(tree_ / "edge/main/x86_64/a.apk");
    write_file(tree_ / "edge/main/x86_64/secret.apk", "not listed");
    write_file(tree_ / ".tiersync/staging/edge/main/x86_64/a.apk", "staged");
    fs::create_symlink("/etc", tree_ / "edge/main/x86_64/planted");

    view_.envelope = "{\"envelope\": true}";
    view_.serial = 5;
    view_.depth = 3;
    view_.status_json = "{\"serial\": 5}";
    view_.metrics = [] { return std::string("tiersync_test 1"); };
    view_.manifests["edge/main/x86_64"] =
        manifest("edge/main/x86_64",
                 {served_entry("edge/main/x86_64/a.apk", "0123456789"),
                  proto::Entry::symlink("edge/main/x86_64/b.apk", "a.apk"),
                  proto::Entry::symlink("edge/main/x86_64/loop1", "loop2"),
                  proto::Entry::symlink("edge/main/x86_64/loop2", "loop1"),
                  // Not valid in a decoded manifest; the resolver must refuse it all the same.
                  proto::Entry::symlink("edge/main/x86_64/escape", "../../../../etc/passwd"),
                  file_entry("edge/main/x86_64/planted", "x")});
    view_.manifests["."] =
        manifest(".", {proto::Entry::symlink("latest-stable", "edge"), file_entry("README", "r")});
    manifest_bytes_ = proto::encode_manifest(*view_.manifests["edge/main/x86_64"]);
    manifest_digest_ = proto::sha256(manifest_bytes_);
    view_.manifest_hashes.insert(manifest_digest_);
    write_file(tree_ / ".tiersync/v1/manifests" / proto::to_hex(manifest_digest_), manifest_bytes_);

    context_.tree = tree_;
    context_.max_wait = std::chrono::seconds(300);
    context_.server_metrics = [] { return std::string("tiersync_http_test 2\n"); };
  }
  void TearDown() override { fs::remove_all(dir_); }

  Response get(std::string_view target, std::string_view method = "GET") {
    Request r;
    r.method = method;
    r.target = target;
    return handle_request(r, view_, context_);
  }

  /// The body a response would send (string or file range).
  static std::string body_of(const Response& r) {
    if (!r.file.valid()) return r.body;
    std::string out(r.content_length.value_or(0), '\0');
    ssize_t got = ::pread(r.file.get(), out.data(), out.size(), static_cast<off_t>(r.file_offset));
    out.resize(got < 0 ? 0 : static_cast<std::size_t>(got));
    return out;
  }

  fs::path dir_;
  fs::path tree_;
  ServedView view_;
  HandlerContext context_;
  std::string manifest_bytes_;
  proto::Digest manifest_digest_{};
};

TEST(ServerHandler, SerializesTheHead) {
  Response r;
  r.status = 206;
  r.set("ETag", "\"abc\"");
  r.content_length = 10;
  EXPECT_EQ(serialize_head(r, 11, true, 784111777),
            "HTTP/1.1 206 Partial Content\r\nServer: tiersync\r\n"
            "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nETag: \"abc\"\r\nContent-Length: 10\r\n\r\n");
  // Connection only where the version's default differs; a 304 announces no length.
  Response nm;
  nm.status = 304;
  EXPECT_EQ(serialize_head(nm, 11, false, 0),
            "HTTP/1.1 304 Not Modified\r\nServer: tiersync\r\n"
            "Date: Thu, 01 Jan 1970 00:00:00 GMT\r\nConnection: close\r\n\r\n");
  EXPECT_NE(serialize_head(nm, 10, true, 0).find("Connection: keep-alive\r\n"), std::string::npos);
  EXPECT_EQ(serialize_head(nm, 10, false, 0).find("Connection"), std::string::npos);
}

TEST_F(ServerHandlerTest, ResolvesSymlinksOfTheViewOnly) {
  EXPECT_EQ(resolve_in_view(view_, "edge/main/x86_64/a.apk"), "edge/main/x86_64/a.apk");
  EXPECT_EQ(resolve_in_view(view_, "edge/main/x86_64/b.apk"), "edge/main/x86_64/a.apk");
  EXPECT_EQ(resolve_in_view(view_, "latest-stable/main/x86_64/b.apk"), "edge/main/x86_64/a.apk");
  EXPECT_EQ(resolve_in_view(view_, "edge/main/x86_64/loop1"), std::nullopt);
  EXPECT_EQ(resolve_in_view(view_, "edge/main/x86_64/escape"), std::nullopt);
  EXPECT_EQ(resolve_in_view(view_, "edge/main/x86_64/secret.apk"), std::nullopt);
  EXPECT_EQ(resolve_in_view(view_, "README/x"), std::nullopt);  // a file has no children
}

TEST_F(ServerHandlerTest, ServesFilesOfTheView) {
  Response r = get("/edge/main/x86_64/a.apk");
  EXPECT_EQ(r.status, 200u);
  EXPECT_EQ(r.content_length, 10u);
  EXPECT_EQ(body_of(r), "0123456789");
  EXPECT_EQ(r.field("Accept-Ranges"), "bytes");
  EXPECT_FALSE(r.field("Last-Modified").empty());
  EXPECT_FALSE(r.field("ETag").empty());
  EXPECT_EQ(body_of(get("/latest-stable/main/x86_64/b.apk")), "0123456789");
  EXPECT_EQ(body_of(get("/edge%2fmain/x86_64/a.apk")), "0123456789");  // %2f decodes to '/'
  EXPECT_EQ(get("/edge/main/x86_64/a.apk", "HEAD").status, 200u);
}

TEST_F(ServerHandlerTest, ServesNothingElse) {
  EXPECT_EQ(get("/edge/main/x86_64/secret.apk").status, 404u);  // on disk, not in the view
  EXPECT_EQ(get("/edge/main/x86_64/planted").status, 404u);     // a symlink on disk
  EXPECT_EQ(get("/edge/main/x86_64/planted/passwd").status, 404u);
  EXPECT_EQ(get("/.tiersync/staging/edge/main/x86_64/a.apk").status, 404u);
  EXPECT_EQ(get("/.tiersync/v1/../staging/x").status, 404u);
  EXPECT_EQ(get("/../etc/passwd").status, 400u);
  EXPECT_EQ(get("/edge/../../etc/passwd").status, 400u);
  EXPECT_EQ(get("/%2e%2e/etc/passwd").status, 400u);
  EXPECT_EQ(get("/edge/main/x86_64/a.apk%00.txt").status, 400u);
  EXPECT_EQ(get("/edge//main/x86_64/a.apk").status, 400u);
  EXPECT_EQ(get("/edge/main/").status, 404u);
  EXPECT_EQ(get("/").status, 404u);
  EXPECT_EQ(get("http://example.org/edge/main/x86_64/a.apk").status, 400u);
  EXPECT_EQ(get("/%ff%fe").status, 400u);  // not UTF-8
  Response r = get("/edge/main/x86_64/a.apk", "POST");
  EXPECT_EQ(r.status, 405u);
  EXPECT_EQ(r.field("Allow"), "GET, HEAD");
}

// The server's folder cache: the same refusals, and a folder swapped for a symlink is never
// followed, neither before it was cached nor after.
TEST_F(ServerHandlerTest, FolderCacheServesTheSameAndFollowsNoSymlink) {
  context_.dirs = std::make_shared<DirCache>(tree_);
  EXPECT_EQ(body_of(get("/edge/main/x86_64/a.apk")), "0123456789");
  EXPECT_EQ(body_of(get("/latest-stable/main/x86_64/b.apk")), "0123456789");
  EXPECT_EQ(get("/edge/main/x86_64/planted").status, 404u);
  EXPECT_EQ(get("/edge/main/x86_64/planted/passwd").status, 404u);
  EXPECT_EQ(get("/edge/main/x86_64/secret.apk").status, 404u);
  EXPECT_EQ(get("/.tiersync/staging/edge/main/x86_64/a.apk").status, 404u);
  EXPECT_EQ(get("/.tiersync/v1/manifests/" + proto::to_hex(manifest_digest_)).status, 200u);

  // edge/main becomes a symlink to a folder holding a different a.apk: the cached descriptor
  // still names the real folder, which is gone from the tree, so nothing follows the link.
  write_file(dir_ / "elsewhere/x86_64/a.apk", "9876543210");
  fs::rename(tree_ / "edge/main", dir_ / "old-main");
  fs::create_symlink(dir_ / "elsewhere", tree_ / "edge/main");
  Response cached = get("/edge/main/x86_64/a.apk");
  EXPECT_NE(body_of(cached), "9876543210");
  // Cleared (a new view): the walk refuses the symlinked folder.
  context_.dirs->clear();
  EXPECT_EQ(get("/edge/main/x86_64/a.apk").status, 404u);
  // The real folder back: served again, including after a miss (misses are not cached).
  fs::remove(tree_ / "edge/main");
  fs::rename(dir_ / "old-main", tree_ / "edge/main");
  EXPECT_EQ(body_of(get("/edge/main/x86_64/a.apk")), "0123456789");
}

TEST_F(ServerHandlerTest, ConditionalAndRangeRequests) {
  Response full = get("/edge/main/x86_64/a.apk");
  std::string last_modified(full.field("Last-Modified"));
  std::string etag(full.field("ETag"));

  Request r;
  r.method = "GET";
  r.target = "/edge/main/x86_64/a.apk";
  r.if_modified_since = last_modified;
  EXPECT_EQ(handle_request(r, view_, context_).status, 304u);
  r.if_modified_since = "Sun, 06 Nov 1994 08:49:37 GMT";
  EXPECT_EQ(handle_request(r, view_, context_).status, 200u);
  r.if_modified_since = {};
  r.if_none_match = etag;
  EXPECT_EQ(handle_request(r, view_, context_).status, 304u);
  r.if_none_match = "\"other\"";
  r.if_modified_since = last_modified;  // ignored: If-None-Match decides
  EXPECT_EQ(handle_request(r, view_, context_).status, 200u);

  Request range;
  range.method = "GET";
  range.target = "/edge/main/x86_64/a.apk";
  range.range = "bytes=2-4";
  Response part = handle_request(range, view_, context_);
  EXPECT_EQ(part.status, 206u);
  EXPECT_EQ(part.field("Content-Range"), "bytes 2-4/10");
  EXPECT_EQ(body_of(part), "234");
  range.range = "bytes=10-";
  Response none = handle_request(range, view_, context_);
  EXPECT_EQ(none.status, 416u);
  EXPECT_EQ(none.field("Content-Range"), "bytes */10");
  range.range = "bytes=0-1,4-5";
  EXPECT_EQ(handle_request(range, view_, context_).status, 200u);
  range.range = "bytes=2-4";
  range.if_range = "\"stale\"";
  EXPECT_EQ(handle_request(range, view_, context_).status, 200u);
  range.if_range = etag;
  EXPECT_EQ(handle_request(range, view_, context_).status, 206u);
  range.method = "HEAD";  // Range is for GET only
  EXPECT_EQ(handle_request(range, view_, context_).status, 200u);
}

// A file's ETag is its SHA-256 from the applied manifest: with reproducible builds a changed file
// may keep its size and mtime, and must still get a new ETag.
TEST_F(ServerHandlerTest, EtagIsTheContentHashAndChangesWithTheContentAlone) {
  Response before = get("/edge/main/x86_64/a.apk");
  const std::string old_etag(before.field("ETag"));
  EXPECT_EQ(old_etag, "\"" + proto::to_hex(proto::sha256("0123456789")) + "\"");
  const std::string last_modified(before.field("Last-Modified"));

  // Same size, same mtime, other bytes: what the next apply leaves, and its view.
  write_file(tree_ / "edge/main/x86_64/a.apk", "abcdefghij");
  set_mtime(tree_ / "edge/main/x86_64/a.apk");
  auto m = std::make_shared<proto::Manifest>(*view_.manifests["edge/main/x86_64"]);
  for (auto& e : m->entries)
    if (e.path() == "edge/main/x86_64/a.apk")
      e = served_entry("edge/main/x86_64/a.apk", "abcdefghij");
  view_.manifests["edge/main/x86_64"] = m;

  Response after = get("/edge/main/x86_64/a.apk");
  EXPECT_EQ(after.field("ETag"), "\"" + proto::to_hex(proto::sha256("abcdefghij")) + "\"");
  EXPECT_NE(after.field("ETag"), old_etag);
  EXPECT_EQ(after.field("Last-Modified"), last_modified);  // what made the old ETag stay
  // Through a symlink of the view: the ETag of the file it resolves to.
  EXPECT_EQ(get("/edge/main/x86_64/b.apk").field("ETag"), after.field("ETag"));

  Request r;
  r.method = "GET";
  r.target = "/edge/main/x86_64/a.apk";
  r.if_none_match = old_etag;
  EXPECT_EQ(handle_request(r, view_, context_).status, 200u);
  r.if_none_match = after.field("ETag");
  EXPECT_EQ(handle_request(r, view_, context_).status, 304u);
}

// A resume (If-Range) that names the old content gets the whole new file, never its tail.
TEST_F(ServerHandlerTest, IfRangeWithTheOldEtagGetsTheWholeNewFile) {
  const std::string old_etag(get("/edge/main/x86_64/a.apk").field("ETag"));
  write_file(tree_ / "edge/main/x86_64/a.apk", "abcdefghij");
  set_mtime(tree_ / "edge/main/x86_64/a.apk");
  auto m = std::make_shared<proto::Manifest>(*view_.manifests["edge/main/x86_64"]);
  for (auto& e : m->entries)
    if (e.path() == "edge/main/x86_64/a.apk")
      e = served_entry("edge/main/x86_64/a.apk", "abcdefghij");
  view_.manifests["edge/main/x86_64"] = m;

  Request range;
  range.method = "GET";
  range.target = "/edge/main/x86_64/a.apk";
  range.range = "bytes=5-";
  range.if_range = old_etag;
  Response whole = handle_request(range, view_, context_);
  EXPECT_EQ(whole.status, 200u);
  EXPECT_EQ(body_of(whole), "abcdefghij");
  EXPECT_TRUE(whole.field("Content-Range").empty());

  // A date is no validator for If-Range here (mtimes may stay): the whole file too.
  range.if_range = whole.field("Last-Modified");
  EXPECT_EQ(handle_request(range, view_, context_).status, 200u);
  // The current ETag resumes.
  range.if_range = whole.field("ETag");
  Response part = handle_request(range, view_, context_);
  EXPECT_EQ(part.status, 206u);
  EXPECT_EQ(body_of(part), "fghij");
}

// An apply installs files before its view is published: a file on disk that is not the view's
// entry (its size or mtime differ) is not given the entry's ETag, so no old validator matches it.
TEST_F(ServerHandlerTest, FileNewerThanTheViewGetsNoEtag) {
  const std::string old_etag(get("/edge/main/x86_64/a.apk").field("ETag"));
  write_file(tree_ / "edge/main/x86_64/a.apk", "a longer new content");
  Request r;
  r.method = "GET";
  r.target = "/edge/main/x86_64/a.apk";
  Response plain = handle_request(r, view_, context_);
  EXPECT_EQ(plain.status, 200u);
  EXPECT_TRUE(plain.field("ETag").empty());
  r.if_none_match = old_etag;
  EXPECT_EQ(handle_request(r, view_, context_).status, 200u);
  r.if_none_match = {};
  r.range = "bytes=3-";
  r.if_range = old_etag;
  EXPECT_EQ(handle_request(r, view_, context_).status, 200u);
}

TEST_F(ServerHandlerTest, SnapshotAndLongPollDecision) {
  Response r = get("/.tiersync/v1/snapshot");
  EXPECT_EQ(r.status, 200u);
  EXPECT_EQ(r.body, view_.envelope);
  EXPECT_EQ(r.field("ETag"), "\"5\"");

  Request conditional;
  conditional.method = "GET";
  conditional.target = "/.tiersync/v1/snapshot";
  conditional.if_none_match = "\"4\", W/\"5\"";
  EXPECT_EQ(handle_request(conditional, view_, context_).status, 304u);
  conditional.if_none_match = "\"4\"";
  EXPECT_EQ(handle_request(conditional, view_, context_).status, 200u);

  EXPECT_EQ(get("/.tiersync/v1/snapshot?after=4&wait=30").status, 200u);
  Response poll = get("/.tiersync/v1/snapshot?after=5&wait=100000");
  ASSERT_TRUE(poll.poll.has_value());
  EXPECT_EQ(poll.poll->after, 5u);
  EXPECT_EQ(poll.poll->wait, std::chrono::seconds(300));  // clamped
  EXPECT_EQ(get("/.tiersync/v1/snapshot?after=5").status, 304u);
  EXPECT_EQ(get("/.tiersync/v1/snapshot?after=5&wait=0").status, 304u);
  EXPECT_EQ(get("/.tiersync/v1/snapshot?after=x&wait=1").status, 400u);
  Request waited;
  waited.method = "GET";
  waited.target = "/.tiersync/v1/snapshot?after=5&wait=30";
  waited.waited = true;
  EXPECT_EQ(handle_request(waited, view_, context_).status, 304u);

  ServedView empty;
  Request plain;
  plain.method = "GET";
  plain.target = "/.tiersync/v1/snapshot";
  EXPECT_EQ(handle_request(plain, empty, context_).status, 503u);
}

TEST_F(ServerHandlerTest, ManifestsStatusMetrics) {
  const std::string hex = proto::to_hex(manifest_digest_);
  Response m = get("/.tiersync/v1/manifests/" + hex);
  EXPECT_EQ(m.status, 200u);
  EXPECT_EQ(body_of(m), manifest_bytes_);
  EXPECT_EQ(m.field("Cache-Control"), "public, max-age=31536000, immutable");
  std::string upper = hex;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  EXPECT_EQ(get("/.tiersync/v1/manifests/" + upper).status, 404u);
  EXPECT_EQ(get("/.tiersync/v1/manifests/" + std::string(64, 'a')).status, 404u);
  EXPECT_EQ(get("/.tiersync/v1/manifests/../snapshot").status, 404u);

  Response status = get("/.tiersync/v1/status");
  EXPECT_EQ(status.body, view_.status_json);
  EXPECT_EQ(status.field("Content-Type"), "application/json");
  Response metrics = get("/metrics");
  EXPECT_EQ(metrics.body, "tiersync_test 1\ntiersync_http_test 2\n");
  EXPECT_EQ(metrics.field("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
}

TEST_F(ServerHandlerTest, LoadViewFromState) {
  sync::StateStore store(dir_ / "state", tree_);
  ASSERT_TRUE(store.open());
  auto none = load_view(store);
  ASSERT_TRUE(none) << none.message();
  EXPECT_EQ((*none)->serial, 0u);

  // A manifest that decodes (the fixture's has links a decoder refuses).
  const std::string bytes = proto::encode_manifest(
      *manifest("edge/main/x86_64", {file_entry("edge/main/x86_64/a.apk", "0123456789"),
                                     proto::Entry::symlink("edge/main/x86_64/b.apk", "a.apk")}));
  const proto::Digest digest = proto::sha256(bytes);

  proto::Snapshot s;
  s.origin = "origin";
  s.serial = 7;
  s.created = 1800000000;
  s.expires = 1800600000;
  s.layout = "{release}/{repo}/{arch}";
  s.depth = 3;
  s.partitions["edge/main/x86_64"] = {digest, 2, 10};
  ASSERT_TRUE(store.store_manifest(digest, bytes));
  proto::Envelope env{std::string(proto::kSnapshotPayloadType),
                      proto::encode_snapshot(s),
                      {proto::Signature{"keyid", "signature"}}};
  ASSERT_TRUE(store.save_applied(proto::encode_envelope(env)));

  ServedView earlier;
  earlier.serial = 6;
  earlier.manifest_hashes.insert(proto::sha256("older"));
  auto view = load_view(store, "", {}, &earlier);
  ASSERT_TRUE(view) << view.message();
  EXPECT_EQ((*view)->serial, 7u);
  EXPECT_EQ((*view)->envelope, proto::encode_envelope(env));
  EXPECT_NE((*view)->find("edge/main/x86_64/a.apk"), nullptr);
  EXPECT_EQ((*view)->find("edge/main/x86_64/secret.apk"), nullptr);
  EXPECT_TRUE((*view)->serves_manifest(digest));
  EXPECT_TRUE((*view)->serves_manifest(proto::sha256("older")));
  EXPECT_EQ(resolve_in_view(**view, "edge/main/x86_64/b.apk"), "edge/main/x86_64/a.apk");

  // Re-published with the same serial (a status update): the previous manifests stay.
  auto again = load_view(store, "{}", {}, view->get());
  ASSERT_TRUE(again) << again.message();
  EXPECT_TRUE((*again)->serves_manifest(proto::sha256("older")));
  EXPECT_EQ((*again)->status_json, "{}");
  EXPECT_FALSE((*view)->serves_manifest(proto::sha256("other")));
  EXPECT_NE((*view)->status_json.find("\"serial\": 7"), std::string::npos);
  // ... and its manifests are shared, not read and parsed again.
  EXPECT_EQ((*again)->manifests.at("edge/main/x86_64").get(),
            (*view)->manifests.at("edge/main/x86_64").get());
}

}  // namespace
}  // namespace tiersync::serve
