//! Inference: studies in, L2-normalised f32 embeddings out.
//! The extension and the trainer both embed through [`Embedder::embed_studies`], so
//! SQL and `m3ret-train eval` give the same vectors for the same file and model.
//!
//! Two stages: the encoder's pooled, L2-normalised output (*features*, what
//! [`Embedder::features`] returns, from tensors alone), then the model's
//! standardisation, if its file has one (per modality: it needs the study's).

use super::config::ModelConfig;
use super::file::ModelFile;
use super::l2_normalize;
use super::standardize::Standardizer;
use super::vit::{pool, Encoder};
use super::{torch_error, ModelError};
use crate::modality::Modality;
use crate::precision::Precision;
use crate::study::Study;
use tch::{nn, Device, Kind, Tensor};

/// An encoder ready to embed, on one device.
pub struct Embedder {
    pub config: ModelConfig,
    vs: nn::VarStore,
    encoder: Encoder,
    standardizer: Option<Standardizer>,
    /// On the CPU: whether forward passes run in bf16 (else f32); set with
    /// [`Embedder::set_cpu_precision`] (a backend follows its setting per call).
    cpu_bf16: std::sync::atomic::AtomicBool,
}

/// The device named by `auto`, `cpu`, `cuda` or `cuda:N` (`auto`: the first CUDA
/// device if there is one, else the CPU). Initialises CUDA: call it only in the
/// process that will use the device.
pub fn parse_device(name: &str) -> Result<Device, ModelError> {
    let count = crate::runtime::cuda_device_count;
    match name.trim() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if count() > 0 {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cuda" => cuda(0, name, count()),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i, name, count()),
            _ => Err(ModelError::BadDevice(name.to_string())),
        },
    }
}

fn cuda(index: usize, name: &str, available: usize) -> Result<Device, ModelError> {
    if index < available {
        Ok(Device::Cuda(index))
    } else {
        Err(ModelError::NoCuda(name.to_string(), available))
    }
}

impl Embedder {
    /// Loads the encoder of a model file (its decoder or head, if any, are skipped).
    /// Every encoder tensor is checked against the config: names and shapes, and
    /// first, before the encoder is built, their total size, so that a config that
    /// declares a larger encoder than the file holds allocates nothing for it.
    pub fn from_file(file: &ModelFile, device: Device) -> Result<Embedder, ModelError> {
        let declared = file.config.encoder.parameter_count();
        let stored: i64 = file
            .tensors
            .iter()
            .filter(|(name, _)| name.starts_with("encoder."))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        if declared > stored {
            return Err(ModelError::BadConfig(format!(
                "the config describes an encoder of {declared} parameters, the file's encoder tensors hold only {stored}"
            )));
        }
        let mut embedder = Self::random_init(&file.config, Device::Cpu);
        file.load_into(&embedder.vs, "encoder.")?;
        if let Some(config) = &file.config.standardize {
            embedder.standardizer = Some(Standardizer::from_file(
                config,
                file,
                file.config.feature_dims(),
            )?);
            embedder.config.standardize = Some(config.clone());
        }
        embedder.place_on(device);
        Ok(embedder)
    }

    /// Moves the weights to `device`; on CUDA they become bf16 (inference in bf16).
    fn place_on(&mut self, device: Device) {
        self.vs.set_device(device);
        if device.is_cuda() {
            self.vs.bfloat16();
        }
    }

    pub fn from_bytes(bytes: &[u8], device: Device) -> Result<Embedder, ModelError> {
        Self::from_file(&ModelFile::from_bytes(bytes)?, device)
    }

