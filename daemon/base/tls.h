#pragma once
/// TLS contexts (OpenSSL), built in one place for the server, the client and the configuration
/// checker (docs/security.md, "TLS"): server.cpp and https_transport.cpp wrap them for Asio, the
/// checker builds the server's to see that it would start.

#include <openssl/ssl.h>

#include <filesystem>
#include <memory>

#include "proto/result.h"

namespace tiersync::base {

struct SslCtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
/// An owned OpenSSL context.
using SslCtx = std::unique_ptr<SSL_CTX, SslCtxFree>;

/// The server's context: TLS 1.2 and 1.3 only, forward-secret AEAD suites for 1.2, no
/// compression, no renegotiation; the certificate chain `cert` (PEM) and its private key `key`
/// loaded and checked to be a pair. Errors name the file ("tls_cert FILE: ...", "tls_key FILE
/// does not match tls_cert FILE").
Result<SslCtx> make_server_tls(const std::filesystem::path& cert, const std::filesystem::path& key);

/// The client's context: TLS 1.2 and up, no compression, the peer verified against the PEM
/// bundle `ca_file`, or the system's trust store when it is empty. (The host name is checked per
/// connection, by the transport.)
Result<SslCtx> make_client_tls(const std::filesystem::path& ca_file);

}  // namespace tiersync::base
