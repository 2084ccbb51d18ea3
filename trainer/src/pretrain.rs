//! `m3ret-train pretrain`: MAE or SimDINO on a manifest, resumable.

use crate::augment;
use crate::checkpoint::{self, State};
use crate::decode_cache::DecodeCache;
use crate::loader::{self, BatchSizes, Loader, LoaderOptions};
use crate::manifest;
use crate::optim::{self, AdamW};
use crate::schedule::{Cycle, Schedules};
use crate::trainee::Trainee;
use indicatif::{ProgressBar, ProgressStyle};
use m3ret_core::modality::Modality;
use m3ret_core::model::{parse_device, Method, ModelConfig, Preset};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PretrainArgs {
    /// Pretraining objective: mae (masked reconstruction) or simdino (self-distillation with coding-rate regularisation).
    #[arg(long, value_parser = ["mae", "simdino"])]
    pub method: String,
    /// Encoder size: tiny (192 wide, 12 deep, 3 heads), small (384, 12, 6) or base (768, 12, 12).
    #[arg(long, default_value = "small", value_parser = ["tiny", "small", "base"])]
    pub preset: String,
    /// A manifest CSV (path,modality,region,cls,kind,split,...; paths relative to it) or a folder tree <modality>/<class>/<file>.
    #[arg(long)]
    pub manifest: PathBuf,
    /// Output folder: checkpoint/, metrics.jsonl, loss.png, model.safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of optimiser steps (one batch of one modality group each).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<i64>,
    /// Passes over the training items (converted to steps: items / batch size, summed over groups).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Batch size for 2D images (X-ray, ultrasound stills, endoscopy stills, CT/MRI slices).
    #[arg(long, default_value_t = 32)]
    pub batch_2d: usize,
    /// Batch size for videos (16 frames each).
    #[arg(long, default_value_t = 32)]
    pub batch_video: usize,
    /// Batch size for volumes (64 slices each).
    #[arg(long, default_value_t = 16)]
    pub batch_volume: usize,
    /// Peak learning rate (after warm-up; cosine decay follows).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Linear warm-up steps (default: 5% of the steps).
    #[arg(long)]
    pub warmup_steps: Option<i64>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Gradient clipping: maximum global L2 norm.
    #[arg(long, default_value_t = 3.0)]
    pub clip: f64,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision on the CPU: auto (bf16 where the CPU has AMX-BF16 or AVX512-BF16, else f32), bf16 or f32. CUDA runs in bf16 whatever this says.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bf16", "f32"])]
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Leave a modality out of pretraining (repeatable), e.g. mri for the paper's unseen-MRI setting.
    #[arg(long = "exclude-modality")]
    pub exclude_modality: Vec<String>,
    /// Manifest splits to train on (repeatable; default: every row; NAME:a and NAME:b are
    /// the two halves of split NAME, hashed by file).
    #[arg(long = "split")]
    pub splits: Vec<String>,
    /// Random seed (weights, sampling, masks, augmentations).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue a run from its output folder (or a checkpoint folder), with its own settings; --out, --stop-after, --extend-*, --device, --precision, --workers, --threads and --decode-cache-mib are taken from this command (an --out other than the run's folder forks the run there, with its learning curve so far, and leaves the original as it was).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Input side in pixels (the paper: 256). Smaller trains faster.
    #[arg(long, default_value_t = 256)]
    pub image_size: i64,
    /// Override the preset's depth (number of blocks), for quick experiments.
    #[arg(long)]
    pub depth: Option<i64>,
    /// Save a checkpoint every N steps (and always at the end).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: i64,
    /// Data-decoding worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Memory for decoded 2D studies, in MiB, so that each is decoded once per run (videos and volumes are sampled anew at each draw); 0: decode at every draw.
    #[arg(long, default_value_t = 4096)]
    #[serde(default = "default_decode_cache_mib")]
    pub decode_cache_mib: usize,
    /// libtorch intra-op threads for the training step (default: every core).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Fail on the first item that cannot be decoded (default: skip it with a warning and count it).
    #[arg(long)]
    pub strict: bool,
    /// SimDINO coding-rate epsilon (the paper: 0.5; the official README trains with 0.05 for eps^2).
    #[arg(long, default_value_t = 0.5)]
    pub eps: f64,
    /// SimDINO local views for 2D inputs (the paper: 10).
    #[arg(long, default_value_t = 10)]
    pub local_views_2d: usize,
    /// SimDINO local views for video and volume inputs (the paper: 4).
    #[arg(long, default_value_t = 4)]
    pub local_views_3d: usize,
    /// Stop after this many steps of this invocation (the run stays resumable), e.g. to fit a time budget.
    #[arg(long)]
    pub stop_after: Option<i64>,
    /// Extend a finished run (with --resume) by this many steps: a further cosine cycle with
    /// its own warm-up (5% of it), peak learning rate (--extend-lr) and teacher momentum (from
    /// the run's --teacher-momentum, or the default for the cycle's length, up to its end
    /// value), for a curve that still rises when the planned schedule has ended.
    #[arg(long, requires = "resume", conflicts_with = "extend_epochs")]
    #[serde(skip)]
    pub extend_steps: Option<i64>,
    /// Extend a finished run (with --resume) by this many passes over the training items.
    #[arg(long, requires = "resume")]
    #[serde(skip)]
    pub extend_epochs: Option<f64>,
    /// Peak learning rate of the extension cycle (default: the run's --lr).
    #[arg(long, requires = "resume")]
    #[serde(skip)]
    pub extend_lr: Option<f64>,
    /// The cycles the run was extended by: a setting of the run, which a resume keeps.
    #[arg(skip)]
    #[serde(default)]
    pub extensions: Vec<Cycle>,
    /// How steps are shared among the (modality, layout) groups: proportional (each step draws a group with probability proportional to its item count, at least --group-floor) or turns (groups take turns whatever their size).
    #[arg(long, default_value = "proportional", value_parser = ["proportional", "turns"])]
    #[serde(default = "default_group_sampling")]
    pub group_sampling: String,
    /// With proportional sampling: the least share of steps any group gets (groups of a few volumes or videos still train).
    #[arg(long, default_value_t = 0.02)]
    #[serde(default = "default_group_floor")]
    pub group_floor: f64,
    /// SimDINO: the teacher's EMA momentum at the first step (cosine schedule to --teacher-momentum-end). Default: 0.996, or 1 - 10/steps when lower, so that a short run's teacher forgets its random start (the product of the momenta is then about e^-10).
    #[arg(long)]
    #[serde(default)]
    pub teacher_momentum: Option<f64>,
    /// SimDINO: the teacher's EMA momentum at the last step.
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "default_momentum_end")]
    pub teacher_momentum_end: f64,
    /// SimDINO: the encoder written to model.safetensors at the end: teacher (the EMA weights, as the reference evaluates) or student.
    #[arg(long, default_value = "teacher", value_parser = ["teacher", "student"])]
    #[serde(default = "default_export_branch")]
    pub export_branch: String,
    /// SimDINO: smallest area fraction of a local crop (the paper: 0.05).
    #[arg(long, default_value_t = 0.05)]
    #[serde(default = "default_local_min")]
    pub local_crop_min: f64,
    /// SimDINO: largest area fraction of a local crop (the paper: 0.4; global crops take 0.4-1).
    #[arg(long, default_value_t = 0.4)]
    #[serde(default = "default_local_max")]
    pub local_crop_max: f64,
    /// SimDINO: weight of the alignment term against the coding rate (the reference's MCRLoss coeff).
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "default_alignment_weight")]
    pub alignment_weight: f64,
    /// SimDINO: hidden width of the projection head (default: the preset's, 2048). The head is
    /// not exported; a narrower one makes the checkpoint (student and teacher) smaller.
    #[arg(long)]
    #[serde(default)]
    pub head_hidden: Option<i64>,
    /// SimDINO: output width of the projection head, where alignment and coding rate are
    /// measured (default: the preset's, 256). The coding rate of a batch of m features in d
    /// dimensions is at its ceiling once they are nearly orthogonal, which random codes
    /// already are when m is much smaller than d (the reference trains m = 1024 per step
    /// against d = 256): with small batches a narrower output keeps the rate demanding.
    #[arg(long, value_parser = clap::value_parser!(i64).range(2..))]
    #[serde(default)]
    pub head_out: Option<i64>,
    /// Precision of the checkpoint: f32 (exact resumes), or f16 (weights in f16, AdamW's
    /// moments in bf16: about a third of the size, for a checkpoint kept in a repository;
    /// each resume then starts from the rounded state).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    #[serde(default = "default_checkpoint_dtype")]
    pub checkpoint_dtype: String,
    /// Every N steps (and at step 0 and at the last step), score the encoder that would be
    /// exported on --eval-split with the shipped readout (grid4x4 over every block, whitened
    /// to 64 with statistics fitted on --eval-fit-split): one line in OUT/log.jsonl.
    #[arg(long)]
    #[serde(default)]
    pub eval_every: Option<i64>,
    /// The split the learning curve is scored on.
    #[arg(long, default_value = "heldout")]
    #[serde(default = "default_eval_split")]
    pub eval_split: String,
    /// The split the learning curve's standardisation is fitted on.
    #[arg(long, default_value = "train")]
    #[serde(default = "default_eval_fit_split")]
    pub eval_fit_split: String,
    /// Items per class of --eval-fit-split (evenly spread over the class).
    #[arg(long, default_value_t = 200)]
    #[serde(default = "default_eval_fit_max")]
    pub eval_fit_max_per_class: usize,
    /// SimDINO: largest additive intensity shift of a view, on [0, 1] intensities (the reference: 0.1; 0: none).
    #[arg(long, default_value_t = 0.1)]
    #[serde(default = "default_intensity_jitter")]
    pub intensity_jitter: f64,
    /// SimDINO: largest contrast change of a view, a factor in [1 - c, 1 + c] (the reference: 0.4; 0: none).
    #[arg(long, default_value_t = 0.4)]
    #[serde(default = "default_contrast_jitter")]
    pub contrast_jitter: f64,
}

