#!/usr/bin/env bash
# The live demo: a three-tier tiersync network on loopback, made from scratch in
# $TIERSYNC_DEMO_DIR (default /tmp/tiersync-demo): an origin key, a CA and a server certificate,
# a small Alpine-like repository, and three long-running daemons over HTTPS:
#
#   source/ --> tier0 "dl-master" --> tier1 "tier1-eu" --> mirror "mirror-a" --> you (curl)
#
# It shows a first sync, a new package reaching the mirror, and the October 2024 empty-$arch
# accident held by the origin's guard; then it prints the URLs and keeps the network running
# until Ctrl-C. With --oneshot (or CI=true, or stdin not a terminal) it stops after the accident.
# Every wait is bounded: a step that does not happen in time stops the demo with exit code 1.
#
# usage: live-demo.sh [--oneshot] [--clean] BIN_DIR
#   BIN_DIR    the folder holding the built tiersyncd and tiersyncctl (build/daemon)
#   --oneshot  run the steps, stop the daemons, exit 0
#   --clean    remove the demo folder at the end (the test suite's run)
# .ci/demo installs what is missing, builds, and runs this with build/daemon.
set -euo pipefail

usage() {
  echo "usage: live-demo.sh [--oneshot] [--clean] BIN_DIR   (BIN_DIR: where tiersyncd and tiersyncctl are)" >&2
  exit 2
}

oneshot=false
clean=false
bin_dir=
for a in "$@"; do
  case $a in
    --oneshot) oneshot=true ;;
    --clean) clean=true ;;
    -h | --help) usage ;;
    -*) echo "live-demo: unknown option $a" >&2 && usage ;;
    *) [ -z "$bin_dir" ] || usage; bin_dir=$a ;;
  esac
done
[ -n "$bin_dir" ] || usage
[ "${CI:-}" = true ] && oneshot=true
[ -t 0 ] || oneshot=true

[ -d "$bin_dir" ] || { echo "live-demo: $bin_dir: no such folder (build first: ninja -C build)" >&2; exit 2; }
BIN=$(cd "$bin_dir" && pwd)
for b in tiersyncd tiersyncctl; do
  [ -x "$BIN/$b" ] || { echo "live-demo: $BIN/$b not found: build first (ninja -C build)" >&2; exit 2; }
done
for tool in curl openssl rsync python3 sha256sum; do
  command -v "$tool" >/dev/null || { echo "live-demo: $tool is required (apt-get install $tool)" >&2; exit 2; }
done
export PATH="$BIN:$PATH"  # the commands shown are the commands run

LIMIT=30  # seconds: the bound of every wait
DEMO=${TIERSYNC_DEMO_DIR:-/tmp/tiersync-demo}
ARCHES="x86_64 aarch64 armv7 ppc64le s390x riscv64"
NODES="tier0 tier1 mirror"

if [ -t 1 ]; then
  B=$'\033[1m' R=$'\033[31m' G=$'\033[32m' N=$'\033[0m'
else
  B='' R='' G='' N=''
fi

# ---------------------------------------------------------------------------------------------
# Helpers

step() { printf '\n%s== %s%s\n' "$B" "$*" "$N"; }
say() { printf '%s\n' "$@"; }
ok() { printf '%s%s%s\n' "$G" "$*" "$N"; }
show() { # show CMD...: print it, run it (a failure stops the demo)
  printf '$ %s\n' "$*"
  "$@"
}
now_ms() { date +%s%3N; }
secs() { printf '%d.%02d' $(($1 / 1000)) $(($1 % 1000 / 10)); } # secs MS: "1.23"
seconds_since() { secs $(($(now_ms) - $1)); }

fail() {
  printf '\n%sFAILED: %s%s\n' "$R" "$*" "$N" >&2
  for n in $NODES; do
    if [ -f "$DEMO/logs/$n.log" ]; then
      echo "--- last lines of logs/$n.log ---" >&2
      tail -n 15 "$DEMO/logs/$n.log" >&2
    fi
  done
  exit 1
}

# The daemons, by node: their pids, names, ports and configs.
declare -A PID=() PORT=() NAME=()
NAME=([tier0]=dl-master [tier1]=tier1-eu [mirror]=mirror-a)

