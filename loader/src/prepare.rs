//! The second pass, one study at a time (on the worker threads): read its files,
//! put a series' slices in the order `m3ret_embed` stacks them, take its DICOM
//! keys, check that it decodes, de-identify it if asked, and make the row.

use crate::deidentify::Deidentifier;
use crate::report::Reject;
use crate::scan::{relative, StudyFiles};
use m3ret_core::io::{self, dicom_meta, info, Format, Limits};
use m3ret_core::modality::{Modality, ModalityChoice};
use m3ret_core::model::config::InputSpec;
use m3ret_core::study::{self, Study, StudyOptions};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// How studies are prepared, the same for every study of a run.
pub struct Preparation<'a> {
    pub root: &'a Path,
    /// `--modality`: for files whose header names none.
    pub modality: Option<Modality>,
    pub keep_data: bool,
    /// Decode every study to check it (else the header alone is checked).
    pub decode: bool,
    pub deidentifier: Option<&'a Deidentifier>,
    /// `--embed-local`: the model's input, so that the study is read for it.
    pub embed_input: Option<&'a InputSpec>,
    pub limits: Limits,
}

/// One row of the table.
pub struct Row {
    pub key: String,
    pub source_path: Option<String>,
    pub format: &'static str,
    pub modality: Option<Modality>,
    pub meta: Map<String, Value>,
    pub files: usize,
    pub bytes: u64,
    /// One element per file, slices in m3ret_embed's order; `None` with --no-data.
    pub data: Option<Vec<Vec<u8>>>,
    /// The study read for the local model (`--embed-local`), embedded in a batch later.
    pub study: Option<Study>,
    pub emb: Option<Vec<f32>>,
}

impl Row {
    /// A meta attribute as text.
    pub fn attribute(&self, keyword: &str) -> Option<String> {
        match self.meta.get(keyword)? {
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// The row of one study, or the reject that names its first unreadable file.
pub fn prepare(files: &StudyFiles, p: &Preparation) -> Result<Row, Reject> {
    let reject = |path: &PathBuf, reason: String| Reject {
        path: path.clone(),
        reason,
    };
    let mut buffers = Vec::with_capacity(files.files.len());
    for path in &files.files {
        buffers.push(std::fs::read(path).map_err(|e| reject(path, format!("cannot read: {e}")))?);
    }
    let first = &files.files[0];
    let is_dicom = io::sniff(&buffers[0]) == Some(Format::Dicom);
    let (mut meta, order) = if is_dicom {
        dicom_keys(&buffers).map_err(|e| reject(first, e))?
    } else {
        (Map::new(), vec![0])
    };
    let paths: Vec<PathBuf> = order.iter().map(|&i| files.files[i].clone()).collect();
    let mut ordered: Vec<Vec<u8>> = order
        .iter()
        .map(|&i| std::mem::take(&mut buffers[i]))
        .collect();
    let modality = meta
        .get("m3ret_modality")
        .and_then(Value::as_str)
        .and_then(|name| Modality::ALL.into_iter().find(|m| m.name() == name))
        .or(p.modality);
    let refs: Vec<&[u8]> = ordered.iter().map(Vec::as_slice).collect();
    let format = format_of(&refs);
    let study = check(&refs, modality, p).map_err(|e| reject(&paths[0], e))?;
    if let Some(d) = p.deidentifier.filter(|_| is_dicom) {
        // The files are rewritten whether they are stored or not, and the keys read
        // back from them: meta then holds only what the de-identified files hold.
        for (bytes, path) in ordered.iter_mut().zip(&paths) {
            *bytes = d.scrub_dicom(bytes).map_err(|e| reject(path, e))?;
        }
        meta = dicom_keys(&ordered).map_err(|e| reject(first, e))?.0;
    }
    let source_path = match p.deidentifier {
        // File names can carry names; the key of a lone file is then a pseudonym too.
        Some(_) => None,
        None => Some(relative(p.root, &paths[0])),
    };
    Ok(Row {
        key: files.key.clone(),
        source_path,
        format,
        modality,
        meta,
        files: paths.len(),
        bytes: files.bytes,
        data: p.keep_data.then_some(ordered),
        study,
        emb: None,
    })
}

/// The DICOM keys of a file or series, and the order of its slices.
fn dicom_keys(buffers: &[Vec<u8>]) -> Result<(Map<String, Value>, Vec<usize>), String> {
    if let Some(i) = buffers
        .iter()
        .position(|b| io::sniff(b) != Some(Format::Dicom))
    {
        return Err(format!("file {} of the series is not DICOM", i + 1));
    }
    if buffers.len() == 1 {
        return Ok((
            dicom_meta::meta(&buffers[0]).map_err(|e| e.to_string())?,
            vec![0],
        ));
    }
    let refs: Vec<&[u8]> = buffers.iter().map(Vec::as_slice).collect();
    dicom_meta::series_meta(&refs).map_err(|e| e.to_string())
}

/// Checks that the study reads (a full decode, unless only headers are checked);
/// for the local model, returns the study read for it.
fn check(
    buffers: &[&[u8]],
    modality: Option<Modality>,
    p: &Preparation,
) -> Result<Option<Study>, String> {
    if let (Some(input), Some(m)) = (p.embed_input, modality) {
        let mut options = StudyOptions::for_input(ModalityChoice::Given(m), input);
        options.limits = p.limits;
        return study::load_buffers(buffers, &options)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    if p.decode {
        info::study_info(buffers, &p.limits).map_err(|e| e.to_string())?;
    }
    Ok(None)
}

/// The format column: dicom, dicom-series, nifti1, nifti2, nifti-gz, png, jpeg, mp4.
fn format_of(buffers: &[&[u8]]) -> &'static str {
    if buffers.len() > 1 {
        return Format::DicomSeries.name();
    }
    if io::nifti::is_gzip(buffers[0]) {
        return "nifti-gz";
    }
    io::sniff(buffers[0]).map_or("unknown", Format::name)
}
