//! Sharding on PostgreSQL's own engine: a coordinator holds a table partitioned by
//! hash whose partitions are postgres_fdw foreign tables on two shard servers, each
//! partition with its own `m3ret_hnsw` index. With `extensions 'm3ret'` on the
//! servers, postgres_fdw may ship `<=>` and `embedding` values: every shard sorts its
//! own rows by distance and the coordinator merges them (a Merge Append under the
//! LIMIT), so `ORDER BY emb <=> q LIMIT 10` gives the exact top 10 of all shards.
//! The LIMIT itself reaches the shards only when each partition is queried in a
//! subquery of its own (the second form below), so that each uses its index.
//! The shards and the coordinator are set up by the user-facing examples,
//! sql/examples/sharding_shard.sql and sharding_coordinator.sql.

use m3ret_core::vector::synthetic::Clustered;
use m3ret_e2e::models::small_model;
use m3ret_e2e::wire::literal;
use m3ret_e2e::{
    embed_calls_pending, exact_top10_cosine, expect_error, fixture, Cluster, Database,
    FIXTURES_BY_MODALITY,
};
use postgres::Client;
use std::io::Write;

const DIMS: usize = 32;
const SHARDS: usize = 2;
const ROWS: usize = 2_000;

fn vectors() -> Vec<Vec<f32>> {
    Clustered::new(DIMS, 10).vectors(ROWS, 31)
}

