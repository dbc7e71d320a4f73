#pragma once
/// The network the guard, approvals and pins tests build on: tier0 publishing a source signed
/// with one key, and relays below it over file://, each in its own folder of one temp tree.

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "tests/integration/support.h"

namespace tiersync::it {

/// `tiersyncd --once` exits 3 when a partition is held (docs/guard.md).
inline constexpr int kHeld = 3;

/// Removes the first `count` packages of `partition` and rebuilds its index.
void remove_packages(TreeModel& model, std::string_view partition, std::size_t count,
                     std::int64_t index_mtime);

/// Removes the `count` smallest packages of `partition` and rebuilds its index; returns the
/// share of the partition's bytes they held, so that a test can show which rule it is about.
double remove_smallest_packages(TreeModel& model, std::string_view partition, std::size_t count,
                                std::int64_t index_mtime);

/// A fixture with the temp tree (`root_`), tier0's signing key (`key_`, made in SetUp) and its
/// source folder (`source_`); the nodes are the test's own, made with the helpers below.
class NetworkTest : public ::testing::Test {
 protected:
  /// `tag` names the temp tree (e.g. "tiersync-guard").
  explicit NetworkTest(std::string_view tag) : root_(tag) {}
  void SetUp() override;

  /// tier0 ("dl-master" in the temp tree) publishing `source_` signed with `key_`, with these
  /// guard settings (null: the defaults).
  Node make_tier0(const json& guard = nullptr) const;
  /// The relay `name` (a mirror trusting `key_`) of `parent_url`, tier0's tree when empty.
  Node make_relay(const std::string& name, const json& guard = nullptr,
                  const std::string& parent_url = "") const;
  /// The source becomes `model`; `tier0` and then each of `relays` run once, none may hold, and
  /// each tree holds exactly `model`.
  void publish_and_sync(const Node& tier0, const TreeModel& model,
                        const std::vector<const Node*>& relays);

  TempDir root_;
  KeyFiles key_;
  fs::path source_;
};

}  // namespace tiersync::it
