//! m3ret on a real Citus cluster (a coordinator and two workers on localhost, Citus
//! 13.2 built by scripts/install-citus.sh): the extension and models on every node,
//! embedding a distributed table on its workers, the distributed top 10 with the
//! query image embedded once on the coordinator, the warehouse join, shard moves,
//! and a worker that goes down. docs/citus.md is the guide these tests follow.

use m3ret_core::vector::synthetic::Clustered;
use m3ret_e2e::citus::CitusCluster;
use m3ret_e2e::models::{reference_embedding, small_model};
use m3ret_e2e::wire::{literal, Vector};
use m3ret_e2e::{
    embed_calls_pending, error_message, exact_top10_cosine, fixture, max_abs_diff,
    FIXTURES_BY_MODALITY,
};
use postgres::Client;
use std::io::Write;

const WORKERS: usize = 2;
const DIMS: usize = 32;
/// Rows of the warehouse tests: 4 shards of 750 rows each.
const ROWS: usize = 3_000;
/// Rows of the top-10 test: shards of 5,000 rows, where the planner picks the
/// index by itself (below about 1,300 rows a shard is read and sorted, which its
/// cost estimate rightly finds cheaper).
const MORE_ROWS: usize = 20_000;

/// docs/citus.md, "Models on every node": one statement on the coordinator imports
/// the file on every node (coordinator included) and returns what each said.
const IMPORT_ON_ALL_NODES: &str =
    "SELECT n.nodeport, r.success, r.result FROM run_command_on_all_nodes(
        format('SELECT m3ret_model_import(%L, %L::bytea)', $1::text, $2::bytea)) r
        JOIN pg_dist_node n USING (nodeid) ORDER BY n.nodeport";

/// Imports `model` as `name` on every node; returns each node's `name@version`.
fn import_on_all_nodes(c: &mut Client, name: &str, model: &[u8]) -> Vec<String> {
    c.query(IMPORT_ON_ALL_NODES, &[&name, &model])
        .unwrap()
        .iter()
        .map(|r| {
            let (port, ok, result): (i32, bool, String) = (r.get(0), r.get(1), r.get(2));
            assert!(ok, "import on node {port} failed: {result}");
            result
        })
        .collect()
}

/// Runs each statement on its own: Citus refuses a CREATE INDEX that shares its query
/// string with another statement ("cannot insert multiple commands into a prepared
/// statement", from the workers).
fn run_each(c: &mut Client, statements: &[&str]) {
    for sql in statements {
        c.batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", error_message(&e)));
    }
}

/// `SET LOCAL` reaches the workers' connections only with this (docs/citus.md, "Settings").
fn begin_with<'c>(c: &'c mut Client, settings: &str) -> postgres::Transaction<'c> {
    let mut t = c.transaction().unwrap();
    t.batch_execute(&format!(
        "SET LOCAL citus.propagate_set_commands = 'local'; {settings}"
    ))
    .unwrap();
    t
}

