//! What both loader test files need: the loader's JSON summary of a run that must
//! succeed, and fixture files written into a test's folder.

use serde_json::Value;
use std::path::Path;
use std::process::Output;

/// The JSON summary of a loader run, failing the test (with the loader's stderr) if
/// the run failed.
pub fn summary(out: Output) -> Value {
    assert!(
        out.status.success(),
        "m3ret-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}
