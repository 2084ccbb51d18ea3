//! The learning curve of a pretraining run: every `--eval-every` steps the encoder
//! that would be exported (SimDINO's teacher, MAE's encoder) is read out as the
//! shipped model is (grid4x4 pooling over every block, centred and whitened to 64
//! components with statistics refitted on the fit split) and scored by in-modality
//! R@1 on the evaluation split. One JSON object per evaluation goes to `log.jsonl`;
//! the record of step 0 is the untrained encoder and the raw-pixel baseline, read
//! out the same way: the zero lines every later record carries beside its own.

use crate::embedset::{self, Embedded};
use crate::eval::{cap_per_class, evaluate, task_defs};
use crate::manifest::{self, Item};
use m3ret_core::model::config::Pooling;
use m3ret_core::model::{Embedder, ModelConfig, ModelFile, Scope, StandardizeConfig, Standardizer};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What an evaluation embeds and how it reads the features out.
pub struct Curve {
    items: Vec<Item>,
    fit_items: Vec<Item>,
    log: PathBuf,
}

/// R@1 per modality (the in-modality tasks of `eval`).
pub type RecallByModality = BTreeMap<String, f64>;

/// The readout of the shipped model file (docs/training.md, "Reproduce").
pub fn readout(config: &ModelConfig) -> ModelConfig {
    let mut c = config.clone();
    c.pooling = Pooling::Grid(4);
    c.pool_blocks = c.encoder.depth;
    c.standardize = None;
    c.decoder = None;
    c
}

fn standardize_config() -> StandardizeConfig {
    StandardizeConfig {
        centering: Scope::Global,
        whiten: Some(64),
        whitening: Scope::Global,
        shrinkage: 0.1,
        fitted_on: serde_json::Value::Null,
    }
}

impl Curve {
    pub fn new(
        manifest: &Path,
        split: &str,
        fit_split: &str,
        fit_max_per_class: usize,
        out: &Path,
    ) -> Result<Curve, String> {
        let all = manifest::load(manifest)?;
        let items = manifest::select(all.clone(), &[split.to_string()], &[]);
        let fit_items = cap_per_class(
            manifest::select(all, &[fit_split.to_string()], &[]),
            Some(fit_max_per_class),
        );
        if items.is_empty() || fit_items.is_empty() {
            return Err(format!(
                "--eval-every: {} has no rows of split {split:?} or of {fit_split:?}",
                manifest.display()
            ));
        }
        Ok(Curve {
            items,
            fit_items,
            log: out.join("log.jsonl"),
        })
    }

    /// The step of the last evaluation logged, if any.
    pub fn last_logged_step(&self) -> Option<i64> {
        self.records().last().and_then(|r| r["step"].as_i64())
    }

    fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// In-modality R@1 per modality of `encoder` (an encoder-only model file) and of
    /// the raw-pixel baseline, both standardised on the fit split.
    pub fn score(
        &self,
        encoder: &ModelFile,
        precision: m3ret_core::precision::Precision,
    ) -> Result<(RecallByModality, RecallByModality), String> {
        let device = encoder
            .tensors
            .values()
            .next()
            .map(|t| t.device())
            .unwrap_or(tch::Device::Cpu);
        let model = Embedder::from_file(encoder, device).map_err(|e| e.to_string())?;
        model.set_cpu_precision(precision);
        let (held, _) = embedset::embed(&self.items, &model, None, 16);
        let (fit, _) = embedset::embed(&self.fit_items, &model, None, 16);
        let features = |e: &Embedded| e.features.clone();
        let pixels = |e: &Embedded| e.raw_pixels.clone();
        Ok((
            self.recall(&held, &fit, features)?,
            self.recall(&held, &fit, pixels)?,
        ))
    }

    fn recall(
        &self,
        held: &[Embedded],
        fit: &[Embedded],
        pick: impl Fn(&Embedded) -> Vec<f32>,
    ) -> Result<RecallByModality, String> {
        let fit_vectors: Vec<_> = fit.iter().map(|e| (e.modality, pick(e))).collect();
        let standardizer = Standardizer::fit(standardize_config(), &fit_vectors)?;
        let vectors: Vec<Vec<f32>> = held
            .iter()
            .map(|e| standardizer.apply_one(&pick(e), e.modality))
            .collect();
        Ok(task_defs(&self.items, held)
            .iter()
            .filter(|d| d.kind == "in-modality")
            .map(|d| {
                (
                    d.name.clone(),
                    evaluate(d, &self.items, held, &vectors).recall_at_1,
                )
            })
            .collect())
    }

    /// Appends one evaluation: `trained` beside the zero lines of the step-0 record
    /// (the record itself when `step` is 0).
    pub fn log(
        &self,
        mut record: serde_json::Value,
        trained: &RecallByModality,
        raw_pixels: &RecallByModality,
    ) -> Result<(), String> {
        let first = self.records().into_iter().next();
        let zero = |kind: &str, m: &str, own: f64| {
            first
                .as_ref()
                .and_then(|r| r["r1"][m][kind].as_f64())
                .unwrap_or(own)
        };
        let r1: serde_json::Map<String, serde_json::Value> = trained
            .iter()
            .map(|(m, &r)| {
                let pixels = raw_pixels.get(m).copied().unwrap_or(f64::NAN);
                (
                    m.clone(),
                    serde_json::json!({
                        "trained": r,
                        "untrained": zero("untrained", m, r),
                        "raw_pixels": zero("raw_pixels", m, pixels),
                    }),
                )
            })
            .collect();
        let mean = trained.values().sum::<f64>() / trained.len().max(1) as f64;
        record["r1"] = serde_json::Value::Object(r1);
        record["mean_r1"] = serde_json::json!(mean);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        writeln!(f, "{record}").map_err(|e| e.to_string())
    }
}
