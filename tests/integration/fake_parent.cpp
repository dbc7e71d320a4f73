#include "tests/integration/fake_parent.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ctime>
#include <stdexcept>

#include "proto/digest.h"

namespace tiersync::it {

std::map<std::string, proto::Manifest> manifests_of(const TreeModel& model) {
  std::map<std::string, proto::Manifest> out;
  for (const auto& [path, spec] : model) {
    proto::Manifest& m = out[partition_of(path)];
    m.partition = partition_of(path);
    if (spec.link) {
      m.entries.push_back(proto::Entry::symlink(path, spec.bytes));
    } else {
      bool index = fs::path(path).filename() == kIndexName;
      m.entries.push_back(proto::Entry::file(path, spec.bytes.size(), proto::sha256(spec.bytes),
                                             spec.mtime, spec.mode, index));
    }
  }
  // std::map orders std::string keys bytewise, as manifests require.
  return out;
}

Offer Offer::of(const TreeModel& model, std::uint64_t serial, const proto::PrivateKey& key) {
  Offer o;
  o.content = model;
  o.manifests = manifests_of(model);
  o.serial = serial;
  o.signers = {key};
  return o;
}

void FakeParent::publish(const Offer& o) const {
  fs::remove_all(tree_);
  fs::create_directories(tree_ / ".tiersync/v1/manifests");
  materialize(o.content, tree_);
  for (const auto& [file, bytes] : o.files_outside) write_file(file, bytes);
  for (const auto& [rel, bytes] : o.raw_files) write_file(tree_.string() + "/" + rel, bytes);

  std::int64_t now = std::time(nullptr);
  proto::Snapshot s;
  s.origin = o.origin;
  s.serial = o.serial;
  s.created = o.created ? o.created : now - 60;
  s.expires = o.expires ? o.expires : now + 7 * 86400;
  s.layout = std::string(kLayout);
  s.depth = kDepth;
  for (const auto& [partition, manifest] : o.manifests) {
    auto raw = o.raw_manifests.find(partition);
    std::string bytes = raw != o.raw_manifests.end() ? raw->second : encode_manifest(manifest);
    proto::Digest digest = proto::sha256(bytes);
    if (!o.withheld.count(partition)) {
      auto served = o.served_instead.find(partition);
      write_file(tree_ / ".tiersync/v1/manifests" / proto::to_hex(digest),
                 served != o.served_instead.end() ? served->second : bytes);
    }
    s.partitions[partition] = {digest, manifest.entries.size(), manifest.total_bytes()};
  }
  if (o.patch_snapshot) o.patch_snapshot(s);
  proto::Envelope envelope =
      proto::sign_envelope(o.payload_type, proto::encode_snapshot(s), o.signers);
  if (o.patch_envelope) o.patch_envelope(envelope);
  write_file(tree_ / ".tiersync/v1/snapshot",
             o.raw_envelope ? *o.raw_envelope : proto::encode_envelope(envelope));
  if (o.patch_tree) o.patch_tree(tree_);
}

StallingParent::StallingParent(fs::path tree) : tree_(std::move(tree)) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 64) != 0 ||
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error("StallingParent: cannot listen on 127.0.0.1");
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { accept_loop(); });
}

StallingParent::~StallingParent() {
  {
    std::lock_guard lock(mu_);  // not between a waiter's check and its wait
    stopping_ = true;
  }
  cv_.notify_all();
  acceptor_.join();
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mu_);
    threads.swap(connections_);
  }
  for (auto& t : threads) t.join();
  ::close(listen_fd_);
}

std::string StallingParent::url() const {
  return "http://127.0.0.1:" + std::to_string(port_) + "/";
}

void StallingParent::stall(std::string path, std::size_t first_bytes) {
  std::lock_guard lock(mu_);
  stalled_[std::move(path)] = first_bytes;
}

void StallingParent::release() {
  {
    std::lock_guard lock(mu_);
    released_ = true;
    stalled_.clear();
  }
  cv_.notify_all();
}

bool StallingParent::wait_stalled(std::chrono::seconds limit) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, limit, [&] { return holding_ > 0; });
}

void StallingParent::accept_loop() {
  while (!stopping_) {  // bounded by the destructor; each poll waits 100 ms at most
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::lock_guard lock(mu_);
    connections_.emplace_back([this, fd] {
      answer(fd);
      ::close(fd);
    });
  }
}

void StallingParent::answer(int fd) {
  std::string head;
  char c;
  while (head.find("\r\n\r\n") == std::string::npos && head.size() < 16384 &&
         ::recv(fd, &c, 1, 0) == 1)
    head.push_back(c);
  // "GET /path?query HTTP/1.1": the path, without its query (a long poll is answered at once).
  const auto sp1 = head.find(' '), sp2 = head.find(' ', sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos) return;
  std::string path = head.substr(sp1 + 2, sp2 - sp1 - 2);
  path = path.substr(0, path.find('?'));
  auto send_all = [fd](std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  };
  std::error_code ec;
  if (path.empty() || path.find("..") != std::string::npos ||
      !fs::is_regular_file(tree_ / path, ec)) {
    send_all("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return;
  }
  const std::string body = read_file(tree_ / path);
  std::size_t first = body.size();
  {
    std::lock_guard lock(mu_);
    const int seen = ++requests_[path];
    if (auto it = stalled_.find(path); it != stalled_.end())
      first = std::min(body.size(), it->second * static_cast<std::size_t>(seen));
  }
  if (!send_all("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) +
                "\r\nConnection: close\r\n\r\n") ||
      !send_all(std::string_view(body).substr(0, first)))
    return;
  if (first < body.size()) {
    std::unique_lock lock(mu_);
    ++holding_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return released_ || stopping_.load(); });
    --holding_;
    if (stopping_) return;
  }
  send_all(std::string_view(body).substr(first));
}

void write_public_key(const proto::PrivateKey& key, const fs::path& file) {
  write_file(file, key.public_key().to_pem());
}

}  // namespace tiersync::it
