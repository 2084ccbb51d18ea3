//! `m3ret_embed`: studies in, embeddings out, through the model registry.
//!
//! - `m3ret_embed(bytea, modality, model)`: one file (DICOM, NIfTI, PNG, JPEG, MP4);
//! - `m3ret_embed(bytea[], modality, model)`: a DICOM series or a video's frames;
//! - `m3ret_embed_pinned(bytea or bytea[], modality, 'name@version')`: IMMUTABLE, for
//!   indexes and for Citus's workers;
//! - `m3ret_embed_batch(bytea[], modality, model)`: many studies, batched forward passes.

use crate::bytea_array::{elements, one_dimensional};
use crate::embedding::Embedding;
use crate::error::raise;
use crate::registry::{self, ModelRef};
use crate::runtime;
use crate::server_client::{self, Embedded};
use m3ret_core::modality::ModalityChoice;
use m3ret_core::model::Embedder;
use m3ret_core::study::{self, Study, StudyOptions};
use m3ret_server::protocol::Form;
use pgrx::datum::Array;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::prelude::*;

fn options(modality: &str, embedder: &Embedder) -> StudyOptions {
    // The model says what input it was trained on (image size, slices, frames).
    StudyOptions::for_input(modality_choice(modality), &embedder.config.input)
}

fn modality_choice(modality: &str) -> ModalityChoice {
    ModalityChoice::parse(modality)
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e))
}

fn study_error(what: &str, e: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("{what}: {e}"),
    )
}

/// A study that could not be read: its 0-based position among the buffers, and why.
struct Unreadable(usize, String);

/// Embeds the studies `buffers` make (`form` says how) with `model`, in the model
/// server or in this backend as m3ret.inference says. Both give the same vectors
/// and the same errors.
fn embed(
    model: &ModelRef,
    modality: &str,
    form: Form,
    buffers: &[&[u8]],
) -> Result<Vec<Vec<f32>>, Unreadable> {
    if runtime::uses_server() {
        modality_choice(modality);
        return match server_client::embed(model, modality, form, buffers) {
            Embedded::Vectors(v) => Ok(v),
            Embedded::BadStudy { index, error } => Err(Unreadable(index, error)),
        };
    }
    let embedder = runtime::embedder(model);
    let options = options(modality, &embedder);
    let studies = match form {
        Form::One => {
            vec![study::load(buffers[0], &options).map_err(|e| Unreadable(0, e.to_string()))?]
        }
        Form::Series => {
            vec![study::load_buffers(buffers, &options).map_err(|e| Unreadable(0, e.to_string()))?]
        }
        Form::Batch => {
            let mut studies = Vec::with_capacity(buffers.len());
            for (i, bytes) in buffers.iter().enumerate() {
                pgrx::check_for_interrupts!();
                studies
                    .push(study::load(bytes, &options).map_err(|e| Unreadable(i, e.to_string()))?);
            }
            studies
        }
    };
    Ok(embed_studies(&embedder, &studies))
}

/// Runs the model over studies, checking for cancellation between transformer blocks.
fn embed_studies(embedder: &Embedder, studies: &[Study]) -> Vec<Vec<f32>> {
    let batch = crate::settings::BATCH_SIZE.get().max(1) as usize;
    embedder
        .embed_studies_with(studies, batch, &mut || {
            pgrx::check_for_interrupts!();
        })
        .unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
                format!("model failed: {e}"),
            )
        })
}

fn embed_one(data: &[u8], modality: &str, model: Option<&str>) -> Embedding {
    match embed(&registry::resolve(model), modality, Form::One, &[data]) {
        Ok(mut v) => Embedding(v.remove(0)),
        Err(Unreadable(_, e)) => study_error("cannot read the study", e),
    }
}

/// The embedding of one study: a DICOM object, a NIfTI volume, a PNG or JPEG image,
/// or an MP4 video. `modality`: xray, ultrasound, endoscopy, ct, mri, or auto (from
/// the DICOM Modality tag). `model`: name or name@version; NULL: the default model.
/// STABLE, because the default model can change: index with m3ret_embed_pinned.
#[pg_extern(stable, parallel_safe, name = "m3ret_embed")]
fn m3ret_embed(
    data: Option<&[u8]>,
    modality: Option<&str>,
    model: default!(Option<&str>, "NULL"),
) -> Option<Embedding> {
    Some(embed_one(data?, modality?, model))
}

