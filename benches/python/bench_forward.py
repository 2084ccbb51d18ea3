"""PyTorch-eager forward throughput of the M3Ret encoder (the baseline of
benches/model_forward.rs). Prints one JSON line per input kind with the median
seconds per batch over --reps runs."""
import argparse
import json
import statistics
import time

import torch

from m3ret_vit import Encoder

KINDS = {"2d": (8, 4), "video": (2, 16), "ct": (1, 64)}  # batch, slices

p = argparse.ArgumentParser()
p.add_argument("--preset", default="small")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--reps", type=int, default=10)
p.add_argument("--kinds", default="2d,video,ct")
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
model = Encoder(args.preset).eval()
for kind in args.kinds.split(","):
    batch, slices = KINDS[kind]
    x = torch.rand(batch, 3, slices, 256, 256)
    times = []
    with torch.no_grad():
        model.embed(x)  # warm-up
        for _ in range(args.reps):
            t0 = time.perf_counter()
            model.embed(x)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"impl": "pytorch-eager", "kind": kind, "batch": batch, "median_s": med, "items_per_s": batch / med}))
