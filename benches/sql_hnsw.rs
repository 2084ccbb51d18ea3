//! The SQL benchmark of m3ret_hnsw against pgvector's `hnsw`, side by side in one
//! cluster on the same table (issue 13), with `hnsw_rs` in memory as the upper bound.
//!
//! Three data sets, each with queries that are not in the table (cosine distance):
//! - `near-duplicates`: 20,000 x 64 rows of `synthetic::near_duplicates` (most rows
//!   nearly parallel; the rows on which graphs orphan elements), queries drawn with
//!   another seed;
//! - `isotropic`: N x 384 isotropic Gaussian clusters (default N = 100,000;
//!   M3RET_BENCH_ROWS), 100 clusters, sigma 0.5: a full-rank spread, not saturated at
//!   low ef_search;
//! - `corpus`: the 2D studies of the shared corpus embedded with the shipped default
//!   model (every 40th study held out as a query); the embeddings are cached under
//!   $M3RET_CACHE/bench (default /var/cache/m3ret/bench), keyed by the model's sha256.
//!
//! The indexes: m3ret_hnsw as it stores vectors by default (`m3ret_hnsw`) and with
//! `quantization = int8` (`m3ret_hnsw_int8`, re-ranked by the executor on the
//! table's vectors), and pgvector's hnsw; choose with M3RET_BENCH_INDEXES
//! (comma-separated names). All with m = 16, ef_construction = 64, the same build
//! threads (the leader and one maintenance worker). Per data set: build time (median of M3RET_BENCH_ROUNDS,
//! default 3) and size of each index; per ef_search, recall@10 against exact search (rows at the 10th distance count as hits, whichever of them is found)
//! and queries per second with 1 and 4 clients (a prepared
//! `ORDER BY col <=> $1 LIMIT 10`, the query vector sent as text to both, with
//! `enable_seqscan = off` so that the index is what is measured); then each
//! index's QPS interpolated at equal recall (0.90, 0.95, 0.99) and their ratio.
//! Choose data sets with M3RET_BENCH_DATASETS (comma-separated names).
//!
//! `cargo bench -p m3ret-benches --bench sql_hnsw`. m3ret must be installed
//! (scripts/install-extension.sh); pgvector is built from ../shared/peers/pgvector by
//! scripts/install-pgvector.sh when it is not installed yet.

use hnsw_rs::prelude::{DistDot, Hnsw};
use m3ret_core::hnsw::Metric;
use m3ret_core::vector::synthetic;
use m3ret_e2e::wire::{literal, Vector};
use m3ret_e2e::Cluster;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::Instant;

const M: usize = 16;
const EF_CONSTRUCTION: usize = 64;
const K: usize = 10;
const EF_SEARCH: [usize; 6] = [10, 20, 40, 80, 160, 320];
/// Threads for every build: PostgreSQL's leader plus one maintenance worker.
const THREADS: usize = 2;
const CLIENTS: usize = 4;
const RECALL_LEVELS: [f64; 3] = [0.90, 0.95, 0.99];

struct DataSet {
    name: &'static str,
    data: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
}

/// One index under test: how to build it and how to query it.
struct Contender {
    name: &'static str,
    column: &'static str,
    create: &'static str,
    ef_setting: &'static str,
    query_type: &'static str,
}

const CONTENDERS: [Contender; 3] = [
    Contender {
        name: "m3ret_hnsw",
        column: "emb",
        create: "CREATE INDEX items_emb_idx ON items USING m3ret_hnsw (emb embedding_cosine_ops) WITH (m = 16, ef_construction = 64)",
        ef_setting: "m3ret.ef_search",
        query_type: "embedding",
    },
    Contender {
        name: "m3ret_hnsw_int8",
        column: "emb",
        create: "CREATE INDEX items_emb_int8_idx ON items USING m3ret_hnsw (emb embedding_cosine_ops) WITH (m = 16, ef_construction = 64, quantization = int8)",
        ef_setting: "m3ret.ef_search",
        query_type: "embedding",
    },
    Contender {
        name: "pgvector",
        column: "v",
        create: "CREATE INDEX items_v_idx ON items USING hnsw (v vector_cosine_ops) WITH (m = 16, ef_construction = 64)",
        ef_setting: "hnsw.ef_search",
        query_type: "vector",
    },
];

