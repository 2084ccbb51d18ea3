//! Sharding over postgres_fdw and over Citus, measured: the top-10 query on a
//! coordinator over 1, 2 and 4 postgres_fdw shard clusters, and on a Citus
//! coordinator over 2 and 4 workers (4 shards per worker, scripts/install-citus.sh),
//! each holding the same rows in total, against one server with all rows and its own
//! `m3ret_hnsw` index, in the same run. Then, on the 2-worker Citus cluster, the
//! latency of a query whose image is embedded once on the coordinator (the
//! `(SELECT m3ret_embed(...))` form) against the same query given the vector.
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
//! Citus's plain form is the only one it needs: it sends `ORDER BY ... LIMIT 10` to
//! every shard, where the index answers it.
//!
//! `cargo bench -p m3ret-benches --bench sql_sharding` (the extension and Citus must be
//! installed). M3RET_BENCH_ROWS sets the rows (100,000), M3RET_BENCH_QUERIES the
//! queries (200).

use m3ret_core::vector::synthetic::Clustered;
use m3ret_e2e::citus::CitusCluster;
use m3ret_e2e::wire::literal;
use m3ret_e2e::{exact_top10_cosine, fixture, Cluster};
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

/// A Citus coordinator over `n` workers, `studies` distributed by id in 4 shards per
/// worker, an `m3ret_hnsw` index on every shard.
fn citus(rows: &[Vec<f32>], n: usize) -> (CitusCluster, Client) {
    let shards = format!("citus.shard_count = {}", 4 * n);
    let cluster = CitusCluster::start_with(n, "warehouse", &[&shards]);
    let mut c = cluster.connect();
    c.batch_execute(&format!(
        "CREATE TABLE studies (id int PRIMARY KEY, emb embedding({DIMS}));
         SELECT create_distributed_table('studies', 'id');"
    ))
    .unwrap();
    let all: Vec<(usize, &Vec<f32>)> = rows.iter().enumerate().collect();
    copy_rows(&mut c, "studies", &all);
    // One statement per query string: Citus refuses a CREATE INDEX that shares one.
    c.batch_execute("CREATE INDEX ON studies USING m3ret_hnsw (emb)")
        .unwrap();
    c.batch_execute("ANALYZE studies").unwrap();
    c.batch_execute(&format!(
        "SELECT run_command_on_all_nodes($${INDEX_SETTINGS}$$)"
    ))
    .unwrap();
    // A new session: its connections to the workers start with the database's settings.
    let c = cluster.connect();
    (cluster, c)
}

/// Median latency of `sql` with the study `data` as `$1`, over `n` runs.
fn median_with_study(c: &mut Client, sql: &str, data: &[u8], n: usize) -> Duration {
    c.query(sql, &[&data]).unwrap();
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let begin = Instant::now();
            c.query(sql, &[&data]).unwrap();
            begin.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

/// On a Citus cluster whose `studies` hold the default model's embeddings of a few
/// studies: the query embedded once on the coordinator, the embedding alone, and the
/// query given the vector.
fn embed_once_latency(cluster: &CitusCluster) -> String {
    let mut c = cluster.connect();
    let model = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/m3ret-default.safetensors"
    ))
    .unwrap();
    c.execute("SELECT m3ret_model_import('m3ret-default', $1)", &[&model])
        .unwrap();
    let dims: i32 = c
        .query_one("SELECT dims FROM m3ret_model_list", &[])
        .unwrap()
        .get(0);
    for sql in [
        format!("CREATE TABLE xrays (id int PRIMARY KEY, emb embedding({dims}))"),
        "SELECT create_distributed_table('xrays', 'id')".to_string(),
        format!(
            "INSERT INTO xrays SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, {dims}) WHERE i > 0)::real[]::embedding
             FROM generate_series(1, 10000) i"
        ),
        "CREATE INDEX ON xrays USING m3ret_hnsw (emb)".to_string(),
        "ANALYZE xrays".to_string(),
    ] {
        c.batch_execute(&sql).unwrap();
    }
    let xray = fixture("pmnist_train_0000.png");
    let embed = median_with_study(&mut c, "SELECT m3ret_embed($1::bytea, 'xray')", &xray, 30);
    let once = median_with_study(
        &mut c,
        "SELECT id FROM xrays ORDER BY emb <=> (SELECT m3ret_embed($1::bytea, 'xray')) LIMIT 10",
        &xray,
        30,
    );
    let vector: String = c
        .query_one("SELECT m3ret_embed($1::bytea, 'xray')::text", &[&xray])
        .unwrap()
        .get(0);
    let given = median_with_study(
        &mut c,
        &format!(
            "SELECT id FROM xrays WHERE $1::bytea IS NOT NULL ORDER BY emb <=> '{vector}' LIMIT 10"
        ),
        &xray,
        30,
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "Citus, {} workers, 10,000 rows of the default model's {dims} dimensions, a 28 x 28 PNG X-ray as the query, \
         30 runs, medians:\n| query | median ms |\n|---|---|\n\
         | m3ret_embed alone, on the coordinator | {:.2} |\n\
         | top 10, image embedded once on the coordinator | {:.2} |\n\
         | top 10, vector given | {:.2} |",
        cluster.workers.len(),
        ms(embed),
        ms(once),
        ms(given)
    )
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
    let rows_n = env_or("M3RET_BENCH_ROWS", 100_000);
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
        "top-10 over postgres_fdw shards and Citus workers, {rows_n} x {DIMS} clustered rows in total, {queries_n} queries, one client, \
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
    let mut embed_once = String::new();
    for n in [2, 4] {
        let (cluster, mut c) = citus(rows, n);
        let plain = measure(&mut c, PLAIN, queries, &truth);
        row(&format!("Citus, {n} workers"), &plain, &baseline);
        if n == 2 {
            embed_once = embed_once_latency(&cluster);
        }
        cluster.assert_no_backend_crashed();
    }
    println!("\n{embed_once}");
}
