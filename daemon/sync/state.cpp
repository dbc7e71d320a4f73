#include "daemon/sync/state.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "daemon/sync/crash.h"
#include "daemon/sync/fs.h"
#include "daemon/sync/history.h"
#include "proto/dsse.h"
#include "proto/manifest.h"
#include "proto/printable.h"

namespace tiersync::sync {

using nlohmann::json;

namespace {

// A parent's chain as recorded: as many names as a status may list, each a DNS name at most.
constexpr std::size_t kMaxChainNames = 32;
constexpr std::size_t kMaxChainNameBytes = 253;

// Reads a small JSON file of state; a missing file is nullopt, a damaged one an error.
Result<std::optional<json>> read_json(const fs::path& file) {
  struct stat st;
  auto exists = lstat_path(file, st);
  if (!exists) return exists.error();
  if (!*exists) return std::optional<json>();
  auto bytes = read_file(file, 64u << 20);
  if (!bytes) return bytes.error();
  json j = json::parse(*bytes, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error(file.string() + ": damaged (not JSON)");
  return std::optional<json>(std::move(j));
}

// Messages may quote hostile bytes that are not UTF-8: they are replaced, never thrown on.
Status write_json(const fs::path& file, const json& j, bool durable = true) {
  return write_file_atomic(file, j.dump(2, ' ', false, json::error_handler_t::replace) + "\n", 0644,
                           durable);
}

/// An integer member of a state file (0 when absent). Not value(): nlohmann converts a fraction
/// to an integer with a cast, undefined beyond the type's range (1e300, -1.5): found by
/// tests/fuzz/fuzz_state. Anything but an integer reads as damaged, as a string always did.
struct NotInteger : std::runtime_error {
  using std::runtime_error::runtime_error;
};
template <class T>
T integer(const json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end()) return T{0};
  if (!it->is_number_integer()) throw NotInteger(std::string(key) + " is not an integer");
  return it->get<T>();
}

}  // namespace

StateStore::StateStore(fs::path state_dir, fs::path tree)
    : dir_(std::move(state_dir)), tree_(std::move(tree)) {}

std::string pins_id(std::string_view pins_document) {
  return pins_document.empty() ? std::string() : proto::to_hex(proto::sha256(pins_document));
}

Status StateStore::open() {
  for (const auto& d : {dir_, dir_ / "manifests", dir_ / "pins", tree_,
                        tree_ / proto::wire::kManifestsDir, tree_ / proto::wire::kPinsDir})
    if (auto st = make_dirs(d); !st) return st;
  auto lock = FileLock::acquire(dir_ / "lock");
  if (!lock) return lock.error();
  lock_ = std::make_shared<FileLock>(std::move(*lock));
  return {};
}

fs::path StateStore::published_manifest_path(const proto::Digest& d) const {
  return tree_ / proto::wire::manifest_path(d);
}

fs::path StateStore::manifest_path(const proto::Digest& d) const {
  return dir_ / "manifests" / proto::to_hex(d);
}

Result<std::optional<Applied>> StateStore::load_applied() const {
  fs::path file = dir_ / "snapshot";
  struct stat st;
  auto exists = lstat_path(file, st);
  if (!exists) return exists.error();
  if (!*exists) return std::optional<Applied>();
  auto bytes = read_file(file, proto::kMaxEnvelopeBytes);
  if (!bytes) return bytes.error();
  auto env = proto::decode_envelope(*bytes);
  if (!env) return make_error(file.string() + ": " + env.message());
  auto snap = proto::decode_snapshot(env->payload);
  if (!snap) return make_error(file.string() + ": " + snap.message());
  Applied applied{std::move(*bytes), std::move(*snap), {}, {}};
  // The pins committed with this serial, verified when they were applied.
  const fs::path pins_file = pins_path(applied.snapshot.serial);
  auto has_pins = lstat_path(pins_file, st);
  if (!has_pins) return has_pins.error();
  if (*has_pins) {
    auto doc = read_file(pins_file, kMaxPinsBytes);
    if (!doc) return doc.error();
    auto pins = decode_pins(*doc);
    if (!pins) return make_error(pins_file.string() + ": " + pins.message());
    if (pins->serial != applied.snapshot.serial)
      return make_error(pins_file.string() + ": pins of serial " + std::to_string(pins->serial));
    if (!pins->empty()) {
      applied.snapshot = effective_snapshot(std::move(applied.snapshot), *pins);
      applied.pins = std::move(*pins);
      applied.pins_document = std::move(*doc);
    }
  }
  return std::optional<Applied>(std::move(applied));
}

fs::path StateStore::pins_path(std::uint64_t serial) const {
  return dir_ / "pins" / std::to_string(serial);
}

fs::path StateStore::published_pins_path(std::uint64_t serial) const {
  return tree_ / proto::wire::pins_path(serial);
}

Status StateStore::commit_pins(std::uint64_t serial, std::string_view document) const {
  if (auto st = make_dirs(dir_ / "pins"); !st) return st;
  if (!document.empty()) return write_file_atomic(pins_path(serial), document, 0644, true);
  if (::unlink(pins_path(serial).c_str()) != 0) {
    if (errno == ENOENT) return {};
    return make_error(errno_message(pins_path(serial), errno));
  }
  return fsync_dir(dir_ / "pins");
}

Status StateStore::publish_pins(std::uint64_t serial, std::string_view document) const {
  if (auto st = make_dirs(tree_ / proto::wire::kPinsDir); !st) return st;
  if (!document.empty())
    return write_file_atomic(published_pins_path(serial), document, 0644, false);
  if (::unlink(published_pins_path(serial).c_str()) != 0 && errno != ENOENT)
    return make_error(errno_message(published_pins_path(serial), errno));
  return {};
}

void StateStore::collect_pins(std::uint64_t keep_a, std::uint64_t keep_b) const {
  const std::set<std::string> keep{std::to_string(keep_a), std::to_string(keep_b)};
  for (const auto& d : {dir_ / "pins", tree_ / proto::wire::kPinsDir}) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(d, ec))
      if (!keep.count(e.path().filename().string())) {
        crash_point();
        fs::remove(e.path(), ec);
      }
  }
}

