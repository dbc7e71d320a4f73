// A mirror pointed at a hostile or broken parent. Every case must fail cleanly: exit 1 (no crash,
// no hang), an error on stderr naming the problem, the mirror's tree and state as they were (but
// for the last cycle's record and verified downloads kept to resume), and nothing created or
// changed anywhere else. Offers are validly signed with the trusted key unless the case is about
// the signature.

#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <functional>
#include <ostream>
#include <set>
#include <stdexcept>

#include <thread>

#include <gtest/gtest.h>

#include "proto/digest.h"
#include "tests/integration/fake_parent.h"
#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

constexpr std::uint64_t kGoodSerial = 5;
constexpr std::uint64_t kHostileSerial = 6;
const std::string kPart = "edge/main/x86_64";
const std::string kNewPkg = kPart + "/newpkg-2.0-r0.apk";

/// State files a failed cycle may rewrite: the record of the last cycle, shown by `status`, and
/// the lock file (each run writes its pid there, for the message a second tiersyncd gets).
const char* const kVolatileStateFiles[] = {"cycle.json", "lock"};

/// What a case gets to work with.
struct HostileContext {
  Offer& offer;
  const fs::path& root;                ///< the test's temp root: escapes are aimed inside it
  const proto::PrivateKey& untrusted;  ///< a key the mirror does not trust
  /// Every group must be named on stderr (one word of each, case-insensitive).
  std::vector<std::vector<std::string>> expect;
};

struct HostileCase {
  std::string name;
  std::function<void(HostileContext&)> apply;
};

// Test names and ctest names show the case's name, not its bytes.
void PrintTo(const HostileCase& c, std::ostream* os) {
  *os << c.name;
}

void insert_sorted(proto::Manifest& m, proto::Entry e) {
  m.entries.push_back(std::move(e));
  std::stable_sort(
      m.entries.begin(), m.entries.end(),
      [](const proto::Entry& a, const proto::Entry& b) { return a.path() < b.path(); });
}

proto::Entry file_entry(std::string path, std::string_view bytes) {
  return proto::Entry::file(std::move(path), bytes.size(), proto::sha256(bytes), kBaseMtime, 0644);
}

std::string replace_once(std::string s, std::string_view from, std::string_view to) {
  auto pos = s.find(from);
  if (pos == std::string::npos) throw std::runtime_error("no \"" + std::string(from) + "\"");
  return s.replace(pos, from.size(), to);
}

/// The manifest bytes of `m` with `field` of the entry at `path` set to the raw JSON `value`.
std::string with_raw_field(const proto::Manifest& m, const std::string& path,
                           const std::string& field, const std::string& value) {
  std::string bytes = proto::encode_manifest(m);
  const auto entry = bytes.find("{\"path\":\"" + path + "\"");
  if (entry == std::string::npos) throw std::runtime_error("no entry " + path);
  const auto key = bytes.find("\"" + field + "\":", entry);
  const auto start = key + field.size() + 3;
  const auto end = bytes.find_first_of(",}", start);
  return bytes.replace(start, end - start, value);
}

