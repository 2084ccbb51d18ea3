//! The DICOM attributes a warehouse joins and filters on (patient, study, series and
//! instance keys, dates, descriptions, geometry), read from the header alone: the
//! parser stops before Pixel Data, so a 500 MB multi-frame object costs what its
//! header costs. Keys are DICOM keywords; absent or empty attributes are left out.

use super::dicom::{self, floats, int, string};
use super::series::{self, SlicePlace};
use super::{Format, IoError};
use crate::modality::Modality;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, Tag};
use serde_json::{Map, Value};

/// How an attribute's value goes into JSON.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Integer,
    Number,
    Numbers,
}

/// The attributes `m3ret_dicom_meta` returns, by keyword.
const ATTRIBUTES: &[(&str, Tag, Kind)] = &[
    ("PatientID", tags::PATIENT_ID, Kind::Text),
    ("PatientSex", tags::PATIENT_SEX, Kind::Text),
    ("PatientAge", tags::PATIENT_AGE, Kind::Text),
    ("PatientBirthDate", tags::PATIENT_BIRTH_DATE, Kind::Text),
    ("StudyInstanceUID", tags::STUDY_INSTANCE_UID, Kind::Text),
    ("SeriesInstanceUID", tags::SERIES_INSTANCE_UID, Kind::Text),
    ("SOPInstanceUID", tags::SOP_INSTANCE_UID, Kind::Text),
    ("AccessionNumber", tags::ACCESSION_NUMBER, Kind::Text),
    ("StudyDate", tags::STUDY_DATE, Kind::Text),
    ("StudyTime", tags::STUDY_TIME, Kind::Text),
    ("StudyDescription", tags::STUDY_DESCRIPTION, Kind::Text),
    ("SeriesDescription", tags::SERIES_DESCRIPTION, Kind::Text),
    ("SeriesNumber", tags::SERIES_NUMBER, Kind::Integer),
    ("InstanceNumber", tags::INSTANCE_NUMBER, Kind::Integer),
    ("Modality", tags::MODALITY, Kind::Text),
    ("BodyPartExamined", tags::BODY_PART_EXAMINED, Kind::Text),
    ("Manufacturer", tags::MANUFACTURER, Kind::Text),
    (
        "ManufacturerModelName",
        tags::MANUFACTURER_MODEL_NAME,
        Kind::Text,
    ),
    ("Rows", tags::ROWS, Kind::Integer),
    ("Columns", tags::COLUMNS, Kind::Integer),
    ("NumberOfFrames", tags::NUMBER_OF_FRAMES, Kind::Integer),
    ("PixelSpacing", tags::PIXEL_SPACING, Kind::Numbers),
    ("SliceThickness", tags::SLICE_THICKNESS, Kind::Number),
    (
        "ImagePositionPatient",
        tags::IMAGE_POSITION_PATIENT,
        Kind::Numbers,
    ),
    (
        "ImageOrientationPatient",
        tags::IMAGE_ORIENTATION_PATIENT,
        Kind::Numbers,
    ),
];

/// The keywords `meta` can return (besides TransferSyntaxUID and m3ret_modality).
pub fn keywords() -> impl Iterator<Item = &'static str> {
    ATTRIBUTES.iter().map(|a| a.0)
}

/// One DICOM object's header attributes, its TransferSyntaxUID and the m3ret
/// modality its Modality code maps to (`m3ret_modality`, null when none does).
pub fn meta(bytes: &[u8]) -> Result<Map<String, Value>, IoError> {
    super::guard(|| {
        check_dicom(bytes)?;
        Ok(object_meta(&dicom::parse_header(bytes)?))
    })
}

