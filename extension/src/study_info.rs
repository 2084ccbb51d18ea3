//! What a file is, before (or instead of) embedding it:
//!
//! - `m3ret_dicom_meta(bytea)` / `(bytea[])`: the DICOM keys a warehouse joins on
//!   (PatientID, AccessionNumber, the UIDs, dates, geometry), read from the header
//!   without decoding the pixels;
//! - `m3ret_study_info(bytea)` / `(bytea[])`: format, declared modality and decoded
//!   shape of any supported file or DICOM series.

use crate::bytea_array::{elements, one_dimensional};
use crate::error::raise;
use m3ret_core::io::{dicom_meta, info, IoError, Limits};
use pgrx::datum::Array;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::prelude::*;
use pgrx::JsonB;

fn read_error(what: &str, e: IoError) -> ! {
    let code = match e {
        IoError::TooLarge(_) => PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        _ => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
    };
    raise(code, format!("{what}: {e}"))
}

/// The header attributes of one DICOM object, by keyword (PatientID, StudyInstanceUID,
/// AccessionNumber, StudyDate, Modality, Rows, PixelSpacing, ...), its
/// TransferSyntaxUID and the m3ret modality it maps to; absent attributes are left out.
/// Reads the header only, never the pixels.
#[pg_extern(immutable, parallel_safe, strict)]
fn m3ret_dicom_meta(data: &[u8]) -> JsonB {
    let meta =
        dicom_meta::meta(data).unwrap_or_else(|e| read_error("cannot read the DICOM header", e));
    JsonB(meta.into())
}

/// A DICOM series' attributes: its first slice's in the order m3ret_embed stacks
/// them, plus NumberOfSlices and SOPInstanceUIDs in that order. All slices must be of
/// one series.
#[pg_extern(immutable, parallel_safe, strict, name = "m3ret_dicom_meta")]
fn m3ret_dicom_meta_series(data: Array<'_, &[u8]>) -> JsonB {
    let data = one_dimensional(data, "series");
    let slices = elements(data.iter(), "series");
    let (meta, _) = dicom_meta::series_meta(&slices)
        .unwrap_or_else(|e| read_error("cannot read the DICOM series", e));
    JsonB(meta.into())
}

/// What m3ret makes of a file (DICOM, NIfTI, PNG, JPEG, MP4): format, the modality
/// the file declares, layout (image2d, video, volume), decoded frames, rows,
/// columns, channels and spacing. Decodes the whole file under the usual limits.
#[pg_extern(immutable, parallel_safe, strict)]
fn m3ret_study_info(data: &[u8]) -> JsonB {
    let info = info::study_info(&[data], &Limits::default())
        .unwrap_or_else(|e| read_error("cannot read the study", e));
    JsonB(info.into())
}

/// As m3ret_study_info for a DICOM series given one slice per element.
#[pg_extern(immutable, parallel_safe, strict, name = "m3ret_study_info")]
fn m3ret_study_info_series(data: Array<'_, &[u8]>) -> JsonB {
    let data = one_dimensional(data, "series");
    let slices = elements(data.iter(), "series");
    let info = info::study_info(&slices, &Limits::default())
        .unwrap_or_else(|e| read_error("cannot read the series", e));
    JsonB(info.into())
}