const std::vector<HostileCase>& cases() {
  static const std::vector<HostileCase> all = {
      {"PathTraversal",
       [](HostileContext& c) {
         // Resolves to <parent tree>/../pwned when read and <mirror tree>/../pwned when written.
         const std::string path = kPart + "/../../../../pwned";
         const std::string bytes = "pwned\n";
         insert_sorted(c.offer.manifests[kPart], file_entry(path, bytes));
         c.offer.files_outside[c.root / "parent/pwned"] = bytes;
         c.expect = {{"../../../../pwned"}};
       }},
      {"AbsolutePath",
       [](HostileContext& c) {
         const std::string path = (c.root / "outside/pwned").string();
         const std::string bytes = "pwned\n";
         insert_sorted(c.offer.manifests[kPart], file_entry(path, bytes));
         c.offer.files_outside[path] = bytes;
         c.expect = {{"outside/pwned"}};
       }},
      {"EntryOutsideItsPartition",
       [](HostileContext& c) {
         const std::string path = "edge/community/x86_64/evil-1.0-r0.apk";
         const std::string bytes = "evil package\n";
         insert_sorted(c.offer.manifests[kPart], file_entry(path, bytes));
         c.offer.content[path] = FileSpec{bytes};
         c.expect = {{path}, {"outside", "partition"}};
       }},
      {"SymlinkLeavingTheTree",
       [](HostileContext& c) {
         insert_sorted(c.offer.manifests[kPart],
                       proto::Entry::symlink(kPart + "/escape", "../../../../.."));
         c.expect = {{kPart + "/escape"}};
       }},
      {"SymlinkToAnAbsolutePath",
       [](HostileContext& c) {
         insert_sorted(c.offer.manifests[kPart],
                       proto::Entry::symlink(kPart + "/abs-link", (c.root / "outside").string()));
         c.expect = {{"abs-link"}};
       }},
      {"EntryBelowASymlinkEntry",
       [](HostileContext& c) {
         // Written through the link, evil.apk would land in edge/main/aarch64/.
         const std::string below = kPart + "/lnk/evil-1.0-r0.apk";
         const std::string bytes = "evil package\n";
         auto& m = c.offer.manifests[kPart];
         insert_sorted(m, proto::Entry::symlink(kPart + "/lnk", "../aarch64"));
         insert_sorted(m, file_entry(below, bytes));
         c.offer.content[below] = FileSpec{bytes};
         c.expect = {{"lnk/evil-1.0-r0.apk"}};
       }},
      {"DuplicateEntries",
       [](HostileContext& c) {
         auto& m = c.offer.manifests[kPart];
         insert_sorted(m, *m.find(kNewPkg));
         c.expect = {{"newpkg-2.0-r0.apk"}, {"duplicate"}};
       }},
      {"UnsortedEntries",
       [](HostileContext& c) {
         auto& m = c.offer.manifests[kPart];
         std::swap(m.entries[0], m.entries[1]);
         c.expect = {{"order", "sorted"}};
       }},
      {"NulInAPath",
       [](HostileContext& c) {
         std::string bytes = proto::encode_manifest(c.offer.manifests[kPart]);
         c.offer.raw_manifests[kPart] =
             replace_once(bytes, "newpkg-2.0-r0.apk\"", R"(newpkg-2.0-r0.apk\u0000.evil")");
         c.expect = {{"NUL", "\\u0000", "null"}};
       }},
      {"InvalidUtf8InAPath",
       [](HostileContext& c) {
         std::string bytes = proto::encode_manifest(c.offer.manifests[kPart]);
         c.offer.raw_manifests[kPart] =
             replace_once(bytes, "newpkg-2.0-r0.apk\"", "newpkg-2.0-r0\xff\xfe.apk\"");
         c.expect = {{"UTF-8", "UTF8", "JSON"}};
       }},
      {"SymlinkIntoTiersyncMeta",
       [](HostileContext& c) {
         insert_sorted(c.offer.manifests["."],
                       proto::Entry::symlink("meta-link", ".tiersync/v1/snapshot"));
         c.expect = {{"meta-link"}};
       }},
      {"InvalidUtf8InASymlinkTarget",
       [](HostileContext& c) {
         auto& m = c.offer.manifests[kPart];
         insert_sorted(m, proto::Entry::symlink(kPart + "/bad-link", "APKINDEX.tar.gz-TARGET"));
         c.offer.raw_manifests[kPart] =
             replace_once(proto::encode_manifest(m), "-TARGET\"", "\xff\xfe\"");
         c.expect = {{"UTF-8", "UTF8", "JSON"}};
       }},
      {"EscapedDotDotInAPath",
       [](HostileContext& c) {
         // "\u002e\u002e" is "..": the rules apply to the decoded path.
         const std::string bytes = "pwned\n";
         auto& m = c.offer.manifests[kPart];
         insert_sorted(m, file_entry(kPart + "/DOTS/DOTS/DOTS/DOTS/pwned", bytes));
         std::string raw = proto::encode_manifest(m);
         for (int i = 0; i < 4; ++i) raw = replace_once(raw, "DOTS", R"(\u002e\u002e)");
         c.offer.raw_manifests[kPart] = raw;
         c.offer.files_outside[c.root / "parent/pwned"] = bytes;
         c.expect = {{"'..'", "\"..\"", "../"}};
       }},
      {"LoneSurrogateEscapeInAPath",
       [](HostileContext& c) {
         c.offer.raw_manifests[kPart] =
             replace_once(proto::encode_manifest(c.offer.manifests[kPart]), "newpkg-2.0-r0.apk\"",
                          R"(newpkg\ud800.apk")");
         c.expect = {{"UTF-8", "UTF8", "surrogate", "JSON", "escape"}};
       }},
      {"NegativeFileSize",
       [](HostileContext& c) {
         c.offer.raw_manifests[kPart] =
             with_raw_field(c.offer.manifests[kPart], kNewPkg, "size", "-1");
         c.expect = {{"size"}};
       }},
      {"FileSizeBeyond64Bits",
       [](HostileContext& c) {
         // 2^64 + 1: a parser that wraps reads 1.
         c.offer.raw_manifests[kPart] =
             with_raw_field(c.offer.manifests[kPart], kNewPkg, "size", "18446744073709551617");
         c.expect = {{"size"}};
       }},
      {"ModeBeyondPermissionBits",
       [](HostileContext& c) {
         c.offer.raw_manifests[kPart] =
             with_raw_field(c.offer.manifests[kPart], kNewPkg, "mode", "2147484068");  // 2^31+0644
         c.expect = {{"mode"}};
       }},
      // Signed by the origin, and still never applied: a setuid file, or one any local user
      // could rewrite (docs/security.md, "Modes").
      {"SetuidMode",
       [](HostileContext& c) {
         c.offer.raw_manifests[kPart] =
             with_raw_field(c.offer.manifests[kPart], kNewPkg, "mode", "2541");  // 04755
         c.expect = {{"newpkg-2.0-r0.apk"}, {"mode 4755"}};
       }},
      {"WorldWritableMode",
       [](HostileContext& c) {
         c.offer.raw_manifests[kPart] =
             with_raw_field(c.offer.manifests[kPart], kNewPkg, "mode", "438");  // 0666
         c.expect = {{"newpkg-2.0-r0.apk"}, {"mode 0666"}};
       }},
      {"PathUnderTiersyncMeta",
       [](HostileContext& c) {
         const std::string bytes = "not a manifest\n";
         insert_sorted(c.offer.manifests["."], file_entry(".tiersync/evil", bytes));
         c.offer.raw_files[".tiersync/evil"] = bytes;
         c.expect = {{".tiersync"}};
       }},
      {"ManifestBytesDoNotMatchTheirHash",
       [](HostileContext& c) {
         proto::Manifest other = c.offer.manifests[kPart];
         for (auto& e : other.entries)
           if (e.path() == kNewPkg) e.mtime += 1;
         c.offer.served_instead[kPart] = proto::encode_manifest(other);
         c.expect = {{"sha256", "sha-256", "hash", "digest"}};
       }},
      {"ManifestMissingFromParent",
       [](HostileContext& c) {
         c.offer.withheld.insert(kPart);
         c.expect = {{"manifest"}};
       }},
      {"ManifestOfAnotherPartition",
       [](HostileContext& c) {
         c.offer.patch_snapshot = [](proto::Snapshot& s) {
           std::swap(s.partitions.at(kPart), s.partitions.at("edge/main/aarch64"));
         };
         c.expect = {{"partition"}};
       }},
      {"FileBytesDoNotMatchTheEntry",
       [](HostileContext& c) {
         std::string& bytes = c.offer.content.at(kNewPkg).bytes;
         bytes[bytes.size() / 2] ^= 0x01;
         c.expect = {{"newpkg-2.0-r0.apk"}, {"sha256", "sha-256", "hash", "digest", "checksum"}};
       }},
      {"FileOfTheWrongSize",
       [](HostileContext& c) {
         c.offer.content.at(kNewPkg).bytes += "X";
         c.expect = {{"newpkg-2.0-r0.apk"},
                     {"size", "length", "sha256", "sha-256", "hash", "digest", "bytes"}};
       }},
      {"FileShorterThanItsEntry",
       [](HostileContext& c) {
         c.offer.content.at(kNewPkg).bytes.pop_back();
         c.expect = {{"newpkg-2.0-r0.apk"},
                     {"size", "length", "sha256", "sha-256", "hash", "digest", "bytes"}};
       }},
      {"FileMissingFromParent",
       [](HostileContext& c) {
         c.offer.content.erase(kNewPkg);
         c.expect = {{"newpkg-2.0-r0.apk"}};
       }},
      {"FifoInsteadOfAFile",
       [](HostileContext& c) {
         // A reader that blocks on the FIFO would hang the mirror for good.
         c.offer.patch_tree = [](const fs::path& tree) {
           const fs::path file = tree / kNewPkg;
           fs::remove(file);
           if (::mkfifo(file.c_str(), 0644) != 0) throw std::runtime_error("mkfifo failed");
         };
         c.expect = {{"newpkg-2.0-r0.apk"}};
       }},
      {"SnapshotIsAFifo",
       [](HostileContext& c) {
         c.offer.patch_tree = [](const fs::path& tree) {
           const fs::path file = tree / ".tiersync/v1/snapshot";
           fs::remove(file);
           if (::mkfifo(file.c_str(), 0644) != 0) throw std::runtime_error("mkfifo failed");
         };
         c.expect = {{"snapshot"}};
       }},
      {"RollbackToALowerSerial",
       [](HostileContext& c) {
         c.offer.serial = kGoodSerial - 1;
         c.expect = {{"rollback", "roll back", "roll-back", "lower", "older"}};
       }},
      {"ExpiredSnapshot",
       [](HostileContext& c) {
         std::int64_t now = std::time(nullptr);
         c.offer.created = now - 8 * 86400;
         c.offer.expires = now - 60;
         c.expect = {{"expired"}};
       }},
      {"SignedByAnUntrustedKey",
       [](HostileContext& c) {
         c.offer.signers = {c.untrusted};
         c.expect = {{"untrusted", "not trusted", "trusted key", "signature", "threshold"}};
       }},
      {"PayloadTamperedAfterSigning",
       [](HostileContext& c) {
         c.offer.patch_envelope = [](proto::Envelope& e) {
           e.payload = replace_once(e.payload, "\"serial\":6", "\"serial\":7");
         };
         c.expect = {{"signature", "threshold"}};
       }},
      {"NoSignatures",
       [](HostileContext& c) {
         c.offer.patch_envelope = [](proto::Envelope& e) { e.signatures.clear(); };
         c.expect = {{"signature", "signed", "threshold"}};
       }},
      {"ValidEnvelopePaddedBeyond64Signatures",
       [](HostileContext& c) {
         // The origin's signature is there and valid; 64 more are junk. Refused whole: a relay
         // re-serves what it accepts byte for byte.
         c.offer.patch_envelope = [](proto::Envelope& e) {
           for (int i = 0; i < 64; ++i) e.signatures.push_back({"", std::string(64, 'j')});
         };
         c.expect = {{"65 signatures"}};
       }},
      {"KeyidLongerThan64Bytes",
       [](HostileContext& c) {
         c.offer.patch_envelope = [](proto::Envelope& e) {
           e.signatures.push_back({std::string(65, 'f'), std::string(64, 'j')});
         };
         c.expect = {{"keyid"}};
       }},
      {"GarbageSnapshot",
       [](HostileContext& c) {
         c.offer.raw_envelope = "{\"payloadType\": \"application/vnd.tiersync.snap";
         c.expect = {{"JSON", "envelope", "parse"}};
       }},
      {"WrongPayloadType",
       [](HostileContext& c) {
         c.offer.payload_type = "application/vnd.in-toto+json";
         c.expect = {{"type"}};
       }},
      {"PartitionFileCountDoesNotMatchItsManifest",
       [](HostileContext& c) {
         c.offer.patch_snapshot = [](proto::Snapshot& s) { s.partitions.at(kPart).files += 1; };
         c.expect = {{kPart}, {"files", "count", "entries"}};
       }},
      {"PartitionByteCountDoesNotMatchItsManifest",
       [](HostileContext& c) {
         c.offer.patch_snapshot = [](proto::Snapshot& s) { s.partitions.at(kPart).bytes += 1; };
         c.expect = {{kPart}, {"bytes", "size"}};
       }},
      {"PartitionNameDoesNotFitTheLayout",
       [](HostileContext& c) {
         c.offer.patch_snapshot = [](proto::Snapshot& s) {
           s.partitions["edge/main"] = s.partitions.at(kPart);
           s.partitions.erase(kPart);
         };
         c.expect = {{"edge/main"}, {"layout", "component", "depth"}};
       }},
  };
  return all;
}

