//! m3ret-train: the command-line tool that pretrains, evaluates and exports M3Ret
//! models. Each subcommand lives in its own module.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "m3ret-train", version, about = "Pretrain, evaluate and export M3Ret medical image retrieval models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the libtorch version this binary runs on and the CUDA devices it can use.
    Info,
}

fn main() {
    match Cli::parse().command {
        Command::Info => info(),
    }
}

fn info() {
    let devices = m3ret_core::runtime::cuda_device_count();
    let info = serde_json::json!({
        "m3ret": env!("CARGO_PKG_VERSION"),
        "torch": m3ret_core::runtime::TORCH_VERSION,
        "cuda_devices": devices,
        "default_device": if devices > 0 { "cuda:0" } else { "cpu" },
    });
    println!("{}", serde_json::to_string_pretty(&info).expect("json"));
}
