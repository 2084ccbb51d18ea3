//! Inference: canonical tensors in, L2-normalised f32 embeddings out.
//! The extension and the trainer both embed through [`Embedder`], so SQL and
//! `m3ret-train eval` give the same vectors for the same file and model.

use super::config::ModelConfig;
use super::file::ModelFile;
use super::simdino::l2_normalize;
use super::vit::{pool, Encoder};
use super::{torch_error, ModelError};
use tch::{nn, Device, Kind, Tensor};

/// An encoder ready to embed, on one device.
pub struct Embedder {
    pub config: ModelConfig,
    vs: nn::VarStore,
    encoder: Encoder,
}

/// The device named by `auto`, `cpu`, `cuda` or `cuda:N` (`auto`: the first CUDA
/// device if there is one, else the CPU). Initialises CUDA: call it only in the
/// process that will use the device.
pub fn parse_device(name: &str) -> Result<Device, ModelError> {
    let count = || if tch::Cuda::is_available() { tch::Cuda::device_count().max(0) as usize } else { 0 };
    match name.trim() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if count() > 0 { Device::Cuda(0) } else { Device::Cpu }),
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
    pub fn from_file(file: &ModelFile, device: Device) -> Result<Embedder, ModelError> {
        let embedder = Self::random_init(&file.config, device);
        file.load_into(&embedder.vs, "encoder.")?;
        Ok(embedder)
    }

    pub fn from_bytes(bytes: &[u8], device: Device) -> Result<Embedder, ModelError> {
        Self::from_file(&ModelFile::from_bytes(bytes)?, device)
    }

    /// The architecture of `config` with fresh random weights (the `random-init`
    /// baseline; seed with `tch::manual_seed` first for a reproducible one).
    pub fn random_init(config: &ModelConfig, device: Device) -> Embedder {
        let vs = nn::VarStore::new(device);
        let encoder = Encoder::new(vs.root(), &config.encoder);
        Embedder { config: config.clone(), vs, encoder }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn dims(&self) -> i64 {
        self.config.embedding_dims()
    }

    /// Embeds a batch `[B, 3, S, H, W]` of one shape: `[B, dims]`, f32 on the CPU.
    /// Runs without gradients, in bf16 autocast on CUDA.
    pub fn embed_batch(&self, batch: &Tensor) -> Result<Tensor, ModelError> {
        self.check_input(batch)?;
        let device = self.device();
        let run = || {
            tch::no_grad(|| {
                let x = batch.to_device(device).to_kind(Kind::Float);
                let out = self.encoder.forward(&x);
                l2_normalize(&pool(&out, self.config.pooling).to_kind(Kind::Float)).to_device(Device::Cpu)
            })
        };
        let on_cuda = device.is_cuda();
        // A C++ exception inside libtorch (e.g. out of memory) surfaces as a panic in tch's
        // non-fallible API: catch it and report it as an error.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| if on_cuda { tch::autocast(true, run) } else { run() }))
            .map_err(|p| ModelError::Torch(panic_message(&p)))
    }

    /// Embeds canonical tensors `[3, S, H, W]` of any mix of shapes, batching those
    /// of equal shape together, `max_batch` at a time; results in input order.
    pub fn embed(&self, inputs: &[Tensor], max_batch: usize) -> Result<Vec<Vec<f32>>, ModelError> {
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
                let batch = Tensor::stack(&chunk.iter().map(|&i| inputs[i].shallow_clone()).collect::<Vec<_>>(), 0);
                let emb = self.embed_batch(&batch)?;
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
        let ok = size.len() == 5 && size[1] == 3 && size[0] > 0 && size[2] % ps == 0 && size[3] % ph == 0 && size[4] % pw == 0
            && size[2] > 0 && size[3] > 0 && size[4] > 0;
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

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let text = p
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("libtorch failed");
    text.lines().next().unwrap_or("libtorch failed").to_string()
}
