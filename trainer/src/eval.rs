//! `m3ret-train eval`: zero-shot retrieval of a model beside the raw-pixels and
//! random-init baselines, in-modality (hit: same `cls`) and cross-modal between
//! modalities that share a `region` (hit: same region). Writes report.md,
//! report.json and montage.png.

use crate::embedset::{self, Embedded};
use crate::manifest::{self, Item};
use crate::metrics::{first_hit_ranks, summarise, Retrieval};
use crate::standardize::{forms, Form};
use m3ret_core::modality::Modality;
use m3ret_core::model::{parse_device, Embedder, ModelFile};
use m3ret_core::vector::distance::dot;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The model file to evaluate (from pretrain or export).
    #[arg(long)]
    pub model: PathBuf,
    /// A manifest CSV or a folder tree <modality>/<class>/<file>.
    #[arg(long)]
    pub manifest: PathBuf,
    /// Manifest splits to evaluate on (repeatable; default: every row). NAME:a and NAME:b
    /// are the two halves of split NAME, hashed by file: e.g. --split train:b --fit-split
    /// train:a compares readouts on the training split without the held-out one.
    #[arg(long = "split")]
    pub splits: Vec<String>,
    /// Output folder for report.md, report.json and montage.png.
    #[arg(long, default_value = "eval")]
    pub out: PathBuf,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision on the CPU: auto (bf16 where the CPU has AMX-BF16 or AVX512-BF16, else f32), bf16 or f32. CUDA runs in bf16 whatever this says.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bf16", "f32"])]
    pub precision: String,
    /// Studies per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Use at most this many items of each class (evenly spread over the class), to bound the run.
    #[arg(long)]
    pub max_per_class: Option<usize>,
    /// Queries per modality shown in the montage.
    #[arg(long, default_value_t = 2)]
    pub montage_queries: usize,
    /// Seed of the random-init baseline.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Splits to fit the standardisation forms on (repeatable), e.g. train: each baseline is
    /// then also reported in its best form, and every method's forms are tabled. NAME:a
    /// and NAME:b are its halves, as for --split.
    #[arg(long = "fit-split")]
    pub fit_splits: Vec<String>,
    /// Items per class of the fit splits (evenly spread over the class).
    #[arg(long, default_value_t = 200)]
    pub fit_max_per_class: usize,
    /// Components of the whitened forms (default: the model's own whitening, else 64).
    #[arg(long)]
    pub whiten: Option<i64>,
    /// Eigenvalue shrinkage of the whitened forms, as a fraction of the mean eigenvalue.
    #[arg(long, default_value_t = 0.1)]
    pub shrinkage: f64,
    /// Also write the model's embeddings here, one JSON line per item: path, modality, cls,
    /// embedding (the vectors m3ret_embed returns for the same files).
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
}

/// One retrieval task's results for the model and the baselines.
#[derive(serde::Serialize)]
pub struct TaskResult {
    pub task: String,
    pub kind: &'static str,
    pub m3ret: Retrieval,
    pub raw_pixels: Retrieval,
    pub random_init: Retrieval,
    /// With `--fit-split`: each baseline in the standardisation form that did best here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_pixels_best: Option<BestForm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_init_best: Option<BestForm>,
    /// m3ret's R@1 against the best baseline's: ahead, tie or behind (see VERDICTS).
    pub verdict: &'static str,
}

#[derive(serde::Serialize, Clone)]
pub struct BestForm {
    pub form: String,
    pub retrieval: Retrieval,
}

/// One method in one standardisation form on one in-modality task.
#[derive(serde::Serialize)]
pub struct FormResult {
    pub method: &'static str,
    pub form: String,
    pub task: String,
    pub recall_at_1: f64,
    pub ci95_recall_at_1: [f64; 2],
    /// R@1 on the fit split itself (each item a query against the others): a choice
    /// of form that does not look at the evaluated split.
    pub fit_split_recall_at_1: f64,
}

