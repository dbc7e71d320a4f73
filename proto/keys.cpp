#include "proto/keys.h"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <atomic>
#include <cassert>
#include <cerrno>
#include <climits>
#include <stdexcept>
#include <system_error>

#include "proto/digest.h"

namespace tiersync::proto {

struct KeyHandle {
  struct Free {
    void operator()(EVP_PKEY* pkey) const { EVP_PKEY_free(pkey); }
  };
  std::unique_ptr<EVP_PKEY, Free> pkey;
};

namespace {

constexpr std::size_t kEd25519SignatureBytes = 64;
std::atomic<std::uint64_t> g_verifications{0};
/// A PEM Ed25519 key is about 120 bytes; anything much larger is not a key file.
constexpr std::size_t kMaxPemBytes = std::size_t{64} * 1024;

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
struct MdCtxFree {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

/// Drains OpenSSL's per-thread error queue so that stale entries never leak into a later error;
/// returns the first (root cause) entry as "library: reason".
std::string openssl_reason() {
  const unsigned long first = ERR_get_error();
  ERR_clear_error();
  if (first == 0) return "unknown OpenSSL error";
  const char* lib = ERR_lib_error_string(first);
  const char* reason = ERR_reason_error_string(first);
  return std::string(lib ? lib : "OpenSSL") + ": " + (reason ? reason : "unknown reason");
}

/// A read-only memory BIO over `bytes`, or null when too large for OpenSSL's int length.
Bio memory_bio(std::string_view bytes) {
  if (bytes.size() > INT_MAX) return nullptr;
  return Bio(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
}

std::string bio_contents(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  return size > 0 ? std::string(data, static_cast<std::size_t>(size)) : std::string();
}

/// PEM password callback that refuses instead of prompting on the daemon's terminal.
int no_password(char*, int, int, void*) {
  return -1;
}

/// OpenSSL 3.0's decoder reports every PEM failure as "unsupported", so first say whether the
/// expected block is there at all.
Error pem_error(std::string_view source, std::string_view pem, std::string_view label) {
  const std::string reason = openssl_reason();
  if (pem.find(std::string(label) + "-----") == std::string_view::npos) {
    return make_error(std::string(source) + ": no PEM \"BEGIN " + std::string(label) +
                      "\" block found");
  }
  return make_error(std::string(source) + ": malformed PEM " + std::string(label) + " (" + reason +
                    ")");
}

/// Takes ownership of `raw`.
std::shared_ptr<KeyHandle> wrap(EVP_PKEY* raw) {
  return std::make_shared<KeyHandle>(KeyHandle{std::unique_ptr<EVP_PKEY, KeyHandle::Free>(raw)});
}

/// Takes ownership of `raw`; refuses any other algorithm, naming what was found.
Result<std::shared_ptr<KeyHandle>> checked_ed25519(EVP_PKEY* raw, std::string_view source) {
  auto key = wrap(raw);
  if (EVP_PKEY_is_a(raw, "ED25519") != 1) {
    const char* type = EVP_PKEY_get0_type_name(raw);
    return make_error(std::string(source) + ": not an Ed25519 key (found " +
                      (type ? type : "an unknown type") + ")");
  }
  return key;
}

/// DER SubjectPublicKeyInfo of a public or private key; empty on failure.
std::string spki_der(EVP_PKEY* pkey) {
  const int size = i2d_PUBKEY(pkey, nullptr);
  if (size <= 0) return {};
  std::string der(static_cast<std::size_t>(size), '\0');
  auto* out = reinterpret_cast<unsigned char*>(der.data());
  return i2d_PUBKEY(pkey, &out) == size ? der : std::string();
}

Result<std::string> read_key_file(const std::filesystem::path& file) {
  const auto failed = [&file](int err) {
    return make_error("cannot read " + file.string() + ": " + std::system_category().message(err));
  };
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return failed(errno);
  char buf[4096];
  std::string text;
  text.reserve(kMaxPemBytes + sizeof buf);  // never reallocates, so cleansing `text` is enough
  int err = 0;
  for (ssize_t n; text.size() <= kMaxPemBytes && (n = ::read(fd, buf, sizeof buf)) != 0;) {
    if (n > 0) text.append(buf, static_cast<std::size_t>(n));
    if (n < 0 && errno != EINTR) {
      err = errno;
      break;
    }
  }
  ::close(fd);
  // Private key bytes must not linger in freed memory: callers cleanse the text they get.
  OPENSSL_cleanse(buf, sizeof buf);
  if (err != 0 || text.size() > kMaxPemBytes) OPENSSL_cleanse(text.data(), text.size());
  if (err != 0) return failed(err);
  if (text.size() > kMaxPemBytes) {
    return make_error(file.string() + ": larger than " + std::to_string(kMaxPemBytes / 1024) +
                      " KiB, not a key file");
  }
  return text;
}

}  // namespace

// ---- PublicKey

Result<PublicKey> PublicKey::adopt(std::shared_ptr<KeyHandle> key, std::string_view source) {
  PublicKey pub;
  pub.der_ = spki_der(key->pkey.get());
  if (pub.der_.empty()) {
    return make_error(std::string(source) + ": cannot encode public key (" + openssl_reason() +
                      ")");
  }
  pub.keyid_ = to_hex(sha256(pub.der_));
  pub.key_ = std::move(key);
  return pub;
}

Result<PublicKey> PublicKey::from_pem(std::string_view pem, std::string_view source) {
  ERR_clear_error();
  const Bio bio = memory_bio(pem);
  EVP_PKEY* raw = bio ? PEM_read_bio_PUBKEY(bio.get(), nullptr, no_password, nullptr) : nullptr;
  if (raw == nullptr) return pem_error(source, pem, "PUBLIC KEY");
  auto key = checked_ed25519(raw, source);
  if (!key) return key.error();
  return adopt(std::move(*key), source);
}

Result<PublicKey> PublicKey::load(const std::filesystem::path& file) {
  auto text = read_key_file(file);
  if (!text) return text.error();
  return from_pem(*text, file.string());
}

bool PublicKey::verify(std::string_view message, std::string_view signature) const {
  if (!key_ || signature.size() != kEd25519SignatureBytes) return false;
  g_verifications.fetch_add(1, std::memory_order_relaxed);
  const MdCtx ctx(EVP_MD_CTX_new());
  // Ed25519 hashes internally, so no digest is named; it is one-shot only.
  const bool ok =
      ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key_->pkey.get()) == 1 &&
      EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                       signature.size(), reinterpret_cast<const unsigned char*>(message.data()),
                       message.size()) == 1;
  ERR_clear_error();  // a bad signature is an answer, not an error to report later
  return ok;
}

std::uint64_t PublicKey::verifications() {
  return g_verifications.load(std::memory_order_relaxed);
}

std::string PublicKey::to_pem() const {
  if (!key_) return {};
  const Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key_->pkey.get()) != 1) {
    throw std::runtime_error("cannot write public key PEM: " + openssl_reason());
  }
  return bio_contents(bio.get());
}

