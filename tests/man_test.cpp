// Keeps the man pages true (issue 9): the keys of tiersync.json(5) are exactly the keys the
// parser reads (daemon/ops/config.cpp) and the keys of docs/configuration.md; the commands and
// options of tiersyncctl(8) and tiersyncd(8) are the ones the binaries take.

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "daemon/ops/config.h"

namespace tiersync {
namespace {

const std::string kSource = TIERSYNC_SOURCE_DIR;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// roff's escapes as the man sources use them in names: \- is a hyphen.
std::string unescape(std::string s) {
  for (std::size_t at; (at = s.find("\\-")) != std::string::npos;) s.replace(at, 2, "-");
  return s;
}

// The first word of an item's tag line (`.B key`, `.BR "status" ...`, `.BI "keygen --out " P`).
std::string tag_word(const std::string& line) {
  std::string rest = line.substr(line.find(' ') + 1);
  if (!rest.empty() && rest.front() == '"') rest.erase(0, 1);
  return unescape(rest.substr(0, rest.find_first_of(" \"")));
}

// The tags of the items (`.TP` then a tag line) of the man page's section `section`.
std::set<std::string> item_tags(const std::string& page, const std::string& section) {
  std::set<std::string> tags;
  const auto lines = lines_of(page);
  bool in_section = false;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].starts_with(".SH ")) in_section = lines[i] == ".SH " + section;
    if (in_section && lines[i] == ".TP" && i + 1 < lines.size())
      tags.insert(tag_word(lines[i + 1]));
  }
  return tags;
}

// Every `--option` (and `-h`) a text names.
std::set<std::string> options_in(const std::string& text) {
  std::set<std::string> out;
  static const std::regex kOption(R"((^|[^a-z\-])(--[a-z][a-z\-]*|-h)\b)");
  for (std::sregex_iterator it(text.begin(), text.end(), kOption), end; it != end; ++it)
    out.insert((*it)[2]);
  return out;
}

// The options a man page names for its own program: lines that name another program
// (`tiersyncd --once` in tiersyncctl(8), `systemctl enable --now`) are left out.
std::set<std::string> man_options(const std::string& page, const std::regex& others) {
  std::string own;
  for (const auto& line : lines_of(unescape(read_file(kSource + "/man/" + page))))
    if (!std::regex_search(line, others)) own += line + "\n";
  return options_in(own);
}

struct Execution {
  int exit_code = -1;
  std::string out;
};

// Runs `command` (a shell command line built from fixed words) and returns its standard output.
Execution run(const std::string& command) {
  Execution r;
  FILE* p = ::popen((command + " 2>/dev/null").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  for (std::size_t n; (n = std::fread(buf.data(), 1, buf.size(), p)) > 0;)
    r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// --- tiersync.json(5) ------------------------------------------------------------------------

// A configuration per role with every section present (a listener, a partition entry), so the
// parser looks up every key it knows.
const char* kFullTier0 = R"({
  "role": "tier0", "name": "origin", "tree": "/srv/tree", "state_dir": "/var/lib/tiersync",
  "layout": "{release}/{repo}/{arch}", "source": {"dir": "/srv/incoming"},
  "signing_key": "origin.key", "guard": {"partitions": {"edge/*/*": {}}}, "scrub": {},
  "listen": [{"address": "::", "port": 8443, "tls": false}], "serve": {}, "log": {}
})";
const char* kFullTier1 = R"({
  "role": "tier1", "name": "relay", "tree": "/srv/tree", "state_dir": "/var/lib/tiersync",
  "upstream": {"url": "https://origin.example.org/"}, "trusted_keys": ["origin.pub"],
  "guard": {"partitions": {"edge/*/*": {}}}, "scrub": {},
  "listen": [{"address": "::", "port": 8443, "tls": false}], "serve": {}, "log": {}
})";

// The keys the parser reads for both configurations, leaves only (`listen` and `source` are
// objects whose keys are listed instead).
std::set<std::string> parser_keys() {
  std::set<std::string> all;
  for (const char* text : {kFullTier0, kFullTier1}) {
    auto keys = ops::config_keys_read(text, "/etc/tiersync/tiersync.json");
    EXPECT_TRUE(keys) << keys.message();
    if (keys) all.insert(keys->begin(), keys->end());
  }
  std::set<std::string> leaves;
  for (const auto& k : all) {
    auto next = all.upper_bound(k);
    const bool has_children =
        next != all.end() && (next->starts_with(k + ".") || next->starts_with(k + "["));
    if (!has_children) leaves.insert(k);
  }
  return leaves;
}

