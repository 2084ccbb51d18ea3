//! The m3ret model server: one process that holds libtorch and the models for a
//! whole PostgreSQL cluster, and the wire protocol backends use to reach it. The
//! extension's supervising background worker forks the process and calls [`run`];
//! this crate knows nothing of PostgreSQL.
//!
//! - `protocol.rs`: the messages between backends and the server;
//! - `connection.rs`: one thread per backend connection: reads requests, decodes
//!   studies (decoding scales with the sessions and stays out of the batch loop);
//! - `batcher.rs`: the workers that run forward passes, gathering the requests of
//!   all sessions for up to the batch wait;
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
    /// CPU threads for forward passes (0: one per core): on a CPU, as many workers,
    /// each running single-threaded passes; on a GPU, libtorch's intra-op threads.
    pub threads: usize,
    /// How long the first request of a batch waits for others.
    pub batch_wait: Duration,
    /// Most studies in one forward pass; a batch closes early when it has them.
    pub batch_size: usize,
    /// Models kept loaded; the least recently used goes first.
    pub max_models: usize,
    /// How many times the supervisor restarted the server before (reported only).
    pub restarts: u64,
    /// The precision of forward passes on a CPU (m3ret.cpu_precision).
    pub cpu_precision: m3ret_core::precision::PrecisionChoice,
}

/// Serves until the process ends; returns only when it cannot start.
pub fn run(settings: &Settings) -> Result<(), String> {
    // Decoded volumes and activations are large and short-lived. glibc raises its
    // mmap threshold each time such a block is freed, after which they come from
    // the arenas and stay there, fragmented (hundreds of MiB after a few CT
    // volumes). A fixed threshold keeps every block of 1 MiB or more in its own
    // mapping, returned to the system when freed.
    // SAFETY: a plain libc call; this process is the server's own.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    let threads = match settings.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let device = m3ret_core::model::parse_device(&settings.device).map_err(|e| e.to_string())?;
    let precision = m3ret_core::precision::resolve(settings.cpu_precision)
        .map_err(|e| format!("m3ret.cpu_precision: {e}"))?;
    let socket = &settings.socket;
    // A socket left by a crashed server would make bind fail; the supervisor runs
    // one server at a time, so whatever is there is stale.
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).map_err(|e| format!("socket {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("socket {}: {e}", socket.display()))?;

    // On a CPU, one worker per thread, each single-threaded; on a GPU, one worker
    // that gives libtorch every thread.
    let workers = if device.is_cuda() { 1 } else { threads };
    tch::set_num_threads(if device.is_cuda() { threads } else { 1 } as i32);
    let stats = Arc::new(stats::Stats::new(
        settings,
        device,
        threads,
        workers,
        precision.describe(),
    ));
    let models = Arc::new(models::Models::default());
    let (jobs, queue) = mpsc::channel();
    let pool = Arc::new(batcher::Pool {
        queue: std::sync::Mutex::new(queue),
        cache: std::sync::Mutex::new(batcher::Cache::new(settings.max_models.max(1))),
        settings: batcher::Settings {
            wait: settings.batch_wait,
            batch_size: settings.batch_size.max(1),
        },
        models: models.clone(),
        stats: stats.clone(),
    });
    for _ in 0..workers {
        let pool = pool.clone();
        std::thread::Builder::new()
            .name("batcher".into())
            .spawn(move || batcher::run(&pool))
            .map_err(|e| e.to_string())?;
    }
    let shared = Arc::new(connection::Shared {
        device,
        precision: precision.precision,
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
