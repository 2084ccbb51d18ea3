//! m3ret-train end to end on real files, on the CPU, in minutes: pretraining whose
//! loss falls, resuming after a kill, export, eval with its baselines, bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_m3ret-train"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared corpus: `$M3RET_SHARED_DATA`, else `../shared/data` beside the
/// repository. The tests fail without it (never pass by skipping).
fn shared_data() -> PathBuf {
    let dir = match std::env::var_os("M3RET_SHARED_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => repo().join("../shared/data"),
    };
    assert!(
        dir.join("manifest.csv").exists(),
        "the shared corpus is missing: {} has no manifest.csv (see the README)",
        dir.display()
    );
    dir
}

/// A manifest of real 2D X-rays and capsule endoscopy images of the shared corpus,
/// 8 per class.
fn manifest(dir: &Path) -> PathBuf {
    let mut rows = vec!["path,modality,region,cls,kind,split".to_string()];
    let shared = shared_data();
    for (folder, modality, region) in [
        ("xray/chest_covid19", "xray", "chest"),
        ("xray/chest_pneumonia-pediatric", "xray", "chest"),
        ("endoscopy/capsule-gi_normal", "endoscopy", "abdomen"),
        ("endoscopy/capsule-gi_bleeding", "endoscopy", "abdomen"),
    ] {
        let mut files: Vec<_> = std::fs::read_dir(shared.join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let cls = folder.split('/').nth(1).unwrap();
        for (i, f) in files.iter().take(8).enumerate() {
            let split = if i < 6 { "train" } else { "test" };
            rows.push(format!(
                "{},{modality},{region},{cls},image2d,{split}",
                f.display()
            ));
        }
    }
    let path = dir.join("manifest.csv");
    std::fs::write(&path, rows.join("\n") + "\n").unwrap();
    path
}

/// Fast settings: tiny preset cut to 2 blocks, 64 x 64 inputs, small batches.
fn pretrain_args(method: &str, manifest: &Path, out: &Path, steps: u32) -> Vec<String> {
    [
        "pretrain",
        "--method",
        method,
        "--preset",
        "tiny",
        "--depth",
        "2",
        "--image-size",
        "64",
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        &steps.to_string(),
        "--batch-2d",
        "8",
        "--device",
        "cpu",
        // f32: the tests compare losses of separate runs step for step, and bf16's
        // rounding turns the last-bit differences of oneDNN's kernels between two
        // runs into differences of 1e-4 in the loss (seen in a resumed run).
        "--precision",
        "f32",
        "--local-views-2d",
        "2",
        "--workers",
        "2",
        "--seed",
        "7",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Resumes the SimDINO run in `out` on the CPU in f32 (its other settings are its own).
fn resume_args(manifest: &Path, out: &Path) -> Vec<String> {
    [
        "pretrain",
        "--method",
        "simdino",
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--resume",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--precision",
        "f32",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "m3ret-train failed:\n{text}");
    text
}

/// (group, loss) per step; for a step logged twice (before a kill and after resuming), the last.
fn losses(out: &Path) -> std::collections::BTreeMap<i64, (String, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["step"].as_i64().unwrap(),
                (
                    v["group"].as_str().unwrap().to_string(),
                    v["loss"].as_f64().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn mae_pretraining_loss_falls_and_exports_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path());
    let out = dir.path().join("mae");
    let mut args = pretrain_args("mae", &m, &out, 40);
    args.extend([
        "--lr".into(),
        "2e-3".into(),
        "--checkpoint-every".into(),
        "20".into(),
    ]);
    run(bin().args(&args));
    let l = losses(&out);
    assert_eq!(l.len(), 40);
    // Groups alternate (endoscopy/2d, xray/2d): compare each group's first and last losses.
    for group in ["endoscopy/2d", "xray/2d"] {
        let g: Vec<f64> = l
            .values()
            .filter(|(n, _)| n == group)
            .map(|(_, v)| *v)
            .collect();
        let (first, last) = (
            g[..3].iter().sum::<f64>() / 3.0,
            g[g.len() - 3..].iter().sum::<f64>() / 3.0,
        );
        eprintln!("{group}: MAE loss {first:.4} -> {last:.4}");
        assert!(
            last < 0.7 * first,
            "{group}: MAE loss {first:.4} -> {last:.4}"
        );
    }
    assert!(out.join("loss.png").exists());
    // The exported model embeds exactly as the checkpoint's encoder does.
    let f32_model = m3ret_core::model::Embedder::from_bytes(
        &std::fs::read(out.join("model.safetensors")).unwrap(),
        tch::Device::Cpu,
    )
    .unwrap();
    let checkpoint =
        m3ret_core::model::ModelFile::from_path(&out.join("checkpoint/model.safetensors")).unwrap();
    let from_checkpoint =
        m3ret_core::model::Embedder::from_file(&checkpoint, tch::Device::Cpu).unwrap();
    let probe = tch::Tensor::rand([2, 3, 4, 64, 64], (tch::Kind::Float, tch::Device::Cpu));
    assert!(
        f32_model
            .features_batch(&probe)
            .unwrap()
            .equal(&from_checkpoint.features_batch(&probe).unwrap()),
        "export changed the encoder"
    );
    // An f16 export loads and embeds alike.
    let half = dir.path().join("half.safetensors");
    run(bin().args([
        "export",
        "--checkpoint",
        out.to_str().unwrap(),
        "--out",
        half.to_str().unwrap(),
        "--dtype",
        "f16",
    ]));
    let f16_model =
        m3ret_core::model::Embedder::from_bytes(&std::fs::read(&half).unwrap(), tch::Device::Cpu)
            .unwrap();
    let x = tch::Tensor::rand([1, 3, 4, 64, 64], (tch::Kind::Float, tch::Device::Cpu));
    let (a, b) = (
        f32_model.features_batch(&x).unwrap(),
        f16_model.features_batch(&x).unwrap(),
    );
    let cos = (&a * &b).sum(tch::Kind::Float).double_value(&[]);
    assert!(cos > 0.999, "f32 vs f16 export cosine {cos}");
    assert!(
        std::fs::metadata(&half).unwrap().len()
            < std::fs::metadata(out.join("model.safetensors"))
                .unwrap()
                .len()
                * 6
                / 10
    );
}

#[test]
fn simdino_resumes_after_a_kill_as_if_never_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path());
    // The reference: 24 steps in one go.
    let straight = dir.path().join("straight");
    let mut args = pretrain_args("simdino", &m, &straight, 24);
    args.extend(["--checkpoint-every".into(), "2".into()]);
    run(bin().args(&args));
    // The same run, killed once a checkpoint at step 4 or later exists, then resumed.
    let killed = dir.path().join("killed");
    let mut args = pretrain_args("simdino", &m, &killed, 24);
    args.extend(["--checkpoint-every".into(), "2".into()]);
    let mut child = bin()
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = killed.join("checkpoint/state.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let step = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["step"].as_i64());
        if step.is_some_and(|s| s >= 4) || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let resumed_from: i64 =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&state).unwrap())
            .unwrap()["step"]
            .as_i64()
            .unwrap();
    assert!(
        (4..24).contains(&resumed_from),
        "killed too late: checkpoint at {resumed_from}"
    );
    let text = run(bin().args(resume_args(&m, &killed)));
    assert!(
        text.contains(&format!("resuming at step {resumed_from} of 24")),
        "{text}"
    );
    let final_state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(final_state["step"], 24);
    let (a, b) = (losses(&straight), losses(&killed));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for step in resumed_from + 1..=24 {
        let (x, y) = (a[&step].1, b[&step].1);
        assert!(
            (x - y).abs() < 1e-4 * (1.0 + x.abs()),
            "step {step}: {x} vs {y} after resuming"
        );
    }
}