// Defaults for settings that runs saved before they existed did not record.
fn default_group_sampling() -> String {
    "turns".into()
}
fn default_precision() -> String {
    "auto".into()
}

fn default_alignment_weight() -> f64 {
    1.0
}
fn default_checkpoint_dtype() -> String {
    "f32".into()
}
fn default_eval_split() -> String {
    "heldout".into()
}
fn default_eval_fit_split() -> String {
    "train".into()
}
fn default_eval_fit_max() -> usize {
    200
}
fn default_decode_cache_mib() -> usize {
    4096
}
fn default_group_floor() -> f64 {
    0.02
}
fn default_momentum_end() -> f64 {
    1.0
}
fn default_export_branch() -> String {
    "teacher".into()
}
fn default_local_min() -> f64 {
    0.05
}
fn default_local_max() -> f64 {
    0.4
}
fn default_intensity_jitter() -> f64 {
    0.1
}
fn default_contrast_jitter() -> f64 {
    0.4
}

fn excluded(args: &PretrainArgs) -> Result<Vec<Modality>, String> {
    args.exclude_modality
        .iter()
        .map(|m| {
            Modality::ALL
                .into_iter()
                .find(|x| x.name() == m)
                .ok_or_else(|| format!("--exclude-modality: unknown modality \"{m}\""))
        })
        .collect()
}

