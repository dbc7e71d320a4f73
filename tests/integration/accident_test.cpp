// The October 2024 accident, end to end. A builder's upload whose `$arch` came out empty deleted
// every edge/main architecture but one, and `rsync --delete` carried that to every mirror. With
// tiersync, tier0 holds the gutted partitions, still publishes the healthy ones, and no mirror
// two hops down loses a file.

#include <sys/stat.h>

#include <sstream>

#include <gtest/gtest.h>

#include "proto/digest.h"
#include "proto/dsse.h"
#include "proto/keys.h"
#include "tests/integration/support.h"

namespace tiersync::it {
namespace {

constexpr int kHeld = 3;

class AccidentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_ = keygen(root_ / "keys/origin");
    source_ = root_ / "incoming";
    origin_ = make_origin(root_ / "dl-master", "dl-master", source_, key_.key);
    mirror_a_ = make_mirror(root_ / "mirror-a", "mirror-a", origin_.url(), {key_.pub});
    // Two hops: B's parent is A, which re-serves the origin's snapshot.
    mirror_b_ = make_mirror(root_ / "mirror-b", "mirror-b", mirror_a_.url(), {key_.pub});
  }

  /// Publishes `model` from the source and syncs both mirrors; every step must succeed.
  void publish_and_sync(const TreeModel& model) {
    materialize(model, source_);
    ASSERT_TRUE(Exited(origin_.once(), 0));
    ASSERT_TRUE(Exited(mirror_a_.once(), 0));
    ASSERT_TRUE(Exited(mirror_b_.once(), 0));
  }

  std::string snapshot_bytes(const Node& node) const {
    return read_file(node.tree() / ".tiersync/v1/snapshot");
  }

  TempDir root_{"tiersync-accident"};
  KeyFiles key_;
  fs::path source_;
  Node origin_, mirror_a_, mirror_b_;
};

TEST_F(AccidentTest, KeygenWritesAPrivateKeyOnlyTheOwnerCanReadAndPrintsTheKeyid) {
  struct stat st;
  ASSERT_EQ(::stat(key_.key.c_str(), &st), 0) << key_.key;
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "the private key must be mode 0600";
  auto pub = proto::PublicKey::load(key_.pub);
  ASSERT_TRUE(pub.ok()) << pub.message();
  EXPECT_EQ(key_.keyid, pub->keyid())
      << "keygen must print the keyid (SHA-256 of the DER SubjectPublicKeyInfo)";
  auto priv = proto::PrivateKey::load(key_.key);
  ASSERT_TRUE(priv.ok()) << priv.message();
  EXPECT_EQ(priv->public_key().der(), pub->der()) << "the .pub file must hold the key's half";
}