/// A series' attributes: those of its first slice in the order `m3ret_embed`
/// stacks them, plus `NumberOfSlices` and `SOPInstanceUIDs` in that order. All
/// slices must belong to one series (one SeriesInstanceUID, or none at all).
/// Also returns that order, as indices into `buffers`.
pub fn series_meta(buffers: &[&[u8]]) -> Result<(Map<String, Value>, Vec<usize>), IoError> {
    if buffers.is_empty() {
        return Err(IoError::invalid(Format::DicomSeries, "no slices given"));
    }
    let slices = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            meta(b)
                .map_err(|e| IoError::invalid(Format::DicomSeries, format!("slice {}: {e}", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let series_of = |m: &Map<String, Value>| m.get("SeriesInstanceUID").cloned();
    if let Some(i) = slices
        .iter()
        .position(|m| series_of(m) != series_of(&slices[0]))
    {
        return Err(IoError::invalid(
            Format::DicomSeries,
            format!(
                "slice {} is of series {}, slice 1 of series {}",
                i + 1,
                series_of(&slices[i]).unwrap_or(Value::Null),
                series_of(&slices[0]).unwrap_or(Value::Null)
            ),
        ));
    }
    let places: Vec<SlicePlace> = slices.iter().map(place).collect();
    let (order, _) = series::slice_order(&places);
    let uids: Vec<Value> = order
        .iter()
        .map(|&i| {
            slices[i]
                .get("SOPInstanceUID")
                .cloned()
                .unwrap_or(Value::Null)
        })
        .collect();
    let mut first = slices[order[0]].clone();
    first.insert("NumberOfSlices".into(), Value::from(buffers.len()));
    first.insert("SOPInstanceUIDs".into(), Value::Array(uids));
    Ok((first, order))
}

/// Where a slice lies, from the attributes [`meta`] returned.
pub fn place(meta: &Map<String, Value>) -> SlicePlace {
    let numbers = |key: &str| -> Option<Vec<f64>> {
        meta.get(key)?
            .as_array()?
            .iter()
            .map(Value::as_f64)
            .collect()
    };
    SlicePlace {
        position: numbers("ImagePositionPatient")
            .filter(|v| v.len() == 3)
            .map(|v| [v[0], v[1], v[2]]),
        orientation: numbers("ImageOrientationPatient")
            .filter(|v| v.len() == 6)
            .map(|v| [v[0], v[1], v[2], v[3], v[4], v[5]]),
        instance_number: meta.get("InstanceNumber").and_then(Value::as_i64),
    }
}

fn check_dicom(bytes: &[u8]) -> Result<(), IoError> {
    if bytes.is_empty() {
        return Err(IoError::Empty);
    }
    match super::sniff(bytes) {
        Some(Format::Dicom) => Ok(()),
        Some(other) => Err(IoError::invalid(
            Format::Dicom,
            format!("the bytes are {}, not DICOM", other.name()),
        )),
        None => Err(IoError::invalid(
            Format::Dicom,
            "no DICM magic at byte 0 or 128",
        )),
    }
}

fn object_meta(obj: &DefaultDicomObject) -> Map<String, Value> {
    let mut out = Map::new();
    for &(keyword, tag, kind) in ATTRIBUTES {
        if let Some(value) = value(obj, tag, kind) {
            out.insert(keyword.into(), value);
        }
    }
    let syntax = obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']);
    out.insert("TransferSyntaxUID".into(), Value::from(syntax));
    let modality = string(obj, tags::MODALITY)
        .as_deref()
        .and_then(Modality::from_dicom_code);
    out.insert(
        "m3ret_modality".into(),
        modality.map_or(Value::Null, |m| Value::from(m.name())),
    );
    out
}

fn value(obj: &DefaultDicomObject, tag: Tag, kind: Kind) -> Option<Value> {
    let finite = |v: f64| serde_json::Number::from_f64(v).map(Value::Number);
    match kind {
        Kind::Text => string(obj, tag).filter(|s| !s.is_empty()).map(Value::from),
        Kind::Integer => int(obj, tag).map(Value::from),
        Kind::Number => floats(obj, tag)?.first().copied().and_then(finite),
        Kind::Numbers => {
            let values = floats(obj, tag)?;
            let values: Option<Vec<Value>> = values.into_iter().map(finite).collect();
            values.filter(|v| !v.is_empty()).map(Value::Array)
        }
    }
}
