//! The `m3ret_hnsw` index through a real cluster: recall against exact search for
//! the three operator classes, filtered scans, concurrent inserts and searches, a
//! crash during inserts, VACUUM, REINDEX, UNLOGGED tables and bad input, the
//! 8-bit quantised graph (`quantization = int8`) re-ranked on the table's vectors,
//! with `m3ret_hnsw_check` after every scenario.

use m3ret_core::vector::synthetic::Clustered;
use m3ret_e2e::wire::literal;
use m3ret_e2e::{expect_error, hnsw_check, Cluster};
use postgres::Client;
use std::io::Write;

const DIMS: usize = 384;
/// A filter on one category keeps 5% of the rows.
const CATEGORIES: i32 = 20;

/// The category of row `id`: runs of 100 ids, so that every category has members
/// in every cluster (member i of the data is in cluster i mod 100).
fn category(id: i32) -> i32 {
    (id / 100) % CATEGORIES
}
const CLUSTERS: usize = 100;

fn data() -> Clustered {
    Clustered::new(DIMS, CLUSTERS)
}

fn create_table(client: &mut Client, table: &str, unlogged: bool) {
    let kind = if unlogged { "UNLOGGED " } else { "" };
    client
        .batch_execute(&format!("CREATE {kind}TABLE {table} (id int PRIMARY KEY, category int NOT NULL, emb embedding({DIMS}))"))
        .unwrap();
}

/// Loads `vectors` with ids from `first_id` on.
fn load(client: &mut Client, table: &str, vectors: &[Vec<f32>], first_id: i32) {
    let mut w = client
        .copy_in(&format!("COPY {table} (id, category, emb) FROM STDIN"))
        .unwrap();
    for (i, v) in vectors.iter().enumerate() {
        let id = first_id + i as i32;
        writeln!(w, "{id}\t{}\t{}", category(id), literal(v)).unwrap();
    }
    w.finish().unwrap();
}

/// `m3ret_hnsw_check`'s (live, dead, freed); fails on any problem it reports, an
/// unreachable element included.
#[track_caller]
fn check_index(client: &mut Client, index: &str) -> (i64, i64, i64) {
    let c = hnsw_check(client, index);
    (c.live, c.dead, c.freed)
}

