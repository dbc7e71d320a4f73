#include "daemon/transport/transport.h"

#include "daemon/transport/file_transport.h"
#include "daemon/transport/https_transport.h"

#include <optional>

namespace tiersync::transport {

namespace {

// file:// URLs may carry percent-escapes; anything else malformed is refused.
std::optional<std::string> percent_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    char c = static_cast<char>(hi * 16 + lo);
    if (c == '\0') return std::nullopt;
    out.push_back(c);
    i += 2;
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<Transport>> make_transport(const std::string& url,
                                                  const TransportOptions& options) {
  constexpr std::string_view kFile = "file://";
  if (url.starts_with(kFile)) {
    std::string_view rest = std::string_view(url).substr(kFile.size());
    if (rest.starts_with("localhost/")) rest.remove_prefix(9);
    if (!rest.starts_with('/'))
      return make_error("upstream.url \"" + url + "\": a file:// URL needs an absolute path");
    auto path = percent_decode(rest);
    if (!path) return make_error("upstream.url \"" + url + "\": malformed percent-escape");
    return std::unique_ptr<Transport>(std::make_unique<FileTransport>(*path, options.stop));
  }
  if (url.starts_with("https://") || url.starts_with("http://")) {
    auto https = HttpsTransport::create(url, options);
    if (!https) return https.error();
    return std::unique_ptr<Transport>(std::move(*https));
  }
  return make_error("upstream.url \"" + url + "\": scheme must be file://, https:// or http://");
}

}  // namespace tiersync::transport
