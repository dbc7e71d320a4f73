// The files of state_dir, read at every start and every cycle (a damaged disk or an edit by hand
// must read as damaged, never crash). The input's first byte picks the file, the rest is its
// content. What is loaded and saved again loads the same (journal, holds, approvals, cycle).

#include <cmath>
#include <fstream>

#include "daemon/sync/state.h"
#include "tests/fuzz/fuzz.h"

namespace {

using namespace tiersync;

const sync::StateStore& store() {
  static const sync::StateStore s = [] {
    const auto dir = fuzz::scratch_dir() / "state";
    std::filesystem::create_directories(dir);
    return sync::StateStore(dir, fuzz::scratch_dir() / "tree");
  }();
  return s;
}

void put(const char* name, std::string_view content) {
  std::ofstream(store().state_dir() / name, std::ios::binary | std::ios::trunc)
      .write(content.data(), static_cast<std::streamsize>(content.size()));
}

bool same(const sync::HeldState& a, const sync::HeldState& b) {
  if (a.candidate_serial != b.candidate_serial || a.since != b.since ||
      a.partitions.size() != b.partitions.size())
    return false;
  for (std::size_t i = 0; i < a.partitions.size(); ++i) {
    const auto &x = a.partitions[i], &y = b.partitions[i];
    if (x.hold.partition != y.hold.partition || x.hold.deleted != y.hold.deleted ||
        x.hold.files != y.hold.files || x.hold.ratio != y.hold.ratio ||
        x.hold.limit != y.hold.limit || x.candidate != y.candidate || x.from != y.from ||
        x.to != y.to || x.stale_since != y.stale_since || x.hold.rule != y.hold.rule ||
        x.hold.count != y.hold.count || x.hold.of != y.hold.of)
      return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view content = fuzz::bytes(data + 1, size - 1);
  const auto& s = store();
  switch (data[0] % 5) {
    case 0: {  // the applied snapshot: an envelope and its payload
      put("snapshot", content);
      auto applied = s.load_applied();
      if (applied && *applied) FUZZ_CHECK((*applied)->envelope == content);
      break;
    }
    case 1: {  // the apply journal
      put("journal.json", content);
      auto j = s.load_journal();
      if (!j || !*j) break;
      FUZZ_CHECK((*j)->serial != 0);
      FUZZ_CHECK(s.save_journal(**j).ok());
      auto again = s.load_journal();
      FUZZ_CHECK(again.ok() && again->has_value());
      FUZZ_CHECK((*again)->serial == (*j)->serial && (*again)->previous == (*j)->previous);
      break;
    }
    case 2: {  // held partitions
      put("held.json", content);
      const auto held = s.load_held();
      bool finite = true;  // JSON has no infinity: 1e999 reads as inf and is saved as null
      for (const auto& p : held.partitions)
        finite = finite && std::isfinite(p.hold.ratio) && std::isfinite(p.hold.limit);
      if (held.partitions.empty() || !finite) break;
      FUZZ_CHECK(s.save_held(held).ok());
      FUZZ_CHECK(same(s.load_held(), held));
      break;
    }
    case 3: {  // approvals
      put("approvals.json", content);
      const auto approvals = s.load_approvals();
      FUZZ_CHECK(s.save_approvals(approvals).ok());
      const auto again = s.load_approvals();
      FUZZ_CHECK(again.size() == approvals.size());
      for (std::size_t i = 0; i < again.size(); ++i)
        FUZZ_CHECK(again[i].partition == approvals[i].partition &&
                   again[i].from == approvals[i].from && again[i].to == approvals[i].to &&
                   again[i].deleted == approvals[i].deleted &&
                   again[i].files == approvals[i].files && again[i].rule == approvals[i].rule &&
                   again[i].expires == approvals[i].expires);
      break;
    }
    case 4: {  // the last cycle's outcome
      put("cycle.json", content);
      const auto r = s.load_cycle();
      FUZZ_CHECK(s.save_cycle(r).ok());
      const auto again = s.load_cycle();
      FUZZ_CHECK(again.result == r.result && again.time == r.time && again.message == r.message &&
                 again.upstream_serial == r.upstream_serial &&
                 again.last_success == r.last_success && again.parent_chain == r.parent_chain);
      break;
    }
  }
  return 0;
}
