#include "daemon/sync/apply.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "daemon/sync/fs.h"
#include "daemon/sync/plan.h"
#include "daemon/sync/state.h"
#include "proto/dsse.h"
#include "proto/keys.h"
#include "proto/manifest.h"
#include "proto/path.h"
#include "tests/unit/support.h"

namespace tiersync::sync {
namespace {

constexpr std::size_t kDepth = 3;  // {release}/{repo}/{arch}

/// A file (content) or a symlink (target) of a source.
struct Item {
  std::string bytes;
  bool link = false;
  std::uint32_t mode = 0644;
};
using Model = std::map<std::string, Item>;

Item link_to(std::string target) {
  return Item{std::move(target), true};
}

/// Serves every file of the model it was given: what a parent holds. It can also break: fail at
/// its `fail_at`-th file (1 for the first) after sending `cut` bytes of it, serve the files of
/// `corrupt` with their first byte changed, or send `extra` bytes after every file.
class ModelFetcher final : public Fetcher {
 public:
  Model model;
  std::size_t fetched = 0;
  std::size_t fail_at = 0;
  std::size_t cut = 0;
  std::set<std::string> corrupt;
  std::string extra;
  Status fetch(const proto::Entry& entry, const ByteSink& sink) override {
    auto it = model.find(std::string(entry.path()));
    if (it == model.end() || it->second.link) return make_error("no such file at the parent");
    ++fetched;
    std::string bytes = it->second.bytes + extra;
    if (corrupt.count(it->first)) bytes[0] = static_cast<char>(bytes[0] ^ 1);
    if (fetched == fail_at) {
      if (cut > 0)
        if (auto st = sink(bytes.data(), std::min(cut, bytes.size())); !st) return st;
      return make_error("connection reset by the parent");
    }
    return sink(bytes.data(), bytes.size());
  }
};

/// What a tree holds, read without following any symlink: path -> 'f' + mode + content, 'l' +
/// target, or 'd'.
std::map<std::string, std::string> listing(const fs::path& root) {
  std::map<std::string, std::string> out;
  std::vector<fs::path> todo{root};
  while (!todo.empty()) {
    fs::path dir = todo.back();
    todo.pop_back();
    for (const auto& de : fs::directory_iterator(dir)) {
      const std::string rel = de.path().lexically_relative(root).generic_string();
      if (rel == ".tiersync") continue;
      struct stat st;
      if (::lstat(de.path().c_str(), &st) != 0) continue;
      if (S_ISDIR(st.st_mode)) {
        out[rel] = "d";
        todo.push_back(de.path());
      } else if (S_ISLNK(st.st_mode)) {
        out[rel] = "l" + fs::read_symlink(de.path()).string();
      } else {
        out[rel] = "f" + std::to_string(st.st_mode & 07777) + ":" + unit::read_file(de.path());
      }
    }
  }
  return out;
}

/// The listing of a tree holding exactly `model`: its files, its symlinks and the folders on
/// their way (the manifest carries no folder of its own).
std::map<std::string, std::string> listing_of(const Model& model) {
  std::map<std::string, std::string> out;
  for (const auto& [path, item] : model) {
    out[path] = item.link ? "l" + item.bytes : "f" + std::to_string(item.mode) + ":" + item.bytes;
    for (auto slash = path.find('/'); slash != std::string::npos; slash = path.find('/', slash + 1))
      out[path.substr(0, slash)] = "d";
  }
  return out;
}

/// A node's state_dir and tree, and the snapshots applied to it one after another through the
/// engine, as tier0 and every relay apply them.
class ApplyTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = unit::make_temp_dir("apply_test");
    ASSERT_FALSE(dir_.empty());
    state_ = std::make_unique<StateStore>(dir_ / "state", dir_ / "tree");
    const Status st = state_->open();
    ASSERT_TRUE(st) << st.message();
    auto key = proto::PrivateKey::generate();
    ASSERT_TRUE(key) << key.message();
    key_ = std::make_unique<proto::PrivateKey>(std::move(*key));
  }
  void TearDown() override {
    use_openat2(true);
    state_.reset();
    fs::remove_all(dir_);
  }

  /// Applies `model` as the next snapshot; the tree then holds exactly it.
  void apply(const Model& model) {
    auto stats = try_apply(model);
    ASSERT_TRUE(stats) << stats.message();
  }