#[derive(Clone, Copy)]
struct Point {
    recall: f64,
    qps: f64,
    qps_clients: f64,
}

struct Measured {
    name: &'static str,
    build_s: f64,
    size_mib: f64,
    points: Vec<Point>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The median QPS of `rounds` runs of `run` (each: QPS, the ids each query found),
/// and the ids of the last run.
fn median_of_rounds(
    rounds: usize,
    mut run: impl FnMut() -> (f64, Vec<Vec<usize>>),
) -> (f64, Vec<Vec<usize>>) {
    let mut qps = Vec::new();
    let mut found = Vec::new();
    for _ in 0..rounds {
        let (q, f) = run();
        qps.push(q);
        found = f;
    }
    (median(qps), found)
}

fn unit(v: &[f32]) -> Vec<f32> {
    let mut v = v.to_vec();
    Metric::Cosine.prepare(&mut v).unwrap();
    v
}

/// Distances closer than this are ties: the index computes them with other SIMD
/// sums, whose last bits differ.
const TIE: f32 = 1e-6;

/// What recall is measured against: each query's distance to its K-th nearest row
/// (brute force). A row found counts when it is no farther (up to [`TIE`]), so that
/// among rows at the same distance (the corpus holds groups of byte-identical or
/// re-encoded images) any may be the one returned.
struct Truth<'a> {
    data: &'a [Vec<f32>],
    queries: &'a [Vec<f32>],
    kth: Vec<f32>,
}

impl<'a> Truth<'a> {
    fn new(data: &'a [Vec<f32>], queries: &'a [Vec<f32>]) -> Self {
        let kth = queries
            .iter()
            .map(|q| {
                let mut d: Vec<f32> = data
                    .iter()
                    .map(|v| Metric::Cosine.graph_distance(q, v))
                    .collect();
                let (_, kth, _) = d.select_nth_unstable_by(K - 1, |a, b| a.total_cmp(b));
                *kth
            })
            .collect();
        Truth { data, queries, kth }
    }
}

fn recall(found: &[Vec<usize>], truth: &Truth) -> f64 {
    let hits: usize = found
        .iter()
        .enumerate()
        .map(|(q, ids)| {
            ids.iter()
                .filter(|&&id| {
                    Metric::Cosine.graph_distance(&truth.queries[q], &truth.data[id])
                        <= truth.kth[q] + TIE
                })
                .count()
        })
        .sum();
    hits as f64 / (K * truth.queries.len()) as f64
}