/// Cases also tried against an empty mirror (an initial sync).
bool also_initial(const std::string& name) {
  static const std::set<std::string> names = {"PathTraversal",
                                              "AbsolutePath",
                                              "SymlinkLeavingTheTree",
                                              "EntryBelowASymlinkEntry",
                                              "PathUnderTiersyncMeta",
                                              "ManifestBytesDoNotMatchTheirHash",
                                              "FileBytesDoNotMatchTheEntry",
                                              "FileOfTheWrongSize",
                                              "SignedByAnUntrustedKey",
                                              "ExpiredSnapshot",
                                              "PayloadTamperedAfterSigning"};
  return names.count(name) > 0;
}

class HostileParentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto key = proto::PrivateKey::generate();
    auto untrusted = proto::PrivateKey::generate();
    ASSERT_TRUE(key.ok() && untrusted.ok());
    key_ = std::make_unique<proto::PrivateKey>(*key);
    untrusted_ = std::make_unique<proto::PrivateKey>(*untrusted);
    write_public_key(*key_, root_ / "keys/origin.pub");

    SampleShape shape;
    shape.arches = {"x86_64", "aarch64"};
    shape.min_packages = 10;
    shape.max_packages = 14;
    good_ = make_sample(shape);
    next_ = good_;
    add_package(next_, kPart, "newpkg-2.0-r0.apk", 11, kBaseMtime + 2000);
    rebuild_index(next_, kPart, kBaseMtime + 2001);
    touch_last_updated(next_, kBaseMtime + 2002);

    parent_ = std::make_unique<FakeParent>(root_ / "parent/tree");
    mirror_ = make_mirror(root_ / "mirror", "mirror", parent_->url(), {root_ / "keys/origin.pub"});
  }

  /// The mirror applies the good snapshot (serial 5).
  void sync_good() {
    parent_->publish(Offer::of(good_, kGoodSerial, *key_));
    ASSERT_TRUE(Exited(mirror_.once(), 0)) << "the mirror must accept an honest parent";
    ASSERT_TRUE(TreeMatches(mirror_.tree(), good_));
  }

  /// Everything the mirror may not change, as listings: its tree (with .tiersync), its state
  /// (but the last cycle's record) and the rest of the temp root.
  struct World {
    Listing tree, state, rest;
  };
  World world() const {
    World w;
    ListOptions tree_options{.skip_meta = false, .hash = true, .exclude = {}};
    w.tree = list_tree(mirror_.tree(), tree_options);
    ListOptions state_options{.skip_meta = false, .hash = true, .exclude = {}};
    for (const char* name : kVolatileStateFiles)
      state_options.exclude.push_back(mirror_.state() / name);
    w.state = list_tree(mirror_.state(), state_options);
    w.rest =
        list_tree(root_.path(),
                  {.skip_meta = false, .hash = true, .exclude = {mirror_.tree(), mirror_.state()}});
    return w;
  }

  /// `after` without what a failed cycle may keep to resume later (docs/crash-safety.md: "without
  /// fetching again what it already verified"): under the tree's .tiersync/staging/, folders and
  /// files whose bytes are those of an honest entry of the signed offer; under state_dir's
  /// manifests/, honest manifests of the offer stored under their own hash. Bad bytes and hostile
  /// documents are never among them.
  Listing without_verified_leftovers(const Listing& before, Listing after, bool is_state) const {
    std::set<std::string> honest_files, honest_manifests;
    for (const auto& [path, spec] : next_)
      if (!spec.link) honest_files.insert(sha256_hex(spec.bytes));
    for (const auto& [part, m] : manifests_of(next_))
      honest_manifests.insert(sha256_hex(proto::encode_manifest(m)));
    for (auto it = after.begin(); it != after.end();) {
      const auto& [path, info] = *it;
      bool leftover = false;
      if (!before.count(path)) {
        if (!is_state && path.starts_with(".tiersync/staging/")) {
          leftover = info.type == 'd' || (info.type == 'f' && honest_files.count(info.sha256));
        } else if (is_state && path.starts_with("manifests/")) {
          const std::string name = path.substr(std::string("manifests/").size());
          leftover = info.type == 'f' && name == info.sha256 && honest_manifests.count(name);
        }
      }
      it = leftover ? after.erase(it) : std::next(it);
    }
    return after;
  }

  /// Builds the hostile serial-6 offer of `c` and publishes it; returns the expected words.
  std::vector<std::vector<std::string>> offer(const HostileCase& c) {
    Offer o = Offer::of(next_, kHostileSerial, *key_);
    HostileContext ctx{o, root_.path(), *untrusted_, {}};
    c.apply(ctx);
    parent_->publish(o);
    return ctx.expect;
  }

  TempDir root_{"tiersync-hostile"};
  std::unique_ptr<proto::PrivateKey> key_, untrusted_;
  TreeModel good_, next_;
  std::unique_ptr<FakeParent> parent_;
  Node mirror_;
};

