//! Sharding over postgres_fdw (issue: beyond one server), measured: the top-10 query
//! on a coordinator over 1, 2 and 4 shard clusters holding the same rows in total,
//! against one server with all rows and its own `m3ret_hnsw` index, in the same run.
//! For each: median latency and QPS of one client, and recall@10 against the exact
//! answer, for the plain form (`ORDER BY emb <=> q LIMIT 10` on the partitioned
//! table: each shard sorts all its rows) and the per-partition form (a UNION ALL of
//! one `ORDER BY ... LIMIT 10` per partition: each shard uses its index).
//!
//! Every cluster runs on this machine and shares its cores, so the figures measure
//! the coordinator's overhead and the merge, not a speed-up. For N real machines:
//! latency = the slowest shard's search (over 1/N of the rows) + one round trip + the
//! merge; the single-server row at 1/N of the rows approximates the first term.
//!
//! `cargo bench -p m3ret-benches --bench sql_sharding` (the extension must be
//! installed). M3RET_BENCH_ROWS sets the rows (40,000), M3RET_BENCH_QUERIES the
//! queries (200).

use m3ret_core::vector::synthetic::Clustered;
use m3ret_e2e::wire::literal;
use m3ret_e2e::{exact_top10_cosine, Cluster};
use postgres::Client;
use std::io::Write;
use std::time::{Duration, Instant};

const DIMS: usize = 64;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn copy_rows(c: &mut Client, table: &str, rows: &[(usize, &Vec<f32>)]) {
    let mut w = c
        .copy_in(&format!("COPY {table} (id, emb) FROM STDIN"))
        .unwrap();
    for (id, v) in rows {
        writeln!(w, "{id}\t{}", literal(v)).unwrap();
    }
    w.finish().unwrap();
}

struct Measured {
    median: Duration,
    qps: f64,
    recall: f64,
}

/// Runs `sql` (with the query vector as `$1::text`) once per query.
fn measure(c: &mut Client, sql: &str, queries: &[Vec<f32>], truth: &[Vec<i32>]) -> Measured {
    // One warm-up pass over a few queries: caches, plans, connections to the shards.
    for q in queries.iter().take(10) {
        c.query(sql, &[&literal(q)]).unwrap();
    }
    let mut times = Vec::with_capacity(queries.len());
    let mut hits = 0usize;
    let start = Instant::now();
    for (q, t) in queries.iter().zip(truth) {
        let begin = Instant::now();
        let ids: Vec<i32> = c
            .query(sql, &[&literal(q)])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        times.push(begin.elapsed());
        hits += ids.iter().filter(|id| t.contains(id)).count();
    }
    let total = start.elapsed();
    times.sort();
    Measured {
        median: times[times.len() / 2],
        qps: queries.len() as f64 / total.as_secs_f64(),
        recall: hits as f64 / (10 * queries.len()) as f64,
    }
}

const INDEX_SETTINGS: &str = "ALTER DATABASE warehouse SET m3ret.ef_search = 40";

/// One server with every row: the baseline.
fn single_server(rows: &[Vec<f32>]) -> (Cluster, Client) {
    let cluster = Cluster::start(&[]);
    let mut c = cluster.database("warehouse").connect();
    c.batch_execute(&format!(
        "CREATE TABLE studies (id int PRIMARY KEY, emb embedding({DIMS})); {INDEX_SETTINGS}"
    ))
    .unwrap();
    let all: Vec<(usize, &Vec<f32>)> = rows.iter().enumerate().collect();
    copy_rows(&mut c, "studies", &all);
    c.batch_execute("CREATE INDEX ON studies USING m3ret_hnsw (emb); ANALYZE studies")
        .unwrap();
    let c = cluster.existing_database("warehouse").connect();
    (cluster, c)
}