/// QPS at `level` recall, linear between the two settings that bracket it; the
/// fastest setting's QPS when even that one reaches it; None when none does.
fn qps_at_recall(points: &[Point], level: f64, qps: fn(&Point) -> f64) -> Option<f64> {
    if points[0].recall >= level {
        return Some(qps(&points[0]));
    }
    points.windows(2).find_map(|w| {
        let (a, b) = (&w[0], &w[1]);
        (a.recall < level && b.recall >= level)
            .then(|| qps(a) + (qps(b) - qps(a)) * (level - a.recall) / (b.recall - a.recall))
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = env_or("M3RET_BENCH_ROUNDS", 3);
    let chosen: String = env_or(
        "M3RET_BENCH_DATASETS",
        "near-duplicates,isotropic,corpus".to_string(),
    );
    ensure_pgvector();
    let cluster = Cluster::start(&[
        "shared_buffers = 2GB",
        "maintenance_work_mem = 2GB",
        "max_parallel_maintenance_workers = 1",
        "jit = off",
    ]);
    for name in chosen.split(',') {
        let set = match name {
            "near-duplicates" => DataSet {
                name: "near-duplicates",
                data: synthetic::near_duplicates(20_000, 64, 1),
                queries: synthetic::near_duplicates(200, 64, 2),
            },
            "isotropic" => DataSet {
                name: "isotropic",
                data: synthetic::isotropic_clusters(
                    env_or("M3RET_BENCH_ROWS", 100_000),
                    384,
                    100,
                    0.5,
                    1,
                ),
                queries: synthetic::isotropic_clusters(200, 384, 100, 0.5, 2),
            },
            "corpus" => corpus(&cluster),
            other => panic!("unknown data set {other}: near-duplicates, isotropic or corpus"),
        };
        bench_data_set(&cluster, set, rounds);
    }
    cluster.assert_no_backend_crashed();
}

fn bench_data_set(cluster: &Cluster, set: DataSet, rounds: usize) {
    let data: Vec<Vec<f32>> = set.data.iter().map(|v| unit(v)).collect();
    let queries: Vec<Vec<f32>> = set.queries.iter().map(|v| unit(v)).collect();
    let dims = data[0].len();
    let truth = Truth::new(&data, &queries);
    eprintln!(
        "[bench] {}: {} x {dims}, {} queries, ground truth ready",
        set.name,
        data.len(),
        queries.len()
    );
    let db = cluster.database("bench_hnsw");
    load(&mut db.connect(), &data);
    let chosen: String = env_or(
        "M3RET_BENCH_INDEXES",
        "m3ret_hnsw,m3ret_hnsw_int8,pgvector".to_string(),
    );
    let measured: Vec<Measured> = CONTENDERS
        .iter()
        .filter(|c| chosen.split(',').any(|n| n == c.name))
        .map(|c| bench_index(cluster, c, &queries, &truth, rounds))
        .collect();
    let (memory_build, memory) = bench_hnsw_rs(&data, &queries, &truth, rounds);
    report(&set, dims, &measured, memory_build, &memory, rounds);
}

/// `items (id, emb embedding, v vector)`: the same rows in both types.
fn load(c: &mut postgres::Client, data: &[Vec<f32>]) {
    let dims = data[0].len();
    c.batch_execute(&format!(
        "CREATE EXTENSION vector; CREATE TABLE staging (id int, emb embedding({dims}))"
    ))
    .unwrap();
    let emb_type = c.prepare("SELECT $1::embedding").unwrap().params()[0].clone();
    let writer = c
        .copy_in("COPY staging (id, emb) FROM STDIN (FORMAT binary)")
        .unwrap();
    let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT4, emb_type]);
    for (i, v) in data.iter().enumerate() {
        writer.write(&[&(i as i32), &Vector(v.clone())]).unwrap();
    }
    writer.finish().unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE items AS SELECT id, emb, emb::text::vector({dims}) AS v FROM staging;
         DROP TABLE staging"
    ))
    .unwrap();
    c.batch_execute("VACUUM ANALYZE items").unwrap();
}

fn bench_index(
    cluster: &Cluster,
    contender: &Contender,
    queries: &[Vec<f32>],
    truth: &Truth,
    rounds: usize,
) -> Measured {
    let mut c = cluster.existing_database("bench_hnsw").connect();
    let index = contender.create.split_whitespace().nth(2).unwrap();
    let mut builds = Vec::new();
    for _ in 0..rounds {
        c.batch_execute(&format!("DROP INDEX IF EXISTS {index}"))
            .unwrap();
        let start = Instant::now();
        c.batch_execute(contender.create).unwrap();
        builds.push(start.elapsed().as_secs_f64());
    }
    let size: i64 = c
        .query_one(&format!("SELECT pg_relation_size('{index}')"), &[])
        .unwrap()
        .get(0);
    eprintln!(
        "[bench] {} build {:.1} s, {:.1} MiB",
        contender.name,
        median(builds.clone()),
        size as f64 / 1048576.0
    );
    let texts: Vec<String> = queries.iter().map(|q| literal(q)).collect();
    let sql = format!(
        "SELECT id FROM items ORDER BY {} <=> $1::text::{} LIMIT {K}",
        contender.column, contender.query_type
    );
    let mut sessions: Vec<postgres::Client> = (0..CLIENTS)
        .map(|_| cluster.existing_database("bench_hnsw").connect())
        .collect();
    run_queries(&mut c, contender, 40, &sql, &texts); // warm the buffer cache
    let points = EF_SEARCH
        .iter()
        .map(|&ef| {
            let (qps, found) =
                median_of_rounds(rounds, || run_queries(&mut c, contender, ef, &sql, &texts));
            let qps_clients = median(
                (0..rounds)
                    .map(|_| concurrent_qps(&mut sessions, contender, ef, &sql, &texts))
                    .collect(),
            );
            Point {
                recall: recall(&found, truth),
                qps,
                qps_clients,
            }
        })
        .collect();
    c.batch_execute(&format!("DROP INDEX {index}")).unwrap();
    Measured {
        name: contender.name,
        build_s: median(builds),
        size_mib: size as f64 / 1048576.0,
        points,
    }
}

