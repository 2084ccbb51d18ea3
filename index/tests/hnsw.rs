//! The HNSW algorithms against exact search: recall of the in-memory graph for the
//! three metrics, every element reachable and found (near-duplicates, threaded
//! builds against the serial one), the descent reaching the query's cluster, the
//! bounded search, the heuristic's cached verdicts and the sparing of a last in-link.

use m3ret_index::hnsw::{
    descend, reselect, search_layer_bounded, select_neighbors, spare_left_out, Candidate, Graph,
    LevelRng, MemoryGraph, Metric, Params, ScoredLink,
};
use std::time::Duration;

fn clustered(n: usize, dims: usize, clusters: usize, seed: u64) -> Vec<Vec<f32>> {
    m3ret_index::vector::synthetic::Clustered::new(dims, clusters).vectors(n, seed)
}

fn build(metric: Metric, data: &[Vec<f32>], params: Params, threads: usize) -> MemoryGraph {
    build_with_levels_from(42, metric, data, params, threads)
}

/// As [`build`], with the levels drawn from `seed`.
fn build_with_levels_from(
    seed: u64,
    metric: Metric,
    data: &[Vec<f32>],
    params: Params,
    threads: usize,
) -> MemoryGraph {
    let mut rng = LevelRng::new(seed);
    let levels = data
        .iter()
        .map(|_| params.level_for(rng.next_unit(), 15) as u8)
        .collect();
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

/// Recall@10 at `ef` over every `step`-th element as query (its own vector).
fn self_recall(metric: Metric, graph: &MemoryGraph, step: usize, ef: usize) -> f64 {
    let queries: Vec<u32> = (0..graph.len() as u32).step_by(step).collect();
    let mut hits = 0;
    for &q in &queries {
        let query = graph.vector(q).to_vec();
        let truth = exact(metric, graph, &query, 10);
        hits += graph
            .search(&query, 10, ef)
            .iter()
            .filter(|c| truth.contains(&c.id))
            .count();
    }
    hits as f64 / (10 * queries.len()) as f64
}

fn exact(metric: Metric, graph: &MemoryGraph, query: &[f32], k: usize) -> Vec<u32> {
    let mut all: Vec<(f32, u32)> = (0..graph.len() as u32)
        .map(|i| (metric.graph_distance(query, graph.vector(i)), i))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.iter().take(k).map(|x| x.1).collect()
}

#[test]
fn recall_at_10_is_high_for_every_metric() {
    let data = clustered(3000, 48, 20, 1);
    let queries = clustered(50, 48, 20, 2);
    for metric in [Metric::Cosine, Metric::L2, Metric::InnerProduct] {
        let graph = build(
            metric,
            &data,
            Params {
                m: 16,
                ef_construction: 64,
            },
            2,
        );
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
    let data = clustered(6000, 16, 10, 3);
    let params = Params {
        m: 8,
        ef_construction: 32,
    };
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
                assert_eq!(
                    links.iter().filter(|&&x| x == n).count(),
                    1,
                    "element {i} links twice to {n} on level {l}"
                );
                assert!(
                    graph.level(n) >= l,
                    "link {i}->{n} on level {l} above {n}'s top"
                );
                if l == 0 {
                    incoming[n as usize] += 1;
                }
            }
        }
    }
    let orphans = incoming
        .iter()
        .enumerate()
        .filter(|&(i, &n)| n == 0 && i as u32 != entry)
        .count();
    assert_eq!(orphans, 0, "elements nothing links to on layer 0");
    assert_eq!(graph.unreachable(), Vec::<u32>::new());
}

/// Near-duplicate rows under cosine: the heuristic prunes nearly every candidate.
/// Before lists were filled with pruned candidates (keepPrunedConnections) 11% of
/// these elements were unreachable after a one-thread build, and recall@10 was
/// 0.12 at ef_search 40. pgvector reaches 0.40 and 0.52 at ef_search 40 and 100
/// on the same rows; the graph must do at least as well, and better as ef grows.
#[test]
fn near_duplicates_leave_no_element_unreachable_and_recall_grows_with_ef() {
    let data = m3ret_index::vector::synthetic::near_duplicates(20_000, 64, 1);
    let graph = build(
        Metric::Cosine,
        &data,
        Params {
            m: 16,
            ef_construction: 64,
        },
        2,
    );
    assert_eq!(graph.unreachable(), Vec::<u32>::new());
    let recall: Vec<f64> = [40, 100, 400]
        .iter()
        .map(|&ef| self_recall(Metric::Cosine, &graph, 100, ef))
        .collect();
    assert!(
        recall[0] >= 0.40 && recall[1] >= 0.52,
        "recall@10 at ef 40, 100, 400: {recall:?}"
    );
    assert!(
        recall[0] < recall[1] && recall[1] < recall[2],
        "recall@10 at ef 40, 100, 400: {recall:?}"
    );
}

