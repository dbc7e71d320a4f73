#include "proto/keys.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "proto/digest.h"
#include "tests/unit/support.h"

namespace tiersync::proto {
namespace {

using unit::read_file;
using unit::write_file;

namespace fs = std::filesystem;

bool is_lower_hex(std::string_view s) {
  return s.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

/// A fresh directory per test, removed afterwards, for files the openssl CLI reads and writes.
class KeyFilesTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = unit::make_temp_dir("keys_test");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override { fs::remove_all(dir_); }

  /// Runs a shell command inside the temp dir; true when it exits 0.
  bool run(const std::string& command) {
    const std::string line = "cd '" + dir_.string() + "' && " + command + " 2>/dev/null";
    return std::system(line.c_str()) == 0;
  }

  fs::path dir_;
};

TEST(Keys, GenerateSignVerify) {
  const auto key = PrivateKey::generate();
  ASSERT_TRUE(key) << key.message();
  const std::string sig = key->sign("hello");
  EXPECT_EQ(sig.size(), 64u);
  EXPECT_TRUE(key->public_key().verify("hello", sig));
}

TEST(Keys, TamperedMessageOrSignatureFails) {
  const auto key = PrivateKey::generate();
  ASSERT_TRUE(key);
  std::string sig = key->sign("hello");
  EXPECT_FALSE(key->public_key().verify("hellO", sig));
  sig[10] ^= 1;
  EXPECT_FALSE(key->public_key().verify("hello", sig));
}

TEST(Keys, OtherKeyFails) {
  const auto a = PrivateKey::generate();
  const auto b = PrivateKey::generate();
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->public_key().keyid(), b->public_key().keyid());
  EXPECT_FALSE(b->public_key().verify("hello", a->sign("hello")));
}

TEST(Keys, WrongLengthSignatureIsFalse) {
  const auto key = PrivateKey::generate();
  ASSERT_TRUE(key);
  const std::string sig = key->sign("hello");
  const PublicKey& pub = key->public_key();
  EXPECT_FALSE(pub.verify("hello", ""));
  EXPECT_FALSE(pub.verify("hello", sig.substr(0, 63)));
  EXPECT_FALSE(pub.verify("hello", sig + "x"));
  EXPECT_FALSE(pub.verify("hello", std::string(100000, 'x')));
  EXPECT_FALSE(PublicKey().verify("hello", sig));  // an empty key never verifies
}

TEST(Keys, PemRoundTrip) {
  const auto key = PrivateKey::generate();
  ASSERT_TRUE(key);
  const std::string priv_pem = key->to_pem();
  const std::string pub_pem = key->public_key().to_pem();
  EXPECT_TRUE(priv_pem.starts_with("-----BEGIN PRIVATE KEY-----\n")) << priv_pem;
  EXPECT_TRUE(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\n")) << pub_pem;

  const auto priv = PrivateKey::from_pem(priv_pem, "priv.pem");
  ASSERT_TRUE(priv) << priv.message();
  const auto pub = PublicKey::from_pem(pub_pem, "pub.pem");
  ASSERT_TRUE(pub) << pub.message();
  EXPECT_EQ(priv->public_key().keyid(), key->public_key().keyid());
  EXPECT_EQ(pub->keyid(), key->public_key().keyid());
  EXPECT_EQ(pub->der(), key->public_key().der());
  EXPECT_TRUE(pub->verify("m", priv->sign("m")));
  EXPECT_EQ(priv->to_pem(), priv_pem);
}

TEST(Keys, KeyidIsSha256OfDer) {
  const auto key = PrivateKey::generate();
  ASSERT_TRUE(key);
  const PublicKey& pub = key->public_key();
  EXPECT_EQ(pub.der().size(), 44u);  // Ed25519 SPKI: 12 bytes of header + 32 of key
  EXPECT_EQ(pub.keyid().size(), 64u);
  EXPECT_TRUE(is_lower_hex(pub.keyid()));
  EXPECT_EQ(pub.keyid(), to_hex(sha256(pub.der())));
}

TEST(Keys, GarbagePemRefused) {
  for (const std::string_view bad :
       {"", "garbage", "-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n"}) {
    const auto pub = PublicKey::from_pem(bad, "bad.pub");
    ASSERT_FALSE(pub);
    EXPECT_TRUE(pub.message().starts_with("bad.pub: ")) << pub.message();
    const auto priv = PrivateKey::from_pem(bad, "bad.key");
    ASSERT_FALSE(priv);
    EXPECT_TRUE(priv.message().starts_with("bad.key: ")) << priv.message();
  }
}

TEST(Keys, PemErrorsSayWhatIsMissing) {
  EXPECT_EQ(PublicKey::from_pem("garbage", "k.pub").message(),
            "k.pub: no PEM \"BEGIN PUBLIC KEY\" block found");
  EXPECT_TRUE(
      PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "k.pub")
          .message()
          .starts_with("k.pub: malformed PEM PUBLIC KEY ("));
  // Public and private PEM are not interchangeable.
  const auto key = PrivateKey::generate();
  ASSERT_TRUE(key);
  EXPECT_EQ(PublicKey::from_pem(key->to_pem(), "k.pub").message(),
            "k.pub: no PEM \"BEGIN PUBLIC KEY\" block found");
  EXPECT_EQ(PrivateKey::from_pem(key->public_key().to_pem(), "k.key").message(),
            "k.key: no PEM \"BEGIN PRIVATE KEY\" block found");
}

TEST_F(KeyFilesTest, OversizedFileRefused) {
  write_file(dir_ / "big.pem", std::string(100000, 'A'));
  EXPECT_EQ(PrivateKey::load(dir_ / "big.pem").message(),
            (dir_ / "big.pem").string() + ": larger than 64 KiB, not a key file");
}

TEST_F(KeyFilesTest, MissingFileErrorNamesPath) {
  const fs::path missing = dir_ / "nope.key";
  const auto priv = PrivateKey::load(missing);
  ASSERT_FALSE(priv);
  EXPECT_EQ(priv.message(), "cannot read " + missing.string() + ": No such file or directory");
  const auto pub = PublicKey::load(missing);
  ASSERT_FALSE(pub);
  EXPECT_EQ(pub.message(), "cannot read " + missing.string() + ": No such file or directory");
}

TEST_F(KeyFilesTest, DirectoryAndGarbageFilesRefused) {
  EXPECT_NE(PublicKey::load(dir_).message().find(dir_.string()), std::string::npos);
  write_file(dir_ / "garbage.pub", "hello\n");
  const auto pub = PublicKey::load(dir_ / "garbage.pub");
  ASSERT_FALSE(pub);
  EXPECT_TRUE(pub.message().starts_with((dir_ / "garbage.pub").string() + ": ")) << pub.message();
}

TEST_F(KeyFilesTest, SaveAndLoad) {
  const auto key = PrivateKey::generate();
  ASSERT_TRUE(key);
  write_file(dir_ / "k.key", key->to_pem());
  write_file(dir_ / "k.pub", key->public_key().to_pem());
  const auto priv = PrivateKey::load(dir_ / "k.key");
  const auto pub = PublicKey::load(dir_ / "k.pub");
  ASSERT_TRUE(priv) << priv.message();
  ASSERT_TRUE(pub) << pub.message();
  EXPECT_EQ(pub->keyid(), key->public_key().keyid());
  EXPECT_TRUE(pub->verify("m", priv->sign("m")));
}

TEST_F(KeyFilesTest, InteropWithOpensslCli) {
  ASSERT_TRUE(run("openssl genpkey -algorithm ed25519 -out k.pem"));
  ASSERT_TRUE(run("openssl pkey -in k.pem -pubout -out k.pub"));
  const auto priv = PrivateKey::load(dir_ / "k.pem");
  const auto pub = PublicKey::load(dir_ / "k.pub");
  ASSERT_TRUE(priv) << priv.message();
  ASSERT_TRUE(pub) << pub.message();
  EXPECT_EQ(priv->public_key().keyid(), pub->keyid());

  // keyid is the SHA-256 of the DER SubjectPublicKeyInfo, as the CLI computes it.
  ASSERT_TRUE(run("openssl pkey -pubin -in k.pub -outform DER | sha256sum > keyid.txt"));
  EXPECT_EQ(read_file(dir_ / "keyid.txt").substr(0, 64), pub->keyid());
  ASSERT_TRUE(run("openssl pkey -pubin -in k.pub -outform DER -out k.der"));
  EXPECT_EQ(read_file(dir_ / "k.der"), pub->der());

  // Our signature verifies with the CLI, and a tampered one does not.
  const std::string message = "DSSEv1 3 a/b 5 hello";
  write_file(dir_ / "msg", message);
  std::string sig = priv->sign(message);
  write_file(dir_ / "ours.sig", sig);
  EXPECT_TRUE(run("openssl pkeyutl -verify -pubin -inkey k.pub -rawin -in msg -sigfile ours.sig"));
  sig[0] ^= 1;
  write_file(dir_ / "bad.sig", sig);
  EXPECT_FALSE(run("openssl pkeyutl -verify -pubin -inkey k.pub -rawin -in msg -sigfile bad.sig"));

  // The CLI's signature verifies with ours.
  ASSERT_TRUE(run("openssl pkeyutl -sign -inkey k.pem -rawin -in msg -out theirs.sig"));
  EXPECT_TRUE(pub->verify(message, read_file(dir_ / "theirs.sig")));
  EXPECT_FALSE(pub->verify(message + "x", read_file(dir_ / "theirs.sig")));
}

TEST_F(KeyFilesTest, RsaKeyRefusedNamingTheFile) {
  ASSERT_TRUE(run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out rsa.pem"));
  ASSERT_TRUE(run("openssl pkey -in rsa.pem -pubout -out rsa.pub"));
  const auto priv = PrivateKey::load(dir_ / "rsa.pem");
  ASSERT_FALSE(priv);
  EXPECT_EQ(priv.message(), (dir_ / "rsa.pem").string() + ": not an Ed25519 key (found RSA)");
  const auto pub = PublicKey::load(dir_ / "rsa.pub");
  ASSERT_FALSE(pub);
  EXPECT_EQ(pub.message(), (dir_ / "rsa.pub").string() + ": not an Ed25519 key (found RSA)");
}

TEST_F(KeyFilesTest, EncryptedPrivateKeyRefusedWithoutPrompting) {
  ASSERT_TRUE(run("openssl genpkey -algorithm ed25519 -aes256 -pass pass:secret -out enc.pem"));
  const auto priv = PrivateKey::load(dir_ / "enc.pem");
  ASSERT_FALSE(priv);
  EXPECT_EQ(priv.message(),
            (dir_ / "enc.pem").string() + ": encrypted private keys are not supported");
}

}  // namespace
}  // namespace tiersync::proto
