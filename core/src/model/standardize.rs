//! Embedding standardisation: statistics fitted on a training split's features that
//! turn the encoder's pooled output into retrieval vectors.
//!
//! A self-supervised encoder's features share a large common component (all X-rays
//! sit in a narrow cone) and spread their variance over a few directions. Centering
//! removes the common component; PCA whitening gives every kept direction the same
//! variance, so that cosine similarity compares what differs between studies. The
//! statistics are part of the model file (tensors `standardize.*`, settings in the
//! config), so `m3ret_embed` and `m3ret-train eval` apply the same transform.
//!
//! The transform of a feature `x` (L2-normalised pooled output) of modality `m`:
//! `y = normalize((x - mean[m]) W[m])`, where `mean[m]` and `W[m]` are the fitted
//! ones of `m`, or the global ones (`all`) when `m` had no items to fit on. With shared
//! axes (`whitening: global`) every `W[m]` is `W[all]`, stored once.

use super::file::ModelFile;
use super::l2_normalize;
use super::ModelError;
use crate::modality::Modality;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// How the statistics are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One set of statistics for every modality.
    Global,
    /// One per modality (and a global one for modalities absent from the fit).
    Modality,
}

impl Scope {
    pub fn parse(name: &str) -> Option<Scope> {
        match name {
            "global" => Some(Scope::Global),
            "modality" => Some(Scope::Modality),
            _ => None,
        }
    }
}

/// The settings of a standardisation, stored in the model config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandardizeConfig {
    /// Whose mean is subtracted.
    pub centering: Scope,
    /// PCA whitening to this many components; `None`: centering only.
    pub whiten: Option<i64>,
    /// Whose covariance the whitening comes from. With `modality`, each modality gets
    /// its own axes, so vectors of different modalities are no longer comparable.
    pub whitening: Scope,
    /// Added to every eigenvalue, as a fraction of the mean eigenvalue, so that
    /// directions of almost no variance are not blown up into noise.
    pub shrinkage: f64,
    /// Free-form record of what the statistics were fitted on.
    #[serde(default)]
    pub fitted_on: serde_json::Value,
}

/// The key of the statistics used when a modality has none of its own.
const GLOBAL_KEY: &str = "all";
const MEAN_PREFIX: &str = "standardize.mean.";
const WHITEN_PREFIX: &str = "standardize.whiten.";

/// Statistics of one group: its mean `[d]` and whitening matrix `[d, k]`.
#[derive(Debug)]
struct GroupStats {
    mean: Tensor,
    whiten: Option<Tensor>,
}

/// A fitted standardisation, ready to apply.
#[derive(Debug)]
pub struct Standardizer {
    pub config: StandardizeConfig,
    groups: BTreeMap<String, GroupStats>,
}

impl StandardizeConfig {
    /// Dimensions of the vectors it produces from `features` dimensions.
    pub fn output_dims(&self, features: i64) -> i64 {
        self.whiten.unwrap_or(features)
    }

    pub fn validate(&self, features: i64) -> Result<(), String> {
        if let Some(k) = self.whiten {
            if !(1..=features).contains(&k) {
                return Err(format!(
                    "whitening to {k} components of {features}-dimensional features"
                ));
            }
        }
        if !(0.0..=1e6).contains(&self.shrinkage) {
            return Err(format!(
                "standardisation shrinkage {} out of range",
                self.shrinkage
            ));
        }
        Ok(())
    }
}

