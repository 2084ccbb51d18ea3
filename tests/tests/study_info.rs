//! m3ret_dicom_meta and m3ret_study_info: the DICOM keys against an independent
//! reader (pydicom), series order, shapes of every format, and bad input.

use m3ret_e2e::{expect_error, fixture, fixture_series, Cluster};
use postgres::Client;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

fn dicom_meta(c: &mut Client, data: &[u8]) -> Map<String, Value> {
    let v: Value = c
        .query_one("SELECT m3ret_dicom_meta($1::bytea)", &[&data])
        .unwrap()
        .get(0);
    v.as_object().unwrap().clone()
}

/// pydicom's reading of the same attributes (tests/python/dicom_keys.py).
fn pydicom_keys(files: &[PathBuf]) -> Map<String, Value> {
    let python =
        Path::new(&std::env::var("M3RET_VENV").expect("M3RET_VENV: source scripts/env.sh"))
            .join("bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/dicom_keys.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(files)
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "dicom_keys.py failed");
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-9
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        _ => a == b,
    }
}

#[test]
fn every_dicom_sample_gives_the_keys_pydicom_reads() {
    let root = m3ret_e2e::shared_data();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("dicom_samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "{} DICOM samples", files.len());
    let reference = pydicom_keys(&files);
    let db = Cluster::shared().database("study_info_pydicom");
    let mut c = db.connect();
    let mut compared = 0;
    for file in &files {
        let mut ours = dicom_meta(&mut c, &std::fs::read(file).unwrap());
        let theirs = reference[file.to_str().unwrap()].as_object().unwrap();
        // The modality m3ret maps the code to is ours alone.
        let mapped = ours.remove("m3ret_modality").unwrap();
        assert_eq!(
            mapped.as_str(),
            ours.get("Modality")
                .and_then(Value::as_str)
                .and_then(m3ret_core::modality::Modality::from_dicom_code)
                .map(|m| m.name()),
            "{}",
            file.display()
        );
        let keys: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
        for key in keys {
            let (a, b) = (ours.get(key.as_str()), theirs.get(key.as_str()));
            assert!(
                matches!((a, b), (Some(a), Some(b)) if same_value(a, b)),
                "{}: {key}: m3ret {a:?}, pydicom {b:?}",
                file.display()
            );
            compared += 1;
        }
    }
    assert!(compared > 300, "{compared} values compared");
    db.cluster.assert_no_backend_crashed();
}

/// Position of a slice along the normal of its orientation, computed here from the
/// attributes m3ret_dicom_meta returned.
fn along_normal(meta: &Map<String, Value>) -> f64 {
    let numbers = |k: &str| -> Vec<f64> {
        meta[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (o, p) = (
        numbers("ImageOrientationPatient"),
        numbers("ImagePositionPatient"),
    );
    let n = [
        o[1] * o[5] - o[2] * o[4],
        o[2] * o[3] - o[0] * o[5],
        o[0] * o[4] - o[1] * o[3],
    ];
    p[0] * n[0] + p[1] * n[1] + p[2] * n[2]
}

#[test]
fn a_series_is_described_in_the_order_m3ret_embed_stacks_it() {
    let db = Cluster::shared().database("study_info_series");
    let mut c = db.connect();
    // The fixture's slices, last first: the series is described by the lowest one.
    let mut slices = fixture_series();
    slices.reverse();
    let lowest = slices
        .iter()
        .map(|s| dicom_meta(&mut c, s))
        .min_by(|a, b| along_normal(a).total_cmp(&along_normal(b)))
        .unwrap();
    let series: Value = c
        .query_one("SELECT m3ret_dicom_meta($1::bytea[])", &[&slices])
        .unwrap()
        .get(0);
    assert_eq!(series["NumberOfSlices"], 3);
    assert_eq!(
        series["ImagePositionPatient"],
        lowest["ImagePositionPatient"]
    );
    // SOPInstanceUIDs in stacking order, on a corpus series that has them.
    {
        let root = m3ret_e2e::shared_data();
        let files: Vec<Vec<u8>> = ["niivue_1-003.dcm", "niivue_1-001.dcm", "niivue_1-002.dcm"]
            .iter()
            .map(|f| std::fs::read(root.join("dicom_samples").join(f)).unwrap())
            .collect();
        let mut metas: Vec<Map<String, Value>> =
            files.iter().map(|f| dicom_meta(&mut c, f)).collect();
        metas.sort_by(|a, b| along_normal(a).total_cmp(&along_normal(b)));
        let expected: Vec<Value> = metas.iter().map(|m| m["SOPInstanceUID"].clone()).collect();
        let mr: Value = c
            .query_one("SELECT m3ret_dicom_meta($1::bytea[])", &[&files])
            .unwrap()
            .get(0);
        assert_eq!(mr["SOPInstanceUIDs"], Value::Array(expected.clone()));
        assert_eq!(mr["SOPInstanceUID"], expected[0]);
        assert_ne!(expected[0], expected[1]);
    }
    assert_eq!(series["m3ret_modality"], "ct");
    let info: Value = c
        .query_one("SELECT m3ret_study_info($1::bytea[])", &[&slices])
        .unwrap()
        .get(0);
    assert_eq!(info["format"], "dicom-series");
    assert_eq!(info["layout"], "volume");
    assert_eq!(
        (
            info["frames"].as_i64(),
            info["rows"].as_i64(),
            info["columns"].as_i64()
        ),
        (Some(3), Some(512), Some(512))
    );
    // Slices of two series are refused, naming them.
    {
        let other = std::fs::read(
            m3ret_e2e::shared_data().join("dicom_samples/deid-data_humans_ctbrain1.dcm"),
        )
        .unwrap();
        let mixed = vec![slices[0].clone(), other];
        let err = c
            .query_one("SELECT m3ret_dicom_meta($1::bytea[])", &[&mixed])
            .unwrap_err();
        let message = m3ret_e2e::error_message(&err);
        assert!(
            message.starts_with("cannot read the DICOM series: invalid dicom-series: slice 2 is of series \"1.3.12.2.1107.5.1.4.65515"),
            "{message}"
        );
    }
}

#[test]
fn study_info_describes_every_format() {
    let db = Cluster::shared().database("study_info_formats");
    let mut c = db.connect();
    let cases = [
        ("pmnist_train_0000.png", "png", "image2d", 1, 28, 28, 1),
        ("covidrepo_0637.jpg", "jpeg", "image2d", 1, 0, 0, 0),
        ("wce_img1310.jpg", "jpeg", "image2d", 1, 224, 224, 3),
        (
            "pocus_convex_Cov_recommendations_likebutterfly_mov5.mp4",
            "mp4",
            "video",
            138,
            0,
            0,
            3,
        ),
        (
            "totalseg_example_mr_sm.nii.gz",
            "nifti1",
            "volume",
            0,
            0,
            0,
            1,
        ),
        ("totalseg_example_ct.nii.gz", "nifti1", "volume", 0, 0, 0, 1),
    ];
    for (file, format, layout, frames, rows, cols, channels) in cases {
        let info: Value = c
            .query_one("SELECT m3ret_study_info($1::bytea)", &[&fixture(file)])
            .unwrap()
            .get(0);
        assert_eq!(info["format"], format, "{file}: {info}");
        assert_eq!(info["layout"], layout, "{file}: {info}");
        // 0: any size (checked only where the fixture's README gives it).
        for (key, want) in [
            ("frames", frames),
            ("rows", rows),
            ("columns", cols),
            ("channels", channels),
        ] {
            let got = info[key].as_i64().unwrap();
            assert!(
                got > 0 && (want == 0 || got == want),
                "{file}: {key} {got}, expected {want}"
            );
        }
        assert_eq!(
            info["modality"],
            Value::Null,
            "{file}: only DICOM declares a modality"
        );
    }
}

#[test]
fn bad_input_to_the_metadata_functions_is_an_error_never_a_crash() {
    let db = Cluster::shared().database("study_info_bad_input");
    let mut c = db.connect();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "empty",
            Vec::new(),
            "cannot read the DICOM header: empty input: 0 bytes",
        ),
        (
            "png",
            fixture("pmnist_train_0000.png"),
            "cannot read the DICOM header: invalid dicom: the bytes are png, not DICOM",
        ),
        (
            "garbage",
            b"not a medical file at all, not even close".to_vec(),
            "cannot read the DICOM header: invalid dicom: no DICM magic at byte 0 or 128",
        ),
    ];
    for (what, data, message) in cases {
        let err = c
            .query_one("SELECT m3ret_dicom_meta($1::bytea)", &[&data])
            .unwrap_err();
        assert_eq!(m3ret_e2e::error_message(&err), message, "{what}");
    }
    // Every DICOM file cut at many points, and the fuzzer's finds: an ERROR or a
    // header (a cut in the pixels leaves the header whole), never a crash.
    let mut inputs: Vec<Vec<u8>> = fixture_series();
    {
        let root = m3ret_e2e::shared_data();
        for e in std::fs::read_dir(root.join("dicom_samples")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "dcm") {
                inputs.push(std::fs::read(p).unwrap());
            }
        }
    }
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut refused = 0;
    let mut cuts = Vec::new();
    for data in &inputs {
        for fraction in [1, 2, 5, 10, 50, 90, 99] {
            let at = data.len() * fraction / 100;
            cuts.push(data[..at].to_vec());
        }
    }
    for e in std::fs::read_dir(regressions).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "bin") {
            cuts.push(std::fs::read(p).unwrap());
        }
    }
    for data in &cuts {
        for sql in [
            "SELECT m3ret_dicom_meta($1::bytea)",
            "SELECT m3ret_study_info($1::bytea)",
        ] {
            if let Err(e) = c.query_one(sql, &[data]) {
                let message = m3ret_e2e::error_message(&e);
                assert!(message.starts_with("cannot read the "), "{sql}: {message}");
                refused += 1;
            }
        }
    }
    assert!(
        refused > cuts.len(),
        "{refused} of {} refused",
        2 * cuts.len()
    );
    let err = expect_error(
        &mut c,
        "SELECT m3ret_dicom_meta(ARRAY['\\x00'::bytea, NULL])",
    );
    assert_eq!(err, "element 2 of the series is NULL");
    let err = expect_error(
        &mut c,
        "SELECT m3ret_study_info(ARRAY['\\x00'::bytea, 'abc'::bytea])",
    );
    assert_eq!(err, "cannot read the series: invalid dicom-series: buffer 1 is not DICOM: a list is read as a DICOM series");
    db.cluster.assert_no_backend_crashed();
}
