//! What a study is, from a full decode: its format, the modality the file declares,
//! its decoded shape and spacing. The answer to "what did m3ret make of this file?"
//! without running a model.

use super::{series, Format, IoError, Limits, Values, Volume};
use serde_json::{json, Map, Value};

/// One file of any accepted format, or a DICOM series given slice by slice.
pub fn study_info(buffers: &[&[u8]], limits: &Limits) -> Result<Map<String, Value>, IoError> {
    let volume = match buffers {
        [] => return Err(IoError::Empty),
        [one] => super::read(one, limits)?,
        many => {
            if let Some(i) = many
                .iter()
                .position(|b| super::sniff(b) != Some(Format::Dicom))
            {
                return Err(IoError::invalid(
                    Format::DicomSeries,
                    format!(
                        "buffer {} is not DICOM: a list is read as a DICOM series",
                        i + 1
                    ),
                ));
            }
            super::guard(|| series::read(many, limits))?
        }
    };
    Ok(describe(&volume))
}

fn describe(v: &Volume) -> Map<String, Value> {
    let layout = if v.frames == 1 {
        "image2d"
    } else if v.is_video {
        "video"
    } else {
        "volume"
    };
    let value = json!({
        "format": v.format.name(),
        "modality": v.modality.map(|m| m.name()),
        "layout": layout,
        "frames": v.frames,
        "rows": v.rows,
        "columns": v.cols,
        "channels": v.channels,
        "values": match v.values { Values::EightBit => "8-bit", Values::Rescaled => "rescaled" },
        "spacing_mm": v.spacing,
        "monochrome1": v.inverted,
    });
    match value {
        Value::Object(map) => map,
        _ => unreachable!("json! of an object"),
    }
}
