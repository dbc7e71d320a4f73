#include "proto/digest.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <array>
#include <cassert>
#include <new>
#include <stdexcept>

namespace tiersync::proto {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";
constexpr char kBase64Alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Value of a base64 character in either alphabet ('+' or '-' is 62, '/' or '_' is 63).
int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

/// A lowercase hex digit's value, or 0xff: a digest has one spelling (docs/protocol.md), so a
/// URL has one too. A table, not comparisons: the digits of a digest are random, and a branch
/// per digit mispredicts half the time (it was a fifth of a relay's incremental cycle).
constexpr std::array<std::uint8_t, 256> kLowerHexValue = [] {
  std::array<std::uint8_t, 256> t{};
  t.fill(0xff);
  for (int c = '0'; c <= '9'; ++c)
    t[static_cast<std::size_t>(c)] = static_cast<std::uint8_t>(c - '0');
  for (int c = 'a'; c <= 'f'; ++c)
    t[static_cast<std::size_t>(c)] = static_cast<std::uint8_t>(c - 'a' + 10);
  return t;
}();

/// Fetched once: OpenSSL 3's implicit fetch inside every EVP_DigestInit_ex takes a global lock.
/// Never freed, on purpose; it lives as long as the process.
const EVP_MD* sha256_md() {
  static const EVP_MD* const md = [] {
    EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    if (fetched == nullptr) throw std::runtime_error("OpenSSL provides no SHA256");
    return fetched;
  }();
  return md;
}

}  // namespace

int hex_digit_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string to_hex(const void* data, std::size_t size) {
  const auto* bytes = static_cast<const std::uint8_t*>(data);
  std::string out(2 * size, '\0');
  for (std::size_t i = 0; i < size; ++i) {
    out[2 * i] = kHexDigits[bytes[i] >> 4];
    out[2 * i + 1] = kHexDigits[bytes[i] & 0xf];
  }
  return out;
}

std::optional<Digest> digest_from_hex(std::string_view hex) {
  Digest d{};
  if (hex.size() != 2 * d.size()) return std::nullopt;
  unsigned bad = 0;
  for (std::size_t i = 0; i < d.size(); ++i) {
    const unsigned hi = kLowerHexValue[static_cast<unsigned char>(hex[2 * i])];
    const unsigned lo = kLowerHexValue[static_cast<unsigned char>(hex[2 * i + 1])];
    bad |= hi | lo;
    d[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  if (bad & 0xf0) return std::nullopt;  // a byte that is no lowercase hex digit
  return d;
}

std::optional<std::string> percent_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '%') {
      if (i + 2 >= text.size()) return std::nullopt;
      const int hi = hex_digit_value(text[i + 1]);
      const int lo = hex_digit_value(text[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      c = static_cast<char>(hi * 16 + lo);
      i += 2;
    }
    if (c == '\0') return std::nullopt;
    out += c;
  }
  return out;
}

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t n =
        std::uint8_t(bytes[i]) << 16 | std::uint8_t(bytes[i + 1]) << 8 | std::uint8_t(bytes[i + 2]);
    for (int shift = 18; shift >= 0; shift -= 6) out += kBase64Alphabet[n >> shift & 63];
  }
  if (const std::size_t rest = bytes.size() - i; rest > 0) {
    std::uint32_t n = std::uint8_t(bytes[i]) << 16;
    if (rest == 2) n |= std::uint8_t(bytes[i + 1]) << 8;
    out += kBase64Alphabet[n >> 18 & 63];
    out += kBase64Alphabet[n >> 12 & 63];
    out += rest == 2 ? kBase64Alphabet[n >> 6 & 63] : '=';
    out += '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  // Padding is optional, but when present it must complete the last quantum exactly.
  if (text.size() % 4 == 0 && text.ends_with("==")) {
    text.remove_suffix(2);
  } else if (text.size() % 4 == 0 && text.ends_with('=')) {
    text.remove_suffix(1);
  }
  if (text.size() % 4 == 1) return std::nullopt;  // a lone character carries only 6 bits

  std::string out;
  out.reserve(text.size() * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (const char c : text) {
    const int v = base64_value(c);
    if (v < 0) return std::nullopt;  // also catches '=' in the middle
    acc = (acc << 6 | static_cast<std::uint32_t>(v)) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>(acc >> bits & 0xff);
    }
  }
  // Leftover bits must be zero so that each byte string has exactly one accepted encoding.
  if ((acc & ((1u << bits) - 1)) != 0) return std::nullopt;
  return out;
}

struct Sha256::Impl {
  struct CtxFree {
    void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
  };
  std::unique_ptr<EVP_MD_CTX, CtxFree> ctx{EVP_MD_CTX_new()};

  void init() {
    if (ctx == nullptr) throw std::bad_alloc();
    if (EVP_DigestInit_ex(ctx.get(), sha256_md(), nullptr) != 1) {
      throw std::runtime_error("EVP_DigestInit_ex(SHA256) failed");
    }
  }
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
  impl_->init();
}
Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(const void* data, std::size_t size) {
  // Only fails on a corrupt context, which would be a bug here, not bad input.
  [[maybe_unused]] const int ok = EVP_DigestUpdate(impl_->ctx.get(), data, size);
  assert(ok == 1);
}

Digest Sha256::finish() {
  Digest d{};
  unsigned int len = 0;
  [[maybe_unused]] const int ok = EVP_DigestFinal_ex(impl_->ctx.get(), d.data(), &len);
  assert(ok == 1 && len == d.size());
  impl_->init();
  return d;
}

Digest sha256(std::string_view bytes) {
  Digest d{};
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), d.data(), &len, sha256_md(), nullptr) != 1) {
    throw std::runtime_error("EVP_Digest(SHA256) failed");
  }
  return d;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  // The length is not secret; only the content comparison must not leak timing.
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace tiersync::proto