pub fn model_config(args: &PretrainArgs) -> ModelConfig {
    let method = if args.method == "mae" {
        Method::Mae
    } else {
        Method::Simdino
    };
    let mut config = ModelConfig::new(
        method,
        Preset::parse(&args.preset).expect("validated by clap"),
    );
    config.input.image_size = args.image_size;
    if let Some(d) = args.depth {
        config.encoder.depth = d;
    }
    if let Some(h) = config.head.as_mut() {
        h.eps = args.eps;
        if let Some(hidden) = args.head_hidden {
            h.hidden = hidden;
        }
        if let Some(out) = args.head_out {
            h.out = out;
        }
    }
    config
}

pub fn run(mut args: PretrainArgs) -> Result<(), String> {
    let mut resumed_at = None;
    if let Some(from) = args.resume.clone() {
        // A resumed run keeps its own settings; only how long it runs and where (device,
        // CPU precision, workers, threads, decode cache) may change.
        let cp = checkpoint::folder(&from);
        let text = std::fs::read_to_string(cp.join("state.json"))
            .map_err(|e| format!("--resume {}: {e}", from.display()))?;
        let state: State = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let saved: PretrainArgs =
            serde_json::from_value(state.settings).map_err(|e| e.to_string())?;
        fork_learning_curve(&cp, &args.out)?;
        args = PretrainArgs {
            resume: Some(from),
            // Where this command says: resuming into another folder forks the run and
            // leaves the one it came from as it was.
            out: args.out,
            stop_after: args.stop_after,
            device: args.device,
            precision: args.precision,
            workers: args.workers,
            threads: args.threads,
            decode_cache_mib: args.decode_cache_mib,
            extend_steps: args.extend_steps,
            extend_epochs: args.extend_epochs,
            extend_lr: args.extend_lr,
            ..saved
        };
        resumed_at = Some((state.step, state.total_steps));
    }
    let config = model_config(&args);
    config.validate()?;
    if !(0.0 < args.local_crop_min
        && args.local_crop_min <= args.local_crop_max
        && args.local_crop_max <= 1.0)
    {
        return Err(format!(
            "--local-crop-min {} and --local-crop-max {}: need 0 < min <= max <= 1",
            args.local_crop_min, args.local_crop_max
        ));
    }
    if !(0.0..=1.0).contains(&args.intensity_jitter) || !(0.0..1.0).contains(&args.contrast_jitter)
    {
        return Err(format!(
            "--intensity-jitter {} and --contrast-jitter {}: need 0 <= intensity <= 1 and 0 <= contrast < 1",
            args.intensity_jitter, args.contrast_jitter
        ));
    }
    if !(0.0..=1.0).contains(&args.group_floor) {
        return Err(format!(
            "--group-floor {}: a share of steps, between 0 and 1",
            args.group_floor
        ));
    }
    let items = manifest::select(
        manifest::load(&args.manifest)?,
        &args.splits,
        &excluded(&args)?,
    );
    let sizes = BatchSizes {
        image2d: args.batch_2d,
        video: args.batch_video,
        volume: args.batch_volume,
    };
    let groups = loader::groups(&items, sizes);
    if groups.is_empty() {
        return Err(format!(
            "{}: no training items (after --split and --exclude-modality)",
            args.manifest.display()
        ));
    }
    let steps_per_epoch = groups
        .iter()
        .map(|g| g.items.len().div_ceil(g.batch) as f64)
        .sum::<f64>();
    let planned = match (args.steps, args.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => (e * steps_per_epoch).ceil() as i64,
        (None, None) => return Err("give --steps or --epochs".into()),
    }
    .max(1);
    let first = Cycle::new(
        0,
        planned,
        args.lr,
        args.warmup_steps,
        args.teacher_momentum,
    );
    extend(&mut args, resumed_at, &first, steps_per_epoch)?;
    let schedules = Schedules::new(first, &args.extensions, args.teacher_momentum_end)?;
    let total = schedules.total();
    tch::manual_seed(args.seed as i64);
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let device = parse_device(&args.device).map_err(|e| e.to_string())?;
    let precision = m3ret_core::precision::resolve_name(&args.precision)?;
    let trainee = Trainee::new(&config, device);
    let mut opt = AdamW::new(0.9, 0.95, args.weight_decay);
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let (mut start, mut samples, mut seconds) = (0, 0u64, 0.0);
    if let Some(from) = &args.resume {
        let state = checkpoint::load(from, &trainee, &mut opt)?;
        (start, samples, seconds) = (state.step, state.samples, state.seconds);
        eprintln!("resuming at step {start} of {total}");
    }
    let curve = match args.eval_every {
        Some(n) if n < 1 => return Err(format!("--eval-every {n}: a number of steps, 1 or more")),
        Some(_) => Some(crate::curve::Curve::new(
            &args.manifest,
            &args.eval_split,
            &args.eval_fit_split,
            args.eval_fit_max_per_class,
            &args.out,
        )?),
        None => None,
    };
    let train_items = items.len() as f64;
    let end = args
        .stop_after
        .map(|n| (start + n).min(total))
        .unwrap_or(total);
    eprintln!(
        "pretraining {} {} on {} items in {} groups ({}), steps {start}..{end} of {total}, device {device:?}, CPU precision {}",
        args.method, args.preset, items.len(), groups.len(),
        groups.iter().map(|g| format!("{} x{}", g.name(), g.items.len())).collect::<Vec<_>>().join(", "),
        precision.describe()
    );
    let schedule = loader::Schedule::new(
        &groups,
        args.group_sampling == "proportional",
        args.group_floor,
    );
    eprintln!(
        "share of steps per group: {}",
        groups
            .iter()
            .zip(schedule.shares())
            .map(|(g, p)| format!("{} {:.3}", g.name(), p))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let crops = augment::ViewSettings {
        views: 0,
        scale: (args.local_crop_min, args.local_crop_max),
        intensity: args.intensity_jitter,
        contrast: args.contrast_jitter,
    };
    let options = LoaderOptions {
        seed: args.seed,
        workers: args.workers,
        queue: 4,
        strict: args.strict,
        input: config.input.clone(),
        cache: (args.decode_cache_mib > 0)
            .then(|| Arc::new(DecodeCache::new(args.decode_cache_mib << 20))),
    };
    let cache = options.cache.clone();
    let mut loader = Loader::start(groups, schedule, start, end, options);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.out.join("metrics.jsonl"))
        .map_err(|e| e.to_string())?;
    let bar = ProgressBar::new((end - start) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
            .expect("template"),
    );
    let settings = serde_json::to_value(&args).expect("args serialise");
    let started = Instant::now();
    let run_seconds = |seconds: f64| seconds + started.elapsed().as_secs_f64();
    let mut window = LossWindow::default();
    let learning_curve = |step: i64, samples: u64, seconds: f64, loss: Option<f64>| match &curve {
        Some(c) if c.last_logged_step().is_none_or(|s| s < step) => {
            let record = serde_json::json!({
                "step": step, "samples": samples, "epochs": samples as f64 / train_items,
                "hours": seconds / 3600.0, "loss": loss, "lr": schedules.learning_rate(step),
            });
            let mut encoder = crate::export::encoder_file(
                &config,
                &trainee.named_tensors(),
                &args.export_branch,
            )?;
            encoder.config = crate::curve::readout(&encoder.config);
            let scored = Instant::now();
            let (trained, pixels) = c.score(&encoder, precision.precision)?;
            eprintln!(
                "step {step}: held-out R@1 {trained:?} ({:.0} s)",
                scored.elapsed().as_secs_f64()
            );
            c.log(record, &trained, &pixels)
        }
        _ => Ok(()),
    };
    // Step 0 (the untrained encoder), or an evaluation a stopped run checkpointed
    // but did not get to log.
    if start == 0 || args.eval_every.is_some_and(|n| start % n == 0) || start == total {
        learning_curve(start, samples, seconds, None)?;
    }
    let run_start_samples = samples;
    for step in start..end {
        let waited = Instant::now();
        let batch = loader.next()?;
        let data_wait_s = waited.elapsed().as_secs_f64();
        let computed = Instant::now();
        let x = batch.tensor.to_device(device);
        let lr = schedules.learning_rate(step);
        optim::zero_grad(trainee.trainable());
        let views = if x.size()[2] > config.input.slices_2d {
            args.local_views_3d
        } else {
            args.local_views_2d
        };
        let local = augment::ViewSettings { views, ..crops };
        // bf16 autocast on CUDA (the paper's precision); on the CPU, --precision.
        let out = m3ret_core::torch_ext::autocast(device, precision.precision, || {
            trainee.loss(
                &x,
                &config,
                local,
                args.alignment_weight,
                args.seed ^ loader::mix(step as u64),
            )
        });
        out.loss.backward();
        let grad_norm = optim::clip_grad_norm(trainee.trainable(), args.clip);
        opt.step(trainee.trainable(), lr);
        trainee.after_step(schedules.teacher_momentum(step));
        samples += x.size()[0] as u64;
        let loss = out.loss.double_value(&[]);
        window.add(loss);
        let step_s = computed.elapsed().as_secs_f64();
        let rate = (samples - run_start_samples) as f64 / started.elapsed().as_secs_f64();
        let mut record = serde_json::json!({
            "step": step + 1, "group": batch.group, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "samples_per_s": rate, "step_s": step_s, "data_wait_s": data_wait_s,
        });
        for (k, v) in &out.parts {
            record[*k] = serde_json::json!(v);
        }
        if config.method == Method::Simdino {
            record["teacher_momentum"] = serde_json::json!(schedules.teacher_momentum(step));
        }
        writeln!(log, "{record}").map_err(|e| e.to_string())?;
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {rate:.1} samples/s"));
        bar.inc(1);
        let evaluate = args.eval_every.is_some_and(|n| (step + 1) % n == 0) || step + 1 == total;
        if (step + 1) % args.checkpoint_every == 0 || step + 1 == end || evaluate {
            let state = State {
                step: step + 1,
                total_steps: total,
                seed: args.seed,
                optimizer_steps: opt.steps,
                samples,
                seconds: run_seconds(seconds),
                settings: settings.clone(),
            };
            checkpoint::save(
                &args.out,
                &config,
                &trainee,
                &opt,
                &state,
                &args.checkpoint_dtype,
            )?;
        }
        if evaluate {
            learning_curve(step + 1, samples, run_seconds(seconds), window.take())?;
        }
    }
    bar.finish();
    let skipped = loader.skipped.load(std::sync::atomic::Ordering::SeqCst);
    if skipped > 0 {
        eprintln!("{skipped} items could not be decoded and were skipped");
    }
    if let Some(c) = cache {
        let s = c.stats();
        eprintln!(
            "decode cache: {} 2D studies kept ({} MiB); {} decodes, {} reuses",
            s.studies,
            s.bytes >> 20,
            s.decodes,
            s.reuses
        );
    }
    finish(&args, end, total)
}

