"""The same decode + preprocess pipeline as m3ret's core::study, in Python: pydicom
(with pylibjpeg), nibabel, Pillow, PyAV, numpy and torch interpolate, one thread.
Prints one JSON line per case: median seconds over --reps runs."""
import argparse
import glob
import io
import json
import os
import statistics
import time

import av
import nibabel as nib
import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from PIL import Image

torch.set_num_threads(1)


def resize_pad(frames):  # frames: [F, C, H, W] float in [0, 1]
    h, w = frames.shape[-2:]
    s = 256 / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (256 - nh) // 2, (256 - nw) // 2
    return F.pad(frames.clamp(0, 1), (left, 256 - nw - left, top, 256 - nh - top))


def image2d(grey01):  # [H, W] or [H, W, 3]
    t = torch.from_numpy(np.ascontiguousarray(grey01, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    t = resize_pad(t.expand(-1, 3, -1, -1))
    return t.expand(4, -1, -1, -1).permute(1, 0, 2, 3).contiguous()


def volume(hu):  # [S, H, W] HU
    t = ((torch.from_numpy(hu.astype(np.float32)).clamp(-1000, 1000) + 1000) / 2000)[:, None]
    t = resize_pad(t)  # [S, 1, 256, 256]
    t = F.interpolate(t.permute(1, 0, 2, 3)[None], size=(64, 256, 256), mode="trilinear", align_corners=False)[0]
    return t.expand(3, -1, -1, -1).contiguous()


def png(b):
    return image2d(np.asarray(Image.open(io.BytesIO(b))) / 255.0)


def jpeg(b):
    return image2d(np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) / 255.0)


def cr_dicom(b):
    ds = pydicom.dcmread(io.BytesIO(b))
    a = ds.pixel_array.astype(np.float32)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    a = np.clip((a - lo) / (hi - lo), 0, 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        a = 1 - a
    return image2d(a)


def nifti(b):
    img = nib.Nifti1Image.from_bytes(b) if b[:2] != b"\x1f\x8b" else nib.Nifti1Image.from_bytes(__import__("gzip").decompress(b))
    return volume(np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0))


def series(bs):
    ds = [pydicom.dcmread(io.BytesIO(b)) for b in bs]
    ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return volume(np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds]))


def mp4(b):
    c = av.open(io.BytesIO(b))
    frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    n = len(frames)
    idx = [((2 * k + 1) * n) // 32 for k in range(16)]
    t = torch.from_numpy(np.stack([frames[i] for i in idx]).astype(np.float32) / 255).permute(0, 3, 1, 2)
    return resize_pad(t).permute(1, 0, 2, 3).contiguous()


p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--generated", required=True)
p.add_argument("--reps", type=int, default=20)
args = p.parse_args()
read = lambda path: open(path, "rb").read()
cases = {
    "png_512": (png, read(os.path.join(args.generated, "xray_512.png"))),
    "jpeg_capsule_224": (jpeg, read(os.path.join(args.data, "endoscopy/capsule-gi_normal/wce_img1310.jpg"))),
    "cr_dicom_j2k_1955x1841": (cr_dicom, read(os.path.join(args.data, "dicom_samples/pydicom-data_RG1_J2KR.dcm"))),
    "ct_nifti_122x101x112": (nifti, read(os.path.join(args.data, "ct/abdomen_volume/totalseg_example_ct.nii.gz"))),
    "ct_nifti_512x512x300": (nifti, read(os.path.join(args.generated, "ct_512x512x300.nii"))),
    "ct_series_20": (series, [read(f) for f in sorted(glob.glob(os.path.join(args.data, "ct/body_dicom-series/*/*.dcm")))]),
    "mp4_pocus_33": (mp4, read(os.path.join(args.data, "ultrasound/lung_covid19/pocus_convex_Cov-Atlas-Dayp1.mp4"))),
}
for name, (fn, data) in cases.items():
    reps = max(3, args.reps // 4) if "512x512x300" in name or "series" in name else args.reps
    out = fn(data)
    assert tuple(out.shape[0:1]) == (3,) and out.shape[2:] == (256, 256), (name, out.shape)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"case": name, "median_s": statistics.median(times)}))