Status StateStore::save_applied(std::string_view envelope) const {
  return write_file_atomic(dir_ / "snapshot", envelope, 0644, true);
}

bool StateStore::has_manifest(const proto::Digest& d) const {
  // Stored without an fsync: after a power cut the name may be there without the bytes (an
  // empty file). Only bytes that match the name count; others are written again.
  auto bytes = read_file(manifest_path(d), proto::kMaxManifestBytes);
  return bytes && proto::sha256(*bytes) == d;
}

bool StateStore::has_manifest_of_size(const proto::Digest& d, std::uint64_t size) const {
  struct stat st {};
  return ::stat(manifest_path(d).c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
         static_cast<std::uint64_t>(st.st_size) == size;
}

bool StateStore::has_manifest_bytes(const proto::Digest& d, std::string_view bytes) const {
  if (!has_manifest_of_size(d, bytes.size())) return false;
  auto stored = read_file(manifest_path(d), proto::kMaxManifestBytes);
  return stored && *stored == bytes;
}

Status StateStore::store_manifest(const proto::Digest& d, std::string_view bytes) const {
  crash_point();
  return write_file_atomic(manifest_path(d), bytes, 0644, /*durable=*/false);
}

Result<bool> StateStore::receive_manifest(const proto::Digest& d, const ManifestFetch& fetch,
                                          std::uint64_t max_bytes) const {
  static std::atomic<unsigned> sequence{0};
  const fs::path final_path = manifest_path(d);
  // Named for the digest, this process and a counter: two receivers never share a file; a crash
  // leaves it to collect_manifests, which keeps only the manifests the snapshots name.
  const fs::path temp = dir_ / "manifests" /
                        (".incoming-" + proto::to_hex(d) + "." + std::to_string(::getpid()) + "." +
                         std::to_string(sequence++));
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd.valid()) return make_error(errno_message(temp, errno));
  struct Discard {
    const fs::path& file;
    bool keep = false;
    ~Discard() {
      if (!keep) ::unlink(file.c_str());
    }
  } discard{temp};

  proto::Sha256 hasher;
  std::uint64_t size = 0;
  const auto sink = [&](const char* data, std::size_t n) -> Status {
    if (size + n > max_bytes)
      return make_error("manifest " + proto::to_hex(d) + ": larger than the limit of " +
                        std::to_string(max_bytes) + " bytes");
    hasher.update(data, n);
    size += n;
    while (n > 0) {
      const ssize_t w = ::write(fd.get(), data, n);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return make_error(errno_message(temp, errno));
      data += w;
      n -= static_cast<std::size_t>(w);
    }
    return {};
  };
  const auto restart = [&]() -> Status {
    if (::ftruncate(fd.get(), 0) != 0 || ::lseek(fd.get(), 0, SEEK_SET) != 0)
      return make_error(errno_message(temp, errno));
    (void)hasher.finish();  // resets it
    size = 0;
    return {};
  };
  if (auto st = fetch(sink, restart); !st) return st.error();
  if (hasher.finish() != d) return false;
  if (::close(fd.release()) != 0) return make_error(errno_message(temp, errno));
  // Not made durable here, like store_manifest: the apply's barrier does it before the commit.
  crash_point();
  if (::rename(temp.c_str(), final_path.c_str()) != 0)
    return make_error(errno_message(final_path, errno));
  discard.keep = true;
  return true;
}

