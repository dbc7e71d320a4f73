#pragma once
/// tier0's view of its source folder between publishes: inotify watches on every folder, so the
/// daemon learns of an upload without walking the tree every second (29,000 files cost ~8% of a
/// core that way; a large origin many times more).

#include <cstddef>
#include <filesystem>
#include <string>
#include <unordered_map>

#include "daemon/node/node.h"

namespace tiersync::node {

class SourceWatcher {
 public:
  /// Watches `root` and every folder below it (symlinks are not followed); `depth` is the
  /// layout's number of segments. When inotify is not there, or its watch limit is reached,
  /// available() is false and `why` says so: the caller polls instead.
  SourceWatcher(std::filesystem::path root, std::size_t depth);
  ~SourceWatcher();
  SourceWatcher(const SourceWatcher&) = delete;
  SourceWatcher& operator=(const SourceWatcher&) = delete;

  bool available() const { return fd_ >= 0; }
  const std::string& why() const { return why_; }

  /// Reads the events queued since the last call without blocking; true when any of them can
  /// mean a change of the source (a file or folder created, written, renamed, removed, or its
  /// mode or mtime set), or when the queue overflowed. New folders are watched as they appear.
  /// What changed is kept for take(): the path of each event, cut to one component more than
  /// the layout's segments; everything after an overflow, a folder renamed (the watches' paths
  /// are then stale) or too many paths at once.
  bool changed();
  /// What changed() saw since the last take().
  SourceChanges take();

 private:
  void note(const std::string& rel);
  void watch_again();

  /// Adds watches for `dir` and every folder below it; false (and the watcher closed) when the
  /// watch limit is reached.
  bool watch_tree(const std::filesystem::path& dir);
  void close_with(std::string why);

  std::filesystem::path root_;
  std::size_t depth_;
  int fd_ = -1;
  std::unordered_map<int, std::string> dirs_;  ///< watch descriptor -> folder below root_ ("")
  SourceChanges seen_;
  std::string why_;
};

}  // namespace tiersync::node
