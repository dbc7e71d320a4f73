#pragma once
/// Hostile strings (a parent's keyid, path, error body or URL) made safe for logs, state files
/// and public endpoints: cut short and escaped.

#include <cstddef>
#include <string>
#include <string_view>

namespace tiersync::proto {

/// How much of a hostile string reaches a message, by default.
inline constexpr std::size_t kPrintableBytes = 200;

/// `text` as valid, printable UTF-8 made of at most its first `max` bytes: control characters
/// (newlines included, so one event stays one log line), DEL and bytes that are not valid UTF-8
/// become `\xNN`; a longer text is cut and ends in "...(N bytes)", N being its full size. The
/// result is at most 4 * max + 32 bytes, whatever `text` holds; applying it again changes only
/// what it cuts.
std::string printable(std::string_view text, std::size_t max = kPrintableBytes);

}  // namespace tiersync::proto