void StateStore::forget_manifest(const proto::Digest& d) const {
  ::unlink(manifest_path(d).c_str());
}

namespace {

// Manifests decoded in this process and still held by someone (the served view, the scrubber,
// a cycle, status): a second load of the same stored file shares the first one's decoding
// instead of holding the tree's entries twice (docs/performance.md, "Scale"). Only a file that
// is still the one decoded is shared: same inode, size, mtime and ctime, so a manifest stored
// again or replaced is read and checked again. (What is shared is a decoding of bytes whose
// SHA-256 was its name: it stays that manifest whatever later happens to the file.)
class DecodedManifests {
 public:
  struct Key {
    std::string file;
    std::string partition;
    std::size_t depth;
    proto::ModeRule modes;
    auto operator<=>(const Key&) const = default;
  };

  /// The same file, not rewritten or replaced since `a` was taken.
  static bool same_file(const struct stat& a, const struct stat& b) {
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_size == b.st_size &&
           same_time(a.st_mtim, b.st_mtim) && same_time(a.st_ctim, b.st_ctim);
  }

  std::shared_ptr<const proto::Manifest> find(const Key& key, const struct stat& st) {
    std::lock_guard lock(mutex_);
    auto it = held_.find(key);
    if (it == held_.end() || !same_file(it->second.file, st)) return nullptr;
    return it->second.manifest.lock();
  }

  void keep(Key key, const struct stat& st, const std::shared_ptr<const proto::Manifest>& m) {
    std::lock_guard lock(mutex_);
    keep_locked(std::move(key), st, m);
  }

  /// Keeps `kept` alive until the next call for the same state_dir: the manifests a cycle just
  /// committed, which the served view and the scrubber load right after the cycle has dropped
  /// them.
  void hold_until_next(const std::string& state_dir, std::vector<std::pair<Key, struct stat>> keys,
                       std::vector<std::shared_ptr<const proto::Manifest>> kept) {
    std::lock_guard lock(mutex_);
    for (std::size_t i = 0; i < keys.size(); ++i)
      keep_locked(std::move(keys[i].first), keys[i].second, kept[i]);
    committed_[state_dir] = std::move(kept);
  }

 private:
  struct Held {
    std::weak_ptr<const proto::Manifest> manifest;
    struct stat file;  ///< the stored file as it was decoded
  };
  static bool same_time(const struct timespec& a, const struct timespec& b) {
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
  }