check_daemons() {
  for n in "${!PID[@]}"; do
    kill -0 "${PID[$n]}" 2>/dev/null || fail "tiersyncd ${NAME[$n]} ($n) exited"
  done
}

# wait_until WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds, at most $LIMIT s.
wait_until() {
  local what=$1
  shift
  local deadline=$(($(now_ms) + LIMIT * 1000))
  until "$@"; do
    check_daemons
    [ "$(now_ms)" -lt "$deadline" ] || fail "$what did not happen within $LIMIT s"
    sleep 0.1
  done
}

url() { echo "https://127.0.0.1:${PORT[$1]}/"; }
fetch() { curl --silent --fail --max-time 5 --cacert "$DEMO/pki/ca.pem" "$@"; }
# The status a node serves (its JSON is refreshed after each of its cycles).
status_of() { fetch "$(url "$1").tiersync/v1/status"; }
serial_of() { status_of "$1" 2>/dev/null | sed -n 's/^  "serial": \([0-9]*\).*/\1/p'; }
held_of() { status_of "$1" 2>/dev/null | grep -c '"partition":' || true; }
serial_is() { [ "$(serial_of "$1")" = "$2" ]; }
held_is() { [ "$(held_of "$1")" = "$2" ]; }
serves() { fetch --output /dev/null "$(url "$1")$2"; }
sha() { sha256sum "$1" | cut -c1-16; }

# ---------------------------------------------------------------------------------------------
# Stopping: on Ctrl-C, on any exit

stop_daemons() {
  local n
  for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null || true; done
  for n in "${!PID[@]}"; do
    for _ in $(seq 1 100); do
      kill -0 "${PID[$n]}" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "${PID[$n]}" 2>/dev/null; then
      echo "tiersyncd ${NAME[$n]} did not stop within 10 s of SIGTERM: killing it" >&2
      kill -KILL "${PID[$n]}" 2>/dev/null || true
    fi
    wait "${PID[$n]}" 2>/dev/null || true
  done
  PID=()
  rm -f "$DEMO/daemons.pids"
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "${#PID[@]}" -gt 0 ]; then
    printf '\nStopping the daemons (SIGTERM)...\n'
    stop_daemons
  fi
  if [ "$clean" = true ] && [ "$rc" = 0 ]; then
    rm -rf "$DEMO"
  elif [ -f "$DEMO/.tiersync-demo" ]; then
    say "Everything is in $DEMO: configs, keys, certificates, trees, state and logs/."
  fi
  exit "$rc"
}
trap on_exit EXIT
interrupted=130  # Ctrl-C during the steps; 0 once the network is up and waiting for it
trap 'exit $interrupted' INT TERM

# ---------------------------------------------------------------------------------------------
# 0. A fresh folder: keys, certificates, a repository, configurations

if [ -e "$DEMO" ]; then
  DEMO=$(cd "$DEMO" && pwd)
  # Daemons of an earlier run that was not stopped cleanly, recognised by their command line.
  if [ -f "$DEMO/daemons.pids" ]; then
    while read -r old; do
      if tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null | grep -qF "tiersyncd --config $DEMO/"; then
        kill -TERM "$old" 2>/dev/null || true
        for _ in $(seq 1 100); do # until it has gone (bounded: 10 s)
          kill -0 "$old" 2>/dev/null || break
          sleep 0.1
        done
      fi
    done <"$DEMO/daemons.pids"
  fi
  if [ -n "$(ls -A "$DEMO")" ] && [ ! -f "$DEMO/.tiersync-demo" ]; then
    echo "live-demo: $DEMO exists and is not a demo folder; set TIERSYNC_DEMO_DIR elsewhere" >&2
    exit 2
  fi
  rm -rf "$DEMO"
fi
mkdir -p "$DEMO"/{keys,pki,logs}
DEMO=$(cd "$DEMO" && pwd)
touch "$DEMO/.tiersync-demo"
cd "$DEMO"

