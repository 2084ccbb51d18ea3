//! `m3ret-train eval`: zero-shot retrieval of a model beside the raw-pixels and
//! random-init baselines, in-modality (hit: same `cls`) and cross-modal between
//! modalities that share a `region` (hit: same region). Writes report.md,
//! report.json and montage.png.

use crate::embedset::{self, Embedded};
use crate::manifest::{self, Item};
use crate::metrics::{first_hit_ranks, summarise, Retrieval};
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
    /// Manifest splits to evaluate on (repeatable; default: every row).
    #[arg(long = "split")]
    pub splits: Vec<String>,
    /// Output folder for report.md, report.json and montage.png.
    #[arg(long, default_value = "eval")]
    pub out: PathBuf,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
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
}

/// One retrieval task's results for the model and the baselines.
#[derive(serde::Serialize)]
pub struct TaskResult {
    pub task: String,
    pub kind: &'static str,
    pub m3ret: Retrieval,
    pub raw_pixels: Retrieval,
    pub random_init: Retrieval,
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
    let model = Embedder::from_file(&file, device).map_err(|e| e.to_string())?;
    tch::manual_seed(args.seed);
    let random = Embedder::random_init(&file.config, device);
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
    let results = tasks(&items, &embedded);
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let report = serde_json::json!({
        "model": args.model.display().to_string(),
        "config": file.config,
        "items": embedded.len(),
        "skipped": skipped,
        "definitions": DEFINITIONS,
        "results": results,
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
pooled to 3x32x32, flattened) and random-init (the same architecture with untrained weights).";

fn ranks_for(
    embedded: &[Embedded],
    pick: fn(&Embedded) -> &[f32],
    q: &[usize],
    g: &[usize],
    hit: &dyn Fn(usize, usize) -> bool,
) -> Retrieval {
    let queries: Vec<&[f32]> = q.iter().map(|&i| pick(&embedded[i])).collect();
    let gallery: Vec<&[f32]> = g.iter().map(|&i| pick(&embedded[i])).collect();
    summarise(&first_hit_ranks(
        &queries,
        &gallery,
        |a, b| hit(q[a], g[b]),
        |a, b| q[a] == g[b],
    ))
}

fn task(
    name: String,
    kind: &'static str,
    embedded: &[Embedded],
    q: &[usize],
    g: &[usize],
    hit: &dyn Fn(usize, usize) -> bool,
) -> TaskResult {
    TaskResult {
        task: name,
        kind,
        m3ret: ranks_for(embedded, |e| &e.model, q, g, hit),
        raw_pixels: ranks_for(embedded, |e| &e.raw_pixels, q, g, hit),
        random_init: ranks_for(embedded, |e| &e.random_init, q, g, hit),
    }
}

pub fn tasks(items: &[Item], embedded: &[Embedded]) -> Vec<TaskResult> {
    let item = |e: usize| &items[embedded[e].item];
    let of = |m: Modality| {
        (0..embedded.len())
            .filter(|&e| item(e).modality == m)
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    let same_cls = |a: usize, b: usize| item(a).cls == item(b).cls;
    for m in Modality::ALL {
        let idx = of(m);
        if idx.len() > 1 {
            out.push(task(
                format!("{m}"),
                "in-modality",
                embedded,
                &idx,
                &idx,
                &same_cls,
            ));
        }
    }
    let same_region =
        |a: usize, b: usize| !item(a).region.is_empty() && item(a).region == item(b).region;
    for a in Modality::ALL {
        for b in Modality::ALL {
            if a == b {
                continue;
            }
            let (qa, gb) = (of(a), of(b));
            let regions_b: BTreeSet<&str> = gb
                .iter()
                .map(|&e| item(e).region.as_str())
                .filter(|r| !r.is_empty())
                .collect();
            let q: Vec<usize> = qa
                .into_iter()
                .filter(|&e| regions_b.contains(item(e).region.as_str()))
                .collect();
            if !q.is_empty() {
                out.push(task(
                    format!("{a} -> {b}"),
                    "cross-modal",
                    embedded,
                    &q,
                    &gb,
                    &same_region,
                ));
            }
        }
    }
    out
}

fn markdown(model: &str, n: usize, skipped: usize, results: &[TaskResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Retrieval report\n\nModel `{model}`, {n} items ({skipped} unreadable, skipped).\n\n{DEFINITIONS}\n");
    for kind in ["in-modality", "cross-modal"] {
        let _ = writeln!(s, "## {kind}\n\n| task | queries | method | R@1 | R@5 | R@10 | MnR | MdR |\n|---|---|---|---|---|---|---|---|");
        for r in results.iter().filter(|r| r.kind == kind) {
            for (method, m) in [
                ("m3ret", &r.m3ret),
                ("raw-pixels", &r.raw_pixels),
                ("random-init", &r.random_init),
            ] {
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
