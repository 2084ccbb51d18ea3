//! m3ret_embed, the model registry and libtorch inside PostgreSQL, on real files.

use m3ret_e2e::models::{model_with, reference_embedding, small_model};
use m3ret_e2e::wire::Vector;
use m3ret_e2e::{
    backend_pid, error_message, expect_error, fixture, fixture_series, max_abs_diff, Cluster,
    FIXTURES_BY_MODALITY,
};
use postgres::Client;

/// Creates a database with the small test model imported as `test@1` (the default).
fn setup(name: &str) -> (m3ret_e2e::Database<'static>, Client, Vec<u8>) {
    let db = Cluster::shared().database(name);
    let mut c = db.connect();
    let model = small_model(1);
    let label: String = c
        .query_one("SELECT m3ret_model_import('test', $1)", &[&model])
        .unwrap()
        .get(0);
    assert_eq!(label, "test@1");
    (db, c, model)
}

fn embed(c: &mut Client, data: &[u8], modality: &str) -> Vec<f32> {
    let v: Vector = c
        .query_one("SELECT m3ret_embed($1::bytea, $2)", &[&data, &modality])
        .unwrap()
        .get(0);
    v.0
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[test]
fn every_modality_embeds_as_outside_postgres() {
    let (_db, mut c, model) = setup("embed_modalities");
    let cases = FIXTURES_BY_MODALITY;
    for (file, modality) in cases {
        let data = fixture(file);
        let got = embed(&mut c, &data, modality);
        assert_eq!(got.len(), 192, "{file}");
        assert!(
            (norm(&got) - 1.0).abs() < 1e-5,
            "{file}: norm {}",
            norm(&got)
        );
        let expected = reference_embedding(&model, &[&data], modality);
        assert!(
            max_abs_diff(&got, &expected) < 1e-5,
            "{file}: SQL and core differ by {}",
            max_abs_diff(&got, &expected)
        );
    }
    // A DICOM series as bytea[], in any order, with modality from the DICOM tag.
    let mut series = fixture_series();
    let expected = reference_embedding(
        &model,
        &series.iter().map(|b| b.as_slice()).collect::<Vec<_>>(),
        "auto",
    );
    series.reverse();
    let got: Vector = c
        .query_one("SELECT m3ret_embed($1::bytea[], 'auto')", &[&series])
        .unwrap()
        .get(0);
    assert!(max_abs_diff(&got.0, &expected) < 1e-5);
    // One DICOM slice on its own, modality auto (CT).
    let one = embed(&mut c, &series[0], "auto");
    assert_eq!(one.len(), 192);
    // Deterministic, and the batch form agrees with the single form.
    let png = fixture("pmnist_train_0000.png");
    assert_eq!(embed(&mut c, &png, "xray"), embed(&mut c, &png, "xray"));
    let jpg = fixture("covidrepo_0637.jpg");
    let rows = c
        .query("SELECT ord, embedding FROM m3ret_embed_batch(ARRAY[$1, NULL, $2]::bytea[], 'xray') ORDER BY ord", &[&png, &jpg])
        .unwrap();
    let ords: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ords, vec![1, 3], "NULL inputs give no row");
    let batch: Vec<Vec<f32>> = rows.iter().map(|r| r.get::<_, Vector>(1).0).collect();
    assert!(max_abs_diff(&batch[0], &embed(&mut c, &png, "xray")) < 1e-6);
    assert!(max_abs_diff(&batch[1], &embed(&mut c, &jpg, "xray")) < 1e-6);
    Cluster::shared().assert_no_backend_crashed();
}

