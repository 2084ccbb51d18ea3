"""A DICOM archive for benches/sql_load: series of SLICES single-frame CT and MR
slices copied from ../shared/data/dicom_samples, each series with new Study,
Series and SOP Instance UIDs, a patient of its own and slice positions 1 mm apart.

Usage: make_dicom_archive.py SAMPLES_DIR OUT_DIR FILES [SLICES]
"""
import os
import sys

import pydicom
from pydicom.uid import generate_uid

SOURCES = [
    "deid-data_humans_ctbrain1.dcm",     # CT, JPEG baseline, 456 x 510
    "deid-data_humans_ctbrain2.dcm",
    "imageio_dicom_file01.dcm",          # CT, native, 512 x 512
    "niivue_1-001.dcm",                  # MR, implicit VR, 512 x 512
    "pydicom-data_693_J2KR.dcm",         # CT, JPEG 2000, 512 x 512
    "imageio_dicom_file90.dcm",          # MR, JPEG 2000, 256 x 256
]


def main():
    samples, out, files = sys.argv[1], sys.argv[2], int(sys.argv[3])
    slices = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    sources = [pydicom.dcmread(os.path.join(samples, s)) for s in SOURCES]
    written = 0
    series = 0
    while written < files:
        ds = sources[series % len(sources)]
        study_uid, series_uid = generate_uid(), generate_uid()
        folder = os.path.join(out, f"patient{series:05d}", f"series{series:05d}")
        os.makedirs(folder, exist_ok=True)
        for i in range(min(slices, files - written)):
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PatientID = f"BENCH{series:05d}"
            ds.AccessionNumber = f"A{series:07d}"
            ds.InstanceNumber = i + 1
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [0, 0, float(i)]
            ds.save_as(os.path.join(folder, f"{i:04d}.dcm"))
            written += 1
        series += 1
    print(f"{written} files in {series} series under {out}")


main()
