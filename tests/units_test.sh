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
if command -v systemd-analyze >/dev/null 2>&1; then
  for unit in tiersyncd.service tiersyncd@.service; do
    sed "s|/usr/bin/tiersyncd|$bin|g" "$src/systemd/$unit" >"$tmp/$unit"
  done
  cp "$tmp/tiersyncd@.service" "$tmp/tiersyncd@demo.service"
  for unit in tiersyncd.service tiersyncd@demo.service; do
    out=$(systemd-analyze verify "$tmp/$unit" 2>&1) || true
    if [ -n "$out" ]; then
      echo "FAIL: systemd-analyze verify $unit:"
      echo "$out"
      failed=1
    fi
  done
else
  echo "systemd-analyze not found: units not verified"
fi
[ "$failed" = 0 ] && echo "service files: ok"
exit "$failed"
