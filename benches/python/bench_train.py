"""PyTorch-eager MAE training steps of the M3Ret encoder (small preset) with the
official decoder (512 wide, 8 deep, 16 heads), AdamW (0.9, 0.95), 2D inputs: the
baseline of benches/train.sh. Prints the median seconds per step.

With --files, batches are real images decoded by two background threads into a
bounded queue (as m3ret-train's loader does), so both sides do the same work;
without, one random tensor is reused (compute only)."""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn

from m3ret_vit import Block, Encoder, sincos_3d

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=8)
p.add_argument("--image-size", type=int, default=256)
p.add_argument("--steps", type=int, default=6)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--all", action="store_true", help="also print every step's time")
p.add_argument("--files", nargs="*", default=[], help="JPEG/PNG files to decode into batches")
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)


class Mae(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder("small", cls_token=False)
        self.embed = nn.Linear(384, 512)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 512))
        self.blocks = nn.ModuleList([Block(512, 16) for _ in range(8)])
        self.norm = nn.LayerNorm(512, eps=1e-6)
        self.pred = nn.Linear(512, 3 * 4 * 16 * 16)

    def forward(self, x):
        b = x.shape[0]
        grid = [x.shape[2] // 4, x.shape[3] // 16, x.shape[4] // 16]
        t = self.encoder.patch_embed(x).flatten(2).transpose(1, 2) + sincos_3d(384, grid, x.device)[None]
        n = t.shape[1]
        keep = int(n * 0.25)
        ids_shuffle = torch.rand(b, n).argsort(1)
        ids_restore = ids_shuffle.argsort(1)
        vis = torch.gather(t, 1, ids_shuffle[:, :keep, None].expand(-1, -1, 384))
        for blk in self.encoder.blocks:
            vis = blk(vis)
        vis = self.encoder.norm(vis)
        d = self.embed(vis)
        d = torch.cat([d, self.mask_token.expand(b, n - keep, -1)], 1)
        d = torch.gather(d, 1, ids_restore[:, :, None].expand(-1, -1, 512)) + sincos_3d(512, grid, x.device)[None]
        for blk in self.blocks:
            d = blk(d)
        pred = self.pred(self.norm(d))
        target = x.reshape(b, 3, grid[0], 4, grid[1], 16, grid[2], 16).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, n, -1)
        mask = torch.ones(b, n)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()


def canonical(path):
    """Grey 8-bit image -> [3, 4, S, S] in [0, 1], longer side resized, shorter padded."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image
    a = torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0)[None, None]
    h, w = a.shape[-2:]
    s = args.image_size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    a = F.interpolate(a, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (args.image_size - nh) // 2, (args.image_size - nw) // 2
    a = F.pad(a, (left, args.image_size - nw - left, top, args.image_size - nh - top))
    return a.expand(3, 4, -1, -1).contiguous()


def batches():
    import itertools
    import queue
    import threading
    if not args.files:
        x = torch.rand(args.batch, 3, 4, args.image_size, args.image_size)
        while True:
            yield x
    q = queue.Queue(maxsize=4)
    counter = itertools.count()

    def work():
        while True:
            step = next(counter)
            q.put(torch.stack([canonical(args.files[(step * args.batch + k) % len(args.files)]) for k in range(args.batch)]))

    for _ in range(2):
        threading.Thread(target=work, daemon=True).start()
    while True:
        yield q.get()


model = Mae()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
data = batches()
times = []
for i in range(args.steps + 1):
    x = next(data)
    t0 = time.perf_counter()
    opt.zero_grad()
    loss = model(x)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
    opt.step()
    if i > 0:  # the first step warms up
        times.append(time.perf_counter() - t0)
out = {"impl": "pytorch-eager", "median_step_s": statistics.median(times), "batch": args.batch}
if args.all:
    out["step_s"] = times
print(json.dumps(out))
