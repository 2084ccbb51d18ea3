//! An HNSW graph in memory, built by worker threads: how an index build makes its
//! graph before writing it to pages.
//!
//! Each element's links sit behind their own lock, so threads insert different
//! elements at once (as hnswlib does). An element's own lists are written before
//! any other list links to it, so a search never meets an element without links.

use super::select::{reselect, spare_left_out, ScoredLink};
use super::{
    descend, find_neighbours, search_layer_afresh, select_neighbors, Candidate, Graph, Metric,
    Params,
};
use crate::vector::prefetch::prefetch_vector;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// One element's links on one layer, each with its distance to the element, so
/// that a full list gaining a candidate is re-selected without computing them
/// again, and with the heuristic's last verdicts ([`reselect`]).
#[derive(Clone, Default)]
struct List {
    links: Vec<ScoredLink<u32>>,
    /// Every link's `accepted` flag is from the list's last selection: false after
    /// any other change to the list.
    verdicts_known: bool,
}

impl List {
    fn contains(&self, id: u32) -> bool {
        self.links.iter().any(|l| l.id == id)
    }

    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.links.iter().map(|l| l.id)
    }
}

fn scored(c: &Candidate<u32>) -> ScoredLink<u32> {
    ScoredLink {
        id: c.id,
        distance: c.distance,
        accepted: false,
    }
}

pub struct MemoryGraph {
    metric: Metric,
    params: Params,
    dims: usize,
    /// All vectors, prepared for `metric`, one after another.
    vectors: Vec<f32>,
    levels: Vec<u8>,
    /// Per element, its links on each of its levels.
    links: Vec<RwLock<Vec<List>>>,
    /// Per element, how many layer-0 lists link to it: a list about to drop the
    /// last link to an element drops another one instead.
    in_links: Vec<AtomicU32>,
    /// The element searches start from, and its level.
    entry: Mutex<Option<(u32, usize)>>,
}

impl MemoryGraph {
    /// A graph of `levels.len()` elements with no links yet.
    pub fn new(
        metric: Metric,
        params: Params,
        dims: usize,
        vectors: Vec<f32>,
        levels: Vec<u8>,
    ) -> Self {
        assert_eq!(vectors.len(), dims * levels.len(), "one vector per level");
        let links = levels
            .iter()
            .map(|&l| RwLock::new(vec![List::default(); l as usize + 1]))
            .collect();
        let in_links = levels.iter().map(|_| AtomicU32::new(0)).collect();
        MemoryGraph {
            metric,
            params,
            dims,
            vectors,
            levels,
            links,
            in_links,
            entry: Mutex::new(None),
        }
    }

    /// Bytes one element takes in memory at `level`, for a build's memory budget.
    pub fn bytes_per_element(dims: usize, params: &Params, level: usize) -> usize {
        dims * 4 + params.slots(level) * 12 + 64 + (level + 1) * 32
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
        self.links[i as usize].read().unwrap()[level]
            .ids()
            .collect()
    }

    pub fn entry(&self) -> Option<(u32, usize)> {
        *self.entry.lock().unwrap()
    }

    /// Inserts every element with `threads` worker threads. The calling thread does
    /// no graph work: every `tick` it calls `progress(elements done)`, and stops the
    /// workers when that returns false (the build was cancelled). True when complete.
    pub fn build(
        &self,
        threads: usize,
        tick: Duration,
        mut progress: impl FnMut(usize) -> bool,
    ) -> bool {
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
        if cancelled.load(Ordering::Relaxed) {
            return false;
        }
        self.link_unreachable();
        true
    }