#[test]
fn the_decode_cache_decodes_each_study_once_and_changes_no_batch() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path());
    // 12 steps of 8 draws over 32 studies: most draws are studies seen before.
    let train = |name: &str, cache_mib: &str| {
        let out = dir.path().join(name);
        let mut args = pretrain_args("mae", &m, &out, 12);
        args.extend(["--decode-cache-mib".into(), cache_mib.into()]);
        let text = run(bin().args(&args));
        (text, losses(&out))
    };
    let (text, cached) = train("cached", "64");
    let (plain_text, plain) = train("plain", "0");
    let line = text
        .lines()
        .find(|l| l.starts_with("decode cache: "))
        .unwrap_or_else(|| panic!("no cache line in:\n{text}"));
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // "decode cache: K 2D studies kept (M MiB); D decodes, R reuses"
    let (kept, decodes, reuses) = (numbers[0], numbers[3], numbers[4]);
    // The studies drawn at least once (random draws may miss one or two of the 32).
    assert!((24..=32).contains(&kept), "{line}");
    assert_eq!(decodes + reuses, 12 * 8, "every draw counted: {line}");
    // Each study is decoded once, but for two workers drawing a new one at the same time.
    assert!((kept..=2 * kept).contains(&decodes), "{line}");
    assert!(!plain_text.contains("decode cache: "), "{plain_text}");
    // Kept tensors are the decoded ones: the run is the same step for step.
    assert_eq!(cached.len(), 12);
    for (step, (group, loss)) in &plain {
        let (g, l) = &cached[step];
        assert_eq!(g, group);
        assert!(
            (l - loss).abs() < 1e-4 * (1.0 + loss.abs()),
            "step {step}: {l} with the cache, {loss} without"
        );
    }
}

