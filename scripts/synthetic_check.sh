#!/usr/bin/env bash
# Does the training learn? SimDINO on a synthetic set of shapes (scripts/synthetic_set.py)
# for a fixed number of steps, then `m3ret-train eval` of the teacher on a second set
# drawn with another seed: R@1 of the trained encoder beside raw pixels and the
# untrained encoder (random-init, seed 1: the run's own starting weights). Issue 30's
# bar: trained R@1 at least 0.2 above the untrained encoder's, in 20 minutes or less.
#
#   scripts/synthetic_check.sh [OUT] [STEPS] [PRETRAIN FLAGS...]
#       (default /tmp/m3ret-synthetic, 900 steps: about 20 minutes on 2 cores; flags are added to the pretrain command,
#       e.g. --eps 2 --alignment-weight 10)
#
# Not part of the tests: it takes minutes and says what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
out=${1:-/tmp/m3ret-synthetic}
steps=${2:-900}
shift $(( $# < 2 ? $# : 2 ))
train=${M3RET_TRAIN_BIN:-${CARGO_TARGET_DIR:-target}/release/m3ret-train}
mkdir -p "$out"
[ -d "$out/train" ] || python3 scripts/synthetic_set.py "$out/train" --per-class 150 --seed 1
[ -d "$out/test" ] || python3 scripts/synthetic_set.py "$out/test" --per-class 60 --seed 2
rm -rf "$out/run"
start=$(date +%s)
"$train" pretrain --method simdino --preset tiny --depth 6 --head-hidden 1024 --image-size 128 \
    --manifest "$out/train" --out "$out/run" --steps "$steps" --lr 3e-4 --teacher-momentum 0.996 --batch-2d 32 \
    --local-views-2d 4 --device cpu --workers 1 --checkpoint-every 100 --seed 1 "$@"
echo "training: $(( $(date +%s) - start )) s"
# The random-init baseline with seed 1 is the run's starting point (pretrain seeds
# libtorch with --seed before it builds the encoder).
"$train" eval --model "$out/run/model.safetensors" --manifest "$out/test" --out "$out/eval" \
    --device cpu --seed 1 | grep -E '^\| xray \|'
