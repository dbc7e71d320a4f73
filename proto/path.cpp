#include "proto/path.h"

#include <cstdint>
#include <cstring>
#include <vector>

namespace tiersync::proto {

bool is_valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    // Paths are mostly ASCII: eight bytes at a time while no byte has its high bit.
    while (end - p >= 8) {
      std::uint64_t word;
      std::memcpy(&word, p, sizeof word);
      if (word & 0x8080808080808080ull) break;
      p += 8;
    }
    if (p == end) break;
    unsigned char c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    std::size_t n;
    std::uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (static_cast<std::size_t>(end - p) <= n) return false;
    for (std::size_t i = 1; i <= n; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i] & 0x3F);
    }
    // Overlong forms, surrogates and values beyond U+10FFFF are not UTF-8.
    static constexpr std::uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    p += n + 1;
  }
  return true;
}

namespace {

std::string quoted(std::string_view s) {
  std::string out;
  append_json_string(out, s.substr(0, 200));
  if (s.size() > 200) out.insert(out.size() - 1, "...");
  return out;
}

}  // namespace

std::optional<std::string> path_error(std::string_view path) {
  if (path.empty()) return "empty path";
  if (path.find('\0') != std::string_view::npos) return "path " + quoted(path) + " contains NUL";
  if (path.size() > kMaxPathBytes) return "path " + quoted(path) + " is longer than 4096 bytes";
  if (!is_valid_utf8(path)) return "path " + quoted(path) + " is not valid UTF-8";
  if (path.front() == '/') return "path " + quoted(path) + " is absolute";
  std::size_t start = 0;
  bool first = true;
  while (start <= path.size()) {
    std::size_t slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    std::string_view comp = path.substr(start, slash - start);
    if (comp.empty()) return "path " + quoted(path) + " has an empty component";
    if (comp == "." || comp == "..")
      return "path " + quoted(path) + " has a '" + std::string(comp) + "' component";
    if (comp.size() > kMaxComponentBytes)
      return "path " + quoted(path) + " has a component longer than 255 bytes";
    if (first && comp == kMetaDir) return "path " + quoted(path) + " lies under .tiersync/";
    first = false;
    start = slash + 1;
  }
  return std::nullopt;
}

std::optional<std::string> link_target_error(std::string_view link_path, std::string_view target) {
  auto where = [&] { return "symlink " + quoted(link_path) + " -> " + quoted(target); };
  if (target.empty()) return where() + ": empty target";
  if (target.find('\0') != std::string_view::npos) return where() + ": target contains NUL";
  if (target.size() > kMaxPathBytes) return where() + ": target longer than 4096 bytes";
  if (!is_valid_utf8(target)) return where() + ": target is not valid UTF-8";
  if (target.front() == '/') return where() + ": absolute target";
  // Only leading ".." components, then plain names: the way up then crosses real folders only
  // (no entry lies below a symlink), and the way down, even through other symlinks, each of
  // which obeys the same rule, never climbs again. "y/../x" is refused: the kernel would follow
  // a symlink y before applying "..", so its text says nothing about where it leads.
  std::vector<std::string_view> stack;
  std::size_t pos = 0;
  std::string_view dir = link_path;
  while ((pos = dir.find('/')) != std::string_view::npos) {
    stack.push_back(dir.substr(0, pos));
    dir.remove_prefix(pos + 1);
  }
  std::size_t start = 0;
  bool descending = false;
  while (start <= target.size()) {
    std::size_t slash = target.find('/', start);
    if (slash == std::string_view::npos) slash = target.size();
    std::string_view comp = target.substr(start, slash - start);
    start = slash + 1;
    if (comp.empty() || comp == ".")
      return where() + ": target has an empty or '.' component (write it normalised)";
    if (comp.size() > kMaxComponentBytes) return where() + ": target component too long";
    if (comp == "..") {
      if (descending) return where() + ": target has '..' after a name";
      if (stack.empty()) return where() + ": target leaves the tree";
      stack.pop_back();
    } else {
      descending = true;
      stack.push_back(comp);
    }
  }
  if (!stack.empty() && stack.front() == kMetaDir) return where() + ": target lies in .tiersync/";
  return std::nullopt;
}

std::size_t path_depth(std::string_view path) {
  std::size_t n = 1;
  for (char c : path) n += c == '/';
  return n;
}

std::string_view partition_of(std::string_view path, std::size_t depth) {
  std::size_t pos = 0;
  for (std::size_t i = 0; i < depth; ++i) {
    pos = path.find('/', pos);
    if (pos == std::string_view::npos) return kRootPartition;
    if (i + 1 < depth) ++pos;
  }
  return path.substr(0, pos);
}

bool in_partition(std::string_view path, std::string_view partition, std::size_t depth) {
  if (partition == kRootPartition) return path_depth(path) <= depth;
  return path.size() > partition.size() && path.starts_with(partition) &&
         path[partition.size()] == '/';
}

Result<std::size_t> layout_depth(std::string_view layout) {
  if (layout.empty()) return make_error("layout is empty");
  std::size_t depth = 0;
  std::size_t start = 0;
  while (start <= layout.size()) {
    std::size_t slash = layout.find('/', start);
    if (slash == std::string_view::npos) slash = layout.size();
    std::string_view seg = layout.substr(start, slash - start);
    bool ok = seg.size() >= 3 && seg.front() == '{' && seg.back() == '}';
    for (std::size_t i = 1; ok && i + 1 < seg.size(); ++i) {
      char c = seg[i];
      ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    }
    if (!ok)
      return make_error("layout " + quoted(layout) + ": segment " + quoted(seg) +
                        " is not of the form {name} (lowercase letters, digits, _)");
    ++depth;
    start = slash + 1;
  }
  if (depth > 16) return make_error("layout " + quoted(layout) + " has more than 16 segments");
  return depth;
}

std::optional<std::string> partition_name_error(std::string_view name, std::size_t depth) {
  if (name == kRootPartition) return std::nullopt;
  if (auto err = path_error(name)) return "partition name: " + *err;
  if (path_depth(name) != depth)
    return "partition " + quoted(name) + " does not have the layout's " + std::to_string(depth) +
           " components";
  return std::nullopt;
}

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20 || c == 0x7F) {
          out += "\\u00";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 15]);
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
}

}  // namespace tiersync::proto