#[test]
fn the_extension_and_models_reach_every_node_and_workers_embed_their_shards() {
    let cluster = CitusCluster::start(WORKERS, "warehouse");
    let mut c = cluster.connect();
    let version: String = c
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'm3ret'",
            &[],
        )
        .unwrap()
        .get(0);
    for i in 0..WORKERS {
        let on_worker: String = cluster
            .connect_worker(i)
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'm3ret'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(on_worker, version, "worker {i}");
    }

    run_each(
        &mut c,
        &[
            "CREATE TABLE studies (patient_id int, study_id int, modality text, data bytea, emb embedding,
                                   PRIMARY KEY (patient_id, study_id))",
            "SELECT create_distributed_table('studies', 'patient_id')",
        ],
    );
    for (id, (file, modality)) in FIXTURES_BY_MODALITY.iter().enumerate() {
        c.execute(
            "INSERT INTO studies (patient_id, study_id, modality, data) VALUES ($1, $1, $2, $3)",
            &[&(id as i32), modality, &fixture(file)],
        )
        .unwrap();
    }

    // Before the model is on the workers, embedding there fails: m3ret's ERROR names
    // the model, and Citus's CONTEXT the node it came from.
    let model = small_model(7);
    assert_eq!(
        c.query_one("SELECT m3ret_model_import('test', $1)", &[&model])
            .unwrap()
            .get::<_, String>(0),
        "test@1"
    );
    let err = c
        .execute(
            "UPDATE studies SET emb = m3ret_embed_pinned(data, modality, 'test@1')",
            &[],
        )
        .unwrap_err();
    let message = error_message(&err);
    let context = err.as_db_error().and_then(|d| d.where_()).unwrap_or("");
    assert!(message.contains("unknown model \"test@1\""), "{message}");
    let worker_ports: Vec<String> = cluster
        .workers
        .iter()
        .map(|w| w.port().to_string())
        .collect();
    assert!(
        worker_ports
            .iter()
            .any(|p| context.contains(&format!("127.0.0.1:{p}"))),
        "the error does not name the node: {message} (context: {context})"
    );

    // The documented step imports it on every node, with the same version everywhere.
    let imported = import_on_all_nodes(&mut c, "test", &model);
    assert_eq!(imported, vec!["test@1"; WORKERS + 1]);

    // m3ret_embed is STABLE: Citus refuses it with column references in an UPDATE.
    let refused = c
        .execute("UPDATE studies SET emb = m3ret_embed(data, modality)", &[])
        .unwrap_err();
    assert!(
        error_message(&refused).contains("STABLE functions"),
        "{}",
        error_message(&refused)
    );
    // The pinned form is IMMUTABLE: each worker embeds the rows of its own shards.
    let updated = c
        .execute(
            "UPDATE studies SET emb = m3ret_embed_pinned(data, modality, 'test@1')",
            &[],
        )
        .unwrap();
    assert_eq!(updated as usize, FIXTURES_BY_MODALITY.len());
    for (id, (file, modality)) in FIXTURES_BY_MODALITY.iter().enumerate() {
        let stored: Vector = c
            .query_one(
                "SELECT emb FROM studies WHERE patient_id = $1",
                &[&(id as i32)],
            )
            .unwrap()
            .get(0);
        let expected = reference_embedding(&model, &[&fixture(file)], modality);
        assert!(
            max_abs_diff(&stored.0, &expected) < 1e-5,
            "{file}: the worker's embedding differs from m3ret-core's"
        );
    }
    // Both workers did part of it: the embedded rows lie on shards of each.
    let nodes: i64 = c
        .query_one(
            "WITH r AS MATERIALIZED (SELECT patient_id FROM studies WHERE emb IS NOT NULL)
             SELECT count(DISTINCT cs.nodeport) FROM r
             JOIN citus_shards cs ON cs.shardid = get_shard_id_for_distribution_column('studies', r.patient_id)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(nodes, WORKERS as i64);

    // The weights stay readable by admins only, on every node.
    c.batch_execute("CREATE ROLE clinician LOGIN").unwrap();
    for node in cluster.nodes() {
        let mut as_clinician = postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user=clinician dbname=warehouse",
                node.port()
            ),
            postgres::NoTls,
        )
        .unwrap();
        let denied = as_clinician
            .query("SELECT weights FROM m3ret_models", &[])
            .unwrap_err();
        assert!(
            error_message(&denied).contains("permission denied"),
            "port {}: {}",
            node.port(),
            error_message(&denied)
        );
        // ... while the clinician may embed with them.
        as_clinician
            .query_one(
                "SELECT m3ret_embed($1::bytea, 'xray', 'test')",
                &[&fixture(FIXTURES_BY_MODALITY[0].0)],
            )
            .unwrap();
    }
    cluster.assert_no_backend_crashed();
}

