//! `m3ret-train standardize`: fits centering and whitening on a split's features and
//! writes a model file that carries them (see `m3ret_core::model::standardize`);
//! and the standardisation *forms* `eval` fits to the baselines and the model's
//! features, so that every method is compared in its best form.

use crate::embedset;
use crate::eval::cap_per_class;
use crate::manifest;
use m3ret_core::modality::Modality;
use m3ret_core::model::config::{Pooling, FORMAT_VERSION};
use m3ret_core::model::file::{self, WeightDtype};
use m3ret_core::model::{
    parse_device, Embedder, ModelFile, Scope, StandardizeConfig, Standardizer,
};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct StandardizeArgs {
    /// The model file whose features are standardised (from pretrain or export).
    #[arg(long)]
    pub model: PathBuf,
    /// A manifest CSV or a folder tree <modality>/<class>/<file>.
    #[arg(long, required_unless_present = "rewrite")]
    pub manifest: Option<PathBuf>,
    /// Fit nothing: write the model's own statistics again in the current format (older
    /// files stored shared whitening axes once per modality; this stores them once), the
    /// weights in the precision they had. The vectors it makes do not change. Only
    /// --model and --out apply.
    #[arg(long, conflicts_with_all = ["manifest", "pooling", "pool_blocks", "max_per_class", "dtype"])]
    pub rewrite: bool,
    /// Manifest splits to fit on (repeatable). Never the split you evaluate on. NAME:a and
    /// NAME:b are the two halves of split NAME, hashed by file.
    #[arg(long = "split", default_value = "train")]
    pub splits: Vec<String>,
    /// The model file to write: the same weights with the fitted statistics.
    #[arg(long)]
    pub out: PathBuf,
    /// Whose mean is subtracted: modality (one per modality) or global.
    #[arg(long, default_value = "modality", value_parser = ["modality", "global"])]
    pub centering: String,
    /// PCA whitening to this many components (0: centering only).
    #[arg(long, default_value_t = 64)]
    pub whiten: i64,
    /// Whose covariance the whitening comes from: global (one set of axes; vectors of
    /// different modalities stay comparable) or modality (its own axes per modality:
    /// cross-modal distances lose their meaning).
    #[arg(long, default_value = "global", value_parser = ["modality", "global"])]
    pub whitening: String,
    /// Added to every eigenvalue, as a fraction of the mean eigenvalue.
    #[arg(long, default_value_t = 0.1)]
    pub shrinkage: f64,
    /// Use at most this many items of each class (evenly spread over the class).
    #[arg(long)]
    pub max_per_class: Option<usize>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision on the CPU: auto (bf16 where the CPU has AMX-BF16 or AVX512-BF16, else f32), bf16 or f32. CUDA runs in bf16 whatever this says.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bf16", "f32"])]
    pub precision: String,
    /// Studies per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Pooling of the token outputs to use (and write): cls, avg, cls+avg or gridNxN (the
    /// means of N x N regions of the token grid, concatenated; N from 1 to 8) (default: the model's).
    #[arg(long, value_parser = |s: &str| Pooling::parse(s))]
    pub pooling: Option<Pooling>,
    /// Features as the mean over the last K blocks' pooled outputs (default: the model's).
    #[arg(long)]
    pub pool_blocks: Option<i64>,
    /// Weight precision of the written file (the statistics are always f32).
    #[arg(long, default_value = "f16", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
}

impl StandardizeArgs {
    fn config(&self) -> StandardizeConfig {
        StandardizeConfig {
            centering: Scope::parse(&self.centering).expect("validated by clap"),
            whiten: (self.whiten > 0).then_some(self.whiten),
            whitening: Scope::parse(&self.whitening).expect("validated by clap"),
            shrinkage: self.shrinkage,
            fitted_on: serde_json::Value::Null,
        }
    }
}

