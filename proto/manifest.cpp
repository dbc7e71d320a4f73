#include "proto/manifest.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>

#include "proto/path.h"

namespace tiersync::proto {

static_assert(sizeof(Entry) == 64, "Entry is meant to be 64 bytes plus its path");

void Entry::assign(std::string_view s) {
  delete[] text_;
  text_ = nullptr;
  text_size_ = static_cast<std::uint32_t>(s.size());
  if (s.empty()) return;
  text_ = new char[s.size()];
  std::memcpy(text_, s.data(), s.size());
}

void Entry::swap(Entry& o) noexcept {
  std::swap(sha256, o.sha256);
  std::swap(size, o.size);
  std::swap(mtime, o.mtime);
  std::swap(text_, o.text_);
  std::swap(text_size_, o.text_size_);
  std::swap(mode, o.mode);
  std::swap(index, o.index);
  std::swap(link, o.link);
}

Entry Entry::file(std::string_view path, std::uint64_t size, const Digest& sha256,
                  std::int64_t mtime, std::uint32_t mode, bool index) {
  Entry e;
  e.assign(path);
  e.size = size;
  e.sha256 = sha256;
  e.mtime = mtime;
  e.mode = static_cast<std::uint16_t>(mode & 07777);
  e.index = index;
  return e;
}

Entry Entry::symlink(std::string_view path, std::string_view target) {
  Entry e;
  std::string text;
  text.reserve(path.size() + 1 + target.size());
  text.append(path).push_back('\0');
  text.append(target);
  e.assign(text);
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

using namespace std::string_view_literals;

// The bytes that end a run of plain characters in a JSON string: '"', '\\' and the control
// characters.
constexpr std::array<bool, 256> kStringStop = [] {
  std::array<bool, 256> t{};
  for (int c = 0; c < 0x20; ++c) t[static_cast<std::size_t>(c)] = true;
  t['"'] = true;
  t['\\'] = true;
  return t;
}();

std::string entry_name(std::size_t i, std::string_view path) {
  std::string out = "entry " + std::to_string(i);
  if (!path.empty()) {
    out += " (";
    append_json_string(out, path.substr(0, 200));
    out += ")";
  }
  return out;
}

// A JSON reader for manifests that builds entries as it goes: a relay parses every changed
// manifest of a busy day, and a document object model would cost several times the entries'
// own memory and most of the cycle's time. It accepts any valid JSON (any key order, any
// whitespace, escapes), refuses invalid JSON, and skips unknown keys.
class ManifestReader {
 public:
  explicit ManifestReader(std::string_view text)
      : p_(text.data()), end_(text.data() + text.size()) {}

  Result<Manifest> read() {
    Manifest m;
    bool has_type = false, has_format = false, has_partition = false, has_entries = false;
    ws();
    if (!eat('{'))
      return fail(peek() == '[' || peek() == '"' ? "not a JSON object" : "not valid JSON");
    ws();
    if (!eat('}')) {
      while (true) {
        std::string key;
        if (!string(key)) return fail(error_);
        ws();
        if (!eat(':')) return fail("not valid JSON (expected ':')");
        ws();
        if (key == "type") {
          std::string v;
          if (peek() == '"' ? !string(v) : !skip(0)) return fail(error_);
          if (v != "tiersync.manifest") return fail("type is not \"tiersync.manifest\"");
          has_type = true;
        } else if (key == "format") {
          Number n;
          const char c = peek();
          if (c == '-' || (c >= '0' && c <= '9') ? !number(n) : !skip(0)) return fail(error_);
          if (!n.integer || n.negative || n.value != 1) return fail("format is not 1");
          has_format = true;
        } else if (key == "partition") {
          const bool is_string = peek() == '"';
          if (is_string ? !string(m.partition) : !skip(0)) return fail(error_);
          if (!is_string) return fail("its partition field is not a string");
          has_partition = true;
        } else if (key == "entries") {
          if (has_entries) return fail("entries appears twice");
          if (auto st = entries(m); !st) return fail(st.message());
          has_entries = true;
        } else if (!skip(0)) {
          return fail(error_);
        }
        ws();
        if (eat(',')) {
          ws();
          continue;
        }
        if (eat('}')) break;
        return fail("not valid JSON (expected ',' or '}')");
      }
    }
    ws();
    if (p_ != end_) return fail("not valid JSON (trailing bytes)");
    if (!has_type) return fail("type is not \"tiersync.manifest\"");
    if (!has_format) return fail("format is not 1");
    if (!has_partition) return fail("its partition field is missing");
    if (!has_entries) return fail("entries is missing or not an array");
    return m;
  }

 private:
  struct Number {
    std::uint64_t value = 0;
    bool negative = false;
    bool integer = true;  // no fraction, no exponent, fits in 64 bits
  };

  static Error fail(const std::string& what) { return make_error(what); }
  char peek() const { return p_ < end_ ? *p_ : '\0'; }
  bool eat(char c) {
    if (p_ < end_ && *p_ == c) {
      ++p_;
      return true;
    }
    return false;
  }
  void ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  bool bad(const char* what) {
    error_ = std::string("not valid JSON (") + what + ")";
    return false;
  }

  bool hex4(unsigned& out) {
    if (end_ - p_ < 4) return false;
    out = 0;
    for (int i = 0; i < 4; ++i) {
      const int h = hex_digit_value(*p_++);
      if (h < 0) return false;
      out = out * 16 + static_cast<unsigned>(h);
    }
    return true;
  }
  static void put_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  // A string literal; raw bytes are kept as they are (UTF-8 is checked on paths later).
  bool string(std::string& out) {
    out.clear();
    if (!eat('"')) return bad("expected a string");
    while (true) {
      const char* start = p_;
      while (p_ < end_ && !kStringStop[static_cast<unsigned char>(*p_)]) ++p_;
      out.append(start, p_);
      if (p_ >= end_) return bad("unterminated string");
      char c = *p_++;
      if (c == '"') return true;
      if (c != '\\') return bad("control character in a string");
      if (p_ >= end_) return bad("unterminated string");
      switch (char e = *p_++) {
        case '"':
          out.push_back('"');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '/':
          out.push_back('/');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u': {
          unsigned u;
          if (!hex4(u)) return bad("bad \\u escape");
          std::uint32_t cp = u;
          if (u >= 0xD800 && u <= 0xDBFF) {
            unsigned lo;
            if (!eat('\\') || !eat('u') || !hex4(lo) || lo < 0xDC00 || lo > 0xDFFF)
              return bad("unpaired surrogate in a \\u escape");
            cp = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
          } else if (u >= 0xDC00 && u <= 0xDFFF) {
            return bad("unpaired surrogate in a \\u escape");
          }
          put_utf8(out, cp);
          break;
        }
        default:
          (void)e;
          return bad("bad escape in a string");
      }
    }
  }

  bool number(Number& n) {
    n = Number{};
    n.negative = eat('-');
    if (p_ >= end_ || *p_ < '0' || *p_ > '9') return bad("expected a number");
    if (*p_ == '0' && p_ + 1 < end_ && p_[1] >= '0' && p_[1] <= '9')
      return bad("leading zero in a number");
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
      unsigned d = static_cast<unsigned>(*p_++ - '0');
      if (n.value > (UINT64_MAX - d) / 10) n.integer = false;
      n.value = n.value * 10 + d;
    }
    if (eat('.')) {
      n.integer = false;
      if (p_ >= end_ || *p_ < '0' || *p_ > '9') return bad("bad fraction");
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      n.integer = false;
      ++p_;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ >= end_ || *p_ < '0' || *p_ > '9') return bad("bad exponent");
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    if (n.negative && n.value == 0) n.negative = false;
    return true;
  }