TEST_F(HostileParentTest, HonestUpdateApplies) {
  // The control: the unbroken serial-6 offer every case starts from is accepted.
  ASSERT_NO_FATAL_FAILURE(sync_good());
  parent_->publish(Offer::of(next_, kHostileSerial, *key_));
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror_.tree(), next_));
  EXPECT_EQ(mirror_.status().value("serial", json()), kHostileSerial);
}

// A freeze: the parent keeps serving the snapshot the mirror applied until it expires. The
// mirror keeps its tree and serial, but no longer reports "in sync": the cycle fails as stale.
TEST_F(HostileParentTest, AnExpiredSnapshotThatNeverChangesIsReportedStale) {
  // The window before `expires` must hold one --once, which a sanitizer build on a busy machine
  // may stretch: doubled (2 to 32 s) until the mirror applies the offer in time. A run too slow
  // for its window applies nothing (the snapshot had expired), so the next one starts clean.
  std::int64_t expires = 0;
  RunResult applied;
  for (std::int64_t window = 2; window <= 32 && !applied.exited(0); window *= 2) {
    Offer o = Offer::of(good_, kGoodSerial, *key_);
    expires = std::time(nullptr) + window;
    o.expires = expires;
    parent_->publish(o);
    applied = mirror_.once();
  }
  ASSERT_TRUE(Exited(applied, 0));
  EXPECT_EQ(mirror_.status()["last_cycle"]["result"], "ok");
  // Then the event the case is about: the clock passes `expires` (bounded: the window, 32 s).
  while (std::time(nullptr) <= expires) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  RunResult stale = mirror_.once();
  EXPECT_TRUE(stale.exited(1)) << stale.describe();
  EXPECT_TRUE(StderrNames(stale, {{"stale"}, {"expired"}})) << stale.describe();
  EXPECT_TRUE(TreeMatches(mirror_.tree(), good_));
  const json st = mirror_.status();
  EXPECT_EQ(st.value("serial", json()), kGoodSerial);
  EXPECT_EQ(st["last_cycle"]["result"], "failed") << st.dump(2);
}

