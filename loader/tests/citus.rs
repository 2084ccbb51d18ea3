//! m3ret-load into a Citus distributed table (docs/citus.md, "Loading"): the table
//! made by a first run on an empty folder and distributed by its key, loaded,
//! resumed as on one server, and embedded on the workers.

mod common;

use common::{summary, write};
use m3ret_e2e::citus::CitusCluster;
use m3ret_e2e::max_abs_diff;
use m3ret_e2e::models::reference_embedding;
use m3ret_e2e::wire::Vector;
use m3ret_e2e::{fixture, fixture_series};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn load_ok(cluster: &CitusCluster, folder: &Path, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_m3ret-load"))
        .arg(folder)
        .args([
            "--db",
            &cluster.coordinator.connection_string(&cluster.name),
            "--table",
            "studies",
        ])
        .arg("--rejects")
        .arg(folder.with_extension("rejects.csv"))
        .args(extra)
        .output()
        .unwrap();
    summary(out)
}

#[test]
fn loading_into_a_distributed_table_resumes_and_embeds_on_the_workers() {
    let cluster = CitusCluster::start(2, "pacs");
    let mut c = cluster.connect();
    let model = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/m3ret-default.safetensors"),
    )
    .unwrap();
    let imported: Vec<String> = c
        .query(
            "SELECT result FROM run_command_on_all_nodes(
                 format('SELECT m3ret_model_import(%L, %L::bytea)', 'm3ret-default', $1::bytea))",
            &[&model],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(imported, vec!["m3ret-default@1"; 3]);

    let dir = tempfile::tempdir().unwrap();
    // The loader makes its table; Citus distributes it by the loader's key.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    load_ok(&cluster, &empty, &[]);
    c.batch_execute("SELECT create_distributed_table('studies', 'study_key')")
        .unwrap();

    let root = dir.path().join("archive");
    for (i, slice) in fixture_series().iter().enumerate() {
        write(&root.join(format!("ct/{i}.dcm")), slice);
    }
    write(&root.join("xray/1.png"), &fixture("pmnist_train_0000.png"));
    let first = load_ok(&cluster, &root, &["--modality", "xray"]);
    assert_eq!(first["studies_loaded"], 2, "{first}");

    // More files in the archive: a second run adds only them, and embeds every row.
    write(&root.join("xray/2.jpg"), &fixture("covidrepo_0637.jpg"));
    write(&root.join("endo/3.jpg"), &fixture("wce_img1310.jpg"));
    let second = load_ok(&cluster, &root, &["--modality", "xray", "--embed"]);
    assert_eq!(
        (
            second["studies_already_loaded"].as_i64(),
            second["studies_loaded"].as_i64(),
            second["studies_embedded"].as_i64()
        ),
        (Some(2), Some(2), Some(4)),
        "{second}"
    );
    let again = load_ok(&cluster, &root, &["--modality", "xray", "--embed"]);
    assert_eq!(
        (
            again["studies_loaded"].as_i64(),
            again["studies_embedded"].as_i64()
        ),
        (Some(0), Some(0)),
        "{again}"
    );

    // The workers' vectors are m3ret-core's for the same bytes (f32 on every node).
    let rows = c
        .query(
            "SELECT study_key, modality, data, emb FROM studies ORDER BY study_key",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows {
        let (key, modality, data, emb): (String, String, Vec<Vec<u8>>, Vector) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let buffers: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let expected = reference_embedding(&model, &buffers, &modality);
        assert!(
            max_abs_diff(&emb.0, &expected) < 1e-4,
            "{key}: the worker's embedding differs from m3ret-core's"
        );
    }
    cluster.assert_no_backend_crashed();
}
