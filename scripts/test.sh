#!/usr/bin/env bash
# The test command: set-up (idempotent), build and install the extension, then run
# the tests: the crates' unit tests and the end-to-end tests, which start throwaway
# clusters of their own.
#
#   bash scripts/test.sh                 PostgreSQL 15 (every test, Citus included),
#                                        then PostgreSQL 18 (the PG18 suite below)
#   M3RET_PG=15 bash scripts/test.sh     PostgreSQL 15 only
#   M3RET_PG=18 bash scripts/test.sh     PostgreSQL 18 only
#
# Extra arguments go to `cargo test` (a test name filter, say).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${M3RET_PG:-}" ]; then
  M3RET_PG=15 bash scripts/test.sh "$@"
  exec env M3RET_PG=18 bash scripts/test.sh "$@"
fi

bash scripts/setup.sh
source scripts/env.sh
echo "[test] PostgreSQL $M3RET_PG ($M3RET_PG_BIN)" >&2

# The end-to-end suite on PostgreSQL 18: everything but Citus (13.2 supports 15 to
# 17): the type, embedding and the registry, security, the model server, the index
# (build, insert, VACUUM, crash), dumps and restores, replicas, postgres_fdw
# sharding, the demo's SQL, and m3ret-load. The crates' unit tests do not depend on
# the PostgreSQL version, and run in the PostgreSQL 15 pass.
if [ "$M3RET_PG" = 18 ]; then
  if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --release --locked -p m3ret --features pg18 --no-default-features -- -D warnings
  fi
  bash scripts/install-extension.sh
  suite=()
  for t in tests/tests/*.rs; do
    name="$(basename "$t" .rs)"
    [ "$name" = citus ] || suite+=(--test "$name")
  done
  cargo test --release --locked -p m3ret-e2e "${suite[@]}" "$@"
  cargo test --release --locked -p m3ret-load --test load "$@"
  exit 0
fi

# The format gate: the workspace is in rustfmt's default style.
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all --check || { echo "[test] run 'cargo fmt --all': the code above is not formatted" >&2; exit 1; }
else
  echo "[test] rustfmt is not installed: format check skipped" >&2
fi

# Lints, as errors: every crate of the workspace, the extension with its PostgreSQL feature.
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --release --locked --all-targets -p m3ret-index -p m3ret-core -p m3ret-server -p m3ret-train -p m3ret-load -p m3ret-e2e -p m3ret-benches -- -D warnings
  cargo clippy --release --locked -p m3ret --features pg15 --no-default-features -- -D warnings
else
  echo "[test] clippy is not installed: lint check skipped" >&2
fi

bash scripts/install-extension.sh
# Citus, for tests/tests/citus.rs and loader/tests/citus.rs (PostgreSQL 15 only).
bash scripts/install-citus.sh
cargo test --release --locked -p m3ret-index -p m3ret-core -p m3ret-server -p m3ret-train -p m3ret-load -p m3ret-e2e "$@"