  bool literal(std::string_view word) {
    if (static_cast<std::size_t>(end_ - p_) < word.size() ||
        std::string_view(p_, word.size()) != word)
      return bad("unknown literal");
    p_ += word.size();
    return true;
  }

  // Skips any value (of an unknown key), nested at most 64 deep.
  bool skip(int depth) {
    if (depth > 64) return bad("nested too deep");
    ws();
    char c = peek();
    std::string scratch;
    Number n;
    switch (c) {
      case '"':
        return string(scratch);
      case 't':
        return literal("true");
      case 'f':
        return literal("false");
      case 'n':
        return literal("null");
      case '{':
      case '[': {
        ++p_;
        char close = c == '{' ? '}' : ']';
        ws();
        if (eat(close)) return true;
        while (true) {
          if (c == '{') {
            ws();
            if (!string(scratch)) return false;
            ws();
            if (!eat(':')) return bad("expected ':'");
          }
          if (!skip(depth + 1)) return false;
          ws();
          if (eat(',')) continue;
          if (eat(close)) return true;
          return bad("expected ',' or a closing bracket");
        }
      }
      default:
        return number(n);
    }
  }

  Status entries(Manifest& m) {
    if (!eat('[')) return make_error("entries is missing or not an array");
    ws();
    if (eat(']')) return {};
    for (std::size_t i = 0;; ++i) {
      ws();
      auto e = entry(i);
      if (!e) return e.error();
      m.entries.push_back(std::move(*e));
      ws();
      if (eat(',')) continue;
      if (eat(']')) return {};
      return make_error(entry_name(i, m.entries.back().path()) +
                        ": not valid JSON (expected ',' or ']')");
    }
  }

