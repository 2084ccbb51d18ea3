//! m3ret-load: a folder of studies (a PACS export of DICOM files, NIfTI volumes,
//! PNG/JPEG images, MP4 videos) into a PostgreSQL table, with the DICOM keys a
//! warehouse joins on, resumably and idempotently.
//!
//! - `scan.rs`: walk the tree, read headers, group DICOM files into series;
//! - `prepare.rs`: per study, on worker threads: read, order, check, de-identify;
//! - `table.rs`: the table, binary COPY one batch per transaction, server embedding;
//! - `deidentify.rs`: the confidentiality profile applied, keyed pseudonyms and UIDs;
//! - `deid_profile.rs`: the profile's table of attributes and actions;
//! - `report.rs`: the rejects file, the progress bar, the summary.

mod deid_profile;
mod deidentify;
mod prepare;
mod report;
mod scan;
mod table;

use clap::Parser;
use deidentify::Deidentifier;
use m3ret_core::io::Limits;
use m3ret_core::modality::{Modality, ModalityChoice};
use m3ret_core::model::Embedder;
use prepare::{Preparation, Row};
use rayon::prelude::*;
use report::{Reject, RejectsFile, Summary};
use scan::StudyFiles;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "m3ret-load",
    version,
    about = "Load a folder of medical studies (DICOM series, NIfTI, PNG/JPEG, MP4) into a PostgreSQL table for m3ret",
    long_about = "Load a folder of medical studies into a PostgreSQL table for m3ret.\n\n\
        DICOM files are grouped into series by SeriesInstanceUID (one row per series, slices in the order \
        m3ret_embed stacks them); NIfTI, PNG, JPEG and MP4 files are one row each. The table is created \
        if missing, with the DICOM keys as columns (patient_id, accession_number, study_instance_uid, ...), \
        meta jsonb, the bytes as bytea[] and an embedding column. Each batch is one transaction; \
        study_key is unique, so a second run adds nothing and a killed run continues where it stopped. \
        Files it cannot read are skipped and listed in the rejects file (by default headers and lengths are \
        checked; --verify-pixels decodes every study). Prints a JSON summary."
)]
struct Args {
    /// The folder to load (walked recursively; hidden files and symbolic links are skipped).
    folder: PathBuf,
    /// Connection string, e.g. "host=/var/run/postgresql dbname=pacs user=loader" or postgresql://...
    #[arg(long)]
    db: String,
    /// The table (name or schema.name), created if missing.
    #[arg(long)]
    table: String,
    /// The modality of studies whose file does not name one (non-DICOM files, DICOM with an unmapped Modality): xray, ultrasound, endoscopy, ct or mri.
    #[arg(long)]
    modality: Option<String>,
    /// Store no bytes (data stays NULL): keys and metadata only.
    #[arg(long)]
    no_data: bool,
    /// After loading, embed every row without an embedding in the server (m3ret_embed_batch per modality; needs the data). Into a Citus distributed table: m3ret_embed_pinned on the workers, with the model's version resolved on the coordinator (every node needs the model: docs/citus.md).
    #[arg(long, conflicts_with_all = ["embed_local", "no_data"])]
    embed: bool,
    /// With --embed: the registry model (name or name@version); default: the database's default model.
    #[arg(long, requires = "embed")]
    model: Option<String>,
    /// Embed on this machine with this model file (m3ret-train's output) while loading.
    #[arg(long, value_name = "MODEL_FILE")]
    embed_local: Option<PathBuf>,
    /// With --embed-local: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// With --embed-local on the CPU: auto (bf16 where the CPU has AMX-BF16 or AVX512-BF16, as the model server's default), bf16 or f32.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bf16", "f32"])]
    precision: String,
    /// De-identify DICOM files under DICOM PS3.15's Basic Application Level Confidentiality Profile (every sequence, private attributes removed, UIDs replaced), with PatientID and AccessionNumber replaced by HMAC-SHA256 pseudonyms under the key in this file; meta is read from the rewritten files.
    #[arg(long, value_name = "KEYFILE")]
    deidentify: Option<PathBuf>,
    /// With --deidentify: keep UIDs as they are (Retain UIDs Option).
    #[arg(long, requires = "deidentify")]
    deid_keep_uids: bool,
    /// With --deidentify: keep dates and times (Retain Longitudinal Temporal Information Full Dates Option).
    #[arg(long, requires = "deidentify")]
    deid_keep_dates: bool,
    /// With --deidentify: keep sex, age, size, weight and the other patient characteristics (Retain Patient Characteristics Option).
    #[arg(long, requires = "deidentify")]
    deid_keep_patient_characteristics: bool,
    /// With --deidentify: keep this private attribute, GGGG,EEEE in hex (repeatable; its private creator is kept too). Every other private attribute is removed.
    #[arg(long, requires = "deidentify", value_name = "GGGG,EEEE", value_parser = deidentify::parse_tag)]
    deid_keep_private: Vec<dicom_core::Tag>,
    /// Where to list the files skipped (CSV: path,reason).
    #[arg(long, default_value = "m3ret-load-rejects.csv")]
    rejects: PathBuf,
    /// Stop at the first file that cannot be read (exit status 1), instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Decode every study while loading and reject those that do not decode (slower; by default only headers and lengths are checked, and an undecodable study is found when it is embedded).
    #[arg(long)]
    verify_pixels: bool,
    /// Studies per batch (one transaction each).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Most bytes of files per batch, in MB (a larger study is a batch of its own).
    #[arg(long, default_value_t = 256)]
    batch_mb: u64,
    /// Larger files are rejected without being read, in MB.
    #[arg(long, default_value_t = 1024)]
    max_file_mb: u64,
    /// Worker threads for reading and decoding (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(summary) => {
            println!("{}", serde_json::to_string_pretty(&summary).expect("json"));
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn run(args: &Args) -> Result<Summary, String> {
    let started = Instant::now();
    if let Some(jobs) = args.jobs {
        rayon::ThreadPoolBuilder::new()
            .num_threads(jobs.max(1))
            .build_global()
            .map_err(|e| e.to_string())?;
    }
    let modality = args.modality.as_deref().map(parse_modality).transpose()?;
    let options = deidentify::Options {
        keep_uids: args.deid_keep_uids,
        keep_dates: args.deid_keep_dates,
        keep_patient_characteristics: args.deid_keep_patient_characteristics,
        keep_private: args.deid_keep_private.clone(),
    };
    let deidentifier = args
        .deidentify
        .as_deref()
        .map(|path| Deidentifier::from_file(path, options))
        .transpose()?;
    let embedder = args
        .embed_local
        .as_deref()
        .map(|path| load_embedder(path, &args.device, &args.precision))
        .transpose()?;
    let table = table::quoted_name(&args.table)?;
    let mut client = postgres::Client::connect(&args.db, postgres::NoTls)
        .map_err(|e| format!("cannot connect with --db: {e}"))?;
    table::create(&mut client, &table)?;

    let mut rejects = RejectsFile::create(&args.rejects)?;
    let skip = [std::fs::canonicalize(&args.rejects).unwrap_or_else(|_| args.rejects.clone())];
    let root = std::fs::canonicalize(&args.folder)
        .map_err(|e| format!("cannot open the folder {}: {e}", args.folder.display()))?;
    let found = scan::scan(&root, args.max_file_mb << 20, &skip)?;
    let mut summary = Summary {
        files_seen: found.files,
        studies_seen: found.studies.len(),
        ..Summary::default()
    };
    for reject in &found.rejects {
        record(&mut rejects, reject, args.strict)?;
    }
    let mut studies = found.studies;
    if let Some(d) = &deidentifier {
        for s in &mut studies {
            s.key = pseudonymous_key(d, &s.key);
        }
    }
    let present = table::keys(&mut client, &table)?;
    let before = studies.len();
    studies.retain(|s| !present.contains(&s.key));
    summary.studies_already_loaded = before - studies.len();

    let preparation = Preparation {
        root: &root,
        modality,
        keep_data: !args.no_data,
        decode: args.verify_pixels,
        deidentifier: deidentifier.as_ref(),
        embed_input: embedder.as_ref().map(|e| &e.config.input),
        limits: Limits::default(),
    };
    let bar = report::progress(studies.iter().map(|s| s.bytes).sum());
    for batch in batches(&studies, args.batch_size.max(1), args.batch_mb << 20) {
        let prepared: Vec<Result<Row, Reject>> = batch
            .par_iter()
            .map(|s| prepare::prepare(s, &preparation))
            .collect();
        let mut rows = Vec::with_capacity(prepared.len());
        for result in prepared {
            match result {
                Ok(row) => rows.push(row),
                Err(reject) => record(&mut rejects, &reject, args.strict)?,
            }
        }
        if let Some(embedder) = &embedder {
            summary.studies_embedded += embed_locally(embedder, &mut rows)?;
        }
        let mut tx = client.transaction().map_err(|e| table::db_error(&e))?;
        table::copy_rows(&mut tx, &table, &rows)?;
        tx.commit()
            .map_err(|e| format!("commit: {}", table::db_error(&e)))?;
        for row in &rows {
            summary.studies_loaded += 1;
            summary.files_loaded += row.files;
            summary.bytes_loaded += row.bytes;
            summary.studies_without_modality += row.modality.is_none() as usize;
        }
        bar.inc(batch.iter().map(|s| s.bytes).sum());
        bar.set_message(format!(
            "{} studies, {} files, {} rejected",
            summary.studies_loaded, summary.files_loaded, rejects.count
        ));
    }
    bar.finish_and_clear();
    if args.embed {
        summary.studies_embedded += embed_in_server(&mut client, &table, args, &mut rejects)?;
    }
    summary.files_rejected = rejects.count;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn parse_modality(text: &str) -> Result<Modality, String> {
    match ModalityChoice::parse(text)? {
        ModalityChoice::Given(m) => Ok(m),
        ModalityChoice::Auto => {
            Err("--modality auto: leave --modality out to take it from DICOM headers".into())
        }
    }
}

fn load_embedder(
    path: &std::path::Path,
    device: &str,
    precision: &str,
) -> Result<Embedder, String> {
    let precision = m3ret_core::precision::resolve_name(precision)?.precision;
    let device = m3ret_core::model::parse_device(device).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let embedder =
        Embedder::from_bytes(&bytes, device).map_err(|e| format!("{}: {e}", path.display()))?;
    embedder.set_cpu_precision(precision);
    Ok(embedder)
}

/// Under --deidentify a key made of a path is a pseudonym of it (names of folders
/// and files can carry a patient's name), and a series key holds the series' new
/// UID, as its files do.
fn pseudonymous_key(d: &Deidentifier, key: &str) -> String {
    for prefix in ["file:", "folder:"] {
        if let Some(path) = key.strip_prefix(prefix) {
            return format!("{prefix}{}", d.pseudonym(path));
        }
    }
    match key.strip_prefix("series:") {
        Some(uid) => format!("series:{}", d.uid(uid)),
        None => key.to_string(),
    }
}

fn record(rejects: &mut RejectsFile, reject: &Reject, strict: bool) -> Result<(), String> {
    rejects.write(reject)?;
    if strict {
        return Err(format!(
            "{}: {} (--strict stops at the first file it cannot read)",
            reject.path.display(),
            reject.reason
        ));
    }
    Ok(())
}

/// Consecutive studies, at most `size` and about `max_bytes` per batch.
fn batches(studies: &[StudyFiles], size: usize, max_bytes: u64) -> Vec<&[StudyFiles]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, s) in studies.iter().enumerate() {
        if i > start && (i - start == size || bytes + s.bytes > max_bytes) {
            out.push(&studies[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += s.bytes;
    }
    if start < studies.len() {
        out.push(&studies[start..]);
    }
    out
}

/// One batched forward pass over the rows whose study was read for the model.
fn embed_locally(embedder: &Embedder, rows: &mut [Row]) -> Result<usize, String> {
    let (indices, studies): (Vec<usize>, Vec<_>) = rows
        .iter_mut()
        .enumerate()
        .filter_map(|(i, r)| r.study.take().map(|s| (i, s)))
        .unzip();
    let vectors = embedder
        .embed_studies(&studies, 32)
        .map_err(|e| format!("model failed: {e}"))?;
    for (i, v) in indices.into_iter().zip(vectors) {
        rows[i].emb = Some(v);
    }
    Ok(studies.len())
}

/// The embedding pass of --embed: every row still without an embedding, a batch
/// per transaction (so a killed run's pass also resumes). A batch that fails (a
/// study whose pixels do not decode) is retried row by row; the rows that fail
/// are listed in the rejects file and keep a NULL embedding.
fn embed_in_server(
    client: &mut postgres::Client,
    table: &str,
    args: &Args,
    rejects: &mut RejectsFile,
) -> Result<usize, String> {
    let keys = table::keys_to_embed(client, table)?;
    let model = table::server_embedding(client, table, args.model.as_deref())?;
    let model = &model;
    let mut embedded = 0;
    for chunk in keys.chunks(args.batch_size.max(1)) {
        match table::embed_in_server(client, table, chunk, model) {
            Ok(n) => embedded += n as usize,
            Err(_) => {
                for key in chunk {
                    match table::embed_in_server(client, table, std::slice::from_ref(key), model) {
                        Ok(n) => embedded += n as usize,
                        Err(reason) => {
                            let reject = Reject {
                                path: PathBuf::from(key),
                                reason: format!("loaded, not embedded: {reason}"),
                            };
                            record(rejects, &reject, args.strict)?;
                        }
                    }
                }
            }
        }
    }
    Ok(embedded)
}
