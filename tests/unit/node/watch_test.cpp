// tier0's source watcher: inotify events of every kind an upload makes, in folders that exist at
// start and in folders made later; nothing when nothing happens.

#include "daemon/node/watch.h"
#include "tests/unit/support.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

namespace tiersync::node {
namespace {

namespace fs = std::filesystem;

class SourceWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = unit::make_temp_dir("watch_test");
    ASSERT_FALSE(root_.empty());
    fs::create_directories(root_ / "edge/main/x86_64");
    std::ofstream(root_ / "edge/main/x86_64/a.apk") << "a";
  }
  void TearDown() override {
    fs::remove_all(root_);
    fs::remove_all(root_.parent_path() / ("outside-" + root_.filename().string()));
  }
  fs::path root_;
};

TEST_F(SourceWatcherTest, SeesEveryKindOfChangeAndNothingElse) {
  SourceWatcher w(root_, 3);
  ASSERT_TRUE(w.available()) << w.why();
  EXPECT_FALSE(w.changed());

  std::ofstream(root_ / "edge/main/x86_64/b.apk") << "b";  // created and written, deep down
  EXPECT_TRUE(w.changed());
  EXPECT_FALSE(w.changed());  // drained

  {
    std::ifstream in(root_ / "edge/main/x86_64/a.apk");
    std::string s;
    in >> s;
  }
  EXPECT_FALSE(w.changed()) << "reading is not a change";

  ::chmod((root_ / "edge/main/x86_64/a.apk").c_str(), 0600);  // mode only
  EXPECT_TRUE(w.changed());
  fs::rename(root_ / "edge/main/x86_64/b.apk", root_ / "edge/main/x86_64/c.apk");
  EXPECT_TRUE(w.changed());
  fs::remove(root_ / "edge/main/x86_64/c.apk");
  EXPECT_TRUE(w.changed());

  // A folder made after the start is watched too: a file written in it later is seen.
  fs::create_directories(root_ / "edge/community/aarch64");
  EXPECT_TRUE(w.changed());
  std::ofstream(root_ / "edge/community/aarch64/d.apk") << "d";
  EXPECT_TRUE(w.changed());
  // A folder moved in from outside, with content.
  const fs::path outside = root_.parent_path() / ("outside-" + root_.filename().string());
  fs::create_directories(outside / "x");
  fs::rename(outside, root_ / "edge/testing");
  EXPECT_TRUE(w.changed());
  std::ofstream(root_ / "edge/testing/x/e.apk") << "e";
  EXPECT_TRUE(w.changed());
  fs::remove_all(root_ / "edge/community");
  EXPECT_TRUE(w.changed());
  EXPECT_FALSE(w.changed());
}

// IN_Q_OVERFLOW: the kernel dropped events (a folder created meanwhile among them). The watcher
// reports a change (the daemon then publishes from a full scan) and watches every folder again,
// the new one included.
TEST_F(SourceWatcherTest, AQueueOverflowIsAChangeAndEveryFolderIsWatchedAgain) {
  std::ifstream limit_file("/proc/sys/fs/inotify/max_queued_events");
  long limit = 0;
  ASSERT_TRUE(limit_file >> limit) << "cannot read fs.inotify.max_queued_events";
  ASSERT_LT(limit, 1'000'000) << "fs.inotify.max_queued_events is too large to overflow here";
  SourceWatcher w(root_, 3);
  ASSERT_TRUE(w.available()) << w.why();
  // Three events per round (create, close, delete), none merged with the one before.
  const fs::path scratch = root_ / "edge/main/x86_64/scratch";
  for (long i = 0; i < limit / 3 + 100; ++i) {
    const int fd = ::open(scratch.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ::close(fd);
    ::unlink(scratch.c_str());
  }
  fs::create_directories(root_ / "edge/late/x86_64");  // its event is lost
  EXPECT_TRUE(w.changed());
  EXPECT_TRUE(w.take().all) << "after an overflow the next publish walks everything";
  EXPECT_TRUE(w.available()) << w.why();
  EXPECT_FALSE(w.changed());  // drained
  std::ofstream(root_ / "edge/late/x86_64/f.apk") << "f";
  EXPECT_TRUE(w.changed()) << "the folder made during the overflow is watched";
}

// What the incremental publish rescans comes from here (docs/architecture.md, "Incremental
// publish"): each change's path, cut to one component more than the layout's three.
TEST_F(SourceWatcherTest, NamesThePathOfEachChangeCutBelowThePartition) {
  SourceWatcher w(root_, 3);
  ASSERT_TRUE(w.available()) << w.why();
  EXPECT_TRUE(w.take().empty());

  std::ofstream(root_ / "edge/main/x86_64/b.apk") << "b";
  fs::create_directories(root_ / "edge/main/x86_64/sub/deeper");
  ASSERT_TRUE(w.changed());
  std::ofstream(root_ / "edge/main/x86_64/sub/deeper/c.apk") << "c";
  std::ofstream(root_ / "edge/last-updated") << "1";  // the root partition's
  // A new folder names itself (what was made in it before its watch is covered by it); one made
  // in it later names itself too.
  fs::create_directories(root_ / "edge/community");
  ASSERT_TRUE(w.changed());
  fs::create_directories(root_ / "edge/community/aarch64");
  ASSERT_TRUE(w.changed());
  SourceChanges seen = w.take();
  EXPECT_FALSE(seen.all);
  EXPECT_EQ(seen.paths,
            (std::set<std::string>{"edge/community", "edge/community/aarch64", "edge/last-updated",
                                   "edge/main/x86_64/b.apk", "edge/main/x86_64/sub"}));
  EXPECT_TRUE(w.take().empty()) << "taken once";

  // tiersync's own folder at the top is never content.
  fs::create_directories(root_ / ".tiersync/x");
  EXPECT_TRUE(w.changed());
  std::ofstream(root_ / ".tiersync/x/y") << "y";
  w.changed();
  EXPECT_TRUE(w.take().empty());

  // A folder renamed: the watches below it would name stale paths, so everything is rescanned.
  fs::rename(root_ / "edge/main/x86_64", root_ / "edge/main/x86_64.old");
  ASSERT_TRUE(w.changed());
  EXPECT_TRUE(w.take().all);
  std::ofstream(root_ / "edge/main/x86_64.old/d.apk") << "d";
  ASSERT_TRUE(w.changed());
  EXPECT_EQ(w.take().paths, (std::set<std::string>{"edge/main/x86_64.old/d.apk"}))
      << "watched again under the new name";
}

TEST(SourceWatcher, AMissingSourceIsNotWatched) {
  SourceWatcher w(fs::path(::testing::TempDir()) / "no-such-folder-for-tiersync", 3);
  EXPECT_FALSE(w.available());
  EXPECT_NE(w.why().find("no-such-folder-for-tiersync"), std::string::npos) << w.why();
  EXPECT_FALSE(w.changed());
}

}  // namespace
}  // namespace tiersync::node
