//! A database with m3ret models, embedded studies and `m3ret_hnsw` indexes carried to
//! a fresh cluster two ways a hospital backs up: `pg_dump` / `pg_restore` (the
//! models come back with their weights and default; the indexes are rebuilt) and a
//! base backup restored with WAL replay (the index pages come back as they were).
//! Either way the models embed as before, `m3ret_hnsw_check` passes and queries
//! answer as on the source.

use m3ret_core::vector::synthetic::Clustered;
use m3ret_e2e::models::small_model;
use m3ret_e2e::wire::{literal, Vector};
use m3ret_e2e::{fixture, hnsw_check, Cluster};
use postgres::Client;
use std::io::Write;

const DIMS: usize = 32;
const IMAGES: [(&str, &str); 3] = [
    ("pmnist_train_0000.png", "xray"),
    ("covidrepo_0637.jpg", "xray"),
    ("wce_img1310.jpg", "endoscopy"),
];

/// Two versions of a model (the second the default), three embedded studies and
/// 1,500 vectors, each table with its index.
fn fill(c: &mut Client) {
    c.execute("SELECT m3ret_model_import('test', $1)", &[&small_model(1)])
        .unwrap();
    c.execute("SELECT m3ret_model_import('test', $1)", &[&small_model(2)])
        .unwrap();
    c.batch_execute(&format!(
        "SELECT m3ret_model_set_default('test@2');
         CREATE TABLE studies (id int PRIMARY KEY, modality text, data bytea, emb embedding);
         CREATE TABLE items (id int PRIMARY KEY, emb embedding({DIMS}));
         CREATE INDEX items_idx ON items USING m3ret_hnsw (emb)"
    ))
    .unwrap();
    for (id, (file, modality)) in IMAGES.iter().enumerate() {
        c.execute(
            "INSERT INTO studies VALUES ($1, $2, $3, m3ret_embed($3::bytea, $2::text))",
            &[&(id as i32), modality, &fixture(file)],
        )
        .unwrap();
    }
    c.batch_execute("CREATE INDEX studies_idx ON studies USING m3ret_hnsw (emb)")
        .unwrap();
    let mut w = c.copy_in("COPY items (id, emb) FROM STDIN").unwrap();
    for (i, v) in vectors().iter().enumerate() {
        writeln!(w, "{i}\t{}", literal(v)).unwrap();
    }
    w.finish().unwrap();
}

fn vectors() -> Vec<Vec<f32>> {
    Clustered::new(DIMS, 10).vectors(1_500, 21)
}

/// What a restore must reproduce: the registry without timestamps, the stored
/// embeddings, the top 10 of twenty queries through the index (searched wide
/// enough to be exact, so a rebuilt graph must give the same rows) and each
/// study's nearest neighbour by a fresh embedding.
#[derive(Debug)]
struct State {
    models: Vec<(String, String, bool)>,
    embeddings: Vec<Vec<f32>>,
    top10: Vec<Vec<i32>>,
    nearest_study: Vec<i32>,
}

fn state(c: &mut Client) -> State {
    let models = c
        .query(
            "SELECT name || '@' || version, sha256, is_default FROM m3ret_models ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let embeddings = c
        .query("SELECT emb FROM studies ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, Vector>(0).0)
        .collect();
    c.batch_execute("SET enable_seqscan = off; SET m3ret.ef_search = 400")
        .unwrap();
    let top10 = vectors()
        .iter()
        .step_by(75)
        .map(|q| {
            c.query(
                "SELECT id FROM items ORDER BY emb <=> $1::text::embedding LIMIT 10",
                &[&literal(q)],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
        })
        .collect();
    let nearest_study = IMAGES
        .iter()
        .map(|(file, modality)| {
            c.query_one(
                "SELECT id FROM studies ORDER BY emb <=> m3ret_embed($1::bytea, $2::text) LIMIT 1",
                &[&fixture(file), modality],
            )
            .unwrap()
            .get(0)
        })
        .collect();
    c.batch_execute("RESET enable_seqscan; RESET m3ret.ef_search")
        .unwrap();
    State {
        models,
        embeddings,
        top10,
        nearest_study,
    }
}

fn assert_restored(c: &mut Client, expected: &State, how: &str) {
    assert_eq!(hnsw_check(c, "items_idx").live, 1_500, "{how}");
    assert_eq!(hnsw_check(c, "studies_idx").live, 3, "{how}");
    let restored = state(c);
    // Field by field, so that a failure names what differs.
    assert_eq!(restored.models, expected.models, "models {how}");
    assert_eq!(restored.embeddings, expected.embeddings, "embeddings {how}");
    assert_eq!(restored.top10, expected.top10, "top 10 of the items {how}");
    assert_eq!(restored.nearest_study, expected.nearest_study, "{how}");
    // Each study is its own nearest neighbour, by the restored default model.
    assert_eq!(restored.nearest_study, vec![0, 1, 2], "{how}");
}

#[test]
fn a_dump_and_a_base_backup_bring_back_models_embeddings_and_answers() {
    let source = Cluster::start(&[]);
    let mut c = source.database("clinic").connect();
    fill(&mut c);
    let expected = state(&mut c);
    assert_eq!(expected.models.len(), 2);

    // pg_dump in the custom format, restored into a fresh cluster.
    let dump = source.file("clinic.dump");
    let port = source.port().to_string();
    source.run_as_postgres(
        "pg_dump",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-Fc",
            "-f",
            dump.to_str().unwrap(),
            "clinic",
        ],
    );
    let target = Cluster::start(&[]);
    let mut admin =
        Client::connect(&target.connection_string("postgres"), postgres::NoTls).unwrap();
    admin.batch_execute("CREATE DATABASE clinic").unwrap();
    let target_port = target.port().to_string();
    target.run_as_postgres(
        "pg_restore",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &target_port,
            "-U",
            "postgres",
            "-d",
            "clinic",
            "--exit-on-error",
            dump.to_str().unwrap(),
        ],
    );
    let mut r = target.existing_database("clinic").connect();
    assert_restored(&mut r, &expected, "after pg_restore");

    // A base backup (WAL streamed alongside), started as a cluster of its own.
    let restored = Cluster::restored_from_base_backup(&source);
    let mut b = restored.existing_database("clinic").connect();
    assert_restored(&mut b, &expected, "after restoring a base backup");

    for cluster in [&source, &target, &restored] {
        cluster.assert_no_backend_crashed();
    }
}
