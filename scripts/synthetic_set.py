#!/usr/bin/env python3
"""A synthetic retrieval set that only a learned, invariant encoder retrieves well.

Eight classes of shapes (disk, ring, square, frame, triangle, cross, bar, star). A
128 x 128 grey image holds copies of one shape (--copies), each at a random position,
size (--radius) and rotation, on a background of random level (--background) and noise,
the shapes a random amount brighter (--lift). Nearest neighbours by raw pixels find
images of the same brightness, with bright blobs at the same places, not the same
shape. The shape is what every crop of an image shares, so an encoder that learned
what SimDINO's views teach (crops, flips, intensity and contrast changes, blur) should
find the same shape anywhere.

Versions (docs/training.md tables each): a first one drew one shape per image, which
left most local crops with background only (the trained encoder stayed at chance); a
second varied background level, gradient and noise far beyond what the views vary (the
encoder retrieved by those); the third (these flags' defaults: 5-10 copies, radius
7-16, background 0.1-0.3, lift 0.4-0.6) keeps the nuisances within the views' default
jitter; the fourth filled the image with 20-30 smaller copies (radius 6-11) on a
background of 0.05-0.45, lift 0.3-0.5, with the views' jitter widened to match. The
fifth, which scripts/synthetic_check.sh draws, narrows the background (0.15-0.35) and
the lift (0.35-0.45) well inside the views' widened jitter, so that an image's own
brightness is no longer a feature its crops share and other images lack (one SimDINO
can learn; docs/training.md), and draws 12-16 copies of radius 9-15, large enough that a disk
and a square, or a ring and a frame, differ at the scale of a patch.

Written as a folder tree xray/<shape>/<n>.png (the trainer's folder-tree manifest;
"xray" only because the set is 2D and grey). Standard library only (no numpy).

    python3 scripts/synthetic_set.py OUT --per-class 150 --seed 1
"""

import argparse
import math
import random
import struct
import zlib
from pathlib import Path

SIDE = 128


def inside(shape, u, v):
    """Whether the point (u, v) of the shape's own frame (unit size) is in the shape."""
    r = math.hypot(u, v)
    if shape == "disk":
        return r <= 1.0
    if shape == "ring":
        return 0.55 <= r <= 1.0
    if shape == "square":
        return abs(u) <= 0.8 and abs(v) <= 0.8
    if shape == "frame":
        return max(abs(u), abs(v)) <= 0.85 and max(abs(u), abs(v)) >= 0.5
    if shape == "triangle":
        # Equilateral, centred: three half-planes.
        return all(
            u * math.cos(a) + v * math.sin(a) <= 0.5
            for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)
        )
    if shape == "cross":
        return (abs(u) <= 0.3 and abs(v) <= 1.0) or (abs(v) <= 0.3 and abs(u) <= 1.0)
    if shape == "bar":
        return abs(u) <= 1.0 and abs(v) <= 0.25
    if shape == "star":
        return r <= 0.55 + 0.45 * math.cos(5 * math.atan2(v, u))
    raise ValueError(shape)


SHAPES = ["disk", "ring", "square", "frame", "triangle", "cross", "bar", "star"]


def render(shape, rng, look):
    """One image as rows of bytes: copies of `shape` on a noisy background, as `look` says."""
    # Intensities and noise should vary from image to image no more than the views'
    # intensity shift and contrast change do (the check sets those to cover `look`):
    # what the views do not vary, SimDINO learns as a feature, and a per-image background
    # level or noise level shared by every crop would be learned before the shape.
    background = rng.uniform(*look.background)
    foreground = background + rng.uniform(*look.lift)
    gx, gy = 0.0, 0.0
    noise = rng.uniform(0.02, 0.04)
    cover = [[0.0] * SIDE for _ in range(SIDE)]
    for _ in range(rng.randint(*look.copies)):
        radius = rng.uniform(*look.radius)
        cx, cy = rng.uniform(0, SIDE), rng.uniform(0, SIDE)
        angle = rng.uniform(0, 2 * math.pi)
        ca, sa = math.cos(angle), math.sin(angle)
        reach = int(radius * 1.5) + 1
        for y in range(max(0, int(cy) - reach), min(SIDE, int(cy) + reach + 1)):
            for x in range(max(0, int(cx) - reach), min(SIDE, int(cx) + reach + 1)):
                # 2 x 2 supersampling for smooth edges; copies may overlap.
                inside_count = 0
                for dy in (0.25, 0.75):
                    for dx in (0.25, 0.75):
                        px, py = (x + dx - cx) / radius, (y + dy - cy) / radius
                        inside_count += inside(shape, ca * px + sa * py, -sa * px + ca * py)
                cover[y][x] = max(cover[y][x], inside_count / 4)
    rows = []
    for y in range(SIDE):
        row = bytearray(SIDE)
        for x in range(SIDE):
            base = background + gx * (x / SIDE - 0.5) + gy * (y / SIDE - 0.5)
            value = base + (foreground - base) * cover[y][x] + rng.gauss(0.0, noise)
            row[x] = max(0, min(255, round(value * 255)))
        rows.append(bytes(row))
    return rows


def write_png(path, rows):
    """An 8-bit greyscale PNG."""
    raw = b"".join(b"\x00" + r for r in rows)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", len(rows[0]), len(rows), 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write xray/<shape>/<n>.png into")
    p.add_argument("--per-class", type=int, default=150, help="images per shape")
    p.add_argument("--seed", type=int, default=1, help="random seed (use another for a test set)")
    # The defaults draw the set the first checks ran on ("v3" in docs/training.md).
    p.add_argument("--copies", type=int, nargs=2, default=[5, 10], metavar=("MIN", "MAX"), help="copies of the shape per image")
    p.add_argument("--radius", type=float, nargs=2, default=[7.0, 16.0], metavar=("MIN", "MAX"), help="shape radius, pixels")
    p.add_argument("--background", type=float, nargs=2, default=[0.1, 0.3], metavar=("MIN", "MAX"), help="background level, on [0, 1]")
    p.add_argument("--lift", type=float, nargs=2, default=[0.4, 0.6], metavar=("MIN", "MAX"), help="shape level above the background")
    args = p.parse_args()
    rng = random.Random(args.seed)
    for shape in SHAPES:
        folder = args.out / "xray" / shape
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(args.per_class):
            write_png(folder / f"{n:04d}.png", render(shape, rng, args))
    print(f"wrote {len(SHAPES) * args.per_class} images to {args.out}")


if __name__ == "__main__":
    main()
