#pragma once
/// What the unit tests share: a substring assertion, whole-file reads and writes, temp folders,
/// and small manifests.

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "proto/digest.h"
#include "proto/manifest.h"

namespace tiersync::unit {

/// `haystack` contains `needle`; the message quotes both when not.
inline ::testing::AssertionResult Contains(std::string_view haystack, std::string_view needle) {
  if (haystack.find(needle) != std::string_view::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "\"" << haystack << "\" does not contain \"" << needle << "\"";
}

/// Writes `bytes` as the whole of `file`, creating its parent folders.
inline void write_file(const std::filesystem::path& file, std::string_view bytes) {
  std::filesystem::create_directories(file.parent_path());
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
}

/// The whole of `file` ("" when it cannot be read).
inline std::string read_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

/// A fresh folder `TempDir()/<tag>.XXXXXX` (the caller removes it); empty when none could be
/// made.
inline std::filesystem::path make_temp_dir(std::string_view tag) {
  std::string tmpl =
      (std::filesystem::path(::testing::TempDir()) / (std::string(tag) + ".XXXXXX")).string();
  if (::mkdtemp(tmpl.data()) == nullptr) return {};
  return tmpl;
}

/// A manifest of `partition` holding `entries`, sorted as a decoded manifest's are.
inline std::shared_ptr<proto::Manifest> manifest(std::string partition,
                                                 std::vector<proto::Entry> entries) {
  auto m = std::make_shared<proto::Manifest>();
  m->partition = std::move(partition);
  m->entries = std::move(entries);
  std::sort(m->entries.begin(), m->entries.end(),
            [](const proto::Entry& a, const proto::Entry& b) { return a.path() < b.path(); });
  return m;
}

/// The entry of a 0644 file holding `content`, mtime 1.
inline proto::Entry file_entry(std::string path, std::string_view content) {
  return proto::Entry::file(std::move(path), content.size(), proto::sha256(content), 1, 0644);
}

}  // namespace tiersync::unit
