//! VACUUM (`ambulkdelete`, `amvacuumcleanup`).
//!
//! 1. Find the elements whose heap rows are dead (no lock beyond the pages').
//! 2. Under the exclusive update lock (inserts wait, scans go on): every live
//!    element that links to a dead one gets its list re-selected among its live
//!    links and the links of its dead neighbours (their two-hop neighbourhood), so
//!    the graph stays connected and recall does not decay; a new entry element is
//!    chosen if the old one died.
//! 3. The dead elements are freed in place; inserts reuse them (the meta page's
//!    insert page moves back to the first freed one), so the index does not grow.
//! 4. Still under the update lock: live elements that only dead ones linked to (or
//!    a group of them linking only to each other) lost their way in with the dead.
//!    A walk of every link from the entry finds them; each gets a place in the list
//!    of one of its nearest reachable elements, as an insert that no list took does.
//!    A VACUUM with nothing dead to remove still walks the graph and, if it finds an
//!    element that inserts left unreachable, relinks it the same way.

use super::buffer::{self, change_pages, update_meta, Lock, Locked};
use super::graph::{DiskGraph, TidMap, TidSet};
use super::insert::{find_home, live_neighbours, Newcomer};
use super::page::{Layout, Meta, Tid};
use super::update_lock::UpdateLock;
use m3ret_core::hnsw::{extend_neighbors, fill_nearest, search_layer_afresh, Candidate, Graph};
use pgrx::pg_sys;

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn ambulkdelete(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
    callback: pg_sys::IndexBulkDeleteCallback,
    callback_state: *mut std::ffi::c_void,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: PostgreSQL passes a valid info, and a stats that is null or ours.
    let index = unsafe { (*info).index };
    let stats = if stats.is_null() { new_stats() } else { stats };
    let meta = buffer::read_meta(index);
    let callback = callback.expect("VACUUM passes a callback");
    // SAFETY: the callback and its state are VACUUM's, valid for this call.
    let is_dead = |heap: Tid| unsafe { callback(&mut heap.to_item_pointer(), callback_state) };
    let (dead, live) = find_dead(index, meta.layout(), is_dead);
    if !dead.is_empty() {
        let _alone = UpdateLock::exclusive(index);
        let meta = buffer::read_meta(index);
        repair_links(index, &meta, &dead);
        free_elements(index, &meta, &dead);
        relink_unreachable(index, &buffer::read_meta(index));
    }
    // SAFETY: `stats` is VACUUM's or new_stats()'s, non-null either way.
    unsafe {
        (*stats).tuples_removed += dead.len() as f64;
        (*stats).num_index_tuples = live as f64;
    }
    stats
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amvacuumcleanup(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: PostgreSQL passes a valid info.
    if unsafe { (*info).analyze_only } {
        return stats;
    }
    // SAFETY: as above.
    let index = unsafe { (*info).index };
    let stats = if stats.is_null() {
        // No bulk delete ran (nothing was dead): count what is there.
        let stats = new_stats();
        let (_, live) = find_dead(index, buffer::read_meta(index).layout(), |_| false);
        // SAFETY: freshly allocated by new_stats().
        unsafe { (*stats).num_index_tuples = live as f64 };
        // Inserts give up only links whose targets stay reachable, so this walk
        // should find nothing; whatever it finds (an index from an older version,
        // say) is linked here, as after a bulk delete.
        if !unreached(index, &buffer::read_meta(index)).1.is_empty() {
            let _alone = UpdateLock::exclusive(index);
            relink_unreachable(index, &buffer::read_meta(index));
        }
        stats
    } else {
        stats
    };
    // SAFETY: VACUUM's stats or ours, non-null either way.
    unsafe { (*stats).num_pages = buffer::block_count(index) };
    stats
}

/// VACUUM's cost-based delay, and a point where it can be cancelled.
fn pause_for_cost_delay() {
    // SAFETY: called from VACUUM, holding no buffer lock (a cancel ERRORs here).
    unsafe { crate::pg_compat::vacuum_delay_point() }
}

fn new_stats() -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: zeroed memory is a valid IndexBulkDeleteResult; palloc ERRORs rather
    // than return null, and the memory lives in VACUUM's context.
    unsafe {
        pg_sys::palloc0(std::mem::size_of::<pg_sys::IndexBulkDeleteResult>())
            as *mut pg_sys::IndexBulkDeleteResult
    }
}