  /// Applies `model` as the next snapshot through fetcher_ (serving `model`), as a relay would.
  Result<ApplyStats> try_apply(const Model& model) {
    std::map<std::string, std::shared_ptr<proto::Manifest>> parts;
    for (const auto& [path, item] : model) {
      auto& m = parts[std::string(proto::partition_of(path, kDepth))];
      if (!m) {
        m = std::make_shared<proto::Manifest>();
        m->partition = std::string(proto::partition_of(path, kDepth));
      }
      m->entries.push_back(
          item.link ? proto::Entry::symlink(path, item.bytes)
                    : proto::Entry::file(path, item.bytes.size(), proto::sha256(item.bytes), 1000,
                                         item.mode, path.ends_with("APKINDEX.tar.gz")));
    }
    ApplyRequest req;
    req.candidate.origin = "dl-master";
    req.candidate.serial = ++serial_;
    req.candidate.created = 1795654800;
    req.candidate.expires = 1796259600;
    req.candidate.layout = "{release}/{repo}/{arch}";
    req.candidate.depth = kDepth;
    for (auto& [name, m] : parts) {
      if (auto valid = proto::validate_manifest(*m, kDepth); !valid) return valid.error();
      const std::string bytes = proto::encode_manifest(*m);
      const proto::Digest d = proto::sha256(bytes);
      if (auto stored = state_->store_manifest(d, bytes); !stored) return stored.error();
      req.candidate.partitions[name] = {d, m->entries.size(), m->total_bytes()};
      req.candidate_manifests[name] = m;
    }
    req.envelope = proto::encode_envelope(proto::sign_envelope(
        proto::kSnapshotPayloadType, proto::encode_snapshot(req.candidate), {*key_}));
    if (applied_) req.applied = *applied_;
    const Plan plan = make_plan(applied_manifests_, req.candidate_manifests);
    fetcher_.model = model;
    Applier applier(*state_, fetcher_);
    auto stats = applier.apply(req, plan);
    content_rejected_ = applier.content_rejected();
    if (!stats) return stats;
    applied_ = req.candidate;
    applied_manifests_ = req.candidate_manifests;
    return stats;
  }

  /// The files staging holds, by name (what a failed apply left for the next one).
  std::vector<std::string> staged() const {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& de : fs::directory_iterator(state_->staging_dir() / "files", ec))
      out.push_back(de.path().filename().string());
    return out;
  }

  fs::path tree() const { return dir_ / "tree"; }

  fs::path dir_;
  std::unique_ptr<StateStore> state_;
  std::unique_ptr<proto::PrivateKey> key_;
  ModelFetcher fetcher_;
  std::uint64_t serial_ = 0;
  std::optional<proto::Snapshot> applied_;
  ManifestSet applied_manifests_;
  bool content_rejected_ = false;
};

/// A release and a copy of it (or a symlink to it) at `copy`, a path of any depth.
Model release_and(const std::string& copy, bool as_link) {
  Model m;
  const std::vector<std::string> files = {"main/x86_64/APKINDEX.tar.gz", "main/x86_64/a-1.apk",
                                          "main/x86_64/b-1.apk", "community/x86_64/c-1.apk"};
  for (const auto& f : files) m["v3.20/" + f] = Item{"bytes of " + f};
  m["last-updated"] = Item{"1"};
  if (as_link) {
    // A relative target from the symlink's folder back to the top, then into v3.20.
    std::string up;
    for (char c : copy)
      if (c == '/') up += "../";
    m[copy] = link_to(up + "v3.20");
  } else {
    for (const auto& f : files) m[copy + "/" + f] = Item{"bytes of " + f};
  }
  return m;
}

// The symlink replacing a folder sits in the root partition (depth 1 and 2) or in a partition
// of its own (depth 4): the old entries below it are in other partitions or the same.
const std::vector<std::string> kCopies = {"latest-stable", "alias/latest-stable",
                                          "alias/x/y/latest-stable"};

// What an apply commits is what the served view and the scrubber load next: the manifests the
// cycle held (built at tier0, decoded at a relay) are shared with them, not parsed again.
TEST_F(ApplyTest, TheCommittedManifestsAreSharedWithTheNextLoad) {
  Model model = release_and("latest-stable", true);
  apply(model);
  model["v3.20/main/x86_64/a-1.apk"] = Item{"new bytes"};
  apply(model);
  ASSERT_TRUE(applied_);
  ASSERT_EQ(applied_manifests_.size(), applied_->partitions.size());
  for (const auto& [name, ref] : applied_->partitions) {
    auto loaded = state_->load_manifest(ref.manifest, name, kDepth);
    ASSERT_TRUE(loaded) << loaded.message();
    EXPECT_EQ(loaded->get(), applied_manifests_.at(name).get()) << name;
  }
}

