// The snapshot payload (parsed after its envelope verified): decode, then
//   - encode(decode(x)) decodes to the same snapshot;
//   - encode is canonical: encoding that second decode gives the same bytes;
//   - every partition name fits the layout's depth.

#include "proto/path.h"
#include "proto/snapshot.h"
#include "tests/fuzz/fuzz.h"

namespace {

using namespace tiersync;

bool same(const proto::Snapshot& a, const proto::Snapshot& b) {
  return a.origin == b.origin && a.serial == b.serial && a.created == b.created &&
         a.expires == b.expires && a.layout == b.layout && a.depth == b.depth &&
         a.partitions == b.partitions && a.approved_deletions == b.approved_deletions;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto snap = proto::decode_snapshot(fuzz::bytes(data, size));
  if (!snap) return 0;
  FUZZ_CHECK(snap->serial > 0);
  for (const auto& [name, ref] : snap->partitions)
    FUZZ_CHECK(!proto::partition_name_error(name, snap->depth));
  const std::string encoded = proto::encode_snapshot(*snap);
  auto again = proto::decode_snapshot(encoded);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(same(*snap, *again));
  FUZZ_CHECK(proto::encode_snapshot(*again) == encoded);
  return 0;
}
