#!/usr/bin/env bash
# Builds pgvector (the peer that benches/sql_hnsw compares against) from the source in
# ../shared/peers/pgvector, in a copy, and installs it into the system PostgreSQL 15.
# Used by benchmarks only: m3ret neither needs nor contains pgvector.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
src="${M3RET_PGVECTOR_SRC:-$(cd .. && pwd)/shared/peers/pgvector}"
[ -f "$src/vector.control" ] || { echo "[pgvector] no source at $src" >&2; exit 1; }
build="${M3RET_CACHE:-/var/cache/m3ret}/pgvector-build"
rm -rf "$build" && mkdir -p "$build" && cp -r "$src/." "$build/"
# pgvector's default flags (-march=native): the peer at its best on this machine.
make -C "$build" PG_CONFIG="$PG_CONFIG" -j2 >"$build.log" 2>&1 || { tail -30 "$build.log"; exit 1; }
make -C "$build" PG_CONFIG="$PG_CONFIG" install >>"$build.log" 2>&1 || { tail -30 "$build.log"; exit 1; }
echo "[pgvector] $(grep default_version "$build/vector.control") installed into $("$PG_CONFIG" --pkglibdir)" >&2
