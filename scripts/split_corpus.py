#!/usr/bin/env python3
"""Split the development corpus into a training part and a held-out part.

Usage: split_corpus.py DATA_DIR OUT_CSV [--heldout-percent 20]

Writes one manifest (paths made absolute) whose `split` column is rewritten to
`train` or `heldout`, so that `m3ret-train pretrain --split train` and
`m3ret-train eval --split heldout` never see the same study.

Rules, in order, so that no patient sits on both sides:
- an upstream split is kept: test/testing/val -> heldout, train/training -> train;
- otherwise rows are grouped (patient id from `notes` when the source gives one,
  else a run of 50 consecutive capsule frames, else the file itself) and a group
  goes to heldout when a stable hash of it falls in the held-out percentage.
Only the standard library is used, so it runs before any set-up.
"""
import csv
import hashlib
import os
import re
import sys

UPSTREAM = {"test": "heldout", "testing": "heldout", "val": "heldout",
            "train": "train", "training": "train"}


def group_of(row):
    patient = re.search(r"patientid=([^;]+)", row["notes"])
    if patient:
        return f"{row['source']}:patient:{patient.group(1).strip()}"
    capsule = re.match(r".*/wce_img(\d+)\.", row["path"])
    if capsule:
        # Consecutive capsule frames come from one passage through one gut.
        return f"wce:run:{int(capsule.group(1)) // 50}"
    return row["path"]


def side(row, percent):
    upstream = UPSTREAM.get(row["split"].strip().lower())
    if upstream:
        return upstream
    digest = hashlib.sha1(group_of(row).encode()).digest()
    return "heldout" if digest[0] * 100 // 256 < percent else "train"


def main():
    args = sys.argv[1:]
    percent = 20
    if "--heldout-percent" in args:
        i = args.index("--heldout-percent")
        percent = int(args[i + 1])
        del args[i:i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    data, out = os.path.abspath(args[0]), args[1]
    with open(os.path.join(data, "manifest.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    counts = {}
    for row in rows:
        row["split"] = side(row, percent)
        row["path"] = os.path.join(data, row["path"])
        key = (row["modality"], row["split"])
        counts[key] = counts.get(key, 0) + 1
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    for (modality, part), n in sorted(counts.items()):
        print(f"{modality:10s} {part:8s} {n}")


if __name__ == "__main__":
    main()
