#include "daemon/transport/file_transport.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "daemon/base/fd.h"
#include "proto/dsse.h"
#include "proto/manifest.h"
#include "proto/wire.h"

namespace tiersync::transport {

namespace {

std::string sys_error(const std::filesystem::path& p) {
  return "parent file://" + p.string() + ": " + std::strerror(errno);
}

// Opens a regular file of the parent without blocking: a FIFO or a device planted in a parent's
// tree must not hang the relay or feed it endless bytes. O_NONBLOCK is left set: it does nothing
// to a regular file's reads. `size` is the file's size when opened.
base::UniqueFd open_regular(const std::filesystem::path& file, std::string& error,
                            std::uint64_t* size = nullptr) {
  base::UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd.valid()) {
    error = sys_error(file);
    return fd;
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    error = "parent file://" + file.string() + ": not a regular file";
    return base::UniqueFd();
  }
  if (size) *size = static_cast<std::uint64_t>(st.st_size);
  return fd;
}

// Read-ahead advice pays only beyond the first read.
constexpr std::size_t kReadBuffer = 1 << 20;

}  // namespace

Result<std::string> FileTransport::read_small(const std::filesystem::path& file,
                                              std::size_t limit) {
  std::string error;
  const base::UniqueFd in = open_regular(file, error);
  if (!in.valid()) return make_error(error);
  std::string out;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(in.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(sys_error(file));
    if (n == 0) break;
    if (out.size() + static_cast<std::size_t>(n) > limit)
      return make_error("parent file://" + file.string() + ": larger than the limit of " +
                        std::to_string(limit) + " bytes");
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

Result<std::string> FileTransport::fetch_snapshot() {
  return read_small(root_ / proto::wire::kSnapshot, proto::kMaxEnvelopeBytes);
}

Result<std::optional<std::string>> FileTransport::fetch_document(std::string_view path,
                                                                 std::size_t max_bytes) {
  const std::filesystem::path file = root_ / std::string(path);
  struct stat st;
  if (::stat(file.c_str(), &st) != 0 && errno == ENOENT) return std::optional<std::string>();
  auto bytes = read_small(file, max_bytes);
  if (!bytes) return bytes.error();
  return std::optional<std::string>(std::move(*bytes));
}

Status FileTransport::fetch_manifest(const proto::Digest& digest, const Sink& sink,
                                     const std::function<Status()>& /*restart*/) {
  // Read once from the first byte: there is nothing to restart.
  const std::string path = proto::wire::manifest_path(digest);
  std::uint64_t total = 0;
  auto st = fetch_file(path, proto::kMaxManifestBytes, [&](const char* data, std::size_t size) {
    total += size;
    if (total > proto::kMaxManifestBytes)
      return Status(make_error("parent file://" + (root_ / path).string() +
                               ": larger than the limit of " +
                               std::to_string(proto::kMaxManifestBytes) + " bytes"));
    return sink(data, size);
  });
  return st;
}

Status FileTransport::fetch_file(std::string_view path, std::uint64_t max_bytes, const Sink& sink) {
  const std::filesystem::path file = root_ / std::string(path);
  std::string error;
  std::uint64_t size = 0;
  const base::UniqueFd in = open_regular(file, error, &size);
  if (!in.valid()) return make_error(error);
  if (size > kReadBuffer) ::posix_fadvise(in.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  static thread_local std::vector<char> buf(kReadBuffer);
  std::uint64_t total = 0;
  // The file as it was when opened: its size read, no read for the end (a file that grows
  // meanwhile gives bytes the manifest's size and digest refuse anyway).
  while (total <= max_bytes && total < size) {
    ssize_t n = ::read(in.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(sys_error(file));
    if (n == 0) break;
    if (stop_ && stop_->load()) return make_error("parent file://" + file.string() + ": stopped");
    total += static_cast<std::uint64_t>(n);
    if (auto st = sink(buf.data(), static_cast<std::size_t>(n)); !st) return st;
  }
  return {};
}

}  // namespace tiersync::transport
