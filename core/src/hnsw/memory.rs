//! An HNSW graph in memory, built by worker threads: how an index build makes its
//! graph before writing it to pages.
//!
//! Each element's links sit behind their own lock, so threads insert different
//! elements at once (as hnswlib does); a search may see an element whose links are
//! not written yet, which only costs a little recall, never correctness.

use crate::vector::prefetch::prefetch_vector;
use super::{descend, fill_nearest, search_layer, select_neighbors, Candidate, Graph, Metric, Params};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

pub struct MemoryGraph {
    metric: Metric,
    params: Params,
    dims: usize,
    /// All vectors, prepared for `metric`, one after another.
    vectors: Vec<f32>,
    levels: Vec<u8>,
    /// Per element, its links on each of its levels.
    links: Vec<RwLock<Vec<Vec<u32>>>>,
    /// The element searches start from, and its level.
    entry: Mutex<Option<(u32, usize)>>,
}

impl MemoryGraph {
    /// A graph of `levels.len()` elements with no links yet.
    pub fn new(metric: Metric, params: Params, dims: usize, vectors: Vec<f32>, levels: Vec<u8>) -> Self {
        assert_eq!(vectors.len(), dims * levels.len(), "one vector per level");
        let links = levels.iter().map(|&l| RwLock::new(vec![Vec::new(); l as usize + 1])).collect();
        MemoryGraph { metric, params, dims, vectors, levels, links, entry: Mutex::new(None) }
    }

    /// Bytes one element takes in memory at `level`, for a build's memory budget.
    pub fn bytes_per_element(dims: usize, params: &Params, level: usize) -> usize {
        dims * 4 + params.slots(level) * 4 + 64 + (level + 1) * 24
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    pub fn vector(&self, i: u32) -> &[f32] {
        &self.vectors[i as usize * self.dims..(i as usize + 1) * self.dims]
    }

    pub fn level(&self, i: u32) -> usize {
        self.levels[i as usize] as usize
    }

    pub fn neighbors(&self, i: u32, level: usize) -> Vec<u32> {
        self.links[i as usize].read().unwrap()[level].clone()
    }

    pub fn entry(&self) -> Option<(u32, usize)> {
        *self.entry.lock().unwrap()
    }

    /// Inserts every element with `threads` worker threads. The calling thread does
    /// no graph work: every `tick` it calls `progress(elements done)`, and stops the
    /// workers when that returns false (the build was cancelled). True when complete.
    pub fn build(&self, threads: usize, tick: Duration, mut progress: impl FnMut(usize) -> bool) -> bool {
        if self.is_empty() {
            return true;
        }
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let cancelled = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| {
                    let mut visited = Visited::new(self.len());
                    while !cancelled.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= self.len() {
                            break;
                        }
                        self.insert(i as u32, &mut visited);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            while done.load(Ordering::Relaxed) < self.len() {
                if !progress(done.load(Ordering::Relaxed)) {
                    cancelled.store(true, Ordering::Relaxed);
                    break;
                }
                std::thread::sleep(tick);
            }
        });
        !cancelled.load(Ordering::Relaxed)
    }

    /// Links element `i` into the graph.
    fn insert(&self, i: u32, visited: &mut Visited) {
        let level = self.level(i);
        let (entry, top) = {
            let mut entry = self.entry.lock().unwrap();
            match *entry {
                None => {
                    *entry = Some((i, level));
                    return;
                }
                Some(e) => e,
            }
        };
        let query = self.vector(i);
        let mut view = View { graph: self, query, visited };
        let start = Candidate { distance: self.metric.graph_distance(query, self.vector(entry)), id: entry };
        let mut entries = vec![descend(&mut view, start, top, level)];
        for l in (0..=level.min(top)).rev() {
            // Each layer is searched afresh: an element seen on the layer above
            // must still be expanded on this one.
            view.visited.clear();
            entries.iter().for_each(|e| _ = view.visited.insert(e.id));
            let found = search_layer(&mut view, &entries, self.params.ef_construction, l);
            let candidates: Vec<_> = found.iter().copied().filter(|c| c.id != i).collect();
            let chosen = select_neighbors(&candidates, self.params.max_neighbors(l), |a, b| self.distance(a, b));
            self.links[i as usize].write().unwrap()[l] = chosen.iter().map(|c| c.id).collect();
            for c in &chosen {
                self.link_back(c.id, i, c.distance, l);
            }
            entries = found;
        }
        if level > top {
            let mut entry = self.entry.lock().unwrap();
            if entry.is_none_or(|(_, t)| level > t) {
                *entry = Some((i, level));
            }
        }
    }

