//! The model server: clusters with `shared_preload_libraries = 'm3ret'`, where a
//! background worker runs one process that holds libtorch and the models for every
//! session (m3ret.inference = auto then means server).

use m3ret_e2e::models::{reference_embedding, small_model};
use m3ret_e2e::wire::Vector;
use m3ret_e2e::{
    backend_pid, error_message, expect_error, fixture, fixture_series, max_abs_diff, Cluster,
    FIXTURES_BY_MODALITY,
};
use postgres::Client;
use serde_json::Value;

const PRELOAD: &str = "shared_preload_libraries = 'm3ret'";

/// A preloaded cluster with database `name` and the small test model as `test@1`.
fn preloaded(name: &str, extra: &[&str]) -> (Cluster, Vec<u8>) {
    let mut settings = vec![PRELOAD];
    settings.extend_from_slice(extra);
    let cluster = Cluster::start(&settings);
    let model = small_model(1);
    {
        let db = cluster.database(name);
        let mut c = db.connect();
        c.query_one("SELECT m3ret_model_import('test', $1)", &[&model])
            .unwrap();
    }
    (cluster, model)
}

fn connect(cluster: &Cluster, name: &str) -> Client {
    cluster.existing_database(name).connect()
}

fn info(c: &mut Client) -> Value {
    let text: String = c
        .query_one("SELECT m3ret_runtime_info()::text", &[])
        .unwrap()
        .get(0);
    serde_json::from_str(&text).unwrap()
}

/// Polls `check` until it holds. No deadline, as `Cluster::wait_for_replay_of`: a
/// server that stops answering fails the queries inside `check`.
fn wait_until(mut check: impl FnMut() -> bool) {
    while !check() {
        std::thread::yield_now();
    }
}

/// The server's counters, once it answers (it may still be starting).
fn server_status(c: &mut Client) -> Value {
    let mut status = Value::Null;
    wait_until(|| {
        status = info(c)["server"].clone();
        status.get("pid").is_some()
    });
    status
}

fn embed(c: &mut Client, data: &[u8], modality: &str) -> Result<Vec<f32>, String> {
    c.query_one("SELECT m3ret_embed($1::bytea, $2)", &[&data, &modality])
        .map(|r| r.get::<_, Vector>(0).0)
        .map_err(|e| error_message(&e))
}

