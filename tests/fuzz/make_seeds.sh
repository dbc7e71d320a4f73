#!/usr/bin/env bash
# Regenerates the seed corpora in tests/fuzz/corpus/ from real outputs (make_seeds.cpp), after a
# format changed. Keeps crashers and other files that are not seeds (their names start with
# "crash-" or "regress-"). Usage: tests/fuzz/make_seeds.sh [BUILD_DIR]  (default build-fuzz)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$root/build-fuzz}
ninja -C "$build" fuzz_make_seeds >/dev/null
"$build/tests/fuzz/fuzz_make_seeds" "$root/tests/fuzz/corpus" "$root/config"
du -sh "$root/tests/fuzz/corpus"