TEST_F(ApplyTest, FolderBecomingASymlinkLeavesItsTargetAlone) {
  for (const auto& copy : kCopies) {
    SCOPED_TRACE(copy);
    ASSERT_NO_FATAL_FAILURE(apply(release_and(copy, false)));
    ASSERT_EQ(listing(tree()), listing_of(release_and(copy, false)));
    ASSERT_NO_FATAL_FAILURE(apply(release_and(copy, true)));
    // Deleting the old copy's paths by name went through the new symlink into v3.20 before.
    EXPECT_EQ(listing(tree()), listing_of(release_and(copy, true)));
    ASSERT_NO_FATAL_FAILURE(apply(Model{{"last-updated", Item{"2"}}}));
  }
}

TEST_F(ApplyTest, SymlinkBecomingAFolderGetsItsFiles) {
  for (const auto& copy : kCopies) {
    SCOPED_TRACE(copy);
    ASSERT_NO_FATAL_FAILURE(apply(release_and(copy, true)));
    ASSERT_EQ(listing(tree()), listing_of(release_and(copy, true)));
    ASSERT_NO_FATAL_FAILURE(apply(release_and(copy, false)));
    // Seen through the old symlink, the new folder's files were "in place" before.
    EXPECT_EQ(listing(tree()), listing_of(release_and(copy, false)));
    ASSERT_NO_FATAL_FAILURE(apply(Model{{"last-updated", Item{"2"}}}));
  }
}

TEST_F(ApplyTest, TypeChangesBackAndForthWithTheComponentWalk) {
  use_openat2(false);  // the walk of kernels without openat2
  for (const auto& copy : kCopies) {
    SCOPED_TRACE(copy);
    for (bool as_link : {false, true, false, true}) {
      ASSERT_NO_FATAL_FAILURE(apply(release_and(copy, as_link)));
      ASSERT_EQ(listing(tree()), listing_of(release_and(copy, as_link))) << as_link;
    }
  }
}

TEST_F(ApplyTest, FilesAndFoldersTradePlacesAtEveryDepth) {
  // a, a/b, a/b/c, a/b/c/d: each a file, then a folder holding the next, then a symlink.
  const std::vector<std::string> paths = {"a", "a/b", "a/b/c", "a/b/c/d", "a/b/c/d/e"};
  for (std::size_t i = 0; i + 1 < paths.size(); ++i) {
    SCOPED_TRACE(paths[i]);
    const Model as_file = {{paths[i], Item{"file " + paths[i]}}, {"keep/x", Item{"x"}}};
    const Model as_folder = {{paths[i + 1], Item{"below " + paths[i]}},
                             {paths[i] + "-sibling", Item{"s"}},
                             {"keep/x", Item{"x"}}};
    const Model as_link = {{paths[i], link_to("keep")}, {"keep/x", Item{"x"}}};
    for (const Model* m : {&as_file, &as_folder, &as_link, &as_folder, &as_file, &as_link}) {
      ASSERT_NO_FATAL_FAILURE(apply(*m));
      ASSERT_EQ(listing(tree()), listing_of(*m));
    }
  }
}

TEST_F(ApplyTest, ASymlinkPlantedInTheTreeIsNeverEntered) {
  // An operator (or a bug) left a symlink where the applied snapshot has a folder: deleting the
  // partition below it must not reach through it.
  Model before = {{"v/main/x86_64/a.apk", Item{"a"}}, {"other/main/x86_64/a.apk", Item{"a"}}};
  ASSERT_NO_FATAL_FAILURE(apply(before));
  fs::remove_all(tree() / "v/main");
  fs::create_directory_symlink("../other/main", tree() / "v/main");
  Model after = {{"other/main/x86_64/a.apk", Item{"a"}}};
  ASSERT_NO_FATAL_FAILURE(apply(after));
  auto expected = listing_of(after);
  expected["v"] = "d";
  expected["v/main"] = "l../other/main";  // not the engine's to remove: no entry names it
  EXPECT_EQ(listing(tree()), expected);
}

// --- Staging through a fake parent (docs/crash-safety.md, "The phases of an apply") ---------

constexpr std::size_t kFileBytes = 128;

