//! Best-first search of one HNSW layer (Algorithm 2 of the paper), written against
//! a [`Graph`] so that the in-memory builder and the on-disk index share it.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// What a search needs from a graph. An implementation holds the query.
pub trait Graph {
    type Id: Copy;
    /// Distance from the query to element `id`; `None` when it cannot be read
    /// (e.g. removed meanwhile), and the search then ignores it.
    fn distance(&mut self, id: Self::Id) -> Option<f32>;
    /// Appends the neighbours of `id` on `level` to `out`.
    fn neighbors(&mut self, id: Self::Id, level: usize, out: &mut Vec<Self::Id>);
    /// Records `id` as seen; true the first time.
    fn visit(&mut self, id: Self::Id) -> bool;
}

/// An element and its distance to the query; ordered by distance.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<Id> {
    pub distance: f32,
    pub id: Id,
}

impl<Id> PartialEq for Candidate<Id> {
    fn eq(&self, other: &Self) -> bool {
        self.distance.total_cmp(&other.distance) == Ordering::Equal
    }
}
impl<Id> Eq for Candidate<Id> {}
impl<Id> PartialOrd for Candidate<Id> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<Id> Ord for Candidate<Id> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance.total_cmp(&other.distance)
    }
}

/// Descends one layer greedily (ef = 1) from `entry`.
pub fn greedy_closest<G: Graph>(graph: &mut G, entry: Candidate<G::Id>, level: usize) -> Candidate<G::Id> {
    let mut best = entry;
    let mut links = Vec::new();
    loop {
        links.clear();
        graph.neighbors(best.id, level, &mut links);
        let mut moved = false;
        for &id in &links {
            if let Some(d) = graph.distance(id) {
                if d < best.distance {
                    best = Candidate { distance: d, id };
                    moved = true;
                }
            }
        }
        if !moved {
            return best;
        }
    }
}

/// The `ef` nearest elements found on `level` from `entries`, nearest first.
/// `entries` must already be marked visited.
pub fn search_layer<G: Graph>(graph: &mut G, entries: &[Candidate<G::Id>], ef: usize, level: usize) -> Vec<Candidate<G::Id>> {
    let mut search = ResumableSearch::new(entries, false);
    search.next_batch(graph, ef, level, usize::MAX)
}

/// A layer search that can go on after it returned its first `ef` results: the
/// elements it pushed out of the result set and the frontier it did not expand are
/// kept, and the next batch continues from them (how a filtered scan gets more rows).
pub struct ResumableSearch<Id> {
    /// Discovered elements not expanded yet, nearest on top.
    frontier: BinaryHeap<Reverse<Candidate<Id>>>,
    /// Discovered elements neither returned nor in the current batch, nearest on top.
    /// Only kept when the search is meant to be resumed.
    discarded: Option<BinaryHeap<Reverse<Candidate<Id>>>>,
    /// Elements whose distance was computed.
    pub visited: usize,
}

impl<Id: Copy> ResumableSearch<Id> {
    pub fn new(entries: &[Candidate<Id>], resumable: bool) -> Self {
        let frontier: BinaryHeap<_> = entries.iter().copied().map(Reverse).collect();
        let discarded = resumable.then(|| frontier.clone());
        ResumableSearch { frontier, discarded, visited: entries.len() }
    }

    /// The next (up to) `ef` results, nearest first. In a resumed search, results
    /// follow on from earlier batches (not strictly: a later batch may hold an
    /// element nearer than the last one of the batch before). Stops early once
    /// `max_visited` distances have been computed in all.
    pub fn next_batch<G: Graph<Id = Id>>(&mut self, graph: &mut G, ef: usize, level: usize, max_visited: usize) -> Vec<Candidate<Id>> {
        // Max-heap of the batch: its top is the farthest kept result.
        let mut batch: BinaryHeap<Candidate<Id>> = BinaryHeap::with_capacity(ef + 1);
        match &mut self.discarded {
            Some(discarded) => {
                while batch.len() < ef {
                    match discarded.pop() {
                        Some(Reverse(c)) => batch.push(c),
                        None => break,
                    }
                }
            }
            None => batch.extend(self.frontier.iter().map(|r| r.0)),
        }
        let mut links = Vec::new();
        while let Some(&Reverse(nearest)) = self.frontier.peek() {
            if batch.len() >= ef && nearest.distance > batch.peek().map_or(f32::INFINITY, |c| c.distance) {
                break;
            }
            if self.visited >= max_visited {
                break;
            }
            self.frontier.pop();
            links.clear();
            graph.neighbors(nearest.id, level, &mut links);
            for &id in &links {
                if !graph.visit(id) {
                    continue;
                }
                let Some(distance) = graph.distance(id) else { continue };
                self.visited += 1;
                let c = Candidate { distance, id };
                let farthest = batch.peek().map_or(f32::INFINITY, |c| c.distance);
                if batch.len() < ef || distance < farthest {
                    self.frontier.push(Reverse(c));
                    batch.push(c);
                    if batch.len() > ef {
                        let out = batch.pop().unwrap();
                        if let Some(d) = &mut self.discarded {
                            d.push(Reverse(out));
                        }
                    }
                } else if let Some(d) = &mut self.discarded {
                    // Not good enough for this batch; a later one may want it and
                    // the elements behind it.
                    d.push(Reverse(c));
                    self.frontier.push(Reverse(c));
                }
            }
        }
        batch.into_sorted_vec()
    }

    /// True when a further batch cannot find anything.
    pub fn exhausted(&self) -> bool {
        self.frontier.is_empty() && self.discarded.as_ref().is_none_or(|d| d.is_empty())
    }
}