/// A few hundred real images: each one's nearest neighbour is itself.
#[test]
fn nearest_neighbour_of_an_image_is_itself() {
    let (_db, mut c, _) = setup("embed_neighbours");
    let mut images: Vec<(String, Vec<u8>, &str)> = Vec::new();
    {
        let root = m3ret_e2e::shared_data();
        for (dir, modality, n) in [
            ("xray/chest_pneumonia-pediatric", "xray", 120),
            ("endoscopy/capsule-gi_bleeding", "endoscopy", 60),
            ("mri/brain_glioma", "mri", 60),
            ("ultrasound/breast_benign", "ultrasound", 60),
        ] {
            let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for f in files.into_iter().take(n) {
                images.push((
                    f.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&f).unwrap(),
                    modality,
                ));
            }
        }
    }
    c.batch_execute("CREATE TABLE images (id serial PRIMARY KEY, file text, modality text, data bytea, emb embedding(192))").unwrap();
    for (file, data, modality) in &images {
        c.execute(
            "INSERT INTO images (file, modality, data) VALUES ($1, $2, $3)",
            &[file, modality, data],
        )
        .unwrap();
    }
    // Bulk embedding, one batch call per modality.
    m3ret_e2e::embed_by_modality(&mut c, "images");
    let missing: i64 = c
        .query_one("SELECT count(*) FROM images WHERE emb IS NULL", &[])
        .unwrap()
        .get(0);
    assert_eq!(missing, 0);
    let n = images.len() as i32;
    for id in [1, n / 3, n / 2, n - 1, n] {
        let rows = c
            .query(
                "SELECT i.id, i.emb <=> q.e FROM images i,
                        (SELECT m3ret_embed(data, modality) e FROM images WHERE id = $1) q
                 ORDER BY i.emb <=> q.e LIMIT 5",
                &[&id],
            )
            .unwrap();
        let first: i32 = rows[0].get(0);
        let distance: f64 = rows[0].get(1);
        assert_eq!(first, id, "nearest neighbour of image {id}");
        assert!(distance < 1e-5, "{distance}");
        assert_eq!(rows.len(), 5.min(n as usize));
    }
}

