#!/bin/sh
# The example configurations in config/ pass `tiersyncd --check-config` once the files they
# name exist: each is copied with its absolute paths moved under a temp root, where the keys,
# certificates and folders are made first. Usage: configs_test.sh SOURCE_DIR BIN_DIR
set -eu
src=$1
bin=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
mkdir -p "$tmp/etc/tiersync" "$tmp/srv/mirror/incoming/alpine" "$tmp/var/lib" "$tmp/mnt/tier1"
"$bin/tiersyncctl" keygen --out "$tmp/etc/tiersync/origin" >/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=example -keyout "$tmp/etc/tiersync/server.key" -out "$tmp/etc/tiersync/server.pem" \
  >/dev/null 2>&1
cp "$tmp/etc/tiersync/server.pem" "$tmp/etc/tiersync/ca.pem"
for role in tier0 tier1 mirror; do
  # Every absolute path of the example moves below the temp root (URLs keep their host).
  sed -e "s|\"/|\"$tmp/|g" -e "s|file:///|file://$tmp/|g" "$src/config/$role.json" \
    >"$tmp/$role.json"
  if out=$("$bin/tiersyncd" --config "$tmp/$role.json" --check-config 2>&1); then
    echo "config/$role.json: ok"
  else
    echo "FAIL: config/$role.json does not pass --check-config:"
    echo "$out"
    failed=1
  fi
done
# keygen never replaces a key without --force (exit 2).
status=0
"$bin/tiersyncctl" keygen --out "$tmp/etc/tiersync/origin" >/dev/null 2>&1 || status=$?
if [ "$status" -ne 2 ]; then
  echo "FAIL: keygen over an existing key exited $status, not 2"
  failed=1
fi
# A signing key that group or others may read is refused, naming the key and its mode.
chmod 644 "$tmp/etc/tiersync/origin.key"
if out=$("$bin/tiersyncd" --config "$tmp/tier0.json" --check-config 2>&1); then
  echo "FAIL: --check-config accepted a signing key of mode 0644"
  failed=1
elif ! printf '%s\n' "$out" | grep -q "origin.key has mode 0644"; then
  echo "FAIL: the refusal of a 0644 signing key does not name the key and its mode:"
  echo "$out"
  failed=1
fi
# The check must be able to fail: a missing key is refused.
rm "$tmp/etc/tiersync/origin.key"
if "$bin/tiersyncd" --config "$tmp/tier0.json" --check-config >/dev/null 2>&1; then
  echo "FAIL: --check-config accepted a tier0 whose signing key is missing"
  failed=1
fi
exit "$failed"
