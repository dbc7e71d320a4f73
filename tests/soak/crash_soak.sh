#!/bin/sh
# Crash soak (docs/crash-safety.md, "Soak"): kills tiersyncd at steps drawn at random from a
# larger tree's initial sync and update, checking every kill as the CI sweeps do. Not run by
# ctest (the test is DISABLED_ there); run it by hand or on a schedule:
#
#   tests/soak/crash_soak.sh [BUILD_DIR]
#
# TIERSYNC_CRASH_SOAK_SEED      the tree and the steps drawn (default: a random one, printed)
# TIERSYNC_CRASH_SOAK_SAMPLES   kills per cycle (default 50)
# TIERSYNC_CRASH_SOAK_PACKAGES  packages per partition, six partitions (default 30)
set -eu
build=${1:-build}
bin=$build/tests/integration/tiersync_it_crash
if [ ! -x "$bin" ]; then
  echo "crash_soak: $bin not found: build the tree first" >&2
  exit 1
fi
if [ -z "${TIERSYNC_CRASH_SOAK_SEED:-}" ]; then
  TIERSYNC_CRASH_SOAK_SEED=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
fi
export TIERSYNC_CRASH_SOAK_SEED
# The daemon runs thousands of times: a tmpfs keeps its syncfs calls cheap.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ]; then
  export TMPDIR=/dev/shm
fi
echo "crash_soak: TIERSYNC_CRASH_SOAK_SEED=$TIERSYNC_CRASH_SOAK_SEED (set it to run this soak again)"
exec "$bin" --gtest_also_run_disabled_tests --gtest_filter='CrashSoak.*'
