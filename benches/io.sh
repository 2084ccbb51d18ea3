#!/usr/bin/env bash
# Decode + preprocess per format on one core: m3ret (criterion median) against the
# same pipeline in Python (median), one run. Needs ../shared/data.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
"$M3RET_VENV/bin/pip" install -q -r benches/python/requirements.txt
data="$(cd ../shared/data && pwd)"
gen=/tmp/m3ret-bench-io
[ -f "$gen/ct_512x512x300.nii" ] || "$M3RET_VENV/bin/python" benches/python/make_io_inputs.py "$data" "$gen"
out=$(mktemp -d)
M3RET_DATA="$data" M3RET_BENCH_GENERATED="$gen" cargo bench -q -p m3ret-benches --bench io -- --noplot >"$out/rust.txt" 2>&1
"$M3RET_VENV/bin/python" -W ignore benches/python/bench_io.py --data "$data" --generated "$gen" >"$out/python.jsonl"
python3 - "$out" <<'PY'
import json, re, sys
d = sys.argv[1]
text = open(f"{d}/rust.txt").read()
unit = {"s": 1, "ms": 1e-3, "µs": 1e-6, "ns": 1e-9}
rust = {k: float(v) * unit[u] for k, v, u in re.findall(r"io/(\w+)\s+time:\s+\[\S+ \S+ (\S+) (\S+)", text)}
print(f"{'case':26} {'m3ret ms':>10} {'python ms':>10} {'speed-up':>9} {'m3ret per s':>12}")
for line in open(f"{d}/python.jsonl"):
    p = json.loads(line)
    r = rust.get(p["case"])
    if r is None:
        print("no rust result for", p["case"]); print(text[-3000:]); continue
    print(f"{p['case']:26} {r*1e3:>10.2f} {p['median_s']*1e3:>10.2f} {p['median_s']/r:>9.2f} {1/r:>12.1f}")
PY