/// Two partitions of three files each and the root partition, every file kFileBytes long.
Model two_partitions(const std::string& version) {
  Model m;
  for (const std::string part : {"v/main/x86_64", "v/community/x86_64"})
    for (const std::string name : {"a.apk", "b.apk", "APKINDEX.tar.gz"}) {
      std::string bytes = name + " of " + part + " version " + version + " ";
      bytes.resize(kFileBytes, '.');
      m[part + "/" + name] = Item{bytes};
    }
  std::string stamp = version;
  stamp.resize(kFileBytes, '\n');
  m["last-updated"] = Item{stamp};
  return m;
}

/// Every file of `dir` holds the whole content of some file of `model`.
::testing::AssertionResult AllContentOf(const fs::path& dir, const Model& model) {
  std::set<std::string> contents;
  for (const auto& [path, item] : model) contents.insert(item.bytes);
  std::error_code ec;
  for (const auto& de : fs::directory_iterator(dir, ec))
    if (!contents.count(unit::read_file(de.path())))
      return ::testing::AssertionFailure() << de.path() << " holds bytes of no file";
  return ::testing::AssertionSuccess();
}

// A downloaded file gets its entry's mode and mtime on the descriptor its bytes went through; an
// empty one, which no byte opens, is made with them when verified.
TEST_F(ApplyTest, DownloadedFilesEmptyOrNotGetTheirModeAndMtime) {
  Model m;
  m["v3.20/main/x86_64/empty.apk"] = Item{"", false, 0640};
  m["v3.20/main/x86_64/one.apk"] = Item{"1", false, 0755};
  m["v3.20/main/x86_64/APKINDEX.tar.gz"] = Item{"index"};
  m["v3.20/main/x86_64/big.apk"] = Item{std::string(3u << 20, 'b')};
  apply(m);
  EXPECT_EQ(listing(tree()), listing_of(m));
  for (const auto& [path, item] : m) {
    struct stat st;
    ASSERT_EQ(::lstat((tree() / path).c_str(), &st), 0) << path;
    EXPECT_EQ(st.st_mtim.tv_sec, 1000) << path;
    EXPECT_EQ(st.st_mode & 07777, item.mode) << path;
  }
  EXPECT_EQ(fetcher_.fetched, m.size());
  EXPECT_TRUE(staged().empty());
}

TEST_F(ApplyTest, AFetchFailingMidBatchInstallsNothing) {
  const Model v1 = two_partitions("1"), v2 = two_partitions("2");
  ASSERT_NO_FATAL_FAILURE(apply(v1));
  fetcher_.fail_at = fetcher_.fetched + 4;  // the fourth file of the batch, 10 bytes into it
  fetcher_.cut = 10;
  auto failed = try_apply(v2);
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.message().find("connection reset"), std::string::npos) << failed.message();
  EXPECT_FALSE(content_rejected_) << "the parent broke off: what it sent is worth resuming";
  EXPECT_EQ(listing(tree()), listing_of(v1));
  EXPECT_FALSE(fs::exists(dir_ / "state/journal.json"));
  EXPECT_FALSE(fs::exists(state_->pending_snapshot_path()));
  // Kept for the next run: the three whole files and the cut one; the files never begun go.
  EXPECT_EQ(staged().size(), 4u);
}

TEST_F(ApplyTest, LeftoversAreReusedAndACutDownloadResumed) {
  const Model v1 = two_partitions("1"), v2 = two_partitions("2");
  ASSERT_NO_FATAL_FAILURE(apply(v1));
  fetcher_.fail_at = fetcher_.fetched + 4;
  fetcher_.cut = 10;
  ASSERT_FALSE(try_apply(v2));
  fetcher_.fail_at = 0;
  const std::size_t before = fetcher_.fetched;
  auto stats = try_apply(v2);
  ASSERT_TRUE(stats) << stats.message();
  EXPECT_EQ(listing(tree()), listing_of(v2));
  EXPECT_EQ(stats->reused_files, 3u) << "the whole leftovers, verified again";
  EXPECT_EQ(stats->resumed_files, 1u);
  EXPECT_EQ(stats->fetched_files, 4u);
  EXPECT_EQ(fetcher_.fetched - before, 4u);
  EXPECT_EQ(stats->fetched_bytes, 4 * kFileBytes - 10) << "the cut file from its 11th byte on";
  EXPECT_EQ(staged(), std::vector<std::string>{});
}