#[test]
fn eval_reports_model_and_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path());
    let out = dir.path().join("run");
    run(bin().args(pretrain_args("simdino", &m, &out, 4)));
    let eval = dir.path().join("eval");
    let text = run(bin().args([
        "eval",
        "--model",
        out.join("model.safetensors").to_str().unwrap(),
        "--manifest",
        m.to_str().unwrap(),
        "--out",
        eval.to_str().unwrap(),
        "--device",
        "cpu",
    ]));
    assert!(text.contains("| xray | "), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval.join("report.json")).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let task = |name: &str| {
        results
            .iter()
            .find(|r| r["task"] == name)
            .unwrap_or_else(|| panic!("no task {name}: {report}"))
    };
    for name in ["xray", "endoscopy"] {
        for method in ["m3ret", "raw_pixels", "random_init"] {
            let m = &task(name)[method];
            assert!(m["queries"].as_u64().unwrap() > 0, "{name} {method}");
            let r1 = m["recall_at_1"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&r1));
            assert!(m["mean_rank"].as_f64().unwrap() >= 1.0);
        }
    }
    // X-ray and endoscopy share no region: no cross-modal task between them.
    assert!(results.iter().all(|r| r["kind"] == "in-modality"));
    assert!(eval.join("montage.png").exists() && eval.join("report.md").exists());
    // The linear probe runs on the same manifest's splits.
    let probe = run(bin().args([
        "probe",
        "--model",
        out.join("model.safetensors").to_str().unwrap(),
        "--manifest",
        m.to_str().unwrap(),
        "--device",
        "cpu",
    ]));
    assert!(probe.contains("| xray | 2 |"), "{probe}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fail = |args: &[&str]| {
        let out = bin().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("missing.csv");
    let err = fail(&[
        "pretrain",
        "--method",
        "mae",
        "--manifest",
        missing.to_str().unwrap(),
        "--out",
        "/tmp/x",
        "--steps",
        "1",
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("missing.csv") && err.contains("No such file"),
        "{err}"
    );
    let m = manifest(dir.path());
    let err = fail(&[
        "pretrain",
        "--method",
        "mae",
        "--manifest",
        m.to_str().unwrap(),
        "--out",
        "/tmp/x",
        "--steps",
        "1",
        "--exclude-modality",
        "xray",
        "--exclude-modality",
        "endoscopy",
        "--device",
        "cpu",
    ]);
    assert!(err.contains("no training items"), "{err}");
    let err = fail(&[
        "pretrain",
        "--method",
        "mae",
        "--manifest",
        m.to_str().unwrap(),
        "--out",
        "/tmp/x",
        "--steps",
        "1",
        "--exclude-modality",
        "pet",
    ]);
    assert!(err.contains("unknown modality \"pet\""), "{err}");
    // A row that cannot be decoded: skipped with a warning, or fatal with --strict.
    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"not an image").unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, format!("path,modality,region,cls,kind,split\n{},xray,chest,a,image2d,train\n{},xray,chest,a,image2d,train\n", garbage.display(), repo().join("fixtures/pmnist_train_0000.png").display())).unwrap();
    let out = dir.path().join("bad-run");
    let mut args = pretrain_args("mae", &bad, &out, 2);
    let at = args.iter().position(|a| a == "--batch-2d").unwrap();
    args[at + 1] = "2".into();
    let text = run(bin().args(&args));
    assert!(
        text.contains("warning: skipping")
            && text.contains("garbage.png")
            && text.contains("could not be decoded and were skipped"),
        "{text}"
    );
    args.push("--strict".into());
    let strict = bin().args(&args).output().unwrap();
    assert!(!strict.status.success());
    assert!(
        String::from_utf8_lossy(&strict.stderr).contains("garbage.png: unrecognised format"),
        "{}",
        String::from_utf8_lossy(&strict.stderr)
    );
}

