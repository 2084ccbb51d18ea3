#!/usr/bin/env bash
# The test command: set-up (idempotent), build and install the extension into the
# system PostgreSQL 15, then run every test: core's unit tests and the end-to-end
# tests, which start throwaway clusters of their own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
source scripts/env.sh

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
