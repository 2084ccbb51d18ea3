//! How often an in-memory HNSW build misses true neighbours, over many level seeds:
//! one build is one draw of the random levels, and a miss rate of a few in ten
//! thousand shows only over tens of builds.
//!
//! ```text
//! cargo run --release -p m3ret-index --example recall_over_seeds -- VECTORS [SEEDS] [EF] [M] [EF_CONSTRUCTION]
//! ```
//!
//! VECTORS is a JSON array of arrays of numbers (as `sql_hnsw` caches the corpus
//! embeddings under /var/cache/m3ret/bench/) or `clustered:NxDIMSxCLUSTERS`
//! (synthetic). Every 40th vector is a query, the rest are indexed (cosine, one
//! build thread). Prints, per seed, how many of the queries' exact top 10 the
//! search at EF missed (rows tied with the 10th distance count as found), the
//! total, and the median build time (one thread).

use m3ret_index::hnsw::{LevelRng, MemoryGraph, Metric, Params};
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args()
        .nth(i)
        .map(|v| v.parse().ok().expect("a number"))
        .unwrap_or(default)
}

fn vectors(spec: &str) -> Vec<Vec<f32>> {
    if let Some(shape) = spec.strip_prefix("clustered:") {
        let p: Vec<usize> = shape
            .split('x')
            .map(|v| v.parse().expect("NxDIMSxCLUSTERS"))
            .collect();
        return m3ret_index::vector::synthetic::Clustered::new(p[1], p[2]).vectors(p[0], 7);
    }
    let text = std::fs::read_to_string(spec).expect("the vectors file");
    serde_json::from_str(&text).expect("a JSON array of arrays of numbers")
}

fn prepared(metric: Metric, v: &[f32]) -> Vec<f32> {
    let mut v = v.to_vec();
    metric.prepare(&mut v).expect("a non-zero vector");
    v
}

/// Misses of one build: true top-10 rows the search at `ef` did not return.
fn misses(
    graph: &MemoryGraph,
    metric: Metric,
    data: &[Vec<f32>],
    queries: &[Vec<f32>],
    ef: usize,
) -> usize {
    let mut missed = 0;
    for q in queries {
        let mut exact: Vec<(f32, u32)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (metric.graph_distance(q, v), i as u32))
            .collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        let tenth = exact[9].0;
        let found = graph.search(q, 10, ef);
        let tied_found = found.iter().any(|c| (c.distance - tenth).abs() <= 1e-6);
        missed += exact[..10]
            .iter()
            .filter(|(d, id)| {
                !found.iter().any(|c| c.id == *id) && ((d - tenth).abs() > 1e-6 || !tied_found)
            })
            .count();
    }
    missed
}

fn main() {
    let spec: String = std::env::args()
        .nth(1)
        .expect("VECTORS: a JSON file or clustered:NxDIMSxCLUSTERS");
    let (seeds, ef): (u64, usize) = (arg(2, 10), arg(3, 320));
    let params = Params {
        m: arg(4, 16),
        ef_construction: arg(5, 64),
    };
    let metric = Metric::Cosine;
    let (mut data, mut queries) = (Vec::new(), Vec::new());
    for (i, v) in vectors(&spec).iter().enumerate() {
        let v = prepared(metric, v);
        if i % 40 == 0 {
            queries.push(v)
        } else {
            data.push(v)
        }
    }
    let (mut total, mut builds_missing) = (0, 0);
    let mut build_s = Vec::new();
    for seed in 0..seeds {
        let mut rng = LevelRng::new(seed);
        let levels: Vec<u8> = data
            .iter()
            .map(|_| params.level_for(rng.next_unit(), 15) as u8)
            .collect();
        let graph = MemoryGraph::new(metric, params, data[0].len(), data.concat(), levels);
        let started = Instant::now();
        assert!(graph.build(1, Duration::from_millis(5), |_| true));
        build_s.push(started.elapsed().as_secs_f64());
        let missed = misses(&graph, metric, &data, &queries, ef);
        println!("seed {seed}: {missed} missed");
        total += missed;
        builds_missing += usize::from(missed > 0);
    }
    build_s.sort_by(f64::total_cmp);
    println!(
        "{seeds} builds (m {}, ef_construction {}; median build {:.2} s), {} queries, ef {ef}: \
         {total} of {} true neighbours missed, in {builds_missing} builds",
        params.m,
        params.ef_construction,
        build_s[build_s.len() / 2],
        queries.len(),
        seeds as usize * queries.len() * 10
    );
}