/// Under inner product the same rows have norms from 4 to 40: the lists of the
/// largest vectors fill with links that are their targets' only way in, and 1,166
/// of 5,000 elements were once left unreachable (the last pass found no list that
/// could spare a link). Every element must be reachable, serial or threaded.
#[test]
fn inner_product_over_rows_of_many_norms_leaves_no_element_unreachable() {
    let data = m3ret_index::vector::synthetic::near_duplicates(5_000, 64, 1);
    for threads in [1, 3] {
        let graph = build(
            Metric::InnerProduct,
            &data,
            Params {
                m: 16,
                ef_construction: 64,
            },
            threads,
        );
        assert_eq!(graph.unreachable(), Vec::<u32>::new(), "{threads} threads");
    }
}

/// The threaded builder against the serial one on the same data: threads once lost
/// links (an element overwrote the links others had just made to it) and left
/// elements unreachable that the serial build reached. Both must reach every
/// element, at the same recall.
#[test]
fn the_threaded_build_reaches_every_element_as_the_serial_one_does() {
    let data = clustered(20_000, 128, 50, 5);
    let params = Params {
        m: 16,
        ef_construction: 64,
    };
    let serial = build(Metric::Cosine, &data, params, 1);
    let threaded = build(Metric::Cosine, &data, params, 4);
    assert_eq!(serial.unreachable(), Vec::<u32>::new());
    assert_eq!(threaded.unreachable(), Vec::<u32>::new());
    let (rs, rt) = (
        self_recall(Metric::Cosine, &serial, 100, 20),
        self_recall(Metric::Cosine, &threaded, 100, 20),
    );
    assert!(
        rs >= 0.95 && (rs - rt).abs() <= 0.02,
        "recall@10 at ef 20: serial {rs}, threaded {rt}"
    );
}

/// Threads once linked an element into upper layers before its layer-0 list was
/// written: elements inserted beside it then found only it and linked among
/// themselves, out of reach of their own cluster (CI's dump test missed one row at
/// ef_search 400 among 1,500; about one build in twenty had such elements). Over
/// forty threaded builds with different levels, a search as wide as ef 400 must
/// return every element's exact 10 nearest.
#[test]
fn threaded_builds_leave_no_element_out_of_reach_of_its_own_cluster() {
    let data = clustered(1_500, 32, 10, 21);
    let params = Params {
        m: 16,
        ef_construction: 64,
    };
    let mut builds_with_misses = Vec::new();
    for seed in 0..40 {
        let graph = build_with_levels_from(seed, Metric::Cosine, &data, params, 3);
        let missed: usize = (0..graph.len() as u32)
            .map(|q| {
                let query = graph.vector(q).to_vec();
                let found: Vec<u32> = graph.search(&query, 10, 400).iter().map(|c| c.id).collect();
                exact(Metric::Cosine, &graph, &query, 10)
                    .iter()
                    .filter(|id| !found.contains(id))
                    .count()
            })
            .sum();
        if missed > 0 {
            builds_with_misses.push((seed, missed));
        }
    }
    assert_eq!(builds_with_misses, Vec::new(), "(levels seed, rows missed)");
}

/// On 100 well-separated clusters, a greedy walk through the sparse upper layers
/// could stop in a cluster other than the query's, and the search of layer 0 then
/// found none of its neighbours (the SQL recall test failed so, now and then). The
/// descent must find the query's own cluster for every query. One build thread,
/// so that the graph is the same on every run.
#[test]
fn the_descent_through_the_upper_layers_reaches_the_query_cluster() {
    const CLUSTERS: usize = 100;
    let data = clustered(20_000, 384, CLUSTERS, 1);
    let queries = clustered(40, 384, CLUSTERS, 2);
    let graph = build(
        Metric::L2,
        &data,
        Params {
            m: 16,
            ef_construction: 64,
        },
        1,
    );
    let (entry, top) = graph.entry().unwrap();
    for (i, q) in queries.iter().enumerate() {
        let mut view = Flat {
            graph: &graph,
            query: q.clone(),
            seen: Default::default(),
        };
        let d = view.distance(entry).unwrap();
        let start = descend(
            &mut view,
            Candidate {
                distance: d,
                id: entry,
            },
            top,
            0,
        );
        // Member j of the data, and query i, are in cluster j mod CLUSTERS.
        assert_eq!(
            start.id as usize % CLUSTERS,
            i % CLUSTERS,
            "query {i} starts its layer-0 search in another cluster"
        );
    }
}

