"""The keys m3ret_dicom_meta returns, read independently with pydicom.

Usage: dicom_keys.py FILE...  -> JSON {file: {keyword: value}} on stdout.
Text is stripped of padding; empty values are left out, as m3ret does; IS and
US values are integers, DS values floats (a list when the attribute is multi-valued
by definition: PixelSpacing, ImagePositionPatient, ImageOrientationPatient).
"""
import json
import sys

import pydicom

TEXT = ["PatientID", "PatientSex", "PatientAge", "PatientBirthDate", "StudyInstanceUID",
        "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber", "StudyDate", "StudyTime",
        "StudyDescription", "SeriesDescription", "Modality", "BodyPartExamined",
        "Manufacturer", "ManufacturerModelName"]
INTEGER = ["SeriesNumber", "InstanceNumber", "Rows", "Columns", "NumberOfFrames"]
NUMBER = ["SliceThickness"]
NUMBERS = ["PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient"]


def keys(path):
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    ds.get = lambda k: ds.data_element(k) if k in ds else None
    out = {}
    for k in TEXT:
        v = ds.get(k)
        if v is None or v.value in (None, ""):
            continue
        text = str(v.value).strip(" \0")
        if text:
            out[k] = text
    for k in INTEGER:
        v = ds.get(k)
        if v is not None and v.value not in (None, ""):
            out[k] = int(v.value)
    for k in NUMBER:
        v = ds.get(k)
        if v is not None and v.value not in (None, ""):
            out[k] = float(v.value[0] if isinstance(v.value, pydicom.multival.MultiValue) else v.value)
    for k in NUMBERS:
        v = ds.get(k)
        if v is not None and v.value not in (None, ""):
            values = v.value if isinstance(v.value, pydicom.multival.MultiValue) else [v.value]
            out[k] = [float(x) for x in values]
    out["TransferSyntaxUID"] = str(ds.file_meta.TransferSyntaxUID)
    return out


print(json.dumps({p: keys(p) for p in sys.argv[1:]}))
