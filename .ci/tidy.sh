#!/usr/bin/env bash
# Static checks (issue 9): clang-tidy with the repository's .clang-tidy on the project's own
# sources in daemon/ and proto/ (and their headers), every finding an error. Needs a configured
# build folder for compile_commands.json (default build-ci, as .ci/run makes it).
# Usage: .ci/tidy.sh [BUILD_DIR] [FILE...]
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$TIERSYNC_ROOT"
TIERSYNC_PACKAGES+=(clang-tidy)
tiersync_install

build=${1:-build-ci}
shift || true
files=("$@")
[ "${#files[@]}" -gt 0 ] || files=(daemon/*.cpp daemon/*/*.cpp proto/*.cpp)
[ -f "$build/compile_commands.json" ] || { echo "tidy: no $build/compile_commands.json" >&2; exit 2; }
echo "== clang-tidy: ${#files[@]} files, $(nproc) at a time"
# The build's flags are GCC's: clang does not know all of its warning options.
printf '%s\n' "${files[@]}" |
  xargs -P"$(nproc)" -n1 clang-tidy -p "$build" --quiet --extra-arg=-Wno-unknown-warning-option
echo "clang-tidy: clean"
