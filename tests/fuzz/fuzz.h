#pragma once
/// What every harness shares: the input as a string_view, a property check that aborts (libFuzzer
/// then saves the input as a crasher), splitting an input into fields, and a scratch folder.

#include <stdlib.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace tiersync::fuzz {

inline std::string_view bytes(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

/// A broken property: print it and abort, so that libFuzzer records the input.
[[noreturn]] inline void fail(const char* file, int line, const char* what) {
  std::fprintf(stderr, "%s:%d: property broken: %s\n", file, line, what);
  std::abort();
}
#define FUZZ_CHECK(cond)                                            \
  do {                                                              \
    if (!(cond)) ::tiersync::fuzz::fail(__FILE__, __LINE__, #cond); \
  } while (0)

/// Splits `text` at `sep` into exactly `n` fields (the last takes the rest; missing ones empty).
inline std::vector<std::string_view> fields(std::string_view text, char sep, std::size_t n) {
  std::vector<std::string_view> out;
  while (out.size() + 1 < n) {
    const auto at = text.find(sep);
    if (at == std::string_view::npos) break;
    out.push_back(text.substr(0, at));
    text.remove_prefix(at + 1);
  }
  out.push_back(text);
  out.resize(n);
  return out;
}

/// A fixed Ed25519 test key (public in this repository: it signs the seeds, nothing else).
inline constexpr std::string_view kTestKeyPem =
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEICv7rigEVmlLAu9LWZlOIgexWwc4tqLuNQZ8AzYbPo72\n"
    "-----END PRIVATE KEY-----\n";

/// A private folder for harnesses that read files, made once per process (on tmpfs when /dev/shm
/// is there) and removed at exit.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    std::string tmpl = std::filesystem::exists("/dev/shm") ? "/dev/shm/tiersync-fuzz-XXXXXX"
                                                           : "/tmp/tiersync-fuzz-XXXXXX";
    if (!::mkdtemp(tmpl.data())) std::abort();
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return std::filesystem::path(tmpl);
  }();
  return dir;
}

}  // namespace tiersync::fuzz
