//! The paper's canonical tensor: `3 x S x 256 x 256` (channel, slice or frame,
//! height, width), values in [0, 1] (section 3.1 and 3.4):
//!
//! - intensity: 8-bit /255; CT HU clipped to [-1000, 1000]; MRI by a per-volume
//!   0.5/99.5 percentile window; other 16-bit images by their DICOM VOI window, else
//!   a percentile window; MONOCHROME1 inverted;
//! - the longer of height and width resized to 256 keeping the aspect ratio (bilinear,
//!   antialiased when shrinking), the shorter zero-padded (centred);
//! - 2D images (and single CT/MRI slices) replicated to S = 4; video sampled to 16
//!   frames; CT and MRI volumes resized to 64 slices (linear along the slice axis);
//!   grey replicated to 3 channels.

use crate::io::{Values, Volume};
use crate::modality::Modality;
use crate::model::config::InputSpec;
use tch::{Kind, Tensor};

/// Which frames of a video make the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSampling {
    /// Evenly spaced (segment centres): the same file always gives the same tensor.
    Uniform,
    /// Random sorted frames from a seed (training).
    Random(u64),
}

/// How the tensor was built, for callers to report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Image2d,
    Video,
    Volume,
}

pub fn layout(volume: &Volume, modality: Modality) -> Layout {
    if volume.frames == 1 {
        Layout::Image2d
    } else if volume.is_video || !modality.is_volume() {
        Layout::Video
    } else {
        Layout::Volume
    }
}

/// The frame indices `sampling` picks out of `total`.
pub fn sample_frames(total: usize, wanted: usize, sampling: FrameSampling) -> Vec<usize> {
    match sampling {
        FrameSampling::Uniform => (0..wanted)
            .map(|k| ((2 * k + 1) * total) / (2 * wanted))
            .collect(),
        FrameSampling::Random(seed) => {
            let mut rng = crate::rng::SplitMix64::new(seed ^ 0x9E37_79B9_7F4A_7C15);
            let mut next = || rng.next_u64();
            let mut idx: Vec<usize> = (0..wanted)
                .map(|_| (next() % total as u64) as usize)
                .collect();
            idx.sort_unstable();
            idx
        }
    }
}

/// The canonical tensor of `volume` read as `modality`; also returns the frame
/// indices used when it is a video.
///
/// Work is ordered to touch as few samples as possible: intensities are mapped in
/// one pass over the kept samples, grey stays one channel until the end, and a
/// volume with more slices than wanted is resized along the slices first.
pub fn canonical(
    volume: Volume,
    modality: Modality,
    spec: &InputSpec,
    sampling: FrameSampling,
) -> (Tensor, Option<Vec<usize>>) {
    let layout = layout(&volume, modality);
    let mapping = intensity_mapping(&volume, modality);
    let (data, frames, indices) = match layout {
        Layout::Video => {
            let idx = sample_frames(volume.frames, spec.frames_video as usize, sampling);
            (select_frames(&volume, &idx), idx.len(), Some(idx))
        }
        _ => {
            let frames = volume.frames;
            (volume.data, frames, None)
        }
    };
    let data = map_intensities(data, mapping);
    let x = Tensor::from_slice(&data)
        .view([
            frames as i64,
            volume.rows as i64,
            volume.cols as i64,
            volume.channels as i64,
        ])
        .permute([0, 3, 1, 2]);
    drop(data);
    let x = match layout {
        Layout::Volume if frames as i64 > spec.slices_volume => {
            resize_in_plane(&resize_slices(&x, spec.slices_volume), spec.image_size)
        }
        Layout::Volume => resize_slices(&resize_in_plane(&x, spec.image_size), spec.slices_volume),
        _ => resize_in_plane(&x, spec.image_size),
    };
    let x = if volume.channels == 1 {
        x.expand([-1, 3, -1, -1], false)
    } else {
        x
    };
    let x = match layout {
        Layout::Image2d => x.expand([spec.slices_2d, -1, -1, -1], false),
        _ => x,
    };
    // [S, 3, H, W] -> [3, S, H, W]
    (x.permute([1, 0, 2, 3]).contiguous(), indices)
}

/// The frames at `idx`, samples `[F][H][W][C]`.
fn select_frames(volume: &Volume, idx: &[usize]) -> Vec<f32> {
    let per = volume.rows * volume.cols * volume.channels;
    let mut data = Vec::with_capacity(per * idx.len());
    for &i in idx {
        data.extend_from_slice(&volume.data[i * per..(i + 1) * per]);
    }
    data
}

/// value -> clamp((value - low) / (high - low), 0, 1), inverted for MONOCHROME1.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    low: f32,
    high: f32,
    invert: bool,
}

