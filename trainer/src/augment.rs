//! SimDINO's multi-crop views (appendix B): random crop -> resize -> random flip ->
//! random intensity shift -> Gaussian blur or contrast, per sample. Volumes and
//! videos are cropped in 3D (slices too) and resized back to their slice count.
//! Global views keep the input size; local views are 3/8 of it (96 px at 256),
//! rounded to the patch size.

use crate::loader::mix;
use tch::{Kind, Tensor};

pub struct Views {
    pub global: Vec<Tensor>,
    pub local: Vec<Tensor>,
}

/// How many local views a step takes, the area fraction of the input each crops, and
/// how strongly every view's intensities are jittered.
#[derive(Clone, Copy, Debug)]
pub struct ViewSettings {
    pub views: usize,
    pub scale: (f64, f64),
    /// Largest additive intensity shift (the reference: 0.1).
    pub intensity: f64,
    /// Largest contrast change: a factor in [1 - contrast, 1 + contrast] (the reference: 0.4).
    pub contrast: f64,
}

/// `batch`: `[B, 3, S, H, W]` in [0, 1].
pub fn views(batch: &Tensor, local: ViewSettings, patch: i64, seed: u64) -> Views {
    let size = batch.size();
    let (s, h) = (size[2], size[3]);
    let local_side = ((h * 3 / 8) / patch).max(1) * patch;
    let global = (0..2)
        .map(|v| view(batch, (0.4, 1.0), h, s, local, seed ^ mix(v)))
        .collect();
    let local = (0..local.views)
        .map(|v| {
            view(
                batch,
                local.scale,
                local_side,
                s,
                local,
                seed ^ mix(100 + v as u64),
            )
        })
        .collect();
    Views { global, local }
}

fn uniform(seed: u64, slot: u64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * (mix(seed ^ mix(slot)) >> 11) as f64 / (1u64 << 53) as f64
}

fn view(
    batch: &Tensor,
    scale: (f64, f64),
    side: i64,
    slices: i64,
    jitter: ViewSettings,
    seed: u64,
) -> Tensor {
    let b = batch.size()[0];
    let out: Vec<Tensor> = (0..b)
        .map(|i| {
            augment_one(
                &batch.get(i),
                scale,
                side,
                slices,
                jitter,
                seed ^ mix(1000 + i as u64),
            )
        })
        .collect();
    Tensor::stack(&out, 0)
}

// `x = x + y`, not `x += y`: on a tch Tensor `+=` is an in-place add, which
// autograd may refuse or get wrong; the new tensor is what is meant.
#[allow(clippy::assign_op_pattern)]
fn augment_one(
    x: &Tensor,
    scale: (f64, f64),
    side: i64,
    slices: i64,
    jitter: ViewSettings,
    seed: u64,
) -> Tensor {
    let size = x.size(); // [3, S, H, W]
    let (s, h, w) = (size[1], size[2], size[3]);
    // Crop: area fraction from `scale`, aspect ratio in [3/4, 4/3]; depth for volumes too.
    let area = uniform(seed, 1, scale.0, scale.1);
    let aspect = uniform(seed, 2, (0.75f64).ln(), (4.0f64 / 3.0).ln()).exp();
    let ch = ((h as f64 * (area / aspect).sqrt()).round() as i64).clamp(8, h);
    let cw = ((w as f64 * (area * aspect).sqrt()).round() as i64).clamp(8, w);
    let cs = if s > 4 {
        ((s as f64 * uniform(seed, 3, 0.5, 1.0)).round() as i64).clamp(4, s)
    } else {
        s
    };
    let top = (uniform(seed, 4, 0.0, 1.0) * (h - ch) as f64) as i64;
    let left = (uniform(seed, 5, 0.0, 1.0) * (w - cw) as f64) as i64;
    let front = (uniform(seed, 6, 0.0, 1.0) * (s - cs) as f64) as i64;
    let crop = x
        .narrow(1, front, cs)
        .narrow(2, top, ch)
        .narrow(3, left, cw)
        .unsqueeze(0)
        .contiguous();
    let mut v = crop
        .upsample_trilinear3d([slices, side, side], false, None, None, None)
        .squeeze_dim(0);
    if uniform(seed, 7, 0.0, 1.0) < 0.5 {
        v = v.flip([3]);
    }
    // Intensity shift of up to +-jitter.intensity.
    v = v + uniform(seed, 8, -jitter.intensity, jitter.intensity);
    if uniform(seed, 9, 0.0, 1.0) < 0.5 {
        v = blur(&v, uniform(seed, 10, 0.1, 2.0));
    } else {
        let factor = uniform(seed, 11, 1.0 - jitter.contrast, 1.0 + jitter.contrast);
        let mean = v.mean(Kind::Float);
        v = (v - &mean) * factor + mean;
    }
    v.clamp(0.0, 1.0)
}

/// Separable Gaussian blur in the image plane.
fn blur(v: &Tensor, sigma: f64) -> Tensor {
    let radius = (2.0 * sigma).ceil() as i64;
    let taps: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let sum: f32 = taps.iter().sum();
    let kernel = Tensor::from_slice(&taps.iter().map(|t| t / sum).collect::<Vec<_>>());
    let k = taps.len() as i64;
    let size = v.size();
    let flat = v.reshape([-1, 1, size[2], size[3]]);
    let kh = kernel.view([1, 1, k, 1]);
    let kw = kernel.view([1, 1, 1, k]);
    let out = flat.conv2d(&kh, None::<Tensor>, [1, 1], [radius, 0], [1, 1], 1);
    let out = out.conv2d(&kw, None::<Tensor>, [1, 1], [0, radius], [1, 1], 1);
    out.reshape(size.as_slice())
}