/// Keeps at most `n` items per (modality, cls), evenly spread.
pub fn cap_per_class(items: Vec<Item>, n: Option<usize>) -> Vec<Item> {
    let Some(n) = n else { return items };
    let mut by_class: std::collections::BTreeMap<(String, String), Vec<Item>> = Default::default();
    for i in items {
        by_class
            .entry((i.modality.name().to_string(), i.cls.clone()))
            .or_default()
            .push(i);
    }
    by_class
        .into_values()
        .flat_map(|v| {
            let step = (v.len() as f64 / n as f64).max(1.0);
            (0..n.min(v.len()))
                .map(|k| v[(k as f64 * step) as usize].clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn run(args: EvalArgs) -> Result<(), String> {
    let device = parse_device(&args.device).map_err(|e| e.to_string())?;
    let file = ModelFile::from_path(&args.model).map_err(|e| e.to_string())?;
    let precision = m3ret_core::precision::resolve_name(&args.precision)?;
    let model = Embedder::from_file(&file, device).map_err(|e| e.to_string())?;
    tch::manual_seed(args.seed);
    let random = Embedder::random_init(&file.config, device);
    model.set_cpu_precision(precision.precision);
    random.set_cpu_precision(precision.precision);
    let items = cap_per_class(
        manifest::select(manifest::load(&args.manifest)?, &args.splits, &[]),
        args.max_per_class,
    );
    if items.is_empty() {
        return Err("no items to evaluate".into());
    }
    eprintln!(
        "embedding {} items with {} and the baselines",
        items.len(),
        args.model.display()
    );
    let (embedded, skipped) = embedset::embed(&items, &model, Some(&random), args.batch);
    if let Some(path) = &args.embeddings {
        write_embeddings(path, &items, &embedded)?;
    }
    let defs = task_defs(&items, &embedded);
    let fitted = if args.fit_splits.is_empty() {
        None
    } else {
        let fit_items = cap_per_class(
            manifest::select(manifest::load(&args.manifest)?, &args.fit_splits, &[]),
            Some(args.fit_max_per_class),
        );
        eprintln!(
            "embedding {} items of split {:?} to fit the standardisation forms on",
            fit_items.len(),
            args.fit_splits
        );
        let (fit, _) = embedset::embed(&fit_items, &model, Some(&random), args.batch);
        let k = args
            .whiten
            .or_else(|| file.config.standardize.as_ref().and_then(|s| s.whiten))
            .unwrap_or(64);
        Some(fit_forms(
            &items,
            &embedded,
            &defs,
            &fit_items,
            &fit,
            &forms(k, args.shrinkage),
        )?)
    };
    let results = results(&items, &embedded, &defs, fitted.as_ref().map(|f| &f.best));
    let form_results = fitted.map(|f| f.table).unwrap_or_default();
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let report = serde_json::json!({
        "model": args.model.display().to_string(),
        "config": file.config,
        "items": embedded.len(),
        "skipped": skipped,
        "definitions": DEFINITIONS,
        "verdicts": VERDICTS,
        "results": results,
        "forms": form_results,
    });
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .map_err(|e| e.to_string())?;
    let md = markdown(
        &args.model.display().to_string(),
        embedded.len(),
        skipped,
        &results,
        &form_results,
    );
    std::fs::write(args.out.join("report.md"), &md).map_err(|e| e.to_string())?;
    montage(
        &items,
        &embedded,
        args.montage_queries,
        &args.out.join("montage.png"),
    )?;
    println!("{md}");
    Ok(())
}

pub const DEFINITIONS: &str = "For each query, every other item of the target set is ranked by cosine similarity. \
The rank of a query is the 1-based position of its first hit (in-modality: same cls; cross-modal: same region). \
R@K is the fraction of queries whose rank is at most K, with its 95% bootstrap interval over the queries (2,000 resamples) \
in brackets; MnR and MdR are the mean and median rank. \
Queries with no possible hit are left out. Baselines: raw-pixels (the canonical tensor averaged over slices, \
pooled to 3x32x32, flattened) and random-init (the same architecture with untrained weights). \
With --fit-split, each baseline is also shown in its best standardisation form for the task (plain, centred per modality, \
PCA-whitened with shared or per-modality axes; statistics fitted on the fit split; the best picked on the evaluated split itself, \
which favours the baselines). m3ret is shown as the model file embeds (as m3ret_embed in SQL does).";

fn write_embeddings(
    path: &std::path::Path,
    items: &[Item],
    embedded: &[Embedded],
) -> Result<(), String> {
    let mut out = String::new();
    for e in embedded {
        let item = &items[e.item];
        let line = serde_json::json!({"path": item.path, "modality": e.modality, "cls": item.cls, "embedding": e.model});
        let _ = writeln!(out, "{line}");
    }
    std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))
}

pub const VERDICTS: &str = "Verdict on R@1, m3ret against the best baseline row of the task (plain or best form): \
ahead when the baseline's R@1 lies below m3ret's 95% interval, behind when above it, tie when inside it.";

/// A retrieval task: which items ask, which are ranked, and what counts as a hit.
pub struct TaskDef {
    pub name: String,
    pub kind: &'static str,
    queries: Vec<usize>,
    gallery: Vec<usize>,
}

/// In-modality tasks (hit: same cls) for every modality with two items or more, and
/// cross-modal tasks (hit: same region) for every ordered pair of modalities.
pub fn task_defs(items: &[Item], embedded: &[Embedded]) -> Vec<TaskDef> {
    let item = |e: usize| &items[embedded[e].item];
    let of = |m: Modality| {
        (0..embedded.len())
            .filter(|&e| item(e).modality == m)
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for m in Modality::ALL {
        let idx = of(m);
        if idx.len() > 1 {
            out.push(TaskDef {
                name: format!("{m}"),
                kind: "in-modality",
                queries: idx.clone(),
                gallery: idx,
            });
        }
    }
    for a in Modality::ALL {
        for b in Modality::ALL {
            if a == b {
                continue;
            }
            let (qa, gallery) = (of(a), of(b));
            let regions_b: BTreeSet<&str> = gallery
                .iter()
                .map(|&e| item(e).region.as_str())
                .filter(|r| !r.is_empty())
                .collect();
            let queries: Vec<usize> = qa
                .into_iter()
                .filter(|&e| regions_b.contains(item(e).region.as_str()))
                .collect();
            if !queries.is_empty() {
                out.push(TaskDef {
                    name: format!("{a} -> {b}"),
                    kind: "cross-modal",
                    queries,
                    gallery,
                });
            }
        }
    }
    out
}

/// The retrieval scores of `vectors` (one per embedded item) on a task.
pub fn evaluate(
    def: &TaskDef,
    items: &[Item],
    embedded: &[Embedded],
    vectors: &[Vec<f32>],
) -> Retrieval {
    let item = |e: usize| &items[embedded[e].item];
    let (q, g) = (&def.queries, &def.gallery);
    let hit = |a: usize, b: usize| match def.kind {
        "in-modality" => item(a).cls == item(b).cls,
        _ => !item(a).region.is_empty() && item(a).region == item(b).region,
    };
    let queries: Vec<&[f32]> = q.iter().map(|&i| vectors[i].as_slice()).collect();
    let gallery: Vec<&[f32]> = g.iter().map(|&i| vectors[i].as_slice()).collect();
    summarise(&first_hit_ranks(
        &queries,
        &gallery,
        |a, b| hit(q[a], g[b]),
        |a, b| q[a] == g[b],
    ))
}

fn column(embedded: &[Embedded], pick: fn(&Embedded) -> &Vec<f32>) -> Vec<Vec<f32>> {
    embedded.iter().map(|e| pick(e).clone()).collect()
}

fn with_modality(
    embedded: &[Embedded],
    pick: fn(&Embedded) -> &Vec<f32>,
) -> Vec<(Modality, Vec<f32>)> {
    embedded
        .iter()
        .map(|e| (e.modality, pick(e).clone()))
        .collect()
}

/// The baselines' best forms per task, and every method's forms on the in-modality tasks.
struct Fitted {
    /// Per task: (raw-pixels best, random-init best).
    best: Vec<(BestForm, BestForm)>,
    table: Vec<FormResult>,
}

type Pick = fn(&Embedded) -> &Vec<f32>;
const METHODS: [(&str, Pick); 3] = [
    ("raw-pixels", |e| &e.raw_pixels),
    ("random-init", |e| &e.random_init),
    ("m3ret-features", |e| &e.features),
];

fn fit_forms(
    items: &[Item],
    embedded: &[Embedded],
    defs: &[TaskDef],
    fit_items: &[Item],
    fit: &[Embedded],
    forms: &[Form],
) -> Result<Fitted, String> {
    let fit_defs = task_defs(fit_items, fit);
    let mut best: Vec<[Option<BestForm>; 2]> = defs.iter().map(|_| [None, None]).collect();
    let mut table = Vec::new();
    for (m, (method, pick)) in METHODS.iter().enumerate() {
        let fit_vectors = with_modality(fit, *pick);
        for form in forms {
            let [vectors, on_fit] = form.apply(
                &fit_vectors,
                [&with_modality(embedded, *pick), &fit_vectors],
            )?;
            for (t, def) in defs.iter().enumerate() {
                if def.kind == "cross-modal" && !form.shared_space() {
                    continue;
                }
                let r = evaluate(def, items, embedded, &vectors);
                if def.kind == "in-modality" {
                    let fit_r1 = fit_defs
                        .iter()
                        .find(|d| d.name == def.name)
                        .map(|d| evaluate(d, fit_items, fit, &on_fit).recall_at_1);
                    table.push(FormResult {
                        method,
                        form: form.name.clone(),
                        task: def.name.clone(),
                        recall_at_1: r.recall_at_1,
                        ci95_recall_at_1: r.ci95.recall_at_1,
                        fit_split_recall_at_1: fit_r1.unwrap_or(f64::NAN),
                    });
                }
                if m < 2
                    && best[t][m]
                        .as_ref()
                        .is_none_or(|b| r.recall_at_1 > b.retrieval.recall_at_1)
                {
                    best[t][m] = Some(BestForm {
                        form: form.name.clone(),
                        retrieval: r,
                    });
                }
            }
        }
    }
    let best = best
        .into_iter()
        .map(|[a, b]| {
            (
                a.expect("plain form always fits"),
                b.expect("plain form always fits"),
            )
        })
        .collect();
    Ok(Fitted { best, table })
}

fn results(
    items: &[Item],
    embedded: &[Embedded],
    defs: &[TaskDef],
    best: Option<&Vec<(BestForm, BestForm)>>,
) -> Vec<TaskResult> {
    let (model, raw, random) = (
        column(embedded, |e| &e.model),
        column(embedded, |e| &e.raw_pixels),
        column(embedded, |e| &e.random_init),
    );
    let mut best = best.map(|b| b.iter());
    defs.iter()
        .map(|def| {
            let (raw_best, random_best) = match best.as_mut().and_then(|b| b.next()) {
                Some((a, b)) => (Some(a.clone()), Some(b.clone())),
                None => (None, None),
            };
            let m3ret = evaluate(def, items, embedded, &model);
            let raw_pixels = evaluate(def, items, embedded, &raw);
            let random_init = evaluate(def, items, embedded, &random);
            let baseline_r1 = [
                Some(&raw_pixels),
                Some(&random_init),
                raw_best.as_ref().map(|b| &b.retrieval),
                random_best.as_ref().map(|b| &b.retrieval),
            ]
            .into_iter()
            .flatten()
            .map(|r| r.recall_at_1)
            .fold(f64::MIN, f64::max);
            TaskResult {
                task: def.name.clone(),
                kind: def.kind,
                verdict: verdict(&m3ret, baseline_r1),
                m3ret,
                raw_pixels,
                random_init,
                raw_pixels_best: raw_best,
                random_init_best: random_best,
            }
        })
        .collect()
}

fn verdict(m3ret: &Retrieval, baseline_r1: f64) -> &'static str {
    let [low, high] = m3ret.ci95.recall_at_1;
    if baseline_r1 < low {
        "ahead"
    } else if baseline_r1 > high {
        "behind"
    } else {
        "tie"
    }
}

fn markdown(
    model: &str,
    n: usize,
    skipped: usize,
    results: &[TaskResult],
    forms: &[FormResult],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Retrieval report\n\nModel `{model}`, {n} items ({skipped} unreadable, skipped).\n\n{DEFINITIONS}\n\n{VERDICTS}\n");
    for kind in ["in-modality", "cross-modal"] {
        let _ = writeln!(s, "## {kind}\n\n| task | queries | method | R@1 | R@5 | R@10 | MnR | MdR |\n|---|---|---|---|---|---|---|---|");
        for r in results.iter().filter(|r| r.kind == kind) {
            let mut rows = vec![
                (format!("m3ret ({})", r.verdict), &r.m3ret),
                ("raw-pixels".to_string(), &r.raw_pixels),
                ("random-init".to_string(), &r.random_init),
            ];
            for (name, best) in [
                ("raw-pixels", &r.raw_pixels_best),
                ("random-init", &r.random_init_best),
            ] {
                if let Some(b) = best {
                    rows.push((format!("{name}, {}", b.form), &b.retrieval));
                }
            }
            for (method, m) in rows {
                let ci = &m.ci95;
                let _ = writeln!(
                    s,
                    "| {} | {} | {method} | {} | {} | {} | {:.1} | {:.1} |",
                    r.task,
                    m.queries,
                    with_interval(m.recall_at_1, ci.recall_at_1),
                    with_interval(m.recall_at_5, ci.recall_at_5),
                    with_interval(m.recall_at_10, ci.recall_at_10),
                    m.mean_rank,
                    m.median_rank
                );
            }
        }
        s.push('\n');
    }
    if !forms.is_empty() {
        let _ = writeln!(s, "## Standardisation forms (in-modality R@1: evaluated split, and in brackets the fit split)\n");
        let _ = writeln!(
            s,
            "| method | form | task | R@1 | R@1 on the fit split |\n|---|---|---|---|---|"
        );
        for f in forms {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.3} |",
                f.method,
                f.form,
                f.task,
                with_interval(f.recall_at_1, f.ci95_recall_at_1),
                f.fit_split_recall_at_1
            );
        }
        s.push('\n');
    }
    s
}

