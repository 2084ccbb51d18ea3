//! The HNSW algorithms on clustered vectors: recall of the in-memory graph against
//! exact search, for the three metrics, and the resumable search's later batches.

use m3ret_core::hnsw::{Graph, LevelRng, MemoryGraph, Metric, Params, ResumableSearch, Candidate, greedy_closest};
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// `n` vectors in `clusters` clusters, each spread along a few directions of its own
/// (low intrinsic dimension, as real embeddings are) plus a little isotropic noise.
fn clustered(n: usize, dims: usize, clusters: usize, seed: u64) -> Vec<Vec<f32>> {
    const SPREAD_DIRECTIONS: usize = 8;
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let centres: Vec<Vec<f32>> = (0..clusters).map(|_| (0..dims).map(|_| rng.gen_range(-1.0..1.0)).collect()).collect();
    let bases: Vec<Vec<Vec<f32>>> = (0..clusters)
        .map(|_| (0..SPREAD_DIRECTIONS).map(|_| (0..dims).map(|_| rng.gen_range(-0.15..0.15)).collect()).collect())
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let c = i % clusters;
            let z: Vec<f32> = (0..SPREAD_DIRECTIONS).map(|_| rng.gen_range(-1.0..1.0)).collect();
            (0..dims)
                .map(|d| centres[c][d] + (0..SPREAD_DIRECTIONS).map(|k| z[k] * bases[c][k][d]).sum::<f32>() + rng.gen_range(-0.01..0.01))
                .collect()
        })
        .collect()
}

fn build(metric: Metric, data: &[Vec<f32>], params: Params, threads: usize) -> MemoryGraph {
    let mut rng = LevelRng::new(42);
    let levels = data.iter().map(|_| params.level_for(rng.next_unit(), 15) as u8).collect();
    let mut flat = Vec::new();
    for v in data {
        let mut v = v.clone();
        metric.prepare(&mut v).unwrap();
        flat.extend(v);
    }
    let graph = MemoryGraph::new(metric, params, data[0].len(), flat, levels);
    assert!(graph.build(threads, Duration::from_millis(5), |_| true));
    graph
}

fn exact(metric: Metric, graph: &MemoryGraph, query: &[f32], k: usize) -> Vec<u32> {
    let mut all: Vec<(f32, u32)> = (0..graph.len() as u32).map(|i| (metric.graph_distance(query, graph.vector(i)), i)).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.iter().take(k).map(|x| x.1).collect()
}

#[test]
fn recall_at_10_is_high_for_every_metric() {
    let data = clustered(3000, 48, 20, 1);
    let queries = clustered(50, 48, 20, 2);
    for metric in [Metric::Cosine, Metric::L2, Metric::InnerProduct] {
        let graph = build(metric, &data, Params { m: 16, ef_construction: 64 }, 2);
        let mut hits = 0;
        for q in &queries {
            let mut q = q.clone();
            metric.prepare(&mut q).unwrap();
            let truth = exact(metric, &graph, &q, 10);
            let found: Vec<u32> = graph.search(&q, 10, 40).iter().map(|c| c.id).collect();
            hits += found.iter().filter(|id| truth.contains(id)).count();
        }
        let recall = hits as f64 / (10 * queries.len()) as f64;
        assert!(recall >= 0.95, "{metric:?}: recall@10 {recall}");
    }
}

#[test]
fn every_element_is_linked_and_links_respect_levels() {
    let data = clustered(1500, 16, 10, 3);
    let params = Params { m: 8, ef_construction: 32 };
    let graph = build(Metric::L2, &data, params, 3);
    let (entry, top) = graph.entry().unwrap();
    assert_eq!(graph.level(entry), top);
    let mut incoming = vec![0usize; graph.len()];
    for i in 0..graph.len() as u32 {
        assert!(graph.level(i) <= top);
        for l in 0..=graph.level(i) {
            let links = graph.neighbors(i, l);
            assert!(links.len() <= params.max_neighbors(l));
            for &n in &links {
                assert_ne!(n, i, "element {i} links to itself");
                assert!(graph.level(n) >= l, "link {i}->{n} on level {l} above {n}'s top");
                if l == 0 {
                    incoming[n as usize] += 1;
                }
            }
        }
    }
    let orphans = incoming.iter().enumerate().filter(|&(i, &n)| n == 0 && i as u32 != entry).count();
    assert!(orphans * 100 < graph.len(), "{orphans} elements nothing links to");
}

/// Brute-force view of a small graph for ResumableSearch.
struct Flat<'a> {
    graph: &'a MemoryGraph,
    query: Vec<f32>,
    seen: std::collections::HashSet<u32>,
}

impl Graph for Flat<'_> {
    type Id = u32;
    fn distance(&mut self, id: u32) -> Option<f32> {
        Some(Metric::L2.graph_distance(&self.query, self.graph.vector(id)))
    }
    fn neighbors(&mut self, id: u32, level: usize, out: &mut Vec<u32>) {
        out.extend(self.graph.neighbors(id, level));
    }
    fn visit(&mut self, id: u32) -> bool {
        self.seen.insert(id)
    }
}

#[test]
fn resumed_search_returns_each_element_once_and_reaches_all() {
    let data = clustered(800, 16, 8, 4);
    let graph = build(Metric::L2, &data, Params { m: 8, ef_construction: 32 }, 1);
    let (entry, top) = graph.entry().unwrap();
    let mut view = Flat { graph: &graph, query: data[5].clone(), seen: Default::default() };
    let d = view.distance(entry).unwrap();
    let mut start = Candidate { distance: d, id: entry };
    for l in (1..=top).rev() {
        start = greedy_closest(&mut view, start, l);
    }
    view.visit(start.id);
    let mut search = ResumableSearch::new(&[start], true);
    let first = search.next_batch(&mut view, 10, 0, usize::MAX);
    assert_eq!(first[0].id, 5, "the query's own vector comes first");
    let mut returned: Vec<u32> = first.iter().map(|c| c.id).collect();
    while !search.exhausted() {
        let batch = search.next_batch(&mut view, 10, 0, usize::MAX);
        assert!(!batch.is_empty());
        returned.extend(batch.iter().map(|c| c.id));
    }
    let mut unique = returned.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), returned.len(), "an element was returned twice");
    assert!(returned.len() >= 790, "only {} of 800 reached", returned.len());
    // Batches come out roughly in order: the first 10 are the exact 10 nearest.
    let truth = exact(Metric::L2, &graph, &data[5], 10);
    assert!(first.iter().all(|c| truth.contains(&c.id)));
}

#[test]
fn cosine_refuses_a_zero_vector() {
    let mut v = vec![0.0f32; 4];
    assert_eq!(Metric::Cosine.prepare(&mut v).unwrap_err(), "cosine distance is undefined for a zero embedding");
    let mut v = vec![3.0f32, 4.0];
    Metric::Cosine.prepare(&mut v).unwrap();
    assert_eq!(v, vec![0.6, 0.8]);
}

