//! Reading medical files from bytes into a [`Volume`]: format sniffing (never from
//! a file name), then one reader per format. Every size a file claims is checked
//! against [`Limits`] before memory is allocated for it.
//!
//! - `sniff`: which format the bytes are;
//! - `dicom.rs`: single and multi-frame DICOM objects; `series.rs`: a list of
//!   single-slice DICOM files assembled into one volume;
//! - `nifti.rs`: NIfTI-1 and NIfTI-2, gzip-compressed or not;
//! - `raster.rs`: PNG and JPEG; `video.rs`: MP4 (H.264 and whatever FFmpeg decodes);
//! - `dicom_meta.rs`: the header attributes a warehouse joins on, without the pixels;
//!   `info.rs`: what a decoded study is (format, shape, spacing).

pub mod codestream;
pub mod dicom;
pub mod dicom_meta;
pub(crate) mod dicom_scan;
pub mod info;
pub mod limits;
pub mod nifti;
pub mod raster;
pub mod series;
pub mod video;

pub use limits::Limits;

use crate::modality::Modality;

/// The formats m3ret reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Dicom,
    #[serde(rename = "dicom-series")]
    DicomSeries,
    Nifti1,
    Nifti2,
    Png,
    Jpeg,
    Mp4,
}

pub const ACCEPTED_FORMATS: &str = "DICOM (with or without preamble), NIfTI-1 or NIfTI-2 (optionally gzip-compressed), PNG, JPEG, MP4";

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Dicom => "dicom",
            Format::DicomSeries => "dicom-series",
            Format::Nifti1 => "nifti1",
            Format::Nifti2 => "nifti2",
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::Mp4 => "mp4",
        }
    }
}

/// How stored values map to intensity, decided by the reader from what the file says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Values {
    /// 0..=255 samples (8-bit images, video frames, 8-bit DICOM).
    EightBit,
    /// Modality values after the DICOM rescale or NIfTI scl_slope/scl_inter (HU for CT).
    Rescaled,
}

/// A decoded study before preprocessing.
#[derive(Debug, Clone)]
pub struct Volume {
    /// Samples in `[frames][rows][cols][channels]` order.
    pub data: Vec<f32>,
    pub frames: usize,
    pub rows: usize,
    pub cols: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    pub values: Values,
    pub format: Format,
    /// The modality the file itself declares (DICOM Modality tag), if any.
    pub modality: Option<Modality>,
    /// (slice, row, column) spacing in mm where the file gives it.
    pub spacing: Option<[f64; 3]>,
    /// The first DICOM VOI window (center, width), if any.
    pub window: Option<(f64, f64)>,
    /// MONOCHROME1: low values are bright.
    pub inverted: bool,
    /// Whether the frames are time (video, cine) rather than space (a volume).
    pub is_video: bool,
}

impl Volume {
    /// The original shape as (frames, rows, columns, channels).
    pub fn shape(&self) -> [usize; 4] {
        [self.frames, self.rows, self.cols, self.channels]
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IoError {
    #[error("empty input: 0 bytes")]
    Empty,
    #[error("unrecognised format: expected {ACCEPTED_FORMATS}")]
    UnknownFormat,
    #[error("input is too large: {0}")]
    TooLarge(String),
    #[error("invalid {format}: {reason}")]
    Invalid {
        format: &'static str,
        reason: String,
    },
    #[error("unsupported {format}: {reason}")]
    Unsupported {
        format: &'static str,
        reason: String,
    },
}

impl IoError {
    pub fn invalid(format: Format, reason: impl Into<String>) -> IoError {
        IoError::Invalid {
            format: format.name(),
            reason: reason.into(),
        }
    }

    pub fn unsupported(format: Format, reason: impl Into<String>) -> IoError {
        IoError::Unsupported {
            format: format.name(),
            reason: reason.into(),
        }
    }
}

/// What the bytes are, from their magic numbers. Gzip is reported as NIfTI-1 when
/// it inflates to one, which [`read`] finds out; here it is `None` only for bytes
/// no reader accepts.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.len() >= 132 && &bytes[128..132] == b"DICM" || bytes.starts_with(b"DICM") {
        return Some(Format::Dicom);
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some(Format::Png);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some(Format::Jpeg);
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return Some(Format::Mp4);
    }
    nifti::sniff(bytes)
}

/// Reads one buffer of any accepted format.
///
/// A panic inside a third-party decoder (a bug of theirs on input they did not
/// expect) becomes an error here instead of ending the caller's process.
pub fn read(bytes: &[u8], limits: &Limits) -> Result<Volume, IoError> {
    guard(|| read_unguarded(bytes, limits))
}

/// Runs a reader, turning a panic inside a decoder into an error.
pub fn guard<T>(reader: impl FnOnce() -> Result<T, IoError>) -> Result<T, IoError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(reader)).unwrap_or_else(|payload| {
        let text = crate::panic_text(payload.as_ref()).unwrap_or("unknown failure");
        Err(IoError::Invalid {
            format: "input",
            reason: format!("the decoder failed: {text}"),
        })
    })
}

fn read_unguarded(bytes: &[u8], limits: &Limits) -> Result<Volume, IoError> {
    if bytes.is_empty() {
        return Err(IoError::Empty);
    }
    if bytes.len() > limits.max_input_bytes {
        return Err(IoError::TooLarge(format!(
            "{} bytes exceeds the limit of {}",
            bytes.len(),
            limits.max_input_bytes
        )));
    }
    if nifti::is_gzip(bytes) {
        return nifti::read_gzip(bytes, limits);
    }
    match sniff(bytes) {
        Some(Format::Dicom) => dicom::read(bytes, limits),
        Some(Format::Png | Format::Jpeg) => raster::read(bytes, limits),
        Some(Format::Mp4) => video::read(bytes, limits),
        Some(Format::Nifti1 | Format::Nifti2) => nifti::read(bytes, limits),
        Some(Format::DicomSeries) | None => Err(IoError::UnknownFormat),
    }
}