    /// Links element `i` into the graph: finds its neighbours on every layer, writes
    /// its own lists, and only then links back to it. A search that reaches `i`
    /// must find its lists written: an element met on an upper layer whose layer-0
    /// list is still empty ends the layer-0 search of whatever is being inserted
    /// beside it, and such elements then link only among themselves, out of reach
    /// of searches from their own cluster (seen with 3 threads on 1,500 clustered
    /// vectors: up to 10 elements no search at ef 400 returned).
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
        let chosen = self.choose_neighbours(i, entry, top, visited);
        for (l, neighbours) in chosen.iter().enumerate() {
            self.set_links(i, l, neighbours);
        }
        for (l, neighbours) in chosen.iter().enumerate().rev() {
            for c in neighbours {
                self.link_back(c.id, i, c.distance, l);
            }
        }
        if self.in_links[i as usize].load(Ordering::Relaxed) == 0 {
            // Every neighbour's list preferred its own links: `i` must be let in
            // somewhere, or no search would ever reach it.
            self.find_home(i, &chosen[0], true);
        }
        if level > top {
            let mut entry = self.entry.lock().unwrap();
            if entry.is_none_or(|(_, t)| level > t) {
                *entry = Some((i, level));
            }
        }
    }

    /// The neighbours element `i` links to on each of its layers it shares with
    /// the graph (layer 0 first), found from the entry without writing anything.
    fn choose_neighbours(
        &self,
        i: u32,
        entry: u32,
        top: usize,
        visited: &mut Visited,
    ) -> Vec<Vec<Candidate<u32>>> {
        let level = self.level(i);
        let query = self.vector(i);
        let mut view = View {
            graph: self,
            query,
            visited,
        };
        let start = Candidate {
            distance: self.metric.graph_distance(query, self.vector(entry)),
            id: entry,
        };
        let start = descend(&mut view, start, top, level);
        find_neighbours(
            &mut view,
            start,
            level.min(top),
            self.params.ef_construction,
            |_, l, found| {
                // No list links to `i` before it has chosen its own links, so its
                // search cannot meet it.
                debug_assert!(found.iter().all(|c| c.id != i));
                select_neighbors(found, self.params.max_neighbors(l), |a, b| {
                    self.distance(a, b)
                })
            },
        )
    }

    /// Writes the links element `i` chose on `level`. No other list links to `i`
    /// yet, so no search has found it and no thread has written to its lists.
    fn set_links(&self, i: u32, level: usize, chosen: &[Candidate<u32>]) {
        let mut links = self.links[i as usize].write().unwrap();
        let list = &mut links[level];
        debug_assert!(list.links.is_empty(), "element {i} was linked to early");
        self.replace_list(level, list, chosen.iter().map(scored).collect());
    }

    /// Adds `new` to the links of `to` on `level`, re-selecting when full.
    fn link_back(&self, to: u32, new: u32, distance: f32, level: usize) {
        let max = self.params.max_neighbors(level);
        let mut links = self.links[to as usize].write().unwrap();
        let list = &mut links[level];
        if list.contains(new) {
            // `to` is being inserted too, and already chose `new` itself.
            return;
        }
        let new_link = ScoredLink {
            id: new,
            distance,
            accepted: false,
        };
        if list.links.len() < max {
            list.links.push(new_link);
            list.verdicts_known = false;
            if level == 0 {
                self.in_links[new as usize].fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let mut candidates = list.links.clone();
        candidates.push(new_link);
        // The order reselect's verdicts are kept in: nearest first, ties by id.
        candidates.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        // Full lists stay full (keepPrunedConnections): exactly one candidate is
        // left out.
        let known = list.verdicts_known;
        let kept = reselect(&mut candidates, max, known, new, |a, b| self.distance(a, b));
        let mut kept_ids: Vec<u32> = kept.iter().map(|l| l.id).collect();
        if level == 0 {
            // When the candidate left out holds no other in-link, it stays and the
            // farthest kept link whose target has another one goes instead (or
            // `new`, which [`Self::find_home`] places if no list takes it).
            let by_distance: Vec<u32> = candidates.iter().map(|l| l.id).collect();
            if let Some(left_out) = by_distance
                .iter()
                .copied()
                .find(|id| !kept_ids.contains(id))
            {
                spare_left_out(&mut kept_ids, &by_distance, left_out, |id| {
                    id == new || self.has_other_in_link(id)
                });
            }
        }
        if kept_ids.iter().zip(&kept).all(|(id, l)| *id == l.id) {
            self.replace_list(level, list, kept);
            list.verdicts_known = true;
        } else {
            // A link was spared against the heuristic's choice.
            let updated = kept_ids
                .iter()
                .map(|id| *candidates.iter().find(|l| l.id == *id).unwrap())
                .collect();
            self.replace_list(level, list, updated);
        }
    }

    /// Lets `i` into the layer-0 list of the nearest of `near` (nearest first) that
    /// can take it: a list with room, or (if `may_replace`) one whose farthest
    /// replaceable link points to an element that keeps another in-link. False if
    /// none could.
    fn find_home(&self, i: u32, near: &[Candidate<u32>], may_replace: bool) -> bool {
        let max = self.params.max_neighbors(0);
        for c in near {
            let mut links = self.links[c.id as usize].write().unwrap();
            let list = &mut links[0];
            if list.contains(i) {
                return true;
            }
            let mut updated = list.links.clone();
            let home = ScoredLink {
                id: i,
                distance: self.distance(c.id, i),
                accepted: false,
            };
            if updated.len() < max {
                updated.push(home);
            } else if !may_replace {
                continue;
            } else {
                let mut by_distance = updated.clone();
                by_distance.sort_by(|a, b| a.distance.total_cmp(&b.distance));
                let Some(victim) = by_distance
                    .iter()
                    .rev()
                    .find(|v| self.has_other_in_link(v.id))
                else {
                    continue;
                };
                let slot = updated.iter().position(|l| l.id == victim.id).unwrap();
                updated[slot] = home;
            }
            self.replace_list(0, list, updated);
            return true;
        }
        false
    }

    /// When no list near `o` has a link it can spare (every target's only in-link,
    /// as under inner product, where the lists of the largest vectors fill with
    /// elements nothing else links to): `o` takes a link over. A list near `o`
    /// gives one of its links (the farthest it can) to `o`, and `o` links on to
    /// that link's target: in a free slot of its own list, or in place of one of
    /// its links whose target the handed-over target links to. So everything
    /// reached before stays reached. Takes two lists' locks at once: only for the
    /// single-threaded last pass.
    fn take_over_home(&self, o: u32, near: &[Candidate<u32>]) -> bool {
        let max = self.params.max_neighbors(0);
        for c in near.iter().filter(|c| c.id != o) {
            let mut home = self.links[c.id as usize].write().unwrap();
            let mut victims: Vec<ScoredLink<u32>> = home[0]
                .links
                .iter()
                .filter(|l| l.id != o)
                .copied()
                .collect();
            victims.sort_by(|a, b| b.distance.total_cmp(&a.distance));
            let mut own = self.links[o as usize].write().unwrap();
            for victim in victims {
                if own[0].contains(victim.id) {
                    continue;
                }
                let onward = ScoredLink {
                    id: victim.id,
                    distance: self.distance(o, victim.id),
                    accepted: false,
                };
                let mut own_updated = own[0].links.clone();
                if own_updated.len() < max {
                    own_updated.push(onward);
                } else {
                    let victim_links = self.neighbors(victim.id, 0);
                    let Some(slot) = own_updated
                        .iter()
                        .position(|l| victim_links.contains(&l.id))
                    else {
                        continue;
                    };
                    own_updated[slot] = onward;
                }
                self.replace_list(0, &mut own[0], own_updated);
                let to_o = ScoredLink {
                    id: o,
                    distance: self.distance(c.id, o),
                    accepted: false,
                };
                let updated = home[0]
                    .links
                    .iter()
                    .map(|l| if l.id == victim.id { to_o } else { *l })
                    .collect();
                self.replace_list(0, &mut home[0], updated);
                return true;
            }
        }
        false
    }

    /// Whether an element keeps a layer-0 in-link when one list drops it.
    fn has_other_in_link(&self, id: u32) -> bool {
        self.in_links[id as usize].load(Ordering::Relaxed) > 1
    }

    /// Replaces a list's links (its owner's lock held), keeping the layer-0 in-link
    /// counts. The heuristic's verdicts are unknown after it, unless the caller
    /// says otherwise.
    fn replace_list(&self, level: usize, list: &mut List, updated: Vec<ScoredLink<u32>>) {
        if level == 0 {
            for l in list
                .links
                .iter()
                .filter(|l| !updated.iter().any(|u| u.id == l.id))
            {
                self.in_links[l.id as usize].fetch_sub(1, Ordering::Relaxed);
            }
            for u in updated.iter().filter(|u| !list.contains(u.id)) {
                self.in_links[u.id as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
        list.links = updated;
        list.verdicts_known = false;
    }

    /// The elements no walk along links (of any layer) from the entry reaches: no
    /// search can return them. (Layer 0 alone may fall apart into well-separated
    /// clusters that only upper layers join, as searches expect.)
    pub fn unreachable(&self) -> Vec<u32> {
        let mut reached = vec![false; self.len()];
        if let Some((entry, _)) = self.entry() {
            self.mark_reachable(entry, &mut reached);
        }
        (0..self.len() as u32)
            .filter(|&i| !reached[i as usize])
            .collect()
    }

    fn mark_reachable(&self, from: u32, reached: &mut [bool]) {
        if reached[from as usize] {
            return;
        }
        reached[from as usize] = true;
        let mut stack = vec![from];
        while let Some(e) = stack.pop() {
            for list in self.links[e as usize].read().unwrap().iter() {
                for n in list.ids() {
                    if !reached[n as usize] {
                        reached[n as usize] = true;
                        stack.push(n);
                    }
                }
            }
        }
    }

    /// The last step of a build: the in-link counts keep an element from losing its
    /// last in-link, but two threads can each drop one of its last two at the same
    /// moment, and a group of elements can link only among themselves. Each element
    /// still unreachable is let into the list of its nearest reachable elements.
    /// A link given up for one may have been another's only way in from the
    /// reachable part (the in-link counts include links from unreachable elements),
    /// so the pass repeats while it makes progress. Returns how many had to be
    /// linked (typically none or a handful in 10^5).
    pub fn link_unreachable(&self) -> usize {
        let mut linked = 0;
        let mut left = usize::MAX;
        loop {
            let orphans = self.unreachable();
            if orphans.is_empty() || orphans.len() >= left {
                return linked;
            }
            left = orphans.len();
            linked += self.link_round(orphans);
        }
    }

    /// One pass of [`Self::link_unreachable`] over `orphans`.
    fn link_round(&self, orphans: Vec<u32>) -> usize {
        let mut reached = vec![true; self.len()];
        orphans.iter().for_each(|&o| reached[o as usize] = false);
        let mut linked = 0;
        for o in orphans {
            if reached[o as usize] {
                continue;
            }
            // A search from the entry finds only reachable elements: homes that
            // make `o` reachable too.
            let near = self.search(
                self.vector(o),
                self.params.ef_construction,
                self.params.ef_construction,
            );
            // Safe ways in first: a list with room, a link taken over. Only then
            // one that trusts the in-link counts.
            if self.find_home(o, &near, false)
                || self.take_over_home(o, &near)
                || self.find_home(o, &near, true)
            {
                linked += 1;
                self.mark_reachable(o, &mut reached);
            }
        }
        linked
    }

    fn distance(&self, a: u32, b: u32) -> f32 {
        self.metric.graph_distance(self.vector(a), self.vector(b))
    }

    /// The `k` nearest elements to `query` (prepared for the metric), nearest first.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Vec<Candidate<u32>> {
        let Some((entry, top)) = self.entry() else {
            return Vec::new();
        };
        let mut visited = Visited::new(self.len());
        let mut view = View {
            graph: self,
            query,
            visited: &mut visited,
        };
        let start = Candidate {
            distance: self.metric.graph_distance(query, self.vector(entry)),
            id: entry,
        };
        let nearest = descend(&mut view, start, top, 0);
        let (mut found, _) =
            search_layer_afresh(&mut view, &[nearest], &[], ef.max(k), 0, usize::MAX);
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
        Some(
            self.graph
                .metric
                .graph_distance(self.query, self.graph.vector(id)),
        )
    }

    fn neighbors(&mut self, id: u32, level: usize, out: &mut Vec<u32>) {
        let links = self.graph.links[id as usize].read().unwrap();
        if let Some(list) = links.get(level) {
            out.extend(list.ids());
        }
    }

    fn visit(&mut self, id: u32) -> bool {
        self.visited.insert(id)
    }

    fn forget_visited(&mut self) {
        self.visited.clear();
    }

    fn prefetch(&mut self, ids: &[u32]) {
        ids.iter()
            .for_each(|&id| prefetch_vector(self.graph.vector(id)));
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
        Visited {
            stamps: vec![0; n],
            epoch: 1,
        }
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
