//! What the loader tells its user: the rejects file (one line per file it could
//! not read, with the reason), the progress bar, and the summary at the end.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file the loader skipped, and why.
#[derive(Debug, Clone)]
pub struct Reject {
    pub path: PathBuf,
    pub reason: String,
}

/// The rejects file: CSV with a header, `path,reason`, written as rejects happen.
pub struct RejectsFile {
    out: std::io::BufWriter<std::fs::File>,
    pub count: usize,
}

impl RejectsFile {
    pub fn create(path: &Path) -> Result<RejectsFile, String> {
        let file = std::fs::File::create(path)
            .map_err(|e| format!("cannot create the rejects file {}: {e}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        writeln!(out, "path,reason").map_err(|e| e.to_string())?;
        Ok(RejectsFile { out, count: 0 })
    }

    pub fn write(&mut self, reject: &Reject) -> Result<(), String> {
        self.count += 1;
        writeln!(
            self.out,
            "{},{}",
            csv_field(&crate::scan::os_text(reject.path.as_os_str())),
            csv_field(&reject.reason)
        )
        .and_then(|_| self.out.flush())
        .map_err(|e| format!("cannot write the rejects file: {e}"))
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Bytes done of the total, files and series in the message; drawn only on a terminal.
pub fn progress(total_bytes: u64) -> ProgressBar {
    let bar = ProgressBar::new(total_bytes);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar
}

/// The counts printed at the end (JSON on stdout, for people and scripts).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub files_seen: usize,
    pub studies_seen: usize,
    pub studies_already_loaded: usize,
    pub studies_loaded: usize,
    pub files_loaded: usize,
    pub bytes_loaded: u64,
    pub files_rejected: usize,
    pub studies_without_modality: usize,
    pub studies_embedded: usize,
    pub seconds: f64,
}
