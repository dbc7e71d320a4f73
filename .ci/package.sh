#!/usr/bin/env bash
# The Debian package (issue 9): dpkg-buildpackage in a copy of the tree outside it (the .deb, the
# build folder and debhelper's files never land in the tree), lintian (errors and warnings fail;
# overrides say why in debian/tiersync.lintian-overrides), then what the .deb holds: binaries,
# units, man pages, examples, and maintainer scripts that enable and start nothing. Last, the
# packaged binaries check the packaged example configurations (tests/configs_test.sh).
# Usage: .ci/package.sh   (TIERSYNC_DEB_DIR: where to build, default /tmp/tiersync-deb)
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$TIERSYNC_ROOT"
TIERSYNC_PACKAGES+=(dpkg-dev debhelper lintian man-db)
tiersync_install

out=${TIERSYNC_DEB_DIR:-/tmp/tiersync-deb}
src=$out/tiersync
mkdir -p "$src"
rm -f "$out"/*.deb "$out"/*.ddeb "$out"/*.changes "$out"/*.buildinfo
rsync -a --delete --exclude='/build*/' --exclude=/.git --exclude=/.cache --exclude=/obj-*/ \
  --exclude=/debian/.debhelper/ --exclude=/debian/tiersync/ ./ "$src/"
echo "== package: dpkg-buildpackage (Release, nocheck) in $src"
# ccache across runs: the copy's path is fixed, so the compiler sees the same arguments. No
# -dbgsym package: compressing its debug info would cost minutes for nothing CI uses.
(cd "$src" && CCACHE_BASEDIR=$src DEB_BUILD_OPTIONS="nocheck noautodbgsym parallel=$(nproc)" \
  dpkg-buildpackage -us -uc -b -Pnocheck >"$out/build.log" 2>&1) ||
  { tail -50 "$out/build.log"; echo "FAIL: dpkg-buildpackage (log: $out/build.log)"; exit 1; }
deb=$(ls "$out"/tiersync_*.deb)
echo "== package: lintian $(basename "$deb")"
# (Overridden tags are not shown: --show-overrides made lintian 2.116 exit 2 on them.)
lintian --fail-on error,warning "$out"/tiersync_*.changes

echo "== package: contents"
failed=0
contents=$(dpkg-deb -c "$deb" | awk '{print $NF}')
for f in ./usr/bin/tiersyncd ./usr/bin/tiersyncctl \
  ./lib/systemd/system/tiersyncd.service ./lib/systemd/system/tiersyncd@.service \
  ./usr/share/man/man8/tiersyncd.8.gz ./usr/share/man/man8/tiersyncctl.8.gz \
  ./usr/share/man/man5/tiersync.json.5.gz \
  ./usr/share/doc/tiersync/examples/tier0.json ./usr/share/doc/tiersync/examples/tier1.json \
  ./usr/share/doc/tiersync/examples/mirror.json ./usr/share/doc/tiersync/examples/tiersyncd.openrc \
  ./usr/share/doc/tiersync/README.md ./usr/share/doc/tiersync/docs/configuration.md \
  ./usr/share/doc/tiersync/copyright ./var/lib/tiersync/ ./etc/tiersync/; do
  grep -qxF "$f" <<<"$contents" || { echo "FAIL: the package lacks $f"; failed=1; }
done
x=$(mktemp -d)
trap 'rm -rf "$x"' EXIT
dpkg-deb -R "$deb" "$x/root"
# The units are installed, not enabled or started, until the operator has a configuration:
# debhelper's --no-enable snippet (it enables only what was enabled before, on an upgrade, under
# "debian-installed") and no start; try-restart touches only a running service.
if ! grep -q "deb-systemd-helper debian-installed 'tiersyncd.service'" "$x/root/DEBIAN/postinst" ||
  grep -Eq 'deb-systemd-invoke (start|restart) ' "$x/root/DEBIAN/postinst"; then
  echo "FAIL: postinst may enable or start a unit:"
  grep -E 'deb-systemd-(helper|invoke)' "$x/root/DEBIAN/postinst"
  failed=1
fi
grep -q 'adduser --system' "$x/root/DEBIAN/postinst" || { echo "FAIL: postinst makes no tiersync user"; failed=1; }
for page in man8/tiersyncd.8 man8/tiersyncctl.8 man5/tiersync.json.5; do
  warnings=$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z \
    "$x/root/usr/share/man/$page.gz" 2>&1 >/dev/null)
  [ -z "$warnings" ] || { echo "FAIL: man $page: $warnings"; failed=1; }
done
# The packaged binaries on the packaged examples (their libraries are the system's).
mkdir -p "$x/src"
ln -s "$x/root/usr/share/doc/tiersync/examples" "$x/src/config"
sh tests/configs_test.sh "$x/src" "$x/root/usr/bin" || failed=1
[ "$failed" = 0 ] && echo "package: ok ($deb)"
exit "$failed"
