#!/usr/bin/env bash
# Training throughput, small preset, MAE, 2D batches of 8 at 256 x 256, 2 threads:
# m3ret-train (real X-rays through its data loader) against a PyTorch-eager loop of
# the same model and batch (random tensors), in one run. Also reports how long the
# trainer waited for its data loader (0 = decoding keeps up with the device).
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
cargo build -q --release -p m3ret-train
./target/release/m3ret-train pretrain --method mae --preset small --manifest "$out/manifest.csv" --out "$out/run" \
  --steps $((steps + 1)) --batch-2d 8 --device cpu --workers 2 --threads 2 --checkpoint-every 1000 2>/dev/null
(cd benches/python && "$M3RET_VENV/bin/python" bench_train.py --steps "$steps" --threads 2) > "$out/python.json"
python3 - "$out" <<'PY'
import json, statistics, sys
d = sys.argv[1]
rows = [json.loads(l) for l in open(f"{d}/run/metrics.jsonl")][1:]  # the first step warms up
step = statistics.median(r["step_s"] for r in rows)
wait = statistics.median(r["data_wait_s"] for r in rows)
py = json.load(open(f"{d}/python.json"))
print(f"| implementation | median s/step | samples/s |\n|---|---|---|")
print(f"| m3ret-train (tch) | {step:.3f} | {8/step:.2f} |")
print(f"| PyTorch eager | {py['median_step_s']:.3f} | {8/py['median_step_s']:.2f} |")
print(f"\nratio (m3ret / PyTorch samples/s): {py['median_step_s']/step:.2f}")
print(f"median wait for the data loader per step: {wait*1000:.1f} ms (decoding 8 X-rays, 2 workers)")
PY