#[test]
fn the_server_embeds_as_the_backend_does() {
    let (cluster, model) = preloaded("srv_same", &[]);
    let mut c = connect(&cluster, "srv_same");
    assert_eq!(info(&mut c)["inference"], "server");
    for (file, modality) in FIXTURES_BY_MODALITY {
        let data = fixture(file);
        let served = embed(&mut c, &data, modality).unwrap();
        c.batch_execute("SET m3ret.inference = backend").unwrap();
        let local = embed(&mut c, &data, modality).unwrap();
        c.batch_execute("RESET m3ret.inference").unwrap();
        let reference = reference_embedding(&model, &[&data], modality);
        assert!(
            max_abs_diff(&served, &local) < 1e-5,
            "{file}: server and backend differ"
        );
        assert!(
            max_abs_diff(&served, &reference) < 1e-5,
            "{file}: server and core differ"
        );
    }
    // A DICOM series (bytea[]) and a batch with a NULL.
    let series = fixture_series();
    let served: Vector = c
        .query_one("SELECT m3ret_embed($1::bytea[], 'auto')", &[&series])
        .unwrap()
        .get(0);
    let slices: Vec<&[u8]> = series.iter().map(|b| b.as_slice()).collect();
    let reference = reference_embedding(&model, &slices, "auto");
    assert!(max_abs_diff(&served.0, &reference) < 1e-5);
    let batch: Vec<Option<Vec<u8>>> = vec![
        Some(fixture("pmnist_train_0000.png")),
        None,
        Some(fixture("covidrepo_0637.jpg")),
    ];
    let rows = c
        .query(
            "SELECT ord, embedding FROM m3ret_embed_batch($1::bytea[], 'xray') ORDER BY ord",
            &[&batch],
        )
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
        [1, 3]
    );
    let first: Vector = rows[0].get(1);
    let alone = embed(&mut c, &fixture("pmnist_train_0000.png"), "xray").unwrap();
    assert!(max_abs_diff(&first.0, &alone) < 1e-5);

    // Bad input: the same ERRORs in both modes.
    let bad_batch: Vec<Vec<u8>> = vec![fixture("pmnist_train_0000.png"), b"not an image".to_vec()];
    let mut errors = Vec::new();
    for mode in ["server", "backend"] {
        c.batch_execute(&format!("SET m3ret.inference = {mode}"))
            .unwrap();
        let one = embed(&mut c, b"not an image", "xray").unwrap_err();
        let batch = error_message(
            &c.query(
                "SELECT * FROM m3ret_embed_batch($1::bytea[], 'xray')",
                &[&bad_batch],
            )
            .unwrap_err(),
        );
        let modality = embed(&mut c, &fixture("pmnist_train_0000.png"), "xary").unwrap_err();
        errors.push((one, batch, modality));
    }
    assert_eq!(errors[0], errors[1]);
    assert!(
        errors[0]
            .0
            .starts_with("cannot read the study: unrecognised format"),
        "{}",
        errors[0].0
    );
    assert!(
        errors[0].1.starts_with("cannot read study 2: "),
        "{}",
        errors[0].1
    );
    assert!(errors[0].2.contains("xary"), "{}", errors[0].2);
    c.batch_execute("RESET m3ret.inference").unwrap();

    let status = server_status(&mut c);
    let loaded = status["models_loaded"].as_array().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0]["model"], "test@1");
    assert_eq!(
        status["model_loads"], 1,
        "one hand-over for all those requests"
    );
    // 6 files, 1 series, 1 batch, 1 alone; unreadable studies never reach the model.
    assert_eq!(status["requests"], 9, "{status}");
    assert_eq!(status["restarts"], 0);
    // Where the server's time goes, per study: both parts were measured.
    for part in ["mean_decode_ms_per_study", "mean_forward_ms_per_study"] {
        assert!(status[part].as_f64().unwrap() > 0.0, "{part}: {status}");
    }
    cluster.assert_no_backend_crashed();
}

