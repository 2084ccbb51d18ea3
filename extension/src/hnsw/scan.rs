//! ORDER BY embedding <=> query LIMIT k (`amgettuple`).
//!
//! The first round is the paper's search with `m3ret.ef_search` candidates. When
//! the executor wants more (a WHERE clause rejected rows), the search runs again
//! with twice the candidates (descending afresh from the entry: a VACUUM may have
//! freed the element the last round started from), and so on, until `m3ret.max_scan_tuples` elements have
//! been visited in all (or not at all if `m3ret.iterative_scan` is off). The first
//! round returns all its candidates (a LIMIT within ef_search costs one search). A
//! round with more candidates finds nearly all the nearest elements the rounds
//! before it did, plus the next ones; each later round returns its nearer half (the
//! part it is sure of) and leaves the rest to the next. The repeated work is at most as much
//! again as the last round. Rows come out in non-decreasing distance: an
//! element a later round finds nearer than one already returned is skipped, so
//! ORDER BY is never violated.
//!
//! Under `quantization = int8` the graph's distances are estimates (to decoded
//! vectors): each round's candidates are re-ranked on the table's vectors
//! (`rerank.rs`), so rows still come out exactly ordered among the candidates,
//! however coarse the codes.

use super::buffer;
use super::graph::{prepare_value, DiskGraph, TidSet};
use super::page::{Layout, Quantization, StoredVector, Tid};
use super::rerank::TableVectors;
use crate::embedding::EmbeddingRef;
use crate::settings;
use m3ret_core::hnsw::{search_layer_afresh, Candidate, Metric};
use pgrx::pg_sys;
use pgrx::FromDatum;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

/// One scan's state, owned by the scan's memory context.
struct ScanState {
    walk: Option<Walk>,
    /// Row fetches for re-ranking (int8), kept across rescans, ended by amendscan.
    table: Option<TableVectors>,
}

