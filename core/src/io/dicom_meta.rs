//! The DICOM attributes a warehouse joins and filters on (patient, study, series and
//! instance keys, dates, descriptions, geometry), read from the header alone, so a
//! 500 MB multi-frame object costs what its header costs. Keys are DICOM keywords;
//! absent or empty attributes are left out.
//!
//! Two readers give the same answer: a direct one over the raw top-level elements
//! (no allocation per element; it handles the ASCII, Latin-1 and UTF-8 character
//! sets) and `dicom-object`'s parser for everything else (other character sets,
//! values in a VR the direct reader does not expect). The direct reader exists for
//! speed: the parser builds every element of the header, which costs as much as
//! decoding an uncompressed CT slice.

use super::dicom::{self, floats, int, string};
use super::dicom_scan;
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
    /// IS: a decimal integer string.
    Integer,
    /// US: a binary unsigned short.
    Unsigned,
    /// DS: the first decimal string.
    Number,
    /// DS: all its decimal strings.
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
    ("Rows", tags::ROWS, Kind::Unsigned),
    ("Columns", tags::COLUMNS, Kind::Unsigned),
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
        let raw = dicom_scan::raw_header(bytes, LAST_GROUP)?;
        match direct::meta(&raw) {
            Some(meta) => Ok(meta),
            None => Ok(object_meta(&dicom::parse_header(bytes)?)),
        }
    })
}

/// As [`meta`], always through `dicom-object`'s parser: the reference the direct
/// reader is tested against.
pub fn meta_with_parser(bytes: &[u8]) -> Result<Map<String, Value>, IoError> {
    super::guard(|| {
        check_dicom(bytes)?;
        Ok(object_meta(&dicom::parse_header(bytes)?))
    })
}

/// The last group of the attributes read (0028: image pixel description).
const LAST_GROUP: u16 = 0x0028;

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
        Kind::Integer | Kind::Unsigned => int(obj, tag).map(Value::from),
        Kind::Number => floats(obj, tag)?.first().copied().and_then(finite),
        Kind::Numbers => {
            let values = floats(obj, tag)?;
            let values: Option<Vec<Value>> = values.into_iter().map(finite).collect();
            values.filter(|v| !v.is_empty()).map(Value::Array)
        }
    }
}

/// The direct reader over raw elements; `None` hands the file to `dicom-object`.
mod direct {
    use super::{Kind, ATTRIBUTES};
    use crate::io::dicom_scan::{RawElement, RawHeader};
    use crate::modality::Modality;
    use serde_json::{Map, Number, Value};

    const SPECIFIC_CHARACTER_SET: (u16, u16) = (0x0008, 0x0005);

    #[derive(Clone, Copy)]
    enum Charset {
        Ascii,
        Latin1,
        Utf8,
    }

    pub fn meta(raw: &RawHeader) -> Option<Map<String, Value>> {
        let charset = charset(raw)?;
        let mut out = Map::new();
        for &(keyword, tag, kind) in ATTRIBUTES {
            let Some(element) = find(raw, (tag.group(), tag.element())) else {
                continue;
            };
            if let Some(value) = value(element, kind, charset, raw.big_endian)? {
                out.insert(keyword.into(), value);
            }
        }
        out.insert(
            "TransferSyntaxUID".into(),
            Value::from(raw.transfer_syntax.trim_end_matches(['\0', ' '])),
        );
        let modality = out
            .get("Modality")
            .and_then(Value::as_str)
            .and_then(Modality::from_dicom_code);
        out.insert(
            "m3ret_modality".into(),
            modality.map_or(Value::Null, |m| Value::from(m.name())),
        );
        Some(out)
    }

    fn find<'a>(raw: &'a RawHeader, tag: (u16, u16)) -> Option<&'a RawElement<'a>> {
        raw.elements.iter().find(|e| e.tag == tag)
    }

    fn charset(raw: &RawHeader) -> Option<Charset> {
        let Some(element) = find(raw, SPECIFIC_CHARACTER_SET) else {
            return Some(Charset::Ascii);
        };
        match std::str::from_utf8(element.value)
            .ok()?
            .trim_matches(|c: char| c == '\0' || c == ' ')
        {
            "" | "ISO_IR 6" | "ISO 2022 IR 6" => Some(Charset::Ascii),
            "ISO_IR 100" => Some(Charset::Latin1),
            "ISO_IR 192" => Some(Charset::Utf8),
            _ => None,
        }
    }

    /// `Some(None)`: the attribute is empty or unreadable as `dicom-object` would
    /// leave it out; `None`: this reader cannot tell, the parser must.
    fn value(
        e: &RawElement,
        kind: Kind,
        charset: Charset,
        big_endian: bool,
    ) -> Option<Option<Value>> {
        let vr = e.vr.map(|v| [v[0], v[1]]);
        let binary = matches!(&vr, Some(v) if matches!(v, b"OB" | b"OW" | b"OF" | b"OD" | b"OL" | b"OV" | b"SQ"));
        match kind {
            Kind::Text => {
                if binary {
                    return None;
                }
                // VR UN: the bytes as they are, as the parser's reader treats them.
                let text = match (vr, charset) {
                    (Some(v), _) if &v == b"UN" => String::from_utf8_lossy(e.value).into_owned(),
                    (_, Charset::Ascii) if e.value.is_ascii() => {
                        String::from_utf8_lossy(e.value).into_owned()
                    }
                    (_, Charset::Ascii) => return None,
                    (_, Charset::Latin1) => e.value.iter().map(|&b| b as char).collect(),
                    (_, Charset::Utf8) => std::str::from_utf8(e.value).ok()?.to_string(),
                };
                let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
                Some((!text.is_empty()).then(|| Value::from(text)))
            }
            Kind::Unsigned => {
                if !matches!(vr, None | Some([b'U', b'S']) | Some([b'U', b'N'])) {
                    return None;
                }
                let b = e.value.get(..2)?;
                let v = if big_endian && vr != Some(*b"UN") {
                    u16::from_be_bytes([b[0], b[1]])
                } else {
                    u16::from_le_bytes([b[0], b[1]])
                };
                Some(Some(Value::from(v)))
            }
            Kind::Integer | Kind::Number | Kind::Numbers => {
                let expected: &[u8; 2] = if matches!(kind, Kind::Integer) {
                    b"IS"
                } else {
                    b"DS"
                };
                if vr.is_some() && vr != Some(*expected) && vr != Some(*b"UN") {
                    return None;
                }
                let text = std::str::from_utf8(e.value).ok()?;
                let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
                if text.is_empty() {
                    return Some(None);
                }
                let numbers: Option<Vec<f64>> = text
                    .split('\\')
                    .map(|v| v.trim().parse::<f64>().ok())
                    .collect();
                let numbers = numbers?;
                Some(match kind {
                    Kind::Integer => {
                        let first = text.split('\\').next()?.trim().parse::<i64>().ok();
                        first.map(Value::from)
                    }
                    Kind::Number => numbers
                        .first()
                        .copied()
                        .and_then(Number::from_f64)
                        .map(Value::Number),
                    _ => numbers
                        .into_iter()
                        .map(|v| Number::from_f64(v).map(Value::Number))
                        .collect::<Option<Vec<Value>>>()
                        .map(Value::Array),
                })
            }
        }
    }
}