/// Elements whose heap row `is_dead` says is gone, and the number of live ones.
fn find_dead(
    index: pg_sys::Relation,
    layout: Layout,
    mut is_dead: impl FnMut(Tid) -> bool,
) -> (TidSet, usize) {
    let mut dead = TidSet::default();
    let mut live = 0;
    for block in 1..buffer::block_count(index) {
        pause_for_cost_delay();
        let locked = Locked::new(index, block, Lock::Share);
        for (offset, e) in locked
            .elements(index, layout)
            .filter(|(_, e)| !e.is_deleted())
        {
            if is_dead(e.heap_tid()) {
                dead.insert(Tid { block, offset }.key());
            } else {
                live += 1;
            }
        }
    }
    (dead, live)
}

/// A live element that links to a dead one, as read before its repair.
struct Damaged {
    tid: Tid,
    vector: Vec<f32>,
    links: Vec<Vec<Tid>>,
}

/// Re-selects the links of every live element that points at a dead one, and moves
/// the entry element off a dead one.
fn repair_links(index: pg_sys::Relation, meta: &Meta, dead: &TidSet) {
    let layout = meta.layout();
    let mut highest: Option<(Tid, usize)> = None;
    for block in 1..buffer::block_count(index) {
        pause_for_cost_delay();
        let mut damaged = Vec::new();
        {
            let locked = Locked::new(index, block, Lock::Share);
            for (offset, e) in locked.elements(index, layout) {
                let tid = Tid { block, offset };
                if e.is_deleted() || dead.contains(&tid.key()) {
                    continue;
                }
                if highest.is_none_or(|(_, l)| e.level() > l) {
                    highest = Some((tid, e.level()));
                }
                let links: Vec<Vec<Tid>> =
                    (0..=e.level()).map(|l| e.neighbors(l).collect()).collect();
                if links.iter().flatten().any(|n| dead.contains(&n.key())) {
                    damaged.push(Damaged {
                        tid,
                        vector: e.vector().to_vec(),
                        links,
                    });
                }
            }
        }
        for element in damaged {
            let repaired = repair_element(index, meta, dead, &element);
            let mut locked = Locked::new(index, block, Lock::Exclusive);
            change_pages(index, &mut [&mut locked], false, |pages| {
                pages[0]
                    .element_mut(element.tid.offset, layout)
                    .unwrap()
                    .set_links(&repaired)
            });
        }
    }
    let entry_dead = meta
        .entry()
        .is_some_and(|(entry, _)| dead.contains(&entry.key()));
    if entry_dead || meta.entry().is_none() {
        update_meta(index, |m| match highest {
            Some((tid, level)) => {
                m.entry = tid;
                m.entry_level = level as i16;
            }
            None => {
                m.entry = Tid::INVALID;
                m.entry_level = -1;
            }
        });
    }
}

