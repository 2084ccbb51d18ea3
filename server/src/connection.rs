//! One backend's connection: requests in order, one answer each. Studies are
//! decoded here, in the connection's own thread, so that decoding runs in parallel
//! across sessions while the batcher runs forward passes.

use crate::batcher::{EmbedJob, Job};
use crate::models::{LoadedModel, Models};
use crate::protocol::{
    read_message, vector_to_blob, write_message, Answer, Form, ProtocolError, Request,
};
use crate::stats::Stats;
use m3ret_core::modality::ModalityChoice;
use m3ret_core::model::Embedder;
use m3ret_core::study::{self, Study, StudyOptions};
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;

/// What every connection thread shares.
pub struct Shared {
    pub device: tch::Device,
    /// What the embedders run in on a CPU.
    pub precision: m3ret_core::precision::Precision,
    pub jobs: Sender<Job>,
    pub models: Arc<Models>,
    pub stats: Arc<Stats>,
}

pub fn serve(stream: UnixStream, shared: &Shared) {
    let Shared { models, stats, .. } = shared;
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut input = BufReader::new(read_half);
    let mut output = &stream;
    loop {
        let message = match read_message::<Request>(&mut input) {
            Ok(m) => m,
            // The backend closed the connection (its session ended or it gave up).
            Err(ProtocolError::Io(_)) => return,
            Err(e) => {
                let _ = write_message(
                    &mut output,
                    &Answer::Failed {
                        error: e.to_string(),
                    },
                    &[],
                );
                return;
            }
        };
        let (answer, vectors) = match message.header {
            Request::Status => (
                Answer::Status {
                    status: stats.report(models),
                },
                Vec::new(),
            ),
            Request::Load { model, label } => {
                (load(&model, &label, &message.blobs, shared), Vec::new())
            }
            Request::Embed {
                model,
                modality,
                form,
            } => {
                // A bug in a decoder must cost this request, not the server.
                let run = || embed(&model, &modality, form, &message.blobs, &stream, shared);
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                    Ok(Ok(vectors)) => (Answer::Embeddings, vectors),
                    Ok(Err(answer)) => (answer, Vec::new()),
                    Err(panic) => (
                        failed(format!(
                            "the model server failed on this request: {}",
                            panic_text(&panic)
                        )),
                        Vec::new(),
                    ),
                }
            }
        };
        let blobs: Vec<Vec<u8>> = vectors.iter().map(|v| vector_to_blob(v)).collect();
        let blobs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
        if write_message(&mut output, &answer, &blobs).is_err() {
            return;
        }
    }
}

pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".to_string())
}

fn failed(error: impl ToString) -> Answer {
    Answer::Failed {
        error: error.to_string(),
    }
}

/// Checks a model file against the sha256 the backend named (in the model's key)
/// and hands the loaded model to the batcher.
fn load(key: &str, label: &str, blobs: &[Vec<u8>], shared: &Shared) -> Answer {
    let Shared {
        device,
        precision,
        jobs,
        models,
        stats,
    } = shared;
    let [weights] = blobs else {
        return failed("a load request carries exactly one model file");
    };
    let _one_load_at_a_time = models.loading.lock().unwrap_or_else(|p| p.into_inner());
    if models.config(key).is_some() {
        // Another session handed it over first.
        return Answer::Loaded;
    }
    let (_, sha256) = crate::protocol::split_model_key(key);
    let actual = m3ret_core::model::file::sha256_hex(weights);
    if actual != sha256 {
        return failed(format!(
            "model {label}: the file's sha256 is {actual}, not {sha256}"
        ));
    }
    let embedder = match Embedder::from_bytes(weights, *device) {
        Ok(e) => e,
        Err(e) => return failed(format!("model {label}: {e}")),
    };
    embedder.set_cpu_precision(*precision);
    let model = LoadedModel {
        key: key.to_string(),
        label: label.to_string(),
        config: embedder.config.clone(),
        loaded_at: std::time::SystemTime::now(),
    };
    let (reply, answer) = mpsc::channel();
    if jobs
        .send(Job::Load {
            model: Box::new(model),
            embedder: Box::new(embedder),
            reply,
        })
        .is_err()
        || answer.recv().is_err()
    {
        return failed("the server is shutting down");
    }
    stats.load();
    Answer::Loaded
}

fn embed(
    key: &str,
    modality: &str,
    form: Form,
    blobs: &[Vec<u8>],
    client: &UnixStream,
    shared: &Shared,
) -> Result<Vec<Vec<f32>>, Answer> {
    let Shared {
        jobs,
        models,
        stats,
        ..
    } = shared;
    let Some(config) = models.config_after_loads(key) else {
        return Err(Answer::NeedModel);
    };
    let choice = ModalityChoice::parse(modality).map_err(failed)?;
    let options = StudyOptions::for_input(choice, &config.input);
    let started = std::time::Instant::now();
    let studies = read_studies(form, blobs, &options)?;
    stats.decoded(started.elapsed());
    let (reply, answer) = mpsc::channel();
    let job = EmbedJob {
        model: key.to_string(),
        studies,
        client: client.try_clone().map_err(failed)?,
        queued_at: std::time::Instant::now(),
        reply,
    };
    jobs.send(Job::Embed(job))
        .map_err(|_| failed("the server is shutting down"))?;
    stats.request();
    answer
        .recv()
        .map_err(|_| failed("the server is shutting down"))?
}

fn read_studies(
    form: Form,
    blobs: &[Vec<u8>],
    options: &StudyOptions,
) -> Result<Vec<Study>, Answer> {
    let bad = |index: usize, e: study::StudyError| Answer::BadStudy {
        index,
        error: e.to_string(),
    };
    match form {
        Form::One => {
            let [one] = blobs else {
                return Err(failed("form one carries exactly one study"));
            };
            Ok(vec![study::load(one, options).map_err(|e| bad(0, e))?])
        }
        Form::Series => {
            if blobs.is_empty() {
                return Err(failed("a series needs at least one buffer"));
            }
            let buffers: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
            Ok(vec![
                study::load_buffers(&buffers, options).map_err(|e| bad(0, e))?
            ])
        }
        Form::Batch => blobs
            .iter()
            .enumerate()
            .map(|(i, b)| study::load(b, options).map_err(|e| bad(i, e)))
            .collect(),
    }
}
