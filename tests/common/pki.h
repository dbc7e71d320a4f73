#pragma once
/// A test PKI made at run time with the openssl command (P-256 keys, two days of validity): CAs
/// and server certificates for the tests of TLS, shared by unit and integration tests. Nothing of
/// it is committed.

#include <filesystem>
#include <string>

namespace tiersync::testing_pki {

/// A certificate and its private key, both PEM files.
struct CertKey {
  std::filesystem::path cert;
  std::filesystem::path key;
};

/// A self-signed CA `dir/name.pem` (key `dir/name.key`), CN "tiersync test <name>". Throws
/// std::runtime_error naming openssl's output when the command fails or is missing.
CertKey make_ca(const std::filesystem::path& dir, const std::string& name);

/// A server certificate `dir/name.pem` signed by `ca`, with subjectAltName `san` (e.g.
/// "IP:127.0.0.1,DNS:localhost") and serial number `serial`. Throws like make_ca.
CertKey make_server_cert(const CertKey& ca, const std::filesystem::path& dir,
                         const std::string& name, const std::string& san, int serial);

/// The usual PKI: a CA and its server certificate for `san`, and a stranger CA with its own
/// server certificate for the same names (a parent the child must not trust).
struct Pki {
  CertKey ca, server, stranger_ca, stranger_server;
};
Pki make_pki(const std::filesystem::path& dir,
             const std::string& san = "IP:127.0.0.1,DNS:localhost");

/// True when the openssl command runs here.
bool have_openssl();

}  // namespace tiersync::testing_pki