/// `0.519 (0.468-0.570)`: a recall and its 95% bootstrap interval.
fn with_interval(value: f64, ci: [f64; 2]) -> String {
    format!("{value:.3} ({:.3}-{:.3})", ci[0], ci[1])
}

/// Query + top-3 in its own modality, a few queries per modality (the paper's figure 5).
fn montage(
    items: &[Item],
    embedded: &[Embedded],
    per_modality: usize,
    path: &std::path::Path,
) -> Result<(), String> {
    let mut rows = Vec::new();
    for m in Modality::ALL {
        let idx: Vec<usize> = (0..embedded.len())
            .filter(|&e| items[embedded[e].item].modality == m)
            .collect();
        if idx.len() < 2 {
            continue;
        }
        for k in 0..per_modality.min(idx.len()) {
            let q = idx[k * idx.len() / per_modality.max(1)];
            let mut order: Vec<(usize, f32)> = idx
                .iter()
                .filter(|&&g| g != q)
                .map(|&g| (g, dot(&embedded[q].model, &embedded[g].model)))
                .collect();
            order.sort_by(|a, b| b.1.total_cmp(&a.1));
            let neighbours = order
                .iter()
                .take(3)
                .map(|(g, _)| {
                    (
                        embedded[*g].thumb.clone(),
                        items[embedded[*g].item].cls == items[embedded[q].item].cls,
                    )
                })
                .collect();
            rows.push((embedded[q].thumb.clone(), neighbours));
        }
    }
    crate::plot::montage(&rows, path)
}
