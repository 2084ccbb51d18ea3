//! m3ret-train: the command-line tool that pretrains, evaluates and exports M3Ret
//! models. One module per subcommand; the model itself lives in m3ret-core.

mod augment;
mod checkpoint;
mod curve;
mod curve_report;
mod decode_cache;
mod embedset;
mod eval;
mod export;
mod loader;
mod manifest;
mod metrics;
mod optim;
mod plot;
mod pretrain;
mod probe;
mod schedule;
mod standardize;
mod trainee;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "m3ret-train",
    version,
    about = "Pretrain, evaluate and export M3Ret medical image retrieval models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Pretrain an encoder with MAE or SimDINO on a manifest or folder of studies.
    Pretrain(pretrain::PretrainArgs),
    /// Zero-shot retrieval report (Recall@1/5/10, mean and median rank) beside the raw-pixels and random-init baselines.
    Eval(eval::EvalArgs),
    /// Linear probe on frozen embeddings: accuracy, precision, F1 and AUROC per modality.
    Probe(probe::ProbeArgs),
    /// Write a checkpoint's encoder as a model file for the extension (m3ret_model_import).
    Export(export::ExportArgs),
    /// Fit centering and PCA whitening of a model's features on a split; write the model with them.
    Standardize(standardize::StandardizeArgs),
    /// A run's learning curve (log.jsonl) as a Markdown table on stdout and a PNG.
    Curve(curve_report::CurveArgs),
    /// Print the libtorch version this binary runs on and the CUDA devices it can use.
    Info,
}

fn main() {
    let result = match Cli::parse().command {
        Command::Pretrain(a) => pretrain::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Probe(a) => probe::run(a),
        Command::Export(a) => export::run(a),
        Command::Standardize(a) => standardize::run(a),
        Command::Curve(a) => curve_report::run(a),
        Command::Info => {
            info();
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn info() {
    let devices = m3ret_core::runtime::cuda_device_count();
    let info = serde_json::json!({
        "m3ret": env!("CARGO_PKG_VERSION"),
        "torch": m3ret_core::runtime::TORCH_VERSION,
        "cuda_devices": devices,
        "cuda_support": m3ret_core::runtime::cuda_support(),
        "cpu_precision_auto": m3ret_core::precision::resolve(m3ret_core::precision::PrecisionChoice::Auto).map(|p| p.describe()).unwrap_or_default(),
        "default_device": if devices > 0 { "cuda:0" } else { "cpu" },
    });
    println!("{}", serde_json::to_string_pretty(&info).expect("json"));
}
