//! The end-to-end test harness: a throwaway PostgreSQL cluster (15, or 18 with
//! M3RET_PG=18) with the m3ret extension installed, driven through the `postgres` crate.
//!
//! `scripts/test.sh` installs the freshly built extension into the PostgreSQL that
//! M3RET_PG picks (`cargo pgrx install`) before the tests run; each test then gets a
//! database of its own in a cluster shared by its test binary:
//!
//! ```no_run
//! let db = m3ret_e2e::Cluster::shared().database("my_test");
//! let mut client = db.connect();
//! client.execute("SELECT '[1,2]'::embedding", &[]).unwrap();
//! ```

pub mod citus;
mod cluster;
pub mod models;
pub mod wire;

pub use cluster::{Cluster, Database};

/// The error message of a failed statement (the server's, without SQLSTATE or context).
pub fn error_message(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_string(),
        None => err.to_string(),
    }
}

/// The pid of the backend serving `client`.
pub fn backend_pid(client: &mut postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0)
}

/// Runs `sql` and returns the server's error message; panics if it succeeded.
pub fn expect_error(client: &mut postgres::Client, sql: &str) -> String {
    match client.batch_execute(sql) {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(e) => error_message(&e),
    }
}

/// Embeds every row of `table (id, modality, data, emb)` with the default model,
/// one `m3ret_embed_batch` call per modality (the README's bulk-ingest query).
pub fn embed_by_modality(client: &mut postgres::Client, table: &str) {
    client
        .batch_execute(&format!(
            "UPDATE {table} t SET emb = b.embedding
             FROM (SELECT modality, array_agg(id ORDER BY id) ids, array_agg(data ORDER BY id) d FROM {table} GROUP BY modality) g,
                  LATERAL m3ret_embed_batch(g.d, g.modality) b
             WHERE t.id = g.ids[b.ord]"
        ))
        .unwrap();
}

/// Copies every 2D study of the shared corpus (`manifest.csv`, kind `image2d`) into
/// `table (id, modality, data)`, ids from 0 in manifest order; returns how many.
pub fn copy_corpus_2d(client: &mut postgres::Client, table: &str) -> i32 {
    use std::io::Write;
    let root = shared_data();
    let manifest = std::fs::read_to_string(root.join("manifest.csv")).unwrap();
    let mut w = client
        .copy_in(&format!(
            "COPY {table} (id, modality, data) FROM STDIN WITH (FORMAT binary)"
        ))
        .unwrap();
    w.write_all(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0").unwrap();
    let mut n = 0i32;
    for line in manifest.lines().skip(1) {
        let f: Vec<&str> = line.splitn(8, ',').collect();
        if f.len() < 8 || f[6] != "image2d" {
            continue;
        }
        let data = std::fs::read(root.join(f[0])).unwrap();
        w.write_all(&3i16.to_be_bytes()).unwrap();
        for field in [&n.to_be_bytes()[..], f[1].as_bytes(), &data] {
            w.write_all(&(field.len() as i32).to_be_bytes()).unwrap();
            w.write_all(field).unwrap();
        }
        n += 1;
    }
    w.write_all(&(-1i16).to_be_bytes()).unwrap();
    w.finish().unwrap();
    n
}

/// How many `m3ret_embed` calls this session has counted and not yet reported to the
/// statistics system (`track_functions = 'all'` counts C functions too). A session
/// reports only when idle between transactions, so within one transaction the
/// difference of two readings is what happened between them.
pub fn embed_calls_pending(t: &mut postgres::Transaction) -> i64 {
    t.query_opt(
        "SELECT calls FROM pg_stat_xact_user_functions WHERE funcname = 'm3ret_embed'",
        &[],
    )
    .unwrap()
    .map_or(0, |r| r.get(0))
}

/// The repository's committed fixtures (real files with attribution).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The CT series fixture, one buffer per slice, in file-name order.
pub fn fixture_series() -> Vec<Vec<u8>> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/ct_series");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// The shared corpus: `$M3RET_SHARED_DATA`, else `../shared/data` beside the
/// repository. A test that needs it fails without it (never passes by skipping).
pub fn shared_data() -> std::path::PathBuf {
    let dir = match std::env::var_os("M3RET_SHARED_DATA") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    };
    assert!(
        dir.join("manifest.csv").exists(),
        "the shared corpus is missing: {} has no manifest.csv (see the README)",
        dir.display()
    );
    dir
}

/// What `m3ret_hnsw_check` counts in an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexCheck {
    pub live: i64,
    pub dead: i64,
    pub freed: i64,
    pub unreachable: i64,
}

/// `m3ret_hnsw_check(index)`, failing the test on any problem it lists, unreachable
/// elements included.
#[track_caller]
pub fn hnsw_check(client: &mut postgres::Client, index: &str) -> IndexCheck {
    let check = hnsw_check_allowing_unreachable(client, index);
    assert_eq!(
        check.unreachable, 0,
        "{index}: {} elements unreachable",
        check.unreachable
    );
    check
}

/// As [`hnsw_check`], but unreachable elements are counted, not a failure (the
/// check must still list them as a problem whenever there are any).
#[track_caller]
pub fn hnsw_check_allowing_unreachable(client: &mut postgres::Client, index: &str) -> IndexCheck {
    let row = client
        .query_one(
            "SELECT live, dead, freed, unreachable, problems FROM m3ret_hnsw_check($1::text::regclass)",
            &[&index],
        )
        .unwrap();
    let check = IndexCheck {
        live: row.get(0),
        dead: row.get(1),
        freed: row.get(2),
        unreachable: row.get(3),
    };
    let problems: Vec<String> = row.get(4);
    let (listed, other): (Vec<&String>, Vec<&String>) = problems
        .iter()
        .partition(|p| p.contains("cannot be reached"));
    assert_eq!(
        check.unreachable > 0,
        !listed.is_empty(),
        "{index}: {} unreachable, problems {problems:?}",
        check.unreachable
    );
    assert!(
        other.is_empty(),
        "m3ret_hnsw_check({index}) found problems: {other:#?}"
    );
    check
}

/// One committed fixture per format and modality, with the modality to embed it as.
pub const FIXTURES_BY_MODALITY: [(&str, &str); 6] = [
    ("pmnist_train_0000.png", "xray"),
    ("covidrepo_0637.jpg", "xray"),
    ("wce_img1310.jpg", "endoscopy"),
    (
        "pocus_convex_Cov_recommendations_likebutterfly_mov5.mp4",
        "ultrasound",
    ),
    ("totalseg_example_mr_sm.nii.gz", "mri"),
    ("totalseg_example_ct.nii.gz", "ct"),
];

/// The largest difference between two vectors of the same length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The exact ten nearest rows to `q` by cosine distance (ids are row positions),
/// with the distance SQL's `<=>` uses.
pub fn exact_top10_cosine(rows: &[Vec<f32>], q: &[f32]) -> Vec<i32> {
    let mut by_distance: Vec<(f64, i32)> = rows
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                m3ret_core::vector::distance::cosine_distance(q, v),
                i as i32,
            )
        })
        .collect();
    by_distance.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_distance.iter().take(10).map(|&(_, id)| id).collect()
}
