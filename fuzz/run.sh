#!/usr/bin/env bash
# Fuzzes study::load. Usage: fuzz/run.sh [seconds] (default 900).
# The corpus starts from the committed fixtures (each prefixed with a modality byte)
# plus the tiny hand-made seeds in fuzz/seeds/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
seconds="${1:-900}"
corpus=$(mktemp -d /tmp/m3ret-fuzz-corpus-XXXX)
i=0
for f in fixtures/*.* fixtures/ct_series/*.dcm fuzz/seeds/*; do
  [ -f "$f" ] || continue
  { printf "\\x0$((i % 6))"; cat "$f"; } > "$corpus/seed$i"; i=$((i + 1))
done
export RUSTC_BOOTSTRAP=1   # cargo-fuzz passes nightly flags; the stable compiler accepts them this way
cd fuzz
cargo fuzz build --sanitizer none -O load_study
cargo fuzz run --sanitizer none -O load_study "$corpus" -- \
  -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -max_len=1048576 -print_final_stats=1
