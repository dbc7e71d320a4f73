#pragma once
/// Ed25519 keys through OpenSSL's EVP API: PEM (PKCS#8 private, SPKI public), sign, verify, keyid.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "proto/result.h"

namespace tiersync::proto {

struct KeyHandle;  // wraps EVP_PKEY; defined in keys.cpp

/// An Ed25519 public key. keyid = lowercase hex SHA-256 of its DER SubjectPublicKeyInfo.
class PublicKey {
 public:
  /// Parses an SPKI PEM ("BEGIN PUBLIC KEY"); `source` names the input in errors (a file path).
  static Result<PublicKey> from_pem(std::string_view pem, std::string_view source);
  /// Reads and parses a PEM file; errors name the file.
  static Result<PublicKey> load(const std::filesystem::path& file);

  /// True when `signature` is a valid Ed25519 signature of `message` by this key.
  bool verify(std::string_view message, std::string_view signature) const;
  /// How many signatures `verify` has checked in this process (what a forged envelope costs).
  static std::uint64_t verifications();
  const std::string& keyid() const { return keyid_; }
  /// Raw DER SubjectPublicKeyInfo.
  const std::string& der() const { return der_; }
  std::string to_pem() const;

 private:
  /// Takes a checked Ed25519 key holding only public material.
  static Result<PublicKey> adopt(std::shared_ptr<KeyHandle> key, std::string_view source);

  std::shared_ptr<KeyHandle> key_;
  std::string der_;
  std::string keyid_;
  friend class PrivateKey;
};

/// An Ed25519 private key.
class PrivateKey {
 public:
  static Result<PrivateKey> generate();
  /// Parses a PKCS#8 PEM ("BEGIN PRIVATE KEY"), as written by `openssl genpkey -algorithm ed25519`.
  static Result<PrivateKey> from_pem(std::string_view pem, std::string_view source);
  static Result<PrivateKey> load(const std::filesystem::path& file);

  /// The 64-byte Ed25519 signature of `message`.
  std::string sign(std::string_view message) const;
  const PublicKey& public_key() const { return public_; }
  std::string to_pem() const;

 private:
  /// Takes a checked Ed25519 private key and derives its public half.
  static Result<PrivateKey> adopt(std::shared_ptr<KeyHandle> key, std::string_view source);

  std::shared_ptr<KeyHandle> key_;
  PublicKey public_;
};

}  // namespace tiersync::proto