  void keep_locked(Key key, const struct stat& st,
                   const std::shared_ptr<const proto::Manifest>& m) {
    // Forget what nobody holds any more, so that the map follows the manifests alive.
    std::erase_if(held_, [](const auto& kv) { return kv.second.manifest.expired(); });
    held_[std::move(key)] = Held{m, st};
  }

  std::mutex mutex_;
  std::map<Key, Held> held_;
  std::map<std::string, std::vector<std::shared_ptr<const proto::Manifest>>> committed_;
};

DecodedManifests& decoded_manifests() {
  static DecodedManifests cache;
  return cache;
}

}  // namespace

Result<std::shared_ptr<const proto::Manifest>> StateStore::load_manifest(
    const proto::Digest& d, const std::string& partition, std::size_t depth,
    proto::ModeRule modes) const {
  fs::path file = manifest_path(d);
  DecodedManifests::Key key{file.string(), partition, depth, modes};
  struct stat before {};
  const bool known = ::stat(file.c_str(), &before) == 0;
  if (known)
    if (auto shared = decoded_manifests().find(key, before)) return shared;
  auto bytes = read_file(file, proto::kMaxManifestBytes);
  if (!bytes) return bytes.error();
  if (proto::sha256(*bytes) != d)
    return make_error(file.string() + ": content does not match its SHA-256 name");
  auto m = proto::decode_manifest(*bytes, partition, depth, modes);
  if (!m) return m.error();
  std::shared_ptr<const proto::Manifest> loaded = std::make_shared<proto::Manifest>(std::move(*m));
  // Shared only if the file did not change while it was read.
  struct stat after {};
  if (known && ::stat(file.c_str(), &after) == 0 && DecodedManifests::same_file(before, after))
    decoded_manifests().keep(std::move(key), before, loaded);
  return loaded;
}

void StateStore::share_committed(const proto::Snapshot& s, const ManifestSet& manifests) const {
  std::vector<std::pair<DecodedManifests::Key, struct stat>> keys;
  std::vector<std::shared_ptr<const proto::Manifest>> kept;
  for (const auto& [name, m] : manifests) {
    // Each must be the manifest its partition names (a held partition's candidate is not in the
    // set): the entry count is a cheap check of that.
    auto ref = s.partitions.find(name);
    if (!m || ref == s.partitions.end() || m->entries.size() != ref->second.files) continue;
    fs::path file = manifest_path(ref->second.manifest);
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0) continue;
    keys.push_back({{file.string(), name, s.depth, proto::ModeRule::kAny}, st});
    kept.push_back(m);
  }
  decoded_manifests().hold_until_next(dir_.string(), std::move(keys), std::move(kept));
}

Result<ManifestSet> StateStore::load_manifests(const proto::Snapshot& s) const {
  ManifestSet set;
  for (const auto& [name, ref] : s.partitions) {
    auto m = load_manifest(ref.manifest, name, s.depth);
    if (!m) return m.error();
    set[name] = std::move(*m);
  }
  return set;
}

Status StateStore::publish_manifests(const proto::Snapshot& s) const {
  for (const auto& [name, ref] : s.partitions) {
    fs::path dst = published_manifest_path(ref.manifest);
    if (::access(dst.c_str(), F_OK) == 0) continue;
    fs::path src = manifest_path(ref.manifest);
    crash_point();
    if (::link(src.c_str(), dst.c_str()) == 0 || errno == EEXIST) continue;
    // state_dir on another file system: copy.
    auto bytes = read_file(src, proto::kMaxManifestBytes);
    if (!bytes) return bytes.error();
    if (auto st = write_file_atomic(dst, *bytes, 0644, false); !st) return st;
  }
  return {};  // made durable by the apply's barrier before the commit
}

