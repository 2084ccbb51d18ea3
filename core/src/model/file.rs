//! Model files: one `.safetensors` file, the weights plus the [`ModelConfig`] as JSON
//! under the metadata key `m3ret_config`. Weights may be stored as f32, f16 or bf16;
//! they are loaded as f32.

use super::config::ModelConfig;
use super::standardize::is_standardize_tensor;
use super::ModelError;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use tch::{nn, Kind, Tensor};

/// The metadata key holding the config.
pub const CONFIG_KEY: &str = "m3ret_config";

/// The precision weights are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
}

impl WeightDtype {
    pub fn parse(name: &str) -> Option<WeightDtype> {
        match name {
            "f32" => Some(WeightDtype::F32),
            "f16" => Some(WeightDtype::F16),
            "bf16" => Some(WeightDtype::Bf16),
            _ => None,
        }
    }

    fn kind(self) -> Kind {
        match self {
            WeightDtype::F32 => Kind::Float,
            WeightDtype::F16 => Kind::Half,
            WeightDtype::Bf16 => Kind::BFloat16,
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::F16 => Dtype::F16,
            WeightDtype::Bf16 => Dtype::BF16,
        }
    }
}

/// Serialises `tensors` (name -> tensor) with `config` into safetensors bytes: weights
/// in `dtype`, a standardisation's statistics always in f32.
pub fn to_bytes(
    config: &ModelConfig,
    tensors: &[(String, Tensor)],
    dtype: WeightDtype,
) -> Result<Vec<u8>, ModelError> {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>, WeightDtype)> =
        Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = if is_standardize_tensor(name) {
            WeightDtype::F32
        } else {
            dtype
        };
        let t = t
            .detach()
            .to_device(tch::Device::Cpu)
            .to_kind(dtype.kind())
            .contiguous();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * dtype.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)
            .map_err(|e| ModelError::Torch(e.to_string()))?;
        let shape = t.size().iter().map(|d| *d as usize).collect();
        data.push((name.clone(), shape, bytes, dtype));
    }
    let views = data
        .iter()
        .map(|(name, shape, bytes, dtype)| {
            TensorView::new(dtype.safetensors(), shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ModelError::Io(e.to_string()))?;
    let config_json = serde_json::to_string(config).expect("config serialises");
    let metadata = HashMap::from([(CONFIG_KEY.to_string(), config_json)]);
    safetensors::tensor::serialize(views, &Some(metadata))
        .map_err(|e| ModelError::Io(e.to_string()))
}

pub fn save(
    path: &std::path::Path,
    config: &ModelConfig,
    tensors: &[(String, Tensor)],
    dtype: WeightDtype,
) -> Result<(), ModelError> {
    let bytes = to_bytes(config, tensors, dtype)?;
    std::fs::write(path, bytes).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))
}

/// The precision a model file's weights are stored in: that of its first tensor outside
/// the standardisation (whose statistics are f32 whatever the weights are).
pub fn stored_weight_dtype(bytes: &[u8]) -> Result<WeightDtype, ModelError> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| ModelError::NotSafetensors(e.to_string()))?;
    let mut names = st.names();
    names.sort();
    let weight = names
        .into_iter()
        .find(|n| !is_standardize_tensor(n))
        .ok_or_else(|| ModelError::NotM3ret("it holds no weights".into()))?;
    let view = st
        .tensor(weight)
        .map_err(|e| ModelError::NotSafetensors(e.to_string()))?;
    match view.dtype() {
        Dtype::F32 => Ok(WeightDtype::F32),
        Dtype::F16 => Ok(WeightDtype::F16),
        Dtype::BF16 => Ok(WeightDtype::Bf16),
        other => Err(ModelError::NotM3ret(format!(
            "it holds a {other:?} tensor; m3ret stores f32, f16 or bf16"
        ))),
    }
}

/// The SHA-256 of a model file's bytes, in hex: the identity of a model version.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A parsed model file: its config and its tensors as f32 on the CPU.
pub struct ModelFile {
    pub config: ModelConfig,
    pub tensors: BTreeMap<String, Tensor>,
}

impl ModelFile {
    /// Parses and checks a model file held in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<ModelFile, ModelError> {
        let (_, metadata) = SafeTensors::read_metadata(bytes)
            .map_err(|e| ModelError::NotSafetensors(e.to_string()))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::NotSafetensors(e.to_string()))?;
        let config_json = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(CONFIG_KEY))
            .ok_or_else(|| {
                ModelError::NotM3ret(format!("its safetensors metadata has no \"{CONFIG_KEY}\""))
            })?;
        let config: ModelConfig = serde_json::from_str(config_json)
            .map_err(|e| ModelError::NotM3ret(format!("its config does not parse: {e}")))?;
        config.validate().map_err(ModelError::BadConfig)?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            tensors.insert(name, view_to_tensor(&view)?);
        }
        Ok(ModelFile { config, tensors })
    }

    pub fn from_path(path: &std::path::Path) -> Result<ModelFile, ModelError> {
        let bytes =
            std::fs::read(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        Self::from_bytes(&bytes)
    }

    /// Copies the tensors under `prefix` into `vs`, whose variables must all be
    /// present with the same shapes, and refuses tensors under `prefix` that `vs`
    /// does not have (a file for another architecture).
    pub fn load_into(&self, vs: &nn::VarStore, prefix: &str) -> Result<(), ModelError> {
        let vars = vs.variables();
        for (name, mut var) in vars.iter().map(|(n, v)| (n.clone(), v.shallow_clone())) {
            let key = format!("{prefix}{name}");
            let t = self
                .tensors
                .get(&key)
                .ok_or_else(|| ModelError::MissingTensor(key.clone()))?;
            if t.size() != var.size() {
                return Err(ModelError::ShapeMismatch {
                    name: key,
                    expected: var.size(),
                    found: t.size(),
                });
            }
            tch::no_grad(|| var.copy_(t));
        }
        for key in self.tensors.keys() {
            if let Some(name) = key.strip_prefix(prefix) {
                if !vars.contains_key(name) {
                    return Err(ModelError::UnexpectedTensor(key.clone()));
                }
            }
        }
        Ok(())
    }
}

fn view_to_tensor(view: &TensorView<'_>) -> Result<Tensor, ModelError> {
    let kind = match view.dtype() {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        other => {
            return Err(ModelError::NotM3ret(format!(
                "it holds a {other:?} tensor; m3ret stores f32, f16 or bf16"
            )))
        }
    };
    let shape: Vec<i64> = view.shape().iter().map(|d| *d as i64).collect();
    Tensor::f_from_data_size(view.data(), &shape, kind)
        .map(|t| t.to_kind(Kind::Float))
        .map_err(|e| ModelError::Torch(e.to_string()))
}