/// New links for a damaged element on each level.
fn repair_element(
    index: pg_sys::Relation,
    meta: &Meta,
    dead: &TidSet,
    element: &Damaged,
) -> Vec<Vec<Tid>> {
    let metric = meta.metric();
    let layout = meta.layout();
    let mut graph = DiskGraph::new(index, meta, element.vector.clone());
    let mut vectors: TidMap<Option<Vec<f32>>> = TidMap::default();
    // A link may go to an element that is not this one, not dead and not freed.
    let usable =
        |graph: &mut DiskGraph, vectors: &mut TidMap<Option<Vec<f32>>>, tid: Tid| -> bool {
            tid != element.tid
                && !dead.contains(&tid.key())
                && vectors
                    .entry(tid.key())
                    .or_insert_with(|| {
                        graph
                            .read(tid, |e| (!e.is_deleted()).then(|| e.vector().to_vec()))
                            .flatten()
                    })
                    .is_some()
        };
    let mut repaired = Vec::with_capacity(element.links.len());
    for (level, links) in element.links.iter().enumerate() {
        if !links.iter().any(|n| dead.contains(&n.key())) {
            repaired.push(links.clone());
            continue;
        }
        // The surviving links stay: they were chosen when the element was linked
        // and include its long-range ones, which keep clusters reachable.
        let mut kept = Vec::new();
        for &n in links.iter().filter(|n| !dead.contains(&n.key())) {
            if usable(&mut graph, &mut vectors, n) {
                if let Some(distance) = graph.distance(n) {
                    kept.push(Candidate { distance, id: n });
                }
            }
        }
        // The freed places go to the best of the dead neighbours' links and what a
        // search from the surviving neighbourhood finds (as an insert would).
        let mut entries: Vec<Candidate<Tid>> = kept.clone();
        for &n in links.iter().filter(|n| dead.contains(&n.key())) {
            let mut hops = Vec::new();
            graph.neighbors(n, level, &mut hops);
            for h in hops {
                if usable(&mut graph, &mut vectors, h) && !entries.iter().any(|e| e.id == h) {
                    if let Some(distance) = graph.distance(h) {
                        entries.push(Candidate { distance, id: h });
                    }
                }
            }
        }
        let mut candidates = if entries.is_empty() {
            // Everything around it died: find it new neighbours from the entry.
            search_from_entry(&mut graph, meta, level, dead)
        } else {
            entries.sort();
            let ef = meta.params().ef_construction;
            search_layer_afresh(&mut graph, &entries, &[element.tid], ef, level, usize::MAX).0
        };
        if level > 0 && !entries.is_empty() {
            // The upper layers are small and what keeps the graph one piece: also
            // search them from the entry element, so a repaired neighbourhood
            // cannot end up cut off from where every search starts.
            candidates.extend(search_from_entry(&mut graph, meta, level, dead));
            candidates.sort();
            candidates.dedup_by_key(|c| c.id);
        }
        candidates.retain(|c| {
            !kept.iter().any(|k| k.id == c.id) && usable(&mut graph, &mut vectors, c.id)
        });
        let max = layout.params.max_neighbors(level);
        let mut chosen = extend_neighbors(kept, &candidates, max, |a, b| {
            let (va, vb) = (
                vectors[&a.key()].as_deref().unwrap(),
                vectors[&b.key()].as_deref().unwrap(),
            );
            metric.graph_distance(va, vb)
        });
        // Places the heuristic left empty go to the nearest candidates: elements
        // that only dead ones linked to need in-links, or nothing reaches them.
        fill_nearest(&mut chosen, &candidates, max);
        let links: Vec<Tid> = chosen.iter().map(|c| c.id).collect();
        repaired.push(links);
    }
    repaired
}

fn search_from_entry(
    graph: &mut DiskGraph,
    meta: &Meta,
    level: usize,
    dead: &TidSet,
) -> Vec<Candidate<Tid>> {
    let Some((entry, top)) = meta.entry() else {
        return Vec::new();
    };
    if top < level || dead.contains(&entry.key()) {
        return Vec::new();
    }
    let Some(start) = graph.descend(entry, top, level) else {
        return Vec::new();
    };
    let ef = meta.params().ef_construction;
    search_layer_afresh(graph, &[start], &[], ef, level, usize::MAX).0
}

/// Links every live element that no walk from the entry reaches (the dead are freed
/// by now) into the list of one of its nearest reachable elements (`find_home`,
/// which gives up only a link whose target the element reaches itself, or hands
/// the link over to it). The walk is repeated until it finds nothing, a few rounds
/// at most: an element's own group may still hold others it does not lead to.
fn relink_unreachable(index: pg_sys::Relation, meta: &Meta) {
    const ROUNDS: usize = 5;
    let mut left = 0;
    for _ in 0..ROUNDS {
        left = relink_round(index, meta);
        if left == 0 {
            return;
        }
    }
    pgrx::warning!(
        "m3ret_hnsw: VACUUM relinked unreachable elements {ROUNDS} times and still found {left}; m3ret_hnsw_check counts them, REINDEX links them"
    );
}

/// One walk from the entry and a relink of what it missed; how many it missed.
fn relink_round(index: pg_sys::Relation, meta: &Meta) -> usize {
    let (layout, metric) = (meta.layout(), meta.metric());
    let mut nblocks = buffer::block_count(index);
    let (mut reached, missed) = unreached(index, meta);
    for &tid in &missed {
        if reached.contains(tid) {
            continue; // reached through an element relinked before it
        }
        pause_for_cost_delay();
        let Some(Some(vector)) = buffer::with_element(index, tid, layout, &mut nblocks, |e| {
            (!e.is_deleted()).then(|| e.vector().to_vec())
        }) else {
            continue;
        };
        let mut graph = DiskGraph::new(index, meta, vector);
        let mut nearest = search_from_entry(&mut graph, meta, 0, &TidSet::default());
        nearest.retain(|c| c.id != tid);
        let own = live_neighbours(index, layout, tid, 0, &mut nblocks).unwrap_or_default();
        let newcomer = Newcomer { tid, links: &own };
        find_home(index, layout, metric, &newcomer, &nearest, &mut nblocks);
        // Whatever only this element led to is reachable through it now.
        walk_links(index, layout, tid, &mut reached, &mut nblocks);
    }
    missed.len()
}