  Result<Entry> entry(std::size_t i) {
    if (!eat('{')) return make_error(entry_name(i, "") + " is not an object");
    std::string path, key, link, sha_text;
    Number size, mtime, mode;
    bool has_path = false, has_link = false, has_size = false, has_sha = false, has_mtime = false,
         has_mode = false, has_index = false, index = false;
    std::string type_error;
    auto json_error = [&]() { return make_error(entry_name(i, path) + ": " + error_); };
    ws();
    if (!eat('}')) {
      while (true) {
        ws();
        if (!string(key)) return json_error();
        ws();
        if (!eat(':')) return make_error(entry_name(i, path) + ": not valid JSON (expected ':')");
        ws();
        auto once = [&](bool& seen) {
          if (seen) type_error = key + " appears twice";
          seen = true;
        };
        char c = peek();
        const std::string_view k = key;  // compared by length first, no strlen
        if (k == "path"sv) {
          once(has_path);
          if (c != '"') type_error = "path is not a string";
          if (c == '"' ? !string(path) : !skip(0)) return json_error();
        } else if (k == "link"sv) {
          once(has_link);
          if (c != '"') type_error = "link is not a string";
          if (c == '"' ? !string(link) : !skip(0)) return json_error();
        } else if (k == "sha256"sv) {
          once(has_sha);
          if (c != '"') type_error = "sha256 is missing";
          if (c == '"' ? !string(sha_text) : !skip(0)) return json_error();
        } else if (k == "size"sv || k == "mtime"sv || k == "mode"sv) {
          Number& n = k == "size"sv ? size : k == "mtime"sv ? mtime : mode;
          once(k == "size"sv ? has_size : k == "mtime"sv ? has_mtime : has_mode);
          bool numeric = c == '-' || (c >= '0' && c <= '9');
          if (numeric ? !number(n) : !skip(0)) return json_error();
          if (!numeric) n.integer = false;
        } else if (k == "index"sv) {
          once(has_index);
          if (c == 't') {
            if (!literal("true")) return json_error();
            index = true;
          } else if (c == 'f') {
            if (!literal("false")) return json_error();
          } else {
            if (!skip(0)) return json_error();
            type_error = "index is not a boolean";
          }
        } else if (!skip(0)) {
          return json_error();
        }
        ws();
        if (eat(',')) continue;
        if (eat('}')) break;
        return make_error(entry_name(i, path) + ": not valid JSON (expected ',' or '}')");
      }
    }
    auto field_error = [&](const std::string& what) {
      return make_error(entry_name(i, path) + ": " + what);
    };
    if (!has_path) return make_error(entry_name(i, "") + ": no path string");
    if (!type_error.empty()) return field_error(type_error);
    if (has_link) {
      if (has_sha || has_size || has_index)
        return field_error("a symlink cannot have a size, sha256 or index");
      return Entry::symlink(path, link);
    }
    constexpr auto kMax = static_cast<std::uint64_t>(INT64_MAX);
    if (!has_size || !size.integer || size.negative)
      return field_error("size is missing or not a non-negative integer");
    if (size.value > kMax) return field_error("size is too large");
    if (!has_sha) return field_error("sha256 is missing");
    auto digest = digest_from_hex(sha_text);
    if (!digest) return field_error("sha256 is not 64 lowercase hex digits");
    if (!has_mtime || !mtime.integer || mtime.value > kMax + (mtime.negative ? 1 : 0))
      return field_error("mtime is missing or not a 64-bit integer");
    if (!has_mode || !mode.integer || mode.negative || mode.value > 07777)
      return field_error("mode is missing or not a permission value (0 to 4095)");
    // Two's complement: the negation of 2^63 as uint64 is INT64_MIN.
    std::int64_t t = static_cast<std::int64_t>(mtime.negative ? 0 - mtime.value : mtime.value);
    return Entry::file(path, size.value, *digest, t, static_cast<std::uint32_t>(mode.value), index);
  }

