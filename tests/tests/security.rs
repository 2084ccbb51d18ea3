//! What a plain login role, or an admin with a hostile schema on its search_path,
//! must not be able to do (issue 28): raise itself through an operator or function
//! of its own that m3ret's raised-rights code would resolve, or have version numbers
//! reused under an expression index.

use m3ret_e2e::models::small_model;
use m3ret_e2e::wire::Vector;
use m3ret_e2e::{expect_error, fixture, Cluster, Database};
use postgres::Client;

/// A connection to `db` as `user`.
fn connect_as(db: &Database, user: &str) -> Client {
    Client::connect(
        &format!("{} user={user}", db.cluster.connection_string(&db.name))
            .replace("user=postgres ", ""),
        postgres::NoTls,
    )
    .unwrap()
}

/// Roles are cluster-wide: each test names its own, made afresh.
fn create_roles(c: &mut Client, plain: &str, admin: &str) {
    c.batch_execute(&format!(
        "DROP ROLE IF EXISTS {plain}; DROP ROLE IF EXISTS {admin};
         CREATE ROLE {plain} LOGIN; CREATE ROLE {admin} LOGIN IN ROLE m3ret_admin;
         GRANT USAGE ON SCHEMA public TO {plain}, {admin};
         CREATE SCHEMA evil AUTHORIZATION {plain};"
    ))
    .unwrap();
}

/// As `plain`, in its schema `evil`: a table that records every call of the traps
/// below with the user it ran as, an `=` for text and for integers, and a domain
/// `evil.text` whose check runs code. Each trap, run with a superuser's rights,
/// would make `plain` a superuser. Returns the search_path that puts them first.
fn lay_traps(c: &mut Client, plain: &str) -> &'static str {
    c.batch_execute(&format!(
        "CREATE TABLE evil.calls (what text, as_user text);
         GRANT INSERT, SELECT ON evil.calls TO PUBLIC;
         GRANT USAGE ON SCHEMA evil TO PUBLIC;
         CREATE FUNCTION evil.trap(what text) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO evil.calls VALUES (what, current_user);
             IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) current_user) THEN
                 EXECUTE 'ALTER ROLE {plain} SUPERUSER';
             END IF;
             RETURN true;
         END $$;
         CREATE FUNCTION evil.texteq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN PERFORM evil.trap('text ='); RETURN pg_catalog.texteq(a, b); END $$;
         CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
         CREATE FUNCTION evil.int4eq(a integer, b integer) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN PERFORM evil.trap('integer ='); RETURN pg_catalog.int4eq(a, b); END $$;
         CREATE OPERATOR evil.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.int4eq);
         CREATE FUNCTION evil.nameeq(a name, b name) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN PERFORM evil.trap('name ='); RETURN pg_catalog.nameeq(a, b); END $$;
         CREATE OPERATOR evil.= (LEFTARG = name, RIGHTARG = name, FUNCTION = evil.nameeq);
         CREATE DOMAIN evil.text AS pg_catalog.text CHECK (evil.trap('domain text'));"
    ))
    .unwrap();
    "evil, pg_catalog, public"
}