TEST_F(AccidentTest, KeygenRefusesToReplaceAKeyWithoutForce) {
  const std::string before = read_file(key_.key);
  RunResult again = run({kTiersyncctl, "keygen", "--out", (root_ / "keys/origin").string()});
  EXPECT_TRUE(Exited(again, 2));
  EXPECT_TRUE(Mentions(again, key_.key.string()));
  EXPECT_EQ(read_file(key_.key), before) << "the existing key must be left as it was";

  // Only the public half left: still refused (its pair would no longer match).
  write_file(root_ / "keys/lone.pub", "x");
  RunResult lone = run({kTiersyncctl, "keygen", "--out", (root_ / "keys/lone").string()});
  EXPECT_TRUE(Exited(lone, 2));
  EXPECT_TRUE(Mentions(lone, (root_ / "keys/lone.pub").string()));
  EXPECT_FALSE(fs::exists(root_ / "keys/lone.key"));

  RunResult forced =
      run({kTiersyncctl, "keygen", "--out", (root_ / "keys/origin").string(), "--force"});
  ASSERT_TRUE(Exited(forced, 0));
  EXPECT_NE(read_file(key_.key), before);
  struct stat st;
  ASSERT_EQ(::stat(key_.key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(AccidentTest, SigningKeyReadableByOthersIsRefusedAtCheckAndAtStart) {
  materialize(make_sample(), source_);
  ASSERT_EQ(::chmod(key_.key.c_str(), 0644), 0);
  for (const auto& args : {std::vector<std::string>{"--check-config"}, {"--once"}}) {
    std::vector<std::string> argv = {kTiersyncd, "--config", origin_.config().string()};
    argv.insert(argv.end(), args.begin(), args.end());
    RunResult r = run(argv);
    EXPECT_TRUE(Exited(r, 2)) << args[0];
    EXPECT_TRUE(Mentions(r, key_.key.string())) << args[0];
    EXPECT_TRUE(Mentions(r, "0644")) << args[0];
  }
  EXPECT_FALSE(fs::exists(origin_.tree() / ".tiersync/v1/snapshot"));
  ASSERT_EQ(::chmod(key_.key.c_str(), 0600), 0);
  EXPECT_TRUE(
      Exited(run({kTiersyncd, "--config", origin_.config().string(), "--check-config"}), 0));
}

TEST_F(AccidentTest, GuttedUploadIsHeldAtOriginWhileHealthyPartitionsReachEveryMirror) {
  // 1. The healthy tree reaches both mirrors.
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));
  for (const Node* node : {&origin_, &mirror_a_, &mirror_b_})
    ASSERT_TRUE(TreeMatches(node->tree(), v1)) << node->name << " after the first sync";
  const proto::Snapshot s1 = read_published_snapshot(origin_.tree());
  {
    auto env = proto::decode_envelope(snapshot_bytes(origin_));
    ASSERT_TRUE(env.ok()) << env.message();
    auto pub = proto::PublicKey::load(key_.pub);
    ASSERT_TRUE(pub.ok()) << pub.message();
    auto payload = proto::verify_envelope(*env, {*pub}, 1, proto::kSnapshotPayloadType);
    EXPECT_TRUE(payload.ok()) << "tier0's snapshot must verify with its key: "
                              << (payload.ok() ? "" : payload.message());
    std::set<std::string> published;
    for (const auto& [name, ref] : s1.partitions) published.insert(name);
    EXPECT_EQ(published, partitions_of(v1));
    EXPECT_EQ(s1.partitions.at("edge/main/x86_64").files, paths_in(v1, "edge/main/x86_64").size());
  }
  EXPECT_EQ(snapshot_bytes(mirror_b_), snapshot_bytes(origin_))
      << "relays re-serve the origin's signed snapshot byte for byte";
  {
    // Files reach tier0's tree as copies (a reflink where the file system can): never sharing an
    // inode with the source, which builders may change in place (docs/security.md).
    struct stat in_source, in_tree;
    const std::string pkg = packages_in(v1, "edge/main/x86_64").front();
    ASSERT_EQ(::stat((source_ / pkg).c_str(), &in_source), 0);
    ASSERT_EQ(::stat((origin_.tree() / pkg).c_str(), &in_tree), 0);
    EXPECT_NE(in_source.st_ino, in_tree.st_ino) << pkg << " is hard-linked to the source";
  }
  {
    json st = mirror_b_.status();
    EXPECT_TRUE(HasStatusShape(st));
    EXPECT_TRUE(HasStatusShape(origin_.status()));
    EXPECT_EQ(origin_.status().value("role", ""), "tier0");
    EXPECT_EQ(st.value("role", ""), "mirror") << st.dump();
    EXPECT_EQ(st.value("name", ""), "mirror-b") << st.dump();
    EXPECT_EQ(st.value("serial", json()), s1.serial) << st.dump();
    EXPECT_TRUE(held_partitions(st).empty()) << st.dump();
    EXPECT_EQ(st["last_cycle"].value("result", ""), "ok") << st.dump();
  }
  {
    // Nothing new upstream: a no-op.
    ASSERT_TRUE(Exited(mirror_a_.once(), 0));
    json st = mirror_a_.status();
    EXPECT_EQ(st["last_cycle"].value("result", ""), "noop") << st.dump();
    EXPECT_EQ(st.value("serial", json()), s1.serial) << st.dump();
  }

  // 2. The accident: the upload deletes every edge/main architecture but x86_64, while
  //    x86_64 gains a package and a new index, and last-updated is touched.
  TreeModel upload = v1;
  remove_partition(upload, "edge/main/aarch64");
  remove_partition(upload, "edge/main/armv7");
  const std::string new_pkg =
      add_package(upload, "edge/main/x86_64", "newpkg-1.0-r0.apk", 2, kBaseMtime + 2000);
  rebuild_index(upload, "edge/main/x86_64", kBaseMtime + 2001);
  touch_last_updated(upload, kBaseMtime + 2002);
  materialize(upload, source_);

  RunResult held_run = origin_.once();
  ASSERT_TRUE(Exited(held_run, kHeld)) << "tier0 must hold the gutted partitions";
  EXPECT_TRUE(StderrNames(held_run, {{"edge/main/aarch64"}, {"edge/main/armv7"}}))
      << "a hold is logged naming the partition";
  {
    json st = origin_.status();
    EXPECT_TRUE(HasStatusShape(st));
    EXPECT_EQ(held_partitions(st), (std::set<std::string>{"edge/main/aarch64", "edge/main/armv7"}))
        << st.dump(2);
    for (const char* part : {"edge/main/aarch64", "edge/main/armv7"}) {
      json h = held_entry(st, part);
      ASSERT_TRUE(h.is_object()) << part << " not held: " << st.dump(2);
      // Every file goes: the deleted rule names the hold (docs/guard.md, "The rules"), with
      // the change's counts and the published manifest the change starts from.
      const auto files = paths_in(v1, part).size();
      EXPECT_EQ(h.value("rule", ""), "deleted") << h.dump();
      EXPECT_EQ(h.value("deleted", json()), files) << h.dump();
      EXPECT_EQ(h.value("files", json()), files) << h.dump();
      EXPECT_EQ(h.value("lost", json()), files) << h.dump();
      EXPECT_EQ(h.value("of", json()), files) << h.dump();
      EXPECT_DOUBLE_EQ(h.value("ratio", -1.0), 1.0) << h.dump();
      EXPECT_DOUBLE_EQ(h.value("limit", -1.0), 0.2) << h.dump();
      EXPECT_EQ(h.value("candidate", json()), "removed") << h.dump();
      EXPECT_EQ(h.value("to", json()), "removed") << h.dump();
      EXPECT_EQ(h.value("from", json()), proto::to_hex(s1.partitions.at(part).manifest))
          << "the hold names the published manifest it starts from: " << h.dump();
    }
  }
  // The healthy partitions are published; the held ones keep their manifests and files.
  TreeModel published = upload;
  for (const char* part : {"edge/main/aarch64", "edge/main/armv7"})
    for (const auto& path : paths_in(v1, part)) published[path] = v1.at(path);
  ASSERT_TRUE(TreeMatches(origin_.tree(), published)) << "tier0 during the hold";
  const proto::Snapshot s2 = read_published_snapshot(origin_.tree());
  EXPECT_GT(s2.serial, s1.serial) << "the healthy partitions must be published";
  EXPECT_EQ(s2.partitions.at("edge/main/aarch64"), s1.partitions.at("edge/main/aarch64"));
  EXPECT_EQ(s2.partitions.at("edge/main/armv7"), s1.partitions.at("edge/main/armv7"));
  EXPECT_NE(s2.partitions.at("edge/main/x86_64"), s1.partitions.at("edge/main/x86_64"));

  ASSERT_TRUE(Exited(mirror_a_.once(), 0));
  ASSERT_TRUE(Exited(mirror_b_.once(), 0));
  for (const Node* node : {&mirror_a_, &mirror_b_}) {
    EXPECT_TRUE(TreeMatches(node->tree(), published))
        << node->name << " must get " << new_pkg << " and lose no file";
    json st = node->status();
    EXPECT_EQ(st.value("serial", json()), s2.serial) << st.dump();
    EXPECT_TRUE(held_partitions(st).empty()) << st.dump();
  }
  // Running tier0 again on the same upload changes nothing: still held, nothing lost.
  ASSERT_TRUE(Exited(origin_.once(), kHeld));
  EXPECT_TRUE(TreeMatches(origin_.tree(), published)) << "tier0 after a second run on the upload";

  // 3. The builder fixes the upload: the architectures are back, aarch64 with a new package.
  TreeModel fixed = upload;
  for (const char* part : {"edge/main/aarch64", "edge/main/armv7"})
    for (const auto& path : paths_in(v1, part)) fixed[path] = v1.at(path);
  add_package(fixed, "edge/main/aarch64", "newpkg-1.0-r0.apk", 3, kBaseMtime + 3000);
  rebuild_index(fixed, "edge/main/aarch64", kBaseMtime + 3001);
  touch_last_updated(fixed, kBaseMtime + 3002);
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(fixed));
  EXPECT_TRUE(held_partitions(origin_.status()).empty()) << origin_.status().dump(2);
  for (const Node* node : {&origin_, &mirror_a_, &mirror_b_}) {
    EXPECT_TRUE(TreeMatches(node->tree(), fixed)) << node->name << " after the fixed upload";
    EXPECT_TRUE(TreeMatches(node->tree(), model_of(source_)))
        << node->name << " must be byte-identical to the source";
    EXPECT_EQ(snapshot_bytes(*node), snapshot_bytes(origin_)) << node->name;
    EXPECT_TRUE(Exited(node->ctl({"verify", "--full"}), 0)) << node->name;
  }
  EXPECT_GT(read_published_snapshot(origin_.tree()).serial, s2.serial);
}

