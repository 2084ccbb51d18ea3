//! Helpers shared by core's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared corpus: `$M3RET_SHARED_DATA`, else `../shared/data` beside the
/// repository. A test that needs it fails without it (never passes by skipping).
pub fn shared_data() -> PathBuf {
    let dir = match std::env::var_os("M3RET_SHARED_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    };
    assert!(
        dir.join("manifest.csv").exists(),
        "the shared corpus is missing: {} has no manifest.csv (see the README)",
        dir.display()
    );
    dir
}

/// The first `n` files of a folder of the shared corpus, sorted by name.
pub fn corpus_files(dir: &str, n: usize) -> Vec<PathBuf> {
    let folder = shared_data().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.truncate(n);
    files
}

/// The repository's committed fixtures (always present).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}
