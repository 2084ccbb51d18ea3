//! Helpers shared by core's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/data` beside the repository, or None (tests then skip, saying so).
pub fn shared_data() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    if dir.join("manifest.csv").exists() {
        Some(dir)
    } else {
        eprintln!("skipping: ../shared/data is not present");
        None
    }
}

/// The first `n` files of a folder of the shared corpus, sorted by name.
pub fn corpus_files(dir: &str, n: usize) -> Option<Vec<PathBuf>> {
    let root = shared_data()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .ok()?
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.truncate(n);
    Some(files)
}

/// The repository's committed fixtures (always present).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}
