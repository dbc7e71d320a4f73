#include "proto/strict_json.h"

#include <set>
#include <string>
#include <vector>

namespace tiersync::proto {

nlohmann::json parse_strict_json(std::string_view text, const JsonLimits& limits) {
  using Json = nlohmann::json;
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::size_t values = 0;
  return Json::parse(text, [&](int depth, Json::parse_event_t event, Json& parsed) {
    using E = Json::parse_event_t;
    if (depth > limits.max_depth)
      throw JsonRefused("nested deeper than " + std::to_string(limits.max_depth));
    if (event == E::object_start) keys.emplace_back();
    if (event == E::object_end) keys.pop_back();
    if (event == E::key && !keys.back().insert(parsed.get<std::string>()).second)
      throw JsonRefused("duplicate key \"" +
                        printable(parsed.get<std::string>(), limits.key_shown) + "\"");
    if ((event == E::value || event == E::object_start || event == E::array_start) &&
        ++values > limits.max_values)
      throw JsonRefused("more than " + std::to_string(limits.max_values) + " JSON values");
    return true;
  });
}

}  // namespace tiersync::proto