#[test]
fn standardize_writes_a_whitened_model_and_eval_compares_every_method_in_every_form() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path());
    let out = dir.path().join("run");
    run(bin().args(pretrain_args("simdino", &m, &out, 2)));
    let plain = out.join("model.safetensors");
    let std_model = dir.path().join("std.safetensors");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "standardize",
            "--model",
            plain.to_str().unwrap(),
            "--manifest",
            m.to_str().unwrap(),
            "--split",
            "train",
            "--device",
            "cpu",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    run(bin().args(args(&[
        "--whiten",
        "8",
        "--out",
        std_model.to_str().unwrap(),
    ])));
    let file = m3ret_core::model::ModelFile::from_path(&std_model).unwrap();
    let s = file
        .config
        .standardize
        .as_ref()
        .expect("the written file carries its standardisation");
    assert_eq!(
        (
            s.whiten,
            file.config.format_version,
            file.config.embedding_dims()
        ),
        (Some(8), 2, 8)
    );
    assert_eq!(
        s.fitted_on["items"]["xray"], 12,
        "fitted on the train split only: {}",
        s.fitted_on
    );
    assert!(
        file.tensors.contains_key("standardize.mean.xray")
            && file.tensors.contains_key("standardize.whiten.all")
    );
    // Shared axes are stored once, not again under each modality.
    assert!(!file.tensors.contains_key("standardize.whiten.xray"));
    // --rewrite turns a file written the old way (a copy of the axes per modality) into
    // the current form, its statistics and weights unchanged, in their own precision.
    use m3ret_core::model::file::{save, stored_weight_dtype, WeightDtype};
    let mut old = file
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect::<Vec<_>>();
    old.push((
        "standardize.whiten.xray".into(),
        file.tensors["standardize.whiten.all"].copy(),
    ));
    for dtype in [WeightDtype::F16, WeightDtype::F32] {
        let old_model = dir.path().join(format!("old-{dtype:?}.safetensors"));
        save(&old_model, &file.config, &old, dtype).unwrap();
        let rewritten = dir.path().join(format!("rewritten-{dtype:?}.safetensors"));
        run(bin().args([
            "standardize",
            "--rewrite",
            "--model",
            old_model.to_str().unwrap(),
            "--out",
            rewritten.to_str().unwrap(),
        ]));
        let bytes = std::fs::read(&rewritten).unwrap();
        assert_eq!(stored_weight_dtype(&bytes).unwrap(), dtype);
        let again = m3ret_core::model::ModelFile::from_bytes(&bytes).unwrap();
        assert_eq!(again.config, file.config);
        assert_eq!(
            again.tensors.keys().collect::<Vec<_>>(),
            file.tensors.keys().collect::<Vec<_>>()
        );
        for (name, t) in &file.tensors {
            assert!(again.tensors[name].equal(t), "{name} changed ({dtype:?})");
        }
        if dtype == WeightDtype::F16 {
            // The file std_model is: f16 weights, the same tensors.
            assert_eq!(
                bytes.len() as u64,
                std::fs::metadata(&std_model).unwrap().len()
            );
        }
    }
    // A model without statistics has nothing to rewrite.
    let none = bin()
        .args([
            "standardize",
            "--rewrite",
            "--model",
            plain.to_str().unwrap(),
            "--out",
            dir.path().join("x.safetensors").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no standardisation to rewrite"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    // Too many components for the features: a clear error, no file.
    let bad = bin()
        .args(args(&[
            "--whiten",
            "100000",
            "--out",
            dir.path().join("bad.safetensors").to_str().unwrap(),
        ]))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("whitening to 100000 components"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Region pooling: 2 x 2 regions of the 4 x 4 token grid (64 px, patches of 16).
    let grid_model = dir.path().join("grid.safetensors");
    run(bin().args(args(&[
        "--pooling",
        "grid2x2",
        "--whiten",
        "0",
        "--out",
        grid_model.to_str().unwrap(),
    ])));
    let file = m3ret_core::model::ModelFile::from_path(&grid_model).unwrap();
    assert_eq!(
        (file.config.pooling.name(), file.config.embedding_dims()),
        ("grid2x2".to_string(), 4 * 192)
    );
    // A grid finer than the token grid, or not a grid at all: clear errors, no file.
    for (pooling, expected) in [
        ("grid5x5", "needs a token grid of at least 5 x 5, not 4 x 4"),
        ("grid2x3", "unknown pooling \"grid2x3\""),
    ] {
        let path = dir.path().join(format!("{pooling}.safetensors"));
        let bad = bin()
            .args(args(&[
                "--pooling",
                pooling,
                "--out",
                path.to_str().unwrap(),
            ]))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(
            !bad.status.success() && stderr.contains(expected),
            "{stderr}"
        );
        assert!(!path.exists());
    }

    let eval = dir.path().join("eval");
    let text = run(bin().args([
        "eval",
        "--model",
        std_model.to_str().unwrap(),
        "--manifest",
        m.to_str().unwrap(),
        "--split",
        "test",
        "--fit-split",
        "train",
        "--out",
        eval.to_str().unwrap(),
        "--device",
        "cpu",
    ]));
    assert!(
        text.contains("raw-pixels, ") && text.contains("Standardisation forms"),
        "{text}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval.join("report.json")).unwrap()).unwrap();
    for r in report["results"].as_array().unwrap() {
        assert!(
            ["ahead", "tie", "behind"].contains(&r["verdict"].as_str().unwrap()),
            "{r}"
        );
        for best in ["raw_pixels_best", "random_init_best"] {
            let b = &r[best];
            let r1 = b["retrieval"]["recall_at_1"].as_f64().unwrap();
            // The best form is at least as good as the plain baseline.
            assert!(
                r1 >= r[best.trim_end_matches("_best")]["recall_at_1"]
                    .as_f64()
                    .unwrap(),
                "{r}"
            );
        }
    }
    // Three methods in four forms (whitened to the model's 8 components) per in-modality task.
    let forms = report["forms"].as_array().unwrap();
    assert_eq!(forms.len(), 2 * 3 * 4, "{forms:?}");
    assert!(forms
        .iter()
        .any(|f| f["form"] == "whitened-8-per-modality" && f["method"] == "m3ret-features"));
}

/// Every line of a run's metrics.jsonl, by step (the last for a step logged twice).
fn records(out: &Path, file: &str) -> std::collections::BTreeMap<i64, serde_json::Value> {
    std::fs::read_to_string(out.join(file))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["step"].as_i64().unwrap(), v))
        .collect()
}

#[test]
fn a_run_split_in_two_keeps_its_schedules_and_learning_curve() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path());
    let extra = [
        "--eval-every",
        "4",
        "--eval-split",
        "test",
        "--eval-fit-split",
        "train",
        "--checkpoint-dtype",
        "f16",
        "--checkpoint-every",
        "2",
    ];
    let straight = dir.path().join("straight");
    let mut args = pretrain_args("simdino", &m, &straight, 8);
    args.extend(extra.iter().map(|s| s.to_string()));
    run(bin().args(&args));
    // The same run in two pieces: 4 steps, then a resume to the end.
    let split = dir.path().join("split");
    let mut args = pretrain_args("simdino", &m, &split, 8);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--stop-after".into(), "4".into()]);
    run(bin().args(&args));
    let text = run(bin().args(resume_args(&m, &split)));
    assert!(text.contains("resuming at step 4 of 8"), "{text}");
    let (a, b) = (
        records(&straight, "metrics.jsonl"),
        records(&split, "metrics.jsonl"),
    );
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>().iter().collect::<Vec<_>>()
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for step in 1..=8 {
        let (x, y) = (&a[&step], &b[&step]);
        // The schedules are functions of the step and the planned total: the same to the bit.
        for key in ["lr", "teacher_momentum", "group"] {
            assert_eq!(x[key], y[key], "step {step}: {key}");
        }
        // The f16 checkpoint rounds the weights once, at the split.
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        let tolerance = if step <= 4 { 1e-4 } else { 1e-2 };
        assert!(
            (lx - ly).abs() < tolerance * (1.0 + lx.abs()),
            "step {step}: loss {lx} vs {ly}"
        );
    }
    let momentum: Vec<f64> = (1..=8)
        .map(|s| a[&s]["teacher_momentum"].as_f64().unwrap())
        .collect();
    assert!(momentum.windows(2).all(|w| w[0] < w[1]), "{momentum:?}");
    // The learning curve: steps 0, 4 and 8, each with the untrained zero line beside it.
    let (ca, cb) = (
        records(&straight, "log.jsonl"),
        records(&split, "log.jsonl"),
    );
    assert_eq!(cb.keys().copied().collect::<Vec<_>>(), vec![0, 4, 8]);
    assert_eq!(ca[&0], cb[&0]);
    // The trained R@1 at the split may move by one of the 4 test queries a modality:
    // training is reproducible only to rounding between processes (the loss tolerance
    // above); on an AVX2-only CPU, in f32, one endoscopy query ranked differently.
    for modality in ["xray", "endoscopy"] {
        let (x, y) = (&ca[&4]["r1"][modality], &cb[&4]["r1"][modality]);
        for key in ["untrained", "raw_pixels"] {
            assert_eq!(x[key], y[key], "step 4 {modality} {key}");
        }
        let (tx, ty) = (
            x["trained"].as_f64().unwrap(),
            y["trained"].as_f64().unwrap(),
        );
        assert!(
            (tx - ty).abs() <= 0.25 + 1e-9,
            "step 4 {modality}: {tx} vs {ty}"
        );
    }
    for (step, r) in &cb {
        assert_eq!(r["samples"].as_u64().unwrap(), *step as u64 * 8, "{r}");
        let epochs = r["epochs"].as_f64().unwrap();
        assert!((epochs - *step as f64 * 8.0 / 32.0).abs() < 1e-9, "{r}");
        assert!(r["hours"].as_f64().unwrap() >= 0.0);
        for modality in ["xray", "endoscopy"] {
            let m = &r["r1"][modality];
            for key in ["trained", "untrained", "raw_pixels"] {
                let v = m[key].as_f64().unwrap_or(-1.0);
                assert!(
                    (0.0..=1.0).contains(&v),
                    "step {step} {modality} {key}: {r}"
                );
            }
            assert_eq!(m["untrained"], cb[&0]["r1"][modality]["trained"]);
        }
    }
    assert!(cb[&0]["loss"].is_null() && cb[&8]["loss"].is_f64());
    // f16 weights and bf16 moments: about half of an f32 checkpoint.
    let size = |d: &Path, f: &str| {
        std::fs::metadata(d.join("checkpoint").join(f))
            .unwrap()
            .len()
    };
    let plain = dir.path().join("plain");
    run(bin().args(pretrain_args("simdino", &m, &plain, 2)));
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(size(&split, f) < size(&plain, f) * 6 / 10, "{f}");
    }
    // `curve` tables and draws the log: one row per evaluation, trained (untrained).
    let png = dir.path().join("curve.png");
    let table = run(bin()
        .args(["curve", "--log"])
        .arg(split.join("log.jsonl"))
        .arg("--out")
        .arg(&png));
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(
        rows[0].contains("endoscopy") && rows[0].contains("xray"),
        "{table}"
    );
    let x = cb[&8]["r1"]["xray"]["trained"].as_f64().unwrap();
    assert!(
        rows[3].starts_with("| 8 |") && rows[3].contains(&format!("{x:.3} (")),
        "{table}"
    );
    assert_eq!(image::image_dimensions(&png).unwrap(), (900, 500));
    // A log that is not JSON is an error naming the file and line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"step\": 0}\nnot json\n").unwrap();
    let out = bin()
        .args(["curve", "--log"])
        .arg(&bad)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.jsonl line 2"),
        "{err}"
    );
}

