//! Embedding a set of manifest items with a model and the two baselines, in chunks
//! (canonical tensors are large: only embeddings and thumbnails are kept).

use crate::manifest::{self, Item};
use crate::plot::{self, Thumb};
use m3ret_core::modality::{Modality, ModalityChoice};
use m3ret_core::model::Embedder;
use m3ret_core::study::{self, StudyOptions};
use tch::{Kind, Tensor};

pub struct Embedded {
    /// Index into the item list.
    pub item: usize,
    pub modality: Modality,
    /// The model's embedding, as `m3ret_embed` returns it (standardised if the file says so).
    pub model: Vec<f32>,
    /// The model's features before its standardisation.
    pub features: Vec<f32>,
    pub random_init: Vec<f32>,
    pub raw_pixels: Vec<f32>,
    pub thumb: Thumb,
}

/// The `raw-pixels` baseline: the canonical tensor averaged over slices, area-pooled
/// to 3 x 32 x 32, flattened and L2-normalised (3,072 dimensions for every modality,
/// so it also serves cross-modal retrieval).
pub fn raw_pixels(t: &Tensor) -> Vec<f32> {
    let x = t
        .mean_dim(1, false, Kind::Float)
        .unsqueeze(0)
        .adaptive_avg_pool2d([32, 32])
        .flatten(0, -1);
    let x = &x / x.norm().clamp_min(1e-12);
    Vec::try_from(x).unwrap_or_default()
}

/// Embeds `items` (skipping, with a warning, those that cannot be read).
pub fn embed(
    items: &[Item],
    model: &Embedder,
    random: Option<&Embedder>,
    chunk: usize,
) -> (Vec<Embedded>, usize) {
    let mut out = Vec::with_capacity(items.len());
    let mut skipped = 0;
    let bar = indicatif::ProgressBar::new(items.len() as u64);
    for (start, part) in items
        .chunks(chunk.max(1))
        .enumerate()
        .map(|(i, p)| (i * chunk.max(1), p))
    {
        let mut studies = Vec::new();
        let mut indices = Vec::new();
        for (k, item) in part.iter().enumerate() {
            let options =
                StudyOptions::for_input(ModalityChoice::Given(item.modality), &model.config.input);
            let loaded = manifest::read_item(item).and_then(|bufs| {
                let refs: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
                study::load_buffers(&refs, &options).map_err(|e| e.to_string())
            });
            match loaded {
                Ok(s) => {
                    studies.push(s);
                    indices.push(start + k);
                }
                Err(e) => {
                    skipped += 1;
                    eprintln!("warning: skipping {}: {e}", item.path.display());
                }
            }
            bar.inc(1);
        }
        let tensors: Vec<Tensor> = studies.iter().map(|s| s.tensor.shallow_clone()).collect();
        let f = model
            .features(&tensors, chunk)
            .unwrap_or_else(|e| panic!("embedding failed: {e}"));
        let r = random.map(|e| {
            e.features(&tensors, chunk)
                .unwrap_or_else(|e| panic!("embedding failed: {e}"))
        });
        for (j, t) in tensors.iter().enumerate() {
            let modality = studies[j].detected.modality;
            out.push(Embedded {
                item: indices[j],
                modality,
                model: model.standardize(f[j].clone(), modality),
                features: f[j].clone(),
                random_init: r.as_ref().map(|r| r[j].clone()).unwrap_or_default(),
                raw_pixels: raw_pixels(t),
                thumb: plot::thumbnail(t, 64),
            });
        }
    }
    bar.finish_and_clear();
    (out, skipped)
}