    /// The architecture of `config` with fresh random weights (the `random-init`
    /// baseline; seed with `tch::manual_seed` first for a reproducible one). It has
    /// no standardisation (its config says none).
    pub fn random_init(config: &ModelConfig, device: Device) -> Embedder {
        let vs = nn::VarStore::new(Device::Cpu);
        let encoder = Encoder::new(vs.root(), &config.encoder);
        let mut config = config.clone();
        config.standardize = None;
        let mut embedder = Embedder {
            config,
            vs,
            encoder,
            standardizer: None,
            cpu_bf16: std::sync::atomic::AtomicBool::new(false),
        };
        embedder.place_on(device);
        embedder
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The precision of later forward passes on the CPU (f32 until set). The
    /// weights stay f32: bf16 runs under CPU autocast.
    pub fn set_cpu_precision(&self, precision: Precision) {
        self.cpu_bf16.store(
            precision == Precision::Bf16,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub fn cpu_precision(&self) -> Precision {
        if self.cpu_bf16.load(std::sync::atomic::Ordering::Relaxed) {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    pub fn dims(&self) -> i64 {
        self.config.embedding_dims()
    }

    /// The standardisation the model file carries, if any.
    pub fn standardizer(&self) -> Option<&Standardizer> {
        self.standardizer.as_ref()
    }

    /// The features of a batch `[B, 3, S, H, W]` of one shape: `[B, feature dims]`,
    /// f32 on the CPU. Runs without gradients; in bf16 on CUDA, and on the CPU in the
    /// precision set with [`Embedder::set_cpu_precision`].
    pub fn features_batch(&self, batch: &Tensor) -> Result<Tensor, ModelError> {
        self.features_batch_with(batch, &mut || {})
    }

    /// As [`Embedder::features_batch`], calling `between_blocks` between transformer blocks
    /// (where a caller may abort by panicking, e.g. PostgreSQL's query cancellation).
    pub fn features_batch_with(
        &self,
        batch: &Tensor,
        between_blocks: &mut dyn FnMut(),
    ) -> Result<Tensor, ModelError> {
        self.check_input(batch)?;
        let device = self.device();
        let kind = if device.is_cuda() {
            Kind::BFloat16
        } else {
            Kind::Float
        };
        let precision = if device.is_cuda() {
            Precision::F32 // CUDA runs in bf16 weights of its own
        } else {
            self.cpu_precision()
        };
        let run = || {
            crate::torch_ext::autocast(Device::Cpu, precision, || {
                tch::no_grad(|| {
                    let x = batch.to_device(device).to_kind(kind);
                    let outputs = self.encoder.encode_tokens_last(
                        &self.encoder.tokens(&x),
                        self.config.pool_blocks as usize,
                        between_blocks,
                    );
                    let patch = self.config.encoder.patch;
                    let (_, _, s, h, w) = x.size5().expect("[B, 3, S, H, W]");
                    let grid = [s / patch[0], h / patch[1], w / patch[2]];
                    let pooled: Vec<Tensor> = outputs
                        .iter()
                        .map(|out| {
                            l2_normalize(&pool(out, self.config.pooling, grid).to_kind(Kind::Float))
                        })
                        .collect();
                    let features = match pooled.len() {
                        1 => pooled[0].shallow_clone(),
                        _ => {
                            l2_normalize(&Tensor::stack(&pooled, 0).mean_dim(0, false, Kind::Float))
                        }
                    };
                    features.to_device(Device::Cpu)
                })
            })
        };
        // A C++ exception inside libtorch (e.g. out of memory) surfaces as a panic with a
        // text payload in tch's non-fallible API: report it as an error. Any other panic
        // (the caller's own, from `between_blocks`) goes on unwinding.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).map_err(|p| {
            match torch_panic_text(&p) {
                Some(text) => ModelError::Torch(text),
                None => std::panic::resume_unwind(p),
            }
        })
    }

    /// The embeddings of studies: their features, standardised per the study's
    /// modality when the model has a standardisation. Batched as [`Embedder::features`].
    pub fn embed_studies(
        &self,
        studies: &[Study],
        max_batch: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.embed_studies_with(studies, max_batch, &mut || {})
    }

    /// As [`Embedder::embed_studies`], calling `between_blocks` as [`Embedder::features_batch_with`] does.
    pub fn embed_studies_with(
        &self,
        studies: &[Study],
        max_batch: usize,
        between_blocks: &mut dyn FnMut(),
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let tensors: Vec<Tensor> = studies.iter().map(|s| s.tensor.shallow_clone()).collect();
        let features = self.features_with(&tensors, max_batch, between_blocks)?;
        Ok(features
            .into_iter()
            .zip(studies)
            .map(|(f, s)| self.standardize(f, s.detected.modality))
            .collect())
    }

    /// A feature vector standardised for `modality` (unchanged without a standardisation).
    pub fn standardize(&self, features: Vec<f32>, modality: Modality) -> Vec<f32> {
        match &self.standardizer {
            Some(s) => s.apply_one(&features, modality),
            None => features,
        }
    }

    /// The features of canonical tensors `[3, S, H, W]` of any mix of shapes, batching
    /// those of equal shape together, `max_batch` at a time; results in input order.
    pub fn features(
        &self,
        inputs: &[Tensor],
        max_batch: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.features_with(inputs, max_batch, &mut || {})
    }

    /// As [`Embedder::features`], calling `between_blocks` as [`Embedder::features_batch_with`] does.
    pub fn features_with(
        &self,
        inputs: &[Tensor],
        max_batch: usize,
        between_blocks: &mut dyn FnMut(),
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut groups: Vec<(Vec<i64>, Vec<usize>)> = Vec::new();
        for (i, t) in inputs.iter().enumerate() {
            let shape = t.size();
            match groups.iter_mut().find(|(s, _)| *s == shape) {
                Some((_, members)) => members.push(i),
                None => groups.push((shape, vec![i])),
            }
        }
        let mut out = vec![Vec::new(); inputs.len()];
        for (_, members) in groups {
            for chunk in members.chunks(max_batch.max(1)) {
                let batch = Tensor::stack(
                    &chunk
                        .iter()
                        .map(|&i| inputs[i].shallow_clone())
                        .collect::<Vec<_>>(),
                    0,
                );
                let emb = self.features_batch_with(&batch, between_blocks)?;
                for (row, &i) in chunk.iter().enumerate() {
                    out[i] = Vec::<f32>::try_from(emb.get(row as i64)).map_err(torch_error)?;
                }
            }
        }
        Ok(out)
    }

    fn check_input(&self, batch: &Tensor) -> Result<(), ModelError> {
        let size = batch.size();
        let [ps, ph, pw] = self.config.encoder.patch;
        let ok = size.len() == 5
            && size[1] == 3
            && size[0] > 0
            && size[2] % ps == 0
            && size[3] % ph == 0
            && size[4] % pw == 0
            && size[2] > 0
            && size[3] > 0
            && size[4] > 0;
        if ok {
            Ok(())
        } else {
            Err(ModelError::BadInput(format!(
                "expected [batch, 3, S, H, W] with S, H, W multiples of the patch size {:?}, got {size:?}",
                self.config.encoder.patch
            )))
        }
    }
}

/// The first line of a text panic payload, without tch's `unwrap` wrapping.
fn torch_panic_text(p: &Box<dyn std::any::Any + Send>) -> Option<String> {
    let text = crate::panic_text(p.as_ref())?;
    let first = text.lines().next().unwrap_or("libtorch failed");
    let inner = first
        .split_once("Torch(\"")
        .map(|(_, rest)| rest.trim_end_matches("\")"))
        .unwrap_or(first);
    Some(inner.to_string())
}
