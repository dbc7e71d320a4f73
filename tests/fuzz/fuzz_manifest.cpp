// A partition's manifest (a relay parses it after its SHA-256 matched the signed snapshot, and
// again from state_dir at every start). The input's first line names what the caller expects:
// "<depth> <partition>"; the rest is the manifest. After a successful decode:
//   - validate_manifest agrees (sorted, unique, in the partition, confined symlinks);
//   - encode(decode(x)) decodes to the same entries, and encoding is canonical.

#include <charconv>

#include "proto/manifest.h"
#include "tests/fuzz/fuzz.h"

using namespace tiersync;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto parts = fuzz::fields(fuzz::bytes(data, size), '\n', 2);
  const auto head = fuzz::fields(parts[0], ' ', 2);
  std::size_t depth = 0;
  std::from_chars(head[0].data(), head[0].data() + head[0].size(), depth);
  depth %= 8;
  const std::string_view partition = head[1];

  auto m = proto::decode_manifest(parts[1], partition, depth);
  if (!m) return 0;
  FUZZ_CHECK(m->partition == partition);
  FUZZ_CHECK(proto::validate_manifest(*m, depth).ok());
  for (const auto& e : m->entries) FUZZ_CHECK(m->find(e.path()) == &e);

  const std::string encoded = proto::encode_manifest(*m);
  auto again = proto::decode_manifest(encoded, partition, depth);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->entries.size() == m->entries.size());
  for (std::size_t i = 0; i < m->entries.size(); ++i)
    FUZZ_CHECK(again->entries[i].same_as(m->entries[i]));
  FUZZ_CHECK(proto::encode_manifest(*again) == encoded);
  return 0;
}
