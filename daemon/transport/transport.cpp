#include "daemon/transport/transport.h"

#include "daemon/transport/file_transport.h"
#include "daemon/transport/https_transport.h"

#include <optional>

#include "proto/digest.h"

namespace tiersync::transport {

Result<std::unique_ptr<Transport>> make_transport(const std::string& url,
                                                  const TransportOptions& options) {
  constexpr std::string_view kFile = "file://";
  if (url.starts_with(kFile)) {
    std::string_view rest = std::string_view(url).substr(kFile.size());
    if (rest.starts_with("localhost/")) rest.remove_prefix(9);
    if (!rest.starts_with('/'))
      return make_error("upstream.url \"" + url + "\": a file:// URL needs an absolute path");
    // file:// URLs may carry percent-escapes; anything else malformed is refused.
    auto path = proto::percent_decode(rest);
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