void StateStore::collect_manifests(const proto::Snapshot& keep_a, const proto::Snapshot* keep_b,
                                   const std::set<proto::Digest>& keep_stored) const {
  std::set<std::string> keep;
  for (const auto* s : {&keep_a, keep_b})
    if (s)
      for (const auto& [name, ref] : s->partitions) keep.insert(proto::to_hex(ref.manifest));
  for (const auto& d : {dir_ / "manifests", tree_ / proto::wire::kManifestsDir}) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(d, ec)) {
      const std::string name = e.path().filename().string();
      if (keep.count(name)) continue;
      if (d == dir_ / "manifests") {
        auto digest = proto::digest_from_hex(name);
        if (digest && keep_stored.count(*digest)) continue;
      }
      crash_point();
      fs::remove(e.path(), ec);
    }
  }
}

namespace {

// The held record and the approvals from their JSON; a wrong type throws (json::exception or
// NotInteger). The loaders below read a damaged file as empty; check_at_start() names it.
HeldState held_from(const json& doc) {
  HeldState held;
  held.candidate_serial = integer<std::uint64_t>(doc, "candidate_serial");
  held.since = integer<std::int64_t>(doc, "since");
  const json partitions = doc.value("partitions", json::array());
  for (const auto& p : partitions) {
    HeldPartition hp;
    hp.hold.partition = p.value("partition", "");
    hp.hold.deleted = integer<std::uint64_t>(p, "deleted");
    hp.hold.files = integer<std::uint64_t>(p, "files");
    hp.hold.ratio = p.value("ratio", 0.0);
    hp.hold.limit = p.value("limit", 0.0);
    hp.candidate = p.value("candidate", "");
    hp.from = p.value("from", "");
    hp.to = p.value("to", "");
    hp.stale_since = integer<std::int64_t>(p, "stale_since");
    if (auto rule = rule_from_name(p.value("rule", "deleted"))) hp.hold.rule = *rule;
    hp.hold.count = integer<std::uint64_t>(p, "count");
    hp.hold.of = integer<std::uint64_t>(p, "of");
    held.partitions.push_back(std::move(hp));
  }
  return held;
}

std::vector<Approval> approvals_from(const json& doc) {
  std::vector<Approval> out;
  const json list = doc.value("approvals", json::array());
  for (const auto& a : list)
    out.push_back({a.value("partition", ""), a.value("from", ""), a.value("to", ""),
                   integer<std::uint64_t>(a, "deleted"), integer<std::uint64_t>(a, "files"),
                   a.value("rule", ""), integer<std::int64_t>(a, "expires")});
  return out;
}

}  // namespace

// State files are ours, but a wrong type in one (an edit by hand, a damaged disk) must read as
// damaged, not throw: nlohmann's value() throws on a type mismatch.
HeldState StateStore::load_held() const try {
  auto j = read_json(dir_ / "held.json");
  if (!j || !*j) return {};
  return held_from(**j);
} catch (const json::exception&) {
  return {};
} catch (const NotInteger&) {
  return {};
}

Status StateStore::save_held(const HeldState& held) const {
  crash_point();
  if (held.partitions.empty()) {
    std::error_code ec;
    fs::remove(dir_ / "held.json", ec);
    return {};
  }
  json parts = json::array();
  for (const auto& p : held.partitions)
    parts.push_back({{"partition", p.hold.partition},
                     {"deleted", p.hold.deleted},
                     {"files", p.hold.files},
                     {"ratio", p.hold.ratio},
                     {"limit", p.hold.limit},
                     {"rule", rule_name(p.hold.rule)},
                     {"count", p.hold.count},
                     {"of", p.hold.of},
                     {"candidate", p.candidate},
                     {"from", p.from},
                     {"to", p.to},
                     {"stale_since", p.stale_since}});
  return write_json(
      dir_ / "held.json",
      {{"candidate_serial", held.candidate_serial}, {"since", held.since}, {"partitions", parts}});
}

std::vector<Approval> StateStore::load_approvals() const try {
  auto j = read_json(dir_ / "approvals.json");
  if (!j || !*j) return {};
  return approvals_from(**j);
} catch (const json::exception&) {
  return {};
} catch (const NotInteger&) {
  return {};
}

