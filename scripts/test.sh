#!/usr/bin/env bash
# The test command: set-up (idempotent), build and install the extension into the
# system PostgreSQL 15, then run every test: core's unit tests and the end-to-end
# tests, which start throwaway clusters of their own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
source scripts/env.sh

bash scripts/install-extension.sh
cargo test --release --locked -p m3ret-core -p m3ret-train -p m3ret-e2e "$@"
