#include "tests/common/pki.h"

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace tiersync::testing_pki {

namespace fs = std::filesystem;

namespace {

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs openssl with `args` (its output into `dir/openssl.log`); throws with that output.
void openssl(const fs::path& dir, const std::vector<std::string>& args) {
  const fs::path log = dir / "openssl.log";
  std::string command = "openssl";
  for (const auto& a : args) command += " " + quote(a);
  command += " >" + quote(log.string()) + " 2>&1 </dev/null";
  const int status = std::system(command.c_str());
  if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  std::ostringstream output;
  output << std::ifstream(log).rdbuf();
  throw std::runtime_error("openssl failed (" + command + "): " + output.str());
}

}  // namespace

CertKey make_ca(const fs::path& dir, const std::string& name) {
  fs::create_directories(dir);
  CertKey ca{dir / (name + ".pem"), dir / (name + ".key")};
  openssl(dir, {"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", ca.key.string(), "-out", ca.cert.string(), "-days", "2", "-subj",
                "/CN=tiersync test " + name, "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign"});
  return ca;
}

CertKey make_server_cert(const CertKey& ca, const fs::path& dir, const std::string& name,
                         const std::string& san, int serial) {
  fs::create_directories(dir);
  CertKey s{dir / (name + ".pem"), dir / (name + ".key")};
  const fs::path csr = dir / (name + ".csr"), ext = dir / (name + ".ext");
  openssl(dir, {"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", s.key.string(), "-out", csr.string(), "-subj", "/CN=" + name});
  std::ofstream(ext) << "subjectAltName=" << san << "\n"
                     << "basicConstraints=CA:FALSE\n"
                     << "keyUsage=critical,digitalSignature\n"
                     << "extendedKeyUsage=serverAuth\n";
  openssl(dir, {"x509", "-req", "-in", csr.string(), "-CA", ca.cert.string(), "-CAkey",
                ca.key.string(), "-set_serial", std::to_string(serial), "-days", "2", "-out",
                s.cert.string(), "-extfile", ext.string()});
  return s;
}

Pki make_pki(const fs::path& dir, const std::string& san) {
  Pki p;
  p.ca = make_ca(dir, "ca");
  p.server = make_server_cert(p.ca, dir, "server", san, 2);
  p.stranger_ca = make_ca(dir, "stranger-ca");
  p.stranger_server = make_server_cert(p.stranger_ca, dir, "stranger-server", san, 3);
  return p;
}

bool have_openssl() {
  return std::system("openssl version >/dev/null 2>&1 </dev/null") == 0;
}

}  // namespace tiersync::testing_pki
