#!/usr/bin/env bash
# Builds Citus from ../shared/peers/citus (13.2.2, AGPL-3.0: tested against, never
# vendored) and installs it into the system PostgreSQL 15, for the Citus tests
# (tests/tests/citus.rs) and docs/citus.md. Installs the Debian packages its build
# needs first. Idempotent: a second run with Citus installed takes a second.
#
# Citus 13.2 supports PostgreSQL 15 to 17, so there is no Citus on M3RET_PG=18.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PG_CONFIG=/usr/bin/pg_config
CITUS_VERSION="13.2.2"
src="${M3RET_CITUS_SRC:-../shared/peers/citus}"
[ -f "$src/configure" ] || src=/work/shared/peers/citus
build="${M3RET_CITUS_BUILD:-/var/cache/m3ret/citus-$CITUS_VERSION}"

log() { printf '[citus] %s\n' "$*" >&2; }
source scripts/apt.sh

installed_version() {
  local so control
  so="$("$PG_CONFIG" --pkglibdir)/citus.so"
  control="$("$PG_CONFIG" --sharedir)/extension/citus.control"
  [ -f "$so" ] && [ -f "$control" ] && cat "$build/.installed" 2>/dev/null
}

if [ "$(installed_version)" = "$CITUS_VERSION" ]; then
  exit 0
fi
[ -f "$src/configure" ] || { log "no Citus source at $src (see ../shared/peers/README.md)"; exit 1; }

packages=(liblz4-dev libzstd-dev libcurl4-openssl-dev libkrb5-dev libssl-dev libselinux1-dev
  libxslt1-dev libpam0g-dev libreadline-dev make gcc)
apt_install_missing "${packages[@]}"

# Built in a copy: the peers' folder may be read-only, and configure writes into its tree.
log "building Citus $CITUS_VERSION in $build (about a minute on 2 cores)"
rm -rf "$build"
mkdir -p "$(dirname "$build")"
cp -a "$src" "$build"
chmod -R u+w "$build"
# The copy's configure and configure.ac can carry the same second: make would then
# regenerate configure with autoreconf, which the build does not need.
touch "$build/configure"
# Citus's tree has symbolic links to its vendored safestringlib (safeclib/); the
# peers' copy holds them as small files naming their target. Made links again, or
# citus.so misses strcpy_s and friends at load time.
for link in src/backend/distributed/safeclib src/backend/columnar/safeclib; do
  if [ -f "$build/$link" ]; then
    target="$(cat "$build/$link")"
    rm "$build/$link"
    ln -s "${target%/}" "$build/$link"
  fi
done
(
  cd "$build"
  ./configure PG_CONFIG="$PG_CONFIG" >"$build/configure.log" 2>&1 || { tail -30 "$build/configure.log"; exit 1; }
  make -j"$(nproc)" >"$build/make.log" 2>&1 || { tail -40 "$build/make.log"; exit 1; }
  as_root make install >"$build/install.log" 2>&1 || { tail -20 "$build/install.log"; exit 1; }
)
echo "$CITUS_VERSION" >"$build/.installed"
log "Citus $CITUS_VERSION installed into $("$PG_CONFIG" --pkglibdir)"