#[test]
fn head_out_sets_the_projection_width_and_rejects_a_degenerate_one() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path());
    let out = dir.path().join("run");
    let mut args = pretrain_args("simdino", &m, &out, 2);
    args.extend(["--head-out".into(), "16".into()]);
    run(bin().args(&args));
    let checkpoint =
        m3ret_core::model::ModelFile::from_path(&out.join("checkpoint/model.safetensors")).unwrap();
    for branch in ["student", "teacher"] {
        let fc3 = checkpoint.tensors[&format!("{branch}.head.fc3.weight")].size();
        assert_eq!(fc3[0], 16, "{branch}: {fc3:?}");
    }
    // The width is a setting of the run, so that a resume keeps it.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("checkpoint").join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["settings"]["head_out"], 16);
    let mut args = pretrain_args("simdino", &m, &dir.path().join("bad"), 2);
    args.extend(["--head-out".into(), "1".into()]);
    let bad = bin().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("--head-out"), "{err}");
}

#[test]
fn a_finished_run_extends_by_a_new_cycle_that_resumes_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path());
    let extend = |out: &Path, more: &[&str]| {
        let mut args = resume_args(&m, out);
        args.extend(["--extend-steps", "4", "--extend-lr", "2e-3"].map(String::from));
        args.extend(more.iter().map(|s| s.to_string()));
        args
    };
    // Two copies of a finished 4-step run: one extended in one go, one in two pieces.
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    for out in [&whole, &split] {
        let mut args = pretrain_args("simdino", &m, out, 4);
        args.extend(["--checkpoint-every", "2"].map(String::from));
        run(bin().args(&args));
    }
    let text = run(bin().args(extend(&whole, &[])));
    assert!(text.contains("steps 4..8 of 8"), "{text}");
    run(bin().args(extend(&split, &["--stop-after", "2"])));
    // An unfinished run is resumed, not extended.
    let early = bin().args(extend(&split, &[])).output().unwrap();
    let err = String::from_utf8_lossy(&early.stderr);
    assert!(
        !early.status.success() && err.contains("at step 6 of 8"),
        "{err}"
    );
    let text = run(bin().args(resume_args(&m, &split)));
    assert!(text.contains("resuming at step 6 of 8"), "{text}");
    let (a, b) = (
        records(&whole, "metrics.jsonl"),
        records(&split, "metrics.jsonl"),
    );
    assert_eq!(
        a.keys().copied().collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    for step in 1..=8 {
        for key in ["lr", "teacher_momentum", "group"] {
            assert_eq!(a[&step][key], b[&step][key], "step {step}: {key}");
        }
    }
    // The new cycle warms up (one step: 5% of 4, at least 1) to its own peak, then decays.
    let lr = |s: i64| a[&s]["lr"].as_f64().unwrap();
    assert!((lr(5) - 2e-3).abs() < 1e-12, "{}", lr(5));
    assert!(lr(4) < lr(5) && lr(7) < lr(6) && lr(8) < lr(7));
    // The cycle is a setting of the run, which later resumes keep.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(split.join("checkpoint").join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["total_steps"], 8);
    assert_eq!(state["settings"]["extensions"][0]["start"], 4);
    assert_eq!(state["settings"]["extensions"][0]["end"], 8);
    // Resumed into another folder, the run forks: the copy extends, the original stays.
    let fork = dir.path().join("fork");
    let mut args = resume_args(&m, &whole);
    args[6] = fork.to_str().unwrap().to_string();
    assert_eq!(args[5], "--out");
    args.extend(["--extend-steps", "2"].map(String::from));
    // The fork takes the learning curve so far (here a stand-in for one).
    let curve = "{\"step\": 0, \"r1\": {}}\n";
    std::fs::write(whole.join("log.jsonl"), curve).unwrap();
    let text = run(bin().args(&args));
    assert!(text.contains("steps 8..10 of 10"), "{text}");
    assert_eq!(
        std::fs::read_to_string(fork.join("log.jsonl")).unwrap(),
        curve
    );
    let state = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("checkpoint/state.json")).unwrap())
            .unwrap()
    };
    assert_eq!(state(&fork)["step"], 10);
    assert_eq!(state(&whole)["step"], 8);
    assert_eq!(records(&whole, "metrics.jsonl").len(), 8);
    // Without --resume there is no run to extend.
    let mut args = pretrain_args("simdino", &m, &dir.path().join("fresh"), 4);
    args.extend(["--extend-steps", "4"].map(String::from));
    let fresh = bin().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&fresh.stderr);
    assert!(!fresh.status.success() && err.contains("--resume"), "{err}");
}
