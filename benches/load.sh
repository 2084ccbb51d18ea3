#!/usr/bin/env bash
# Issue 16's figures in one run: m3ret-load against a plain COPY of the same bytes
# over a generated archive of DICOM series (M3RET_BENCH_FILES, default 10000), and
# m3ret_dicom_meta's header reader against a full decode. Needs ../shared/data.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
files="${M3RET_BENCH_FILES:-10000}"
archive="${M3RET_BENCH_ARCHIVE:-/tmp/m3ret-bench-archive}"
if [ "$(find "$archive" -name '*.dcm' 2>/dev/null | wc -l)" -ne "$files" ]; then
  rm -rf "$archive"
  "$M3RET_VENV/bin/python" benches/python/make_dicom_archive.py ../shared/data/dicom_samples "$archive" "$files"
fi
cargo build -q --release -p m3ret-load
bin="${CARGO_TARGET_DIR:-target}/release/m3ret-load"
echo "== header reader against a full decode (one core)"
cargo bench -q -p m3ret-benches --bench dicom_meta
echo "== loader against COPY"
M3RET_BENCH_ARCHIVE="$archive" M3RET_LOAD_BIN="$(realpath "$bin")" cargo bench -q -p m3ret-benches --bench sql_load
