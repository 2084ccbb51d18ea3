//! The model server against in-backend inference, in the same run (issue: one
//! model server for the whole cluster). For each model (the shipped default, and
//! the small preset with random weights) and each mode, a fresh cluster with
//! `shared_preload_libraries = 'm3ret'` (so that libtorch's start-up memory is
//! shared the same way in both), 16 sessions that embed real capsule-endoscopy
//! JPEGs concurrently and stay open:
//! - throughput (studies/s over all sessions, the median of three rounds) and the
//!   p50/p99 latency of one call over all rounds;
//! - anonymous memory (Pss_Anon, /proc/PID/smaps_rollup) of every process of the
//!   cluster, the model server included, with the 16 sessions open and idle for 2 s
//!   (the server returns freed memory after 1 s without requests);
//! - the first m3ret_embed in a fresh backend once the server (or, in backend
//!   mode, nothing) is warm, and a second call in the same backend.
//!
//! `cargo bench -p m3ret-benches --bench sql_model_server` (the extension must be
//! installed: scripts/install-extension.sh). M3RET_BENCH_CALLS sets the calls per
//! session (8), M3RET_BENCH_MODELS the models (`tiny,small`).

use m3ret_e2e::{shared_data, Cluster};
use std::time::{Duration, Instant};

const SESSIONS: usize = 16;
/// Rounds of the throughput phase; the median is reported.
const ROUNDS: usize = 3;

fn images(n: usize) -> Vec<Vec<u8>> {
    let dir = shared_data().join("endoscopy/capsule-gi_normal");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .take(n)
        .map(|f| std::fs::read(f).unwrap())
        .collect()
}

/// `pid` and every process below it (the model server is a grandchild).
fn descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    all
}

fn pss_anon_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss_Anon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Run {
    studies_per_s: f64,
    p50: Duration,
    p99: Duration,
    memory_mib: f64,
    /// The model server's own share (after the fresh-backend calls).
    server_mib: f64,
    first_call: Duration,
    /// The baseline of `first_call`: the same query shape with a built-in function
    /// in a fresh backend (PostgreSQL's own cost of a first query there).
    first_plain: Duration,
    warm_call: Duration,
    mean_batch: Option<f64>,
    /// The server's time per study reading (decoding, preprocessing) and in
    /// forward passes, wall clock.
    decode_ms: Option<f64>,
    forward_ms: Option<f64>,
}

fn embed(c: &mut postgres::Client, data: &[u8]) {
    c.query_one("SELECT m3ret_embed($1::bytea, 'endoscopy')", &[&data])
        .unwrap();
}

