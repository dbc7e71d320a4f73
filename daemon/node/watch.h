#pragma once
/// tier0's view of its source folder between publishes: inotify watches on every folder, so the
/// daemon learns of an upload without walking the tree every second (29,000 files cost ~8% of a
/// core that way; a large origin many times more).

#include <filesystem>
#include <string>
#include <unordered_map>

namespace tiersync::node {

class SourceWatcher {
 public:
  /// Watches `root` and every folder below it (symlinks are not followed). When inotify is not
  /// there, or its watch limit is reached, available() is false and `why` says so: the caller
  /// polls instead.
  explicit SourceWatcher(std::filesystem::path root);
  ~SourceWatcher();
  SourceWatcher(const SourceWatcher&) = delete;
  SourceWatcher& operator=(const SourceWatcher&) = delete;

  bool available() const { return fd_ >= 0; }
  const std::string& why() const { return why_; }

  /// Reads the events queued since the last call without blocking; true when any of them can
  /// mean a change of the source (a file or folder created, written, renamed, removed, or its
  /// mode or mtime set), or when the queue overflowed. New folders are watched as they appear.
  bool changed();

 private:
  /// Adds watches for `dir` and every folder below it; false (and the watcher closed) when the
  /// watch limit is reached.
  bool watch_tree(const std::filesystem::path& dir);
  void close_with(std::string why);

  std::filesystem::path root_;
  int fd_ = -1;
  std::unordered_map<int, std::filesystem::path> dirs_;  ///< watch descriptor -> folder
  std::string why_;
};

}  // namespace tiersync::node