TEST_F(AccidentTest, VerifyReportsACorruptedFileInAMirror) {
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));
  for (const Node* node : {&origin_, &mirror_a_, &mirror_b_}) {
    EXPECT_TRUE(Exited(node->ctl({"verify"}), 0)) << node->name;
    EXPECT_TRUE(Exited(node->ctl({"verify", "--full"}), 0)) << node->name;
  }

  // A file in B grows by one byte (its mtime kept): verify sees the size.
  const std::string grown = packages_in(v1, "edge/community/armv7").at(3);
  const FileSpec& spec = v1.at(grown);
  write_file(mirror_b_.tree() / grown, spec.bytes + "X", spec.mtime, spec.mode);
  RunResult quick = mirror_b_.ctl({"verify"});
  EXPECT_TRUE(Exited(quick, 1)) << "verify must notice a size change";
  EXPECT_TRUE(Mentions(quick, grown)) << "verify must list the difference";
  RunResult full = mirror_b_.ctl({"verify", "--full"});
  EXPECT_TRUE(Exited(full, 1));
  EXPECT_TRUE(Mentions(full, grown));

  // A file in A keeps its size and mtime but not its bytes: only --full sees it.
  const std::string flipped = packages_in(v1, "edge/main/x86_64").at(5);
  std::string bytes = v1.at(flipped).bytes;
  bytes[bytes.size() / 2] ^= 0x5a;
  write_file(mirror_a_.tree() / flipped, bytes, v1.at(flipped).mtime, v1.at(flipped).mode);
  RunResult full_a = mirror_a_.ctl({"verify", "--full"});
  EXPECT_TRUE(Exited(full_a, 1)) << "verify --full must hash";
  EXPECT_TRUE(Mentions(full_a, flipped));
  EXPECT_TRUE(Exited(origin_.ctl({"verify", "--full"}), 0))
      << "the corruption in the mirrors must not reach the origin";
}

