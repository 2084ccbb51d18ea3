//! The public entry points: bytes in, the canonical tensor and what was detected out.
//! The extension and the trainer read studies only through these.

use crate::io::{self, Format, IoError, Limits, Volume};
use crate::modality::{Modality, ModalityChoice, VALID_MODALITIES};
use crate::model::config::InputSpec;
use crate::preprocess::{self, FrameSampling, Layout};
use tch::Tensor;

/// How to read a study.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    pub modality: ModalityChoice,
    pub limits: Limits,
    pub sampling: FrameSampling,
    pub input: InputSpec,
}

impl StudyOptions {
    pub fn new(modality: ModalityChoice) -> StudyOptions {
        StudyOptions {
            modality,
            limits: Limits::default(),
            sampling: FrameSampling::Uniform,
            input: InputSpec::default(),
        }
    }

    /// Options for a model: its input spec (image size, slices, frames) decides the tensor.
    pub fn for_input(modality: ModalityChoice, input: &InputSpec) -> StudyOptions {
        StudyOptions {
            input: input.clone(),
            ..StudyOptions::new(modality)
        }
    }
}

/// What the reader found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Detected {
    pub format: Format,
    pub modality: Modality,
    pub layout: Layout,
    /// (frames or slices, rows, columns, channels) as decoded.
    pub shape: [usize; 4],
    /// (slice, row, column) spacing in mm, where the file gives it.
    pub spacing: Option<[f64; 3]>,
    /// The frames a video's tensor was built from.
    pub frame_indices: Option<Vec<usize>>,
}

/// A study ready for the model.
#[derive(Debug)]
pub struct Study {
    /// `[3, S, 256, 256]`, f32 in [0, 1].
    pub tensor: Tensor,
    pub detected: Detected,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StudyError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("modality auto needs a DICOM file with a known Modality tag; this {0} has none, so give one of {VALID_MODALITIES}")]
    NoModality(&'static str),
    #[error(
        "a list of buffers must be all DICOM slices or all PNG/JPEG frames; buffer {0} is {1}"
    )]
    MixedBuffers(usize, String),
}

/// Reads one buffer: a DICOM object, a NIfTI volume, a PNG/JPEG image or an MP4 video.
pub fn load(bytes: &[u8], options: &StudyOptions) -> Result<Study, StudyError> {
    finish(io::read(bytes, &options.limits)?, options)
}

/// One buffer: [`load`]; several (a DICOM series, a video's frames): [`load_many`].
pub fn load_buffers(buffers: &[&[u8]], options: &StudyOptions) -> Result<Study, StudyError> {
    match buffers {
        [one] => load(one, options),
        many => load_many(many, options),
    }
}

/// Reads a list of buffers: the slices of a DICOM series, or the frames of a video
/// as PNG/JPEG images.
pub fn load_many(buffers: &[&[u8]], options: &StudyOptions) -> Result<Study, StudyError> {
    let formats: Vec<Option<Format>> = buffers.iter().map(|b| io::sniff(b)).collect();
    let volume = if formats.iter().all(|f| *f == Some(Format::Dicom)) {
        io::guard(|| io::series::read(buffers, &options.limits))?
    } else if let Some(i) = formats
        .iter()
        .position(|f| !matches!(f, Some(Format::Png | Format::Jpeg)))
    {
        let what = formats[i]
            .map(|f| f.name().to_string())
            .unwrap_or_else(|| "unrecognised".into());
        return Err(StudyError::MixedBuffers(i + 1, what));
    } else {
        frames_as_video(buffers, &options.limits)?
    };
    finish(volume, options)
}

fn frames_as_video(buffers: &[&[u8]], limits: &Limits) -> Result<Volume, StudyError> {
    if buffers.len() > limits.max_frames {
        return Err(IoError::TooLarge(format!(
            "{} frames exceeds the limit of {}",
            buffers.len(),
            limits.max_frames
        ))
        .into());
    }
    let mut frames: Vec<Volume> = Vec::with_capacity(buffers.len());
    for (i, b) in buffers.iter().enumerate() {
        let f = io::guard(|| io::raster::read(b, limits))?;
        if let Some(first) = frames.first() {
            if (f.rows, f.cols, f.channels) != (first.rows, first.cols, first.channels) {
                return Err(IoError::invalid(
                    f.format,
                    format!(
                        "frame {} is {} x {}, frame 1 is {} x {}",
                        i + 1,
                        f.rows,
                        f.cols,
                        first.rows,
                        first.cols
                    ),
                )
                .into());
            }
        }
        frames.push(f);
    }
    let mut video = frames[0].clone();
    limits
        .check_geometry(frames.len(), video.rows, video.cols, video.channels)
        .map_err(IoError::TooLarge)?;
    video.data = frames.iter().flat_map(|f| f.data.iter().copied()).collect();
    video.frames = frames.len();
    video.is_video = frames.len() > 1;
    Ok(video)
}

fn finish(volume: Volume, options: &StudyOptions) -> Result<Study, StudyError> {
    let modality = match options.modality {
        ModalityChoice::Given(m) => m,
        ModalityChoice::Auto => volume
            .modality
            .ok_or(StudyError::NoModality(volume.format.name()))?,
    };
    let layout = preprocess::layout(&volume, modality);
    let (format, shape, spacing) = (volume.format, volume.shape(), volume.spacing);
    let (tensor, frame_indices) =
        preprocess::canonical(volume, modality, &options.input, options.sampling);
    Ok(Study {
        tensor,
        detected: Detected {
            format,
            modality,
            layout,
            shape,
            spacing,
            frame_indices,
        },
    })
}
