#include "daemon/node/watch.h"

#include <spdlog/spdlog.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>
#include <vector>

#include "proto/path.h"

namespace tiersync::node {

namespace fs = std::filesystem;

namespace {

// What can change the published tree: content (IN_MODIFY while an upload is written, so a slow
// one never looks quiet), names, removals, and mode or mtime (IN_ATTRIB).
constexpr std::uint32_t kMask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_MODIFY |
                                IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF |
                                IN_ONLYDIR | IN_DONT_FOLLOW;

}  // namespace

SourceWatcher::SourceWatcher(fs::path root, std::size_t depth)
    : root_(std::move(root)), depth_(depth) {
  fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd_ < 0) {
    why_ = std::string("inotify: ") + std::strerror(errno);
    return;
  }
  watch_tree(root_);
}

SourceWatcher::~SourceWatcher() {
  if (fd_ >= 0) ::close(fd_);
}

void SourceWatcher::close_with(std::string why) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  dirs_.clear();
  why_ = std::move(why);
}

bool SourceWatcher::watch_tree(const fs::path& dir) {
  std::vector<fs::path> todo{dir};
  while (!todo.empty()) {  // bounded by the folders below `dir`
    fs::path d = std::move(todo.back());
    todo.pop_back();
    const int wd = ::inotify_add_watch(fd_, d.c_str(), kMask);
    if (wd < 0) {
      if (errno == ENOSPC || errno == ENOMEM) {
        close_with("inotify: the watch limit is reached at " + d.string() +
                   " (fs.inotify.max_user_watches)");
        return false;
      }
      if (d == root_) {
        close_with("inotify: " + d.string() + ": " + std::strerror(errno));
        return false;
      }
      continue;  // gone already, or not a folder: its creation event covers it
    }
    dirs_[wd] = d == root_ ? std::string() : d.lexically_relative(root_).string();
    std::error_code ec;
    for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec)) {
      std::error_code type_ec;
      if (it->is_directory(type_ec) && !it->is_symlink(type_ec)) todo.push_back(it->path());
    }
  }
  return true;
}

// A path below the root, cut to one component more than the layout's segments: enough to
// tell a partition's content from the entries above it (docs/architecture.md, "Incremental
// publish"). tiersync's own folder is never content.
void SourceWatcher::note(const std::string& rel) {
  constexpr std::size_t kMaxPaths = 65536;  // a storm of uploads: then everything is rescanned
  if (seen_.all || rel.empty()) return;
  const std::string_view top = std::string_view(rel).substr(0, rel.find('/'));
  if (top == proto::kMetaDir) return;
  std::size_t cut = std::string::npos;
  for (std::size_t i = 0, from = 0; i <= depth_; ++i, from = cut + 1)
    if ((cut = rel.find('/', from)) == std::string::npos) break;
  seen_.paths.insert(cut == std::string::npos ? rel : rel.substr(0, cut));
  if (seen_.paths.size() > kMaxPaths) {
    seen_.paths.clear();
    seen_.all = true;
  }
}

void SourceWatcher::watch_again() {
  for (const auto& [wd, path] : dirs_) ::inotify_rm_watch(fd_, wd);
  dirs_.clear();
  watch_tree(root_);
}

SourceChanges SourceWatcher::take() {
  return std::exchange(seen_, {});
}

bool SourceWatcher::changed() {
  if (fd_ < 0) return false;
  bool any = false;
  bool rewatch = false;
  alignas(inotify_event) char buf[64 * 1024];
  while (fd_ >= 0) {  // bounded: each read drains queued events; the queue is finite
    const ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EAGAIN: drained
    for (ssize_t off = 0; off < n;) {
      const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
      off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
      if (ev->mask & IN_Q_OVERFLOW) {
        // Events were lost, new folders among them perhaps: watch everything again, and report
        // a change, so that the next publish scans the whole source.
        spdlog::warn(
            "inotify: the event queue overflowed (fs.inotify.max_queued_events): watching {} "
            "again and scanning all of it",
            root_.string());
        any = rewatch = seen_.all = true;
        continue;
      }
      if (ev->mask & IN_IGNORED) {
        dirs_.erase(ev->wd);
        continue;
      }
      any = true;
      auto it = dirs_.find(ev->wd);
      if (it == dirs_.end()) continue;
      const std::string& dir = it->second;
      if (ev->len == 0) {  // the watched folder itself: its parent names it, unless it is root_
        if (dir.empty() && (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF))) seen_.all = true;
        continue;
      }
      const std::string rel = dir.empty() ? std::string(ev->name) : dir + "/" + ev->name;
      note(rel);
      if (!(ev->mask & IN_ISDIR)) continue;
      // A folder renamed leaves its watches (and those below it) with stale paths: watched
      // again, and everything rescanned once.
      if (ev->mask & (IN_MOVED_FROM | IN_MOVED_TO)) rewatch = seen_.all = true;
      if ((ev->mask & IN_CREATE) && !watch_tree(root_ / rel)) return true;
    }
  }
  if (rewatch && fd_ >= 0) watch_again();
  return any;
}

}  // namespace tiersync::node
