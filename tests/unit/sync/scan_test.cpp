#include "daemon/sync/scan.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <functional>

#include <algorithm>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "proto/digest.h"
#include "proto/path.h"
#include "tests/unit/support.h"

namespace tiersync::sync {
namespace {

using unit::Contains;
using unit::write_file;

using Names = std::vector<std::string>;

/// True when `haystack` contains `needle`; the failure message shows both.

/// Sets a file's mtime (without following a symlink).
void set_mtime(const fs::path& file, std::int64_t sec, long nsec = 0) {
  const timespec times[2] = {{sec, nsec}, {sec, nsec}};
  ASSERT_EQ(::utimensat(AT_FDCWD, file.c_str(), times, AT_SYMLINK_NOFOLLOW), 0) << file;
}

/// A fresh directory per test, removed afterwards.
class ScanTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = unit::make_temp_dir("scan_test");
    ASSERT_FALSE(dir_.empty());
    root_ = dir_ / "tree";
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  /// Scans root_, expecting success.
  ScanResult scan() {
    auto r = scan_tree(root_);
    EXPECT_TRUE(r) << r.message();
    return r ? std::move(*r) : ScanResult{};
  }
  /// Files a and b in the tree, and a hash cache of both saved to `file`.
  void save_cache_of_a_and_b(const fs::path& file) {
    write_file(root_ / "a", "aaa");
    write_file(root_ / "b", "bbb");
    HashCache cache;
    for (const auto& f : scan().files) ASSERT_TRUE(cache.digest_of(root_, f));
    ASSERT_TRUE(cache.save(file));
  }

  /// The scanned record of one file.
  ScannedFile scanned(const std::string& path) {
    for (auto& f : scan().files)
      if (f.path == path) return f;
    ADD_FAILURE() << path << " not scanned";
    return {};
  }