TEST_F(HostileParentTest, SymlinkThatBecomesAFolderIsNotWrittenThrough) {
  // Serial 5 has edge/main/x86_64/lnk -> ../aarch64; serial 6 drops the link and puts a file
  // below its name. A mirror creating the folder through the old link would write the file into
  // edge/main/aarch64/.
  TreeModel with_link = good_;
  with_link[kPart + "/lnk"] = FileSpec{"../aarch64", 0, 0777, true};
  TreeModel with_folder = next_;
  with_folder[kPart + "/lnk/evil-1.0-r0.apk"] = FileSpec{"evil package\n"};
  parent_->publish(Offer::of(with_link, kGoodSerial, *key_));
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  ASSERT_TRUE(TreeMatches(mirror_.tree(), with_link));

  parent_->publish(Offer::of(with_folder, kHostileSerial, *key_));
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror_.tree(), with_folder))
      << "the link must become a folder, with nothing written through it";
}

TEST_F(HostileParentTest, FilesFoldersAndSymlinksSwapPlaces) {
  TreeModel before = good_;
  before[kPart + "/docs/README"] = FileSpec{"read me\n"};
  before[kPart + "/alias"] = FileSpec{"a file for now\n"};
  before[kPart + "/old-link"] = FileSpec{"APKINDEX.tar.gz", 0, 0777, true};
  TreeModel after = next_;
  after[kPart + "/docs"] = FileSpec{"docs is a file now\n"};
  after[kPart + "/alias"] = FileSpec{"APKINDEX.tar.gz", 0, 0777, true};
  after[kPart + "/old-link/README"] = FileSpec{"old-link is a folder now\n"};
  parent_->publish(Offer::of(before, kGoodSerial, *key_));
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  ASSERT_TRUE(TreeMatches(mirror_.tree(), before));

  parent_->publish(Offer::of(after, kHostileSerial, *key_));
  ASSERT_TRUE(Exited(mirror_.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror_.tree(), after));
  EXPECT_TRUE(Exited(mirror_.ctl({"verify", "--full"}), 0));
}

