# Sourced by .ci/run and .ci/demo: installs what is missing (Debian 12, as root) and builds.
set -euo pipefail

# fuse3 and libfuse3-dev: the power-loss test's file system (tests/powerloss). systemd:
# systemd-analyze for tests/units_test.sh (no running systemd needed). curl and openssl: the
# server and integration tests' clients and test PKI. A test whose tool is missing fails.
TIERSYNC_PACKAGES=(g++ cmake ninja-build ccache pkg-config libboost1.81-dev libssl-dev openssl
  nlohmann-json3-dev libspdlog-dev libgtest-dev rsync python3 curl fuse3 libfuse3-dev systemd)

tiersync_install() {
  local missing=()
  for p in "${TIERSYNC_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

# tiersync_build DIR [cmake args...]
tiersync_build() {
  local dir=$1
  shift
  cmake -S "$TIERSYNC_ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  ninja -C "$dir" -j"$(nproc)"
}

TIERSYNC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
# Hits across clones (CI builds in a fresh folder): paths relative to the tree, cwd not hashed.
export CCACHE_BASEDIR=$TIERSYNC_ROOT CCACHE_NOHASHDIR=1