  fs::path dir_;
  fs::path root_;
};

Names paths_of(const ScanResult& r) {
  Names out;
  for (const auto& f : r.files) out.push_back(f.path);
  return out;
}

// --- scan_tree ----------------------------------------------------------------------------------

TEST_F(ScanTest, SortedFilesAndSymlinks) {
  write_file(root_ / "z", "zz");
  write_file(root_ / "b/file1", "one");
  write_file(root_ / "a/file2", "two!");
  write_file(root_ / "A", "upper");
  fs::create_symlink("file2", root_ / "a/link");
  fs::create_symlink("../b", root_ / "a/dirlink");
  fs::create_directories(root_ / "emptydir");
  ::chmod((root_ / "b/file1").c_str(), 0640);

  const ScanResult r = scan();
  EXPECT_EQ(paths_of(r), (Names{"A", "a/dirlink", "a/file2", "a/link", "b/file1", "z"}));
  EXPECT_TRUE(std::is_sorted(r.files.begin(), r.files.end(),
                             [](const auto& x, const auto& y) { return x.path < y.path; }));
  EXPECT_TRUE(r.skipped.empty()) << r.skipped.front();

  const auto& file1 = r.files[4];
  struct stat st;
  ASSERT_EQ(::lstat((root_ / "b/file1").c_str(), &st), 0);
  EXPECT_FALSE(file1.link);
  EXPECT_EQ(file1.size, 3u);
  EXPECT_EQ(file1.mode, 0640u);
  EXPECT_EQ(file1.ino, st.st_ino);
  EXPECT_EQ(file1.dev, st.st_dev);
  EXPECT_EQ(file1.mtime_ns, st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec);

  const auto& link = r.files[3];
  EXPECT_TRUE(link.link);
  EXPECT_EQ(link.target, "file2");
  EXPECT_EQ(link.size, 0u);
  // A symlink to a folder is recorded as a symlink, not followed.
  EXPECT_TRUE(r.files[1].link);
  EXPECT_EQ(r.files[1].target, "../b");
}

TEST_F(ScanTest, MtimeKeepsNanoseconds) {
  write_file(root_ / "f", "x");
  set_mtime(root_ / "f", 1732500000, 123456789);
  EXPECT_EQ(scanned("f").mtime_ns, 1732500000'123456789LL);
}

TEST_F(ScanTest, SkipsTopLevelMetaDirAndBusyFile) {
  write_file(root_ / ".tiersync/v1/snapshot", "env");
  write_file(root_ / ".tiersync/staging/x", "x");
  write_file(root_ / ".tiersync-busy", "");
  write_file(root_ / "sub/.tiersync/x", "kept");
  write_file(root_ / "sub/.tiersync-busy", "kept");
  write_file(root_ / "f", "f");
  const ScanResult r = scan();
  EXPECT_EQ(paths_of(r), (Names{"f", "sub/.tiersync-busy", "sub/.tiersync/x"}));
  // Leaving out .tiersync/ is by design, not worth a line in `skipped`.
  EXPECT_TRUE(r.skipped.empty()) << r.skipped.front();
}

TEST_F(ScanTest, SkipsEscapingSymlinksAndSpecialFilesWithAReason) {
  write_file(root_ / "a/file", "f");
  fs::create_symlink("../../etc/passwd", root_ / "a/evil");
  fs::create_symlink("/etc/passwd", root_ / "a/abs");
  fs::create_symlink(".tiersync/v1/snapshot", root_ / "meta");
  ASSERT_EQ(::mkfifo((root_ / "a/fifo").c_str(), 0644), 0);

  const ScanResult r = scan();
  EXPECT_EQ(paths_of(r), Names{"a/file"});
  ASSERT_EQ(r.skipped.size(), 4u);
  for (std::string_view name : {"a/evil", "a/abs", "a/fifo", "meta"}) {
    EXPECT_TRUE(std::any_of(r.skipped.begin(), r.skipped.end(),
                            [&](const std::string& line) { return Contains(line, name); }))
        << name << " not named in skipped";
  }
  for (const auto& line : r.skipped) EXPECT_GT(line.size(), 10u) << "no reason: " << line;
}

// BUG: scan_tree checks each symlink with link_target_error, lexically and alone; the kernel
// resolves through the other links. Here x/y -> ".." is the tree's top and x/l -> "y/../secret"
// is lexically "x/secret", but really reads the file beside the tree. tier0 would publish it
// (docs/protocol.md: symlink targets resolve inside the tree). Either link may be the one left out.
TEST_F(ScanTest, SkipsASymlinkThatEscapesThroughAnotherSymlink) {
  write_file(dir_ / "secret", "not for the mirror");
  fs::create_directories(root_ / "x");
  fs::create_symlink("..", root_ / "x/y");
  fs::create_symlink("y/../secret", root_ / "x/l");
  // The kernel does leave the tree.
  ASSERT_EQ(fs::canonical(root_ / "x/l"), fs::canonical(dir_ / "secret"));

  const ScanResult r = scan();
  const Names paths = paths_of(r);
  const bool both = std::count(paths.begin(), paths.end(), "x/l") &&
                    std::count(paths.begin(), paths.end(), "x/y");
  EXPECT_FALSE(both) << "x/l -> y/../secret and x/y -> .. both recorded";
  EXPECT_FALSE(r.skipped.empty());
}

TEST_F(ScanTest, SkipsInvalidNames) {
  write_file(root_ / "ok", "ok");
  write_file(root_ / "bad\xff", "x");
  write_file(root_ / std::string(255, 'n'), "x");  // the longest valid name
  const ScanResult r = scan();
  EXPECT_EQ(paths_of(r), (Names{std::string(255, 'n'), "ok"}));
  ASSERT_EQ(r.skipped.size(), 1u);
  EXPECT_TRUE(Contains(r.skipped[0], "UTF-8"));
}

TEST_F(ScanTest, EmptyTree) {
  const ScanResult r = scan();
  EXPECT_TRUE(r.files.empty());
  EXPECT_TRUE(r.skipped.empty());
}

TEST_F(ScanTest, MissingRootIsAnError) {
  const auto r = scan_tree(dir_ / "nope");
  ASSERT_FALSE(r);
  EXPECT_TRUE(Contains(r.message(), (dir_ / "nope").string()));
  write_file(dir_ / "file", "x");
  EXPECT_FALSE(scan_tree(dir_ / "file"));
}

// --- hash_file ----------------------------------------------------------------------------------

TEST_F(ScanTest, HashFile) {
  write_file(root_ / "f", "hello");
  std::uint64_t size = 0;
  const auto d = hash_file(root_ / "f", &size);
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(*d, proto::sha256("hello"));
  EXPECT_EQ(size, 5u);

  write_file(root_ / "empty", "");
  const auto e = hash_file(root_ / "empty", &size);
  ASSERT_TRUE(e) << e.message();
  EXPECT_EQ(proto::to_hex(*e), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(size, 0u);
}

TEST_F(ScanTest, HashFileLargerThanItsBuffer) {
  std::string big(3 * (1 << 20) + 17, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31 + i / 4096);
  write_file(root_ / "big", big);
  std::uint64_t size = 0;
  const auto d = hash_file(root_ / "big", &size);
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(*d, proto::sha256(big));
  EXPECT_EQ(size, big.size());
}

TEST_F(ScanTest, HashFileErrors) {
  const auto missing = hash_file(root_ / "missing");
  ASSERT_FALSE(missing);
  EXPECT_TRUE(Contains(missing.message(), (root_ / "missing").string()));
  write_file(root_ / "target", "t");
  fs::create_symlink("target", root_ / "link");
  EXPECT_FALSE(hash_file(root_ / "link"));  // the last component is not followed
}

// --- HashCache ----------------------------------------------------------------------------------

TEST_F(ScanTest, HashCacheDoesNotReReadAnUnchangedFile) {
  write_file(root_ / "f", "content A");
  set_mtime(root_ / "f", 1732500000);
  const ScannedFile f = scanned("f");

  HashCache cache;
  EXPECT_FALSE(cache.needs_save());
  auto d = cache.digest_of(root_, f);
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(*d, proto::sha256("content A"));
  EXPECT_EQ(cache.hashed(), 1u);
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_TRUE(cache.needs_save());

  // Same content size, same mtime, same inode: the cache answers without reading, so it still
  // gives the old digest although the bytes changed underneath.
  {
    std::fstream out(root_ / "f", std::ios::in | std::ios::out | std::ios::binary);
    out << "content B";
  }
  set_mtime(root_ / "f", 1732500000);
  const ScannedFile again = scanned("f");
  ASSERT_EQ(again.ino, f.ino);
  d = cache.digest_of(root_, again);
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(cache.hashed(), 1u);
  EXPECT_EQ(*d, proto::sha256("content A"));
  EXPECT_EQ(cache.lookup(again), proto::sha256("content A"));
}

TEST_F(ScanTest, HashCacheReReadsAfterAnMtimeChange) {
  write_file(root_ / "f", "content A");
  set_mtime(root_ / "f", 1732500000);
  HashCache cache;
  ASSERT_TRUE(cache.digest_of(root_, scanned("f")));

  write_file(root_ / "f", "content B");  // same size
  set_mtime(root_ / "f", 1732500000, 1);
  const ScannedFile f = scanned("f");
  EXPECT_EQ(cache.lookup(f), std::nullopt);
  const auto d = cache.digest_of(root_, f);
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(*d, proto::sha256("content B"));
  EXPECT_EQ(cache.hashed(), 2u);
  EXPECT_EQ(cache.size(), 1u);
}

TEST_F(ScanTest, HashCacheReReadsAfterASizeChange) {
  write_file(root_ / "f", "short");
  set_mtime(root_ / "f", 1732500000);
  HashCache cache;
  ASSERT_TRUE(cache.digest_of(root_, scanned("f")));

  write_file(root_ / "f", "a longer content");
  set_mtime(root_ / "f", 1732500000);
  const auto d = cache.digest_of(root_, scanned("f"));
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(*d, proto::sha256("a longer content"));
  EXPECT_EQ(cache.hashed(), 2u);
}

TEST_F(ScanTest, HashCacheReReadsAfterAnInodeChange) {
  write_file(root_ / "f", "content A");
  set_mtime(root_ / "f", 1732500000);
  HashCache cache;
  const ScannedFile f = scanned("f");
  ASSERT_TRUE(cache.digest_of(root_, f));
  ScannedFile other = f;
  other.ino += 1;
  EXPECT_EQ(cache.lookup(other), std::nullopt);
}

TEST_F(ScanTest, HashCacheRefusesAFileThatChangedWhileRead) {
  write_file(root_ / "f", "0123456789");
  ScannedFile f = scanned("f");
  f.size = 3;  // what the scan saw; the file has grown since
  HashCache cache;
  const auto d = cache.digest_of(root_, f);
  ASSERT_FALSE(d);
  EXPECT_TRUE(Contains(d.message(), "changed"));
  EXPECT_EQ(cache.size(), 0u);
}

TEST_F(ScanTest, HashCacheSaveLoadRoundTrip) {
  write_file(root_ / "a", "aaa");
  write_file(root_ / "b/c", "ccc");
  const ScanResult r = scan();
  HashCache cache;
  for (const auto& f : r.files) ASSERT_TRUE(cache.digest_of(root_, f));
  const fs::path file = dir_ / "state/hashcache";
  fs::create_directories(file.parent_path());
  ASSERT_TRUE(cache.save(file));

  std::string warning;
  HashCache loaded = HashCache::load(file, &warning);
  EXPECT_EQ(warning, "");
  EXPECT_EQ(loaded.size(), 2u);
  EXPECT_TRUE(loaded.needs_save());  // nothing looked up yet
  for (const auto& f : r.files) {
    const auto d = loaded.digest_of(root_, f);
    ASSERT_TRUE(d) << d.message();
    EXPECT_EQ(*d, proto::sha256(f.path == "a" ? "aaa" : "ccc"));
  }
  EXPECT_EQ(loaded.hashed(), 0u);
  // Loaded, then every file found unchanged: the saved form would be the same.
  EXPECT_FALSE(loaded.needs_save());
}

// Stored in any order (the daemon's scans come sorted, a caller's may not), every path is found
// again, none twice, and the saved form loads back whole; paths of every length share the arena.
TEST_F(ScanTest, HashCacheFindsWhatWasStoredInAnyOrder) {
  std::vector<ScannedFile> files;
  for (int i = 0; i < 3000; ++i) {
    ScannedFile f;
    f.path = "p/" + std::string(static_cast<std::size_t>(i % 700), 'x') + std::to_string(i);
    f.size = static_cast<std::uint64_t>(i);
    f.mtime_ns = i;
    f.ino = static_cast<std::uint64_t>(i) + 1;
    files.push_back(std::move(f));
  }
  std::vector<std::size_t> order(files.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = (i * 7919) % order.size();
  HashCache cache;
  for (std::size_t i : order) cache.store(files[i], proto::sha256(files[i].path));
  cache.store(files[5], proto::sha256("again"));  // a second store replaces the first
  EXPECT_EQ(cache.size(), files.size());
  for (std::size_t i = 0; i < files.size(); ++i)
    EXPECT_EQ(cache.lookup(files[i]), proto::sha256(i == 5 ? "again" : files[i].path)) << i;

  const fs::path file = dir_ / "state/hashcache";
  fs::create_directories(file.parent_path());
  ASSERT_TRUE(cache.save(file));
  HashCache loaded = HashCache::load(file);
  EXPECT_EQ(loaded.size(), files.size());
  for (std::size_t i = 0; i < files.size(); ++i)
    EXPECT_EQ(loaded.lookup(files[i]), proto::sha256(i == 5 ? "again" : files[i].path)) << i;
  EXPECT_FALSE(loaded.needs_save());
}

TEST_F(ScanTest, HashCacheNeedsSaveWhenAFileIsGone) {
  const fs::path file = dir_ / "hashcache";
  ASSERT_NO_FATAL_FAILURE(save_cache_of_a_and_b(file));

  fs::remove(root_ / "b");
  HashCache loaded = HashCache::load(file);
  for (const auto& f : scan().files) ASSERT_TRUE(loaded.digest_of(root_, f));
  EXPECT_EQ(loaded.hashed(), 0u);
  EXPECT_TRUE(loaded.needs_save());

  // The saved form leaves the gone file out.
  ASSERT_TRUE(loaded.save(file));
  HashCache again = HashCache::load(file);
  EXPECT_EQ(again.size(), 1u);
  for (const auto& f : scan().files) ASSERT_TRUE(again.digest_of(root_, f));
  EXPECT_FALSE(again.needs_save());
}

TEST_F(ScanTest, HashCacheMissingFileIsEmptyWithoutWarning) {
  std::string warning;
  HashCache cache = HashCache::load(dir_ / "nope", &warning);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(warning, "");
  EXPECT_FALSE(cache.needs_save());
}

TEST_F(ScanTest, HashCacheDamagedFileIsEmptyWithWarning) {
  const fs::path file = dir_ / "hashcache";
  ASSERT_NO_FATAL_FAILURE(save_cache_of_a_and_b(file));
  std::ifstream in(file, std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  for (const std::string& bytes :
       {std::string("garbage"), std::string(), good.substr(0, good.size() - 5),
        "TSHC2\n" + good.substr(6), good.substr(0, 6) + std::string("\xff\xff\xff\x7f", 4)}) {
    write_file(file, bytes);
    std::string warning;
    HashCache damaged = HashCache::load(file, &warning);
    EXPECT_EQ(damaged.size(), 0u) << bytes.size();
    EXPECT_TRUE(Contains(warning, file.string())) << bytes.size();
    // Still usable: it simply re-reads.
    const auto f = scanned("a");
    ASSERT_TRUE(damaged.digest_of(root_, f));
    EXPECT_EQ(damaged.hashed(), 1u);
  }
}

// --- scan_fingerprint ----------------------------------------------------------------------------

ScanResult two_files() {
  ScanResult r;
  ScannedFile a;
  a.path = "edge/main/x86_64/a.apk";
  a.size = 10;
  a.mtime_ns = 1'700'000'000'000'000'000;
  a.ino = 7;
  a.mode = 0644;
  ScannedFile l;
  l.path = "latest";
  l.link = true;
  l.target = "edge";
  r.files = {a, l};
  return r;
}

TEST(ScanFingerprint, IgnoresTheOrderOfTheWalk) {
  ScanResult r = two_files();
  const std::string print = scan_fingerprint(r, "salt");
  std::swap(r.files[0], r.files[1]);
  EXPECT_EQ(scan_fingerprint(r, "salt"), print);
}

// tier0's fast no-op trusts the fingerprint: every attribute a manifest depends on must change it.
TEST(ScanFingerprint, ChangesWithEveryAttribute) {
  const std::string print = scan_fingerprint(two_files(), "salt");
  std::vector<std::function<void(ScanResult&)>> edits = {
      [](ScanResult& r) { r.files[0].path += "x"; },
      [](ScanResult& r) { r.files[0].size += 1; },
      [](ScanResult& r) { r.files[0].mtime_ns += 1; },
      [](ScanResult& r) { r.files[0].ino += 1; },
      [](ScanResult& r) { r.files[0].mode = 0600; },
      [](ScanResult& r) { r.files[1].target = "edge2"; },
      [](ScanResult& r) { r.files.pop_back(); },
      [](ScanResult& r) { r.files.push_back(r.files[0]); },
  };
  for (std::size_t i = 0; i < edits.size(); ++i) {
    ScanResult r = two_files();
    edits[i](r);
    EXPECT_NE(scan_fingerprint(r, "salt"), print) << "edit " << i;
  }
  EXPECT_NE(scan_fingerprint(two_files(), "other layout"), print);
}

// --- tier0's source: opened without symlinks, copied and hashed as copied ------------------------

/// A descriptor of root_, as tier0 holds one of source.dir.
UniqueFd open_dir(const fs::path& dir) {
  return UniqueFd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
}

TEST_F(ScanTest, OpenFileBeneathFollowsNoSymlinkAtAnyComponent) {
  write_file(root_ / "a/b/f", "real");
  write_file(dir_ / "secret/f", "secret");
  write_file(dir_ / "secret/b/f", "secret");
  fs::create_symlink(dir_ / "secret/f", root_ / "a/link");
  fs::create_symlink(dir_ / "secret", root_ / "dirlink");
  fs::create_symlink(dir_ / "secret/b", root_ / "a/blink");
  ASSERT_EQ(::mkfifo((root_ / "fifo").c_str(), 0644), 0);
  UniqueFd dir = open_dir(root_);
  ASSERT_TRUE(dir.valid());

  auto ok = open_file_beneath(dir.get(), "a/b/f", root_);
  ASSERT_TRUE(ok) << ok.message();
  std::string got;
  ASSERT_TRUE(stream_fd(ok->get(), root_ / "a/b/f", [&](const char* d, std::size_t n) -> Status {
    got.append(d, n);
    return {};
  }));
  EXPECT_EQ(got, "real");
  for (const char* rel : {"a/link", "dirlink/f", "dirlink/b/f", "a/blink/f", "a/missing"}) {
    auto r = open_file_beneath(dir.get(), rel, root_);
    ASSERT_FALSE(r) << rel;
    EXPECT_TRUE(Contains(r.message(), root_.string())) << r.message();
  }
  // A FIFO is refused, without blocking on its open.
  auto fifo = open_file_beneath(dir.get(), "fifo", root_);
  ASSERT_FALSE(fifo);
  EXPECT_TRUE(Contains(fifo.message(), "not a regular file"));
}

// The race of issue 8: between the scan and the hashing, a builder swaps a file (or a folder
// above it) for a symlink to a secret. The secret is never hashed, so never signed.
TEST_F(ScanTest, DigestOfRefusesAFileSwappedForASymlinkAfterTheScan) {
  write_file(root_ / "pkg/a.apk", "package");
  write_file(dir_ / "keys/a.apk", "private");  // the same size: only the path gives it away
  const ScannedFile f = scanned("pkg/a.apk");

  fs::rename(root_ / "pkg/a.apk", root_ / "pkg/a.apk.old");
  fs::create_symlink(dir_ / "keys/a.apk", root_ / "pkg/a.apk");
  HashCache cache;
  auto d = cache.digest_of(root_, f);
  ASSERT_FALSE(d);
  EXPECT_EQ(cache.size(), 0u);

  fs::remove(root_ / "pkg/a.apk");
  fs::rename(root_ / "pkg", root_ / "pkg.old");
  fs::create_symlink(dir_ / "keys", root_ / "pkg");
  d = cache.digest_of(root_, f);
  ASSERT_FALSE(d);
  EXPECT_EQ(cache.size(), 0u);
}

TEST_F(ScanTest, DigestOfRefusesAnotherFileAtTheScannedPath) {
  write_file(root_ / "f", "first");
  const ScannedFile f = scanned("f");
  fs::remove(root_ / "f");
  write_file(root_ / "f", "other");  // same size, another inode
  HashCache cache;
  auto d = cache.digest_of(root_, f);
  ASSERT_FALSE(d);
  EXPECT_TRUE(Contains(d.message(), "changed"));
}

TEST_F(ScanTest, CopyAndHashGivesTheCopysDigestAndSharesNoInode) {
  std::string content(3 << 20, '\0');  // over one read buffer
  for (std::size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>(i * 7);
  write_file(root_ / "src", content);
  UniqueFd in(::open((root_ / "src").c_str(), O_RDONLY | O_CLOEXEC));
  UniqueFd out(::open((dir_ / "copy").c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  ASSERT_TRUE(in.valid() && out.valid());
  auto c = copy_and_hash(in.get(), out.get(), dir_ / "copy", content.size() + 1);
  ASSERT_TRUE(c) << c.message();
  EXPECT_EQ(c->size, content.size());
  EXPECT_EQ(c->sha256, proto::sha256(content));

  // The source truncated and rewritten in place afterwards: the copy does not change.
  ASSERT_EQ(::truncate((root_ / "src").c_str(), 0), 0);
  write_file(root_ / "src", "rewritten");
  auto copy_digest = hash_file(dir_ / "copy");
  ASSERT_TRUE(copy_digest) << copy_digest.message();
  EXPECT_EQ(*copy_digest, proto::sha256(content));
  struct stat a, b;
  ASSERT_EQ(::stat((root_ / "src").c_str(), &a), 0);
  ASSERT_EQ(::stat((dir_ / "copy").c_str(), &b), 0);
  EXPECT_NE(a.st_ino, b.st_ino);
}

TEST_F(ScanTest, CopyAndHashStopsAtItsLimit) {
  write_file(root_ / "src", "0123456789");
  UniqueFd in(::open((root_ / "src").c_str(), O_RDONLY | O_CLOEXEC));
  UniqueFd out(::open((dir_ / "copy").c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  ASSERT_TRUE(in.valid() && out.valid());
  auto c = copy_and_hash(in.get(), out.get(), dir_ / "copy", 4);  // a file that grew
  ASSERT_TRUE(c) << c.message();
  // A reflink takes the whole file at once; a copy stops at the limit: either way, not the size
  // the caller expected (3 + 1), so it is refused there.
  EXPECT_TRUE(c->size == 4 || (c->cloned && c->size == 10)) << c->size;
}

TEST_F(ScanTest, HashCacheForgetMakesTheNextDigestReadTheFile) {
  write_file(root_ / "f", "content A");
  set_mtime(root_ / "f", 1732500000);
  HashCache cache;
  ASSERT_TRUE(cache.digest_of(root_, scanned("f")));
  {
    std::fstream out(root_ / "f", std::ios::in | std::ios::out | std::ios::binary);
    out << "content B";
  }
  set_mtime(root_ / "f", 1732500000);
  cache.forget("f");
  EXPECT_EQ(cache.lookup(scanned("f")), std::nullopt);
  auto d = cache.digest_of(root_, scanned("f"));
  ASSERT_TRUE(d) << d.message();
  EXPECT_EQ(*d, proto::sha256("content B"));
  EXPECT_EQ(cache.hashed(), 2u);
}

// --- the incremental publish's partial scan, prints and per-partition cache ---------------------

// A tree of layout depth 3 with something of every kind: partitions, root-partition files at
// every level, a partition that is a symlink, a file where a partition would be, tiersync's own
// folder, and folders deeper inside a partition.
class PartialScanTest : public ScanTest {
 protected:
  void SetUp() override {
    ScanTest::SetUp();
    write_file(root_ / "edge/main/x86_64/a.apk", "a");
    write_file(root_ / "edge/main/x86_64/sub/deep/b.apk", "bb");
    write_file(root_ / "edge/main/aarch64/c.apk", "ccc");
    write_file(root_ / "edge/community/x86_64/d.apk", "dddd");
    write_file(root_ / "v3.20/main/x86_64/e.apk", "eeeee");
    write_file(root_ / "edge/last-updated", "1");
    write_file(root_ / "README", "root");
    write_file(root_ / "edge/main/FILE", "a file where a partition could be");
    fs::create_symlink("x86_64", root_ / "edge/main/armv7");
    fs::create_symlink("edge", root_ / "latest");
    write_file(root_ / ".tiersync/x/y/z/w", "never content");
  }

  // The full scan's files of `partitions` (and the root partition's), for comparison.
  Names expected(const std::set<std::string>& partitions) {
    Names out;
    for (const auto& f : scan().files) {
      const std::string part(proto::partition_of(f.path, 3));
      if (part == proto::kRootPartition || partitions.count(part)) out.push_back(f.path);
    }
    return out;
  }
  // Digests every regular file of `files` through `cache`.
  void digest_all(HashCache& cache, const std::vector<ScannedFile>& files) {
    for (const auto& f : files) {
      if (f.link) continue;
      const auto d = cache.digest_of(root_, f);
      ASSERT_TRUE(d) << d.message();
    }
  }
  Names partial(const std::set<std::string>& partitions, const std::set<std::string>& subtrees) {
    auto r = scan_partitions(root_, 3, partitions, subtrees);
    EXPECT_TRUE(r) << r.message();
    return r ? paths_of(*r) : Names{};
  }
};

TEST_F(PartialScanTest, GivesWhatTheFullScanGivesForThosePartitionsAndTheRoot) {
  EXPECT_EQ(partial({}, {}), expected({}));
  EXPECT_EQ(partial({}, {}),
            (Names{"README", "edge/last-updated", "edge/main/FILE", "edge/main/armv7", "latest"}));
  EXPECT_EQ(partial({"edge/main/x86_64"}, {}), expected({"edge/main/x86_64"}));
  EXPECT_EQ(partial({"edge/main/x86_64", "edge/community/x86_64"}, {}),
            expected({"edge/main/x86_64", "edge/community/x86_64"}));
  // A folder above the partitions: every partition below it.
  EXPECT_EQ(partial({}, {"edge/main"}), expected({"edge/main/x86_64", "edge/main/aarch64"}));
  EXPECT_EQ(partial({}, {"edge"}),
            expected({"edge/main/x86_64", "edge/main/aarch64", "edge/community/x86_64"}));
  // Named twice (a partition inside a subtree, a subtree inside another): each file once.
  EXPECT_EQ(partial({"edge/main/x86_64"}, {"edge", "edge/main"}),
            expected({"edge/main/x86_64", "edge/main/aarch64", "edge/community/x86_64"}));
}

// What is left out is said once, even when a subtree's walk passes the root partition's files
// that the walk of the root partition saw too.
TEST_F(PartialScanTest, WhatIsLeftOutIsSaidOnce) {
  write_file(root_ / "edge/bad\xff", "not UTF-8: no valid name");
  write_file(root_ / "edge/main/x86_64/bad\xff.apk", "nor here");
  const auto full = scan_tree(root_);
  ASSERT_TRUE(full) << full.message();
  auto r = scan_partitions(root_, 3, {"edge/main/x86_64"}, {"edge"});
  ASSERT_TRUE(r) << r.message();
  EXPECT_EQ(r->skipped, full->skipped);
  EXPECT_EQ(r->skipped.size(), 2u);
}

TEST_F(PartialScanTest, APartitionThatIsGoneASymlinkOrAFileHasNoFiles) {
  const Names root_only = expected({});
  EXPECT_EQ(partial({"edge/main/armv7"}, {}), root_only) << "a symlink is not followed";
  EXPECT_EQ(partial({"edge/main/FILE"}, {}), root_only);
  EXPECT_EQ(partial({"edge/gone/x86_64"}, {"gone"}), root_only);
  EXPECT_EQ(partial({".tiersync/x/y"}, {".tiersync"}), root_only) << "never content";
  EXPECT_EQ(partial({"not/a/partition/name"}, {"edge/main/x86_64/sub"}), root_only)
      << "names of the wrong depth are ignored";
  // A folder above a partition swapped for a symlink to a real partition's parent.
  fs::remove_all(root_ / "v3.20/main");
  fs::create_symlink("../edge/main", root_ / "v3.20/main");
  EXPECT_EQ(partial({"v3.20/main/x86_64"}, {}), expected({})) << "reached through a symlink";
}

TEST_F(PartialScanTest, PartitionPrintsChangeOnlyWhereTheTreeChanged) {
  auto before = partition_prints(root_, 3);
  ASSERT_TRUE(before) << before.message();
  EXPECT_EQ(before->size(), 5u);  // four partitions and the root
  EXPECT_TRUE(before->count("edge/main/x86_64"));
  EXPECT_TRUE(before->count("."));

  write_file(root_ / "edge/main/x86_64/sub/deep/b.apk", "changed");
  fs::remove(root_ / "edge/main/aarch64/c.apk");
  auto after = partition_prints(root_, 3);
  ASSERT_TRUE(after) << after.message();
  EXPECT_EQ(after->size(), 4u) << "edge/main/aarch64 has no file left";
  EXPECT_NE(after->at("edge/main/x86_64"), before->at("edge/main/x86_64"));
  EXPECT_EQ(after->at("edge/community/x86_64"), before->at("edge/community/x86_64"));
  EXPECT_EQ(after->at("v3.20/main/x86_64"), before->at("v3.20/main/x86_64"));
  EXPECT_EQ(after->at("."), before->at("."));
}

TEST_F(PartialScanTest, TheCacheIsOneFilePerPartitionAndAPartialSaveKeepsTheOthers) {
  const fs::path dir = dir_ / "state/hashcache.d";
  {
    HashCache cache = HashCache::load_partitions(dir, nullptr);
    ASSERT_NO_FATAL_FAILURE(digest_all(cache, scan().files));
    ASSERT_TRUE(cache.save_partitions(dir, 3, nullptr));
  }
  auto files_in = [&] {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
    return n;
  };
  EXPECT_EQ(files_in(), 5u);

  // An incremental publish of one partition reads and writes only its file.
  const std::set<std::string> one{"edge/main/x86_64"};
  HashCache part = HashCache::load_partitions(dir, &one);
  EXPECT_EQ(part.size(), 2u);
  fs::remove(root_ / "edge/main/x86_64/a.apk");
  auto partial_scan = scan_partitions(root_, 3, one, {});
  ASSERT_TRUE(partial_scan);
  std::vector<ScannedFile> in_partition;
  for (const auto& f : partial_scan->files)
    if (proto::partition_of(f.path, 3) == "edge/main/x86_64") in_partition.push_back(f);
  ASSERT_NO_FATAL_FAILURE(digest_all(part, in_partition));
  EXPECT_EQ(part.hashed(), 0u);
  EXPECT_TRUE(part.needs_save());
  ASSERT_TRUE(part.save_partitions(dir, 3, &one));
  EXPECT_EQ(files_in(), 5u);
  EXPECT_EQ(HashCache::load_partitions(dir, &one).size(), 1u);
  EXPECT_EQ(HashCache::load_partitions(dir, nullptr).size(), 7u) << "the others are kept";

  // A partition with nothing left has no file; a whole save removes the files of partitions gone.
  fs::remove_all(root_ / "edge/main/x86_64");
  HashCache empty = HashCache::load_partitions(dir, &one);
  ASSERT_TRUE(empty.save_partitions(dir, 3, &one));
  EXPECT_EQ(files_in(), 4u);
  fs::remove_all(root_ / "v3.20");
  HashCache all = HashCache::load_partitions(dir, nullptr);
  ASSERT_NO_FATAL_FAILURE(digest_all(all, scan().files));
  ASSERT_TRUE(all.save_partitions(dir, 3, nullptr));
  EXPECT_EQ(files_in(), 3u);
}

TEST_F(PartialScanTest, AnEarlierSingleFileCacheIsSplitAndNothingIsReadAgain) {
  const fs::path single = dir_ / "state/hashcache";
  const fs::path dir = dir_ / "state/hashcache.d";
  fs::create_directories(single.parent_path());
  {
    HashCache cache;
    ASSERT_NO_FATAL_FAILURE(digest_all(cache, scan().files));
    ASSERT_TRUE(cache.save(single));
  }
  HashCache::migrate_single_file(single, dir, 3);
  EXPECT_FALSE(fs::exists(single));
  HashCache split = HashCache::load_partitions(dir, nullptr);
  ASSERT_NO_FATAL_FAILURE(digest_all(split, scan().files));
  EXPECT_EQ(split.hashed(), 0u);
  EXPECT_FALSE(split.needs_save());
}

TEST_F(PartialScanTest, ADamagedPartitionFileIsLeftOutWithAWarningNamingIt) {
  const fs::path dir = dir_ / "state/hashcache.d";
  HashCache cache = HashCache::load_partitions(dir, nullptr);
  ASSERT_NO_FATAL_FAILURE(digest_all(cache, scan().files));
  ASSERT_TRUE(cache.save_partitions(dir, 3, nullptr));
  fs::path victim;
  for (const auto& e : fs::directory_iterator(dir))
    if (fs::file_size(e.path()) > 100) victim = e.path();
  ASSERT_FALSE(victim.empty());
  write_file(victim, "TSHC1\ngarbage");
  std::string warning;
  HashCache loaded = HashCache::load_partitions(dir, nullptr, &warning);
  EXPECT_TRUE(Contains(warning, victim.string()));
  EXPECT_GE(loaded.size(), 4u) << "the other files are loaded";
  EXPECT_LT(loaded.size(), 7u);
}

}  // namespace
}  // namespace tiersync::sync