TEST_F(HostileParentTest, ThresholdCountsDistinctTrustedKeys) {
  auto second = proto::PrivateKey::generate();
  ASSERT_TRUE(second.ok());
  write_public_key(*second, root_ / "keys/second.pub");
  const Node strict = make_mirror(root_ / "strict", "strict", parent_->url(),
                                  {root_ / "keys/origin.pub", root_ / "keys/second.pub"}, nullptr,
                                  /*threshold=*/2);
  Offer both = Offer::of(good_, kGoodSerial, *key_);
  both.signers.push_back(*second);
  parent_->publish(both);
  ASSERT_TRUE(Exited(strict.once(), 0)) << "two trusted keys signed";
  ASSERT_TRUE(TreeMatches(strict.tree(), good_));

  const Listing before =
      list_tree(strict.tree(), {.skip_meta = false, .hash = true, .exclude = {}});
  Offer twice = Offer::of(next_, kHostileSerial, *key_);
  twice.signers.push_back(*key_);  // the same key again is not a second signer
  parent_->publish(twice);
  RunResult r = strict.once();
  EXPECT_TRUE(Exited(r, 1));
  EXPECT_TRUE(StderrNames(r, {{"signature", "threshold", "signed"}}));
  EXPECT_EQ(diff_listings(before, list_tree(strict.tree(),
                                            {.skip_meta = false, .hash = true, .exclude = {}})),
            "");

  Offer one = Offer::of(next_, kHostileSerial, *key_);
  parent_->publish(one);
  EXPECT_TRUE(Exited(strict.once(), 1)) << "one signature of two required";

  Offer enough = Offer::of(next_, kHostileSerial, *second);
  enough.signers.push_back(*key_);
  parent_->publish(enough);
  ASSERT_TRUE(Exited(strict.once(), 0));
  EXPECT_TRUE(TreeMatches(strict.tree(), next_));
}

