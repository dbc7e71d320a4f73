// The configuration file (read at start, at SIGHUP and by --check-config): any text parses to a
// Config or to an error naming what is wrong, never a crash or an exception. A parsed Config
// keeps its invariants: a role's required keys, threshold within trusted_keys, a control socket.

#include "daemon/ops/config.h"
#include "tests/fuzz/fuzz.h"

using namespace tiersync;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto c = ops::parse_config(fuzz::bytes(data, size), "/etc/tiersync/tiersync.json");
  if (!c) {
    FUZZ_CHECK(c.message().starts_with("config /etc/tiersync/tiersync.json: "));
    return 0;
  }
  FUZZ_CHECK(!c->name.empty() && !c->tree.empty() && !c->state_dir.empty());
  FUZZ_CHECK(c->tree.is_absolute() && c->state_dir.is_absolute());
  FUZZ_CHECK(!c->control_socket.empty());
  if (c->role == ops::Role::kTier0) {
    FUZZ_CHECK(!c->signing_keys.empty() && !c->source_dir.empty() && !c->layout.empty());
  } else {
    FUZZ_CHECK(!c->upstream.url.empty() && !c->trusted_keys.empty());
    FUZZ_CHECK(c->threshold >= 1 && c->threshold <= c->trusted_keys.size());
  }
  for (const auto& l : c->listen) FUZZ_CHECK(!l.tls || (!l.tls_cert.empty() && !l.tls_key.empty()));
  return 0;
}