/// One session runs every query once: (queries per second, the ids each found).
fn run_queries(
    c: &mut postgres::Client,
    contender: &Contender,
    ef: usize,
    sql: &str,
    texts: &[String],
) -> (f64, Vec<Vec<usize>>) {
    c.batch_execute(&format!(
        "SET {} = {ef}; SET enable_seqscan = off",
        contender.ef_setting
    ))
    .unwrap();
    let search = c.prepare(sql).unwrap();
    let start = Instant::now();
    let found = texts
        .iter()
        .map(|q| {
            c.query(&search, &[q])
                .unwrap()
                .iter()
                .map(|r| r.get::<_, i32>(0) as usize)
                .collect()
        })
        .collect();
    (texts.len() as f64 / start.elapsed().as_secs_f64(), found)
}

/// The CLIENTS sessions each run every query once, started together: total
/// queries per second. The sessions stay open from one setting to the next: a new
/// session's first query loads the extension's library (for m3ret, libtorch with
/// it), and an ending one unloads it, which is not what this measures.
fn concurrent_qps(
    sessions: &mut [postgres::Client],
    contender: &Contender,
    ef: usize,
    sql: &str,
    texts: &[String],
) -> f64 {
    let ready = Barrier::new(sessions.len() + 1);
    let done = Barrier::new(sessions.len() + 1);
    std::thread::scope(|s| {
        for c in sessions.iter_mut() {
            let (ready, done) = (&ready, &done);
            s.spawn(move || {
                c.batch_execute(&format!(
                    "SET {} = {ef}; SET enable_seqscan = off",
                    contender.ef_setting
                ))
                .unwrap();
                let search = c.prepare(sql).unwrap();
                c.query(&search, &[&texts[0]]).unwrap();
                ready.wait();
                for q in texts {
                    c.query(&search, &[q]).unwrap();
                }
                done.wait();
            });
        }
        ready.wait();
        let start = Instant::now();
        done.wait();
        (CLIENTS * texts.len()) as f64 / start.elapsed().as_secs_f64()
    })
}

/// hnsw_rs in memory, same parameters and build threads, one query thread.
fn bench_hnsw_rs(
    data: &[Vec<f32>],
    queries: &[Vec<f32>],
    truth: &Truth,
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
    let points = EF_SEARCH
        .iter()
        .map(|&ef| {
            let (qps, found) = median_of_rounds(rounds, || {
                let start = Instant::now();
                let found: Vec<Vec<usize>> = queries
                    .iter()
                    .map(|q| hnsw.search(q, K, ef).iter().map(|n| n.d_id).collect())
                    .collect();
                (queries.len() as f64 / start.elapsed().as_secs_f64(), found)
            });
            Point {
                recall: recall(&found, truth),
                qps,
                qps_clients: f64::NAN,
            }
        })
        .collect();
    (median(builds), points)
}