    /// Adds `new` to the links of `to` on `level`, re-selecting when full.
    fn link_back(&self, to: u32, new: u32, distance: f32, level: usize) {
        let max = self.params.max_neighbors(level);
        let mut links = self.links[to as usize].write().unwrap();
        let list = &mut links[level];
        if list.contains(&new) {
            // `to` is being inserted too, and already chose `new` itself.
            return;
        }
        if list.len() < max {
            list.push(new);
            return;
        }
        let mut candidates: Vec<_> = list.iter().map(|&id| Candidate { distance: self.distance(to, id), id }).collect();
        candidates.push(Candidate { distance, id: new });
        candidates.sort();
        let mut kept: Vec<u32> = select_neighbors(&candidates, max, |a, b| self.distance(a, b)).iter().map(|c| c.id).collect();
        // Full lists stay full (the on-disk index does the same): an element that
        // every neighbour's heuristic dropped would have no in-link left.
        fill_nearest(&mut kept, &candidates, max);
        *list = kept;
    }

    fn distance(&self, a: u32, b: u32) -> f32 {
        self.metric.graph_distance(self.vector(a), self.vector(b))
    }

    /// The `k` nearest elements to `query` (prepared for the metric), nearest first.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Vec<Candidate<u32>> {
        let Some((entry, top)) = self.entry() else { return Vec::new() };
        let mut visited = Visited::new(self.len());
        let mut view = View { graph: self, query, visited: &mut visited };
        let start = Candidate { distance: self.metric.graph_distance(query, self.vector(entry)), id: entry };
        let nearest = descend(&mut view, start, top, 0);
        view.visited.clear();
        view.visited.insert(nearest.id);
        let mut found = search_layer(&mut view, &[nearest], ef.max(k), 0);
        found.truncate(k);
        found
    }
}

/// The graph seen from one query.
struct View<'a> {
    graph: &'a MemoryGraph,
    query: &'a [f32],
    visited: &'a mut Visited,
}

impl Graph for View<'_> {
    type Id = u32;

    fn distance(&mut self, id: u32) -> Option<f32> {
        Some(self.graph.metric.graph_distance(self.query, self.graph.vector(id)))
    }

    fn neighbors(&mut self, id: u32, level: usize, out: &mut Vec<u32>) {
        let links = self.graph.links[id as usize].read().unwrap();
        if let Some(list) = links.get(level) {
            out.extend_from_slice(list);
        }
    }

    fn visit(&mut self, id: u32) -> bool {
        self.visited.insert(id)
    }

    fn forget_visited(&mut self) {
        self.visited.clear();
    }

    fn prefetch(&mut self, ids: &[u32]) {
        ids.iter().for_each(|&id| prefetch_vector(self.graph.vector(id)));
    }
}

/// A visited set cleared in O(1): an element is visited when its stamp equals the
/// current epoch.
struct Visited {
    stamps: Vec<u32>,
    epoch: u32,
}

impl Visited {
    fn new(n: usize) -> Self {
        Visited { stamps: vec![0; n], epoch: 1 }
    }

    fn clear(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamps.fill(0);
            self.epoch = 1;
        }
    }

    fn insert(&mut self, id: u32) -> bool {
        let stamp = &mut self.stamps[id as usize];
        let first = *stamp != self.epoch;
        *stamp = self.epoch;
        first
    }
}