std::set<std::string> man_keys() {
  return item_tags(read_file(kSource + "/man/tiersync.json.5"), "KEYS");
}

TEST(ManPages, EveryConfigKeyThatTheParserReadsIsDocumented) {
  const auto documented = man_keys();
  for (const auto& k : parser_keys())
    EXPECT_TRUE(documented.count(k)) << "tiersync.json(5) lacks the key " << k;
}

TEST(ManPages, EveryDocumentedConfigKeyIsReadByTheParser) {
  const auto parsed = parser_keys();
  const auto documented = man_keys();
  EXPECT_GT(documented.size(), 40u);  // the extraction found the KEYS section
  for (const auto& k : documented) {
    // `listen` is documented as a whole too (its type, where it is required).
    if (k == "listen") continue;
    EXPECT_TRUE(parsed.count(k)) << "tiersync.json(5) names " << k
                                 << ", which the parser never reads";
  }
}

// docs/configuration.md's table names the same keys (`listen` and `guard.partitions` as wholes).
TEST(ManPages, ConfigurationDocNamesTheSameKeys) {
  std::set<std::string> doc;
  static const std::regex kRow(R"(^\| `([a-z_.]+)` \|)");
  for (const auto& line : lines_of(read_file(kSource + "/docs/configuration.md"))) {
    std::smatch m;
    if (std::regex_search(line, m, kRow)) doc.insert(m[1]);
  }
  auto whole = [](const std::string& k) {
    if (k.starts_with("listen[].")) return std::string("listen");
    if (k.starts_with("guard.partitions.")) return std::string("guard.partitions");
    return k;
  };
  std::set<std::string> man;
  for (const auto& k : man_keys()) man.insert(whole(k));
  EXPECT_EQ(doc, man);
}

// --- tiersyncctl(8) and tiersyncd(8) ---------------------------------------------------------

TEST(ManPages, TiersyncctlCommandsAreTheBinarysCommands) {
  const Execution help = run(std::string(TIERSYNCCTL) + " --help");
  ASSERT_EQ(help.exit_code, 0);
  // Usage lines: "tiersyncctl [--config FILE] CMD ..." or "tiersyncctl CMD ...".
  std::set<std::string> commands;
  static const std::regex kLine(R"(tiersyncctl (?:\[--config FILE\] )?([a-z][a-z\-]*))");
  for (std::sregex_iterator it(help.out.begin(), help.out.end(), kLine), end; it != end; ++it)
    commands.insert((*it)[1]);
  EXPECT_GE(commands.size(), 5u) << help.out;
  EXPECT_EQ(item_tags(read_file(kSource + "/man/tiersyncctl.8"), "COMMANDS"), commands);
}

TEST(ManPages, TiersyncctlOptionsAreTheBinarysOptions) {
  const Execution help = run(std::string(TIERSYNCCTL) + " --help");
  ASSERT_EQ(help.exit_code, 0);
  auto in_help = options_in(help.out);
  in_help.insert({"--help", "-h"});
  EXPECT_EQ(man_options("tiersyncctl.8", std::regex(R"(\btiersyncd\b)")), in_help);
  // The global options as the parser takes them (before the command).
  for (const char* args : {"--config /nonexistent --help", "--config=/nonexistent --help", "-h"})
    EXPECT_EQ(run(std::string(TIERSYNCCTL) + " " + args).exit_code, 0) << args;
}

TEST(ManPages, TiersyncdOptionsAreTheBinarysOptions) {
  const Execution help = run(std::string(TIERSYNCD) + " --help");
  ASSERT_EQ(help.exit_code, 0);
  auto in_help = options_in(help.out);
  in_help.insert({"--help", "-h"});
  const auto in_man = man_options("tiersyncd.8", std::regex(R"(\b(tiersyncctl|systemctl)\b)"));
  EXPECT_EQ(in_man, in_help);
  // The parser takes each (an unknown one exits 2 before --help is seen).
  for (const auto& option : in_man) {
    const std::string args = option == "--config" ? "--config /nonexistent" : option;
    EXPECT_EQ(run(std::string(TIERSYNCD) + " " + args + " --help").exit_code, 0) << option;
  }
  EXPECT_EQ(run(std::string(TIERSYNCD) + " --bogus --help").exit_code, 2);
}

}  // namespace
}  // namespace tiersync