/// `items (patient_id, id, ward, emb)` distributed by patient, an `m3ret_hnsw` index
/// on every shard, `encounters` co-located on the patient key, `wards` a reference
/// table. Returns the vectors (row `id` holds `rows[id]`).
fn warehouse(c: &mut Client, n: usize) -> Vec<Vec<f32>> {
    run_each(
        c,
        &[
            &format!("CREATE TABLE items (patient_id int, id int, emb embedding({DIMS}), PRIMARY KEY (patient_id, id))"),
            "SELECT create_distributed_table('items', 'patient_id')",
            "CREATE TABLE encounters (patient_id int, id int, ward int, PRIMARY KEY (patient_id, id))",
            "SELECT create_distributed_table('encounters', 'patient_id', colocate_with => 'items')",
            "CREATE TABLE wards (ward int PRIMARY KEY, building text)",
            "SELECT create_reference_table('wards')",
            "INSERT INTO wards VALUES (0, 'north'), (1, 'north'), (2, 'south'), (3, 'east')",
        ],
    );
    let rows = Clustered::new(DIMS, 10).vectors(n, 41);
    let mut w = c
        .copy_in("COPY items (patient_id, id, emb) FROM STDIN")
        .unwrap();
    for (i, v) in rows.iter().enumerate() {
        writeln!(w, "{}\t{i}\t{}", i / 3, literal(v)).unwrap();
    }
    w.finish().unwrap();
    run_each(
        c,
        &[
            "INSERT INTO encounters SELECT patient_id, id, id % 4 FROM items",
            "CREATE INDEX items_emb_idx ON items USING m3ret_hnsw (emb embedding_cosine_ops)",
            "ANALYZE items",
            "ANALYZE encounters",
        ],
    );
    rows
}

const TOP_10: &str = "SELECT id FROM items ORDER BY emb <=> $1::text::embedding LIMIT 10";

/// The ids `sql` returns with `q` as `$1`, from the shards' indexes (a sequential
/// scan is ruled out) searched wide enough to be exact.
fn top_10(c: &mut Client, sql: &str, q: &[f32]) -> Vec<i32> {
    let mut t = begin_with(
        c,
        "SET LOCAL m3ret.ef_search = 400; SET LOCAL enable_seqscan = off",
    );
    let ids = t
        .query(sql, &[&literal(q)])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    t.commit().unwrap();
    ids
}