/// The embedding of a DICOM series (one slice per element, any order) or of a video
/// given as its frames (PNG or JPEG, in order). A one-element array is read as that
/// one file, whatever its format (as m3ret-load stores single files).
#[pg_extern(stable, parallel_safe, name = "m3ret_embed")]
fn m3ret_embed_series(
    data: Option<Array<'_, &[u8]>>,
    modality: Option<&str>,
    model: default!(Option<&str>, "NULL"),
) -> Option<Embedding> {
    let (data, modality) = (one_dimensional(data?, "series"), modality?);
    let buffers = elements(data.iter(), "series");
    match embed(&registry::resolve(model), modality, Form::Series, &buffers) {
        Ok(mut v) => Some(Embedding(v.remove(0))),
        Err(Unreadable(_, e)) => study_error("cannot read the series", e),
    }
}

/// As m3ret_embed with an explicit `name@version`: IMMUTABLE (model versions never
/// change), so it can define an expression index. Dropping the version breaks it.
#[pg_extern(immutable, parallel_safe, strict)]
fn m3ret_embed_pinned(data: &[u8], modality: &str, model: &str) -> Embedding {
    require_version(model);
    embed_one(data, modality, Some(model))
}

/// As m3ret_embed(bytea[], ...) with an explicit `name@version`: IMMUTABLE, so that
/// Citus runs it on the workers in `UPDATE ... SET emb = ...` (docs/citus.md).
#[pg_extern(immutable, parallel_safe, strict, name = "m3ret_embed_pinned")]
fn m3ret_embed_pinned_series(data: Array<'_, &[u8]>, modality: &str, model: &str) -> Embedding {
    require_version(model);
    m3ret_embed_series(Some(data), Some(modality), Some(model))
        .expect("a strict function's arguments are not NULL")
}

fn require_version(model: &str) {
    if crate::registry::parse_ref(model).1.is_none() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("m3ret_embed_pinned needs an explicit model version (\"{model}@N\"): m3ret_model_list shows them"),
        );
    }
}

/// Embeds many studies with batched forward passes (m3ret.batch_size at a time; studies
/// of one shape share a pass). Returns one row per input: its 1-based position and
/// its embedding. NULL inputs give no row.
#[pg_extern(stable, parallel_safe)]
fn m3ret_embed_batch(
    data: Array<'_, &[u8]>,
    modality: &str,
    model: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(ord, i32), name!(embedding, Embedding))> {
    // Bad arguments are errors even when every element is NULL.
    modality_choice(modality);
    let data = one_dimensional(data, "batch");
    let model = registry::resolve(model);
    let items: Vec<(usize, &[u8])> = data
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.map(|b| (i + 1, b)))
        .collect();
    let chunk = crate::settings::BATCH_SIZE.get().max(1) as usize;
    let mut rows = Vec::with_capacity(items.len());
    // A chunk at a time: memory stays at one chunk of decoded studies.
    for part in items.chunks(chunk) {
        let buffers: Vec<&[u8]> = part.iter().map(|(_, b)| *b).collect();
        match embed(&model, modality, Form::Batch, &buffers) {
            Ok(vectors) => {
                for ((ord, _), emb) in part.iter().zip(vectors) {
                    rows.push((*ord as i32, Embedding(emb)));
                }
            }
            Err(Unreadable(i, e)) => study_error(&format!("cannot read study {}", part[i].0), e),
        }
    }
    TableIterator::new(rows)
}

/// Where models run (m3ret.inference) and, in server mode, the model server's state
/// (pid, device, uptime, restarts, models, requests, batches, queue wait); libtorch
/// version, CUDA availability and the models this backend has loaded otherwise.
#[pg_extern(volatile)]
fn m3ret_runtime_info() -> pgrx::JsonB {
    pgrx::JsonB(runtime::info())
}
