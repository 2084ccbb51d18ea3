//! Checkpoints: `DIR/checkpoint/` holds `model.safetensors` (every tensor, with the
//! model config), `optimizer.safetensors` (AdamW's moments) and `state.json` (the
//! step and the run's settings). Written to a temporary folder and renamed, so a
//! run killed mid-write keeps its previous checkpoint. In f32 a resume is exact; in
//! f16 (`--checkpoint-dtype f16`) the weights are stored in f16 and the moments in
//! bf16 (the second moments are squared gradients, below f16's range), loaded back
//! as f32.

use crate::optim::AdamW;
use crate::trainee::Trainee;
use m3ret_core::model::file::{self, WeightDtype};
use m3ret_core::model::{ModelConfig, ModelFile};
use std::path::Path;

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct State {
    /// Steps completed.
    pub step: i64,
    pub total_steps: i64,
    pub seed: u64,
    pub optimizer_steps: i64,
    /// Samples trained on so far, over every invocation of the run.
    #[serde(default)]
    pub samples: u64,
    /// Wall time of the run so far, in seconds, over every invocation.
    #[serde(default)]
    pub seconds: f64,
    /// The command line settings of the run, for the record and for resuming.
    pub settings: serde_json::Value,
}

/// The checkpoint folder of a run's output folder, or `dir` itself if it is one.
pub fn folder(dir: &Path) -> std::path::PathBuf {
    let inner = dir.join("checkpoint");
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}

pub fn save(
    dir: &Path,
    config: &ModelConfig,
    trainee: &Trainee,
    opt: &AdamW,
    state: &State,
    dtype: &str,
) -> Result<(), String> {
    let (weights, moments_dtype) = match dtype {
        "f16" => (WeightDtype::F16, WeightDtype::Bf16),
        _ => (WeightDtype::F32, WeightDtype::F32),
    };
    let tmp = dir.join("checkpoint.tmp");
    let final_dir = dir.join("checkpoint");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    file::save(
        &tmp.join("model.safetensors"),
        config,
        &trainee.named_tensors(),
        weights,
    )
    .map_err(|e| e.to_string())?;
    let moments: Vec<(String, tch::Tensor)> = opt
        .m
        .iter()
        .map(|(n, t)| (format!("m.{n}"), t.shallow_clone()))
        .chain(
            opt.v
                .iter()
                .map(|(n, t)| (format!("v.{n}"), t.shallow_clone())),
        )
        .collect();
    file::save(
        &tmp.join("optimizer.safetensors"),
        config,
        &moments,
        moments_dtype,
    )
    .map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    std::fs::write(tmp.join("state.json"), json).map_err(|e| e.to_string())?;
    let old = dir.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&old);
    if final_dir.exists() {
        std::fs::rename(&final_dir, &old).map_err(|e| e.to_string())?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Restores weights and optimizer state; returns the saved state.
pub fn load(dir: &Path, trainee: &Trainee, opt: &mut AdamW) -> Result<State, String> {
    let cp = folder(dir);
    let model = ModelFile::from_path(&cp.join("model.safetensors")).map_err(|e| e.to_string())?;
    trainee.load(&model)?;
    let device = trainee.trainable().device();
    let moments =
        ModelFile::from_path(&cp.join("optimizer.safetensors")).map_err(|e| e.to_string())?;
    for (name, t) in moments.tensors {
        let t = t.to_device(device).to_kind(tch::Kind::Float);
        if let Some(n) = name.strip_prefix("m.") {
            opt.m.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix("v.") {
            opt.v.insert(n.to_string(), t);
        }
    }
    let text = std::fs::read_to_string(cp.join("state.json"))
        .map_err(|e| format!("{}: {e}", cp.display()))?;
    let state: State = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    opt.steps = state.optimizer_steps;
    Ok(state)
}
