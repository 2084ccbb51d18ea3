//! The SQL benchmark harness for m3ret_embed (issue: SQL embedding):
//! - bulk ingest rows/s through m3ret_embed_batch, against m3ret-core's batch
//!   inference on the same files, model and thread count, in the same run;
//! - first-call latency in a fresh backend (model load + first forward), and a
//!   warm call after it;
//! - resident memory of a backend after loading the small preset.
//!
//! `cargo bench -p m3ret-benches --bench sql_embed` (the extension must be installed:
//! scripts/install-extension.sh). M3RET_BENCH_ROWS sets the number of images (64).

use m3ret_core::modality::{Modality, ModalityChoice};
use m3ret_core::model::Embedder;
use m3ret_core::study::{self, StudyOptions};
use m3ret_e2e::Cluster;
use std::time::{Duration, Instant};
use tch::Device;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Real capsule endoscopy JPEGs from the corpus, or the committed fixture repeated.
fn images(n: usize) -> Vec<Vec<u8>> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/endoscopy/capsule-gi_normal");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        let f = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/wce_img1310.jpg");
        return vec![std::fs::read(f).unwrap(); n];
    }
    files
        .iter()
        .cycle()
        .take(n)
        .map(|f| std::fs::read(f).unwrap())
        .collect()
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` asks benches to list themselves
    }
    let rows: usize = std::env::var("M3RET_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let batch: usize = 16;
    let model = m3ret_benches::small_preset_model(None);
    let data = images(rows);

    // The baseline: m3ret-core in this process, one thread, the same batches.
    tch::set_num_threads(1);
    let embedder = Embedder::from_bytes(&model, Device::Cpu).unwrap();
    let options = StudyOptions::new(ModalityChoice::Given(Modality::Endoscopy));
    let mut core_times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        for chunk in data.chunks(batch) {
            let tensors: Vec<tch::Tensor> = chunk
                .iter()
                .map(|b| study::load(b, &options).unwrap().tensor)
                .collect();
            embedder.features(&tensors, batch).unwrap();
        }
        core_times.push(t.elapsed());
    }

    let cluster = Cluster::start(&[]);
    let db = cluster.database("bench_embed");
    let mut c = db.connect();
    c.query_one("SELECT m3ret_model_import('small', $1)", &[&model])
        .unwrap();
    c.batch_execute("CREATE TABLE images (id int PRIMARY KEY, data bytea)")
        .unwrap();
    for (i, b) in data.iter().enumerate() {
        c.execute("INSERT INTO images VALUES ($1, $2)", &[&(i as i32), b])
            .unwrap();
    }
    c.batch_execute(&format!(
        "SET m3ret.batch_size = {batch}; SET m3ret.threads = 1"
    ))
    .unwrap();
    // Warm the backend (model loaded) so that ingest measures steady state.
    c.query_one("SELECT count(*) FROM m3ret_embed_batch((SELECT array_agg(data) FROM images WHERE id < 2), 'endoscopy')", &[]).unwrap();
    let mut sql_times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let n: i64 = c
            .query_one("SELECT count(*) FROM m3ret_embed_batch((SELECT array_agg(data ORDER BY id) FROM images), 'endoscopy')", &[])
            .unwrap()
            .get(0);
        sql_times.push(t.elapsed());
        assert_eq!(n as usize, rows);
    }
    let (core_t, sql_t) = (median(core_times), median(sql_times));
    let (core_rps, sql_rps) = (
        rows as f64 / core_t.as_secs_f64(),
        rows as f64 / sql_t.as_secs_f64(),
    );

    // First call in fresh backends, then a warm call, and the backend's memory.
    let one = &data[0];
    let (mut first, mut warm, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let mut fresh = db.connect();
        let pid: i32 = fresh
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        let before = rss_kib(pid);
        let t = Instant::now();
        fresh
            .query_one("SELECT m3ret_embed($1::bytea, 'endoscopy')", &[one])
            .unwrap();
        first.push(t.elapsed());
        let t = Instant::now();
        fresh
            .query_one("SELECT m3ret_embed($1::bytea, 'endoscopy')", &[one])
            .unwrap();
        warm.push(t.elapsed());
        rss.push((before, rss_kib(pid)));
    }
    rss.sort();
    let (rss_before, rss_after) = rss[rss.len() / 2];
    cluster.assert_no_backend_crashed();

    println!("m3ret_embed SQL benchmark: {rows} capsule JPEGs, small preset (ViT-S/16, 768-dim), batch {batch}, 1 thread, medians of 3");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| core batch inference | {core_rps:.2} rows/s ({:.2} s) |",
        core_t.as_secs_f64()
    );
    println!(
        "| SQL m3ret_embed_batch | {sql_rps:.2} rows/s ({:.2} s) |",
        sql_t.as_secs_f64()
    );
    println!("| SQL / core | {:.3} |", sql_rps / core_rps);
    println!(
        "| first call, fresh backend | {:.0} ms |",
        median(first).as_secs_f64() * 1e3
    );
    println!(
        "| warm call, same backend | {:.0} ms |",
        median(warm).as_secs_f64() * 1e3
    );
    println!(
        "| backend RSS before / after loading | {} MiB / {} MiB |",
        rss_before / 1024,
        rss_after / 1024
    );
}
