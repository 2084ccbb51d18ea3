//! `m3ret-train export`: a checkpoint's encoder as a model file the extension loads.

use crate::trainee::export_prefix;
use m3ret_core::model::file::{self, WeightDtype};
use m3ret_core::model::{ModelConfig, ModelFile};
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A pretraining output folder or its checkpoint/ folder.
    #[arg(long)]
    pub checkpoint: std::path::PathBuf,
    /// The model file to write (.safetensors).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Weight precision: f32, f16 (half the size) or bf16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
    /// SimDINO: which encoder to write: teacher (the EMA weights) or student.
    #[arg(long, default_value = "teacher", value_parser = ["teacher", "student"])]
    pub branch: String,
}

pub fn run(args: ExportArgs) -> Result<(), String> {
    export(
        &args.checkpoint,
        &args.out,
        WeightDtype::parse(&args.dtype).expect("validated by clap"),
        &args.branch,
    )?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// Encoder only: MAE's encoder, or SimDINO's teacher or student encoder (`branch`), renamed `encoder.*`.
pub fn export(
    checkpoint_dir: &Path,
    out: &Path,
    dtype: WeightDtype,
    branch: &str,
) -> Result<(), String> {
    let cp = crate::checkpoint::folder(checkpoint_dir);
    let model = ModelFile::from_path(&cp.join("model.safetensors")).map_err(|e| e.to_string())?;
    let tensors: Vec<(String, tch::Tensor)> = model
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let mut encoder = encoder_file(&model.config, &tensors, branch)
        .map_err(|e| format!("{}: {e}", cp.display()))?;
    let state = std::fs::read_to_string(cp.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    encoder.config.training = serde_json::json!({
        "exported_from": cp.display().to_string(),
        "branch": branch,
        "state": state,
        "weights": format!("{dtype:?}").to_lowercase(),
    });
    let tensors: Vec<(String, tch::Tensor)> = encoder.tensors.into_iter().collect();
    file::save(out, &encoder.config, &tensors, dtype).map_err(|e| e.to_string())
}

/// The encoder of a trainee's tensors (`branch` as in `export`) as an encoder-only
/// model file in memory; its tensors are the trainee's own (shallow copies).
pub fn encoder_file(
    config: &ModelConfig,
    tensors: &[(String, tch::Tensor)],
    branch: &str,
) -> Result<ModelFile, String> {
    let prefix = export_prefix(config.method, branch);
    let tensors: std::collections::BTreeMap<String, tch::Tensor> = tensors
        .iter()
        .filter_map(|(n, t)| {
            n.strip_prefix(prefix)
                .map(|rest| (format!("encoder.{rest}"), t.shallow_clone()))
        })
        .collect();
    if tensors.is_empty() {
        return Err(format!("no {prefix}* tensors"));
    }
    let mut config = config.clone();
    config.decoder = None;
    Ok(ModelFile { config, tensors })
}
