//! The first pass over a folder: which files are studies, and which DICOM files
//! belong together. DICOM files are grouped by SeriesInstanceUID (one study per
//! series, wherever its files lie in the tree); NIfTI, PNG, JPEG and MP4 files are
//! studies of their own. Only headers are kept: the pixels are read again, one
//! batch at a time, when the study is loaded.

use crate::report::Reject;
use m3ret_core::io::{self, dicom_meta, Format};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One study to load: a DICOM series, or one file.
#[derive(Debug, Clone)]
pub struct StudyFiles {
    /// The table's unique key: `series:<SeriesInstanceUID>`; `folder:<dir>#<SeriesNumber>`
    /// for CT/MR slices without a SeriesInstanceUID; `file:<path>` (relative to the
    /// root) for files that are studies on their own.
    pub key: String,
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

/// What the scan found: studies in key order, and the files it refused.
pub struct Scan {
    pub studies: Vec<StudyFiles>,
    pub rejects: Vec<Reject>,
    pub files: usize,
}

/// What a file is and its size, or why it is refused.
type Identified = Result<(Found, u64), String>;

enum Found {
    /// A DICOM file of a series, by the series' key.
    Series(String),
    Single,
}

/// Walks `root` (symbolic links not followed, hidden files skipped), reading each
/// file's header on `jobs` threads; files larger than `max_file_bytes` are refused
/// before they are read.
pub fn scan(root: &Path, max_file_bytes: u64, skip: &[PathBuf]) -> Result<Scan, String> {
    let mut paths = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
    {
        let entry = entry.map_err(|e| format!("cannot walk {}: {e}", root.display()))?;
        if entry.file_type().is_file() && !skip.iter().any(|s| s == entry.path()) {
            paths.push(entry.into_path());
        }
    }
    let found: Vec<(PathBuf, Identified)> = paths
        .into_par_iter()
        .map(|path| {
            let found = identify(root, &path, max_file_bytes);
            (path, found)
        })
        .collect();
    let files = found.len();
    let mut groups: BTreeMap<String, StudyFiles> = BTreeMap::new();
    let mut rejects = Vec::new();
    for (path, result) in found {
        match result {
            Ok((what, bytes)) => {
                let key = match what {
                    Found::Series(key) => key,
                    Found::Single => format!("file:{}", relative(root, &path)),
                };
                let study = groups.entry(key.clone()).or_insert_with(|| StudyFiles {
                    key,
                    files: Vec::new(),
                    bytes: 0,
                });
                study.files.push(path);
                study.bytes += bytes;
            }
            Err(reason) => rejects.push(Reject { path, reason }),
        }
    }
    Ok(Scan {
        studies: groups.into_values().collect(),
        rejects,
        files,
    })
}

/// The path below the root, with `/` separators (the key must not depend on the OS).
pub fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| os_text(c.as_os_str()))
        .collect::<Vec<_>>()
        .join("/")
}

/// A file name as text, losing nothing: bytes that are not UTF-8 (names written in
/// Latin-1, say) become `\xNN` and a backslash `\\`, so two names never give one
/// key, and the name can be told from its text.
pub fn os_text(name: &std::ffi::OsStr) -> String {
    use std::fmt::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut text = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        text.push_str(&chunk.valid().replace('\\', "\\\\"));
        for byte in chunk.invalid() {
            write!(text, "\\x{byte:02x}").expect("writing to a String");
        }
    }
    text
}

fn identify(root: &Path, path: &Path, max_file_bytes: u64) -> Identified {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if size > max_file_bytes {
        return Err(format!(
            "{size} bytes exceeds --max-file-mb ({max_file_bytes} bytes)"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    if io::nifti::is_gzip(&bytes) {
        return Ok((Found::Single, size));
    }
    match io::sniff(&bytes) {
        Some(Format::Dicom) => {
            let meta = dicom_meta::meta(&bytes).map_err(|e| e.to_string())?;
            Ok((series_key(root, path, &meta), size))
        }
        Some(_) => Ok((Found::Single, size)),
        None => Err(format!(
            "unrecognised format: expected {}",
            io::ACCEPTED_FORMATS
        )),
    }
}

/// The series a DICOM file belongs to: its SeriesInstanceUID. Files without one
/// (some anonymisers blank it) are grouped only when they are single-frame CT or
/// MR slices, by folder and SeriesNumber; any other such file is a study of its own.
fn series_key(
    root: &Path,
    path: &Path,
    meta: &serde_json::Map<String, serde_json::Value>,
) -> Found {
    if let Some(uid) = meta.get("SeriesInstanceUID").and_then(|v| v.as_str()) {
        return Found::Series(format!("series:{uid}"));
    }
    let slice = matches!(
        meta.get("Modality").and_then(|v| v.as_str()),
        Some("CT" | "MR")
    ) && meta
        .get("NumberOfFrames")
        .and_then(|v| v.as_i64())
        .unwrap_or(1)
        == 1;
    if !slice {
        return Found::Single;
    }
    let folder = path.parent().map(|p| relative(root, p)).unwrap_or_default();
    let number = meta
        .get("SeriesNumber")
        .map(|v| v.to_string())
        .unwrap_or_default();
    Found::Series(format!("folder:{folder}#{number}"))
}