/// Every trap call recorded, as (what, user it ran as).
fn calls(c: &mut Client) -> Vec<(String, String)> {
    c.query("SELECT what, as_user FROM evil.calls", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn is_superuser(c: &mut Client, role: &str) -> bool {
    c.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .unwrap()
        .get(0)
}

/// Issue 28, finding 1: m3ret_embed reads the weights with the registry owner's
/// rights; an operator of the caller's must not run then.
fn embedding_raises_no_one(db: &Database, plain: &str) {
    let mut su = db.connect();
    let mut mallory = connect_as(db, plain);
    let path = lay_traps(&mut mallory, plain);
    mallory
        .batch_execute(&format!("SET search_path = {path}"))
        .unwrap();
    let png = fixture("pmnist_train_0000.png");
    for model in [None, Some("test"), Some("test@1")] {
        let v: Vector = mallory
            .query_one(
                "SELECT public.m3ret_embed($1::bytea, 'xray', $2)",
                &[&png, &model],
            )
            .unwrap()
            .get(0);
        assert_eq!(v.0.len(), 192);
    }
    assert!(
        !is_superuser(&mut su, plain),
        "{plain} became superuser: {:?}",
        calls(&mut su)
    );
    assert_eq!(
        calls(&mut su),
        Vec::<(String, String)>::new(),
        "m3ret ran the caller's operators"
    );
}

#[test]
fn a_plain_role_cannot_raise_itself_through_embedding_in_backend_mode() {
    let db = Cluster::shared().database("sec_embed_backend");
    let mut su = db.connect();
    su.query_one("SELECT m3ret_model_import('test', $1)", &[&small_model(1)])
        .unwrap();
    create_roles(&mut su, "sec_mallory_b", "sec_admin_b");
    embedding_raises_no_one(&db, "sec_mallory_b");
}

#[test]
fn a_plain_role_cannot_raise_itself_through_embedding_in_server_mode() {
    let cluster = Cluster::start(&["shared_preload_libraries = 'm3ret'"]);
    let db = cluster.database("sec_embed_server");
    let mut su = db.connect();
    su.query_one("SELECT m3ret_model_import('test', $1)", &[&small_model(1)])
        .unwrap();
    let inference: String = su
        .query_one("SELECT m3ret_runtime_info()->>'inference'", &[])
        .unwrap()
        .get(0);
    assert_eq!(inference, "server");
    create_roles(&mut su, "sec_mallory_s", "sec_admin_s");
    // The server has not read the model yet: mallory's is its first embed.
    embedding_raises_no_one(&db, "sec_mallory_s");
}

/// Issue 28, finding 5: an admin with a hostile schema first on its search_path
/// runs none of its functions or operators through m3ret's admin functions.
#[test]
fn admin_functions_resolve_nothing_through_the_callers_search_path() {
    let db = Cluster::shared().database("sec_admin_path");
    let mut su = db.connect();
    create_roles(&mut su, "sec_mallory_a", "sec_admin_a");
    let mut mallory = connect_as(&db, "sec_mallory_a");
    let path = lay_traps(&mut mallory, "sec_mallory_a");
    // Look-alikes of every function m3ret's admin functions call, each a trap that
    // would copy the weights out as the admin.
    mallory
        .batch_execute(
            "CREATE TABLE evil.loot (weights bytea); GRANT INSERT ON evil.loot TO PUBLIC;
             CREATE FUNCTION evil.steal(what text) RETURNS void LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM evil.trap(what);
                 INSERT INTO evil.loot SELECT weights FROM public.m3ret_models;
             EXCEPTION WHEN insufficient_privilege THEN NULL;
             END $$;
             CREATE FUNCTION evil.m3ret_require_admin(action text) RETURNS void LANGUAGE sql
                 AS $$ SELECT evil.steal('m3ret_require_admin') $$;
             CREATE FUNCTION evil.m3ret_model_inspect(weights bytea) RETURNS jsonb LANGUAGE plpgsql
                 AS $$ BEGIN PERFORM evil.steal('m3ret_model_inspect');
                       RETURN public.m3ret_model_inspect(weights); END $$;
             CREATE FUNCTION evil.m3ret_model_resolve(model text, OUT name text, OUT version integer)
                 LANGUAGE plpgsql AS $$ BEGIN PERFORM evil.steal('m3ret_model_resolve');
                       SELECT * INTO name, version FROM public.m3ret_model_resolve(model); END $$;
             CREATE FUNCTION evil.hashtext(t text) RETURNS integer LANGUAGE plpgsql
                 AS $$ BEGIN PERFORM evil.steal('hashtext'); RETURN pg_catalog.hashtext(t); END $$;
             CREATE FUNCTION evil.pg_advisory_xact_lock(k bigint) RETURNS void LANGUAGE plpgsql
                 AS $$ BEGIN PERFORM evil.steal('pg_advisory_xact_lock');
                       PERFORM pg_catalog.pg_advisory_xact_lock(k); END $$;
             CREATE FUNCTION evil.pg_has_role(u name, r text, m text) RETURNS boolean LANGUAGE plpgsql
                 AS $$ BEGIN PERFORM evil.steal('pg_has_role');
                       RETURN pg_catalog.pg_has_role(u, r, m); END $$;",
        )
        .unwrap();
    let mut admin = connect_as(&db, "sec_admin_a");
    admin
        .batch_execute(&format!("SET search_path = {path}"))
        .unwrap();
    let (first, second) = (small_model(1), small_model(2));
    let steps: [(&str, Option<&Vec<u8>>); 7] = [
        ("SELECT public.m3ret_model_import('m', $1)", Some(&first)),
        ("SELECT public.m3ret_model_import('m', $1)", Some(&second)),
        ("SELECT public.m3ret_model_set_default('m@2')", None),
        ("SELECT (public.m3ret_model_resolve('m')).name", None),
        (
            "SELECT public.m3ret_require_admin('test')::pg_catalog.text",
            None,
        ),
        (
            "SELECT public.m3ret_model_drop('m@1')::pg_catalog.text",
            None,
        ),
        ("SELECT public.m3ret_model_drop('m')::pg_catalog.text", None),
    ];
    for (sql, weights) in steps {
        let result = match weights {
            Some(w) => admin.query_one(sql, &[w]),
            None => admin.query_one(sql, &[]),
        };
        result.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // The steps' own calls name public: the admin's top-level names are its own
    // business. m3ret_model_import_file checks the caller through
    // m3ret_require_admin too.
    let err = expect_error(
        &mut admin,
        "SELECT public.m3ret_model_import_file('f', 'model.safetensors')",
    );
    assert!(err.contains("m3ret.model_dir, which is not set"), "{err}");
    assert_eq!(calls(&mut su), Vec::<(String, String)>::new());
    let looted: i64 = su
        .query_one("SELECT count(*) FROM evil.loot", &[])
        .unwrap()
        .get(0);
    assert_eq!(looted, 0, "weights were copied out");
    assert!(!is_superuser(&mut su, "sec_mallory_a"));
}

/// Issue 28, finding 6: a version number names one file for good, also after its
/// name was dropped, so an expression index pinned to it never goes stale.
#[test]
fn version_numbers_are_never_reused() {
    let db = Cluster::shared().database("sec_versions");
    let mut c = db.connect();
    let import = |c: &mut Client, w: &Vec<u8>| -> String {
        c.query_one("SELECT m3ret_model_import('x', $1)", &[w])
            .unwrap()
            .get(0)
    };
    assert_eq!(import(&mut c, &small_model(1)), "x@1");
    c.batch_execute(
        "CREATE TABLE scans (id int, data bytea);
         CREATE INDEX scans_pinned ON scans ((m3ret_embed_pinned(data, 'xray', 'x@1')::text))",
    )
    .unwrap();
    c.execute(
        "INSERT INTO scans VALUES (1, $1)",
        &[&fixture("pmnist_train_0000.png")],
    )
    .unwrap();
    c.query_one("SELECT m3ret_model_drop('x')", &[]).unwrap();
    assert_eq!(
        import(&mut c, &small_model(2)),
        "x@2",
        "a new file after a drop"
    );
    assert_eq!(
        import(&mut c, &small_model(1)),
        "x@3",
        "a dropped file imported again is a new version too"
    );
    c.query_one("SELECT m3ret_model_drop('x@3')", &[]).unwrap();
    assert_eq!(import(&mut c, &small_model(3)), "x@4");
    // The pinned index's version names nothing now: its expression fails loudly
    // instead of computing other vectors.
    let err = expect_error(
        &mut c,
        "INSERT INTO scans SELECT 2, data FROM scans WHERE id = 1",
    );
    assert!(err.contains("unknown model \"x@1\""), "{err}");
    let listed: Vec<String> = c
        .query("SELECT model FROM m3ret_model_list ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(listed, vec!["x@2", "x@4"]);
}

/// Issue 28, finding 4: a model file is checked at import against m3ret's limits
/// and its config against its tensors; nothing is stored, and the backend lives.
#[test]
fn oversized_or_inconsistent_model_files_are_refused_at_import() {
    use m3ret_e2e::models::model_claiming;
    let db = Cluster::shared().database("sec_model_bounds");
    let mut c = db.connect();
    let files: [(&str, Vec<u8>); 4] = [
        (
            "image size 65536 is over m3ret's limit of 512",
            model_claiming(1, 96, 2, 64, |c| c.input.image_size = 65536),
        ),
        (
            "the config describes an encoder of",
            model_claiming(1, 96, 2, 64, |c| c.encoder.depth = 13),
        ),
        (
            "the config describes an encoder of",
            model_claiming(1, 96, 2, 64, |c| {
                c.encoder.width = 384;
                c.encoder.heads = 6
            }),
        ),
        (
            "has shape",
            model_claiming(1, 96, 2, 64, |c| c.encoder.mlp_ratio = 2.0),
        ),
    ];
    for (expected, file) in files {
        let err = m3ret_e2e::error_message(
            &c.query_one("SELECT m3ret_model_import('big', $1)", &[&file])
                .unwrap_err(),
        );
        assert!(err.starts_with("model file refused: "), "{err}");
        assert!(err.contains(expected), "{expected}: {err}");
    }
    let stored: i64 = c
        .query_one("SELECT count(*) FROM m3ret_models", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);
    db.cluster.assert_no_backend_crashed();
}

/// The peak resident memory of a backend, from /proc (VmHWM).
fn peak_memory_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Issue 28, finding 3: a gzip bomb (1 GiB of zeros behind a header declaring
/// 1024^3 int16) is refused on its header, before it is inflated.
#[test]
fn a_gzip_bomb_is_refused_before_it_is_inflated() {
    use std::io::Write;
    let mut header = vec![0u8; 352];
    header[0..4].copy_from_slice(&348i32.to_le_bytes());
    for (i, d) in [3i16, 1024, 1024, 1024].iter().enumerate() {
        header[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    header[70..72].copy_from_slice(&4i16.to_le_bytes());
    header[108..112].copy_from_slice(&352f32.to_le_bytes());
    header[344..348].copy_from_slice(b"n+1\0");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&header).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    let db = Cluster::shared().database("sec_gzip_bomb");
    let mut c = db.connect();
    let pid = m3ret_e2e::backend_pid(&mut c);
    // Loading m3ret (and libtorch with it) into the backend first, with a small
    // study, so that what is measured is the bomb's cost alone.
    c.query_one(
        "SELECT m3ret_study_info($1::bytea)::text",
        &[&fixture("pmnist_train_0000.png")],
    )
    .unwrap();
    let before = peak_memory_kib(pid);
    let err = m3ret_e2e::error_message(
        &c.query_one("SELECT m3ret_study_info($1::bytea)::text", &[&bomb])
            .unwrap_err(),
    );
    assert!(err.contains("samples exceeds the limit"), "{err}");
    let grown_mib = (peak_memory_kib(pid) - before) / 1024;
    // The bomb itself arrives as a bytea of about 1 MiB; inflating it was 1 GiB.
    assert!(grown_mib < 64, "the backend's peak grew by {grown_mib} MiB");
}

/// Issue 28, finding 7: what a plain role or a second database must not reach.
#[test]
fn low_findings_hold() {
    let cluster = Cluster::start(&["shared_preload_libraries = 'm3ret'"]);
    let a = cluster.database("sec_low_a");
    let b = cluster.database("sec_low_b");
    let (mut ca, mut cb) = (a.connect(), b.connect());
    let model = small_model(1);
    ca.query_one("SELECT m3ret_model_import('secret', $1)", &[&model])
        .unwrap();
    let png = fixture("pmnist_train_0000.png");
    ca.query_one("SELECT m3ret_embed($1::bytea, 'xray')", &[&png])
        .unwrap();
    // Database b sees none of a's models in the server, and a row claiming a's
    // sha256 without its weights embeds nothing.
    let listed: serde_json::Value = cb
        .query_one(
            "SELECT m3ret_runtime_info()->'server'->'models_loaded'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(listed, serde_json::json!([]));
    let sha: String = ca
        .query_one("SELECT sha256 FROM m3ret_models", &[])
        .unwrap()
        .get(0);
    cb.execute(
        "INSERT INTO m3ret_models (name, version, sha256, config, dims, weights, is_default)
         VALUES ('forged', 1, $1, '{}', 192, '\\x00', true)",
        &[&sha],
    )
    .unwrap();
    let err = m3ret_e2e::error_message(
        &cb.query_one("SELECT m3ret_embed($1::bytea, 'xray')", &[&png])
            .unwrap_err(),
    );
    assert!(err.contains("its weights have sha256"), "{err}");
    // Distances of legal extreme vectors are numbers.
    let (cos, l2, unit): (f64, f64, String) = ca
        .query_one(
            "SELECT '[3e38,3e38]'::embedding <=> '[3e38,3e38]', '[3e38,3e38]'::embedding <-> '[-3e38,-3e38]',
                    l2_normalize('[3e38,3e38]'::embedding)::text",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(cos, 0.0);
    assert!(l2.is_finite() && l2 > 8e38, "{l2}");
    assert_ne!(unit, "[0,0]");
    let tiny: f64 = ca
        .query_one("SELECT '[1e-30,1e-30]'::embedding <=> '[1e-30,1e-30]'", &[])
        .unwrap()
        .get(0);
    assert!(tiny.abs() < 1e-9, "{tiny}");
    // A plain role cannot leave the server, and m3ret_hnsw_check names a table as
    // what it is.
    ca.batch_execute(
        "DROP ROLE IF EXISTS sec_plain_low; CREATE ROLE sec_plain_low LOGIN;
         CREATE TABLE t (id int, emb embedding(2));",
    )
    .unwrap();
    let mut plain = connect_as(&a, "sec_plain_low");
    let err = expect_error(&mut plain, "SET m3ret.inference = backend");
    assert!(err.contains("permission denied"), "{err}");
    let err = expect_error(&mut ca, "SELECT * FROM m3ret_hnsw_check('t'::regclass)");
    assert!(err.contains("\"t\" is not an index"), "{err}");
    // Threads are capped at the cores, in a backend-mode session.
    ca.batch_execute("SET m3ret.inference = backend; SET m3ret.threads = 64")
        .unwrap();
    ca.query_one("SELECT m3ret_embed($1::bytea, 'xray')", &[&png])
        .unwrap();
    let threads: i64 = ca
        .query_one("SELECT (m3ret_runtime_info()->>'threads')::int8", &[])
        .unwrap()
        .get(0);
    let cores = std::thread::available_parallelism().unwrap().get() as i64;
    assert_eq!(threads, 64.min(cores));
    // A path outside model_dir is refused before the file system is asked.
    let dir = tempfile::tempdir().unwrap();
    ca.batch_execute(&format!("SET m3ret.model_dir = '{}'", dir.path().display()))
        .unwrap();
    for path in ["../../etc/passwd", "../../no/such/file", "/etc/passwd"] {
        let err = expect_error(
            &mut ca,
            &format!("SELECT m3ret_model_import_file('f', '{path}')"),
        );
        assert!(err.contains("is outside m3ret.model_dir"), "{path}: {err}");
    }
    cluster.assert_no_backend_crashed();
}

/// Issue 28, finding 7: a 2-D bytea[] is refused, not read flattened.
#[test]
fn a_two_dimensional_bytea_array_is_refused() {
    let db = Cluster::shared().database("sec_two_dims");
    let mut c = db.connect();
    c.query_one("SELECT m3ret_model_import('test', $1)", &[&small_model(1)])
        .unwrap();
    let png = fixture("pmnist_train_0000.png");
    for sql in [
        "SELECT m3ret_study_info(ARRAY[[$1::bytea, $1], [$1, $1]])::text",
        "SELECT m3ret_dicom_meta(ARRAY[[$1::bytea, $1], [$1, $1]])::text",
        "SELECT m3ret_embed(ARRAY[[$1::bytea, $1], [$1, $1]], 'xray')::text",
        "SELECT count(*)::text FROM m3ret_embed_batch(ARRAY[[$1::bytea, $1], [$1, $1]], 'xray')",
    ] {
        let err = m3ret_e2e::error_message(&c.query_one(sql, &[&png]).unwrap_err());
        assert!(err.contains("2-dimensional bytea[]"), "{sql}: {err}");
    }
    let n: String = c
        .query_one(
            "SELECT count(*)::text FROM m3ret_embed_batch(ARRAY[$1::bytea, $1], 'xray')",
            &[&png],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, "2", "one dimension still reads");
    db.cluster.assert_no_backend_crashed();
}