TEST_F(HostileParentTest, SameSerialWithOtherContentIsANoop) {
  ASSERT_NO_FATAL_FAILURE(sync_good());
  parent_->publish(Offer::of(next_, kGoodSerial, *key_));
  const World before = world();
  ASSERT_TRUE(Exited(mirror_.once(), 0)) << "an equal serial is a no-op";
  const World after = world();
  EXPECT_EQ(diff_listings(before.tree, after.tree), "");
  EXPECT_EQ(diff_listings(before.state, after.state), "");
  EXPECT_EQ(mirror_.status().value("serial", json()), kGoodSerial);
}

TEST_F(HostileParentTest, AnEightMebibyteKeyidStaysOutOfStateAndStatus) {
  ASSERT_NO_FATAL_FAILURE(sync_good());
  Offer o = Offer::of(next_, kHostileSerial, *key_);
  o.patch_envelope = [](proto::Envelope& e) {
    e.signatures.push_back({std::string(8u << 20, 'k') + "\n\x1b[2J", std::string(64, 'j')});
  };
  parent_->publish(o);
  const World before = world();

  RunResult r = mirror_.once();
  ASSERT_FALSE(r.timed_out);
  EXPECT_TRUE(r.exited(1)) << r.describe().substr(0, 4096);
  EXPECT_TRUE(StderrNames(r, {{"keyid"}, {"8388613 bytes"}})) << r.err.substr(0, 4096);
  EXPECT_LT(r.err.size(), 16u * 1024);
  EXPECT_EQ(r.err.find('\x1b'), std::string::npos);
  EXPECT_LT(fs::file_size(mirror_.state() / "cycle.json"), 16u * 1024);
  const json st = mirror_.status();
  EXPECT_LT(st.dump().size(), 16u * 1024);
  EXPECT_EQ(st.value("serial", json()), kGoodSerial);
  EXPECT_EQ(diff_listings(before.tree, world().tree), "");
}

