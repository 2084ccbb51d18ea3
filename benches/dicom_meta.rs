//! m3ret_dicom_meta's reader (header only) against a full decode of the same file,
//! per file, on one core: median of many timed calls each, and the ratio, in one
//! run. Needs ../shared/data (M3RET_DATA) for the samples besides the fixture.

use m3ret_core::io::{self, dicom_meta, Limits};
use std::path::PathBuf;

/// Median seconds of one call of `f`, over `reps` calls after a warm-up.
fn median_seconds(reps: usize, f: impl FnMut()) -> f64 {
    m3ret_benches::median_seconds(3, reps, f)
}

fn main() {
    tch::set_num_threads(1);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = PathBuf::from(
        std::env::var("M3RET_DATA")
            .unwrap_or_else(|_| root.join("../shared/data").display().to_string()),
    );
    let mut fixture: Vec<PathBuf> = std::fs::read_dir(root.join("fixtures/ct_series"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fixture.sort();
    let cases = [
        ("ct_slice_j2k_512 (fixture)", fixture[0].clone()),
        (
            "ct_slice_jpeg_456x510",
            data.join("dicom_samples/deid-data_humans_ctbrain1.dcm"),
        ),
        (
            "ct_slice_native_512",
            data.join("dicom_samples/imageio_dicom_file01.dcm"),
        ),
        (
            "cr_j2k_1955x1841",
            data.join("dicom_samples/pydicom-data_RG1_J2KR.dcm"),
        ),
        (
            "us_cine_jpeg_120_frames",
            data.join("dicom_samples/pydicom-data_color3d_jpeg_baseline.dcm"),
        ),
    ];
    println!(
        "{:28} {:>12} {:>14} {:>9}",
        "file", "header us", "full decode us", "ratio"
    );
    for (name, path) in cases {
        let Ok(bytes) = std::fs::read(&path) else {
            println!("{name:28} skipped: {} not found", path.display());
            continue;
        };
        let header = median_seconds(200, || {
            dicom_meta::meta(&bytes).unwrap();
        });
        let full = median_seconds(20, || {
            io::read(&bytes, &Limits::default()).unwrap();
        });
        println!(
            "{name:28} {:>12.1} {:>14.1} {:>9.1}",
            header * 1e6,
            full * 1e6,
            full / header
        );
    }
}
