//! The M3Ret model: a ViT with one 4D patch embedding for every modality, trained
//! with MAE or SimDINO, saved as one safetensors file, and used for embedding.
//!
//! - `config.rs`: presets and the JSON config stored in model files;
//! - `pos_embed.rs`: fixed 3-axis sin-cos positions;
//! - `vit.rs`: patch embedding, blocks, the encoder and pooling;
//! - `mae.rs`, `simdino.rs`: the two pretraining objectives;
//! - `file.rs`: reading and writing model files;
//! - `standardize.rs`: centering and whitening of the features, fitted after training;
//! - `embed.rs`: inference, the API the extension and the trainer share.

pub mod config;
pub mod embed;
pub mod file;
pub mod mae;
pub mod pos_embed;
pub mod simdino;
pub mod standardize;
pub mod vit;

pub use config::{Method, ModelConfig, Pooling, Preset};
pub use embed::{parse_device, Embedder};
pub use file::{ModelFile, WeightDtype};
pub use standardize::{Scope, StandardizeConfig, Standardizer};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("not a safetensors file: {0}")]
    NotSafetensors(String),
    #[error("not an m3ret model file: {0}")]
    NotM3ret(String),
    #[error("invalid model config: {0}")]
    BadConfig(String),
    #[error("model file lacks tensor \"{0}\"")]
    MissingTensor(String),
    #[error("tensor \"{name}\" has shape {found:?}, the config expects {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("model file has tensor \"{0}\", which this architecture does not have")]
    UnexpectedTensor(String),
    #[error("invalid input: {0}")]
    BadInput(String),
    #[error("invalid device \"{0}\": expected auto, cpu, cuda or cuda:N")]
    BadDevice(String),
    #[error("CUDA device {0} requested but {1} CUDA devices are available")]
    NoCuda(String, usize),
    #[error("libtorch error: {0}")]
    Torch(String),
    #[error("{0}")]
    Io(String),
}

/// Each row of `x` divided by its L2 norm (rows of zeros stay zero): the head's output,
/// the embedder's features and the standardised embeddings are all unit vectors.
pub fn l2_normalize(x: &tch::Tensor) -> tch::Tensor {
    let norm = x.norm_scalaropt_dim(2.0, [-1], true).clamp_min(1e-12);
    x / norm
}

/// Only the first line of a libtorch error: the rest is a C++ backtrace.
pub fn torch_error(e: tch::TchError) -> ModelError {
    let text = e.to_string();
    ModelError::Torch(text.lines().next().unwrap_or("unknown error").to_string())
}
