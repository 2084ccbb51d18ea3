//! m3ret.cpu_precision (issue 29): bf16 on the CPU's matrix unit in a backend and
//! in the model server, against f32 from the same file. Skipped, saying so, where
//! the CPU has no bf16 unit; there, asking for bf16 is an ERROR naming the feature.

use m3ret_e2e::wire::Vector;
use m3ret_e2e::{error_message, fixture, Cluster, FIXTURES_BY_MODALITY};
use postgres::Client;

fn shipped_model() -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/m3ret-default.safetensors"),
    )
    .unwrap()
}

fn embed_all(c: &mut Client) -> Vec<Vec<f32>> {
    FIXTURES_BY_MODALITY
        .iter()
        .map(|(file, modality)| {
            c.query_one(
                "SELECT m3ret_embed($1::bytea, $2)",
                &[&fixture(file), modality],
            )
            .unwrap()
            .get::<_, Vector>(0)
            .0
        })
        .collect()
}

fn assert_close(bf16: &[Vec<f32>], f32: &[Vec<f32>]) {
    for ((a, b), (file, _)) in bf16.iter().zip(f32).zip(FIXTURES_BY_MODALITY) {
        let cos: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        assert!(cos >= 0.999, "{file}: cosine {cos} between bf16 and f32");
        assert_ne!(a, b, "{file}: bf16 gave f32's vector: it did not run");
    }
}

fn info(c: &mut Client, path: &str) -> String {
    c.query_one(&format!("SELECT m3ret_runtime_info(){path}"), &[])
        .unwrap()
        .get(0)
}

#[test]
fn bf16_embeds_as_f32_does_in_a_backend() {
    let db = Cluster::shared().database("precision_backend");
    let mut c = db.connect();
    c.query_one("SELECT m3ret_model_import('m', $1)", &[&shipped_model()])
        .unwrap();
    c.batch_execute("SET m3ret.inference = backend").unwrap();
    let f32 = embed_all(&mut c);
    assert_eq!(info(&mut c, "->>'cpu_precision'"), "f32 (asked for)");
    let Some(unit) = m3ret_core::precision::bf16_unit() else {
        eprintln!("bf16_embeds_as_f32_does_in_a_backend: skipped: no bf16 unit on this CPU");
        // A parameter needs the extended protocol, so this is not expect_error's batch.
        c.batch_execute("SET m3ret.cpu_precision = bf16").unwrap();
        let (file, modality) = FIXTURES_BY_MODALITY[0];
        let err = c
            .query_one(
                "SELECT m3ret_embed($1::bytea, $2)",
                &[&fixture(file), &modality],
            )
            .expect_err("bf16 on a CPU without a bf16 unit must be an ERROR");
        let err = error_message(&err);
        assert!(err.contains("amx_bf16"), "{err}");
        c.batch_execute("SET m3ret.cpu_precision = auto").unwrap();
        assert_eq!(embed_all(&mut c), f32, "auto falls back to f32 here");
        return;
    };
    c.batch_execute("SET m3ret.cpu_precision = bf16").unwrap();
    assert_close(&embed_all(&mut c), &f32);
    assert_eq!(info(&mut c, "->>'cpu_precision'"), format!("bf16 ({unit})"));
    c.batch_execute("SET m3ret.cpu_precision = auto").unwrap();
    assert_eq!(info(&mut c, "->>'cpu_precision'"), format!("bf16 ({unit})"));
    c.batch_execute("SET m3ret.cpu_precision = f32").unwrap();
    assert_eq!(embed_all(&mut c), f32, "back to f32: the same vectors");
}

#[test]
fn the_model_server_runs_the_precision_it_was_started_with() {
    let Some(unit) = m3ret_core::precision::bf16_unit() else {
        eprintln!("the_model_server_runs_the_precision_it_was_started_with: skipped: no bf16 unit on this CPU");
        return;
    };
    let cluster = Cluster::start(&[
        "shared_preload_libraries = 'm3ret'",
        "m3ret.cpu_precision = auto",
    ]);
    let db = cluster.database("precision_server");
    let mut c = db.connect();
    c.query_one("SELECT m3ret_model_import('m', $1)", &[&shipped_model()])
        .unwrap();
    let served = embed_all(&mut c);
    assert_eq!(
        info(&mut c, "->'server'->>'cpu_precision'"),
        format!("bf16 ({unit})")
    );
    c.batch_execute("SET m3ret.inference = backend; SET m3ret.cpu_precision = f32")
        .unwrap();
    assert_close(&served, &embed_all(&mut c));
    cluster.assert_no_backend_crashed();
}
