// tier0 and what builders do to its source folder: modes are published masked
// (docs/security.md, "Modes").

#include <sys/stat.h>

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
  // Nothing left to do: the masked modes are what was published.
  EXPECT_TRUE(Exited(origin.once(), 0));
  EXPECT_TRUE(Exited(mirror.once(), 0));
}

}  // namespace
}  // namespace tiersync::it