Status StateStore::save_approvals(const std::vector<Approval>& approvals) const {
  crash_point();
  json list = json::array();
  for (const auto& a : approvals)
    list.push_back({{"partition", a.partition},
                    {"from", a.from},
                    {"to", a.to},
                    {"deleted", a.deleted},
                    {"files", a.files},
                    {"rule", a.rule},
                    {"expires", a.expires}});
  return write_json(dir_ / "approvals.json", {{"approvals", list}});
}

std::vector<Approval> StateStore::load_used_approvals() const try {
  std::vector<Approval> out;
  auto j = read_json(dir_ / "used-approvals.json");
  if (!j || !*j) return out;
  const json list = (*j)->value("approvals", json::array());
  for (const auto& a : list)
    out.push_back({a.value("partition", ""), a.value("from", ""), a.value("to", ""), 0, 0, "",
                   integer<std::int64_t>(a, "expires")});
  return out;
} catch (const json::exception&) {
  return {};
} catch (const NotInteger&) {
  return {};
}

Status StateStore::save_used_approvals(const std::vector<Approval>& approvals) const {
  crash_point();
  json list = json::array();
  for (const auto& a : approvals)
    list.push_back(
        {{"partition", a.partition}, {"from", a.from}, {"to", a.to}, {"expires", a.expires}});
  return write_json(dir_ / "used-approvals.json", {{"approvals", list}}, /*durable=*/false);
}

std::string StateStore::parent_approvals_document(std::int64_t now) const {
  std::vector<Approval> offered;
  for (auto& list : {load_approvals(), load_used_approvals()})
    for (const auto& a : list) {
      if (a.expires <= now) continue;
      const bool seen = std::any_of(offered.begin(), offered.end(), [&](const Approval& o) {
        return o.partition == a.partition && o.from == a.from && o.to == a.to;
      });
      if (!seen) offered.push_back(a);
    }
  return offered.empty() ? std::string() : encode_parent_approvals(offered);
}

std::pair<std::uint64_t, std::string> StateStore::load_parent_pins() const try {
  auto j = read_json(dir_ / "parent-pins.json");
  if (!j || !*j) return {0, ""};
  return {integer<std::uint64_t>(**j, "serial"), (*j)->value("pins", "")};
} catch (const json::exception&) {
  return {0, ""};
} catch (const NotInteger&) {
  return {0, ""};
}

Status StateStore::save_parent_pins(std::uint64_t serial, const std::string& id) const {
  crash_point();
  return write_json(dir_ / "parent-pins.json", {{"serial", serial}, {"pins", id}},
                    /*durable=*/false);
}

CycleRecord StateStore::load_cycle() const try {
  CycleRecord r;
  auto j = read_json(dir_ / "cycle.json");
  if (!j || !*j) return r;
  r.result = (*j)->value("result", "");
  r.time = integer<std::int64_t>(**j, "time");
  // As written (escaped already, up to four bytes per byte), or an older file's, cut short.
  r.message = proto::printable((*j)->value("message", ""), 4 * kMaxCycleMessageBytes + 32);
  r.upstream_serial = integer<std::uint64_t>(**j, "upstream_serial");
  r.last_success = integer<std::int64_t>(**j, "last_success");
  if (auto it = (*j)->find("parent_chain"); it != (*j)->end() && it->is_array())
    for (const auto& name : *it)
      if (name.is_string() && r.parent_chain.size() < kMaxChainNames)
        r.parent_chain.push_back(proto::printable(name.get<std::string>(), kMaxChainNameBytes));
  return r;
} catch (const json::exception&) {
  return {};
} catch (const NotInteger&) {
  return {};
}

Status StateStore::save_cycle(const CycleRecord& r) const {
  crash_point();
  // Outcome only: losing it to a power cut costs nothing. The message and the chain may quote a
  // parent's bytes: they are kept cut short and escaped, here and when read back.
  json chain = json::array();
  for (const auto& name : r.parent_chain)
    if (chain.size() < kMaxChainNames) chain.push_back(proto::printable(name, kMaxChainNameBytes));
  json j = {{"result", r.result},
            {"time", r.time},
            {"message", proto::printable(r.message, kMaxCycleMessageBytes)},
            {"upstream_serial", r.upstream_serial},
            {"last_success", r.last_success},
            {"parent_chain", std::move(chain)}};
  return write_file_atomic(dir_ / "cycle.json",
                           j.dump(2, ' ', false, json::error_handler_t::replace) + "\n", 0644,
                           false);
}

