// tier0 and what builders do to its source folder: modes are published masked, and a file
// changed in place in source.dir never changes the trees (docs/security.md, "Modes" and "The
// source folder").

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

class SourceTest : public OriginTest {
 protected:
  SourceTest() : mirror(make_mirror(root / "mirror", "mirror", origin.url(), {key.pub})) {}

  /// Publishes the source and syncs the mirror; both must succeed.
  void publish_and_sync() {
    ASSERT_TRUE(Exited(origin.once(), 0));
    ASSERT_TRUE(Exited(mirror.once(), 0));
  }

  static std::uint32_t mode_of(const fs::path& file) {
    struct stat st {};
    EXPECT_EQ(::lstat(file.c_str(), &st), 0) << file;
    return st.st_mode & 07777;
  }

  Node mirror;
};

TEST_F(SourceTest, SetuidAndWritableModesArePublishedMasked) {
  const auto packages = packages_in(model, "edge/main/x86_64");
  ASSERT_GE(packages.size(), 3u);
  model[packages[0]].mode = 04777;
  model[packages[1]].mode = 0666;
  model[packages[2]].mode = 02750;
  materialize(model, source);
  ASSERT_EQ(::chmod((source / packages[0]).c_str(), 04777), 0);  // as a builder's chmod 4777
  ASSERT_EQ(::chmod((source / packages[2]).c_str(), 02750), 0);
  ASSERT_EQ(mode_of(source / packages[0]), 04777u);
  publish_and_sync();

  TreeModel expected = model;
  expected[packages[0]].mode = 0755;
  expected[packages[1]].mode = 0644;
  expected[packages[2]].mode = 0750;
  for (const Node* node : {&origin, &mirror}) {
    EXPECT_EQ(mode_of(node->tree() / packages[0]), 0755u) << node->name;
    EXPECT_EQ(mode_of(node->tree() / packages[1]), 0644u) << node->name;
    EXPECT_EQ(mode_of(node->tree() / packages[2]), 0750u) << node->name;
    EXPECT_TRUE(TreeMatches(node->tree(), expected)) << node->name;
  }
  // The source is the builders': left as it was.
  EXPECT_EQ(mode_of(source / packages[0]), 04777u);
  // Nothing left to do: the masked modes are what was published.
  EXPECT_TRUE(Exited(origin.once(), 0));
  EXPECT_TRUE(Exited(mirror.once(), 0));
}

// With hard links, a file truncated or rewritten in place in source.dir changed tier0's tree at
// once: mirrors then fetched bytes that contradicted the signed hash. The tree holds copies.
TEST_F(SourceTest, FileTruncatedInPlaceInTheSourceLeavesTheTreeIntact) {
  publish_and_sync();
  const std::string victim = packages_in(model, "edge/main/x86_64")[0];
  const std::string published = model[victim].bytes;
  ASSERT_FALSE(published.empty());

  ASSERT_EQ(::truncate((source / victim).c_str(), 0), 0);
  EXPECT_EQ(read_file(origin.tree() / victim), published);
  // A mirror syncing from the tree meanwhile gets what was signed.
  RunResult fresh = make_mirror(root / "fresh", "fresh", origin.url(), {key.pub}).once();
  EXPECT_TRUE(Exited(fresh, 0));
  EXPECT_EQ(read_file(root / "fresh/tree" / victim), published);

  // Rewritten in place with its size and mtime kept (what a reproducible rebuild can do): the
  // hash cache cannot see it, so nothing is published; the tree keeps the signed bytes.
  {
    std::string other(published.size(), 'x');
    const int fd = ::open((source / victim).c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, other.data(), other.size(), 0), static_cast<ssize_t>(other.size()));
    const timespec times[2] = {{model[victim].mtime, 0}, {model[victim].mtime, 0}};
    ASSERT_EQ(::futimens(fd, times), 0);
    ::close(fd);
  }
  EXPECT_EQ(read_file(origin.tree() / victim), published);
  EXPECT_TRUE(Exited(mirror.once(), 0));
  EXPECT_EQ(read_file(mirror.tree() / victim), published);

  struct stat src {
  }, tree{};
  ASSERT_EQ(::stat((source / victim).c_str(), &src), 0);
  ASSERT_EQ(::stat((origin.tree() / victim).c_str(), &tree), 0);
  EXPECT_FALSE(src.st_dev == tree.st_dev && src.st_ino == tree.st_ino)
      << "the tree must not share an inode with the source";

  // A real change (new content, new mtime) is published as usual.
  model[victim].bytes = "rebuilt";
  model[victim].mtime += 10;
  materialize(model, source);
  publish_and_sync();
  EXPECT_TRUE(TreeMatches(origin.tree(), model));
  EXPECT_TRUE(TreeMatches(mirror.tree(), model));
}

}  // namespace
}  // namespace tiersync::it
