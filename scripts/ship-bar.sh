#!/usr/bin/env bash
# Scores a run's teacher against issue 30's bar to ship, on the training split only:
# the shipped readout (grid4x4 over all blocks, centred per modality, 256 shared
# whitened axes, shrinkage 100) fitted on one half of the training split (train:a) and
# scored on the other (train:b), beside the untrained encoder and raw pixels read out
# the same way. The held-out split is never read, so the figures may decide a ship.
#
#   scripts/ship-bar.sh [RUN] [OUT]     RUN: a pretraining folder (default models/run)
#                                       OUT: where the snapshot, model files and report go
#                                            (default ship-bar/; not committed)
#
# The run may be training while this runs: its checkpoint folder is replaced, by a
# rename, every 50 steps, so the script copies it first and scores the copy; a copy
# during which the run's step changed (it may hold files of two steps) is made again.
# `nice` lets the run go first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
train=${M3RET_TRAIN_BIN:-${CARGO_TARGET_DIR:-target}/release/m3ret-train}
[ -x "$train" ] || cargo build --release -p m3ret-train
run=${1:-models/run}
out=${2:-ship-bar}
manifest=$run/corpus.csv
[ -f "$manifest" ] || python3 scripts/split_corpus.py ../shared/data "$manifest"
mkdir -p "$out"

# A field of a checkpoint's state.json: step, or one of the run's settings.
state_of() { python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s.get(sys.argv[2], s["settings"].get(sys.argv[2])))' "$1" "$2" 2>/dev/null; }
snapshot=$out/checkpoint
for try in 1 2 3 4 5; do
    rm -rf "$snapshot"
    before=$(state_of "$run/checkpoint/state.json" step || true)
    if cp -r "$run/checkpoint" "$snapshot" 2>/dev/null && [ -f "$snapshot/model.safetensors" ] \
        && [ -n "$before" ] && [ "$(state_of "$run/checkpoint/state.json" step || true)" = "$before" ]; then
        break
    fi
    [ "$try" = 5 ] && { echo "could not copy $run/checkpoint" >&2; exit 1; }
    sleep 2
done
step=$before
depth=$(state_of "$snapshot/state.json" depth)
echo "scoring the teacher of $run at step $step"

nice -n 10 "$train" export --checkpoint "$snapshot" --out "$out/teacher.safetensors" --dtype f32
nice -n 10 "$train" standardize --model "$out/teacher.safetensors" --manifest "$manifest" \
    --split train:a --max-per-class 200 --pooling grid4x4 --pool-blocks "$depth" --centering modality \
    --whiten 256 --whitening global --shrinkage 100 --out "$out/teacher-std.safetensors" \
    --dtype f16 --device cpu
nice -n 10 "$train" eval --model "$out/teacher-std.safetensors" --manifest "$manifest" \
    --split train:b --max-per-class 200 --fit-split train:a --fit-max-per-class 200 \
    --whiten 256 --shrinkage 100 --out "$out/eval-step$step" --device cpu
echo "report: $out/eval-step$step/report.md (the whitened-256 rows are the bar's)"
