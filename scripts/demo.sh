#!/usr/bin/env bash
# The main job: set everything up, start a local PostgreSQL 15 cluster with m3ret
# (M3RET_PG=18: PostgreSQL 18, in a demo folder of its own),
# and run the demo queries in sql/. The cluster keeps running afterwards so that you
# can connect to it; the script prints how.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
source scripts/env.sh
bash scripts/install-extension.sh

DEMO_DIR="${M3RET_DEMO_DIR:-/tmp/m3ret-demo$([ "$M3RET_PG" = 15 ] || echo "-pg$M3RET_PG")}"
# 54329 for 15, 54339 for 18: both demos can run side by side.
PORT="${M3RET_DEMO_PORT:-$([ "$M3RET_PG" = 15 ] && echo 54329 || echo 54339)}"
BIN="$M3RET_PG_BIN"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- env -u RUST_BACKTRACE "$@"; else env -u RUST_BACKTRACE "$@"; fi; }

if [ ! -f "$DEMO_DIR/data/PG_VERSION" ]; then
  mkdir -p "$DEMO_DIR"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$DEMO_DIR"
  as_pg "$BIN/initdb" -D "$DEMO_DIR/data" -U postgres -A trust -E UTF8 >/dev/null
  cat >> "$DEMO_DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DEMO_DIR'
CONF
fi
# Restart so that the freshly installed extension library is the one loaded.
as_pg "$BIN/pg_ctl" -D "$DEMO_DIR/data" -l "$DEMO_DIR/server.log" stop -m fast >/dev/null 2>&1 || true
as_pg "$BIN/pg_ctl" -D "$DEMO_DIR/data" -l "$DEMO_DIR/server.log" start -w >/dev/null

# The default model, committed (see models/MODEL_CARD.md), and held-out studies of
# the development corpus when it is present beside the repository.
MODEL="$PWD/models/m3ret-default.safetensors"
CORPUS_CSV="$DEMO_DIR/corpus.csv"
SHARED_DATA="${M3RET_SHARED_DATA:-../shared/data}"
python3 scripts/demo_corpus.py "$SHARED_DATA" "$CORPUS_CSV" "${M3RET_DEMO_PER_CLASS:-8}"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$CORPUS_CSV"

PSQL=("$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'm3ret_demo'" | grep -q 1 \
  || "${PSQL[@]}" -d postgres -c "CREATE DATABASE m3ret_demo"
"${PSQL[@]}" -d m3ret_demo -v model_file="$MODEL" -f sql/demo_setup.sql

# A folder of DICOM files as a PACS export would give it (the committed CT series,
# and the corpus's DICOM samples when present), loaded by m3ret-load with its keys.
cargo build -q --release -p m3ret-load
ARCHIVE="$DEMO_DIR/archive"
rm -rf "$ARCHIVE" && mkdir -p "$ARCHIVE/ct_series"
cp fixtures/ct_series/*.dcm "$ARCHIVE/ct_series/"
[ -d "$SHARED_DATA/dicom_samples" ] && cp -r "$SHARED_DATA/dicom_samples" "$ARCHIVE/samples"
echo "== m3ret-load $ARCHIVE --table pacs --embed"
"${CARGO_TARGET_DIR:-target}/release/m3ret-load" "$ARCHIVE" --table pacs --embed \
  --db "host=127.0.0.1 port=$PORT user=postgres dbname=m3ret_demo" --rejects "$DEMO_DIR/rejects.csv"

"${PSQL[@]}" -d m3ret_demo -v fixtures="$PWD/fixtures" -v corpus_csv="$CORPUS_CSV" -f sql/demo.sql

cat <<MSG

The demo cluster is running. Connect:  psql -h 127.0.0.1 -p $PORT -U postgres m3ret_demo
Stop it:                               $BIN/pg_ctl -D $DEMO_DIR/data stop   (as the postgres user)
MSG