# make_repo DIR: a small Alpine-like repository (edge/{main,community}/ARCH, 12 packages and an
# index per architecture; the index is a stand-in listing the package names).
make_repo() {
  local dir=$1 repo arch d i
  for repo in main community; do
    for arch in $ARCHES; do
      d=$dir/edge/$repo/$arch
      mkdir -p "$d"
      for i in $(seq 1 12); do
        head -c $((2000 + i * 97)) /dev/urandom >"$d/pkg$i-1.0-r0.apk"
      done
      write_index "$d"
    done
  done
  date -u +%s >"$dir/last-updated"
}
write_index() { (cd "$1" && printf '%s\n' *.apk | sort >APKINDEX.tar.gz); }
count() { find "$1" -path "$1/.tiersync" -prune -o -type f -print | wc -l; }
arches() { (cd "$1/edge/main" && printf '%s ' *); }

openssl_quiet() { openssl "$@" 2>>"$DEMO/pki/openssl.log" >&2 || fail "openssl $1 failed: see pki/openssl.log"; }
make_pki() {
  openssl_quiet req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout pki/ca.key -out pki/ca.pem -days 30 -subj "/CN=tiersync demo CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  openssl_quiet req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout pki/server.key -out pki/server.csr -subj "/CN=localhost"
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >pki/server.ext
  openssl_quiet x509 -req -in pki/server.csr -CA pki/ca.pem -CAkey pki/ca.key -set_serial 2 \
    -days 30 -out pki/server.pem -extfile pki/server.ext
}

# Every daemon listens on port 0: the kernel picks a free port as it binds (no port chosen here
# and released, for another process to take first), and the daemon reports what it bound in
# state_dir/ports.json. A relay's config is written once its parent has reported its port.
tls_listen='{"address": "127.0.0.1", "port": 0, "tls_cert": "pki/server.pem", "tls_key": "pki/server.key"}'
write_config() { # write_config NODE
  case $1 in
    tier0) cat >tier0.json <<JSON ;;
{"role": "tier0", "name": "dl-master", "tree": "tier0/tree", "state_dir": "tier0/state",
 "layout": "{release}/{repo}/{arch}", "index_files": ["APKINDEX.tar.gz"],
 "source": {"dir": "source", "settle_seconds": 1}, "signing_key": "keys/origin.key",
 "listen": [$tls_listen]}
JSON
    tier1) cat >tier1.json <<JSON ;;
{"role": "tier1", "name": "tier1-eu", "tree": "tier1/tree", "state_dir": "tier1/state",
 "upstream": {"url": "$(url tier0)", "ca_file": "pki/ca.pem"},
 "trusted_keys": ["keys/origin.pub"],
 "listen": [$tls_listen]}
JSON
    mirror) cat >mirror.json <<JSON ;;
{"role": "mirror", "name": "mirror-a", "tree": "mirror/tree", "state_dir": "mirror/state",
 "upstream": {"url": "$(url tier1)", "ca_file": "pki/ca.pem"},
 "trusted_keys": ["keys/origin.pub"],
 "listen": [$tls_listen,
            {"address": "127.0.0.1", "port": 0, "tls": false}]}
JSON
  esac
  tiersyncd --config "$1.json" --check-config >/dev/null || fail "$1.json is not a valid configuration"
}

step "0. Setting up in $DEMO"
keyid=$(tiersyncctl keygen --out keys/origin)
say "origin signing key    keys/origin.key (public: keys/origin.pub, key id ${keyid:0:16}...)"
make_pki
say "TLS                   a demo CA (pki/ca.pem) and a certificate for 127.0.0.1 and localhost"
make_repo source
say "the builders' tree    source/: $(count source) files, edge/{main,community}/{${ARCHES// /,}}"
write_config tier0
say "configurations        tier0.json now; tier1.json and mirror.json once their parent listens" \
  "                      (each checked with --check-config)"

# ---------------------------------------------------------------------------------------------
# 1. Three daemons

# reported_port NODE [I]: the port NODE's running daemon bound for its listen entry I (0 first),
# from the report it writes once every listener is bound; fails until there is one of its pid.
reported_port() {
  python3 - "$DEMO/$1/state/ports.json" "${PID[$1]}" "${2:-0}" 2>/dev/null <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
sys.exit(1) if doc["pid"] != int(sys.argv[2]) else print(doc["listen"][int(sys.argv[3])]["port"])
PY
}
has_reported() { reported_port "$1" >/dev/null; }

