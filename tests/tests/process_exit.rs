//! Processes of a cluster with m3ret preloaded end without libtorch's static
//! destructors (`extension/src/process_exit.rs`), after PostgreSQL's own exit
//! processing: what a session leaves behind is still cleaned up, and the exit
//! status still tells the postmaster a session ended normally or with a FATAL.

use m3ret_e2e::models::small_model;
use m3ret_e2e::{backend_pid, fixture, Cluster};
use postgres::Client;

/// Waits until backend `pid` is gone (its exit processing is done by then).
fn wait_until_gone(c: &mut Client, pid: i32) {
    loop {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        std::thread::yield_now();
    }
}

fn temp_files(cluster: &Cluster) -> Vec<std::path::PathBuf> {
    let dir = cluster.data_dir().join("base/pgsql_tmp");
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_session_that_ends_is_cleaned_up_and_its_exit_status_kept() {
    let cluster = Cluster::start(&["shared_preload_libraries = 'm3ret'"]);
    let db = cluster.database("exits");
    let mut admin = db.connect();
    admin
        .execute("SELECT m3ret_model_import('test', $1)", &[&small_model(1)])
        .unwrap();

    // A session that embedded, holds a temporary table and a cursor spilled to a
    // temporary file, then disconnects.
    let mut session = db.connect();
    let pid = backend_pid(&mut session);
    session
        .query_one(
            "SELECT m3ret_embed($1::bytea, 'xray')",
            &[&fixture("pmnist_train_0000.png")],
        )
        .unwrap();
    session
        .batch_execute(
            "CREATE TEMP TABLE scratch AS SELECT g FROM generate_series(1, 200000) g;
             SET work_mem = '64kB';
             DECLARE held CURSOR WITH HOLD FOR SELECT g FROM scratch ORDER BY g DESC;",
        )
        .unwrap();
    assert!(
        !temp_files(&cluster).is_empty(),
        "the held cursor spilled to a temporary file"
    );
    drop(session);
    wait_until_gone(&mut admin, pid);
    assert_eq!(temp_files(&cluster), Vec::<std::path::PathBuf>::new());
    let temp_tables: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(temp_tables, 0, "the session's temporary table is dropped");

    // A session ended with a FATAL (terminated) exits with status 1, which the
    // postmaster takes as a normal end: no crash recovery, no restart.
    let mut victim = db.connect();
    let victim_pid = backend_pid(&mut victim);
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&victim_pid])
        .unwrap();
    wait_until_gone(&mut admin, victim_pid);
    assert!(victim.simple_query("SELECT 1").is_err());

    // Many short sessions, each embedding, and the cluster still serves.
    for _ in 0..20 {
        let mut c = db.connect();
        c.query_one(
            "SELECT m3ret_embed($1::bytea, 'xray')",
            &[&fixture("pmnist_train_0000.png")],
        )
        .unwrap();
    }
    let mut after = db.connect();
    let embedded: bool = after
        .query_one(
            "SELECT m3ret_embed($1::bytea, 'xray') IS NOT NULL",
            &[&fixture("pmnist_train_0000.png")],
        )
        .unwrap()
        .get(0);
    assert!(embedded);
    // A status other than 0 or 1 would have been logged, and the postmaster would
    // have restarted every process.
    cluster.assert_no_backend_crashed();
    let log = cluster.log();
    for marker in ["exited with exit code", "reinitializing"] {
        assert!(!log.contains(marker), "{marker} in the server log:\n{log}");
    }
}
