//! The SQL benchmark of m3ret_hnsw (issue: HNSW index), in one run:
//! - on N x 384 clustered vectors (default N = 100,000; M3RET_BENCH_ROWS), fixed seed;
//! - `hnsw_rs` in memory on the same data and parameters (m = 16, ef_construction = 64,
//!   cosine as a dot product of unit vectors, the same thread count) as the upper bound;
//! - m3ret_hnsw: CREATE INDEX time and index size; then for ef_search 20, 40, 80 and
//!   160, queries per second (one session, prepared `ORDER BY emb <=> $1 LIMIT 10`)
//!   and recall@10 against exact search; the exact scan's queries per second; and
//!   the round trip alone (the same prepared call and vector, no search), to show
//!   what a query costs before the index does anything.
//!
//! Medians of M3RET_BENCH_ROUNDS (3) rounds. `cargo bench -p m3ret-benches --bench
//! sql_hnsw` (the extension must be installed: scripts/install-extension.sh).

use hnsw_rs::prelude::{DistDot, Hnsw};
use m3ret_core::hnsw::Metric;
use m3ret_core::vector::synthetic::Clustered;
use m3ret_e2e::wire::Vector;
use m3ret_e2e::Cluster;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use std::time::Instant;

const DIMS: usize = 384;
const M: usize = 16;
const EF_CONSTRUCTION: usize = 64;
const K: usize = 10;
const EF_SEARCH: [usize; 4] = [20, 40, 80, 160];
/// Threads for both builds: PostgreSQL's leader plus one maintenance worker.
const THREADS: usize = 2;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn unit(v: &[f32]) -> Vec<f32> {
    let mut v = v.to_vec();
    Metric::Cosine.prepare(&mut v).unwrap();
    v
}

/// Exact top-k ids (0-based) by cosine distance, brute force.
fn ground_truth(data: &[Vec<f32>], queries: &[Vec<f32>]) -> Vec<Vec<usize>> {
    queries
        .iter()
        .map(|q| {
            let mut d: Vec<(f32, usize)> = data
                .iter()
                .enumerate()
                .map(|(i, v)| (Metric::Cosine.graph_distance(q, v), i))
                .collect();
            d.select_nth_unstable_by(K, |a, b| a.0.total_cmp(&b.0));
            d.truncate(K);
            d.iter().map(|x| x.1).collect()
        })
        .collect()
}

fn recall(found: &[Vec<usize>], truth: &[Vec<usize>]) -> f64 {
    let hits: usize = found
        .iter()
        .zip(truth)
        .map(|(f, t)| f.iter().filter(|id| t.contains(id)).count())
        .sum();
    hits as f64 / (K * truth.len()) as f64
}