class HostileCaseTest : public HostileParentTest,
                        public ::testing::WithParamInterface<HostileCase> {};

TEST_P(HostileCaseTest, RefusedWithNothingChanged) {
  ASSERT_NO_FATAL_FAILURE(sync_good());
  const auto expect = offer(GetParam());
  const World before = world();

  RunResult r = mirror_.once();
  ASSERT_FALSE(r.timed_out) << r.describe();
  ASSERT_EQ(r.term_signal, 0) << "the mirror crashed:\n" << r.describe();
  EXPECT_TRUE(Exited(r, 1));
  EXPECT_TRUE(StderrNames(r, expect)) << "the error must name the problem";

  const World after = world();
  // Nothing rewritten either, even with the same bytes: the inodes are compared.
  const CompareOptions exact{.inode = true};
  EXPECT_EQ(
      diff_listings(before.tree, without_verified_leftovers(before.tree, after.tree, false), exact),
      "")
      << "the mirror's tree changed";
  EXPECT_EQ(diff_listings(before.state, without_verified_leftovers(before.state, after.state, true),
                          exact),
            "")
      << "the mirror's state changed";
  EXPECT_EQ(diff_listings(before.rest, after.rest), "") << "something changed outside the mirror";
  json st = mirror_.status();
  EXPECT_EQ(st.value("serial", json()), kGoodSerial) << st.dump(2);
  EXPECT_EQ(st["last_cycle"].value("result", ""), "failed") << st.dump(2);
}

INSTANTIATE_TEST_SUITE_P(Hostile, HostileCaseTest, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

class HostileInitialSyncTest : public HostileParentTest,
                               public ::testing::WithParamInterface<HostileCase> {};

TEST_P(HostileInitialSyncTest, EmptyMirrorStaysEmpty) {
  const auto expect = offer(GetParam());
  const Listing rest_before =
      list_tree(root_.path(),
                {.skip_meta = false, .hash = true, .exclude = {mirror_.tree(), mirror_.state()}});

  RunResult r = mirror_.once();
  ASSERT_FALSE(r.timed_out) << r.describe();
  ASSERT_EQ(r.term_signal, 0) << "the mirror crashed:\n" << r.describe();
  EXPECT_TRUE(Exited(r, 1));
  EXPECT_TRUE(StderrNames(r, expect));

  const Listing tree = without_verified_leftovers(
      {}, list_tree(mirror_.tree(), {.skip_meta = false, .hash = true, .exclude = {}}), false);
  EXPECT_EQ(files_in(tree), std::vector<std::string>{})
      << "an initial sync from a hostile parent must leave an empty tree";
  const Listing rest_after =
      list_tree(root_.path(),
                {.skip_meta = false, .hash = true, .exclude = {mirror_.tree(), mirror_.state()}});
  EXPECT_EQ(diff_listings(rest_before, rest_after), "") << "something changed outside the mirror";
  json st = mirror_.status();
  EXPECT_TRUE(st.value("serial", json(0)).is_null()) << "nothing is applied: " << st.dump(2);
  for (const char* name : {"snapshot", "journal.json", "held.json", "approvals.json"})
    EXPECT_FALSE(fs::exists(mirror_.state() / name)) << name << " in state_dir";
}

std::vector<HostileCase> initial_cases() {
  std::vector<HostileCase> out;
  for (const auto& c : cases())
    if (also_initial(c.name)) out.push_back(c);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Hostile, HostileInitialSyncTest, ::testing::ValuesIn(initial_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace tiersync::it