/// Ids and distances of the `k` nearest rows, through the index or (exact) by a
/// sequential scan and sort.
fn nearest(
    client: &mut Client,
    table: &str,
    filter: &str,
    op: &str,
    q: &[f32],
    k: usize,
    exact: bool,
) -> Vec<(i32, f64)> {
    let setting = if exact {
        "SET enable_indexscan = off"
    } else {
        "RESET enable_indexscan"
    };
    client.batch_execute(setting).unwrap();
    let sql = format!("SELECT id, emb {op} $1::text::embedding FROM {table} {filter} ORDER BY emb {op} $1::text::embedding LIMIT {k}");
    client
        .query(&sql, &[&literal(q)])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Mean recall@k of the index against exact search over `queries`.
fn recall(
    client: &mut Client,
    table: &str,
    filter: &str,
    op: &str,
    queries: &[Vec<f32>],
    k: usize,
) -> f64 {
    let mut hits = 0;
    for q in queries {
        let truth = nearest(client, table, filter, op, q, k, true);
        let found = nearest(client, table, filter, op, q, k, false);
        hits += true_neighbours(&truth, &found);
    }
    hits as f64 / (k * queries.len()) as f64
}

/// How many of `found` are true k nearest neighbours, `truth` being the exact
/// top k. Rows at the same distance as the k-th true row count as true: among
/// exact duplicates (the corpus holds 194 groups of byte-identical images) the
/// exact scan's choice at the cut is arbitrary, and an index returning another
/// row of the tie is not wrong.
fn true_neighbours(truth: &[(i32, f64)], found: &[(i32, f64)]) -> usize {
    let kth = truth.last().map_or(f64::INFINITY, |r| r.1);
    found
        .iter()
        .filter(|r| r.1 <= kth || truth.iter().any(|t| t.0 == r.0))
        .count()
}

fn explain(client: &mut Client, sql: &str) -> String {
    client
        .query(&format!("EXPLAIN (COSTS OFF) {sql}"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `create_index` in a session of its own while this one polls
/// pg_stat_progress_create_index; returns the phases seen, in order.
fn watch_build_progress(db: &m3ret_e2e::Database, create_index: &str) -> Vec<String> {
    let mut watcher = db.connect();
    std::thread::scope(|scope| {
        let build = scope.spawn(|| db.connect().batch_execute(create_index).unwrap());
        let mut phases: Vec<String> = Vec::new();
        while !build.is_finished() {
            for row in watcher
                .query("SELECT phase FROM pg_stat_progress_create_index", &[])
                .unwrap()
            {
                let phase: String = row.get(0);
                if phases.last() != Some(&phase) {
                    phases.push(phase);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        build.join().unwrap();
        phases
    })
}

#[test]
fn recall_at_10_of_every_operator_class_on_20000_clustered_vectors() {
    let db = Cluster::shared().database("hnsw_recall");
    let mut c = db.connect();
    create_table(&mut c, "items", false);
    load(&mut c, "items", &data().vectors(20_000, 1), 1);
    let queries = data().vectors(40, 2);
    for (opclass, op) in [
        ("embedding_cosine_ops", "<=>"),
        ("embedding_l2_ops", "<->"),
        ("embedding_ip_ops", "<#>"),
    ] {
        let phases = watch_build_progress(
            &db,
            &format!("CREATE INDEX items_idx ON items USING m3ret_hnsw (emb {opclass})"),
        );
        assert!(
            phases.iter().any(|p| p == "building index: building graph"),
            "{opclass}: progress phases seen: {phases:?}"
        );
        c.batch_execute("ANALYZE items").unwrap();
        let plan = explain(
            &mut c,
            &format!(
                "SELECT id FROM items ORDER BY emb {op} '{}' LIMIT 10",
                literal(&queries[0])
            ),
        );
        assert!(
            plan.contains("Index Scan using items_idx"),
            "{opclass}: the planner did not use the index:\n{plan}"
        );
        let r = recall(&mut c, "items", "", op, &queries, 10);
        assert!(r >= 0.95, "{opclass}: recall@10 {r}");
        assert_eq!(check_index(&mut c, "items_idx"), (20_000, 0, 0));
        c.batch_execute("DROP INDEX items_idx").unwrap();
    }
    // Without ORDER BY ... LIMIT the index is no use, and the planner knows it.
    c.batch_execute("CREATE INDEX items_idx ON items USING m3ret_hnsw (emb)")
        .unwrap();
    let plan = explain(
        &mut c,
        &format!(
            "SELECT id FROM items WHERE emb <=> '{}' < 0.1",
            literal(&queries[0])
        ),
    );
    assert!(
        !plan.contains("items_idx"),
        "the index was used without an ORDER BY:\n{plan}"
    );
    db.cluster.assert_no_backend_crashed();
}

#[test]
fn a_filtered_query_returns_limit_rows_in_order() {
    let db = Cluster::shared().database("hnsw_filter");
    let mut c = db.connect();
    create_table(&mut c, "items", false);
    load(&mut c, "items", &data().vectors(20_000, 3), 1);
    c.batch_execute("CREATE INDEX items_idx ON items USING m3ret_hnsw (emb); ANALYZE items")
        .unwrap();
    let queries = data().vectors(10, 4);
    let mut hits = 0;
    for (i, q) in queries.iter().enumerate() {
        let filter = format!("WHERE category = {}", i as i32 % CATEGORIES);
        let found = nearest(&mut c, "items", &filter, "<=>", q, 10, false);
        assert_eq!(
            found.len(),
            10,
            "query {i}: {} rows instead of 10",
            found.len()
        );
        assert!(
            found.windows(2).all(|w| w[0].1 <= w[1].1),
            "query {i}: rows out of order: {found:?}"
        );
        assert!(
            found.iter().all(|r| category(r.0) == i as i32 % CATEGORIES),
            "a row outside the filter"
        );
        let truth: Vec<i32> = nearest(&mut c, "items", &filter, "<=>", q, 10, true)
            .iter()
            .map(|r| r.0)
            .collect();
        hits += found.iter().filter(|r| truth.contains(&r.0)).count();
    }
    let r = hits as f64 / 100.0;
    assert!(r >= 0.9, "filtered recall@10 {r}");
    // With iterative scans off, the first batch (ef_search rows, 5% of them
    // passing) is all there is: fewer rows come back.
    c.batch_execute("SET m3ret.iterative_scan = off").unwrap();
    let found = nearest(
        &mut c,
        "items",
        "WHERE category = 0",
        "<=>",
        &queries[0],
        10,
        false,
    );
    assert!(
        found.len() < 10,
        "without iterative scans {} rows came back",
        found.len()
    );
    db.cluster.assert_no_backend_crashed();
}

#[test]
fn vacuum_removes_deleted_rows_keeps_recall_and_reuses_space() {
    let db = Cluster::shared().database("hnsw_vacuum");
    let mut c = db.connect();
    create_table(&mut c, "items", false);
    load(&mut c, "items", &data().vectors(20_000, 5), 1);
    c.batch_execute("CREATE INDEX items_idx ON items USING m3ret_hnsw (emb)")
        .unwrap();
    // Half the rows, picked by a hash of the id: about half of every cluster.
    let deleted = c
        .execute("DELETE FROM items WHERE hashint4(id) & 1 = 0", &[])
        .unwrap() as i64;
    assert!((9_000..11_000).contains(&deleted), "{deleted} rows deleted");
    let live = 20_000 - deleted;
    assert_eq!(
        check_index(&mut c, "items_idx"),
        (live, deleted, 0),
        "before VACUUM the dead rows are still indexed"
    );
    c.batch_execute("VACUUM items").unwrap();
    assert_eq!(check_index(&mut c, "items_idx"), (live, 0, deleted));
    let queries = data().vectors(100, 6);
    for q in &queries[..5] {
        let found = nearest(&mut c, "items", "", "<=>", q, 10, false);
        assert_eq!(found.len(), 10);
        let ids: Vec<i32> = found.iter().map(|r| r.0).collect();
        let gone: i64 = c
            .query_one(
                "SELECT count(*) FROM unnest($1::int[]) AS id WHERE hashint4(id) & 1 = 0",
                &[&ids],
            )
            .unwrap()
            .get(0);
        assert_eq!(gone, 0, "a deleted row came back: {ids:?}");
    }
    let r = recall(&mut c, "items", "", "<=>", &queries, 10);
    assert!(r >= 0.95, "recall@10 after deleting half and VACUUM: {r}");
    let size_before: i64 = c
        .query_one("SELECT pg_relation_size('items_idx')", &[])
        .unwrap()
        .get(0);
    load(
        &mut c,
        "items",
        &data().vectors(deleted as usize, 7),
        100_001,
    );
    let size_after: i64 = c
        .query_one("SELECT pg_relation_size('items_idx')", &[])
        .unwrap()
        .get(0);
    // New rows draw new levels: an element above every freed tuple's level takes
    // the room of two freed ones (or free space), so the last few may find no
    // room left. With 13 elements of 384 bytes per page, that has cost a page.
    assert!(
        size_after <= size_before + size_before / 100,
        "the index grew from {size_before} to {size_after} bytes re-inserting as many rows"
    );
    // An insert gives up a link only when the new element reaches its target too
    // (before, judging from the neighbourhood, 3 of 20,000 were once cut off here).
    assert_eq!(
        check_index(&mut c, "items_idx"),
        (20_000, 0, 0),
        "after re-inserting"
    );
    c.batch_execute("VACUUM items").unwrap();
    assert_eq!(
        check_index(&mut c, "items_idx"),
        (20_000, 0, 0),
        "after a VACUUM with nothing to remove"
    );
    let r = recall(&mut c, "items", "", "<=>", &queries, 10);
    assert!(
        r >= 0.95,
        "recall@10 after re-inserting into freed space: {r}"
    );
    db.cluster.assert_no_backend_crashed();
}

/// Inserts rows one per statement from `sessions` connections at once; returns the
/// ids whose INSERT returned success.
fn insert_concurrently(
    cluster: &Cluster,
    database: &str,
    sessions: usize,
    per_session: usize,
    seed: u64,
) -> Vec<i32> {
    let vectors = data().vectors(sessions * per_session, seed);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..sessions)
            .map(|s| {
                let vectors = &vectors;
                scope.spawn(move || {
                    let mut committed = Vec::new();
                    let Ok(mut c) = Client::connect(&cluster.connection_string(database), postgres::NoTls) else { return committed };
                    for i in 0..per_session {
                        let id = (s * per_session + i) as i32 + 1;
                        let sql = "INSERT INTO items (id, category, emb) VALUES ($1, $2, $3::text::embedding)";
                        match c.execute(sql, &[&id, &category(id), &literal(&vectors[id as usize - 1])]) {
                            Ok(_) => committed.push(id),
                            Err(_) => break,
                        }
                    }
                    committed
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Each of `ids` comes back first when its own vector is the query.
fn assert_all_findable(c: &mut Client, ids: &[i32], seed: u64, total: usize) {
    let vectors = data().vectors(total, seed);
    c.batch_execute("SET m3ret.ef_search = 100").unwrap();
    for &id in ids {
        let found = nearest(c, "items", "", "<=>", &vectors[id as usize - 1], 1, false);
        assert_eq!(
            found.first().map(|r| r.0),
            Some(id),
            "row {id} is not found by its own vector"
        );
    }
    c.batch_execute("RESET m3ret.ef_search").unwrap();
}

#[test]
fn four_sessions_insert_while_four_search() {
    let db = Cluster::shared().database("hnsw_concurrent");
    let mut c = db.connect();
    create_table(&mut c, "items", false);
    c.batch_execute("CREATE INDEX items_idx ON items USING m3ret_hnsw (emb)")
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let queries = data().vectors(20, 9);
    let (committed, searches) = std::thread::scope(|scope| {
        let searchers: Vec<_> = (0..4)
            .map(|s| {
                let (done, queries, db) = (&done, &queries, &db);
                scope.spawn(move || {
                    let mut c = db.connect();
                    let mut n = 0;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        let q = &queries[(n + s) % queries.len()];
                        let rows = nearest(&mut c, "items", "", "<=>", q, 10, false);
                        assert!(
                            rows.windows(2).all(|w| w[0].1 <= w[1].1),
                            "rows out of order during inserts"
                        );
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let committed = insert_concurrently(db.cluster, &db.name, 4, 400, 8);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (
            committed,
            searchers
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum::<usize>(),
        )
    });
    assert_eq!(committed.len(), 1600, "an insert failed");
    assert!(searches > 0);
    assert_eq!(check_index(&mut c, "items_idx"), (1600, 0, 0));
    assert_all_findable(&mut c, &committed, 8, 1600);
    db.cluster.assert_no_backend_crashed();
}

#[test]
fn a_crash_during_inserts_loses_no_committed_row() {
    let cluster = Cluster::start(&[]);
    let db = cluster.database("hnsw_crash");
    let mut c = db.connect();
    create_table(&mut c, "items", false);
    create_table(&mut c, "scratch", true);
    // Both storages through the crash: the default int8 graph, and a float one.
    c.batch_execute("CREATE INDEX items_idx ON items USING m3ret_hnsw (emb); CREATE INDEX items_float_idx ON items USING m3ret_hnsw (emb) WITH (quantization = none); CREATE INDEX scratch_idx ON scratch USING m3ret_hnsw (emb)")
        .unwrap();
    load(&mut c, "scratch", &data().vectors(100, 10), 1);
    drop(c);
    let committed = std::thread::scope(|scope| {
        let inserts = scope.spawn(|| insert_concurrently(&cluster, "hnsw_crash", 4, 10_000, 11));
        // Crash once a few hundred rows are in, however fast this machine inserts.
        let mut watcher = db.connect();
        while watcher
            .query_one("SELECT count(*) FROM items", &[])
            .unwrap()
            .get::<_, i64>(0)
            < 200
            && !inserts.is_finished()
        {
            std::thread::yield_now();
        }
        drop(watcher);
        cluster.crash_and_restart();
        inserts.join().unwrap()
    });
    assert!(
        committed.len() > 50 && committed.len() < 40_000,
        "{} rows committed before the crash",
        committed.len()
    );
    let mut c = db.connect();
    let rows: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .unwrap()
        .get(0);
    assert!(rows >= committed.len() as i64);
    assert_eq!(check_index(&mut c, "items_idx").0, rows);
    assert_eq!(check_index(&mut c, "items_float_idx").0, rows);
    assert_all_findable(&mut c, &committed, 11, 40_000);
    // The UNLOGGED table comes back empty, with a valid empty index that takes rows.
    assert_eq!(check_index(&mut c, "scratch_idx"), (0, 0, 0));
    load(&mut c, "scratch", &data().vectors(100, 10), 1);
    assert_eq!(check_index(&mut c, "scratch_idx"), (100, 0, 0));
    assert_eq!(
        nearest(
            &mut c,
            "scratch",
            "",
            "<=>",
            &data().vectors(100, 10)[41],
            1,
            false
        )[0]
        .0,
        42
    );
    assert!(
        !cluster.log().contains("was terminated by signal 11"),
        "a backend crashed:\n{}",
        cluster.log()
    );
}

#[test]
fn reindex_unlogged_small_memory_and_bad_input() {
    let db = Cluster::shared().database("hnsw_misc");
    let mut c = db.connect();
    create_table(&mut c, "items", false);
    let vectors = data().vectors(3000, 12);
    load(&mut c, "items", &vectors, 1);
    c.batch_execute(
        "CREATE INDEX items_idx ON items USING m3ret_hnsw (emb) WITH (m = 8, ef_construction = 40)",
    )
    .unwrap();
    c.batch_execute("REINDEX INDEX items_idx").unwrap();
    assert_eq!(check_index(&mut c, "items_idx"), (3000, 0, 0));
    assert_eq!(
        nearest(&mut c, "items", "", "<=>", &vectors[99], 1, false)[0].0,
        100
    );

    // A graph larger than maintenance_work_mem: a NOTICE, then the rest on disk.
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = notices.clone();
    let mut config: postgres::Config = db.cluster.connection_string(&db.name).parse().unwrap();
    config.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
    let mut small = config.connect(postgres::NoTls).unwrap();
    small.batch_execute("SET maintenance_work_mem = '1MB'; CREATE INDEX items_small ON items USING m3ret_hnsw (emb)").unwrap();
    let notices = notices.lock().unwrap().clone();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("no longer fits into maintenance_work_mem")),
        "no NOTICE: {notices:?}"
    );
    assert_eq!(check_index(&mut small, "items_small"), (3000, 0, 0));
    let queries = data().vectors(20, 13);
    let r = recall(&mut small, "items", "", "<=>", &queries, 10);
    assert!(
        r >= 0.95,
        "recall@10 of the index built partly on disk: {r}"
    );
    small.batch_execute("DROP INDEX items_small").unwrap();

    // An index on an UNLOGGED table.
    create_table(&mut c, "scratch", true);
    load(&mut c, "scratch", &vectors[..500], 1);
    c.batch_execute("CREATE INDEX scratch_idx ON scratch USING m3ret_hnsw (emb embedding_l2_ops)")
        .unwrap();
    assert_eq!(check_index(&mut c, "scratch_idx"), (500, 0, 0));
    assert_eq!(
        nearest(&mut c, "scratch", "", "<->", &vectors[7], 1, false)[0].0,
        8
    );

    // Bad input: clear ERRORs, no crash.
    let q = format!(
        "SELECT id FROM items ORDER BY emb <=> '{}' LIMIT 5",
        literal(&vectors[0][..3])
    );
    assert_eq!(
        expect_error(&mut c, &format!("SET enable_seqscan = off; {q}")),
        "expected 384 dimensions, not 3"
    );
    let zero = literal(&vec![0.0; DIMS]);
    assert_eq!(
        expect_error(
            &mut c,
            &format!(
                "SET enable_seqscan = off; SELECT id FROM items ORDER BY emb <=> '{zero}' LIMIT 5"
            )
        ),
        "cosine distance is undefined for a zero embedding"
    );
    assert_eq!(
        expect_error(
            &mut c,
            &format!("INSERT INTO items VALUES (99999, 0, '{zero}')")
        ),
        "cosine distance is undefined for a zero embedding"
    );
    assert_eq!(
        expect_error(
            &mut c,
            "CREATE INDEX ON items USING m3ret_hnsw (emb) WITH (m = 1)"
        ),
        "value 1 out of bounds for option \"m\""
    );
    assert_eq!(
        expect_error(
            &mut c,
            "CREATE INDEX ON items USING m3ret_hnsw (emb) WITH (m = 101)"
        ),
        "value 101 out of bounds for option \"m\""
    );
    assert_eq!(
        expect_error(
            &mut c,
            "CREATE INDEX ON items USING m3ret_hnsw (emb) WITH (ef_construction = 3)"
        ),
        "value 3 out of bounds for option \"ef_construction\""
    );
    assert_eq!(
        expect_error(
            &mut c,
            "CREATE INDEX ON items USING m3ret_hnsw (emb) WITH (m = 48)"
        ),
        "ef_construction (64) must be at least 2 * m (96)"
    );
    assert_eq!(
        expect_error(
            &mut c,
            "CREATE INDEX ON items USING m3ret_hnsw (emb) WITH (lists = 3)"
        ),
        "unrecognized parameter \"lists\""
    );
    c.batch_execute("CREATE TABLE wide (emb embedding(3000)); INSERT INTO wide SELECT array_fill(1.0::real, ARRAY[3000])::embedding").unwrap();
    assert_eq!(
        expect_error(
            &mut c,
            "CREATE INDEX ON wide USING m3ret_hnsw (emb) WITH (quantization = none)"
        ),
        "m3ret_hnsw indexes at most 1988 dimensions with m = 16 and quantization none, not 3000"
    );
    // One byte per dimension (the default) fits four times as many.
    c.batch_execute("CREATE INDEX wide_idx ON wide USING m3ret_hnsw (emb)")
        .unwrap();
    c.batch_execute("CREATE TABLE wider (emb embedding(9000)); INSERT INTO wider SELECT array_fill(1.0::real, ARRAY[9000])::embedding").unwrap();
    assert_eq!(
        expect_error(&mut c, "CREATE INDEX ON wider USING m3ret_hnsw (emb)"),
        "m3ret_hnsw indexes at most 7940 dimensions with m = 16 and quantization int8, not 9000"
    );
    assert_eq!(check_index(&mut c, "items_idx"), (3000, 0, 0));

    // A column without a declared dimension count, indexed while empty: the first
    // row fixes the count.
    c.batch_execute("CREATE TABLE free (id int, emb embedding); CREATE INDEX free_idx ON free USING m3ret_hnsw (emb)").unwrap();
    c.batch_execute("INSERT INTO free VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0.9,0.1,0]')")
        .unwrap();
    assert_eq!(
        expect_error(&mut c, "INSERT INTO free VALUES (4, '[1,2,3,4]')"),
        "expected 3 dimensions, not 4"
    );
    c.batch_execute("SET enable_seqscan = off").unwrap();
    let ids: Vec<i32> = c
        .query(
            "SELECT id FROM free ORDER BY emb <=> '[1,0,0]' LIMIT 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 3]);
    assert_eq!(check_index(&mut c, "free_idx"), (3, 0, 0));
    db.cluster.assert_no_backend_crashed();
}

/// A scan that pauses (a cursor) while VACUUM frees elements it may still hold and
/// inserts reuse their slots for rows nearer to its query: under its MVCC snapshot
/// it returns none of the new rows, no deleted row, no row twice, and distances in
/// order (issue 17, point 4). Scans under other snapshots are refused.
#[test]
fn a_paused_scan_survives_vacuum_and_reused_slots() {
    // A cluster of its own: another test's open snapshot must not keep VACUUM from
    // removing the deleted rows.
    let cluster = Cluster::start(&[]);
    let db = cluster.database("hnsw_paused_scan");
    let mut c = db.connect();
    create_table(&mut c, "items", false);
    let rows = data().vectors(2_000, 41);
    load(&mut c, "items", &rows, 0);
    c.batch_execute(
        "ALTER TABLE items SET (autovacuum_enabled = off);
         CREATE INDEX items_idx ON items USING m3ret_hnsw (emb);
         DELETE FROM items WHERE id % 2 = 0;",
    )
    .unwrap();
    // The query is a deleted row's vector: the element the search starts from is the
    // deleted row's, which VACUUM frees mid-scan (a later round that started there
    // again found nothing and ended the scan: 37 of 1,000 rows, once in CI).
    let q = literal(&rows[0]);
    let mut t = c.transaction().unwrap();
    t.batch_execute(&format!(
        "SET LOCAL m3ret.ef_search = 40;
         SET LOCAL enable_seqscan = off;
         DECLARE nearest CURSOR FOR SELECT id, emb <=> '{q}' FROM items ORDER BY emb <=> '{q}'"
    ))
    .unwrap();
    let fetch = |t: &mut postgres::Transaction, what: &str| -> Vec<(i32, f64)> {
        t.query(&format!("FETCH {what} FROM nearest"), &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let mut seen = fetch(&mut t, "20");

    // Meanwhile: the deleted rows' elements are freed, and new rows from the
    // query's own cluster take their slots (rows[0] is in cluster 0).
    let mut other = db.connect();
    other.batch_execute("VACUUM items").unwrap();
    let (_, _, freed) = check_index(&mut other, "items_idx");
    assert!(freed > 500, "VACUUM freed {freed} elements");
    let near: Vec<Vec<f32>> = data()
        .vectors(50_000, 42)
        .into_iter()
        .step_by(CLUSTERS)
        .collect();
    load(&mut other, "items", &near, 10_000);
    let (_, _, freed_after) = check_index(&mut other, "items_idx");
    assert!(
        freed_after < freed,
        "the inserts reused no slot ({freed} -> {freed_after})"
    );

    seen.extend(fetch(&mut t, "ALL"));
    t.commit().unwrap();
    let ids: Vec<i32> = seen.iter().map(|r| r.0).collect();
    assert!(
        ids.iter().all(|&id| id < 2_000 && id % 2 == 1),
        "the scan returned a new or deleted row: {ids:?}"
    );
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a row came twice");
    assert!(ids.len() >= 900, "{} of 1,000 rows", ids.len());
    assert!(
        seen.windows(2).all(|w| w[0].1 <= w[1].1),
        "distances out of order"
    );
    db.cluster.assert_no_backend_crashed();
}

/// A backend pins an index page through where it last found it (`recent.rs`); when
/// the page has been evicted and its buffer holds another page, that hint must fail
/// and the page be read afresh. With 128 shared buffers and an index of 500
/// pages, nearly every hint is stale by the next query: searches must still find
/// each row's own vector first and give the same answers twice, inserts must land
/// where they should, and the index must check clean.
#[test]
fn pages_evicted_between_queries_are_read_afresh() {
    let cluster = Cluster::start(&["shared_buffers = 1MB"]);
    let db = cluster.database("hnsw_evicted");
    let mut c = db.connect();
    create_table(&mut c, "items", false);
    let rows = data().vectors(2_000, 51);
    load(&mut c, "items", &rows, 0);
    // Float vectors: an index three times the size of an int8 one.
    c.batch_execute(
        "CREATE INDEX items_idx ON items USING m3ret_hnsw (emb) WITH (quantization = none)",
    )
    .unwrap();
    let pages: i64 = c
        .query_one("SELECT pg_relation_size('items_idx') / 8192", &[])
        .unwrap()
        .get(0);
    assert!(pages > 3 * 128, "the index has {pages} pages");
    let queries: Vec<i32> = (0..2_000).step_by(20).collect();
    let answers = |c: &mut Client| -> Vec<Vec<(i32, f64)>> {
        queries
            .iter()
            .map(|&q| nearest(c, "items", "", "<=>", &rows[q as usize], 10, false))
            .collect()
    };
    let first = answers(&mut c);
    // More rows through the same backend: inserts pin pages exclusively, through
    // the same (stale) hints.
    load(&mut c, "items", &data().vectors(300, 52), 2_000);
    let second = answers(&mut c);
    for (q, found) in queries.iter().zip(&first) {
        assert_eq!(found[0].0, *q, "query {q}: {found:?}");
    }
    for ((q, a), b) in queries.iter().zip(&first).zip(&second) {
        // The new rows are from other draws: they may enter a top 10, never push
        // the query's own row out of first place.
        assert_eq!(
            b[0].0, *q,
            "query {q} after the inserts: {b:?} (before: {a:?})"
        );
    }
    let (live, _, _) = check_index(&mut c, "items_idx");
    assert_eq!(live, 2_300);
    let (_, found_self) = self_recall(
        &mut c,
        "items",
        &(2_000..2_300).step_by(10).collect::<Vec<_>>(),
        40,
    );
    assert_eq!(found_self, 1.0, "an inserted row is not its own nearest");
    cluster.assert_no_backend_crashed();
}

/// Recall@10 of the index against exact search, each query a stored row's own
/// vector (`queries` are ids of `table (id, emb)`), and the share of queries whose
/// own row is among the ten.
fn self_recall(c: &mut Client, table: &str, queries: &[i32], ef_search: i32) -> (f64, f64) {
    c.batch_execute(&format!("SET m3ret.ef_search = {ef_search}"))
        .unwrap();
    let (mut hits, mut found_self) = (0, 0);
    for &q in queries {
        let v: Vec<f32> = c
            .query_one(
                &format!("SELECT emb::real[] FROM {table} WHERE id = $1"),
                &[&q],
            )
            .unwrap()
            .get(0);
        let truth = nearest(c, table, "", "<=>", &v, 10, true);
        let found = nearest(c, table, "", "<=>", &v, 10, false);
        hits += true_neighbours(&truth, &found);
        found_self += found.iter().any(|r| r.0 == q) as usize;
    }
    c.batch_execute("RESET m3ret.ef_search; RESET enable_indexscan")
        .unwrap();
    (
        hits as f64 / (10 * queries.len()) as f64,
        found_self as f64 / queries.len() as f64,
    )
}

/// 20,000 near-duplicate rows under cosine, built with the default parallel
/// workers (3 build threads) and then 2,000 more inserted one by one: once 12% of
/// the elements were unreachable and recall@10 was 0.13 at ef_search 40. pgvector
/// reaches 0.40 and 0.52 at ef_search 40 and 100 on these rows.
/// Loads `rows` into `rows (id, emb)` with ids from `first_id` on.
fn copy_rows(c: &mut Client, rows: &[Vec<f32>], first_id: usize) {
    let mut w = c.copy_in("COPY rows (id, emb) FROM STDIN").unwrap();
    for (i, v) in rows.iter().enumerate() {
        writeln!(w, "{}\t{}", first_id + i, literal(v)).unwrap();
    }
    w.finish().unwrap();
}

/// The default graph keeps 8-bit codes: its estimates are coarse next to the
/// distances between near-duplicates, and the re-ranking on the table's vectors
/// must still reach pgvector's recall.
#[test]
fn near_duplicate_rows_are_all_reachable_and_recall_at_least_pgvectors() {
    near_duplicate_rows("hnsw_near_duplicates", "");
}

#[test]
fn near_duplicate_rows_in_a_float_graph_are_all_reachable_and_recall_at_least_pgvectors() {
    near_duplicate_rows("hnsw_near_duplicates_float", "WITH (quantization = none)");
}

fn near_duplicate_rows(database: &str, with: &str) {
    let db = Cluster::shared().database(database);
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE rows (id int PRIMARY KEY, emb embedding(64))")
        .unwrap();
    let rows = m3ret_core::vector::synthetic::near_duplicates(22_000, 64, 1);
    let copy = |c: &mut Client, from: usize, to: usize| copy_rows(c, &rows[from..to], from);
    copy(&mut c, 0, 20_000);
    c.batch_execute(&format!("SET max_parallel_maintenance_workers = 2; CREATE INDEX rows_idx ON rows USING m3ret_hnsw (emb) {with}")).unwrap();
    assert_eq!(
        check_index(&mut c, "rows_idx"),
        (20_000, 0, 0),
        "after the parallel build"
    );
    let queries: Vec<i32> = (0..20_000).step_by(200).collect();
    let (r40, _) = self_recall(&mut c, "rows", &queries, 40);
    let (r100, _) = self_recall(&mut c, "rows", &queries, 100);
    let (r400, self400) = self_recall(&mut c, "rows", &queries, 400);
    assert!(
        r40 >= 0.40 && r100 >= 0.52 && r40 < r100 && r100 < r400,
        "{with}: recall@10 at ef_search 40, 100, 400: {r40}, {r100}, {r400}"
    );
    assert!(
        self400 >= 0.9,
        "a row finds itself at ef_search 400 in {self400} of the queries"
    );
    copy(&mut c, 20_000, 22_000);
    // Single inserts once cut off tight groups of near-duplicates here (3 of 22,000
    // in about one run of ten), judging from the neighbourhood what a dropped link
    // led to; now a list gives up only a link whose target the new element reaches.
    assert_eq!(
        check_index(&mut c, "rows_idx"),
        (22_000, 0, 0),
        "after 2,000 inserts"
    );
    // Nine rows of ten deleted: the survivors' in-links mostly came from dead
    // elements, and before VACUUM relinked what its walk cannot reach, groups of
    // survivors linking only to each other were left unreachable (6 of 1,997 in a
    // trial on rows like these).
    delete_nine_in_ten_and_vacuum(&mut c, 22_000);
    let survivors: Vec<i32> = c
        .query("SELECT id FROM rows ORDER BY id LIMIT 100", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (_, found_self) = self_recall(&mut c, "rows", &survivors, 400);
    assert!(
        found_self >= 0.9,
        "a surviving row finds itself at ef_search 400 in {found_self} of the queries"
    );
    db.cluster.assert_no_backend_crashed();
}

/// Deletes nine rows in ten of `rows` (by a hash of the id) and VACUUMs: `rows_idx`
/// must then hold the survivors of the `before` rows, every one reachable.
fn delete_nine_in_ten_and_vacuum(c: &mut Client, before: i64) {
    let deleted = c
        .execute("DELETE FROM rows WHERE hashint4(id) % 10 <> 0", &[])
        .unwrap() as i64;
    c.batch_execute("VACUUM rows").unwrap();
    assert_eq!(
        check_index(c, "rows_idx"),
        (before - deleted, 0, deleted),
        "after deleting {deleted} rows and VACUUM"
    );
}

/// The near-duplicate rows under inner product, where their norms (4 to 40) rule:
/// the lists of the largest vectors fill with links that are their targets' only
/// way in, and a build once left 1,042 of 5,000 elements unreachable. None may be,
/// after the parallel build (both storages), 1,000 single inserts, or deleting nine
/// rows in ten and VACUUM.
#[test]
fn inner_product_over_rows_of_many_norms_reaches_every_element() {
    let db = Cluster::shared().database("hnsw_inner_product");
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE rows (id int PRIMARY KEY, emb embedding(64))")
        .unwrap();
    let rows = m3ret_core::vector::synthetic::near_duplicates(6_000, 64, 3);
    let copy = |c: &mut Client, from: usize, to: usize| copy_rows(c, &rows[from..to], from);
    copy(&mut c, 0, 5_000);
    for with in ["WITH (quantization = none)", ""] {
        c.batch_execute(&format!("SET max_parallel_maintenance_workers = 2; CREATE INDEX rows_idx ON rows USING m3ret_hnsw (emb embedding_ip_ops) {with}")).unwrap();
        assert_eq!(check_index(&mut c, "rows_idx"), (5_000, 0, 0), "{with}");
        if !with.is_empty() {
            c.batch_execute("DROP INDEX rows_idx").unwrap();
        }
    }
    copy(&mut c, 5_000, 6_000);
    assert_eq!(
        check_index(&mut c, "rows_idx"),
        (6_000, 0, 0),
        "after 1,000 inserts"
    );
    delete_nine_in_ten_and_vacuum(&mut c, 6_000);
    db.cluster.assert_no_backend_crashed();
}

/// The 2D studies of the development corpus embedded with the default model (the
/// X-ray embeddings of a weak model sit in a narrow cone), indexed with the
/// parallel build: every element reachable, and recall grows with ef_search, to
/// 0.999 with every study finding itself where ef_construction is 128. Once 85-126 elements of the corpus were
/// unreachable and recall stayed at 0.98 whatever ef_search.
#[test]
fn real_embeddings_of_the_corpus_are_all_reachable_and_found() {
    let db = Cluster::shared().database("hnsw_corpus");
    let mut c = db.connect();
    let model = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/m3ret-default.safetensors"),
    )
    .unwrap();
    c.execute("SELECT m3ret_model_import('m3ret-default', $1)", &[&model])
        .unwrap();
    c.batch_execute(
        "CREATE TABLE studies (id int PRIMARY KEY, modality text, data bytea, emb embedding)",
    )
    .unwrap();
    let n = m3ret_e2e::copy_corpus_2d(&mut c, "studies");
    assert!(n > 7_000, "{n} 2D studies in the corpus");
    m3ret_e2e::embed_by_modality(&mut c, "studies");
    // Both storages (the float graph, the default 8-bit one re-ranked on the
    // table's vectors), with the default build and with ef_construction 128.
    // One build is one draw of the random levels and of the threads' order: built
    // in memory with 30 level seeds, the default parameters missed 34 of 58,800
    // true neighbours of held-out studies (in 14 builds, at ef_search 40 and 320
    // alike: the graph, not the search) and ef_construction 128 none
    // (index/examples/recall_over_seeds.rs). So the default build gets floors a
    // few misses below its usual results (a CI run once saw 2 of 196 studies miss
    // their own row at ef_search 40), and the issue's 0.999 is asserted of the
    // build that removes those misses.
    let queries: Vec<i32> = (0..n).step_by(40).collect();
    for storage in ["quantization = none", "quantization = int8"] {
        for (options, floors) in [
            (
                storage.to_string(),
                [(0.98, 0.98), (0.99, 0.985), (0.995, 0.99)],
            ),
            (
                format!("{storage}, ef_construction = 128"),
                [(0.98, 0.98), (0.99, 0.985), (0.999, 1.0)],
            ),
        ] {
            c.batch_execute(&format!("SET max_parallel_maintenance_workers = 2; CREATE INDEX studies_idx ON studies USING m3ret_hnsw (emb) WITH ({options})")).unwrap();
            assert_eq!(check_index(&mut c, "studies_idx"), (n as i64, 0, 0));
            let at: Vec<(f64, f64)> = [40, 100, 400]
                .iter()
                .map(|&ef| self_recall(&mut c, "studies", &queries, ef))
                .collect();
            eprintln!("{options}: (recall@10, own row found) at ef_search 40, 100, 400: {at:?}");
            for (i, ef) in [40, 100, 400].iter().enumerate() {
                assert!(
                    at[i].0 >= floors[i].0 && at[i].1 >= floors[i].1,
                    "{options}: at ef_search {ef}: {:?}",
                    at[i]
                );
            }
            assert!(
                at[0].0 <= at[1].0 + 0.001 && at[1].0 <= at[2].0 + 0.001,
                "{options}: recall does not grow with ef_search: {at:?}"
            );
            c.batch_execute("DROP INDEX studies_idx").unwrap();
        }
    }
    db.cluster.assert_no_backend_crashed();
}

/// `quantization = int8` keeps one byte per dimension and re-ranks each search's
/// candidates on the table's vectors: for every operator class, rows come back in
/// the exact order of the SQL operator, with the full graph's recall, from an index
/// a third the size; deleted rows never come back, and inserts, VACUUM and the
/// check (which compares every element's codes with its row's vector) keep holding.
#[test]
fn an_int8_graph_keeps_recall_and_exact_order_at_a_third_of_the_size() {
    let db = Cluster::shared().database("hnsw_int8");
    let mut c = db.connect();
    create_table(&mut c, "items", false);
    load(&mut c, "items", &data().vectors(20_000, 11), 1);
    let queries = data().vectors(40, 12);
    c.batch_execute(
        "CREATE INDEX full_idx ON items USING m3ret_hnsw (emb) WITH (quantization = none)",
    )
    .unwrap();
    let full_size: i64 = c
        .query_one("SELECT pg_relation_size('full_idx')", &[])
        .unwrap()
        .get(0);
    c.batch_execute("DROP INDEX full_idx").unwrap();
    // Cosine last: its index stays for what follows.
    for (opclass, op) in [
        ("embedding_l2_ops", "<->"),
        ("embedding_ip_ops", "<#>"),
        ("embedding_cosine_ops", "<=>"),
    ] {
        c.batch_execute(&format!(
            "CREATE INDEX items_idx ON items USING m3ret_hnsw (emb {opclass}) WITH (quantization = int8); ANALYZE items"
        ))
        .unwrap();
        let plan = explain(
            &mut c,
            &format!(
                "SELECT id FROM items ORDER BY emb {op} '{}' LIMIT 10",
                literal(&queries[0])
            ),
        );
        assert!(
            plan.contains("Index Scan using items_idx"),
            "{opclass}: the planner did not use the index:\n{plan}"
        );
        for q in &queries {
            let found = nearest(&mut c, "items", "", op, q, 10, false);
            assert_eq!(found.len(), 10, "{opclass}");
            assert!(
                found.windows(2).all(|w| w[0].1 <= w[1].1),
                "{opclass}: rows out of order: {found:?}"
            );
        }
        let r = recall(&mut c, "items", "", op, &queries, 10);
        assert!(r >= 0.95, "{opclass}: recall@10 {r}");
        assert_eq!(
            check_index(&mut c, "items_idx"),
            (20_000, 0, 0),
            "{opclass}"
        );
        if op != "<=>" {
            c.batch_execute("DROP INDEX items_idx").unwrap();
        }
    }
    let size: i64 = c
        .query_one("SELECT pg_relation_size('items_idx')", &[])
        .unwrap()
        .get(0);
    assert!(
        size * 3 <= full_size,
        "the int8 index takes {size} bytes, the full one {full_size}"
    );
    // Deleted rows: invisible before VACUUM (the scan fetches each candidate's row
    // under its snapshot), freed after it; inserts then reuse the space.
    let deleted = c
        .execute("DELETE FROM items WHERE hashint4(id) & 1 = 0", &[])
        .unwrap() as i64;
    for q in &queries[..10] {
        let found = nearest(&mut c, "items", "", "<=>", q, 10, false);
        assert_eq!(found.len(), 10);
        let ids: Vec<i32> = found.iter().map(|r| r.0).collect();
        let gone: i64 = c
            .query_one(
                "SELECT count(*) FROM unnest($1::int[]) AS id WHERE hashint4(id) & 1 = 0",
                &[&ids],
            )
            .unwrap()
            .get(0);
        assert_eq!(gone, 0, "a deleted row came back: {ids:?}");
    }
    c.batch_execute("VACUUM items").unwrap();
    assert_eq!(
        check_index(&mut c, "items_idx"),
        (20_000 - deleted, 0, deleted)
    );
    load(&mut c, "items", &data().vectors(2_000, 13), 100_001);
    let (live, dead, _) = check_index(&mut c, "items_idx");
    assert_eq!((live, dead), (22_000 - deleted, 0), "after inserts");
    let after: i64 = c
        .query_one("SELECT pg_relation_size('items_idx')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        after, size,
        "2,000 inserts into the space of {deleted} freed rows"
    );
    let r = recall(&mut c, "items", "", "<=>", &queries, 10);
    assert!(r >= 0.95, "recall@10 after VACUUM and inserts: {r}");
    // A filtered query still returns LIMIT rows, in order (later rounds re-rank too).
    let found = nearest(
        &mut c,
        "items",
        "WHERE category = 3",
        "<=>",
        &queries[1],
        10,
        false,
    );
    assert_eq!(found.len(), 10);
    assert!(found.iter().all(|r| category(r.0) == 3));
    assert!(found.windows(2).all(|w| w[0].1 <= w[1].1), "{found:?}");
    // What the option accepts, and where it cannot re-rank.
    let e = expect_error(
        &mut c,
        "CREATE INDEX bad_idx ON items USING m3ret_hnsw (emb) WITH (quantization = int4)",
    );
    assert!(
        e.contains(r#"invalid value for enum option "quantization": int4"#),
        "{e}"
    );
    let e = expect_error(
        &mut c,
        "CREATE INDEX bad_idx ON items USING m3ret_hnsw ((emb::text::embedding)) WITH (quantization = int8)",
    );
    assert!(e.contains("index a column, not an expression"), "{e}");
    // Without the option an expression index keeps float vectors, and works.
    c.batch_execute("DROP INDEX items_idx; CREATE INDEX expr_idx ON items USING m3ret_hnsw ((emb::text::embedding))").unwrap();
    assert_eq!(check_index(&mut c, "expr_idx").0, 22_000 - deleted);
    let survivor: i32 = c
        .query_one("SELECT min(id) FROM items", &[])
        .unwrap()
        .get(0);
    c.batch_execute("SET enable_seqscan = off; RESET enable_indexscan")
        .unwrap();
    let found: Vec<i32> = c
        .query(
            "SELECT id FROM items ORDER BY emb::text::embedding <=> (SELECT emb FROM items WHERE id = $1) LIMIT 3",
            &[&survivor],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(found[0], survivor, "{found:?}");
    db.cluster.assert_no_backend_crashed();
}
