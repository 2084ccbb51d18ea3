#!/usr/bin/env bash
# Training throughput, small preset, MAE, 2D batches of 8 at 256 x 256, 2 threads:
# m3ret-train (real X-rays through its data loader) against a PyTorch-eager loop of
# the same model on the same files (decoded by two background threads, as
# m3ret-train does), alternating, in one run. Also reports how long the trainer
# waited for its data loader (0 = decoding keeps up with the step).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
steps="${M3RET_BENCH_STEPS:-6}"
out=$(mktemp -d)
data="$(cd ../shared/data 2>/dev/null && pwd || true)"
if [ -n "$data" ]; then
  { echo "path,modality,region,cls,kind,split"; ls "$data"/xray/chest_covid19/*.jpg | sed -n 1,64p | sed 's/$/,xray,chest,chest_covid19,image2d,train/'; } > "$out/manifest.csv"
else
  { echo "path,modality,region,cls,kind,split"; for i in $(seq 8); do echo "$PWD/fixtures/covidrepo_0637.jpg,xray,chest,a,image2d,train"; done; } > "$out/manifest.csv"
fi
rounds="${M3RET_BENCH_ROUNDS:-3}"
cargo build -q --release -p m3ret-train
# Alternate the two implementations so that drifts of the machine hit both alike.
for r in $(seq "$rounds"); do
  "${CARGO_TARGET_DIR:-target}/release/m3ret-train" pretrain --method mae --preset small --manifest "$out/manifest.csv" --out "$out/run$r" \
    --steps $((steps + 1)) --batch-2d 8 --device cpu --workers 2 --threads 2 --checkpoint-every 1000 2>/dev/null
  files=$(tail -n +2 "$out/manifest.csv" | cut -d, -f1 | tr '\n' ' ')
  (cd benches/python && "$M3RET_VENV/bin/python" bench_train.py --steps "$steps" --threads 2 --all --files $files) >> "$out/python.jsonl"
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
rows = [row for r in range(1, rounds + 1) for row in [json.loads(l) for l in open(f"{d}/run{r}/metrics.jsonl")][1:]]  # first step of each run warms up
step = statistics.median(r["step_s"] for r in rows)
wait = statistics.median(r["data_wait_s"] for r in rows)
py_steps = [t for l in open(f"{d}/python.jsonl") for t in json.loads(l)["step_s"]]
py = {"median_step_s": statistics.median(py_steps)}
print(f"| implementation | median s/step | samples/s |\n|---|---|---|")
print(f"| m3ret-train (tch) | {step:.3f} | {8/step:.2f} |")
print(f"| PyTorch eager | {py['median_step_s']:.3f} | {8/py['median_step_s']:.2f} |")
print(f"\nratio (m3ret / PyTorch samples/s): {py['median_step_s']/step:.2f}  ({rounds} alternating rounds of {len(rows)//rounds} steps each)")
print(f"median wait for the data loader per step: {wait*1000:.1f} ms (decoding 8 X-rays, 2 workers)")
PY
