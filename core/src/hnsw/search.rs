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
    search_layer_bounded(graph, entries, ef, level, usize::MAX).0
}

/// [`search_layer`] that stops once it computed `max_visited` distances; also
/// returns how many it computed.
pub fn search_layer_bounded<G: Graph>(
    graph: &mut G,
    entries: &[Candidate<G::Id>],
    ef: usize,
    level: usize,
    max_visited: usize,
) -> (Vec<Candidate<G::Id>>, usize) {
    // Nearest unexpanded element on top of `frontier`; farthest result on top of `results`.
    let mut frontier: BinaryHeap<Reverse<Candidate<G::Id>>> = entries.iter().copied().map(Reverse).collect();
    let mut results: BinaryHeap<Candidate<G::Id>> = entries.iter().copied().collect();
    let mut visited = entries.len();
    let mut links = Vec::new();
    while let Some(Reverse(nearest)) = frontier.pop() {
        let farthest = results.peek().map_or(f32::INFINITY, |c| c.distance);
        if (results.len() >= ef && nearest.distance > farthest) || visited >= max_visited {
            break;
        }
        links.clear();
        graph.neighbors(nearest.id, level, &mut links);
        for &id in &links {
            if !graph.visit(id) {
                continue;
            }
            let Some(distance) = graph.distance(id) else { continue };
            visited += 1;
            if results.len() < ef || distance < results.peek().map_or(f32::INFINITY, |c| c.distance) {
                frontier.push(Reverse(Candidate { distance, id }));
                results.push(Candidate { distance, id });
                if results.len() > ef {
                    results.pop();
                }
            }
        }
    }
    (results.into_sorted_vec(), visited)
}