/// Private (not shared) anonymous memory of a backend, in kB.
fn private_anon_kb(pid: i32) -> i64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    smaps
        .lines()
        .find_map(|l| l.strip_prefix("Private_Dirty:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn in_server_mode_a_backend_holds_no_model() {
    let (cluster, _) = preloaded("srv_memory", &[]);
    // The shipped model, not the 1 MB test model: memory as users will see it.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/m3ret-default.safetensors");
    let shipped = std::fs::read(shipped).unwrap();
    {
        let mut c = connect(&cluster, "srv_memory");
        c.query_one("SELECT m3ret_model_import('shipped', $1)", &[&shipped])
            .unwrap();
        c.batch_execute("SELECT m3ret_model_set_default('shipped')")
            .unwrap();
    }
    let mut sessions: Vec<(Client, i32)> = (0..3)
        .map(|_| {
            let mut c = connect(&cluster, "srv_memory");
            let pid = backend_pid(&mut c);
            (c, pid)
        })
        .collect();
    // Session 0 stays idle, 1 embeds through the server, 2 in its own process.
    sessions[2]
        .0
        .batch_execute("SET m3ret.inference = backend")
        .unwrap();
    for (c, _) in &mut sessions[1..] {
        for (file, modality) in FIXTURES_BY_MODALITY {
            embed(c, &fixture(file), modality).unwrap();
        }
    }
    let idle = private_anon_kb(sessions[0].1);
    let served = private_anon_kb(sessions[1].1) - idle;
    let local = private_anon_kb(sessions[2].1) - idle;
    assert!(
        served * 4 < local,
        "a session embedding through the server holds {served} kB more than an idle one; \
         one embedding in its own process {local} kB"
    );
}

/// Whether a process has libtorch_cuda.so mapped.
fn maps_libtorch_cuda(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .contains("libtorch_cuda.so")
}

/// The extension does not link libtorch_cuda: the postmaster, and every process
/// forked from it, would carry what its CUDA libraries set up at load (about 120
/// MiB). Only a process that runs models loads it, and only where an NVIDIA
/// driver is; there libtorch's CUDA hooks must be libtorch_cuda's.
#[test]
fn only_a_process_that_runs_models_loads_cuda_support() {
    let (cluster, _) = preloaded("srv_cuda", &[]);
    let mut served = connect(&cluster, "srv_cuda");
    let mut local = connect(&cluster, "srv_cuda");
    local
        .batch_execute("SET m3ret.inference = backend")
        .unwrap();
    for c in [&mut served, &mut local] {
        embed(c, &fixture("pmnist_train_0000.png"), "xray").unwrap();
    }
    let (served_pid, local_pid) = (backend_pid(&mut served), backend_pid(&mut local));
    let server = server_status(&mut served);
    let server_pid = server["pid"].as_i64().unwrap() as i32;
    assert!(
        !maps_libtorch_cuda(cluster.postmaster_pid()),
        "the postmaster"
    );
    assert!(
        !maps_libtorch_cuda(served_pid),
        "a backend embedding through the server"
    );

    let expected = if m3ret_core::runtime::LIBTORCH_CUDA.is_empty() {
        "none in this libtorch (CPU-only)"
    } else if !m3ret_core::runtime::nvidia_driver_present() {
        "not loaded: no NVIDIA driver on this machine"
    } else {
        "loaded"
    };
    assert_eq!(server["cuda_support"], expected);
    assert_eq!(info(&mut local)["cuda_support"], expected);
    for (name, pid) in [
        ("the server", server_pid),
        ("a backend-mode session", local_pid),
    ] {
        assert_eq!(maps_libtorch_cuda(pid), expected == "loaded", "{name}");
    }
}

/// A role that may not read the weights embeds in server mode, and is the first to
/// need the model: its backend hands the model to the server, reading it with the
/// registry owner's rights, and gives the role its own rights back.
#[test]
fn a_plain_role_embeds_through_the_server() {
    let (cluster, model) = preloaded("srv_plain", &[]);
    connect(&cluster, "srv_plain")
        .batch_execute("CREATE ROLE carol LOGIN; GRANT USAGE ON SCHEMA public TO carol")
        .unwrap();
    let mut carol = Client::connect(
        &format!(
            "host=127.0.0.1 port={} user=carol dbname=srv_plain",
            cluster.port()
        ),
        postgres::NoTls,
    )
    .unwrap();
    assert_eq!(info(&mut carol)["inference"], "server");
    let png = fixture("pmnist_train_0000.png");
    let v = embed(&mut carol, &png, "xray").unwrap();
    assert!(max_abs_diff(&v, &reference_embedding(&model, &[&png], "xray")) < 1e-5);
    assert_eq!(server_status(&mut carol)["model_loads"], 1);
    let me: String = carol
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(me, "carol");
    let err = expect_error(&mut carol, "SELECT weights FROM m3ret_models");
    assert!(
        err.contains("permission denied for table m3ret_models"),
        "{err}"
    );
    cluster.assert_no_backend_crashed();
}

#[test]
fn a_new_default_and_a_dropped_model_take_effect_at_once() {
    let (cluster, first) = preloaded("srv_models", &[]);
    let mut c = connect(&cluster, "srv_models");
    let png = fixture("pmnist_train_0000.png");
    let with_first = embed(&mut c, &png, "xray").unwrap();
    assert!(max_abs_diff(&with_first, &reference_embedding(&first, &[&png], "xray")) < 1e-5);
    let second = small_model(2);
    c.query_one("SELECT m3ret_model_import('other', $1)", &[&second])
        .unwrap();
    c.batch_execute("SELECT m3ret_model_set_default('other')")
        .unwrap();
    // Another session, same server: the new default at once.
    let mut d = connect(&cluster, "srv_models");
    let with_second = embed(&mut d, &png, "xray").unwrap();
    assert!(max_abs_diff(&with_second, &reference_embedding(&second, &[&png], "xray")) < 1e-5);
    c.batch_execute("SELECT m3ret_model_drop('test')").unwrap();
    let err = d
        .query_one("SELECT m3ret_embed($1::bytea, 'xray', 'test')", &[&png])
        .map(|_| ())
        .map_err(|e| error_message(&e))
        .unwrap_err();
    assert!(err.starts_with("unknown model \"test\""), "{err}");
    let models: Vec<String> = server_status(&mut d)["models_loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap().to_string())
        .collect();
    assert!(models.contains(&"other@1".to_string()), "{models:?}");
}

#[test]
fn a_crashed_server_ends_no_session() {
    let (cluster, _) = preloaded("srv_crash", &[]);
    let mut watcher = connect(&cluster, "srv_crash");
    let victim = server_status(&mut watcher)["pid"].as_i64().unwrap() as i32;
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sessions: Vec<_> = (0..4)
        .map(|i| {
            let mut c = connect(&cluster, "srv_crash");
            let restarted = restarted.clone();
            std::thread::spawn(move || {
                let png = fixture(FIXTURES_BY_MODALITY[i % 2].0);
                let (mut errors, mut after_restart) = (Vec::new(), 0);
                // Embed until two calls succeeded after the restart.
                while after_restart < 2 {
                    let seen_restart = restarted.load(std::sync::atomic::Ordering::SeqCst);
                    match embed(&mut c, &png, "xray") {
                        Ok(v) => {
                            assert_eq!(v.len(), 192);
                            after_restart += seen_restart as usize;
                        }
                        Err(e) => errors.push(e),
                    }
                }
                // The session itself lived through it.
                let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
                assert_eq!(one, 1);
                errors
            })
        })
        .collect();
    wait_until(|| server_status(&mut watcher)["requests"].as_u64().unwrap() >= 8);
    unsafe { libc::kill(victim, libc::SIGSEGV) };
    wait_until(|| {
        let status = server_status(&mut watcher);
        status["restarts"] == 1 && status["pid"] != victim
    });
    restarted.store(true, std::sync::atomic::Ordering::SeqCst);
    for session in sessions {
        for error in session.join().unwrap() {
            assert!(
                error.contains("m3ret model server"),
                "unexpected error: {error}"
            );
        }
    }
    cluster.assert_no_backend_crashed();
    assert!(
        cluster.log().contains(&format!(
            "m3ret model server (pid {victim}) was killed by signal 11 (SIGSEGV)"
        )),
        "{}",
        cluster.log()
    );
}

/// The wait event of backend `pid`, once it waits on the model server.
fn wait_for_server_wait(watcher: &mut Client, pid: i32) {
    wait_until(|| {
        let row = watcher
            .query_one(
                "SELECT coalesce(wait_event_type, '') FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap();
        row.get::<_, String>(0) == "Extension"
    });
}

#[test]
fn sessions_share_a_forward_pass_and_abandoned_requests_are_dropped() {
    // A batch closes when it holds 4 studies (the 60 s wait is only an upper bound),
    // so a request alone waits: long enough to cancel it.
    let (cluster, _) = preloaded(
        "srv_batch",
        &["m3ret.batch_wait_ms = 60000", "m3ret.batch_size = 4"],
    );
    let mut watcher = connect(&cluster, "srv_batch");
    let png = fixture("pmnist_train_0000.png");
    // Four sessions at once: one forward pass.
    let sessions: Vec<_> = (0..4)
        .map(|_| {
            let mut c = connect(&cluster, "srv_batch");
            let png = png.clone();
            std::thread::spawn(move || embed(&mut c, &png, "xray").unwrap())
        })
        .collect();
    let vectors: Vec<Vec<f32>> = sessions.into_iter().map(|s| s.join().unwrap()).collect();
    assert!(vectors.iter().all(|v| max_abs_diff(v, &vectors[0]) < 1e-5));
    let status = server_status(&mut watcher);
    assert_eq!(
        (status["batches"].as_u64(), status["studies"].as_u64()),
        (Some(1), Some(4)),
        "{status}"
    );

    // Alone, a request waits; each way of giving up ends the wait at once.
    let mut lone = connect(&cluster, "srv_batch");
    let pid = backend_pid(&mut lone);
    let waiting = {
        let png = png.clone();
        std::thread::spawn(move || {
            let err = embed(&mut lone, &png, "xray").unwrap_err();
            (lone, err)
        })
    };
    wait_for_server_wait(&mut watcher, pid);
    watcher
        .query_one("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap();
    let (mut lone, err) = waiting.join().unwrap();
    assert_eq!(err, "canceling statement due to user request");
    lone.batch_execute("SET statement_timeout = 300").unwrap();
    assert_eq!(
        embed(&mut lone, &png, "xray").unwrap_err(),
        "canceling statement due to statement timeout"
    );
    lone.batch_execute("RESET statement_timeout; SET m3ret.server_timeout = 300")
        .unwrap();
    let err = embed(&mut lone, &png, "xray").unwrap_err();
    assert_eq!(
        err,
        "the m3ret model server did not answer within m3ret.server_timeout (300 ms)"
    );
    // The three abandoned requests and this one make a batch of 4: the server
    // answers this one and drops the others.
    lone.batch_execute("RESET m3ret.server_timeout").unwrap();
    let v = embed(&mut lone, &png, "xray").unwrap();
    assert!(max_abs_diff(&v, &vectors[0]) < 1e-5);
    let status = server_status(&mut watcher);
    assert_eq!(status["abandoned_requests"], 3, "{status}");
    assert_eq!(status["batches"], 2, "{status}");
    cluster.assert_no_backend_crashed();
}

#[test]
fn a_server_that_cannot_start_gives_a_clear_error() {
    // No machine has a hundred CUDA devices: the server exits at start, again and again.
    let (cluster, _) = preloaded("srv_down", &["m3ret.device = 'cuda:99'"]);
    wait_until(|| {
        cluster
            .log()
            .contains("exited with code 1; starting it again")
    });
    let mut c = connect(&cluster, "srv_down");
    c.batch_execute("SET m3ret.server_connect_timeout = 0")
        .unwrap();
    let err = embed(&mut c, &fixture("pmnist_train_0000.png"), "xray").unwrap_err();
    assert!(
        err.starts_with("the m3ret model server is not running"),
        "{err}"
    );
    assert!(err.contains("SET m3ret.inference = backend"), "{err}");
    let status = info(&mut c)["server"].clone();
    assert!(
        status["error"].as_str().unwrap().contains("not running"),
        "{status}"
    );
    // The session can still embed in its own process.
    c.batch_execute("SET m3ret.inference = backend; SET m3ret.device = cpu")
        .unwrap();
    assert_eq!(
        embed(&mut c, &fixture("pmnist_train_0000.png"), "xray")
            .unwrap()
            .len(),
        192
    );
    assert!(
        cluster.log().contains("invalid device") || cluster.log().contains("CUDA device"),
        "{}",
        cluster.log()
    );
    cluster.assert_no_backend_crashed();
}

#[test]
fn a_standby_embeds_through_its_own_server() {
    let (primary, model) = preloaded("srv_standby", &[]);
    let mut p = connect(&primary, "srv_standby");
    let primary_server = server_status(&mut p)["pid"].clone();
    let standby = Cluster::standby_of(&primary);
    standby.wait_for_replay_of(&primary);
    let mut s = connect(&standby, "srv_standby");
    let data = fixture("covidrepo_0637.jpg");
    let v = embed(&mut s, &data, "xray").unwrap();
    assert!(max_abs_diff(&v, &reference_embedding(&model, &[&data], "xray")) < 1e-5);
    let status = server_status(&mut s);
    assert_ne!(status["pid"], primary_server, "the standby's own server");
    assert_eq!(status["models_loaded"][0]["model"], "test@1");
    standby.assert_no_backend_crashed();
}

#[test]
fn without_preloading_sessions_embed_in_their_own_process() {
    let db = Cluster::shared().database("srv_none");
    let mut c = db.connect();
    c.query_one("SELECT m3ret_model_import('test', $1)", &[&small_model(1)])
        .unwrap();
    assert_eq!(info(&mut c)["inference"], "backend");
    assert_eq!(info(&mut c)["server_registered"], false);
    assert_eq!(
        embed(&mut c, &fixture("pmnist_train_0000.png"), "xray")
            .unwrap()
            .len(),
        192
    );
    // Asking for the server where there is none: a clear ERROR, no hang.
    c.batch_execute("SET m3ret.inference = server; SET m3ret.server_connect_timeout = 0")
        .unwrap();
    let err = expect_error(
        &mut c,
        "SELECT m3ret_embed(pg_read_binary_file('/dev/null'), 'xray')",
    );
    assert!(
        err.starts_with("the m3ret model server is not running"),
        "{err}"
    );
}