TEST_F(ApplyTest, ALeftoverThatNoLongerVerifiesIsFetchedAgain) {
  const Model v1 = two_partitions("1"), v2 = two_partitions("2");
  ASSERT_NO_FATAL_FAILURE(apply(v1));
  fetcher_.fail_at = fetcher_.fetched + 4;
  fetcher_.cut = 10;
  ASSERT_FALSE(try_apply(v2));
  std::size_t damaged = 0;
  for (const auto& name : staged()) {
    const fs::path file = state_->staging_dir() / "files" / name;
    if (fs::file_size(file) != kFileBytes) continue;       // the cut one
    unit::write_file(file, std::string(kFileBytes, 'r'));  // rotted on the disk
    ++damaged;
  }
  ASSERT_EQ(damaged, 3u);
  fetcher_.fail_at = 0;
  auto stats = try_apply(v2);
  ASSERT_TRUE(stats) << stats.message();
  EXPECT_EQ(listing(tree()), listing_of(v2));
  EXPECT_EQ(stats->reused_files, 0u);
  EXPECT_EQ(stats->fetched_files, 7u);
  EXPECT_EQ(stats->resumed_files, 1u);
}

TEST_F(ApplyTest, ABodyContradictingItsEntryIsRefused) {
  const Model v1 = two_partitions("1"), v2 = two_partitions("2");
  ASSERT_NO_FATAL_FAILURE(apply(v1));
  fetcher_.corrupt = {"v/main/x86_64/b.apk"};
  auto failed = try_apply(v2);
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.message().find("SHA-256 mismatch"), std::string::npos) << failed.message();
  EXPECT_TRUE(content_rejected_);
  EXPECT_EQ(listing(tree()), listing_of(v1));
  EXPECT_FALSE(fs::exists(dir_ / "state/journal.json"));
  EXPECT_TRUE(AllContentOf(state_->staging_dir() / "files", v2)) << "the bad body is not kept";

  fetcher_.corrupt.clear();
  fetcher_.extra = "and more";  // the right bytes, then some
  failed = try_apply(v2);
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.message().find("more bytes than the manifest's"), std::string::npos)
      << failed.message();
  EXPECT_TRUE(content_rejected_);
  EXPECT_EQ(listing(tree()), listing_of(v1));
  EXPECT_TRUE(AllContentOf(state_->staging_dir() / "files", v2));

  fetcher_.extra.clear();
  ASSERT_NO_FATAL_FAILURE(apply(v2));
  EXPECT_EQ(listing(tree()), listing_of(v2));
}

TEST_F(ApplyTest, LocalContentIsCopiedOrFoundInPlaceNotFetched) {
  Model v1 = {{"v/main/x86_64/old.apk", Item{"moved bytes"}}, {"last-updated", Item{"1"}}};
  ASSERT_NO_FATAL_FAILURE(apply(v1));
  Model v2 = {{"v/main/x86_64/new.apk", Item{"moved bytes"}},
              {"v/main/x86_64/synced.apk", Item{"rsynced"}},
              {"last-updated", Item{"2"}}};
  // A file already in the tree with the entry's content, mode and mtime (an rsync did it).
  unit::write_file(tree() / "v/main/x86_64/synced.apk", "rsynced");
  ASSERT_EQ(::chmod((tree() / "v/main/x86_64/synced.apk").c_str(), 0644), 0);
  const timespec times[2] = {{1000, 0}, {1000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, (tree() / "v/main/x86_64/synced.apk").c_str(), times, 0), 0);
  const std::size_t before = fetcher_.fetched;
  auto stats = try_apply(v2);
  ASSERT_TRUE(stats) << stats.message();
  EXPECT_EQ(listing(tree()), listing_of(v2));
  EXPECT_EQ(stats->reused_files, 2u) << "the deleted file copied, the synced one in place";
  EXPECT_EQ(stats->fetched_files, 1u);
  EXPECT_EQ(fetcher_.fetched - before, 1u) << "only last-updated";
}