/// The ids a query with the vector `q` as `$1` returns, in order.
fn ids(c: &mut Client, sql: &str, q: &[f32]) -> Vec<i32> {
    c.query(sql, &[&literal(q)])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// EXPLAIN VERBOSE of `sql` with `q` in place of `$1::text`: every line, and the
/// Remote SQL lines among them.
fn plan(c: &mut Client, sql: &str, q: &[f32]) -> (Vec<String>, Vec<String>) {
    let explain = format!(
        "EXPLAIN (VERBOSE, COSTS OFF) {}",
        sql.replace("$1::text", &format!("'{}'", literal(q)))
    );
    let lines: Vec<String> = c
        .query(&explain, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let remote = lines
        .iter()
        .filter(|l| l.contains("Remote SQL"))
        .cloned()
        .collect();
    (lines, remote)
}

/// One shard, set up by sql/examples/sharding_shard.sql: a database with the
/// extension and its partition's table and index.
fn shard(cluster: &Cluster, i: usize, dims: usize) {
    let db = cluster.database("warehouse");
    db.psql_file(
        "sql/examples/sharding_shard.sql",
        &[format!("part={i}"), format!("dims={dims}")],
    );
    // Searches there are wide enough to be exact, so the merged top 10 must be.
    db.connect()
        .batch_execute("ALTER DATABASE warehouse SET m3ret.ef_search = 400")
        .unwrap();
}

/// The coordinator's partitioned table over the shards, set up by
/// sql/examples/sharding_coordinator.sql.
fn coordinator(db: &Database, shards: &[Cluster], dims: usize) {
    assert_eq!(shards.len(), 2, "the example declares two shards");
    db.psql_file(
        "sql/examples/sharding_coordinator.sql",
        &[
            "host0=127.0.0.1".to_string(),
            format!("port0={}", shards[0].port()),
            "host1=127.0.0.1".to_string(),
            format!("port1={}", shards[1].port()),
            "shard_user=postgres".to_string(),
            format!("dims={dims}"),
        ],
    );
}

#[test]
fn a_coordinator_over_fdw_shards_returns_the_exact_top_10() {
    let shards: Vec<Cluster> = (0..SHARDS).map(|_| Cluster::start(&[])).collect();
    for (i, cluster) in shards.iter().enumerate() {
        shard(cluster, i, DIMS);
    }
    let head = Cluster::start(&[]);
    let head_db = head.database("warehouse");
    coordinator(&head_db, &shards, DIMS);
    let mut c = head_db.connect();

    // Rows go in through the coordinator, routed to their shard by the hash of the id.
    let rows = vectors();
    let mut w = c.copy_in("COPY studies (id, emb) FROM STDIN").unwrap();
    for (i, v) in rows.iter().enumerate() {
        writeln!(w, "{i}\t{}", literal(v)).unwrap();
    }
    w.finish().unwrap();
    let mut held = 0;
    for (i, cluster) in shards.iter().enumerate() {
        let n: i64 = cluster
            .existing_database("warehouse")
            .connect()
            .query_one(&format!("SELECT count(*) FROM studies_p{i}"), &[])
            .unwrap()
            .get(0);
        assert!(n > 0, "shard {i} holds no row");
        held += n;
    }
    assert_eq!(held, ROWS as i64);

    let query = "SELECT id FROM studies ORDER BY emb <=> $1::text::embedding LIMIT 10";
    for q in rows.iter().step_by(100) {
        assert_eq!(ids(&mut c, query, q), exact_top10_cosine(&rows, q));
    }

    // The distance sort runs on the shards: each remote query orders by `<=>`.
    let (plan_lines, remote) = plan(&mut c, query, &rows[0]);
    assert_eq!(remote.len(), SHARDS, "{plan_lines:#?}");
    assert!(
        remote
            .iter()
            .all(|l| l.contains("ORDER BY") && l.contains("<=>")),
        "a shard does not sort by distance itself: {plan_lines:#?}"
    );
    assert!(
        plan_lines.iter().any(|l| l.contains("Merge Append")),
        "{plan_lines:#?}"
    );
    // postgres_fdw sends no LIMIT through a Merge Append, so each shard above sorts
    // all its rows. One subquery per partition, each with its own LIMIT, ships the
    // LIMIT too, so each shard can answer from its index; the answers are the same.
    let per_shard = (0..SHARDS)
        .map(|i| {
            format!(
                "(SELECT id, emb <=> $1::text::embedding AS d FROM studies_p{i} ORDER BY d LIMIT 10)"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let per_shard = format!("SELECT id FROM ({per_shard}) AS nearest ORDER BY d LIMIT 10");
    for q in rows.iter().step_by(100) {
        assert_eq!(ids(&mut c, &per_shard, q), exact_top10_cosine(&rows, q));
    }
    let (plan_lines, remote) = plan(&mut c, &per_shard, &rows[0]);
    assert_eq!(remote.len(), SHARDS, "{plan_lines:#?}");
    assert!(
        remote
            .iter()
            .all(|l| l.contains("ORDER BY") && l.contains("LIMIT 10")),
        "a shard was not sent its LIMIT: {plan_lines:#?}"
    );
    for cluster in shards.iter().chain([&head]) {
        cluster.assert_no_backend_crashed();
    }
}

/// The ids `sql` returns for the study `data` as `$1`, and how many times the
/// coordinator called `m3ret_embed` to answer it.
fn ids_and_embed_calls(c: &mut Client, sql: &str, data: &[u8]) -> (Vec<i32>, i64) {
    let mut t = c.transaction().unwrap();
    t.batch_execute("SET LOCAL track_functions = 'all'")
        .unwrap();
    let before = embed_calls_pending(&mut t);
    let ids = t
        .query(sql, &[&data])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let calls = embed_calls_pending(&mut t) - before;
    t.commit().unwrap();
    (ids, calls)
}

/// A query image embedded in the statement itself (README: "Embedding the query image
/// in the same statement"): as a scalar subquery it is embedded once, on the
/// coordinator, and reaches the shards as a parameter. The shards hold no model, so a
/// call there would fail the query.
#[test]
fn a_query_image_is_embedded_once_on_the_coordinator() {
    let shards: Vec<Cluster> = (0..SHARDS).map(|_| Cluster::start(&[])).collect();
    let dims = 192; // the small test model's embedding
    for (i, cluster) in shards.iter().enumerate() {
        shard(cluster, i, dims);
    }
    let head = Cluster::start(&[]);
    let head_db = head.database("warehouse");
    coordinator(&head_db, &shards, dims);
    let mut c = head_db.connect();
    c.query_one("SELECT m3ret_model_import('test', $1)", &[&small_model(1)])
        .unwrap();
    // The fixtures, embedded on the coordinator, stored on the shards.
    for (id, (file, modality)) in FIXTURES_BY_MODALITY.iter().enumerate() {
        c.execute(
            "INSERT INTO studies VALUES ($1, m3ret_embed($2::bytea, $3))",
            &[&(id as i32), &fixture(file), modality],
        )
        .unwrap();
    }
    let no_model = expect_error(
        &mut shards[0].existing_database("warehouse").connect(),
        "SELECT m3ret_embed('\\x00'::bytea, 'xray')",
    );
    assert!(no_model.contains("no default model"), "{no_model}");

    let xray = fixture(FIXTURES_BY_MODALITY[0].0);
    let plain = "SELECT id FROM studies
                 ORDER BY emb <=> (SELECT m3ret_embed($1::bytea, 'xray')) LIMIT 3";
    let (ids, calls) = ids_and_embed_calls(&mut c, plain, &xray);
    assert_eq!(ids[0], 0, "the X-ray is not its own nearest: {ids:?}");
    assert_eq!(ids.len(), 3);
    assert_eq!(calls, 1, "the query image was embedded {calls} times");

    // The per-partition form (a LIMIT per shard): the embedding in a CTE, read by
    // every partition's subquery.
    let per_shard = (0..SHARDS)
        .map(|i| {
            format!(
                "(SELECT id, emb <=> (SELECT e FROM q) AS d FROM studies_p{i} ORDER BY d LIMIT 3)"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let per_shard = format!(
        "WITH q AS MATERIALIZED (SELECT m3ret_embed($1::bytea, 'xray') AS e)
         SELECT id FROM ({per_shard}) AS nearest ORDER BY d LIMIT 3"
    );
    let (per_shard_ids, calls) = ids_and_embed_calls(&mut c, &per_shard, &xray);
    assert_eq!(per_shard_ids, ids);
    assert_eq!(calls, 1, "the query image was embedded {calls} times");

    // What the shards were sent: a parameter, never the function.
    let explain: Vec<String> = c
        .query(
            &format!(
                "EXPLAIN (VERBOSE, COSTS OFF) {}",
                plain.replace("$1::bytea", "'\\x00'::bytea")
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let remote: Vec<&String> = explain
        .iter()
        .filter(|l| l.contains("Remote SQL"))
        .collect();
    assert_eq!(remote.len(), SHARDS, "{explain:#?}");
    assert!(
        remote
            .iter()
            .all(|l| l.contains("$1") && !l.contains("m3ret_embed")),
        "{explain:#?}"
    );

    // Written straight into the ORDER BY (not shippable: STABLE), the function is
    // called for every row the shards send: what the README warns of.
    let direct = "SELECT id FROM studies ORDER BY emb <=> m3ret_embed($1::bytea, 'xray') LIMIT 3";
    let (direct_ids, calls) = ids_and_embed_calls(&mut c, direct, &xray);
    assert_eq!(direct_ids, ids);
    assert!(calls > 1, "embedded {calls} times");
    for cluster in shards.iter().chain([&head]) {
        cluster.assert_no_backend_crashed();
    }
}
