#!/usr/bin/env bash
# Builds the extension in release mode and installs it into the PostgreSQL that
# M3RET_PG picks (scripts/env.sh): the system PostgreSQL 15 (the default), or 18.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
cd extension
cargo pgrx install --release --pg-config "$PG_CONFIG" >/tmp/m3ret-install-pg$M3RET_PG.log 2>&1 || { cat /tmp/m3ret-install-pg$M3RET_PG.log; exit 1; }
echo "[install] m3ret installed into $("$PG_CONFIG" --pkglibdir)" >&2
