#!/usr/bin/env bash
# Encoder forward throughput, tch vs PyTorch eager, same model, inputs and threads,
# one run. Prints the medians and the ratio (tch items/s over PyTorch items/s).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
THREADS="${M3RET_BENCH_THREADS:-2}"
KINDS="${M3RET_BENCH_KINDS:-2d,video,ct}"
out=$(mktemp -d)
M3RET_BENCH_THREADS=$THREADS M3RET_BENCH_KINDS=$KINDS cargo bench -q -p m3ret-benches --bench model_forward -- --noplot >"$out/rust.txt" 2>&1
(cd benches/python && "$M3RET_VENV/bin/python" bench_forward.py --threads "$THREADS" --kinds "$KINDS" --reps 10) >"$out/python.jsonl"
python3 - "$out" <<'PY'
import json, re, sys
d = sys.argv[1]
rust = {}
text = open(f"{d}/rust.txt").read()
for kind, val, unit in re.findall(r"forward/small/(\w+)\s+time:\s+\[\S+ \S+ (\S+) (\S+)", text):
    rust[kind] = float(val) * {"s": 1, "ms": 1e-3, "µs": 1e-6}[unit]
print(f"{'input':8} {'batch':>5} {'tch s/batch':>12} {'torch s/batch':>14} {'tch/torch throughput':>21}")
for line in open(f"{d}/python.jsonl"):
    p = json.loads(line)
    r = rust.get(p["kind"])
    if r is None:
        print("missing rust result for", p["kind"], "\n", text); continue
    print(f"{p['kind']:8} {p['batch']:>5} {r:>12.4f} {p['median_s']:>14.4f} {p['median_s'] / r:>21.2f}")
PY
