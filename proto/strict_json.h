#pragma once
/// Strict JSON reading for the documents that are verified or compared (DSSE envelopes, pins):
/// bounded depth and size, and no duplicate keys, which different JSON parsers resolve
/// differently (a classic way to make two verifiers see two different documents).
/// Includes nlohmann/json: for .cpp files that link it themselves, never for another header.

#include <cstddef>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string_view>

#include "proto/printable.h"

namespace tiersync::proto {

/// What a document may hold; the bounds keep hostile input from turning a few MiB of "[[[[" or
/// "[0,0,0" into gigabytes of JSON nodes.
struct JsonLimits {
  int max_depth = 8;
  std::size_t max_values = 4096;
  std::size_t key_shown = kPrintableBytes;  ///< bytes of a duplicate key named in the error
};

/// Thrown by parse_strict_json when a limit is passed or a key repeats.
struct JsonRefused : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Parses `text` within `limits`; throws JsonRefused, or nlohmann::json::exception for bytes
/// that are not JSON.
nlohmann::json parse_strict_json(std::string_view text, const JsonLimits& limits);

}  // namespace tiersync::proto