TEST(OpenDirBeneathTest, RefusesASymlinkAtAnyComponent) {
  const fs::path dir = unit::make_temp_dir("open_dir_beneath");
  ASSERT_FALSE(dir.empty());
  fs::create_directories(dir / "a/b/c");
  fs::create_directory_symlink("b", dir / "a/l");
  unit::write_file(dir / "a/f", "x");
  UniqueFd root(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(root.valid());
  for (bool openat2 : {true, false}) {
    use_openat2(openat2);
    SCOPED_TRACE(openat2);
    EXPECT_TRUE(open_dir_beneath(root.get(), "").valid());
    EXPECT_TRUE(open_dir_beneath(root.get(), "a/b/c").valid());
    EXPECT_FALSE(open_dir_beneath(root.get(), "a/l").valid());
    EXPECT_FALSE(open_dir_beneath(root.get(), "a/l/c").valid());
    EXPECT_FALSE(open_dir_beneath(root.get(), "a/f").valid());
    UniqueFd missing = open_dir_beneath(root.get(), "a/missing/c");
    const int err = errno;
    EXPECT_FALSE(missing.valid());
    EXPECT_EQ(err, ENOENT);
  }
  use_openat2(true);
  fs::remove_all(dir);
}

// A folder found missing is remembered (an initial sync asks once per folder, not per file),
// and seen as soon as it is made; a rename replaces a file but never a folder.
TEST(TreeFsTest, AFolderFoundMissingIsSeenOnceMadeAndARenameSparesAFolder) {
  const fs::path dir = unit::make_temp_dir("treefs");
  ASSERT_FALSE(dir.empty());
  fs::create_directories(dir / "tree");
  auto tree = TreeFs::open(dir / "tree");
  ASSERT_TRUE(tree) << tree.message();
  struct stat st;
  for (const char* path : {"a/b/f", "a/b/g"}) {
    auto seen = tree->lstat(path, st);
    ASSERT_TRUE(seen) << seen.message();
    EXPECT_FALSE(*seen) << path;
  }
  ASSERT_TRUE(tree->make_dirs("a/b", false));
  unit::write_file(dir / "staged", "new");
  auto renamed = tree->rename_into(dir / "staged", "a/b/f");
  ASSERT_TRUE(renamed) << renamed.message();
  EXPECT_TRUE(*renamed);
  auto seen = tree->lstat("a/b/f", st);
  ASSERT_TRUE(seen) << seen.message();
  EXPECT_TRUE(*seen) << "the folder made after it was found missing";

  unit::write_file(dir / "staged", "newer");
  ASSERT_TRUE(tree->make_dirs("a/b/folder/sub", false));
  renamed = tree->rename_into(dir / "staged", "a/b/folder");
  ASSERT_TRUE(renamed) << renamed.message();
  EXPECT_FALSE(*renamed) << "a folder stands there";
  EXPECT_TRUE(fs::is_directory(dir / "tree/a/b/folder/sub"));
  EXPECT_EQ(unit::read_file(dir / "staged"), "newer");
  renamed = tree->rename_into(dir / "staged", "a/b/f");
  ASSERT_TRUE(renamed) << renamed.message();
  EXPECT_TRUE(*renamed);
  EXPECT_EQ(unit::read_file(dir / "tree/a/b/f"), "newer");
  fs::remove_all(dir);
}

TEST(TreeFsTest, RemovesAFolderWithoutFollowingItsSymlinks) {
  const fs::path dir = unit::make_temp_dir("treefs");
  ASSERT_FALSE(dir.empty());
  unit::write_file(dir / "keep/x", "x");
  unit::write_file(dir / "gone/sub/y", "y");
  fs::create_directory_symlink("../keep", dir / "gone/sub/to-keep");
  fs::create_directory_symlink("../keep", dir / "via");
  auto tree = TreeFs::open(dir);
  ASSERT_TRUE(tree) << tree.message();
  ASSERT_TRUE(tree->remove_tree("gone"));
  EXPECT_FALSE(fs::exists(dir / "gone"));
  // Through a symlink nothing is reached: "absent", and nothing removed behind it.
  struct stat st;
  auto seen = tree->lstat("via/x", st);
  ASSERT_TRUE(seen);
  EXPECT_FALSE(*seen);
  auto unlinked = tree->unlink("via/x");
  ASSERT_TRUE(unlinked);
  EXPECT_FALSE(*unlinked);
  EXPECT_TRUE(tree->remove_tree("via/x"));
  EXPECT_FALSE(tree->rmdir_if_empty("via"));
  EXPECT_EQ(unit::read_file(dir / "keep/x"), "x");
  // A folder is made where a symlink stood only when blockers may go.
  EXPECT_FALSE(tree->make_dirs("via/sub", false));
  auto made = tree->make_dirs("via/sub", true);
  ASSERT_TRUE(made) << made.message();
  EXPECT_TRUE(fs::is_directory(fs::symlink_status(dir / "via")));
  EXPECT_EQ(unit::read_file(dir / "keep/x"), "x");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tiersync::sync