Result<std::optional<Journal>> StateStore::load_journal() const try {
  auto j = read_json(dir_ / "journal.json");
  if (!j) return j.error();
  if (!*j) return std::optional<Journal>();
  const json& doc = **j;
  Journal journal;
  journal.serial = integer<std::uint64_t>(doc, "serial");
  journal.pins = doc.value("pins", "");
  if (!journal.pins.empty() && !proto::digest_from_hex(journal.pins))
    return make_error((dir_ / "journal.json").string() + ": damaged pins");
  const json previous = doc.value("previous", json::object());  // items() must not outlive it
  for (const auto& [name, hex] : previous.items()) {
    auto d = hex.is_string() ? proto::digest_from_hex(hex.get<std::string>()) : std::nullopt;
    if (!d) return make_error((dir_ / "journal.json").string() + ": damaged entry " + name);
    journal.previous[name] = *d;
  }
  if (journal.serial == 0) return make_error((dir_ / "journal.json").string() + ": no serial");
  return std::optional<Journal>(std::move(journal));
} catch (const json::exception& e) {
  return make_error((dir_ / "journal.json").string() + ": damaged (" + e.what() + ")");
} catch (const NotInteger& e) {
  return make_error((dir_ / "journal.json").string() + ": damaged (" + e.what() + ")");
}

Status StateStore::save_journal(const Journal& journal) const {
  json prev = json::object();
  for (const auto& [name, d] : journal.previous) prev[name] = proto::to_hex(d);
  // Written after the apply's barrier and fsynced: a power cut leaves it whole or absent, never
  // the empty file that would stop every later cycle (tests/integration/powerloss_test.cpp).
  return write_json(dir_ / "journal.json",
                    {{"serial", journal.serial}, {"pins", journal.pins}, {"previous", prev}});
}

Status StateStore::clear_journal() const {
  if (::unlink((dir_ / "journal.json").c_str()) != 0 && errno != ENOENT)
    return make_error(errno_message(dir_ / "journal.json", errno));
  ::unlink(pending_snapshot_path().c_str());
  ::unlink(pending_pins_path().c_str());
  // Not made durable: a journal that reappears after a power cut only repeats the deletions.
  return {};
}

Status StateStore::check_at_start() const {
  auto applied = load_applied();
  if (!applied) return make_error(applied.message());
  auto journal = load_journal();
  if (!journal) return make_error(journal.message());
  // The records a cycle reads leniently (a damaged one reads as empty): at start, damage is
  // reported instead of being quietly replaced by the next write. Those written without an fsync
  // (cycle.json, used-approvals.json, parent-pins.json, the hash cache) may be empty after a
  // power cut by design and are not checked.
  const auto strict = [](const fs::path& file,
                         const std::function<void(const json&)>& parse) -> Status {
    auto j = read_json(file);
    if (!j) return make_error(j.message());
    if (!*j) return {};
    try {
      parse(**j);
    } catch (const json::exception& e) {
      return make_error(file.string() + ": damaged (" + e.what() + ")");
    } catch (const NotInteger& e) {
      return make_error(file.string() + ": damaged (" + e.what() + ")");
    }
    return {};
  };
  if (auto st = strict(dir_ / "held.json", [](const json& j) { (void)held_from(j); }); !st)
    return st;
  if (auto st = strict(dir_ / "approvals.json", [](const json& j) { (void)approvals_from(j); });
      !st)
    return st;
  std::string warning;
  (void)GuardHistory::load(guard_history_path(), &warning);
  if (!warning.empty()) return make_error(warning.substr(0, warning.find(';')));
  return {};
}

}  // namespace tiersync::sync