/// Every `m3ret_hnsw` index on every worker's shards passes `m3ret_hnsw_check`;
/// returns how many there are and the live elements in all.
fn check_shard_indexes(cluster: &CitusCluster) -> (usize, i64) {
    let (mut indexes, mut live) = (0, 0);
    for i in 0..WORKERS {
        let mut w = cluster.connect_worker(i);
        w.batch_execute("SET citus.override_table_visibility = off")
            .unwrap();
        let names: Vec<String> = w
            .query(
                "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_am a ON a.oid = c.relam
                 WHERE a.amname = 'm3ret_hnsw' AND c.relname ~ '^items_emb_idx_[0-9]+$'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for name in names {
            live += m3ret_e2e::hnsw_check(&mut w, &name).live;
            indexes += 1;
        }
    }
    (indexes, live)
}

#[test]
fn the_distributed_top_10_is_exact_runs_on_shard_indexes_and_joins_the_warehouse() {
    let cluster = CitusCluster::start(WORKERS, "warehouse");
    let mut c = cluster.connect();
    let rows = warehouse(&mut c, MORE_ROWS);
    let shard_count: i64 = c
        .query_one(
            "SELECT count(*) FROM citus_shards WHERE table_name = 'items'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        check_shard_indexes(&cluster),
        (shard_count as usize, MORE_ROWS as i64)
    );

    for q in rows.iter().step_by(1000) {
        assert_eq!(top_10(&mut c, TOP_10, q), exact_top10_cosine(&rows, q));
    }

    // Every task sorts by distance on its shard's index, with the LIMIT: the
    // planner's own choice, at the default settings.
    let mut t = begin_with(&mut c, "SET LOCAL citus.explain_all_tasks = on");
    let plan: Vec<String> = t
        .query(
            &format!(
                "EXPLAIN (VERBOSE, COSTS OFF) {}",
                TOP_10.replace("$1::text", &format!("'{}'", literal(&rows[0])))
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    t.commit().unwrap();
    let text = plan.join("\n");
    let index_scans = plan
        .iter()
        .filter(|l| l.contains("Index Scan using items_emb_idx_"))
        .count();
    assert_eq!(index_scans as i64, shard_count, "{text}");
    let task_queries: Vec<&String> = plan.iter().filter(|l| l.contains("Query:")).collect();
    assert!(
        !task_queries.is_empty()
            && task_queries
                .iter()
                .all(|l| l.contains("ORDER BY") && l.contains("LIMIT") && l.contains("<=>")),
        "a task is not sent ORDER BY ... LIMIT: {text}"
    );

    // The warehouse join: the nearest of the studies in the north building's wards,
    // through the co-located encounters and the reference table.
    let joined = "SELECT i.id FROM items i JOIN encounters e USING (patient_id, id)
                  JOIN wards w ON w.ward = e.ward
                  WHERE w.building = 'north'
                  ORDER BY i.emb <=> $1::text::embedding LIMIT 10";
    let north: Vec<Vec<f32>> = rows
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if i % 4 < 2 {
                v.clone()
            } else {
                vec![0.0; DIMS]
            }
        })
        .collect();
    for q in rows.iter().step_by(2000) {
        let expected: Vec<i32> = exact_top10_cosine(&north, q);
        let got = top_10(&mut c, joined, q);
        assert!(got.iter().all(|id| id % 4 < 2), "{got:?}");
        assert_eq!(got, expected);
    }
    cluster.assert_no_backend_crashed();
}

#[test]
fn the_query_image_is_embedded_once_on_the_coordinator() {
    let cluster = CitusCluster::start(WORKERS, "warehouse");
    let mut c = cluster.connect();
    // The model on the coordinator only: a call on a worker would fail the query.
    c.query_one("SELECT m3ret_model_import('test', $1)", &[&small_model(3)])
        .unwrap();
    run_each(
        &mut c,
        &[
            "CREATE TABLE studies (patient_id int, study_id int, modality text, emb embedding(192),
                                   PRIMARY KEY (patient_id, study_id))",
            "SELECT create_distributed_table('studies', 'patient_id')",
            "CREATE INDEX ON studies USING m3ret_hnsw (emb)",
        ],
    );
    // INSERT ... VALUES: Citus evaluates the STABLE call on the coordinator and
    // sends the worker the vector.
    for (id, (file, modality)) in FIXTURES_BY_MODALITY.iter().enumerate() {
        c.execute(
            "INSERT INTO studies VALUES ($1, $1, $2, m3ret_embed($3::bytea, $2))",
            &[&(id as i32), modality, &fixture(file)],
        )
        .unwrap();
    }
    let xray = fixture(FIXTURES_BY_MODALITY[0].0);
    let query = "SELECT study_id FROM studies
                 ORDER BY emb <=> (SELECT m3ret_embed($1::bytea, 'xray')) LIMIT 3";
    let mut t = c.transaction().unwrap();
    t.batch_execute("SET LOCAL track_functions = 'all'")
        .unwrap();
    let before = embed_calls_pending(&mut t);
    let ids: Vec<i32> = t
        .query(query, &[&xray])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let calls = embed_calls_pending(&mut t) - before;
    t.commit().unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], 0, "the X-ray is not its own nearest: {ids:?}");
    assert_eq!(calls, 1, "the query image was embedded {calls} times");
    cluster.assert_no_backend_crashed();
}

