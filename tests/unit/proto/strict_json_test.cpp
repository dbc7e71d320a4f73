// The strict JSON reader shared by the envelope and the pins: limits, duplicate keys, and plain
// JSON errors left to nlohmann's exception.

#include "proto/strict_json.h"

#include <gtest/gtest.h>

#include <string>

namespace tiersync::proto {
namespace {

std::string refusal(std::string_view text, const JsonLimits& limits) {
  try {
    parse_strict_json(text, limits);
  } catch (const JsonRefused& e) {
    return e.what();
  }
  return "";
}

TEST(StrictJson, ReadsWithinTheLimits) {
  const auto doc = parse_strict_json(R"({"a": [1, 2], "b": {"a": 3}})", {3, 6});
  EXPECT_EQ(doc["b"]["a"], 3);  // the same key in another object is no duplicate
}

TEST(StrictJson, RefusesDepthValuesAndDuplicateKeys) {
  EXPECT_EQ(refusal("[[[1]]]", {2, 100}), "nested deeper than 2");
  EXPECT_EQ(refusal("[1, 2, 3]", {4, 3}), "more than 3 JSON values");
  EXPECT_EQ(refusal(R"({"k": 1, "k": 2})", {4, 100}), "duplicate key \"k\"");
  const std::string key(100, 'x');
  const std::string twice = "{\"" + key + "\": 1, \"" + key + "\": 2}";
  EXPECT_EQ(refusal(twice, {4, 100, 10}), "duplicate key \"xxxxxxxxxx...(100 bytes)\"");
}

TEST(StrictJson, NotJsonIsNlohmannsError) {
  EXPECT_THROW(parse_strict_json("{", {4, 100}), nlohmann::json::exception);
}

}  // namespace
}  // namespace tiersync::proto