/// A small graph seen from one query, for the bounded search.
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
    fn forget_visited(&mut self) {
        self.seen.clear();
    }
}

#[test]
fn a_bounded_search_stops_at_its_bound_and_a_wide_one_reaches_everything() {
    let data = clustered(800, 16, 8, 4);
    let graph = build(
        Metric::L2,
        &data,
        Params {
            m: 8,
            ef_construction: 32,
        },
        1,
    );
    let (entry, top) = graph.entry().unwrap();
    let start = |view: &mut Flat| {
        let d = view.distance(entry).unwrap();
        let start = descend(
            view,
            Candidate {
                distance: d,
                id: entry,
            },
            top,
            0,
        );
        view.seen.clear();
        view.visit(start.id);
        start
    };
    let mut view = Flat {
        graph: &graph,
        query: data[5].clone(),
        seen: Default::default(),
    };
    let s = start(&mut view);
    let (found, visited) = search_layer_bounded(&mut view, &[s], 10, 0, 50);
    assert!(
        visited <= 50 + 2 * 8,
        "visited {visited} with a bound of 50"
    );
    assert_eq!(found[0].id, 5, "the query's own vector comes first");
    let s = start(&mut view);
    let (all, _) = search_layer_bounded(&mut view, &[s], 800, 0, usize::MAX);
    let mut ids: Vec<u32> = all.iter().map(|c| c.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "an element came back twice");
    assert!(all.len() >= 790, "only {} of 800 reached", all.len());
    assert!(
        all.windows(2).all(|w| w[0].distance <= w[1].distance),
        "results out of order"
    );
}

#[test]
fn cosine_refuses_a_zero_vector() {
    let mut v = vec![0.0f32; 4];
    assert_eq!(
        Metric::Cosine.prepare(&mut v).unwrap_err(),
        "cosine distance is undefined for a zero embedding"
    );
    let mut v = vec![3.0f32, 4.0];
    Metric::Cosine.prepare(&mut v).unwrap();
    assert_eq!(v, vec![0.6, 0.8]);
}

/// A full list gaining one candidate at a time, re-selected with the verdicts kept
/// from its last selection, keeps exactly what selecting afresh keeps, in order.
#[test]
fn reselecting_with_known_verdicts_keeps_what_selecting_afresh_keeps() {
    for (dims, clusters) in [(8, 3), (64, 1), (2, 20)] {
        let points = clustered(400, dims, clusters, 7);
        let between =
            |a: u32, b: u32| Metric::L2.graph_distance(&points[a as usize], &points[b as usize]);
        let link = |id: u32| ScoredLink {
            id,
            distance: between(0, id),
            accepted: false,
        };
        let m = 6;
        let mut list: Vec<ScoredLink<u32>> = (1..=m as u32).map(link).collect();
        let mut known = false;
        for new in m as u32 + 1..400 {
            let mut candidates = list.clone();
            candidates.push(link(new));
            candidates.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
            let afresh: Vec<Candidate<u32>> = candidates
                .iter()
                .map(|l| Candidate {
                    distance: l.distance,
                    id: l.id,
                })
                .collect();
            let expected: Vec<u32> = select_neighbors(&afresh, m, between)
                .iter()
                .map(|c| c.id)
                .collect();
            list = reselect(&mut candidates, m, known, new, between);
            let kept: Vec<u32> = list.iter().map(|l| l.id).collect();
            assert_eq!(kept, expected, "{dims} dims, after candidate {new}");
            known = true;
        }
    }
}

#[test]
fn a_left_out_link_with_no_other_way_in_is_spared_for_the_farthest_expendable_one() {
    // Candidates 1..=5 nearest first; the heuristic kept 1, 2, 3, 5 and left out 4.
    let by_distance = [1u32, 2, 3, 4, 5];
    let kept = [1u32, 2, 3, 5];
    // 4 has another in-link: the heuristic's choice stands.
    let mut list = kept;
    assert!(spare_left_out(&mut list, &by_distance, 4, |id| id == 4 || id == 2));
    assert_eq!(list, kept);
    // 4 has none: the farthest expendable kept link (2; 5 and 3 are not) goes.
    let mut list = kept;
    assert!(spare_left_out(&mut list, &by_distance, 4, |id| id == 1 || id == 2));
    assert_eq!(list, [1, 4, 3, 5]);
    // Nothing is expendable: the list is left as the heuristic chose, and the
    // caller hears so.
    let mut list = kept;
    assert!(!spare_left_out(&mut list, &by_distance, 4, |_| false));
    assert_eq!(list, kept);
}
