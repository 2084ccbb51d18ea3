#!/usr/bin/env python3
"""Pick demo studies from the development corpus: held-out items only (the default
model never trained on them), a few per class, every modality.

Usage: demo_corpus.py DATA_DIR OUT_CSV [PER_CLASS]

Writes study_id,modality,region,label,path,licence (paths absolute), the file
sql/demo.sql loads with \\copy. Writes only the header if DATA_DIR has no
manifest. Standard library only.
"""
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from split_corpus import side  # noqa: E402  (the same held-out rule as the training run)

KINDS = {"image2d", "video", "volume"}


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    data, out = os.path.abspath(sys.argv[1]), sys.argv[2]
    per_class = int(sys.argv[3]) if len(sys.argv) == 4 else 8
    rows = []
    manifest = os.path.join(data, "manifest.csv")
    if os.path.exists(manifest):
        with open(manifest, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["kind"] in KINDS and side(r, 20) == "heldout"]
    picked, seen = [], {}
    for r in sorted(rows, key=lambda r: r["path"]):
        key = (r["modality"], r["cls"])
        if seen.get(key, 0) < per_class:
            seen[key] = seen.get(key, 0) + 1
            picked.append(r)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "modality", "region", "label", "path", "licence"])
        for i, r in enumerate(picked):
            w.writerow([f"corpus-{i:04d}", r["modality"], r["region"], r["cls"], os.path.join(data, r["path"]), r["license"]])
    print(f"{len(picked)} held-out studies in {len(seen)} classes", file=sys.stderr)


if __name__ == "__main__":
    main()