enum Walk {
    /// Nearest-first through the graph.
    Graph(Box<Rounds>),
    /// ORDER BY ... <=> NULL: every row, in storage order (all distances are NULL).
    Storage {
        layout: Layout,
        block: u32,
        heap: VecDeque<Tid>,
    },
    Empty,
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn ambeginscan(
    index: pg_sys::Relation,
    nkeys: i32,
    norderbys: i32,
) -> pg_sys::IndexScanDesc {
    // SAFETY: PostgreSQL's own constructor for the scan of an open index.
    let scan = unsafe { pg_sys::RelationGetIndexScan(index, nkeys, norderbys) };
    let state = Box::into_raw(Box::new(ScanState {
        walk: None,
        table: None,
    }));
    // SAFETY: `scan` is the new scan; the callback is allocated in the current
    // context, which it is registered with, and frees `state` exactly once.
    unsafe {
        (*scan).opaque = state as *mut std::ffi::c_void;
        // Freed with the scan's memory context, also when an ERROR ends the query.
        let callback = pg_sys::palloc0(std::mem::size_of::<pg_sys::MemoryContextCallback>())
            as *mut pg_sys::MemoryContextCallback;
        (*callback).func = Some(free_state);
        (*callback).arg = state as *mut std::ffi::c_void;
        pg_sys::MemoryContextRegisterResetCallback(pg_sys::CurrentMemoryContext, callback);
    }
    scan
}

unsafe extern "C-unwind" fn free_state(state: *mut std::ffi::c_void) {
    // SAFETY: `state` came from Box::into_raw in ambeginscan; the context's reset
    // runs this once.
    drop(unsafe { Box::from_raw(state as *mut ScanState) });
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amrescan(
    scan: pg_sys::IndexScanDesc,
    _keys: pg_sys::ScanKey,
    _nkeys: i32,
    orderbys: pg_sys::ScanKey,
    norderbys: i32,
) {
    // SAFETY: the scan was made by ambeginscan with room for `norderbys` keys, and
    // its opaque is our state.
    unsafe {
        if !orderbys.is_null() && norderbys > 0 {
            std::ptr::copy(orderbys, (*scan).orderByData, norderbys as usize);
        }
        (*((*scan).opaque as *mut ScanState)).walk = None;
    }
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amendscan(scan: pg_sys::IndexScanDesc) {
    // SAFETY: the scan ambeginscan made; its opaque is our state.
    let state = unsafe { &mut *((*scan).opaque as *mut ScanState) };
    // The rest of the state goes with the scan's memory context (see ambeginscan).
    if let Some(table) = state.table.take() {
        table.end();
    }
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amgettuple(
    scan: pg_sys::IndexScanDesc,
    _direction: pg_sys::ScanDirection::Type,
) -> bool {
    // SAFETY: the scan ambeginscan made; its opaque is our state, which only this
    // scan uses.
    let scan = unsafe { &mut *scan };
    // SAFETY: as above.
    let state = unsafe { &mut *(scan.opaque as *mut ScanState) };
    if state.walk.is_none() {
        state.walk = Some(start(scan));
    }
    let next = match state.walk.as_mut().unwrap() {
        Walk::Graph(rounds) if rounds.rerank.is_some() => {
            let table = state.table.get_or_insert_with(|| TableVectors::begin(scan));
            rounds.next_reranked(table)
        }
        Walk::Graph(rounds) => rounds.next(),
        Walk::Storage {
            layout,
            block,
            heap,
        } => next_in_storage(scan.indexRelation, *layout, block, heap),
        Walk::Empty => None,
    };
    let Some(heap) = next else {
        return false;
    };
    scan.xs_heaptid = heap.to_item_pointer();
    scan.xs_recheck = false;
    scan.xs_recheckorderby = false;
    true
}

/// Reads the query and finds where the search starts.
fn start(scan: &pg_sys::IndexScanDescData) -> Walk {
    refuse_non_mvcc_snapshot(scan.xs_snapshot);
    let index = scan.indexRelation;
    let meta = buffer::read_meta(index);
    if scan.numberOfOrderBys < 1 {
        return Walk::Storage {
            layout: meta.layout(),
            block: 1,
            heap: VecDeque::new(),
        };
    }
    // SAFETY: one order-by key at least (checked above), set by amrescan.
    let key = unsafe { &*scan.orderByData };
    if key.sk_flags & pg_sys::SK_ISNULL as i32 != 0 {
        return Walk::Storage {
            layout: meta.layout(),
            block: 1,
            heap: VecDeque::new(),
        };
    }
    let query = prepare_value(key.sk_argument, meta.metric(), meta.dims as usize);
    let Some((entry, top)) = meta.entry() else {
        return Walk::Empty;
    };
    let mut graph = DiskGraph::new(index, &meta, query);
    let Some(start) = graph.descend(entry, top, 0) else {
        return Walk::Empty;
    };
    let rerank = (meta.quantization() == Quantization::Int8).then(|| Rerank {
        // SAFETY: the order-by argument is a non-null embedding (checked above).
        query: unsafe {
            EmbeddingRef::from_polymorphic_datum(key.sk_argument, false, pg_sys::InvalidOid)
        }
        .expect("not null")
        .values()
        .to_vec(),
        exact: BinaryHeap::new(),
    });
    Walk::Graph(Box::new(Rounds {
        graph,
        rerank,
        start,
        ef: 0,
        visited: 0,
        round: VecDeque::new(),
        returned: TidSet::default(),
        last: f64::NEG_INFINITY,
        done: false,
    }))
}

/// A scan holds element tids between calls; VACUUM may free one of them meanwhile
/// and an insert reuse its slot for another row. Under an MVCC snapshot that does
/// no harm: VACUUM frees only rows dead to every snapshot, and a row inserted after
/// the scan's snapshot is invisible to it. Under any other snapshot the scan could
/// return the new row at the old row's distance, so it refuses them, as pgvector does.
fn refuse_non_mvcc_snapshot(snapshot: pg_sys::Snapshot) {
    use pg_sys::SnapshotType::{SNAPSHOT_HISTORIC_MVCC, SNAPSHOT_MVCC};
    // SAFETY: the executor gives every index scan a valid snapshot, or none.
    let kind = (!snapshot.is_null()).then(|| unsafe { (*snapshot).snapshot_type });
    if !matches!(kind, Some(SNAPSHOT_MVCC | SNAPSHOT_HISTORIC_MVCC)) {
        crate::error::raise(
            pgrx::pg_sys::errcodes::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "m3ret_hnsw scans need an MVCC snapshot",
        );
    }
}

/// Searches of layer 0 with more and more candidates.
struct Rounds {
    graph: DiskGraph,
    /// Under int8: the candidates' rows, re-ranked on the table's vectors.
    rerank: Option<Rerank>,
    start: Candidate<Tid>,
    /// Candidates of the last round (0 before the first).
    ef: usize,
    visited: usize,
    /// This round's candidates to return, by `order` ascending.
    round: VecDeque<Ranked>,
    returned: TidSet,
    last: f64,
    done: bool,
}

/// A candidate in the order the scan takes it: by graph distance, or under int8
/// by the lower bound of the real distance.
struct Ranked {
    order: f64,
    id: Tid,
    /// Under int8, the element's row, read with its bound.
    heap: Tid,
}

/// Re-ranking (int8): the query as given, and the rows fetched so far.
struct Rerank {
    query: Vec<f32>,
    exact: BinaryHeap<Reverse<Exact>>,
}

/// A fetched row and its distance as the SQL operator computes it.
struct Exact {
    distance: f64,
    heap: Tid,
}

impl PartialEq for Exact {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Exact {}
impl PartialOrd for Exact {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Exact {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance.total_cmp(&other.distance)
    }
}

impl Rounds {
    /// The next row in the order of graph distances.
    fn next(&mut self) -> Option<Tid> {
        loop {
            while let Some(c) = self.round.pop_front() {
                if c.order < self.last || self.returned.contains(&c.id.key()) {
                    continue;
                }
                let live = self.graph.read(c.id, |e| {
                    (!e.is_deleted() && e.heap_tid().is_valid()).then(|| e.heap_tid())
                });
                if let Some(Some(heap)) = live {
                    self.last = c.order;
                    self.returned.insert(c.id.key());
                    return Some(heap);
                }
            }
            if self.done {
                return None;
            }
            self.search_round();
        }
    }

    fn search_round(&mut self) {
        let max_visited = settings::MAX_SCAN_TUPLES.get().max(1) as usize;
        let first = self.ef == 0;
        self.ef = if first {
            settings::EF_SEARCH.get().max(1) as usize
        } else {
            self.ef * 2
        };
        pgrx::check_for_interrupts!();
        if !first {
            // The element the first round started from may have been freed by a
            // VACUUM since (a freed element has no links: a round from there finds
            // nothing and would end the scan early). Descend again from the entry,
            // which VACUUM keeps live.
            let entry = buffer::read_meta(self.graph.index).entry();
            match entry.and_then(|(entry, top)| self.graph.descend(entry, top, 0)) {
                Some(start) => self.start = start,
                None => {
                    self.done = true;
                    return;
                }
            }
        }
        let (found, visited) = search_layer_afresh(
            &mut self.graph,
            &[self.start],
            &[],
            self.ef,
            0,
            max_visited.saturating_sub(self.visited),
        );
        self.visited += visited;
        // A round that found no more than there are candidates saw the whole graph.
        self.done =
            !settings::ITERATIVE_SCAN.get() || self.visited >= max_visited || found.len() < self.ef;
        // The first round returns all it found, as a plain HNSW search does: a query
        // whose LIMIT fits in ef_search costs one search. A later round runs only
        // when the executor wants more rows (a WHERE clause rejected some); the far
        // end of a round is where it is least sure of having found everything, so
        // a later round returns its nearer half and leaves the rest to the next.
        let reliable = if self.done || first {
            found.len()
        } else {
            (self.ef / 2).max(1)
        };
        let kept = found.into_iter().take(reliable);
        self.round = if self.rerank.is_some() {
            self.by_lower_bound(kept)
        } else {
            kept.map(|c| Ranked {
                order: c.distance as f64,
                id: c.id,
                heap: Tid::INVALID,
            })
            .collect()
        };
    }

    /// The next row under int8: the nearest fetched row once no candidate still to
    /// fetch has a lower bound below its distance (or once the round is spent: as
    /// in [`Rounds::next`], a round's candidates are what it returns).
    fn next_reranked(&mut self, table: &mut TableVectors) -> Option<Tid> {
        loop {
            let rerank = self.rerank.as_mut().expect("an int8 scan");
            let next_bound = self.round.front().map(|c| c.order);
            if let Some(Reverse(nearest)) = rerank.exact.peek() {
                if next_bound.is_none_or(|bound| nearest.distance <= bound) {
                    let Reverse(nearest) = rerank.exact.pop().unwrap();
                    self.last = nearest.distance;
                    return Some(nearest.heap);
                }
            }
            if let Some(c) = self.round.pop_front() {
                if !self.returned.insert(c.id.key()) {
                    continue;
                }
                let (metric, heap) = (self.graph.metric, c.heap);
                // A row the snapshot does not see is not returned (nor would the
                // executor return it; a VACUUM may since have freed the element
                // and an insert reused it, for a row this snapshot cannot see);
                // one a later round finds nearer than a row already returned is
                // skipped, so ORDER BY holds.
                match table.distance(metric, &rerank.query, heap) {
                    Some(distance) if distance >= self.last => {
                        rerank.exact.push(Reverse(Exact { distance, heap }))
                    }
                    _ => {}
                }
                continue;
            }
            if self.done {
                return None;
            }
            self.search_round();
        }
    }

    /// Candidates (by estimated distance) in the order of their lower bounds.
    fn by_lower_bound(&mut self, found: impl Iterator<Item = Candidate<Tid>>) -> VecDeque<Ranked> {
        let metric = self.graph.metric;
        let query_norm = match metric {
            Metric::InnerProduct => {
                m3ret_core::vector::distance::dot(self.graph.query(), self.graph.query()).sqrt()
            }
            _ => 1.0,
        };
        let mut ranked: Vec<Ranked> = found
            .filter_map(|c| {
                let (order, heap) = self.graph.read(c.id, |e| {
                    let live = !e.is_deleted() && e.heap_tid().is_valid();
                    let bound = match e.vector() {
                        StoredVector::Int8(v) => metric.lower_bound(c.distance, &v, query_norm),
                        StoredVector::Float32(_) => c.distance as f64,
                    };
                    live.then(|| (bound, e.heap_tid()))
                })??;
                Some(Ranked {
                    order,
                    id: c.id,
                    heap,
                })
            })
            .collect();
        ranked.sort_by(|a, b| a.order.total_cmp(&b.order));
        ranked.into()
    }
}

fn next_in_storage(
    index: pg_sys::Relation,
    layout: Layout,
    block: &mut u32,
    heap: &mut VecDeque<Tid>,
) -> Option<Tid> {
    loop {
        if let Some(tid) = heap.pop_front() {
            return Some(tid);
        }
        if *block >= buffer::block_count(index) {
            return None;
        }
        let locked = buffer::Locked::new(index, *block, buffer::Lock::Share);
        let live = locked
            .elements(index, layout)
            .filter(|(_, e)| !e.is_deleted() && e.heap_tid().is_valid());
        heap.extend(live.map(|(_, e)| e.heap_tid()));
        *block += 1;
    }
}
