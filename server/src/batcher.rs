//! The one thread that runs models. It takes the first request in the queue, waits
//! up to `wait` for more (or until `batch_size` studies are in), drops the requests
//! whose backend has gone (cancelled, timed out), and runs each model once over the
//! studies of all remaining requests (studies of one shape share a forward pass).

use crate::models::{LoadedModel, Models};
use crate::protocol::Answer;
use crate::stats::Stats;
use m3ret_core::model::Embedder;
use m3ret_core::study::Study;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

pub struct Settings {
    pub wait: Duration,
    pub batch_size: usize,
    pub max_models: usize,
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

struct Cache<'a> {
    /// Most recently used last.
    embedders: Vec<(String, Embedder)>,
    models: &'a Models,
    max_models: usize,
}

impl Cache<'_> {
    fn insert(&mut self, model: LoadedModel, embedder: Embedder) {
        self.embedders.retain(|(sha, _)| *sha != model.sha256);
        while self.embedders.len() >= self.max_models {
            let (sha, _) = self.embedders.remove(0);
            self.models.remove(&sha);
        }
        self.embedders.push((model.sha256.clone(), embedder));
        self.models.insert(model);
    }

    fn get(&mut self, sha256: &str) -> Option<&Embedder> {
        let i = self.embedders.iter().position(|(sha, _)| sha == sha256)?;
        let hit = self.embedders.remove(i);
        self.embedders.push(hit);
        self.embedders.last().map(|(_, e)| e)
    }
}

pub fn run(queue: Receiver<Job>, settings: Settings, models: &Models, stats: &Stats) {
    let mut cache = Cache {
        embedders: Vec::new(),
        models,
        max_models: settings.max_models,
    };
    while let Ok(first) = queue.recv() {
        let mut pending = Vec::new();
        take(first, &mut pending, &mut cache);
        if pending.is_empty() {
            continue;
        }
        gather(&queue, &settings, &mut pending, &mut cache);
        let (live, gone): (Vec<_>, Vec<_>) = pending.into_iter().partition(|j| waiting(&j.client));
        stats.abandoned(gone.len() as u64);
        run_batch(live, &settings, &mut cache, stats);
        // Decoded volumes and activations are freed into glibc's per-thread arenas,
        // which keep them: hand the memory back, so that an idle server is small.
        // SAFETY: a plain libc call.
        unsafe { libc::malloc_trim(0) };
    }
}

fn take(job: Job, pending: &mut Vec<EmbedJob>, cache: &mut Cache) {
    match job {
        Job::Embed(job) => pending.push(job),
        Job::Load {
            model,
            embedder,
            reply,
        } => {
            cache.insert(*model, *embedder);
            let _ = reply.send(());
        }
    }
}

/// More requests for up to `settings.wait` after the first, or until the batch is full.
fn gather(
    queue: &Receiver<Job>,
    settings: &Settings,
    pending: &mut Vec<EmbedJob>,
    cache: &mut Cache,
) {
    let deadline = Instant::now() + settings.wait;
    let studies = |p: &Vec<EmbedJob>| p.iter().map(|j| j.studies.len()).sum::<usize>();
    while studies(pending) < settings.batch_size {
        let left = deadline.saturating_duration_since(Instant::now());
        match queue.recv_timeout(left) {
            Ok(job) => take(job, pending, cache),
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

fn run_batch(mut jobs: Vec<EmbedJob>, settings: &Settings, cache: &mut Cache, stats: &Stats) {
    while let Some(model) = jobs.first().map(|j| j.model.clone()) {
        let (mine, rest): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| j.model == model);
        jobs = rest;
        let Some(embedder) = cache.get(&model) else {
            // Evicted since the connection looked: the backend sends the model again.
            for job in mine {
                let _ = job.reply.send(Err(Answer::NeedModel));
            }
            continue;
        };
        run_model(embedder, mine, settings, stats);
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