impl Standardizer {
    /// Fits the statistics on `features` (one L2-normalised row per study, with its
    /// modality). Groups are weighted equally: the global mean is the mean of the
    /// modality means, the shared covariance the mean of the modality covariances.
    pub fn fit(
        config: StandardizeConfig,
        features: &[(Modality, Vec<f32>)],
    ) -> Result<Standardizer, String> {
        let dims = features
            .first()
            .map(|(_, v)| v.len())
            .ok_or("no features to fit the standardisation on")?;
        config.validate(dims as i64)?;
        let mut by_modality: BTreeMap<&str, Vec<&[f32]>> = BTreeMap::new();
        for (m, v) in features {
            if v.len() != dims {
                return Err(format!(
                    "features of {} and {dims} dimensions mixed",
                    v.len()
                ));
            }
            by_modality.entry(m.name()).or_default().push(v);
        }
        let matrices: BTreeMap<&str, Tensor> = by_modality
            .iter()
            .map(|(m, rows)| {
                (
                    *m,
                    Tensor::from_slice(&rows.concat()).view([rows.len() as i64, dims as i64]),
                )
            })
            .collect();
        let modality_means: BTreeMap<&str, Tensor> = matrices
            .iter()
            .map(|(m, x)| (*m, x.mean_dim(0, false, Kind::Float)))
            .collect();
        let global_mean = Tensor::stack(&modality_means.values().collect::<Vec<_>>(), 0).mean_dim(
            0,
            false,
            Kind::Float,
        );
        let mean_of = |m: &str| match config.centering {
            Scope::Modality => modality_means[m].shallow_clone(),
            Scope::Global => global_mean.shallow_clone(),
        };
        let covariance_of = |m: &str| {
            let x = &matrices[m] - mean_of(m);
            x.transpose(0, 1).matmul(&x) / (x.size()[0] as f64)
        };
        let shared_covariance = || {
            let all: Vec<Tensor> = matrices.keys().map(|m| covariance_of(m)).collect();
            Tensor::stack(&all, 0).mean_dim(0, false, Kind::Float)
        };
        let whiten_of = |covariance: Tensor| {
            config
                .whiten
                .map(|k| whitening_matrix(&covariance, k, config.shrinkage))
        };
        let shared = match (config.whiten, config.whitening) {
            (Some(_), Scope::Global) => whiten_of(shared_covariance()),
            _ => None,
        };
        let mut groups = BTreeMap::new();
        // With one mean and one set of axes, every modality would store a copy of the
        // global statistics: `apply` falls back to them instead.
        let shared_only = config.centering == Scope::Global
            && (config.whitening == Scope::Global || config.whiten.is_none());
        for m in matrices.keys().filter(|_| !shared_only) {
            let whiten = match config.whitening {
                Scope::Global => shared.as_ref().map(Tensor::shallow_clone),
                Scope::Modality => whiten_of(covariance_of(m)),
            };
            groups.insert(
                m.to_string(),
                GroupStats {
                    mean: mean_of(m),
                    whiten,
                },
            );
        }
        let global_whiten = shared.or_else(|| whiten_of(shared_covariance()));
        groups.insert(
            GLOBAL_KEY.to_string(),
            GroupStats {
                mean: global_mean,
                whiten: global_whiten,
            },
        );
        Ok(Standardizer { config, groups })
    }

    /// Reads the statistics of a model file whose config has a standardisation.
    ///
    /// With shared axes (`whitening: global`) a modality's whitening matrix is the
    /// global one: files written since stored it once (`standardize.whiten.all`), and
    /// older files, which stored a copy per modality, still load as they were.
    pub fn from_file(
        config: &StandardizeConfig,
        file: &ModelFile,
        features: i64,
    ) -> Result<Standardizer, ModelError> {
        config.validate(features).map_err(ModelError::BadConfig)?;
        let out = config.output_dims(features);
        let whiten_of = |name: &str| -> Result<Option<Tensor>, ModelError> {
            let key = format!("{WHITEN_PREFIX}{name}");
            match file.tensors.get(&key) {
                Some(w) => {
                    expect_shape(&key, w, &[features, out])?;
                    Ok(Some(w.shallow_clone()))
                }
                None => Ok(None),
            }
        };
        let shared = match config.whiten {
            Some(_) => Some(whiten_of(GLOBAL_KEY)?.ok_or_else(|| {
                ModelError::MissingTensor(format!("{WHITEN_PREFIX}{GLOBAL_KEY}"))
            })?),
            None => None,
        };
        let mut groups = BTreeMap::new();
        for (name, mean) in file
            .tensors
            .iter()
            .filter_map(|(n, t)| n.strip_prefix(MEAN_PREFIX).map(|k| (k, t)))
        {
            expect_shape(&format!("{MEAN_PREFIX}{name}"), mean, &[features])?;
            let whiten =
                match (&shared, config.whitening) {
                    (None, _) => None,
                    (Some(shared), Scope::Global) => {
                        Some(whiten_of(name)?.unwrap_or_else(|| shared.shallow_clone()))
                    }
                    (Some(_), Scope::Modality) => Some(whiten_of(name)?.ok_or_else(|| {
                        ModelError::MissingTensor(format!("{WHITEN_PREFIX}{name}"))
                    })?),
                };
            groups.insert(
                name.to_string(),
                GroupStats {
                    mean: mean.shallow_clone(),
                    whiten,
                },
            );
        }
        if !groups.contains_key(GLOBAL_KEY) {
            return Err(ModelError::MissingTensor(format!(
                "{MEAN_PREFIX}{GLOBAL_KEY}"
            )));
        }
        Ok(Standardizer {
            config: config.clone(),
            groups,
        })
    }