start() { # start NODE: a long-running tiersyncd, its log in logs/NODE.log; waits for its ports
  write_config "$1"
  tiersyncd --config "$DEMO/$1.json" 2>>"logs/$1.log" &
  PID[$1]=$!
  echo "${PID[$1]}" >>daemons.pids
  wait_until "$1's report of its bound ports" has_reported "$1"
  PORT[$1]=$(reported_port "$1")
  if [ "$1" = mirror ]; then HTTP_PORT=$(reported_port mirror 1); fi
}

step "1. Three daemons start; the mirror converges"
say "tier0  \"dl-master\"  publishes source/ as signed snapshots" \
  "tier1  \"tier1-eu\"   relays tier0 over HTTPS" \
  "mirror \"mirror-a\"   relays tier1 to end users, over HTTPS and plain HTTP" \
  "Each relay checks the origin's signature (keys/origin.pub) and every byte it downloads." ""
t=$(now_ms)
start tier0
wait_until "tier0's first publish" serial_is tier0 1
say "tier0  started (pid ${PID[tier0]}) on $(url tier0), published serial 1 after $(seconds_since "$t") s"
t=$(now_ms)
start tier1
wait_until "tier1's first sync" serial_is tier1 1
say "tier1  started (pid ${PID[tier1]}) on $(url tier1), synced serial 1 from tier0 after $(seconds_since "$t") s"
t=$(now_ms)
start mirror
wait_until "the mirror's first sync" serial_is mirror 1
say "mirror started (pid ${PID[mirror]}) on $(url mirror) and http://127.0.0.1:$HTTP_PORT/," \
  "       synced serial 1 from tier1 after $(seconds_since "$t") s"
echo
show tiersyncctl --config tier0.json status
echo
show tiersyncctl --config mirror.json status
pkg=edge/main/aarch64/pkg1-1.0-r0.apk
echo
show curl --cacert pki/ca.pem --fail --silent --show-error --output downloaded.apk "$(url mirror)$pkg"
show sha256sum downloaded.apk "source/$pkg"
[ "$(sha downloaded.apk)" = "$(sha "source/$pkg")" ] || fail "the mirror served other bytes than the source's $pkg"
ok "the mirror serves $pkg byte for byte as the builders wrote it"

# ---------------------------------------------------------------------------------------------
# 2. A change propagates

step "2. A builder uploads a package; how long until the mirror serves it?"
new=edge/main/x86_64/hello-1.0-r0.apk
say "\$ (a builder writes source/$new and updates its APKINDEX)"
t=$(now_ms)
head -c 5000 /dev/urandom >"source/$new"
write_index source/edge/main/x86_64
wait_until "the mirror serving the new package" serves mirror "$new"
served_ms=$(now_ms)
# When each node got it, from the millisecond timestamps of the daemons' log lines.
log_ms() { # log_ms NODE TEXT: the time of the first line of logs/NODE.log holding TEXT
  local ts
  ts=$(grep -m1 -F "$2" "logs/$1.log" | cut -d' ' -f1) || return 0
  date -d "$ts" +%s%3N 2>/dev/null || true
}
at() { printf '  +%s s  %s\n' "$(secs $(($1 - t)))" "$2"; }
at "$t" "the upload is in source/"
for n in $NODES; do
  verb=applied
  [ "$n" = tier0 ] && verb=published
  ms=$(log_ms "$n" "$verb serial 2:")
  [ -z "$ms" ] || at "$ms" "$(printf '%-6s %s serial 2' "$n" "$verb")"
done
at "$served_ms" "curl gets it from the mirror (200)"
ok "the mirror served $new $(secs $((served_ms - t))) s after the upload"
say "tier0 waits until source/ has been quiet for settle_seconds (1 s here; it looks once a" \
  "second), so a half-written upload is never published."
say "No cron and no poll interval: tier1 and the mirror keep a long poll open on their parent" \
  "(GET /.tiersync/v1/snapshot?after=SERIAL&wait=...), answered the moment a new serial exists;" \
  "each then fetches only what changed and verifies it against the signed snapshot."

# ---------------------------------------------------------------------------------------------
# 3. The accident