// ---- PrivateKey

Result<PrivateKey> PrivateKey::adopt(std::shared_ptr<KeyHandle> key, std::string_view source) {
  // The public half gets its own key object, parsed back from the DER, so that copies of a
  // PublicKey never keep the private key material alive.
  const std::string der = spki_der(key->pkey.get());
  const auto* in = reinterpret_cast<const unsigned char*>(der.data());
  EVP_PKEY* pub_raw =
      der.empty() ? nullptr : d2i_PUBKEY(nullptr, &in, static_cast<long>(der.size()));
  if (pub_raw == nullptr) {
    return make_error(std::string(source) + ": cannot derive public key (" + openssl_reason() +
                      ")");
  }
  auto pub = PublicKey::adopt(wrap(pub_raw), source);
  if (!pub) return pub.error();
  PrivateKey priv;
  priv.key_ = std::move(key);
  priv.public_ = std::move(*pub);
  return priv;
}

Result<PrivateKey> PrivateKey::generate() {
  ERR_clear_error();
  EVP_PKEY* raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  if (raw == nullptr) return make_error("cannot generate an Ed25519 key: " + openssl_reason());
  return adopt(wrap(raw), "generated key");
}

Result<PrivateKey> PrivateKey::from_pem(std::string_view pem, std::string_view source) {
  ERR_clear_error();
  if (pem.find("ENCRYPTED PRIVATE KEY") != std::string_view::npos) {
    return make_error(std::string(source) + ": encrypted private keys are not supported");
  }
  const Bio bio = memory_bio(pem);
  EVP_PKEY* raw = bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, no_password, nullptr) : nullptr;
  if (raw == nullptr) return pem_error(source, pem, "PRIVATE KEY");
  auto key = checked_ed25519(raw, source);
  if (!key) return key.error();
  return adopt(std::move(*key), source);
}

Result<PrivateKey> PrivateKey::load(const std::filesystem::path& file) {
  auto text = read_key_file(file);
  if (!text) return text.error();
  auto key = from_pem(*text, file.string());
  OPENSSL_cleanse(text->data(), text->size());
  return key;
}

std::string PrivateKey::sign(std::string_view message) const {
  assert(key_ && "sign() on a default-constructed PrivateKey");
  const MdCtx ctx(EVP_MD_CTX_new());
  std::string sig(kEd25519SignatureBytes, '\0');
  std::size_t size = sig.size();
  // Only allocation failure can make this fail for a valid Ed25519 key.
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_->pkey.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &size,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1 ||
      size != kEd25519SignatureBytes) {
    throw std::runtime_error("Ed25519 signing failed: " + openssl_reason());
  }
  return sig;
}

std::string PrivateKey::to_pem() const {
  if (!key_) return {};
  const Bio bio(BIO_new(BIO_s_mem()));
  // PKCS#8, unencrypted: the same form `openssl genpkey -algorithm ed25519` writes.
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key_->pkey.get(), nullptr, nullptr, 0, nullptr,
                                       nullptr) != 1) {
    throw std::runtime_error("cannot write private key PEM: " + openssl_reason());
  }
  return bio_contents(bio.get());
}

}  // namespace tiersync::proto
