//! The m3ret model server: one process that holds libtorch and the models for a
//! whole PostgreSQL cluster, and the wire protocol backends use to reach it. The
//! extension's supervising background worker forks the process and calls [`run`];
//! this crate knows nothing of PostgreSQL.
//!
//! - `protocol.rs`: the messages between backends and the server;
//! - `connection.rs`: one thread per backend connection: reads requests, decodes
//!   studies (decoding scales with the sessions and stays out of the batch loop);
//! - `batcher.rs`: the one thread that runs forward passes, gathering the requests
//!   of all sessions for up to the batch wait;
//! - `models.rs`: which models are loaded; `stats.rs`: counters for
//!   `m3ret_runtime_info()`.

mod batcher;
mod connection;
mod models;
pub mod protocol;
mod stats;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How the server runs; the supervisor fills it from the `m3ret.*` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Socket to listen on, created with mode 0600.
    pub socket: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    pub device: String,
    /// libtorch intra-op threads (0: one per CPU core).
    pub threads: usize,
    /// How long the first request of a batch waits for others.
    pub batch_wait: Duration,
    /// Most studies in one forward pass; a batch closes early when it has them.
    pub batch_size: usize,
    /// Models kept loaded; the least recently used goes first.
    pub max_models: usize,
    /// How many times the supervisor restarted the server before (reported only).
    pub restarts: u64,
}

/// Serves until the process ends; returns only when it cannot start.
pub fn run(settings: &Settings) -> Result<(), String> {
    let threads = match settings.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    tch::set_num_threads(threads as i32);
    let device = m3ret_core::model::parse_device(&settings.device).map_err(|e| e.to_string())?;
    let socket = &settings.socket;
    // A socket left by a crashed server would make bind fail; the supervisor runs
    // one server at a time, so whatever is there is stale.
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).map_err(|e| format!("socket {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("socket {}: {e}", socket.display()))?;

    let stats = Arc::new(stats::Stats::new(settings, device, threads));
    let models = Arc::new(models::Models::default());
    let (jobs, queue) = mpsc::channel();
    {
        let (models, stats) = (models.clone(), stats.clone());
        let batching = batcher::Settings {
            wait: settings.batch_wait,
            batch_size: settings.batch_size.max(1),
            max_models: settings.max_models.max(1),
        };
        std::thread::Builder::new()
            .name("batcher".into())
            .spawn(move || batcher::run(queue, batching, &models, &stats))
            .map_err(|e| e.to_string())?;
    }
    let shared = Arc::new(connection::Shared {
        device,
        jobs,
        models,
        stats,
    });
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("m3ret model server: accept: {e}");
                continue;
            }
        };
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .spawn(move || connection::serve(stream, &shared));
        if let Err(e) = spawned {
            eprintln!("m3ret model server: cannot start a connection thread: {e}");
        }
    }
    Ok(())
}
