// A parent's URL (`upstream.url`): https://host[:port]/prefix/ and http://. Properties of a
// parsed URL: a host, a port, a prefix that starts and ends with '/', a lowercase host, and
// base() parses back to the same URL. file:// URLs go through make_transport (no I/O).

#include "daemon/transport/https_transport.h"
#include "daemon/transport/transport.h"
#include "tests/fuzz/fuzz.h"

using namespace tiersync;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string url(fuzz::bytes(data, size));
  if (url.starts_with("file://")) {
    auto t = transport::make_transport(url);
    if (t) FUZZ_CHECK((*t)->describe().starts_with("file:///"));
    return 0;
  }
  auto u = transport::parse_http_url(url);
  if (!u) {
    FUZZ_CHECK(u.message().starts_with("upstream.url \""));
    return 0;
  }
  FUZZ_CHECK(!u->host.empty() && u->port != 0);
  FUZZ_CHECK(u->prefix.starts_with('/') && u->prefix.ends_with('/'));
  for (char c : u->host) FUZZ_CHECK(!(c >= 'A' && c <= 'Z'));
  auto again = transport::parse_http_url(u->base());
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->tls == u->tls && again->host == u->host && again->port == u->port &&
             again->prefix == u->prefix);
  FUZZ_CHECK(again->base() == u->base());
  return 0;
}
