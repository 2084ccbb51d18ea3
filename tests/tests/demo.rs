//! The README's main job, minus the set-up: sql/demo_setup.sql, m3ret-load over a
//! folder of DICOM files, and sql/demo.sql through psql against a real cluster with
//! the committed default model, the committed sample files and (when present) a
//! few held-out studies of the corpus; then its results checked.

use m3ret_e2e::{hnsw_check, Cluster};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// m3ret-load, built beside this test binary (scripts/test.sh tests its package too).
fn loader_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("m3ret-load");
    assert!(
        bin.exists(),
        "{} is missing: build it with cargo build --release -p m3ret-load (scripts/test.sh does)",
        bin.display()
    );
    bin
}

#[test]
fn the_demo_runs_and_its_queries_return_what_they_say() {
    let db = Cluster::shared().database("demo");
    // Two held-out studies per class keep the test short; the demo takes eight.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let corpus = dir.path().join("corpus.csv");
    let status = Command::new("python3")
        .arg(repo().join("scripts/demo_corpus.py"))
        .arg(m3ret_e2e::shared_data())
        .arg(&corpus)
        .arg("2")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::set_permissions(&corpus, std::fs::Permissions::from_mode(0o644)).unwrap();
    let corpus_rows = std::fs::read_to_string(&corpus).unwrap().lines().count() as i64 - 1;

    db.psql_file(
        "sql/demo_setup.sql",
        &[format!(
            "model_file={}",
            repo().join("models/m3ret-default.safetensors").display()
        )],
    );
    // The DICOM archive, through the loader, as scripts/demo.sh does it.
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(archive.join("ct_series")).unwrap();
    for e in std::fs::read_dir(repo().join("fixtures/ct_series")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, archive.join("ct_series").join(p.file_name().unwrap())).unwrap();
    }
    {
        let root = m3ret_e2e::shared_data();
        std::fs::create_dir_all(archive.join("samples")).unwrap();
        for e in std::fs::read_dir(root.join("dicom_samples")).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, archive.join("samples").join(p.file_name().unwrap())).unwrap();
        }
    }
    let loaded = Command::new(loader_binary())
        .arg(&archive)
        .args([
            "--table",
            "pacs",
            "--embed",
            "--db",
            &db.cluster.connection_string(&db.name),
        ])
        .arg("--rejects")
        .arg(dir.path().join("rejects.csv"))
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let stdout = db.psql_file(
        "sql/demo.sql",
        &[
            format!("fixtures={}", repo().join("fixtures").display()),
            format!("corpus_csv={}", corpus.display()),
        ],
    );
    for section in [
        "nearest neighbours of a chest X-ray",
        "of a CT volume",
        "lung ultrasound clip",
        "cross-modal",
        "warehouse",
        "Index Scan using studies_emb_idx",
        "joined with a clinical table by AccessionNumber",
    ] {
        assert!(
            stdout.contains(section),
            "no '{section}' in the demo's output:\n{stdout}"
        );
    }

    let mut c = db.connect();
    let (studies, embedded): (i64, i64) = {
        let r = c
            .query_one("SELECT count(*), count(emb) FROM studies", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    let pacs: i64 = c
        .query_one("SELECT count(*) FROM pacs WHERE emb IS NOT NULL", &[])
        .unwrap()
        .get(0);
    // The fixture CT series is one row; the 21 corpus DICOM samples are 18 more series.
    assert_eq!(pacs, 19);
    assert_eq!(studies, 6 + corpus_rows + pacs);
    assert_eq!(embedded, studies, "a study was not embedded");
    assert_eq!(hnsw_check(&mut c, "studies_emb_idx").live, studies);

    // Through the index, every study's nearest neighbour is itself.
    c.batch_execute("SET enable_seqscan = off").unwrap();
    let misses: i64 = c
        .query_one(
            "SELECT count(*) FROM studies q WHERE q.study_id <> (SELECT s.study_id FROM studies s ORDER BY s.emb <=> q.emb, s.study_id <> q.study_id LIMIT 1)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(misses, 0, "a study's nearest neighbour was not itself");
    // The cross-modal query returns MRI only, nearest first.
    let rows = c
        .query(
            "SELECT s.modality, s.emb <=> q.emb AS d FROM studies s,
                 (SELECT emb FROM studies WHERE modality = 'ct' ORDER BY (region = 'head') DESC, (source = 'corpus') DESC, study_id LIMIT 1) q
             WHERE s.modality = 'mri' ORDER BY s.emb <=> q.emb LIMIT 5",
            &[],
        )
        .unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.get::<_, String>(0) == "mri"));
    assert!(rows
        .windows(2)
        .all(|w| w[0].get::<_, f64>(1) <= w[1].get::<_, f64>(1)));
    // The abdomen CT volume's nearest neighbour is a CT study (the committed body CT
    // series), not a brain MRI as with the default model before the long run.
    let nearest: String = c
        .query_one(
            "SELECT s.modality FROM studies s, (SELECT emb FROM studies WHERE study_id = 'sample-ct-1') q
             WHERE s.study_id <> 'sample-ct-1' ORDER BY s.emb <=> q.emb LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(nearest, "ct", "the abdomen CT volume's nearest neighbour");
    // The warehouse query keeps its filter and its LIMIT.
    let rows = c
        .query(
            "SELECT c.patient_age, c.department FROM studies s JOIN clinical c USING (study_id),
                 (SELECT study_id, emb FROM studies WHERE study_id = 'sample-xray-2') q
             WHERE c.patient_age >= 50 AND c.department <> 'pediatrics' AND s.study_id <> q.study_id
             ORDER BY s.emb <=> q.emb LIMIT 5",
            &[],
        )
        .unwrap();
    let eligible: i64 = c
        .query_one("SELECT count(*) FROM clinical WHERE patient_age >= 50 AND department <> 'pediatrics' AND study_id <> 'sample-xray-2'", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows.len() as i64, eligible.min(5));
    assert!(rows
        .iter()
        .all(|r| r.get::<_, i32>(0) >= 50 && r.get::<_, String>(1) != "pediatrics"));
    db.cluster.assert_no_backend_crashed();
}