step "3. The accident: an upload script runs with an empty \$arch"
mkdir -p staging/edge/main
cp -a source/edge/main/x86_64 staging/edge/main/
head -c 3000 /dev/urandom >staging/edge/main/x86_64/newpkg-2.0-r0.apk
write_index staging/edge/main/x86_64
say "The builder's staging/ holds a new build for x86_64 only. The upload script is meant to run" \
  "once per architecture; in October 2024 it ran with \$arch empty:" ""
arch=""
show rsync -a --delete-delay --delay-updates "staging/edge/main/$arch" "source/edge/main/"
say "source/edge/main now holds: $(arches source)-- aarch64, armv7, ppc64le, s390x, riscv64 are gone." \
  "rsync --delete from cron would now delete them on every mirror."
t=$(now_ms)
accident_handled() { held_is tier0 5 && serves mirror edge/main/x86_64/newpkg-2.0-r0.apk; }
wait_until "tier0 holding the five emptied partitions and the mirror serving x86_64's new package" accident_handled
say "" "tier0 saw it and published within $(seconds_since "$t") s:"
show tiersyncctl --config tier0.json status
say "" "Each architecture that would lose more than 20% of its files (guard.max_delete_ratio) is" \
  "held: the new snapshot keeps its previous contents. The healthy change went through. The" \
  "daemon logged one line per hold, for the operator's alerting:"
grep -m1 'hold: partition=edge/main/aarch64' logs/tier0.log | cut -d' ' -f2- || true
echo
say "The mirror still serves every architecture (and x86_64's new package):"
for a in $ARCHES; do
  f=edge/main/$a/pkg1-1.0-r0.apk
  printf '  %-34s ' "$f"
  serves mirror "$f" || fail "the mirror stopped serving $f"
  echo "200 OK"
done
printf '  %-34s 200 OK\n' edge/main/x86_64/newpkg-2.0-r0.apk
show tiersyncctl --config mirror.json status

say "" "${B}The fix${N}: put the architectures back in source/. The origin's tree still has them (the" \
  "guard kept them published), so they can be copied from there:"
show rsync -a tier0/tree/edge/main/ source/edge/main/
t=$(now_ms)
wait_until "tier0's hold clearing" held_is tier0 0
say "tier0 published again $(seconds_since "$t") s later: the source matches the snapshot, nothing is held."
show tiersyncctl --config tier0.json status
say "" "Had the removal been intended (an architecture retired), the operator would approve it:" \
  "  tiersyncctl --config tier0.json approve edge/main/armv7     (or --all)" \
  "The next publish then applies the deletion and records the approval in the signed snapshot," \
  "and the relays carry it out instead of holding it again. Never approve an accident."
echo
wait_until "the mirror in sync with tier0" serial_is mirror "$(serial_of tier0)"
show tiersyncctl --config mirror.json verify --full
diff -r --exclude=.tiersync source mirror/tree >/dev/null || fail "the mirror's tree differs from source/"
ok "mirror/tree is byte for byte the builders' source/: $(count mirror/tree) files"

# ---------------------------------------------------------------------------------------------
# 4. Running

step "4. The network is running"
say "Status (JSON) and metrics of each node, and a package:"
for n in $NODES; do
  say "  $(printf '%-6s' "$n") $(url "$n").tiersync/v1/status" \
    "         $(url "$n")metrics" \
    "         $(url "$n")$new"
done
say "  mirror over plain HTTP: http://127.0.0.1:$HTTP_PORT/$new" "" \
  "HTTPS needs the demo CA:  curl --cacert $DEMO/pki/ca.pem $(url mirror)metrics" "" \
  "Try (tiersyncctl is $BIN/tiersyncctl):" \
  "  tiersyncctl --config $DEMO/mirror.json status" \
  "  echo hi >$DEMO/source/edge/main/x86_64/hi-1.0-r0.apk      # a new package, live" \
  "  rm -r $DEMO/source/edge/community/s390x                   # held at tier0" \
  "  tiersyncctl --config $DEMO/tier0.json approve edge/community/s390x   # ...then let it go" \
  "  tiersyncctl --config $DEMO/tier1.json sync-now" \
  "  tail -f $DEMO/logs/*.log"

if [ "$oneshot" = true ]; then
  echo
  ok "The demo ran every step (--oneshot: stopping the daemons)."
  exit 0
fi
interrupted=0
say "" "${B}Running until Ctrl-C.${N}"
while true; do
  check_daemons
  sleep 1
done
