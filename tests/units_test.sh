#!/bin/sh
# The service files: the systemd units pass `systemd-analyze verify` (with ExecStart pointed at
# the built binary, since /usr/bin/tiersyncd is not installed here) and the OpenRC script parses;
# both raise the descriptor limit.
# Usage: units_test.sh SOURCE_DIR TIERSYNCD
set -eu
src=$1
bin=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
sh -n "$src/systemd/tiersyncd.openrc" || { echo "FAIL: openrc script does not parse"; failed=1; }
# Descriptors: a crowd of long polls needs more than the default soft limit of 1,024.
for unit in tiersyncd.service tiersyncd@.service; do
  grep -Eq '^LimitNOFILE=[0-9]{5,}$' "$src/systemd/$unit" ||
    { echo "FAIL: $unit sets no LimitNOFILE of 10000 or more"; failed=1; }
done
grep -Eq 'rc_ulimit:?=.*-n [0-9]{5,}' "$src/systemd/tiersyncd.openrc" ||
  { echo "FAIL: openrc script sets no rc_ulimit -n of 10000 or more"; failed=1; }
# systemd-analyze verify needs no running systemd (it loads the unit files offline); the
# package systemd provides it (.ci/setup.sh installs it). Without it the test fails: it never
# passes unverified.
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "FAIL: systemd-analyze not found: install systemd (.ci/setup.sh does) to verify the units"
  exit 1
fi
# --man=no: Documentation= lines are not looked up in man pages that may not be installed.
verify() { systemd-analyze verify --man=no "$1" 2>&1; }
# The check can fail: a unit with an unknown key and a missing binary must be refused here.
printf '[Service]\nExecStart=/nonexistent/tiersyncd\nNoSuchKey=1\n' >"$tmp/broken.service"
if out=$(verify "$tmp/broken.service") && [ -z "$out" ]; then
  echo "FAIL: systemd-analyze verify accepts a broken unit here: it cannot check ours"
  failed=1
fi
for unit in tiersyncd.service tiersyncd@.service; do
  sed "s|/usr/bin/tiersyncd|$bin|g" "$src/systemd/$unit" >"$tmp/$unit"
done
cp "$tmp/tiersyncd@.service" "$tmp/tiersyncd@demo.service"
for unit in tiersyncd.service tiersyncd@demo.service; do
  rc=0
  out=$(verify "$tmp/$unit") || rc=$?
  if [ "$rc" != 0 ] || [ -n "$out" ]; then
    echo "FAIL: systemd-analyze verify $unit (exit $rc):"
    echo "$out"
    failed=1
  fi
done
[ "$failed" = 0 ] && echo "service files: ok"
exit "$failed"