struct Point {
    qps: f64,
    recall: f64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rows: usize = std::env::var("M3RET_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rounds: usize = std::env::var("M3RET_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let shape = Clustered::new(DIMS, 100);
    let data: Vec<Vec<f32>> = shape.vectors(rows, 1).iter().map(|v| unit(v)).collect();
    let queries: Vec<Vec<f32>> = shape.vectors(200, 2).iter().map(|v| unit(v)).collect();
    let truth = ground_truth(&data, &queries);
    eprintln!(
        "[bench] {rows} x {DIMS} vectors, {} queries, ground truth ready",
        queries.len()
    );

    let (mem_build, mem_points) = bench_hnsw_rs(&data, &queries, &truth, rounds);
    let cluster = Cluster::start(&[
        "shared_buffers = 2GB",
        "maintenance_work_mem = 2GB",
        "max_parallel_maintenance_workers = 1",
        "jit = off",
    ]);
    let (sql_build, index_mb, sql_points, exact_qps, floor_qps) =
        bench_sql(&cluster, &data, &queries, &truth, rounds);

    println!("\nm3ret_hnsw vs hnsw_rs (in memory), {rows} x {DIMS} clustered, m = {M}, ef_construction = {EF_CONSTRUCTION}, {THREADS} build threads, medians of {rounds}");
    println!("build: m3ret_hnsw {sql_build:.1} s, hnsw_rs {mem_build:.1} s, ratio {:.2} (target <= 1.5); index size {index_mb:.1} MiB", sql_build / mem_build);
    println!("| ef_search | m3ret_hnsw QPS | recall@10 | hnsw_rs QPS | recall@10 | QPS ratio |");
    println!("|---|---|---|---|---|---|");
    for ((ef, s), m) in EF_SEARCH.iter().zip(&sql_points).zip(&mem_points) {
        println!(
            "| {ef} | {:.0} | {:.3} | {:.0} | {:.3} | {:.2} |",
            s.qps,
            s.recall,
            m.qps,
            m.recall,
            s.qps / m.qps
        );
    }
    println!("exact scan (seq scan + sort): {exact_qps:.1} QPS");
    println!(
        "round trip alone (the same prepared call and query vector, no search): {floor_qps:.0} QPS"
    );
    // At equal recall: each side's fastest setting that reaches a recall level.
    let fastest = |points: &[Point], level: f64| {
        points
            .iter()
            .zip(EF_SEARCH)
            .filter(|(p, _)| p.recall >= level)
            .max_by(|a, b| a.0.qps.total_cmp(&b.0.qps))
            .map(|(p, ef)| (p.qps, ef))
    };
    for level in [0.90, 0.95, 0.97] {
        match (fastest(&sql_points, level), fastest(&mem_points, level)) {
            (Some((s, se)), Some((m, me))) => println!(
                "recall@10 >= {level:.2}: m3ret_hnsw {s:.0} QPS (ef {se}) vs hnsw_rs {m:.0} QPS (ef {me}): ratio {:.2} (target >= 0.5)",
                s / m
            ),
            (s, m) => {
                let show = |p: Option<(f64, usize)>| p.map_or("never reaches it".to_string(), |(q, ef)| format!("{q:.0} QPS (ef {ef})"));
                println!("recall@10 >= {level:.2}: m3ret_hnsw {}, hnsw_rs {} with ef_search up to 160", show(s), show(m));
            }
        }
    }
}

fn bench_hnsw_rs(
    data: &[Vec<f32>],
    queries: &[Vec<f32>],
    truth: &[Vec<usize>],
    rounds: usize,
) -> (f64, Vec<Point>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(THREADS)
        .build()
        .unwrap();
    let mut builds = Vec::new();
    let mut index = None;
    for _ in 0..rounds {
        let hnsw = Hnsw::<f32, DistDot>::new(M, data.len(), 16, EF_CONSTRUCTION, DistDot {});
        let items: Vec<(&Vec<f32>, usize)> = data.iter().enumerate().map(|(i, v)| (v, i)).collect();
        let start = Instant::now();
        pool.install(|| hnsw.parallel_insert(&items));
        builds.push(start.elapsed().as_secs_f64());
        index = Some(hnsw);
    }
    let hnsw = index.unwrap();
    eprintln!("[bench] hnsw_rs build {:.1} s", median(builds.clone()));
    let points = EF_SEARCH
        .iter()
        .map(|&ef| {
            let mut qps = Vec::new();
            let mut found = Vec::new();
            for _ in 0..rounds {
                let start = Instant::now();
                found = queries
                    .iter()
                    .map(|q| hnsw.search(q, K, ef).iter().map(|n| n.d_id).collect())
                    .collect();
                qps.push(queries.len() as f64 / start.elapsed().as_secs_f64());
            }
            Point {
                qps: median(qps),
                recall: recall(&found, truth),
            }
        })
        .collect();
    (median(builds), points)
}

/// Build seconds, index MiB, a point per ef_search, exact-scan QPS, round-trip QPS.
fn bench_sql(
    cluster: &Cluster,
    data: &[Vec<f32>],
    queries: &[Vec<f32>],
    truth: &[Vec<usize>],
    rounds: usize,
) -> (f64, f64, Vec<Point>, f64, f64) {
    let db = cluster.database("bench_hnsw");
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE TABLE items (id int, emb embedding({DIMS}))"
    ))
    .unwrap();
    let emb_type = c.prepare("SELECT $1::embedding").unwrap().params()[0].clone();
    {
        let writer = c
            .copy_in("COPY items (id, emb) FROM STDIN (FORMAT binary)")
            .unwrap();
        let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT4, emb_type]);
        for (i, v) in data.iter().enumerate() {
            writer.write(&[&(i as i32), &Vector(v.clone())]).unwrap();
        }
        writer.finish().unwrap();
    }
    c.batch_execute("VACUUM ANALYZE items").unwrap();
    let mut builds = Vec::new();
    for r in 0..rounds {
        if r > 0 {
            c.batch_execute("DROP INDEX items_idx").unwrap();
        }
        let start = Instant::now();
        c.batch_execute(
            "CREATE INDEX items_idx ON items USING m3ret_hnsw (emb embedding_cosine_ops)",
        )
        .unwrap();
        builds.push(start.elapsed().as_secs_f64());
    }
    eprintln!("[bench] m3ret_hnsw build {:.1} s", median(builds.clone()));
    let size: i64 = c
        .query_one("SELECT pg_relation_size('items_idx')", &[])
        .unwrap()
        .get(0);
    let sql = format!("SELECT id FROM items ORDER BY emb <=> $1 LIMIT {K}");
    // Prepared per run: a cached plan would not see `enable_indexscan` change.
    let run = |c: &mut postgres::Client, qs: &[Vec<f32>]| -> (f64, Vec<Vec<usize>>) {
        let search = c.prepare(&sql).unwrap();
        let start = Instant::now();
        let found = qs
            .iter()
            .map(|q| {
                c.query(&search, &[&Vector(q.clone())])
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, i32>(0) as usize)
                    .collect()
            })
            .collect();
        (qs.len() as f64 / start.elapsed().as_secs_f64(), found)
    };
    run(&mut c, queries); // warm the buffer cache
    let points = EF_SEARCH
        .iter()
        .map(|&ef| {
            c.batch_execute(&format!("SET m3ret.ef_search = {ef}"))
                .unwrap();
            let mut qps = Vec::new();
            let mut found = Vec::new();
            for _ in 0..rounds {
                let (q, f) = run(&mut c, queries);
                qps.push(q);
                found = f;
            }
            Point {
                qps: median(qps),
                recall: recall(&found, truth),
            }
        })
        .collect();
    c.batch_execute("SET enable_indexscan = off").unwrap();
    let exact: Vec<f64> = (0..rounds).map(|_| run(&mut c, &queries[..5]).0).collect();
    // What a query costs before any search: the client, the protocol and the executor.
    let round_trip = c.prepare("SELECT $1::embedding IS NULL").unwrap();
    let floor: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            queries
                .iter()
                .for_each(|q| _ = c.query(&round_trip, &[&Vector(q.clone())]).unwrap());
            queries.len() as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    db.cluster.assert_no_backend_crashed();
    (
        median(builds),
        size as f64 / (1024.0 * 1024.0),
        points,
        median(exact),
        median(floor),
    )
}