pub fn run(args: StandardizeArgs) -> Result<(), String> {
    let device = parse_device(&args.device).map_err(|e| e.to_string())?;
    if args.rewrite {
        return rewrite(&args.model, &args.out);
    }
    let mut file = ModelFile::from_path(&args.model).map_err(|e| e.to_string())?;
    let dtype = WeightDtype::parse(&args.dtype).expect("validated by clap");
    let manifest = args.manifest.as_ref().expect("required by clap");
    // A new pooling makes other features: earlier statistics no longer apply.
    if let Some(p) = args.pooling {
        file.config.pooling = p;
        file.config.standardize = None;
    }
    if let Some(k) = args.pool_blocks {
        file.config.pool_blocks = k;
        file.config.standardize = None;
    }
    file.config.validate()?;
    let model = Embedder::from_file(&file, device).map_err(|e| e.to_string())?;
    model.set_cpu_precision(m3ret_core::precision::resolve_name(&args.precision)?.precision);
    let items = cap_per_class(
        manifest::select(manifest::load(manifest)?, &args.splits, &[]),
        args.max_per_class,
    );
    if items.is_empty() {
        return Err("no items to fit on".into());
    }
    eprintln!(
        "embedding {} items to fit the standardisation on",
        items.len()
    );
    let (embedded, skipped) = embedset::embed(&items, &model, None, args.batch);
    let features: Vec<(Modality, Vec<f32>)> = embedded
        .iter()
        .map(|e| (e.modality, e.features.clone()))
        .collect();
    let mut config = args.config();
    config.fitted_on = serde_json::json!({
        "manifest": manifest.display().to_string(),
        "splits": args.splits,
        "max_per_class": args.max_per_class,
        "items": per_modality_counts(&features),
        "skipped": skipped,
    });
    let standardizer = Standardizer::fit(config.clone(), &features)?;
    write(&file, standardizer, &args.out, dtype)?;
    eprintln!(
        "wrote {} ({} items fitted, {skipped} unreadable)",
        args.out.display(),
        features.len()
    );
    Ok(())
}

/// `--rewrite`: the file's statistics as they are, written in the current format, its
/// weights in their own precision.
fn rewrite(model: &std::path::Path, out: &std::path::Path) -> Result<(), String> {
    let bytes = std::fs::read(model).map_err(|e| format!("{}: {e}", model.display()))?;
    let file = ModelFile::from_bytes(&bytes).map_err(|e| e.to_string())?;
    let dtype = file::stored_weight_dtype(&bytes).map_err(|e| e.to_string())?;
    let config = file
        .config
        .standardize
        .as_ref()
        .ok_or("the model has no standardisation to rewrite")?;
    let standardizer = Standardizer::from_file(config, &file, file.config.feature_dims())
        .map_err(|e| e.to_string())?;
    write(&file, standardizer, out, dtype)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn per_modality_counts(features: &[(Modality, Vec<f32>)]) -> serde_json::Value {
    let mut counts = std::collections::BTreeMap::new();
    for (m, _) in features {
        *counts.entry(m.name()).or_insert(0usize) += 1;
    }
    serde_json::json!(counts)
}

/// The model's weights with `standardizer` in place of any earlier statistics.
fn write(
    file: &ModelFile,
    standardizer: Standardizer,
    out: &std::path::Path,
    dtype: WeightDtype,
) -> Result<(), String> {
    let mut tensors: Vec<(String, tch::Tensor)> = file
        .tensors
        .iter()
        .filter(|(n, _)| !m3ret_core::model::standardize::is_standardize_tensor(n))
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    tensors.extend(standardizer.tensors());
    let mut config = file.config.clone();
    config.standardize = Some(standardizer.config);
    config.format_version = FORMAT_VERSION;
    config.validate()?;
    file::save(out, &config, &tensors, dtype).map_err(|e| e.to_string())
}

/// One way of standardising a method's vectors before retrieval.
pub struct Form {
    pub name: String,
    pub config: Option<StandardizeConfig>,
}

impl Form {
    /// Whether vectors of different modalities stay in one space (cross-modal tasks
    /// make sense).
    pub fn shared_space(&self) -> bool {
        self.config
            .as_ref()
            .is_none_or(|c| c.whiten.is_none() || c.whitening == Scope::Global)
    }

    /// Each of `sets` transformed with statistics fitted once on `fit` (all with
    /// their modality).
    pub fn apply<const N: usize>(
        &self,
        fit: &[(Modality, Vec<f32>)],
        sets: [&[(Modality, Vec<f32>)]; N],
    ) -> Result<[Vec<Vec<f32>>; N], String> {
        let fitted = match &self.config {
            Some(config) => Some(Standardizer::fit(config.clone(), fit)?),
            None => None,
        };
        Ok(sets.map(|set| {
            set.iter()
                .map(|(m, v)| match &fitted {
                    Some(s) => s.apply_one(v, *m),
                    None => v.clone(),
                })
                .collect()
        }))
    }
}

/// The forms eval tries on every method: as it is, centred per modality, and whitened
/// to `k` components with shared or per-modality axes.
pub fn forms(k: i64, shrinkage: f64) -> Vec<Form> {
    let config = |whiten: Option<i64>, whitening: Scope| StandardizeConfig {
        centering: Scope::Modality,
        whiten,
        whitening,
        shrinkage,
        fitted_on: serde_json::Value::Null,
    };
    vec![
        Form {
            name: "plain".into(),
            config: None,
        },
        Form {
            name: "centred".into(),
            config: Some(config(None, Scope::Global)),
        },
        Form {
            name: format!("whitened-{k}"),
            config: Some(config(Some(k), Scope::Global)),
        },
        Form {
            name: format!("whitened-{k}-per-modality"),
            config: Some(config(Some(k), Scope::Modality)),
        },
    ]
}
