#include "tests/integration/network_fixture.h"

#include <algorithm>

namespace tiersync::it {

void remove_packages(TreeModel& model, std::string_view partition, std::size_t count,
                     std::int64_t index_mtime) {
  auto packages = packages_in(model, partition);
  for (std::size_t i = 0; i < count && i < packages.size(); ++i) model.erase(packages[i]);
  rebuild_index(model, partition, index_mtime);
}

double remove_smallest_packages(TreeModel& model, std::string_view partition, std::size_t count,
                                std::int64_t index_mtime) {
  std::uint64_t total = 0;
  for (const auto& path : paths_in(model, partition)) total += model.at(path).bytes.size();
  auto packages = packages_in(model, partition);
  std::stable_sort(packages.begin(), packages.end(), [&](const auto& a, const auto& b) {
    return model.at(a).bytes.size() < model.at(b).bytes.size();
  });
  std::uint64_t removed = 0;
  for (std::size_t i = 0; i < count && i < packages.size(); ++i) {
    removed += model.at(packages[i]).bytes.size();
    model.erase(packages[i]);
  }
  rebuild_index(model, partition, index_mtime);
  return total == 0 ? 0.0 : static_cast<double>(removed) / static_cast<double>(total);
}

void NetworkTest::SetUp() {
  key_ = keygen(root_ / "keys/origin");
  source_ = root_ / "incoming";
}

Node NetworkTest::make_tier0(const json& guard) const {
  return make_origin(root_ / "dl-master", "dl-master", source_, key_.key, guard);
}

Node NetworkTest::make_relay(const std::string& name, const json& guard,
                             const std::string& parent_url) const {
  const std::string url =
      parent_url.empty() ? "file://" + (root_ / "dl-master/tree").string() : parent_url;
  return make_mirror(root_ / name, name, url, {key_.pub}, guard);
}

void NetworkTest::publish_and_sync(const Node& tier0, const TreeModel& model,
                                   const std::vector<const Node*>& relays) {
  materialize(model, source_);
  ASSERT_TRUE(Exited(tier0.once(), 0)) << "tier0 must not hold";
  ASSERT_TRUE(TreeMatches(tier0.tree(), model)) << "tier0";
  for (const Node* n : relays) {
    ASSERT_TRUE(Exited(n->once(), 0)) << n->name << " must not hold";
    ASSERT_TRUE(TreeMatches(n->tree(), model)) << n->name;
  }
}

}  // namespace tiersync::it
