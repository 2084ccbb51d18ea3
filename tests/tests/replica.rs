//! A hot standby of a cluster with m3ret (pg_basebackup -R, streaming): the index
//! answers as the primary's, m3ret_hnsw_check passes there, the registry is the
//! same and m3ret_embed works (nothing on its path writes), writes are refused,
//! and after promotion the former standby takes inserts.

use m3ret_core::vector::synthetic::Clustered;
use m3ret_e2e::models::small_model;
use m3ret_e2e::wire::{literal, Vector};
use m3ret_e2e::{error_message, fixture, hnsw_check, Cluster, IndexCheck};
use postgres::Client;
use std::io::Write;

const DIMS: usize = 32;

fn copy_rows(c: &mut Client, vectors: &[Vec<f32>], ids: std::ops::Range<usize>) {
    let mut w = c.copy_in("COPY items (id, emb) FROM STDIN").unwrap();
    for i in ids {
        writeln!(w, "{i}\t{}", literal(&vectors[i])).unwrap();
    }
    w.finish().unwrap();
}

/// The ten nearest rows through the index.
fn top10(c: &mut Client, q: &[f32]) -> Vec<i32> {
    c.batch_execute("SET enable_seqscan = off").unwrap();
    c.query(
        "SELECT id FROM items ORDER BY emb <=> $1::text::embedding LIMIT 10",
        &[&literal(q)],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// m3ret_hnsw_check of the test index, failing on any problem.
fn check(c: &mut Client) -> IndexCheck {
    hnsw_check(c, "items_idx")
}

fn count(c: &mut Client) -> i64 {
    c.query_one("SELECT count(*) FROM items", &[])
        .unwrap()
        .get(0)
}

fn embed(c: &mut Client) -> Vec<f32> {
    c.query_one(
        "SELECT m3ret_embed($1::bytea, 'xray')",
        &[&fixture("pmnist_train_0000.png")],
    )
    .unwrap()
    .get::<_, Vector>(0)
    .0
}

#[test]
fn a_hot_standby_serves_retrieval_and_takes_over_when_promoted() {
    let primary = Cluster::start(&[]);
    let db = primary.database("replica");
    let mut p = db.connect();
    p.execute("SELECT m3ret_model_import('test', $1)", &[&small_model(1)])
        .unwrap();
    p.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, emb embedding({DIMS}));
         CREATE INDEX items_idx ON items USING m3ret_hnsw (emb)"
    ))
    .unwrap();
    let vectors = Clustered::new(DIMS, 20).vectors(3_200, 5);
    copy_rows(&mut p, &vectors, 0..2_000);

    let standby = Cluster::standby_of(&primary);
    // After the base backup, streamed: inserts, deletes and a VACUUM that frees elements.
    copy_rows(&mut p, &vectors, 2_000..3_000);
    p.batch_execute("DELETE FROM items WHERE id % 7 = 0")
        .unwrap();
    p.batch_execute("VACUUM items").unwrap();
    standby.wait_for_replay_of(&primary);
    let mut s = standby.existing_database("replica").connect();

    assert_eq!(count(&mut s), count(&mut p));
    for q in vectors.iter().take(3_000).step_by(100) {
        assert_eq!(
            top10(&mut s, q),
            top10(&mut p, q),
            "the standby's top 10 differs"
        );
    }
    let on_primary = check(&mut p);
    assert_eq!(check(&mut s), on_primary);
    assert_eq!(on_primary.live, count(&mut p));

    // The registry came through WAL, and the standby embeds as the primary does.
    let models = |c: &mut Client| -> Vec<(String, bool)> {
        c.query(
            "SELECT model, is_default FROM m3ret_model_list ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    assert_eq!(models(&mut s), models(&mut p));
    assert_eq!(embed(&mut s), embed(&mut p));

    let err = s
        .execute(
            "INSERT INTO items VALUES (-1, $1::text::embedding)",
            &[&literal(&vectors[0])],
        )
        .unwrap_err();
    assert_eq!(
        error_message(&err),
        "cannot execute INSERT in a read-only transaction"
    );

    // Promoted, the former standby takes inserts into the replicated index.
    drop(p);
    primary.stop();
    standby.promote();
    let mut s = standby.existing_database("replica").connect();
    copy_rows(&mut s, &vectors, 3_000..3_200);
    assert_eq!(check(&mut s).live, count(&mut s));
    for id in (3_000..3_200).step_by(20) {
        assert_eq!(
            top10(&mut s, &vectors[id])[0],
            id as i32,
            "row {id} is not its own nearest"
        );
    }
    assert_eq!(embed(&mut s).len(), 192);
    standby.assert_no_backend_crashed();
    primary.assert_no_backend_crashed();
}

/// Polls `query` (one boolean) on `c` until it is true. No deadline, as
/// `Cluster::wait_for_replay_of`: a server that stops answering fails the query.
fn wait_until_true(c: &mut Client, query: &str) {
    while !c.query_one(query, &[]).unwrap().get::<_, bool>(0) {
        std::thread::yield_now();
    }
}

#[test]
fn a_primary_crash_under_synchronous_replication_loses_no_committed_row() {
    let primary = Cluster::start(&[]);
    let db = primary.database("failover");
    let mut p = db.connect();
    p.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, emb embedding({DIMS}));
         CREATE INDEX items_idx ON items USING m3ret_hnsw (emb)"
    ))
    .unwrap();
    let vectors = Clustered::new(DIMS, 20).vectors(20_000, 9);
    copy_rows(&mut p, &vectors, 0..1_000);
    let standby = Cluster::standby_of(&primary);
    // From now on a commit returns only once the standby has the WAL on disk.
    p.batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        .unwrap();
    p.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until_true(
        &mut p,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync')",
    );

    // One row per transaction, until the primary dies under the inserts.
    let inserter = {
        let mut c = db.connect();
        let vectors = vectors.clone();
        std::thread::spawn(move || {
            let mut committed = Vec::new();
            for (id, v) in vectors.iter().enumerate().skip(1_000) {
                let sql = "INSERT INTO items VALUES ($1, $2::text::embedding)";
                match c.execute(sql, &[&(id as i32), &literal(v)]) {
                    Ok(_) => committed.push(id as i32),
                    Err(_) => break,
                }
            }
            committed
        })
    };
    wait_until_true(&mut p, "SELECT count(*) >= 1300 FROM items");
    drop(p);
    primary.crash();
    let committed = inserter.join().unwrap();
    assert!(
        committed.len() >= 300 && committed.len() < 19_000,
        "the crash came during the inserts: {} committed",
        committed.len()
    );

    standby.promote();
    let mut s = standby.existing_database("failover").connect();
    let found: i64 = s
        .query_one(
            "SELECT count(*) FROM items WHERE id = ANY($1) OR id < 1000",
            &[&committed],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        found as usize,
        1_000 + committed.len(),
        "a committed row was lost"
    );
    // The index holds every row that survived, each its own nearest neighbour.
    assert_eq!(check(&mut s).live, count(&mut s));
    for &id in committed.iter().rev().take(50) {
        assert_eq!(top10(&mut s, &vectors[id as usize])[0], id, "row {id}");
    }
    // And the promoted standby takes inserts.
    let next = committed.last().unwrap() + 1;
    copy_rows(&mut s, &vectors, next as usize + 1..next as usize + 101);
    assert_eq!(check(&mut s).live, count(&mut s));
    standby.assert_no_backend_crashed();
}
