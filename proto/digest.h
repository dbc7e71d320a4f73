#pragma once
/// SHA-256 digests, hex and base64 codecs.

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace tiersync::proto {

/// A binary SHA-256 digest (32 bytes).
using Digest = std::array<std::uint8_t, 32>;

/// Lowercase hex of arbitrary bytes.
std::string to_hex(const void* data, std::size_t size);
inline std::string to_hex(const Digest& d) {
  return to_hex(d.data(), d.size());
}

/// The value of one hex digit of either case (0-15), or -1 for any other character.
int hex_digit_value(char c);

/// Parses exactly 64 lowercase hex characters; anything else is nullopt.
std::optional<Digest> digest_from_hex(std::string_view hex);

/// Decodes %XX escapes (hex digits of either case) once; nullopt when an escape is malformed or
/// the result holds a NUL (raw or decoded): such bytes never reach a path or a system call.
std::optional<std::string> percent_decode(std::string_view text);

/// Standard base64 with padding.
std::string base64_encode(std::string_view bytes);

/// Accepts the standard and the URL-safe alphabet, with or without padding; nullopt if malformed.
std::optional<std::string> base64_decode(std::string_view text);

/// Streaming SHA-256 through OpenSSL's EVP API.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;

  void update(const void* data, std::size_t size);
  void update(std::string_view bytes) { update(bytes.data(), bytes.size()); }
  /// Returns the digest; the hasher is reset and can be reused.
  Digest finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// One-shot SHA-256 of a byte string.
Digest sha256(std::string_view bytes);

/// Compares two byte strings in time independent of their content (for secrets and digests).
bool constant_time_equal(std::string_view a, std::string_view b);

}  // namespace tiersync::proto
