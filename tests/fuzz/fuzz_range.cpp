// The Range header against a file of a given size. The input: the size in decimal, a line
// break, the header. Properties: a single range lies inside the file (first <= last < size);
// a list of ranges is ignored (the whole file); an empty file has no satisfiable range; the
// same header with surrounding blanks means the same.

#include <charconv>

#include "daemon/serve/http_codecs.h"
#include "tests/fuzz/fuzz.h"

using namespace tiersync;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto f = fuzz::fields(fuzz::bytes(data, size), '\n', 2);
  std::uint64_t file_size = 0;
  std::from_chars(f[0].data(), f[0].data() + f[0].size(), file_size);
  const std::string_view header = f[1];

  const serve::ByteRange r = serve::parse_range(header, file_size);
  switch (r.kind) {
    case serve::ByteRange::kSingle:
      FUZZ_CHECK(r.first <= r.last && r.last < file_size);
      break;
    case serve::ByteRange::kUnsatisfiable:
      break;
    case serve::ByteRange::kIgnore:
      break;
  }
  if (header.find(',') != std::string_view::npos) FUZZ_CHECK(r.kind == serve::ByteRange::kIgnore);
  if (file_size == 0) FUZZ_CHECK(r.kind != serve::ByteRange::kSingle);

  const std::string padded = " \t" + std::string(header) + "\t ";
  const serve::ByteRange p = serve::parse_range(padded, file_size);
  FUZZ_CHECK(p.kind == r.kind && p.first == r.first && p.last == r.last);
  return 0;
}