TEST_F(AccidentTest, BusyMarkerDefersThePublish) {
  const TreeModel v1 = make_sample();
  ASSERT_NO_FATAL_FAILURE(publish_and_sync(v1));
  const std::uint64_t s1 = read_published_snapshot(origin_.tree()).serial;

  // The builder is mid-upload: it has already deleted aarch64 and not yet written it back.
  TreeModel midway = v1;
  remove_partition(midway, "edge/main/aarch64");
  add_package(midway, "edge/main/x86_64", "newpkg-1.0-r0.apk", 4, kBaseMtime + 4000);
  materialize(midway, source_);
  write_file(source_ / ".tiersync-busy", "");
  ASSERT_TRUE(Exited(origin_.once(), 0)) << "a busy source is not an error";
  EXPECT_EQ(read_published_snapshot(origin_.tree()).serial, s1) << "nothing may be published";
  EXPECT_TRUE(TreeMatches(origin_.tree(), v1)) << "tier0 must not touch its tree while busy";

  // The upload completes and the marker goes.
  TreeModel done = v1;
  add_package(done, "edge/main/x86_64", "newpkg-1.0-r0.apk", 4, kBaseMtime + 4000);
  rebuild_index(done, "edge/main/x86_64", kBaseMtime + 4001);
  materialize(done, source_);
  ASSERT_TRUE(Exited(origin_.once(), 0));
  EXPECT_GT(read_published_snapshot(origin_.tree()).serial, s1);
  EXPECT_TRUE(TreeMatches(origin_.tree(), done));
  ASSERT_TRUE(Exited(mirror_a_.once(), 0));
  EXPECT_TRUE(TreeMatches(mirror_a_.tree(), done));
}

// With "log": {"format": "json"}, every line tiersyncd writes is one JSON object with time,
// level and msg; a hold is one error line that names the partition and its figures.
TEST_F(AccidentTest, JsonLogsAreOneObjectPerLine) {
  amend_config(origin_, {{"log", {{"format", "json"}}}});
  TreeModel model = make_sample();
  materialize(model, source_);
  RunResult first = origin_.once();
  ASSERT_TRUE(Exited(first, 0));
  remove_partition(model, "edge/main/aarch64");
  materialize(model, source_);
  RunResult held = origin_.once();
  ASSERT_TRUE(Exited(held, kHeld));
  bool hold_line = false;
  for (const RunResult* r : {&first, &held}) {
    std::istringstream lines(r->err);
    std::string line;
    int count = 0;
    while (std::getline(lines, line)) {
      ++count;
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      ASSERT_TRUE(j.is_object()) << "not a JSON object: " << line;
      EXPECT_TRUE(j.contains("time") && j.contains("level") && j.contains("msg")) << line;
      const std::string msg = j.value("msg", "");
      if (j.value("level", "") == "error" && msg.find("hold: partition=edge/main/aarch64") == 0)
        hold_line = msg.find("deleted=") != std::string::npos &&
                    msg.find("ratio=") != std::string::npos &&
                    msg.find("limit=") != std::string::npos;
    }
    EXPECT_GT(count, 0) << r->describe();
  }
  EXPECT_TRUE(hold_line) << held.err;
}

}  // namespace
}  // namespace tiersync::it
