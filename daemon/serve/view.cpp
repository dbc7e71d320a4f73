// The served view: what the applied snapshot makes visible over HTTP.

#include <string>
#include <utility>

#include "daemon/serve/server.h"
#include "daemon/sync/fs.h"
#include "proto/path.h"
#include "proto/snapshot.h"

namespace tiersync::serve {

const proto::Entry* ServedView::find(std::string_view path) const {
  auto it = manifests.find(std::string(proto::partition_of(path, depth)));
  if (it == manifests.end() || !it->second) return nullptr;
  return it->second->find(path);
}

namespace {

/// The approvals document a relay writes holds a few entries per held partition.
constexpr std::size_t kMaxApprovalsBytes = 1u << 20;

std::string minimal_status(const proto::Snapshot& s) {
  std::string out = "{\"serial\": " + std::to_string(s.serial) + ", \"origin\": ";
  proto::append_json_string(out, s.origin);
  out += ", \"created\": ";
  proto::append_json_string(out, proto::format_time(s.created));
  out += ", \"expires\": ";
  proto::append_json_string(out, proto::format_time(s.expires));
  out += "}\n";
  return out;
}

std::shared_ptr<ServedView> build_view(const sync::Applied& applied, sync::ManifestSet manifests,
                                       std::string status_json, MetricsProvider metrics,
                                       const ServedView* previous) {
  auto view = std::make_shared<ServedView>();
  view->envelope = applied.envelope;
  view->serial = applied.snapshot.serial;
  view->depth = applied.snapshot.depth;
  view->manifests = std::move(manifests);
  view->pins = applied.pins_document;
  for (const auto& [name, ref] : applied.snapshot.partitions)
    view->manifest_hashes.insert(ref.manifest);
  if (previous) {
    // Re-publishing the same snapshot (a status update) keeps what was "previous" before; the
    // same serial with other pins (an approval applied) makes the view served until now previous.
    const bool same = previous->serial == view->serial && previous->pins == view->pins;
    view->previous_manifest_hashes =
        same ? previous->previous_manifest_hashes : previous->manifest_hashes;
    view->previous_serial = same ? previous->previous_serial : previous->serial;
    view->previous_pins = same ? previous->previous_pins : previous->pins;
  }
  view->status_json =
      status_json.empty() ? minimal_status(applied.snapshot) : std::move(status_json);
  view->metrics = std::move(metrics);
  return view;
}

}  // namespace

std::shared_ptr<const ServedView> make_view(const sync::Applied& applied,
                                            sync::ManifestSet manifests, std::string status_json,
                                            MetricsProvider metrics, const ServedView* previous) {
  return build_view(applied, std::move(manifests), std::move(status_json), std::move(metrics),
                    previous);
}

Result<std::shared_ptr<const ServedView>> load_view(const sync::StateStore& state,
                                                    std::string status_json,
                                                    MetricsProvider metrics,
                                                    const ServedView* previous) {
  auto applied = state.load_applied();
  if (!applied) return applied.error();
  if (!*applied) {
    auto view = std::make_shared<ServedView>();
    view->status_json = status_json.empty() ? "{\"serial\": null}\n" : std::move(status_json);
    view->metrics = std::move(metrics);
    if (previous) view->previous_manifest_hashes = previous->manifest_hashes;
    return std::shared_ptr<const ServedView>(std::move(view));
  }
  // The same snapshot as the view served now (a no-op cycle): its manifests are shared, not
  // read and parsed again.
  std::shared_ptr<ServedView> view;
  if (previous && previous->serial == (*applied)->snapshot.serial &&
      previous->envelope == (*applied)->envelope && previous->pins == (*applied)->pins_document) {
    view = build_view(**applied, previous->manifests, std::move(status_json), std::move(metrics),
                      previous);
  } else {
    auto manifests = state.load_manifests((*applied)->snapshot);
    if (!manifests) return manifests.error();
    view = build_view(**applied, std::move(*manifests), std::move(status_json), std::move(metrics),
                      previous);
  }
  // A relay's offer to its children, as its tree holds it for static servers too.
  if (auto approvals = sync::read_file(state.published_approvals_path(), kMaxApprovalsBytes))
    view->approvals = std::move(*approvals);
  return std::shared_ptr<const ServedView>(std::move(view));
}

}  // namespace tiersync::serve
