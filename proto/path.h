#pragma once
/// Tree paths, symlink targets and layouts (docs/protocol.md, "Words" and "Path rules").

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "proto/result.h"

namespace tiersync::proto {

inline constexpr std::size_t kMaxPathBytes = 4096;
inline constexpr std::size_t kMaxComponentBytes = 255;
/// The name of the root partition (paths of depth <= K).
inline constexpr std::string_view kRootPartition = ".";
/// The top-level folder that is never content.
inline constexpr std::string_view kMetaDir = ".tiersync";

bool is_valid_utf8(std::string_view s);

/// Why `path` is not a valid tree path, or nullopt when it is: valid UTF-8, relative, no empty,
/// `.` or `..` component, no NUL, at most 4096 bytes and 255 per component, not under .tiersync/.
std::optional<std::string> path_error(std::string_view path);

/// Why a symlink at `link_path` may not point to `target`, or nullopt: the target must be
/// relative and resolve (lexically) inside the tree, outside .tiersync/.
std::optional<std::string> link_target_error(std::string_view link_path, std::string_view target);

/// Number of `/`-separated components of a valid path.
std::size_t path_depth(std::string_view path);

/// The partition a path belongs to under a layout of `depth` segments: its first `depth`
/// components when it is deeper, else the root partition ".". Returns a view into `path`.
std::string_view partition_of(std::string_view path, std::size_t depth);

/// True when `path` lies in `partition` under a layout of `depth` segments.
bool in_partition(std::string_view path, std::string_view partition, std::size_t depth);

/// Parses a layout such as "{release}/{repo}/{arch}" and returns its number of segments.
Result<std::size_t> layout_depth(std::string_view layout);

/// Why `name` is not a partition name under a layout of `depth` segments, or nullopt.
std::optional<std::string> partition_name_error(std::string_view name, std::size_t depth);

/// Appends `s` as a JSON string literal (UTF-8 kept, control characters escaped).
void append_json_string(std::string& out, std::string_view s);

}  // namespace tiersync::proto
