// Percent-decoding (proto::percent_decode), used by the server for request paths and by
// make_transport for file:// URLs. Properties: a decoded path holds no NUL and is never longer;
// make_transport accepts exactly the file:// URLs whose path decodes, and names the decoded path;
// a tree path encoded for a request target (transport::encode_path) decodes back to itself.

#include "daemon/transport/https_transport.h"
#include "daemon/transport/transport.h"
#include "proto/digest.h"
#include "tests/fuzz/fuzz.h"

using namespace tiersync;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = fuzz::bytes(data, size);
  const bool raw_nul = text.find('\0') != std::string_view::npos;

  const auto decoded = proto::percent_decode(text);
  if (decoded) {
    FUZZ_CHECK(decoded->find('\0') == std::string::npos);
    FUZZ_CHECK(decoded->size() <= text.size());
  }

  // The same bytes as a file:// URL's path.
  if (!raw_nul) {
    const std::string path = "/" + std::string(text);
    auto t = transport::make_transport("file://" + path);
    const auto expected = proto::percent_decode(path);
    FUZZ_CHECK(t.ok() == expected.has_value());
    if (t) FUZZ_CHECK((*t)->describe() == "file://" + *expected);
  }

  const std::string encoded = transport::encode_path(text);
  for (char c : encoded)
    FUZZ_CHECK((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '.' || c == '_' || c == '~' || c == '/' || c == '%');
  if (!raw_nul) FUZZ_CHECK(proto::percent_decode(encoded) == std::string(text));
  return 0;
}
