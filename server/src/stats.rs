//! The server's counters, reported by `m3ret_runtime_info()`.

use crate::models::Models;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime};

pub struct Stats {
    started: Instant,
    started_at: SystemTime,
    restarts: u64,
    device: String,
    cpu_precision: String,
    threads: usize,
    workers: usize,
    batch_wait_ms: u64,
    batch_size: usize,
    requests: AtomicU64,
    studies: AtomicU64,
    batches: AtomicU64,
    abandoned: AtomicU64,
    loads: AtomicU64,
    queue_wait_us: AtomicU64,
    decode_us: AtomicU64,
    forward_us: AtomicU64,
}

impl Stats {
    pub fn new(
        settings: &crate::Settings,
        device: tch::Device,
        threads: usize,
        workers: usize,
        cpu_precision: String,
    ) -> Stats {
        Stats {
            started: Instant::now(),
            started_at: SystemTime::now(),
            restarts: settings.restarts,
            device: format!("{device:?}").to_lowercase(),
            cpu_precision,
            threads,
            workers,
            batch_wait_ms: settings.batch_wait.as_millis() as u64,
            batch_size: settings.batch_size,
            requests: AtomicU64::new(0),
            studies: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            queue_wait_us: AtomicU64::new(0),
            decode_us: AtomicU64::new(0),
            forward_us: AtomicU64::new(0),
        }
    }

    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn load(&self) {
        self.loads.fetch_add(1, Relaxed);
    }

    pub fn abandoned(&self, jobs: u64) {
        self.abandoned.fetch_add(jobs, Relaxed);
    }

    /// One forward pass over `studies` studies; `waited`: how long each request
    /// waited in the queue before it, summed.
    pub fn batch(&self, studies: u64, waited: std::time::Duration) {
        self.batches.fetch_add(1, Relaxed);
        self.studies.fetch_add(studies, Relaxed);
        self.queue_wait_us
            .fetch_add(waited.as_micros() as u64, Relaxed);
    }

    /// Time a connection thread spent reading its request's studies (decoding and
    /// preprocessing them to the model's input).
    pub fn decoded(&self, took: std::time::Duration) {
        self.decode_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Time one batch's forward passes took.
    pub fn forward(&self, took: std::time::Duration) {
        self.forward_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub fn report(&self, models: &Models) -> serde_json::Value {
        let batches = self.batches.load(Relaxed);
        let studies = self.studies.load(Relaxed);
        let requests = self.requests.load(Relaxed);
        let per_study = |us: &AtomicU64| {
            if studies > 0 {
                us.load(Relaxed) as f64 / 1000.0 / studies as f64
            } else {
                0.0
            }
        };
        let epoch = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        serde_json::json!({
            "pid": std::process::id(),
            "device": self.device,
            "cpu_precision": self.cpu_precision,
            "cuda_support": m3ret_core::runtime::cuda_support(),
            "threads": self.threads,
            "workers": self.workers,
            "batch_wait_ms": self.batch_wait_ms,
            "batch_size": self.batch_size,
            "started_at_epoch_s": format!("{:.3}", epoch(self.started_at)),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "restarts": self.restarts,
            "requests": requests,
            "studies": studies,
            "batches": batches,
            "mean_batch_size": if batches > 0 { studies as f64 / batches as f64 } else { 0.0 },
            "mean_queue_wait_ms": if requests > 0 {
                self.queue_wait_us.load(Relaxed) as f64 / 1000.0 / requests as f64
            } else { 0.0 },
            "mean_decode_ms_per_study": per_study(&self.decode_us),
            "mean_forward_ms_per_study": per_study(&self.forward_us),
            "abandoned_requests": self.abandoned.load(Relaxed),
            "model_loads": self.loads.load(Relaxed),
            "models_loaded": models.list().iter().map(|m| {
                let (database, sha256) = crate::protocol::split_model_key(&m.key);
                serde_json::json!({
                "model": m.label,
                "database": database,
                "sha256": sha256,
                "dims": m.config.embedding_dims(),
                "loaded_at_epoch_s": format!("{:.3}", epoch(m.loaded_at)),
            })}).collect::<Vec<_>>(),
        })
    }
}