/// A coordinator over `n` shard clusters, rows spread by the partitioning's hash.
fn sharded(rows: &[Vec<f32>], n: usize) -> (Vec<Cluster>, Client) {
    let shards: Vec<Cluster> = (0..n).map(|_| Cluster::start(&[])).collect();
    for (i, shard) in shards.iter().enumerate() {
        shard
            .database("warehouse")
            .connect()
            .batch_execute(&format!(
                "CREATE TABLE studies_p{i} (id int PRIMARY KEY, emb embedding({DIMS})); {INDEX_SETTINGS}"
            ))
            .unwrap();
    }
    let coordinator = Cluster::start(&[]);
    let mut c = coordinator.database("warehouse").connect();
    c.batch_execute(&format!(
        "CREATE EXTENSION postgres_fdw;
         CREATE TABLE studies (id int, emb embedding({DIMS})) PARTITION BY HASH (id);"
    ))
    .unwrap();
    for (i, shard) in shards.iter().enumerate() {
        c.batch_execute(&format!(
            "CREATE SERVER shard{i} FOREIGN DATA WRAPPER postgres_fdw
                 OPTIONS (host '127.0.0.1', port '{port}', dbname 'warehouse', extensions 'm3ret',
                          fetch_size '100', async_capable 'true');
             CREATE USER MAPPING FOR CURRENT_USER SERVER shard{i} OPTIONS (user 'postgres');
             CREATE FOREIGN TABLE studies_p{i} PARTITION OF studies
                 FOR VALUES WITH (MODULUS {n}, REMAINDER {i})
                 SERVER shard{i} OPTIONS (table_name 'studies_p{i}');",
            port = shard.port()
        ))
        .unwrap();
    }
    // Rows go through the coordinator to their shard, as a user's would.
    let all: Vec<(usize, &Vec<f32>)> = rows.iter().enumerate().collect();
    copy_rows(&mut c, "studies", &all);
    for (i, shard) in shards.iter().enumerate() {
        shard
            .existing_database("warehouse")
            .connect()
            .batch_execute(&format!(
                "CREATE INDEX ON studies_p{i} USING m3ret_hnsw (emb); ANALYZE studies_p{i}"
            ))
            .unwrap();
    }
    // Keep the coordinator running as long as the shards.
    let mut clusters = shards;
    clusters.push(coordinator);
    (clusters, c)
}

const PLAIN: &str = "SELECT id FROM studies ORDER BY emb <=> $1::text::embedding LIMIT 10";

fn per_partition(n: usize) -> String {
    let parts: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "(SELECT id, emb <=> $1::text::embedding AS d FROM studies_p{i} ORDER BY d LIMIT 10)"
            )
        })
        .collect();
    format!(
        "SELECT id FROM ({}) AS nearest ORDER BY d LIMIT 10",
        parts.join(" UNION ALL ")
    )
}

fn row(name: &str, m: &Measured, baseline: &Measured) {
    println!(
        "| {name} | {:.2} | {:.0} | {:.3} | {:.2} |",
        m.median.as_secs_f64() * 1e3,
        m.qps,
        m.recall,
        m.qps / baseline.qps
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` asks benches to list themselves
    }
    let rows_n = env_or("M3RET_BENCH_ROWS", 40_000);
    let queries_n = env_or("M3RET_BENCH_QUERIES", 200);
    let data = Clustered::new(DIMS, 100).vectors(rows_n + queries_n, 17);
    let (rows, queries) = data.split_at(rows_n);
    let truth: Vec<Vec<i32>> = queries
        .iter()
        .map(|q| exact_top10_cosine(rows, q))
        .collect();

    let (single, mut c) = single_server(rows);
    let baseline = measure(&mut c, PLAIN, queries, &truth);
    drop(c);
    drop(single);

    println!(
        "top-10 over postgres_fdw shards, {rows_n} x {DIMS} clustered rows in total, {queries_n} queries, one client, \
         m3ret.ef_search = 40 on every server; every cluster on this one machine"
    );
    println!("| setup | median ms | QPS | recall@10 | QPS / one server |");
    println!("|---|---|---|---|---|");
    row("one server, all rows, its index", &baseline, &baseline);
    for n in [1, 2, 4] {
        let (clusters, mut c) = sharded(rows, n);
        let plain = measure(&mut c, PLAIN, queries, &truth);
        let split = measure(&mut c, &per_partition(n), queries, &truth);
        row(&format!("{n} shard(s), plain form"), &plain, &baseline);
        row(
            &format!("{n} shard(s), per-partition form"),
            &split,
            &baseline,
        );
        for cluster in &clusters {
            cluster.assert_no_backend_crashed();
        }
    }
}
