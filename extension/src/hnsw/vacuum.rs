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

use super::buffer::{self, change_pages, update_meta, Lock, Locked};
use super::graph::{DiskGraph, TidMap, TidSet};
use super::page::{Layout, Meta, Tid};
use super::UPDATE_LOCK_BLOCK;
use m3ret_core::hnsw::{extend_neighbors, fill_nearest, search_layer, Candidate, Graph};
use pgrx::pg_sys;

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn ambulkdelete(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
    callback: pg_sys::IndexBulkDeleteCallback,
    callback_state: *mut std::ffi::c_void,
) -> *mut pg_sys::IndexBulkDeleteResult {
    let index = unsafe { (*info).index };
    let stats = if stats.is_null() { new_stats() } else { stats };
    let meta = buffer::read_meta(index);
    let callback = callback.expect("VACUUM passes a callback");
    let is_dead = |heap: Tid| unsafe { callback(&mut heap.to_item_pointer(), callback_state) };
    let (dead, live) = find_dead(index, meta.layout(), is_dead);
    if !dead.is_empty() {
        unsafe { pg_sys::LockPage(index, UPDATE_LOCK_BLOCK, pg_sys::ExclusiveLock as i32) };
        let meta = buffer::read_meta(index);
        repair_links(index, &meta, &dead);
        free_elements(index, &meta, &dead);
        unsafe { pg_sys::UnlockPage(index, UPDATE_LOCK_BLOCK, pg_sys::ExclusiveLock as i32) };
    }
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
    if unsafe { (*info).analyze_only } {
        return stats;
    }
    let index = unsafe { (*info).index };
    let stats = if stats.is_null() {
        // No bulk delete ran (nothing was dead): count what is there.
        let stats = new_stats();
        let (_, live) = find_dead(index, buffer::read_meta(index).layout(), |_| false);
        unsafe { (*stats).num_index_tuples = live as f64 };
        stats
    } else {
        stats
    };
    unsafe { (*stats).num_pages = buffer::block_count(index) };
    stats
}

fn new_stats() -> *mut pg_sys::IndexBulkDeleteResult {
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
        unsafe { pg_sys::vacuum_delay_point() };
        let locked = Locked::new(index, block, Lock::Share);
        for (offset, e) in
            buffer::elements_on(index, locked.page(), layout).filter(|(_, e)| !e.is_deleted())
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
        unsafe { pg_sys::vacuum_delay_point() };
        let mut damaged = Vec::new();
        {
            let locked = Locked::new(index, block, Lock::Share);
            for (offset, e) in buffer::elements_on(index, locked.page(), layout) {
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
            let locked = Locked::new(index, block, Lock::Exclusive);
            change_pages(index, &[&locked], false, |pages| {
                buffer::element_mut_on(pages[0], element.tid.offset, layout)
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
            graph.forget_visited();
            graph.visit(element.tid);
            entries.iter().for_each(|c| _ = graph.visit(c.id));
            search_layer(&mut graph, &entries, meta.params().ef_construction, level)
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
    graph.forget_visited();
    graph.visit(start.id);
    search_layer(graph, &[start], meta.params().ef_construction, level)
}

/// Frees the dead elements and points inserts at the first freed page.
fn free_elements(index: pg_sys::Relation, meta: &Meta, dead: &TidSet) {
    let layout = meta.layout();
    let mut by_block: std::collections::BTreeMap<u32, Vec<u16>> = Default::default();
    for &key in dead {
        by_block
            .entry((key >> 16) as u32)
            .or_default()
            .push(key as u16);
    }
    for (&block, offsets) in &by_block {
        let locked = Locked::new(index, block, Lock::Exclusive);
        change_pages(index, &[&locked], false, |pages| {
            for &offset in offsets {
                if let Some(mut e) = buffer::element_mut_on(pages[0], offset, layout) {
                    e.mark_deleted();
                }
            }
        });
    }
    if let Some(&first) = by_block.keys().next() {
        update_meta(index, |m| m.insert_page = m.insert_page.min(first));
    }
}