/// The intensity window the module comment describes, for this volume and modality.
fn intensity_mapping(volume: &Volume, modality: Modality) -> Mapping {
    let (low, high) = match volume.values {
        Values::EightBit => (0.0, 255.0),
        Values::Rescaled if modality == Modality::Ct => (-1000.0, 1000.0),
        Values::Rescaled => match (modality, volume.window) {
            (Modality::Mri, _) | (_, None) => percentile_window(&volume.data),
            (_, Some((center, width))) => dicom_window(center, width),
        },
    };
    Mapping {
        low: low as f32,
        high: high.max(low + 1e-6) as f32,
        invert: volume.inverted,
    }
}

/// One vectorisable pass over the samples, in place.
fn map_intensities(mut data: Vec<f32>, m: Mapping) -> Vec<f32> {
    let scale = 1.0 / (m.high - m.low);
    for v in data.iter_mut() {
        let u = ((*v - m.low) * scale).clamp(0.0, 1.0);
        *v = if m.invert { 1.0 - u } else { u };
    }
    data
}

/// DICOM's linear VOI window as (low, high) bounds.
fn dicom_window(center: f64, width: f64) -> (f64, f64) {
    let width = width.max(1.0);
    (
        center - 0.5 - (width - 1.0) / 2.0,
        center - 0.5 + (width - 1.0) / 2.0,
    )
}

/// The 0.5th and 99.5th percentiles, over at most ~2M evenly strided samples.
pub fn percentile_window(data: &[f32]) -> (f64, f64) {
    let stride = data.len().div_ceil(2 << 20).max(1);
    let mut sample: Vec<f32> = data
        .iter()
        .step_by(stride)
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if sample.is_empty() {
        return (0.0, 1.0);
    }
    let mut at = |q: f64| {
        let k = ((sample.len() - 1) as f64 * q).round() as usize;
        *sample.select_nth_unstable_by(k, f32::total_cmp).1 as f64
    };
    let (lo, hi) = (at(0.005), at(0.995));
    if hi > lo {
        (lo, hi)
    } else {
        (lo, lo + 1.0)
    }
}

/// Longer side to `size` keeping the aspect ratio, then zero-padded (centred) to a square.
fn resize_in_plane(frames: &Tensor, size: i64) -> Tensor {
    let shape = frames.size();
    let (h, w) = (shape[2], shape[3]);
    let scale = size as f64 / h.max(w) as f64;
    let (nh, nw) = (
        ((h as f64 * scale).round() as i64).clamp(1, size),
        ((w as f64 * scale).round() as i64).clamp(1, size),
    );
    let resized = if (nh, nw) == (h, w) {
        frames.shallow_clone()
    } else {
        frames
            .to_kind(Kind::Float)
            .contiguous()
            .internal_upsample_bilinear2d_aa([nh, nw], false, None, None)
    };
    let (top, left) = ((size - nh) / 2, (size - nw) / 2);
    resized
        .clamp(0.0, 1.0)
        .constant_pad_nd([left, size - nw - left, top, size - nh - top])
}

/// `[F, 3, H, W]` -> `[slices, 3, H, W]`, linear along F.
fn resize_slices(frames: &Tensor, slices: i64) -> Tensor {
    let shape = frames.size();
    if shape[0] == slices {
        return frames.shallow_clone();
    }
    // trilinear over [1, 3, F, H, W] with H and W unchanged is linear along F.
    let x = frames.permute([1, 0, 2, 3]).unsqueeze(0).contiguous();
    x.upsample_trilinear3d([slices, shape[2], shape[3]], false, None, None, None)
        .squeeze_dim(0)
        .permute([1, 0, 2, 3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_sampling_takes_segment_centres() {
        assert_eq!(
            sample_frames(160, 16, FrameSampling::Uniform),
            (0..16).map(|k| 5 + 10 * k).collect::<Vec<_>>()
        );
        assert_eq!(
            sample_frames(4, 8, FrameSampling::Uniform),
            vec![0, 0, 1, 1, 2, 2, 3, 3]
        );
        let r = sample_frames(100, 16, FrameSampling::Random(1));
        assert_eq!(r, sample_frames(100, 16, FrameSampling::Random(1)));
        assert_ne!(r, sample_frames(100, 16, FrameSampling::Random(2)));
        assert!(r.windows(2).all(|w| w[0] <= w[1]) && r.iter().all(|&i| i < 100));
    }

    #[test]
    fn dicom_window_bounds() {
        assert_eq!(dicom_window(40.5, 81.0), (0.0, 80.0));
    }

    #[test]
    fn percentiles_of_a_ramp() {
        let data: Vec<f32> = (0..=1000).map(|v| v as f32).collect();
        assert_eq!(percentile_window(&data), (5.0, 995.0));
    }
}