#[test]
fn registry_versions_default_and_drop() {
    let (_db, mut c, model) = setup("embed_registry");
    let png = fixture("pmnist_train_0000.png");
    let again: String = c
        .query_one("SELECT m3ret_model_import('test', $1)", &[&model])
        .unwrap()
        .get(0);
    assert_eq!(again, "test@1", "the same file is the same version");
    let other = small_model(2);
    let v2: String = c
        .query_one("SELECT m3ret_model_import('test', $1)", &[&other])
        .unwrap()
        .get(0);
    assert_eq!(
        v2, "test@2",
        "a changed file under the same name is a new version"
    );
    let rows = c
        .query(
            "SELECT model, is_default, dims, method FROM m3ret_model_list ORDER BY version",
            &[],
        )
        .unwrap();
    let listed: Vec<(String, bool, i32, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("test@1".into(), true, 192, "simdino".into()),
            ("test@2".into(), false, 192, "simdino".into())
        ]
    );
    let has_weights: i64 = c
        .query_one("SELECT count(*) FROM information_schema.columns WHERE table_name = 'm3ret_model_list' AND column_name = 'weights'", &[])
        .unwrap()
        .get(0);
    assert_eq!(has_weights, 0, "the list view leaves the weights out");
    // The default is v1 until changed; name alone means the latest version.
    let default = embed(&mut c, &png, "xray");
    let v1: Vector = c
        .query_one("SELECT m3ret_embed($1::bytea, 'xray', 'test@1')", &[&png])
        .unwrap()
        .get(0);
    let latest: Vector = c
        .query_one("SELECT m3ret_embed($1::bytea, 'xray', 'test')", &[&png])
        .unwrap()
        .get(0);
    assert_eq!(default, v1.0);
    assert!(max_abs_diff(&latest.0, &reference_embedding(&other, &[&png], "xray")) < 1e-5);
    assert!(
        max_abs_diff(&default, &latest.0) > 1e-3,
        "two models give different embeddings"
    );
    let set: String = c
        .query_one("SELECT m3ret_model_set_default('test')", &[])
        .unwrap()
        .get(0);
    assert_eq!(set, "test@2");
    assert_eq!(embed(&mut c, &png, "xray"), latest.0);
    // The pinned form names its version and can back an expression index.
    c.batch_execute("CREATE TABLE scans (id int, data bytea)")
        .unwrap();
    c.execute("INSERT INTO scans VALUES (1, $1)", &[&png])
        .unwrap();
    c.batch_execute(
        "CREATE INDEX scans_emb ON scans ((m3ret_embed_pinned(data, 'xray', 'test@2')::text))",
    )
    .unwrap();
    assert!(expect_error(
        &mut c,
        "SELECT m3ret_embed_pinned('x'::bytea, 'xray', 'test')"
    )
    .contains("needs an explicit model version"));
    assert!(expect_error(
        &mut c,
        "CREATE INDEX bad ON scans ((m3ret_embed(data, 'xray')::text))"
    )
    .contains("must be marked IMMUTABLE"));
    // Dropping.
    let dropped: i32 = c
        .query_one("SELECT m3ret_model_drop('test@1')", &[])
        .unwrap()
        .get(0);
    assert_eq!(dropped, 1);
    assert_eq!(
        expect_error(
            &mut c,
            &format!(
                "SELECT m3ret_embed('\\x{}'::bytea, 'xray', 'test@1')",
                hex(&png)
            )
        ),
        "unknown model \"test@1\": m3ret_model_list shows the imported models"
    );
    assert_eq!(
        expect_error(&mut c, "SELECT m3ret_model_drop('nope')"),
        "unknown model \"nope\": m3ret_model_list shows the imported models"
    );
    let dropped: i32 = c
        .query_one("SELECT m3ret_model_drop('test')", &[])
        .unwrap()
        .get(0);
    assert_eq!(dropped, 1);
    assert_eq!(
        expect_error(
            &mut c,
            &format!("SELECT m3ret_embed('\\x{}'::bytea, 'xray')", hex(&png))
        ),
        "no default model: import one with m3ret_model_import(name, weights), or pass a model name"
    );
    // A file that is not a model is refused before anything is stored.
    assert!(expect_error(
        &mut c,
        "SELECT m3ret_model_import('junk', 'not a model'::bytea)"
    )
    .starts_with("model file refused: not a safetensors file"));
    assert!(
        expect_error(&mut c, "SELECT m3ret_model_import('bad name!', 'x'::bytea)")
            .starts_with("invalid model name")
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn only_admins_import_and_read_files() {
    let (db, mut c, model) = setup("embed_privileges");
    c.batch_execute(
        "DROP ROLE IF EXISTS alice; DROP ROLE IF EXISTS bob;
         CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN IN ROLE m3ret_admin;
         GRANT USAGE ON SCHEMA public TO alice, bob;",
    )
    .unwrap();
    let connect = |user: &str| {
        Client::connect(
            &format!("{} user={user}", db.cluster.connection_string(&db.name))
                .replace("user=postgres ", ""),
            postgres::NoTls,
        )
        .unwrap()
    };
    let mut alice = connect("alice");
    let png = fixture("pmnist_train_0000.png");
    // Everyone may embed, though only admins may read the weights (a model trained
    // on patients' images can leak them): the extension reads them with the
    // registry owner's rights, and gives alice her own rights back afterwards.
    let v: Vector = alice
        .query_one("SELECT m3ret_embed($1::bytea, 'xray')", &[&png])
        .unwrap()
        .get(0);
    assert_eq!(v.0.len(), 192);
    let me: String = alice
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(me, "alice");
    for sql in [
        "SELECT weights FROM m3ret_models",
        "SELECT * FROM m3ret_models",
        "SELECT octet_length(weights) FROM m3ret_models",
    ] {
        let err = expect_error(&mut alice, sql);
        assert!(
            err.contains("permission denied for table m3ret_models"),
            "{sql}: {err}"
        );
    }
    let listed: Vec<(String, String)> = alice
        .query("SELECT model, size FROM m3ret_model_list", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, "test@1");
    let keys: (String, i32, i32) = alice
        .query_one("SELECT sha256, version, dims FROM m3ret_models", &[])
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!((keys.1, keys.2), (1, 192));
    let err = error_message(
        &alice
            .query_one("SELECT m3ret_model_import('mine', $1)", &[&model])
            .unwrap_err(),
    );
    assert!(err.contains("permission denied"), "{err}");
    for sql in [
        "SELECT m3ret_model_drop('test')",
        "SELECT m3ret_model_set_default('test')",
        "SELECT m3ret_model_import_file('x', 'model.safetensors')",
        "DELETE FROM m3ret_models",
    ] {
        let err = expect_error(&mut alice, sql);
        assert!(err.contains("permission denied"), "{sql}: {err}");
    }
    assert!(expect_error(&mut alice, "SET m3ret.model_dir = '/'").contains("permission denied"));
    // A member of m3ret_admin may import.
    let mut bob = connect("bob");
    let label: String = bob
        .query_one("SELECT m3ret_model_import('bobs', $1)", &[&small_model(3)])
        .unwrap()
        .get(0);
    assert_eq!(label, "bobs@1");
    let size: i32 = bob
        .query_one(
            "SELECT octet_length(weights) FROM m3ret_models WHERE name = 'test'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(size as usize, model.len(), "m3ret_admin reads the weights");
    // Files: only under m3ret.model_dir, which is unset until a superuser sets it.
    assert!(expect_error(
        &mut c,
        "SELECT m3ret_model_import_file('f', 'model.safetensors')"
    )
    .contains("m3ret.model_dir, which is not set"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors"), small_model(4)).unwrap();
    std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status()
        .unwrap();
    c.batch_execute(&format!("SET m3ret.model_dir = '{}'", dir.path().display()))
        .unwrap();
    let label: String = c
        .query_one(
            "SELECT m3ret_model_import_file('fromfile', 'model.safetensors')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(label, "fromfile@1");
    assert!(expect_error(
        &mut c,
        "SELECT m3ret_model_import_file('f', '../../etc/passwd')"
    )
    .contains("outside m3ret.model_dir"));
    assert!(expect_error(
        &mut c,
        "SELECT m3ret_model_import_file('f', 'missing.safetensors')"
    )
    .contains("No such file"));
    c.batch_execute("REVOKE USAGE ON SCHEMA public FROM alice, bob")
        .unwrap();
}

#[test]
fn bad_inputs_are_errors_and_nothing_crashes() {
    let (_db, mut c, _) = setup("embed_bad_inputs");
    let png = hex(&fixture("pmnist_train_0000.png"));
    let series = fixture_series();
    let dicom = hex(&series[0][..series[0].len() / 2]);
    let cases = [
        (format!("SELECT m3ret_embed('\\x{png}'::bytea, 'pet')"), "unknown modality \"pet\": expected one of xray, ultrasound, endoscopy, ct, mri, auto"),
        (format!("SELECT m3ret_embed('\\x{png}'::bytea, 'xray', 'nomodel')"), "unknown model \"nomodel\": m3ret_model_list shows the imported models"),
        ("SELECT m3ret_embed('garbage'::bytea, 'xray')".to_string(), "cannot read the study: unrecognised format: expected DICOM (with or without preamble), NIfTI-1 or NIfTI-2 (optionally gzip-compressed), PNG, JPEG, MP4"),
        ("SELECT m3ret_embed(''::bytea, 'xray')".to_string(), "cannot read the study: empty input: 0 bytes"),
        (format!("SELECT m3ret_embed('\\x{png}'::bytea, 'auto')"), "cannot read the study: modality auto needs a DICOM file with a known Modality tag; this png has none, so give one of xray, ultrasound, endoscopy, ct, mri, auto"),
        (format!("SELECT m3ret_embed('\\x{png}'::bytea, 'xray') <=> '[1,2]'"), "different embedding dimensions 192 and 2"),
    ];
    for (sql, message) in &cases {
        assert_eq!(&expect_error(&mut c, sql), message, "{sql:.80}");
    }
    let err = expect_error(
        &mut c,
        &format!("SELECT m3ret_embed('\\x{dicom}'::bytea, 'auto')"),
    );
    assert!(
        err.starts_with("cannot read the study: invalid dicom:"),
        "{err}"
    );
    let err = expect_error(
        &mut c,
        "SELECT m3ret_embed(ARRAY['\\x00'::bytea, 'abc'::bytea], 'ct')",
    );
    assert!(err.starts_with("cannot read the series:"), "{err}");
    let err = expect_error(
        &mut c,
        &format!("SET m3ret.device = 'cuda'; SELECT m3ret_embed('\\x{png}'::bytea, 'xray')"),
    );
    assert_eq!(
        err,
        "m3ret.device: CUDA device cuda requested but 0 CUDA devices are available"
    );
    let err = expect_error(
        &mut c,
        &format!("SET m3ret.device = 'tpu'; SELECT m3ret_embed('\\x{png}'::bytea, 'xray')"),
    );
    assert_eq!(
        err,
        "m3ret.device: invalid device \"tpu\": expected auto, cpu, cuda or cuda:N"
    );
    c.batch_execute("RESET m3ret.device").unwrap();
    // The session still works; the server log shows no crash.
    let v: Vector = c
        .query_one("SELECT m3ret_embed(decode($1, 'hex'), 'xray')", &[&png])
        .unwrap()
        .get(0);
    assert_eq!(v.0.len(), 192);
    Cluster::shared().assert_no_backend_crashed();
}

/// Embedding reads the registry without a transaction ID: a hot standby cannot
/// assign one ("cannot assign TransactionIds during recovery"), and a primary
/// would spend one per call.
#[test]
fn embedding_assigns_no_transaction_id() {
    let (_db, mut c, _) = setup("embed_no_xid");
    let png = fixture("pmnist_train_0000.png");
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("SET TRANSACTION READ ONLY").unwrap();
    tx.query_one("SELECT m3ret_embed($1::bytea, 'xray')", &[&png])
        .unwrap();
    tx.query_one("SELECT m3ret_embed($1::bytea, 'xray', 'test@1')", &[&png])
        .unwrap();
    tx.query_one(
        "SELECT m3ret_embed_pinned($1::bytea, 'xray', 'test@1')",
        &[&png],
    )
    .unwrap();
    let xid: Option<String> = tx
        .query_one("SELECT pg_current_xact_id_if_assigned()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(xid, None, "m3ret_embed assigned a transaction ID");
    tx.commit().unwrap();
}

/// m3ret finds its registry whatever the caller's search_path: postgres_fdw evaluates
/// a sharded query's parameters, such as `(SELECT m3ret_embed(...))`, with
/// search_path = pg_catalog (tests/tests/sharding.rs runs that case itself).
#[test]
fn embedding_does_not_depend_on_the_search_path() {
    let (_db, mut c, _) = setup("embed_search_path");
    let png = fixture("pmnist_train_0000.png");
    let expected = embed(&mut c, &png, "xray");
    c.batch_execute("SET search_path = pg_catalog").unwrap();
    for sql in [
        "SELECT public.m3ret_embed($1::bytea, 'xray')",
        "SELECT public.m3ret_embed($1::bytea, 'xray', 'test@1')",
    ] {
        let v: Vector = c.query_one(sql, &[&png]).unwrap().get(0);
        assert_eq!(v.0, expected, "{sql}");
    }
}

#[test]
fn runtime_info_reports_the_loaded_model() {
    let (_db, mut c, _) = setup("embed_runtime_info");
    let before: serde_json::Value = c
        .query_one("SELECT m3ret_runtime_info()", &[])
        .unwrap()
        .get(0);
    assert_eq!(before["models_loaded"], serde_json::json!([]));
    assert!(before["first_load_epoch_s"].is_null());
    embed(&mut c, &fixture("pmnist_train_0000.png"), "xray");
    let info: serde_json::Value = c
        .query_one("SELECT m3ret_runtime_info()", &[])
        .unwrap()
        .get(0);
    assert_eq!(info["torch"], "2.11.0+cu130");
    assert_eq!(info["cuda_available"], false);
    assert_eq!(info["device"], "cpu");
    assert_eq!(info["threads"], 1);
    assert_eq!(info["models_loaded"][0]["model"], "test@1");
    assert_eq!(info["models_loaded"][0]["dims"], 192);
    assert!(info["first_load_epoch_s"].is_string());
}

#[test]
fn four_sessions_embed_concurrently() {
    let (db, _c, model) = setup("embed_concurrent");
    let files = [
        "pmnist_train_0000.png",
        "covidrepo_0637.jpg",
        "wce_img1310.jpg",
    ];
    let expected: Vec<Vec<f32>> = files
        .iter()
        .map(|f| reference_embedding(&model, &[&fixture(f)], "xray"))
        .collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (db, expected) = (&db, &expected);
            s.spawn(move || {
                let mut c = db.connect();
                for round in 0..3 {
                    let i = (t + round) % files.len();
                    let got = embed(&mut c, &fixture(files[i]), "xray");
                    assert!(
                        max_abs_diff(&got, &expected[i]) < 1e-5,
                        "session {t} round {round}"
                    );
                }
            });
        }
    });
    Cluster::shared().assert_no_backend_crashed();
}

#[test]
fn a_long_batch_stops_on_cancel_and_statement_timeout() {
    let db = Cluster::shared().database("embed_cancel");
    let mut c = db.connect();
    // A slower model (256 x 256 inputs, 6 blocks) so that the batch runs for many seconds.
    let label: String = c
        .query_one(
            "SELECT m3ret_model_import('slow', $1)",
            &[&model_with(5, 192, 6, 256)],
        )
        .unwrap()
        .get(0);
    assert_eq!(label, "slow@1");
    let batch = "SELECT count(*) FROM m3ret_embed_batch(array_fill(decode($1, 'hex'), ARRAY[400]), 'endoscopy')";
    let jpg = hex(&fixture("wce_img1310.jpg"));
    c.batch_execute("SET statement_timeout = '700ms'").unwrap();
    let started = std::time::Instant::now();
    let err = error_message(&c.query_one(batch, &[&jpg]).unwrap_err());
    eprintln!(
        "statement_timeout stopped the batch after {:?}",
        started.elapsed()
    );
    assert_eq!(err, "canceling statement due to statement timeout");
    c.batch_execute("RESET statement_timeout").unwrap();
    // pg_cancel_backend from another session.
    let pid = backend_pid(&mut c);
    let canceller = {
        let db_conn = db.cluster.connection_string(&db.name);
        std::thread::spawn(move || {
            // Cancel once the batch is running, not after a guessed delay.
            let mut admin = Client::connect(&db_conn, postgres::NoTls).unwrap();
            let running = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE '%m3ret_embed_batch%'";
            while admin.query_one(running, &[&pid]).unwrap().get::<_, i64>(0) == 0 {
                std::thread::yield_now();
            }
            // The backend shows the query active from its Parse message on, and ignores
            // a cancel that lands while it still reads Bind and Execute (PostgreSQL's
            // DoingCommandRead), so cancel again until the batch is no longer running.
            let mut sent = false;
            while admin.query_one(running, &[&pid]).unwrap().get::<_, i64>(0) > 0 {
                sent |= admin
                    .query_one("SELECT pg_cancel_backend($1)", &[&pid])
                    .unwrap()
                    .get::<_, bool>(0);
                std::thread::yield_now();
            }
            sent
        })
    };
    let started = std::time::Instant::now();
    let err = error_message(&c.query_one(batch, &[&jpg]).unwrap_err());
    eprintln!(
        "pg_cancel_backend stopped the batch after {:?}",
        started.elapsed()
    );
    assert!(canceller.join().unwrap());
    assert_eq!(err, "canceling statement due to user request");
    // The backend is fine afterwards.
    let v: Vector = c
        .query_one(
            "SELECT m3ret_embed(decode($1, 'hex'), 'endoscopy')",
            &[&jpg],
        )
        .unwrap()
        .get(0);
    assert_eq!(v.0.len(), 384);
    Cluster::shared().assert_no_backend_crashed();
}

/// With shared_preload_libraries and JIT forced on: libtorch still loads lazily in
/// each backend, and embedding works.
#[test]
fn works_preloaded_and_with_jit() {
    let cluster = Cluster::start(&[
        "shared_preload_libraries = 'm3ret'",
        "jit = on",
        "jit_above_cost = 0",
        "jit_inline_above_cost = 0",
        "jit_optimize_above_cost = 0",
    ]);
    let db = cluster.database("embed_preload");
    let mut c = db.connect();
    let model = small_model(1);
    c.query_one("SELECT m3ret_model_import('test', $1)", &[&model])
        .unwrap();
    let png = fixture("pmnist_train_0000.png");
    let got = embed(&mut c, &png, "xray");
    assert!(max_abs_diff(&got, &reference_embedding(&model, &[&png], "xray")) < 1e-5);
    let preloaded: String = c
        .query_one("SHOW shared_preload_libraries", &[])
        .unwrap()
        .get(0);
    assert_eq!(preloaded, "m3ret");
    cluster.assert_no_backend_crashed();
}

/// The `m3ret-train` binary cargo built beside this test (`cargo test -p m3ret-train`
/// in the same run builds it; the README's test command does).
fn trainer_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let release = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = release.join("m3ret-train");
    assert!(
        bin.exists(),
        "{} is missing: run the README's test command, which builds it",
        bin.display()
    );
    bin
}

#[test]
fn the_shipped_model_embeds_in_sql_as_m3ret_train_eval_does() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = std::fs::read(repo.join("models/m3ret-default.safetensors")).unwrap();
    let cases = FIXTURES_BY_MODALITY;
    // A manifest of the fixtures for `m3ret-train eval --embeddings`.
    let dir = std::env::temp_dir().join(format!("m3ret-eval-agree-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut manifest = String::from("path,modality,region,cls,kind,split\n");
    for (file, modality) in cases {
        manifest.push_str(&format!(
            "{},{modality},r,{modality}_c,,\n",
            repo.join("fixtures").join(file).display()
        ));
    }
    std::fs::write(dir.join("manifest.csv"), manifest).unwrap();
    let status = std::process::Command::new(trainer_binary())
        // f32, as the test cluster runs (tests/src/cluster.rs).
        .args(["eval", "--device", "cpu", "--precision", "f32", "--model"])
        .arg(repo.join("models/m3ret-default.safetensors"))
        .arg("--manifest")
        .arg(dir.join("manifest.csv"))
        .arg("--out")
        .arg(dir.join("eval"))
        .arg("--embeddings")
        .arg(dir.join("embeddings.jsonl"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "m3ret-train eval failed");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("embeddings.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        cases.len(),
        "every fixture embedded by the trainer"
    );

    let db = Cluster::shared().database("embed_agrees_with_eval");
    let mut c = db.connect();
    let label: String = c
        .query_one("SELECT m3ret_model_import('shipped', $1)", &[&shipped])
        .unwrap()
        .get(0);
    assert_eq!(
        label, "shipped@1",
        "the first model of a database is its default"
    );
    for ((file, modality), line) in cases.iter().zip(&lines) {
        assert!(line["path"].as_str().unwrap().ends_with(file));
        let from_eval: Vec<f32> = line["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let from_sql = embed(&mut c, &fixture(file), modality);
        assert_eq!(from_sql.len(), from_eval.len(), "{file}");
        let diff = max_abs_diff(&from_sql, &from_eval);
        // Eval batches studies of one shape together; SQL embeds one at a time: the
        // sums may round differently, nothing more.
        assert!(
            diff < 1e-4,
            "{file}: SQL and m3ret-train eval differ by {diff}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
