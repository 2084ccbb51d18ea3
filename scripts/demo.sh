#!/usr/bin/env bash
# The main job: set everything up, start a local PostgreSQL 15 cluster with m3ret,
# and run the demo queries in sql/. The cluster keeps running afterwards so that you
# can connect to it; the script prints how.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
source scripts/env.sh
bash scripts/install-extension.sh
cargo build -q --release -p m3ret-train

DEMO_DIR="${M3RET_DEMO_DIR:-/tmp/m3ret-demo}"
PORT="${M3RET_DEMO_PORT:-54329}"
BIN=/usr/lib/postgresql/15/bin
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

# A small model trained here on the committed sample files, so that the demo runs
# end to end on a fresh machine. It is a smoke test of the pipeline (24 steps, seconds),
# not a model whose neighbours mean anything clinically.
MODEL="$DEMO_DIR/demo-model.safetensors"
if [ ! -f "$MODEL" ]; then
  echo "[demo] training a small SimDINO model on the sample files (seconds on a CPU)" >&2
  work=$(mktemp -d)
  {
    echo "path,modality,region,cls,kind,split"
    for f in pmnist_train_0000.png covidrepo_0637.jpg; do echo "$PWD/fixtures/$f,xray,chest,xray,image2d,train"; done
    echo "$PWD/fixtures/wce_img1310.jpg,endoscopy,abdomen,capsule,image2d,train"
    echo "$PWD/fixtures/pocus_convex_Cov_recommendations_likebutterfly_mov5.mp4,ultrasound,chest,lung,video,train"
    echo "$PWD/fixtures/totalseg_example_ct.nii.gz,ct,abdomen,ct,volume,train"
    echo "$PWD/fixtures/totalseg_example_mr_sm.nii.gz,mri,abdomen,mri,volume,train"
  } > "$work/manifest.csv"
  "${CARGO_TARGET_DIR:-target}/release/m3ret-train" pretrain --method simdino --preset tiny --depth 4 --image-size 128 \
    --manifest "$work/manifest.csv" --out "$work/run" --steps 24 --batch-2d 4 --batch-video 2 --batch-volume 1 \
    --local-views-2d 2 --local-views-3d 2 --device cpu >/dev/null
  cp "$work/run/model.safetensors" "$MODEL"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$MODEL"
fi

PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'm3ret_demo'" | grep -q 1 \
  || "${PSQL[@]}" -d postgres -c "CREATE DATABASE m3ret_demo"
"${PSQL[@]}" -d m3ret_demo -v fixtures="$PWD/fixtures" -v model_file="$MODEL" -f sql/demo.sql

cat <<MSG

The demo cluster is running. Connect:  psql -h 127.0.0.1 -p $PORT -U postgres m3ret_demo
Stop it:                               $BIN/pg_ctl -D $DEMO_DIR/data stop   (as the postgres user)
MSG