fn measure(model: &[u8], inference: &str, calls: usize, data: &[Vec<u8>]) -> Run {
    let cluster = Cluster::start(&[
        "shared_preload_libraries = 'm3ret'",
        &format!("m3ret.inference = {inference}"),
    ]);
    let db = cluster.database("bench_server");
    db.connect()
        .query_one("SELECT m3ret_model_import('bench', $1)", &[&model])
        .unwrap();
    let mut sessions: Vec<postgres::Client> = (0..SESSIONS).map(|_| db.connect()).collect();
    // Every session embeds once (loads the model, in backend mode), then all of
    // them embed `calls` studies at the same time.
    for (i, c) in sessions.iter_mut().enumerate() {
        embed(c, &data[i % data.len()]);
    }
    // Three rounds of `calls` concurrent calls per session; the median round.
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let workers: Vec<_> = sessions
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                let data = data.to_vec();
                std::thread::spawn(move || {
                    let mut latencies = Vec::with_capacity(calls);
                    for k in 0..calls {
                        let t = Instant::now();
                        embed(&mut c, &data[(i * calls + k) % data.len()]);
                        latencies.push(t.elapsed());
                    }
                    (c, latencies)
                })
            })
            .collect();
        sessions = Vec::new();
        for w in workers {
            let (c, l) = w.join().unwrap();
            sessions.push(c);
            latencies.extend(l);
        }
        rates.push((SESSIONS * calls) as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let mut open = sessions;
    latencies.sort();
    // Memory with the 16 sessions still open and idle: the server hands freed
    // memory back after a second without requests, so measure after two.
    std::thread::sleep(Duration::from_secs(2));
    let memory_kib: u64 = descendants(cluster.postmaster_pid())
        .into_iter()
        .map(pss_anon_kib)
        .sum();
    // The first call in a fresh backend, then a second one in the same backend; and
    // the first query of the same shape without m3ret in another fresh backend.
    let (mut firsts, mut warms, mut plains) = (Vec::new(), Vec::new(), Vec::new());
    for study in &data[..9] {
        let mut fresh = db.connect();
        let t = Instant::now();
        fresh
            .query_one("SELECT length($1::bytea)", &[study])
            .unwrap();
        plains.push(t.elapsed());
        drop(fresh);
        let mut fresh = db.connect();
        let t = Instant::now();
        embed(&mut fresh, study);
        firsts.push(t.elapsed());
        let t = Instant::now();
        embed(&mut fresh, study);
        warms.push(t.elapsed());
    }
    firsts.sort();
    warms.sort();
    plains.sort();
    let info: String = open[0]
        .query_one("SELECT m3ret_runtime_info()::text", &[])
        .unwrap()
        .get(0);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let server_kib = info["server"]["pid"]
        .as_i64()
        .map_or(0, |pid| pss_anon_kib(pid as i32));
    cluster.assert_no_backend_crashed();
    drop(open);
    Run {
        studies_per_s: rates[rates.len() / 2],
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        memory_mib: memory_kib as f64 / 1024.0,
        server_mib: server_kib as f64 / 1024.0,
        first_call: firsts[firsts.len() / 2],
        first_plain: plains[plains.len() / 2],
        warm_call: warms[warms.len() / 2],
        mean_batch: info["server"]["mean_batch_size"].as_f64(),
        decode_ms: info["server"]["mean_decode_ms_per_study"].as_f64(),
        forward_ms: info["server"]["mean_forward_ms_per_study"].as_f64(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` asks benches to list themselves
    }
    let calls: usize = std::env::var("M3RET_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let data = images(64);
    let shipped = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/m3ret-default.safetensors"),
    )
    .unwrap();
    // The shipped model's input size, so that the two models differ in weights only.
    let small = m3ret_benches::small_preset_model(Some(128));
    println!(
        "model server vs in-backend inference: {SESSIONS} sessions, {calls} calls each after one warm-up call, \
         real capsule JPEGs, this machine's {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| model | mode | studies/s | p50 ms | p99 ms | Pss_Anon MiB (cluster + server) | of which the server | first call in a fresh backend ms | first plain query there ms | second call ms | mean batch |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let models = std::env::var("M3RET_BENCH_MODELS").unwrap_or_else(|_| "tiny,small".into());
    let mut split = Vec::new();
    for (name, model) in [
        ("shipped tiny (12 MB)", &shipped),
        ("small preset (88 MB)", &small),
    ]
    .into_iter()
    .filter(|(name, _)| models.split(',').any(|m| name.contains(m.trim())))
    {
        let backend = measure(model, "backend", calls, &data);
        let server = measure(model, "server", calls, &data);
        for (mode, r) in [("backend", &backend), ("server", &server)] {
            println!(
                "| {name} | {mode} | {:.2} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {} |",
                r.studies_per_s,
                ms(r.p50),
                ms(r.p99),
                r.memory_mib,
                if r.server_mib > 0.0 {
                    format!("{:.0}", r.server_mib)
                } else {
                    "-".into()
                },
                ms(r.first_call),
                ms(r.first_plain),
                ms(r.warm_call),
                r.mean_batch.map_or("-".into(), |b| format!("{b:.2}")),
            );
        }
        println!(
            "| {name} | server / backend | {:.2} | {:.2} | {:.2} | {:.2} | | {:.3} | | {:.2} | |",
            server.studies_per_s / backend.studies_per_s,
            ms(server.p50) / ms(backend.p50),
            ms(server.p99) / ms(backend.p99),
            server.memory_mib / backend.memory_mib,
            ms(server.first_call) / ms(backend.first_call),
            ms(server.warm_call) / ms(backend.warm_call),
        );
        if let (Some(decode), Some(forward)) = (server.decode_ms, server.forward_ms) {
            split.push(format!(
                "{name}: the server's wall time per study: {decode:.2} ms reading it (decode and \
                 preprocess, connection threads), {forward:.2} ms in forward passes (workers)"
            ));
        }
    }
    println!();
    for line in split {
        println!("{line}");
    }
}