/// A run resumed into another folder (a fork) takes the learning curve so far with it,
/// so that its evaluations keep the step-0 zero lines beside them.
fn fork_learning_curve(checkpoint: &std::path::Path, out: &std::path::Path) -> Result<(), String> {
    let run = checkpoint.parent().unwrap_or(checkpoint);
    let (from, to) = (run.join("log.jsonl"), out.join("log.jsonl"));
    let same = |a: &std::path::Path, b: &std::path::Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    if !from.is_file() || to.exists() || same(run, out) {
        return Ok(());
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::copy(&from, &to)
        .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))?;
    Ok(())
}

/// Adds the cycle that --extend-steps or --extend-epochs asks for to the run's
/// extensions; only a run that has finished its schedules can be extended.
fn extend(
    args: &mut PretrainArgs,
    resumed_at: Option<(i64, i64)>,
    first: &Cycle,
    steps_per_epoch: f64,
) -> Result<(), String> {
    let steps = match (args.extend_steps, args.extend_epochs) {
        (Some(n), _) => n,
        (None, Some(e)) => (e * steps_per_epoch).ceil() as i64,
        (None, None) => return Ok(()),
    };
    if steps < 1 {
        return Err(format!(
            "--extend-steps {steps}: a number of steps, 1 or more"
        ));
    }
    let end = args.extensions.last().map_or(first.end, |c| c.end);
    match resumed_at {
        Some((step, _)) if step == end => {}
        Some((step, total)) => {
            return Err(format!(
                "--extend-steps: the run is at step {step} of {total}; resume it to the end first (without --extend-steps)"
            ))
        }
        None => return Err("--extend-steps and --extend-epochs need --resume".into()),
    }
    let lr = args.extend_lr.unwrap_or(args.lr);
    if !(lr > 0.0 && lr.is_finite()) {
        return Err(format!("--extend-lr {lr}: a positive learning rate"));
    }
    args.extensions
        .push(Cycle::new(end, steps, lr, None, args.teacher_momentum));
    Ok(())
}