    /// The tensors to store in a model file. Shared axes are stored once, as the
    /// global group's: every modality's matrix is that one.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let shared_axes = self.config.whitening == Scope::Global;
        let mut out = Vec::new();
        for (key, g) in &self.groups {
            out.push((format!("{MEAN_PREFIX}{key}"), g.mean.shallow_clone()));
            if let Some(w) = g
                .whiten
                .as_ref()
                .filter(|_| key == GLOBAL_KEY || !shared_axes)
            {
                out.push((format!("{WHITEN_PREFIX}{key}"), w.shallow_clone()));
            }
        }
        out
    }

    /// Standardises a batch `[B, d]` of features of one modality (f32, CPU): `[B, k]`,
    /// L2-normalised.
    pub fn apply(&self, features: &Tensor, modality: Modality) -> Tensor {
        let g = self
            .groups
            .get(modality.name())
            .unwrap_or(&self.groups[GLOBAL_KEY]);
        let centred = features.to_device(Device::Cpu).to_kind(Kind::Float) - &g.mean;
        match &g.whiten {
            Some(w) => l2_normalize(&centred.matmul(w)),
            None => l2_normalize(&centred),
        }
    }

    /// As [`Standardizer::apply`], for one vector.
    pub fn apply_one(&self, feature: &[f32], modality: Modality) -> Vec<f32> {
        let y = self.apply(&Tensor::from_slice(feature).unsqueeze(0), modality);
        Vec::<f32>::try_from(y.squeeze_dim(0)).expect("a f32 vector")
    }
}

/// `[d, k]`: the top-k eigenvectors of `covariance`, each divided by the square root
/// of its (shrunk) eigenvalue.
fn whitening_matrix(covariance: &Tensor, k: i64, shrinkage: f64) -> Tensor {
    let covariance = covariance.to_kind(Kind::Double);
    let (values, vectors) = covariance.linalg_eigh("L");
    let d = values.size()[0];
    // eigh sorts ascending: the top k are the last k.
    let top_values = values.narrow(0, d - k, k).flip([0]).clamp_min(0.0);
    let top_vectors = vectors.narrow(1, d - k, k).flip([1]);
    let floor = shrinkage * values.clamp_min(0.0).mean(Kind::Double).double_value(&[]);
    let scale = (top_values + floor.max(1e-12)).rsqrt();
    (top_vectors * scale.unsqueeze(0)).to_kind(Kind::Float)
}

fn expect_shape(name: &str, t: &Tensor, shape: &[i64]) -> Result<(), ModelError> {
    if t.size() == shape {
        Ok(())
    } else {
        Err(ModelError::ShapeMismatch {
            name: name.to_string(),
            expected: shape.to_vec(),
            found: t.size(),
        })
    }
}

/// Whether a tensor name belongs to the standardisation (stored in f32 whatever the
/// weights' precision: whitening scales are large and f16 would round them).
pub fn is_standardize_tensor(name: &str) -> bool {
    name.starts_with("standardize.")
}