fn report(
    set: &DataSet,
    dims: usize,
    measured: &[Measured],
    memory_build: f64,
    memory: &[Point],
    rounds: usize,
) {
    println!(
        "\n## {}: {} x {dims}, {} queries, m = {M}, ef_construction = {EF_CONSTRUCTION}, {THREADS} build threads, medians of {rounds}",
        set.name,
        set.data.len(),
        set.queries.len()
    );
    let peer = measured.iter().find(|m| m.name == "pgvector");
    for m in measured {
        let against = peer
            .filter(|p| p.name != m.name)
            .map(|p| {
                format!(
                    " (build {:.2}x, size {:.2}x pgvector's)",
                    m.build_s / p.build_s,
                    m.size_mib / p.size_mib
                )
            })
            .unwrap_or_default();
        println!(
            "{}: build {:.1} s, size {:.1} MiB{against}",
            m.name, m.build_s, m.size_mib
        );
    }
    println!("hnsw_rs in memory: build {memory_build:.1} s");
    let mut header = "| ef_search |".to_string();
    for m in measured {
        header += &format!(
            " {} recall@10 | QPS 1 client | QPS {CLIENTS} clients |",
            m.name
        );
    }
    println!("{header} hnsw_rs recall@10 | QPS |");
    println!("|---|{}---|---|", "---|---|---|".repeat(measured.len()));
    for (i, ef) in EF_SEARCH.iter().enumerate() {
        let mut row = format!("| {ef} |");
        for m in measured {
            let p = m.points[i];
            row += &format!(" {:.3} | {:.0} | {:.0} |", p.recall, p.qps, p.qps_clients);
        }
        println!("{row} {:.3} | {:.0} |", memory[i].recall, memory[i].qps);
    }
    let Some(peer) = peer else {
        return;
    };
    for level in RECALL_LEVELS {
        for (clients, qps) in [
            (1, (|p: &Point| p.qps) as fn(&Point) -> f64),
            (CLIENTS, |p: &Point| p.qps_clients),
        ] {
            let show = |v: Option<f64>| v.map_or("not reached".to_string(), |q| format!("{q:.0}"));
            let theirs = qps_at_recall(&peer.points, level, qps);
            let mut line = format!(
                "QPS at recall@10 {level:.2}, {clients} client(s): pgvector {}",
                show(theirs)
            );
            for m in measured.iter().filter(|m| m.name != "pgvector") {
                let ours = qps_at_recall(&m.points, level, qps);
                let ratio = match (ours, theirs) {
                    (Some(o), Some(p)) => format!("{:.2}", o / p),
                    _ => "-".to_string(),
                };
                line += &format!(", {} {} (ratio {ratio})", m.name, show(ours));
            }
            println!("{line}");
        }
    }
}

/// Builds and installs pgvector when the system PostgreSQL does not have it yet.
fn ensure_pgvector() {
    let sharedir = std::process::Command::new("pg_config")
        .arg("--sharedir")
        .output()
        .expect("pg_config");
    let sharedir = String::from_utf8(sharedir.stdout).unwrap();
    if PathBuf::from(sharedir.trim())
        .join("extension/vector.control")
        .exists()
    {
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-pgvector.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/install-pgvector.sh failed");
}

/// The shipped model's embeddings of the corpus's 2D studies (cached), every 40th
/// held out as a query.
fn corpus(cluster: &Cluster) -> DataSet {
    let model_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/m3ret-default.safetensors");
    let model = std::fs::read(&model_path).unwrap();
    let sha = m3ret_core::model::file::sha256_hex(&model);
    let cache_dir =
        PathBuf::from(std::env::var("M3RET_CACHE").unwrap_or("/var/cache/m3ret".into()))
            .join("bench");
    let cache = cache_dir.join(format!("corpus-2d-{}.json", &sha[..16]));
    let all: Vec<Vec<f32>> = match std::fs::read(&cache) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(_) => {
            eprintln!(
                "[bench] embedding the corpus's 2D studies (minutes; cached in {})",
                cache.display()
            );
            let db = cluster.database("bench_corpus");
            let mut c = db.connect();
            c.execute("SELECT m3ret_model_import('m3ret-default', $1)", &[&model])
                .unwrap();
            c.batch_execute("CREATE TABLE studies (id int PRIMARY KEY, modality text, data bytea, emb embedding)")
                .unwrap();
            m3ret_e2e::copy_corpus_2d(&mut c, "studies");
            m3ret_e2e::embed_by_modality(&mut c, "studies");
            let all: Vec<Vec<f32>> = c
                .query("SELECT emb::real[] FROM studies ORDER BY id", &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            std::fs::create_dir_all(&cache_dir).unwrap();
            std::fs::write(&cache, serde_json::to_vec(&all).unwrap()).unwrap();
            all
        }
    };
    let (mut data, mut queries) = (Vec::new(), Vec::new());
    for (i, v) in all.into_iter().enumerate() {
        if i % 40 == 0 {
            queries.push(v);
        } else {
            data.push(v);
        }
    }
    DataSet {
        name: "corpus",
        data,
        queries,
    }
}