/// What a walk of every link from the entry reaches, and the live elements it
/// does not, in page order.
fn unreached(index: pg_sys::Relation, meta: &Meta) -> (Reached, Vec<Tid>) {
    let mut reached = Reached::default();
    let Some((entry, _)) = meta.entry() else {
        return (reached, Vec::new());
    };
    let layout = meta.layout();
    let mut nblocks = buffer::block_count(index);
    walk_links(index, layout, entry, &mut reached, &mut nblocks);
    let missed = live_elements(index, layout)
        .into_iter()
        .filter(|&t| !reached.contains(t))
        .collect();
    (reached, missed)
}

/// Adds to `reached` every element a walk of the links from `from` finds.
fn walk_links(
    index: pg_sys::Relation,
    layout: Layout,
    from: Tid,
    reached: &mut Reached,
    nblocks: &mut u32,
) {
    if !reached.insert(from) {
        return;
    }
    // Marked when pushed, so each element is on the stack at most once.
    let mut stack = vec![from];
    while let Some(tid) = stack.pop() {
        buffer::with_element(index, tid, layout, nblocks, |e| {
            if !e.is_deleted() {
                for level in 0..=e.level() {
                    stack.extend(e.neighbors(level).filter(|&n| reached.insert(n)));
                }
            }
        });
    }
}

/// A set of tids as one bit per line pointer: a walk of a large index marks every
/// element, and a hash set would take 16 or more bytes for each.
#[derive(Default)]
struct Reached {
    blocks: Vec<Vec<u64>>,
}

impl Reached {
    /// Adds `tid`; whether it was new.
    fn insert(&mut self, tid: Tid) -> bool {
        let (block, word, bit) = Self::place(tid);
        if self.blocks.len() <= block {
            self.blocks.resize_with(block + 1, Vec::new);
        }
        let words = &mut self.blocks[block];
        if words.len() <= word {
            words.resize(word + 1, 0);
        }
        let new = words[word] & bit == 0;
        words[word] |= bit;
        new
    }

    fn contains(&self, tid: Tid) -> bool {
        let (block, word, bit) = Self::place(tid);
        self.blocks
            .get(block)
            .and_then(|w| w.get(word))
            .is_some_and(|w| w & bit != 0)
    }

    fn place(tid: Tid) -> (usize, usize, u64) {
        let offset = tid.offset as usize;
        (tid.block as usize, offset / 64, 1 << (offset % 64))
    }
}

/// Where every live element of the index is, in page order.
fn live_elements(index: pg_sys::Relation, layout: Layout) -> Vec<Tid> {
    let mut live = Vec::new();
    for block in 1..buffer::block_count(index) {
        let locked = Locked::new(index, block, Lock::Share);
        live.extend(
            locked
                .elements(index, layout)
                .filter(|(_, e)| !e.is_deleted())
                .map(|(offset, _)| Tid { block, offset }),
        );
    }
    live
}

/// Frees the dead elements and points inserts at the first freed page.
fn free_elements(index: pg_sys::Relation, meta: &Meta, dead: &TidSet) {
    let layout = meta.layout();
    let mut by_block: std::collections::BTreeMap<u32, Vec<u16>> = Default::default();
    for &key in dead {
        let tid = Tid::from_key(key);
        by_block.entry(tid.block).or_default().push(tid.offset);
    }
    for (&block, offsets) in &by_block {
        let mut locked = Locked::new(index, block, Lock::Exclusive);
        change_pages(index, &mut [&mut locked], false, |pages| {
            for &offset in offsets {
                if let Some(mut e) = pages[0].element_mut(offset, layout) {
                    e.mark_deleted();
                }
            }
        });
    }
    if let Some(&first) = by_block.keys().next() {
        update_meta(index, |m| m.insert_page = m.insert_page.min(first));
    }
}
