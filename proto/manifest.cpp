#include "proto/manifest.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>

#include "proto/path.h"

namespace tiersync::proto {

using nlohmann::json;

Entry Entry::file(std::string path, std::uint64_t size, const Digest& sha256, std::int64_t mtime,
                  std::uint32_t mode, bool index) {
  Entry e;
  e.text = std::move(path);
  e.size = size;
  e.sha256 = sha256;
  e.mtime = mtime;
  e.mode = mode;
  e.index = index;
  return e;
}

Entry Entry::symlink(std::string_view path, std::string_view target) {
  Entry e;
  e.text.reserve(path.size() + 1 + target.size());
  e.text.append(path).push_back('\0');
  e.text.append(target);
  e.link = true;
  return e;
}

std::uint64_t Manifest::total_bytes() const {
  std::uint64_t sum = 0;
  for (const auto& e : entries) sum += e.size;
  return sum;
}

const Entry* Manifest::find(std::string_view path) const {
  auto it = std::lower_bound(entries.begin(), entries.end(), path,
                             [](const Entry& e, std::string_view p) { return e.path() < p; });
  return it != entries.end() && it->path() == path ? &*it : nullptr;
}

std::string encode_manifest(const Manifest& m) {
  std::string out;
  out.reserve(64 + m.entries.size() * 160);
  out += R"({"type":"tiersync.manifest","format":1,"partition":)";
  append_json_string(out, m.partition);
  out += ",\"entries\":[";
  bool first = true;
  for (const auto& e : m.entries) {
    out += first ? "\n" : ",\n";
    first = false;
    out += "{\"path\":";
    append_json_string(out, e.path());
    if (e.link) {
      out += ",\"link\":";
      append_json_string(out, e.target());
    } else {
      out += ",\"size\":" + std::to_string(e.size);
      out += ",\"sha256\":\"" + to_hex(e.sha256) + "\"";
      out += ",\"mtime\":" + std::to_string(e.mtime);
      out += ",\"mode\":" + std::to_string(e.mode);
      if (e.index) out += ",\"index\":true";
    }
    out += "}";
  }
  out += "]}\n";
  return out;
}

namespace {

std::string entry_name(std::size_t i, std::string_view path) {
  std::string out = "entry " + std::to_string(i);
  if (!path.empty()) {
    out += " (";
    append_json_string(out, path.substr(0, 200));
    out += ")";
  }
  return out;
}

Result<Entry> decode_entry(const json& j, std::size_t i) {
  if (!j.is_object()) return make_error(entry_name(i, "") + " is not an object");
  auto p = j.find("path");
  if (p == j.end() || !p->is_string()) return make_error(entry_name(i, "") + ": no path string");
  const auto& path = p->get_ref<const std::string&>();
  auto field_error = [&](const char* what) {
    return make_error(entry_name(i, path) + ": " + what);
  };

  if (auto l = j.find("link"); l != j.end()) {
    if (!l->is_string()) return field_error("link is not a string");
    for (const char* k : {"sha256", "size", "index"})
      if (j.contains(k)) return field_error("a symlink cannot have a size, sha256 or index");
    return Entry::symlink(path, l->get_ref<const std::string&>());
  }
  auto size = j.find("size");
  auto sha = j.find("sha256");
  auto mtime = j.find("mtime");
  auto mode = j.find("mode");
  if (size == j.end() || !size->is_number_unsigned())
    return field_error("size is missing or not a non-negative integer");
  if (sha == j.end() || !sha->is_string()) return field_error("sha256 is missing");
  auto digest = digest_from_hex(sha->get_ref<const std::string&>());
  if (!digest) return field_error("sha256 is not 64 lowercase hex digits");
  if (mtime == j.end() || !mtime->is_number_integer() ||
      (mtime->is_number_unsigned() &&
       mtime->get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)))
    return field_error("mtime is missing or not a 64-bit integer");
  if (mode == j.end() || !mode->is_number_unsigned() || mode->get<std::uint64_t>() > 07777)
    return field_error("mode is missing or not a permission value (0 to 4095)");
  bool index = false;
  if (auto ix = j.find("index"); ix != j.end()) {
    if (!ix->is_boolean()) return field_error("index is not a boolean");
    index = ix->get<bool>();
  }
  std::uint64_t sz = size->get<std::uint64_t>();
  if (sz > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    return field_error("size is too large");
  return Entry::file(path, sz, *digest, mtime->get<std::int64_t>(),
                     static_cast<std::uint32_t>(mode->get<std::uint64_t>()), index);
}

}  // namespace

Status validate_manifest(const Manifest& m, std::size_t depth) {
  const std::string where = "manifest of partition \"" + m.partition + "\": ";
  if (auto err = partition_name_error(m.partition, depth)) return make_error(where + *err);
  for (std::size_t i = 0; i < m.entries.size(); ++i) {
    const Entry& e = m.entries[i];
    std::string_view path = e.path();
    if (auto err = path_error(path)) return make_error(where + entry_name(i, "") + ": " + *err);
    if (!in_partition(path, m.partition, depth))
      return make_error(where + entry_name(i, path) + " lies outside the partition");
    if (e.link) {
      if (auto err = link_target_error(path, e.target()))
        return make_error(where + entry_name(i, path) + ": " + *err);
    }
    if (i > 0) {
      std::string_view prev = m.entries[i - 1].path();
      if (prev == path) return make_error(where + entry_name(i, path) + " is a duplicate");
      if (prev > path) return make_error(where + entry_name(i, path) + " is out of order");
    }
  }
  // No entry may lie below another entry: that would make a file (or a symlink, through which a
  // write could leave the tree) a folder.
  for (std::size_t i = 0; i < m.entries.size(); ++i) {
    std::string_view path = m.entries[i].path();
    for (std::size_t slash = path.find('/'); slash != std::string_view::npos;
         slash = path.find('/', slash + 1)) {
      if (m.find(path.substr(0, slash)))
        return make_error(where + entry_name(i, path) + " lies below the entry \"" +
                          std::string(path.substr(0, slash)) + "\"");
    }
  }
  return {};
}

Result<Manifest> decode_manifest(std::string_view bytes, std::string_view expected_partition,
                                 std::size_t depth) {
  const std::string where = "manifest of partition \"" + std::string(expected_partition) + "\": ";
  if (bytes.size() > kMaxManifestBytes) return make_error(where + "larger than the 512 MiB limit");
  json doc = json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return make_error(where + "not valid JSON");
  if (!doc.is_object()) return make_error(where + "not a JSON object");
  if (doc.value("type", json()) != "tiersync.manifest")
    return make_error(where + "type is not \"tiersync.manifest\"");
  if (doc.value("format", json()) != 1) return make_error(where + "format is not 1");
  auto part = doc.find("partition");
  if (part == doc.end() || !part->is_string() || *part != expected_partition)
    return make_error(where + "its partition field does not name this partition");
  auto entries = doc.find("entries");
  if (entries == doc.end() || !entries->is_array())
    return make_error(where + "entries is missing or not an array");
  Manifest m;
  m.partition = std::string(expected_partition);
  m.entries.reserve(entries->size());
  for (std::size_t i = 0; i < entries->size(); ++i) {
    auto e = decode_entry((*entries)[i], i);
    if (!e) return make_error(where + e.message());
    m.entries.push_back(std::move(*e));
  }
  doc = json();  // free the DOM before validating
  if (auto st = validate_manifest(m, depth); !st) return make_error(st.message());
  return m;
}

}  // namespace tiersync::proto
