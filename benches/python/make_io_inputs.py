"""Writes the inputs of the I/O benchmark that the corpus lacks, from real files:
an 8-bit 512 x 512 grey PNG (a chest X-ray JPEG re-encoded) and a 512 x 512 x 300
CT volume as uncompressed NIfTI-1 int16 (the 20-slice CT series tiled 15 times)."""
import glob
import os
import sys

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image

data, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
Image.open(os.path.join(data, "xray/chest_covid19/covidrepo_0637.jpg")).convert("L").resize((512, 512)).save(os.path.join(out, "xray_512.png"))
files = sorted(glob.glob(os.path.join(data, "ct/body_dicom-series/*/*.dcm")))
slices = [pydicom.dcmread(f) for f in files]
slices.sort(key=lambda d: float(d.ImagePositionPatient[2]))
hu = np.stack([s.pixel_array.astype(np.int16) for s in slices], -1)  # stored values, rescaled by scl
vol = np.tile(hu, (1, 1, 15)).transpose(1, 0, 2)  # (x, y, z): 512 x 512 x 300
img = nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.0, 1.0]))
img.header.set_slope_inter(float(slices[0].RescaleSlope), float(slices[0].RescaleIntercept))
nib.save(img, os.path.join(out, "ct_512x512x300.nii"))