  const char* p_;
  const char* end_;
  std::string error_;
};

}  // namespace

Status validate_manifest(const Manifest& m, std::size_t depth, ModeRule modes) {
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
    } else if (modes == ModeRule::kPublishable && (e.mode & ~kPublishableModeBits) != 0) {
      // A setuid file, or one that any local user could rewrite, must never reach a mirror.
      char octal[8];
      std::snprintf(octal, sizeof octal, "%04o", static_cast<unsigned>(e.mode));
      return make_error(where + entry_name(i, path) + ": mode " + octal +
                        " is not allowed (setuid, setgid, sticky or group/world-writable; "
                        "at most 0755)");
    }
    if (i > 0) {
      std::string_view prev = m.entries[i - 1].path();
      if (prev == path) return make_error(where + entry_name(i, path) + " is a duplicate");
      if (prev > path) return make_error(where + entry_name(i, path) + " is out of order");
    }
  }
  // No entry may lie below another entry: that would make a file (or a symlink, through which a
  // write could leave the tree) a folder. Each folder on an entry's way is looked up, but only
  // below the partition's name (every entry is longer than it) and only when the entry's folder
  // is not the one just checked (sorted entries share their folders).
  const std::size_t below = m.partition == kRootPartition ? 0 : m.partition.size() + 1;
  std::string_view checked;
  for (std::size_t i = 0; i < m.entries.size(); ++i) {
    std::string_view path = m.entries[i].path();
    const std::size_t last = path.rfind('/');
    const std::string_view folder =
        last == std::string_view::npos ? std::string_view() : path.substr(0, last);
    if (!checked.empty() && folder == checked) continue;
    for (std::size_t slash = path.find('/', below); slash != std::string_view::npos;
         slash = path.find('/', slash + 1)) {
      if (m.find(path.substr(0, slash)))
        return make_error(where + entry_name(i, path) + " lies below the entry \"" +
                          std::string(path.substr(0, slash)) + "\"");
    }
    checked = folder;
  }
  return {};
}

Result<Manifest> decode_manifest(std::string_view bytes, std::string_view expected_partition,
                                 std::size_t depth, ModeRule modes) {
  const std::string where = "manifest of partition \"" + std::string(expected_partition) + "\": ";
  if (bytes.size() > kMaxManifestBytes) return make_error(where + "larger than the 512 MiB limit");
  auto m = ManifestReader(bytes).read();
  if (!m) return make_error(where + m.message());
  if (m->partition != expected_partition)
    return make_error(where + "its partition field does not name this partition");
  m->entries.shrink_to_fit();
  if (auto st = validate_manifest(*m, depth, modes); !st) return make_error(st.message());
  return m;
}

}  // namespace tiersync::proto