/// The mean loss of the steps since the last evaluation (of this invocation).
#[derive(Default)]
struct LossWindow {
    sum: f64,
    steps: usize,
}

impl LossWindow {
    fn add(&mut self, loss: f64) {
        self.sum += loss;
        self.steps += 1;
    }

    fn take(&mut self) -> Option<f64> {
        let mean = (self.steps > 0).then(|| self.sum / self.steps as f64);
        *self = LossWindow::default();
        mean
    }
}

/// At the end of the run: the loss curve, and the exported model once all steps are done.
fn finish(args: &PretrainArgs, end: i64, total: i64) -> Result<(), String> {
    let text = std::fs::read_to_string(args.out.join("metrics.jsonl")).unwrap_or_default();
    let losses: Vec<f64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["loss"].as_f64())
        .collect();
    crate::plot::loss_curve(&losses, &args.out.join("loss.png"))?;
    if end == total {
        let out = args.out.join("model.safetensors");
        crate::export::export(
            &args.out,
            &out,
            m3ret_core::model::WeightDtype::F32,
            &args.export_branch,
        )?;
        eprintln!(
            "wrote {} ({} {}, {} steps, {} encoder)",
            out.display(),
            args.method,
            args.preset,
            total,
            args.export_branch
        );
    }
    Ok(())
}