#[test]
fn moved_shards_keep_valid_indexes_and_the_same_answers() {
    let cluster = CitusCluster::start(WORKERS, "warehouse");
    let mut c = cluster.connect();
    let rows = warehouse(&mut c, ROWS);
    let queries: Vec<&Vec<f32>> = rows.iter().step_by(200).collect();
    let before: Vec<Vec<i32>> = queries.iter().map(|q| top_10(&mut c, TOP_10, q)).collect();

    // Move one shard of items (and its co-located encounters shard) to the other worker.
    let first = c
        .query_one(
            "SELECT shardid, nodeport FROM citus_shards WHERE table_name = 'items'::regclass ORDER BY shardid LIMIT 1",
            &[],
        )
        .unwrap();
    let (shard, port): (i64, i32) = (first.get(0), first.get(1));
    let target = cluster
        .workers
        .iter()
        .map(|w| i32::from(w.port()))
        .find(|&p| p != port)
        .unwrap();
    c.execute(
        "SELECT citus_move_shard_placement($1, '127.0.0.1', $2, '127.0.0.1', $3)",
        &[&shard, &port, &target],
    )
    .unwrap();
    let now_on: i32 = c
        .query_one(
            "SELECT nodeport FROM citus_shards WHERE shardid = $1",
            &[&shard],
        )
        .unwrap()
        .get(0);
    assert_eq!(now_on, target);
    // The old placement is dropped later, by Citus's maintenance daemon: drop it now.
    c.batch_execute("CALL citus_cleanup_orphaned_resources()")
        .unwrap();
    let after_move: Vec<Vec<i32>> = queries.iter().map(|q| top_10(&mut c, TOP_10, q)).collect();
    assert_eq!(after_move, before);
    let shard_count = c
        .query_one(
            "SELECT count(*) FROM citus_shards WHERE table_name = 'items'::regclass",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0) as usize;
    assert_eq!(check_shard_indexes(&cluster), (shard_count, ROWS as i64));

    // The rebalancer puts a shard back; the indexes and the answers hold again.
    c.batch_execute("SELECT rebalance_table_shards('items')")
        .unwrap();
    c.batch_execute("CALL citus_cleanup_orphaned_resources()")
        .unwrap();
    let per_worker: Vec<i64> = c
        .query(
            "SELECT count(*) FROM citus_shards WHERE table_name = 'items'::regclass GROUP BY nodeport",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(per_worker, vec![shard_count as i64 / 2; WORKERS]);
    let after_rebalance: Vec<Vec<i32>> =
        queries.iter().map(|q| top_10(&mut c, TOP_10, q)).collect();
    assert_eq!(after_rebalance, before);
    assert_eq!(check_shard_indexes(&cluster), (shard_count, ROWS as i64));
    // Inserts after the moves reach the moved index.
    c.execute(
        "INSERT INTO items VALUES (999999, $1, $2::text::embedding)",
        &[&(ROWS as i32), &literal(&rows[0])],
    )
    .unwrap();
    let nearest = top_10(&mut c, TOP_10, &rows[0]);
    assert!(nearest[..2].contains(&(ROWS as i32)), "{nearest:?}");
    cluster.assert_no_backend_crashed();
}

#[test]
fn a_worker_down_is_a_clear_error_and_queries_work_again_once_it_is_back() {
    let cluster = CitusCluster::start(WORKERS, "warehouse");
    let mut c = cluster.connect();
    let rows = warehouse(&mut c, ROWS);
    let expected = top_10(&mut c, TOP_10, &rows[7]);

    cluster.workers[1].stop();
    let mut t = begin_with(&mut c, "SET LOCAL m3ret.ef_search = 400");
    let err = t.query(TOP_10, &[&literal(&rows[7])]).unwrap_err();
    drop(t);
    let message = error_message(&err);
    let port = cluster.workers[1].port().to_string();
    assert!(
        message.contains("connection") && message.contains(&port),
        "the error does not say which worker is unreachable: {message}"
    );

    cluster.workers[1].start_again();
    // Citus reconnects on the next statement: no wait is needed beyond the restart.
    assert_eq!(top_10(&mut c, TOP_10, &rows[7]), expected);
    cluster.assert_no_backend_crashed();
}
