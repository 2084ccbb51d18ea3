//! The threads that run models. A worker takes the queue, waits up to `wait` for
//! more requests after the first (or until `batch_size` studies are in), hands the
//! queue to the next worker, drops the requests whose backend has gone (cancelled,
//! timed out), and runs each model once over the studies of the remaining requests
//! (studies of one shape share a forward pass). On a CPU there is one worker per
//! thread, each running single-threaded passes, so that passes of small batches
//! keep every core busy as the backends themselves would; on a GPU, one worker.

use crate::models::{LoadedModel, Models};
use crate::protocol::Answer;
use crate::stats::Stats;
use m3ret_core::model::Embedder;
use m3ret_core::study::Study;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Settings {
    pub wait: Duration,
    pub batch_size: usize,
}

pub struct EmbedJob {
    pub model: String,
    pub studies: Vec<Study>,
    /// The backend's connection, to see whether it is still waiting.
    pub client: UnixStream,
    pub queued_at: Instant,
    pub reply: Sender<Result<Vec<Vec<f32>>, Answer>>,
}

pub enum Job {
    Embed(EmbedJob),
    /// Boxed: a model's configuration and embedder are large next to a request.
    Load {
        model: Box<LoadedModel>,
        embedder: Box<Embedder>,
        reply: Sender<()>,
    },
}

/// A model the workers run side by side.
pub struct SharedEmbedder(Embedder);

// SAFETY: a forward pass only reads the model's tensors (under no_grad; Embedder
// has no interior mutability), and libtorch supports concurrent reads of a tensor
// from several threads (PyTorch's multi-threaded inference relies on it). tch
// marks Tensor Send but not Sync because it cannot know how a tensor is used.
unsafe impl Sync for SharedEmbedder {}

/// The loaded models, most recently used last.
pub struct Cache {
    embedders: Vec<(String, Arc<SharedEmbedder>)>,
    max_models: usize,
}

impl Cache {
    pub fn new(max_models: usize) -> Cache {
        Cache {
            embedders: Vec::new(),
            max_models,
        }
    }

    fn insert(&mut self, model: LoadedModel, embedder: Embedder, models: &Models) {
        self.embedders.retain(|(key, _)| *key != model.key);
        while self.embedders.len() >= self.max_models {
            let (key, _) = self.embedders.remove(0);
            models.remove(&key);
        }
        self.embedders
            .push((model.key.clone(), Arc::new(SharedEmbedder(embedder))));
        models.insert(model);
    }

    fn get(&mut self, key: &str) -> Option<Arc<SharedEmbedder>> {
        let i = self.embedders.iter().position(|(k, _)| k == key)?;
        let hit = self.embedders.remove(i);
        self.embedders.push(hit);
        self.embedders.last().map(|(_, e)| e.clone())
    }
}

/// What the workers share.
pub struct Pool {
    pub queue: Mutex<Receiver<Job>>,
    pub cache: Mutex<Cache>,
    pub settings: Settings,
    pub models: Arc<Models>,
    pub stats: Arc<Stats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each change under these locks is one call, so a panic cannot leave them
    // half-updated: a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One worker: until the queue closes, gather a batch, then run it.
pub fn run(pool: &Pool) {
    let mut trimmed = false;
    loop {
        let pending = {
            let queue = lock(&pool.queue);
            let first = match queue.recv_timeout(IDLE_BEFORE_TRIM) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    if !trimmed {
                        trim();
                        trimmed = true;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            trimmed = false;
            let mut pending = Vec::new();
            take(first, &mut pending, pool);
            if pending.is_empty() {
                continue;
            }
            gather(&queue, pool, &mut pending);
            pending
        };
        let (live, gone): (Vec<_>, Vec<_>) = pending.into_iter().partition(|j| waiting(&j.client));
        pool.stats.abandoned(gone.len() as u64);
        run_batch(live, pool);
    }
}

/// How long the queue stays empty before a worker hands freed memory back.
const IDLE_BEFORE_TRIM: Duration = Duration::from_secs(1);

/// Decoded volumes and activations are freed into glibc's per-thread arenas, which
/// keep them: an idle server hands that memory back to the system. Not after every
/// batch: a busy server would only fault the same pages in again.
fn trim() {
    // SAFETY: a plain libc call.
    unsafe { libc::malloc_trim(0) };
}

fn take(job: Job, pending: &mut Vec<EmbedJob>, pool: &Pool) {
    match job {
        Job::Embed(job) => pending.push(job),
        Job::Load {
            model,
            embedder,
            reply,
        } => {
            lock(&pool.cache).insert(*model, *embedder, &pool.models);
            let _ = reply.send(());
        }
    }
}

/// More requests for up to the batch wait after the first, or until the batch is full.
fn gather(queue: &Receiver<Job>, pool: &Pool, pending: &mut Vec<EmbedJob>) {
    let deadline = Instant::now() + pool.settings.wait;
    let studies = |p: &Vec<EmbedJob>| p.iter().map(|j| j.studies.len()).sum::<usize>();
    while studies(pending) < pool.settings.batch_size {
        let left = deadline.saturating_duration_since(Instant::now());
        match queue.recv_timeout(left) {
            Ok(job) => take(job, pending, pool),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// Whether the backend still waits: it sends nothing while it waits, so a readable
/// or hung-up socket means it closed its end (cancelled, timed out, session ended).
fn waiting(client: &UnixStream) -> bool {
    let mut fd = libc::pollfd {
        fd: client.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 0
}

fn run_batch(mut jobs: Vec<EmbedJob>, pool: &Pool) {
    while let Some(model) = jobs.first().map(|j| j.model.clone()) {
        let (mine, rest): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| j.model == model);
        jobs = rest;
        let Some(embedder) = lock(&pool.cache).get(&model) else {
            // Evicted since the connection looked: the backend sends the model again.
            for job in mine {
                let _ = job.reply.send(Err(Answer::NeedModel));
            }
            continue;
        };
        run_model(&embedder.0, mine, &pool.settings, &pool.stats);
    }
}

fn run_model(embedder: &Embedder, mut jobs: Vec<EmbedJob>, settings: &Settings, stats: &Stats) {
    let now = Instant::now();
    let waited: Duration = jobs.iter().map(|j| now - j.queued_at).sum();
    let counts: Vec<usize> = jobs.iter().map(|j| j.studies.len()).collect();
    let studies: Vec<Study> = jobs.iter_mut().flat_map(|j| j.studies.drain(..)).collect();
    stats.batch(studies.len() as u64, waited);
    let forward = || embedder.embed_studies_with(&studies, settings.batch_size, &mut || {});
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(forward)).unwrap_or_else(|panic| {
            Err(m3ret_core::model::ModelError::Io(format!(
                "the model server failed on this batch: {}",
                crate::connection::panic_text(&panic)
            )))
        });
    stats.forward(now.elapsed());
    match result {
        Ok(vectors) => {
            let mut vectors = vectors.into_iter();
            for (job, n) in jobs.into_iter().zip(counts) {
                let _ = job.reply.send(Ok(vectors.by_ref().take(n).collect()));
            }
        }
        Err(e) => {
            let error = format!("model failed: {e}");
            for job in jobs {
                let _ = job.reply.send(Err(Answer::Failed {
                    error: error.clone(),
                }));
            }
        }
    }
}
