#!/usr/bin/env bash
# Fuzzing (issue 8): builds the libFuzzer harnesses with clang in build-fuzz, replays every seed
# corpus (the regression run: crashers found before stay fixed), then fuzzes each harness for
# TIERSYNC_FUZZ_SECONDS (default 12) from its corpus. Any crash, leak, timeout or memory blow-up
# fails the run and the input is printed. New inputs go to a scratch folder, never to the tree.
# Usage: .ci/fuzz.sh [harness...]   (default: all; tests/fuzz/README.md says more)
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$TIERSYNC_ROOT"
TIERSYNC_PACKAGES+=(clang libfuzzer-14-dev)
tiersync_install

build=${TIERSYNC_FUZZ_BUILD:-build-fuzz}
seconds=${TIERSYNC_FUZZ_SECONDS:-12}
echo "== fuzz: build (clang, libFuzzer + ASan + UBSan)"
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DTIERSYNC_FUZZ=ON -DTIERSYNC_BUILD_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -gline-tables-only" >/dev/null
ninja -C "$build" -j"$(nproc)" fuzz

harnesses=("$@")
if [ "${#harnesses[@]}" -eq 0 ]; then
  for f in tests/fuzz/fuzz_*.cpp; do harnesses+=("$(basename "$f" .cpp | sed 's/^fuzz_//')"); done
fi

dict_of() {
  case $1 in
    envelope | snapshot | manifest | state | config) echo tests/fuzz/json.dict ;;
    request | range | conditional | percent) echo tests/fuzz/http.dict ;;
    url) echo tests/fuzz/url.dict ;;
  esac
}

work=$(mktemp -d "${TMPDIR:-/tmp}/tiersync-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

# A crash's input, for the log: its path, and its bytes (hex when short, the start otherwise).
show_crashers() {
  local f
  for f in "$work/$1"-crash-* "$work/$1"-leak-* "$work/$1"-timeout-* "$work/$1"-oom-*; do
    [ -e "$f" ] || continue
    echo "== fuzz_$1: crashing input $(basename "$f") ($(stat -c %s "$f") bytes):"
    head -c 4096 "$f" | od -A d -c | head -40
    echo "   (add it as tests/fuzz/corpus/$1/regress-<what> once fixed; README.md)"
  done
}

failed=()
for h in "${harnesses[@]}"; do
  bin=$build/tests/fuzz/fuzz_$h
  corpus=tests/fuzz/corpus/$h
  dict=$(dict_of "$h")
  opts=(-rss_limit_mb=2048 -timeout=10 -artifact_prefix="$work/$h-")
  [ -n "$dict" ] && opts+=(-dict="$dict")
  echo "== fuzz_$h: replay $(find "$corpus" -type f | wc -l) inputs, then fuzz ${seconds}s"
  if ! "$bin" "${opts[@]}" -runs=0 "$corpus"/* >"$work/$h.replay.log" 2>&1; then
    tail -60 "$work/$h.replay.log"
    show_crashers "$h"
    failed+=("$h (replay)")
    continue
  fi
  mkdir -p "$work/$h.new"
  if ! "$bin" "${opts[@]}" -max_total_time="$seconds" "$work/$h.new" "$corpus" \
    >"$work/$h.log" 2>&1; then
    tail -60 "$work/$h.log"
    show_crashers "$h"
    failed+=("$h")
    continue
  fi
  grep -E '^Done [0-9]+ runs' "$work/$h.log" | sed "s/^/   /" || true
done
passed=$((${#harnesses[@]} - ${#failed[@]}))
if [ "${#failed[@]}" -gt 0 ]; then
  echo "== fuzz: FAILED: ${failed[*]}"
  echo "fuzz: $passed passed, ${#failed[@]} failed"
  exit 1
fi
echo "== fuzz: ${#harnesses[@]} harnesses clean"
echo "fuzz: $passed passed, 0 failed"
