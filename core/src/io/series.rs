//! A DICOM series (one file per slice) assembled into one volume: slices sorted by
//! ImagePositionPatient projected on the slice normal (InstanceNumber when positions
//! are missing), with rows, columns and orientation checked for consistency.

use super::dicom::{self, Attributes};
use super::{Format, IoError, Limits, Volume};

fn invalid(reason: impl Into<String>) -> IoError {
    IoError::invalid(Format::DicomSeries, reason)
}

struct Slice {
    attrs: Attributes,
    volume: Volume,
}

pub fn read(buffers: &[&[u8]], limits: &Limits) -> Result<Volume, IoError> {
    if buffers.is_empty() {
        return Err(invalid("no slices given"));
    }
    if buffers.len() > limits.max_frames {
        return Err(IoError::TooLarge(format!(
            "{} slices exceeds the limit of {}",
            buffers.len(),
            limits.max_frames
        )));
    }
    let mut slices = Vec::with_capacity(buffers.len());
    for (i, bytes) in buffers.iter().enumerate() {
        let at = |e: IoError| invalid(format!("slice {}: {e}", i + 1));
        let obj = dicom::parse(bytes).map_err(at)?;
        let attrs = dicom::attributes(&obj).map_err(at)?;
        if i == 0 {
            // The whole series' size, before decoding any of it.
            limits
                .check_geometry(
                    buffers.len(),
                    attrs.rows,
                    attrs.cols,
                    attrs.samples_per_pixel,
                )
                .map_err(IoError::TooLarge)?;
        }
        let volume = dicom::read_object(&obj, limits).map_err(at)?;
        if volume.frames != 1 {
            return Err(invalid(format!(
                "slice {} has {} frames: a series is one frame per file",
                i + 1,
                volume.frames
            )));
        }
        slices.push(Slice { attrs, volume });
    }
    check_consistent(&slices)?;
    let (slices, positions) = sort_slices(slices);
    Ok(assemble(slices, positions))
}

fn check_consistent(slices: &[Slice]) -> Result<(), IoError> {
    let first = &slices[0];
    for (i, s) in slices.iter().enumerate().skip(1) {
        if (s.volume.rows, s.volume.cols, s.volume.channels)
            != (first.volume.rows, first.volume.cols, first.volume.channels)
        {
            return Err(invalid(format!(
                "slice {} is {} x {} x {}, slice 1 is {} x {} x {}",
                i + 1,
                s.volume.rows,
                s.volume.cols,
                s.volume.channels,
                first.volume.rows,
                first.volume.cols,
                first.volume.channels
            )));
        }
        if let (Some(a), Some(b)) = (first.attrs.image_orientation, s.attrs.image_orientation) {
            if a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-3) {
                return Err(invalid(format!(
                    "slice {} has orientation {b:?}, slice 1 has {a:?}",
                    i + 1
                )));
            }
        }
    }
    Ok(())
}

/// Where a slice lies, from its header: all the series order is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SlicePlace {
    pub position: Option<[f64; 3]>,
    pub orientation: Option<[f64; 6]>,
    pub instance_number: Option<i64>,
}

/// The order m3ret stacks slices in: along the first slice's normal when every
/// slice has an ImagePositionPatient and the first an ImageOrientationPatient,
/// else by InstanceNumber (slices without one last); ties keep the given order.
/// Returns the permutation (indices into `places`) and, when sorted by
/// position, each slice's position along the normal in the new order. The
/// loader orders a series' files with this, so that they are stored in the
/// order `m3ret_embed` reads them.
pub fn slice_order(places: &[SlicePlace]) -> (Vec<usize>, Option<Vec<f64>>) {
    let mut order: Vec<usize> = (0..places.len()).collect();
    let normal = places.first().and_then(|p| p.orientation).map(|o| {
        let (r, c) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
        [
            r[1] * c[2] - r[2] * c[1],
            r[2] * c[0] - r[0] * c[2],
            r[0] * c[1] - r[1] * c[0],
        ]
    });
    let along: Option<Vec<f64>> = places
        .iter()
        .map(|p| {
            let (p, n) = (p.position?, normal?);
            Some(p[0] * n[0] + p[1] * n[1] + p[2] * n[2])
        })
        .collect();
    match along {
        Some(along) => {
            order.sort_by(|&a, &b| along[a].total_cmp(&along[b]));
            let sorted = order.iter().map(|&i| along[i]).collect();
            (order, Some(sorted))
        }
        None => {
            order.sort_by_key(|&i| places[i].instance_number.unwrap_or(i64::MAX));
            (order, None)
        }
    }
}

/// The slices in [`slice_order`], with their positions along the normal if known.
fn sort_slices(slices: Vec<Slice>) -> (Vec<Slice>, Option<Vec<f64>>) {
    let places: Vec<SlicePlace> = slices.iter().map(|s| s.attrs.place()).collect();
    let (order, positions) = slice_order(&places);
    let mut slots: Vec<Option<Slice>> = slices.into_iter().map(Some).collect();
    let sorted = order
        .iter()
        .map(|&i| slots[i].take().expect("a permutation"))
        .collect();
    (sorted, positions)
}

fn assemble(slices: Vec<Slice>, positions: Option<Vec<f64>>) -> Volume {
    let first = &slices[0].volume;
    let slice_spacing = positions
        .filter(|p| p.len() > 1)
        .map(|p| (p[p.len() - 1] - p[0]).abs() / (p.len() - 1) as f64);
    let mut data = Vec::with_capacity(first.data.len() * slices.len());
    for s in &slices {
        data.extend_from_slice(&s.volume.data);
    }
    Volume {
        data,
        frames: slices.len(),
        rows: first.rows,
        cols: first.cols,
        channels: first.channels,
        values: first.values,
        format: Format::DicomSeries,
        modality: first.modality,
        spacing: first
            .spacing
            .map(|s| [slice_spacing.unwrap_or(s[0]), s[1], s[2]]),
        window: first.window,
        inverted: first.inverted,
        is_video: false,
    }
}
