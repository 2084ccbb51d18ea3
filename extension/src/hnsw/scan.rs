//! ORDER BY embedding <=> query LIMIT k (`amgettuple`).
//!
//! The first batch is the paper's search with `m3ret.ef_search` candidates. When
//! the executor wants more (a WHERE clause rejected rows), the same search goes on
//! from where it stopped, batch after batch, until `m3ret.max_scan_tuples` elements
//! have been visited (or at once stops there if `m3ret.iterative_scan` is off).
//! Rows come out in non-decreasing distance: an element a later batch finds nearer
//! than one already returned is skipped, so ORDER BY is never violated.

use super::buffer;
use super::graph::DiskGraph;
use super::page::{Layout, Tid};
use super::{metric_of, prepare_value};
use crate::settings;
use m3ret_core::hnsw::{Candidate, Graph, Metric, ResumableSearch};
use pgrx::pg_sys;
use std::collections::VecDeque;

/// One scan's state, owned by the scan's memory context.
struct ScanState {
    metric: Metric,
    walk: Option<Walk>,
}

enum Walk {
    /// Nearest-first through the graph.
    Graph { graph: DiskGraph, search: ResumableSearch<Tid>, batch: VecDeque<Candidate<Tid>>, last: f32, more: bool },
    /// ORDER BY ... <=> NULL: every row, in storage order (all distances are NULL).
    Storage { layout: Layout, block: u32, heap: VecDeque<Tid> },
    Empty,
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn ambeginscan(index: pg_sys::Relation, nkeys: i32, norderbys: i32) -> pg_sys::IndexScanDesc {
    let scan = unsafe { pg_sys::RelationGetIndexScan(index, nkeys, norderbys) };
    let state = Box::into_raw(Box::new(ScanState { metric: metric_of(index), walk: None }));
    unsafe {
        (*scan).opaque = state as *mut std::ffi::c_void;
        // Freed with the scan's memory context, also when an ERROR ends the query.
        let callback = pg_sys::palloc0(std::mem::size_of::<pg_sys::MemoryContextCallback>()) as *mut pg_sys::MemoryContextCallback;
        (*callback).func = Some(free_state);
        (*callback).arg = state as *mut std::ffi::c_void;
        pg_sys::MemoryContextRegisterResetCallback(pg_sys::CurrentMemoryContext, callback);
    }
    scan
}

unsafe extern "C-unwind" fn free_state(state: *mut std::ffi::c_void) {
    drop(unsafe { Box::from_raw(state as *mut ScanState) });
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amrescan(scan: pg_sys::IndexScanDesc, _keys: pg_sys::ScanKey, _nkeys: i32, orderbys: pg_sys::ScanKey, norderbys: i32) {
    unsafe {
        if !orderbys.is_null() && norderbys > 0 {
            std::ptr::copy(orderbys, (*scan).orderByData, norderbys as usize);
        }
        (*((*scan).opaque as *mut ScanState)).walk = None;
    }
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amendscan(_scan: pg_sys::IndexScanDesc) {
    // The state goes with the scan's memory context (see ambeginscan).
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amgettuple(scan: pg_sys::IndexScanDesc, _direction: pg_sys::ScanDirection::Type) -> bool {
    let scan = unsafe { &mut *scan };
    let state = unsafe { &mut *(scan.opaque as *mut ScanState) };
    if state.walk.is_none() {
        state.walk = Some(start(scan, state.metric));
    }
    let next = match state.walk.as_mut().unwrap() {
        Walk::Graph { graph, search, batch, last, more } => next_by_distance(graph, search, batch, last, more),
        Walk::Storage { layout, block, heap } => next_in_storage(scan.indexRelation, *layout, block, heap),
        Walk::Empty => None,
    };
    match next {
        Some(heap) => {
            scan.xs_heaptid = heap.to_item_pointer();
            scan.xs_recheck = false;
            scan.xs_recheckorderby = false;
            true
        }
        None => false,
    }
}

/// Reads the query and finds where the search starts.
fn start(scan: &pg_sys::IndexScanDescData, metric: Metric) -> Walk {
    let index = scan.indexRelation;
    let meta = buffer::read_meta(index);
    if scan.numberOfOrderBys < 1 {
        return Walk::Storage { layout: meta.layout(), block: 1, heap: VecDeque::new() };
    }
    let key = unsafe { &*scan.orderByData };
    if key.sk_flags & pg_sys::SK_ISNULL as i32 != 0 {
        return Walk::Storage { layout: meta.layout(), block: 1, heap: VecDeque::new() };
    }
    let query = prepare_value(index, key.sk_argument, metric, meta.dims as usize);
    let Some((entry, top)) = meta.entry() else { return Walk::Empty };
    let mut graph = DiskGraph::new(index, &meta, metric, query);
    let Some(start) = graph.descend(entry, top, 0) else { return Walk::Empty };
    graph.clear_visited();
    graph.visit(start.id);
    let search = ResumableSearch::new(&[start], true);
    Walk::Graph { graph, search, batch: VecDeque::new(), last: f32::NEG_INFINITY, more: true }
}

fn next_by_distance(graph: &mut DiskGraph, search: &mut ResumableSearch<Tid>, batch: &mut VecDeque<Candidate<Tid>>, last: &mut f32, more: &mut bool) -> Option<Tid> {
    loop {
        while let Some(c) = batch.pop_front() {
            if c.distance < *last {
                continue;
            }
            if let Some(Some(heap)) = graph.read(c.id, |e| (!e.is_deleted() && e.heap_tid().is_valid()).then(|| e.heap_tid())) {
                *last = c.distance;
                return Some(heap);
            }
        }
        let max_visited = settings::MAX_SCAN_TUPLES.get().max(1) as usize;
        if !*more || search.exhausted() || search.visited >= max_visited {
            return None;
        }
        // Only the first batch when iterative scans are off.
        *more = settings::ITERATIVE_SCAN.get();
        pgrx::check_for_interrupts!();
        batch.extend(search.next_batch(graph, settings::EF_SEARCH.get().max(1) as usize, 0, max_visited));
    }
}

fn next_in_storage(index: pg_sys::Relation, layout: Layout, block: &mut u32, heap: &mut VecDeque<Tid>) -> Option<Tid> {
    loop {
        if let Some(tid) = heap.pop_front() {
            return Some(tid);
        }
        if *block >= buffer::block_count(index) {
            return None;
        }
        let locked = buffer::Locked::new(index, *block, buffer::Lock::Share);
        for offset in 1..=buffer::max_offset(locked.page()) {
            if let Some(e) = buffer::element_on(index, locked.page(), offset, layout) {
                if !e.is_deleted() && e.heap_tid().is_valid() {
                    heap.push_back(e.heap_tid());
                }
            }
        }
        *block += 1;
    }
}
