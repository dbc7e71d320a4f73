// Percent-decoding, written twice: the server decodes request paths (serve::percent_decode),
// the transport decodes file:// URLs (inside make_transport). Properties: a decoded path holds
// no NUL and is never longer; both decoders agree on every path without a raw NUL; a tree path
// encoded for a request target (transport::encode_path) decodes back to itself.

#include "daemon/serve/handler.h"
#include "daemon/transport/https_transport.h"
#include "daemon/transport/transport.h"
#include "tests/fuzz/fuzz.h"

using namespace tiersync;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = fuzz::bytes(data, size);
  const bool raw_nul = text.find('\0') != std::string_view::npos;

  const auto decoded = serve::percent_decode(text);
  if (decoded) {
    FUZZ_CHECK(decoded->find('\0') == std::string::npos);
    FUZZ_CHECK(decoded->size() <= text.size());
  }

  // The same bytes as a file:// URL's path: the transport decodes them with its own copy.
  if (!raw_nul) {
    const std::string path = "/" + std::string(text);
    auto t = transport::make_transport("file://" + path);
    const auto expected = serve::percent_decode(path);
    FUZZ_CHECK(t.ok() == expected.has_value());
    if (t) FUZZ_CHECK((*t)->describe() == "file://" + *expected);
  }

  const std::string encoded = transport::encode_path(text);
  for (char c : encoded)
    FUZZ_CHECK((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '.' || c == '_' || c == '~' || c == '/' || c == '%');
  if (!raw_nul) FUZZ_CHECK(serve::percent_decode(encoded) == std::string(text));
  return 0;
}
