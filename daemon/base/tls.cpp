#include "daemon/base/tls.h"

#include <openssl/err.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace tiersync::base {

namespace {

/// TLS 1.2 suites: forward secret AEAD only (TLS 1.3 keeps OpenSSL's defaults, all AEAD).
constexpr const char* kTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/// OpenSSL's reason for the last failure on this thread, its error queue emptied.
std::string openssl_reason() {
  const unsigned long e = ERR_peek_last_error();
  const char* reason = e == 0 ? nullptr : ERR_reason_error_string(e);
  ERR_clear_error();
  return reason ? reason : "unknown error";
}

}  // namespace

Result<SslCtx> make_server_tls(const std::filesystem::path& cert,
                               const std::filesystem::path& key) {
  for (const auto& [name, file] : {std::pair{"tls_cert", &cert}, {"tls_key", &key}})
    if (::access(file->c_str(), R_OK) != 0)
      return make_error(std::string(name) + " " + file->string() + ": " + std::strerror(errno));
  SslCtx ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) return make_error("cannot make a TLS context: " + openssl_reason());
  // TLS 1.2 and 1.3 only: SSLv3, TLS 1.0 and 1.1 are broken or deprecated (RFC 8996) and every
  // client we serve speaks 1.2. No compression (CRIME). No renegotiation: a client could make us
  // redo a full handshake's work at will.
  SSL_CTX_set_options(ctx.get(), SSL_OP_ALL | SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 |
                                     SSL_OP_NO_TLSv1_1 | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (SSL_CTX_set_cipher_list(ctx.get(), kTls12Ciphers) != 1) {
    ERR_clear_error();
    return make_error("cannot set the TLS 1.2 cipher list");
  }
  // The key first: a certificate loaded after it that does not match drops it quietly, and the
  // check below names the mismatch (loaded the other way round, the key's load would fail with a
  // bare "key values mismatch").
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), key.c_str(), SSL_FILETYPE_PEM) != 1)
    return make_error("tls_key " + key.string() + ": not a PEM private key (" + openssl_reason() +
                      ")");
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), cert.c_str()) != 1)
    return make_error("tls_cert " + cert.string() + ": not a PEM certificate (" + openssl_reason() +
                      ")");
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    ERR_clear_error();
    return make_error("tls_key " + key.string() + " does not match tls_cert " + cert.string());
  }
  return ctx;
}

Result<SslCtx> make_client_tls(const std::filesystem::path& ca_file) {
  SslCtx ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) return make_error("cannot make a TLS context: " + openssl_reason());
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(ctx.get(), SSL_OP_ALL | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (!ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr) != 1)
      return make_error("upstream.ca_file \"" + ca_file.string() +
                        "\": cannot load the certificates: " + openssl_reason());
  } else if (SSL_CTX_set_default_verify_paths(ctx.get()) != 1) {
    return make_error("cannot load the system's trust store: " + openssl_reason());
  }
  return ctx;
}

}  // namespace tiersync::base
