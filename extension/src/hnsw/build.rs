//! CREATE INDEX (`ambuild`): read the table, build the graph in memory with worker
//! threads, write it to pages in one pass, WAL-log the pages.
//!
//! The threads only run `m3ret_core::hnsw::MemoryGraph` (pure Rust); the backend's
//! own thread reports progress and watches for cancellation meanwhile. When the
//! graph would outgrow `maintenance_work_mem`, what was read so far is written out
//! and the rest of the table is inserted on disk, one row at a time, with a NOTICE.

use super::buffer::{self, add_item, init_page, meta_of, Locked};
use super::graph::{draw_level, prepare_value};
use super::insert::{insert_vector, set_dims};
use super::options;
use super::page::{
    self, check_fits, metric_code, metric_of, page_capacity, space_for, Layout, Meta, Quantization,
    Tid,
};
use crate::error::raise;
use m3ret_core::hnsw::{MemoryGraph, Metric, Params};
use pgrx::pg_sys::{self, errcodes::PgSqlErrorCode};
use std::time::Duration;

// Sub-phases shown in pg_stat_progress_create_index (1 is PostgreSQL's "initializing").
const PHASE_LOAD: i64 = 2;
const PHASE_GRAPH: i64 = 3;
const PHASE_WRITE: i64 = 4;
const PROGRESS_SUBPHASE: i32 = 10;
const PROGRESS_TUPLES_TOTAL: i32 = 11;
const PROGRESS_TUPLES_DONE: i32 = 12;

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn ambuildphasename(phase: i64) -> *mut std::ffi::c_char {
    let name: &'static std::ffi::CStr = match phase {
        PHASE_LOAD => c"loading tuples",
        PHASE_GRAPH => c"building graph",
        PHASE_WRITE => c"writing pages",
        _ => return std::ptr::null_mut(),
    };
    name.as_ptr() as *mut _
}

fn progress(param: i32, value: i64) {
    // SAFETY: a plain update of this backend's progress slot (ignored when no
    // command reports progress).
    unsafe { pg_sys::pgstat_progress_update_param(param, value) };
}

/// What the table scan collects.
struct Build {
    index: pg_sys::Relation,
    metric: Metric,
    params: Params,
    quantization: Quantization,
    /// 0 until the first row when the column has no declared dimension count.
    dims: usize,
    vectors: Vec<f32>,
    heap_tids: Vec<Tid>,
    levels: Vec<u8>,
    budget: usize,
    used: usize,
    /// Set once the in-memory part was written: later rows go straight to disk.
    on_disk: bool,
    tuples: f64,
}

#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn ambuild(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    let metric = metric_of(index);
    let options = options::of(index);
    let (m, ef_construction) = (options.m, options.ef_construction);
    let quantization = options.quantization_for(index);
    if ef_construction < 2 * m {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "ef_construction ({ef_construction}) must be at least 2 * m ({})",
                2 * m
            ),
        );
    }
    if quantization == Quantization::Int8 && options::on_expression(index) {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "m3ret_hnsw with quantization = int8 re-ranks on the table's column: index a column, not an expression",
        );
    }
    let params = Params { m, ef_construction };
    let dims = declared_dims(index);
    if dims > 0 {
        check_fits(dims, params, quantization);
    }
    write_meta(
        index,
        pg_sys::ForkNumber::MAIN_FORKNUM,
        metric,
        params,
        quantization,
        dims,
    );
    // SAFETY: a read of a setting, on the backend's thread.
    let budget = unsafe { pg_sys::maintenance_work_mem } as usize * 1024;
    let mut state = Build {
        index,
        metric,
        params,
        quantization,
        dims,
        vectors: Vec::new(),
        heap_tids: Vec::new(),
        levels: Vec::new(),
        budget,
        used: 0,
        on_disk: false,
        tuples: 0.0,
    };
    progress(PROGRESS_SUBPHASE, PHASE_LOAD);
    // SAFETY: heap, index and info are the build's; `state` outlives the scan,
    // which passes it to `collect` only.
    let heap_tuples = unsafe {
        pg_sys::table_index_build_scan(
            heap,
            index,
            info,
            true,
            true,
            Some(collect),
            &mut state as *mut Build as *mut std::ffi::c_void,
            std::ptr::null_mut(),
        )
    };
    if !state.on_disk {
        write_graph(&mut state);
    }
    log_all_pages(index, pg_sys::ForkNumber::MAIN_FORKNUM);
    // SAFETY: zeroed memory is a valid IndexBuildResult; palloc ERRORs rather
    // than return null.
    let result = unsafe {
        pg_sys::palloc0(std::mem::size_of::<pg_sys::IndexBuildResult>())
            as *mut pg_sys::IndexBuildResult
    };
    // SAFETY: allocated just above.
    unsafe {
        (*result).heap_tuples = heap_tuples;
        (*result).index_tuples = state.tuples;
    }
    result
}

/// The init fork of an index on an UNLOGGED table: an empty index.
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn ambuildempty(index: pg_sys::Relation) {
    let options = options::of(index);
    write_meta(
        index,
        pg_sys::ForkNumber::INIT_FORKNUM,
        metric_of(index),
        Params {
            m: options.m,
            ef_construction: options.ef_construction,
        },
        options.quantization_for(index),
        declared_dims(index),
    );
    // Init forks are WAL-logged even though the table is not.
    // SAFETY: block 0 of the init fork was written just above; no one else sees
    // the fork yet.
    unsafe { pg_sys::log_newpage_range(index, pg_sys::ForkNumber::INIT_FORKNUM, 0, 1, true) };
}

/// The dimension count of `embedding(n)`, 0 for a plain `embedding` column.
fn declared_dims(index: pg_sys::Relation) -> usize {
    // SAFETY: an open index has a tuple descriptor with its one column.
    let typmod = unsafe { crate::pg_compat::attribute_typmod((*index).rd_att, 0) };
    typmod.max(0) as usize
}

/// Block 0 of a fresh fork: the meta page of an empty index.
fn write_meta(
    index: pg_sys::Relation,
    fork: pg_sys::ForkNumber::Type,
    metric: Metric,
    params: Params,
    quantization: Quantization,
    dims: usize,
) {
    // SAFETY: P_NEW of an open index's fork; the buffer comes back pinned and is
    // released by `Locked`'s drop.
    let buffer = unsafe {
        pg_sys::ReadBufferExtended(
            index,
            fork,
            pg_sys::InvalidBlockNumber,
            pg_sys::ReadBufferMode::RBM_NORMAL,
            std::ptr::null_mut(),
        )
    };
    let locked = Locked { buffer };
    // SAFETY: pinned above; unlocked by `Locked`'s drop.
    unsafe { pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_EXCLUSIVE as i32) };
    assert_eq!(locked.block(), page::META_BLOCK, "a new index starts empty");
    init_page(locked.page());
    let meta = Meta {
        magic: page::MAGIC,
        version: page::FORMAT_VERSION,
        dims: dims as u32,
        m: params.m as u16,
        ef_construction: params.ef_construction as u16,
        metric: metric_code(metric),
        quantization: quantization.code(),
        entry_level: -1,
        entry: Tid::INVALID,
        insert_page: 1,
    };
    // SAFETY: the page is exclusively locked and initialised; the meta struct
    // fits in its contents; the buffer is pinned.
    unsafe {
        *meta_of(locked.page()) = meta;
        // pd_lower past the contents, so full-page images keep them.
        let header = locked.page() as *mut pg_sys::PageHeaderData;
        (*header).pd_lower = (pg_sys::SizeOfPageHeaderData() + std::mem::size_of::<Meta>()) as u16;
        pg_sys::MarkBufferDirty(buffer);
    }
}

/// WAL-logs every page written so far (they were written without WAL).
fn log_all_pages(index: pg_sys::Relation, fork: pg_sys::ForkNumber::Type) {
    // SAFETY: an open index has its pg_class row.
    let permanent = unsafe { (*(*index).rd_rel).relpersistence }
        == pg_sys::RELPERSISTENCE_PERMANENT as std::ffi::c_char;
    if permanent {
        // SAFETY: every block up to the count is written, and no buffer of the
        // index is locked here.
        unsafe { pg_sys::log_newpage_range(index, fork, 0, buffer::block_count(index), true) };
    }
}

/// The table scan's callback: one live row.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn collect(
    index: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    _alive: bool,
    state: *mut std::ffi::c_void,
) {
    // SAFETY: the `Build` ambuild passed to the scan, used by nobody else meanwhile.
    let state = unsafe { &mut *(state as *mut Build) };
    // SAFETY: the scan passes one value and null flag (one column) and the row's
    // tid, valid for the call.
    if unsafe { *isnull } {
        return;
    }
    // SAFETY: as above; not null, so the datum is an embedding.
    let vector = prepare_value(unsafe { *values }, state.metric, state.dims);
    if state.dims == 0 {
        set_dims(index, vector.len());
        state.dims = vector.len();
    }
    // SAFETY: as above.
    let heap = Tid::from_item_pointer(unsafe { &*tid });
    state.tuples += 1.0;
    if state.on_disk {
        insert_vector(index, heap, &vector);
        return;
    }
    let layout = Layout {
        dims: state.dims,
        params: state.params,
        quantization: state.quantization,
    };
    let level = draw_level(&layout);
    state.used += MemoryGraph::bytes_per_element(state.dims, &state.params, level) + 6;
    if state.used > state.budget {
        pgrx::notice!(
            "m3ret_hnsw graph no longer fits into maintenance_work_mem after {} rows; the rest is inserted on disk, which is much slower (raise maintenance_work_mem to build faster)",
            state.heap_tids.len()
        );
        write_graph(state);
        state.on_disk = true;
        insert_vector(index, heap, &vector);
        return;
    }
    state.vectors.extend_from_slice(&vector);
    state.heap_tids.push(heap);
    state.levels.push(level as u8);
}

/// Builds the collected rows' graph with worker threads and writes it to pages.
fn write_graph(state: &mut Build) {
    let n = state.heap_tids.len();
    if n == 0 {
        return;
    }
    progress(PROGRESS_SUBPHASE, PHASE_GRAPH);
    progress(PROGRESS_TUPLES_TOTAL, n as i64);
    let graph = MemoryGraph::new(
        state.metric,
        state.params,
        state.dims,
        std::mem::take(&mut state.vectors),
        std::mem::take(&mut state.levels),
    );
    // SAFETY: a read of a setting, on the backend's thread.
    let threads = (unsafe { pg_sys::max_parallel_maintenance_workers } + 1).max(1) as usize;
    let complete = graph.build(threads, Duration::from_millis(50), |done| {
        progress(PROGRESS_TUPLES_DONE, done as i64);
        // Only a cancel or a termination stops the threads. InterruptPending alone is
        // also set by harmless interrupts (a shared-invalidation catch-up while other
        // sessions create and drop tables, for one) that CHECK_FOR_INTERRUPTS handles
        // without an error: stopping on those failed builds as "cancelled".
        // SAFETY: plain reads of flags the signal handlers set; this is the backend's
        // own thread.
        unsafe { pg_sys::QueryCancelPending == 0 && pg_sys::ProcDiePending == 0 }
    });
    if !complete {
        pgrx::check_for_interrupts!();
        raise(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            "m3ret_hnsw build cancelled",
        );
    }
    progress(PROGRESS_SUBPHASE, PHASE_WRITE);
    write_pages(state, &graph);
}

/// Lays the elements out page after page, then writes them with their links.
fn write_pages(state: &Build, graph: &MemoryGraph) {
    let layout = Layout {
        dims: state.dims,
        params: state.params,
        quantization: state.quantization,
    };
    let tids = assign_tids(graph, &layout);
    let mut first = 0;
    while first < tids.len() {
        let block = tids[first].block;
        let locked = Locked::extend(state.index);
        assert_eq!(locked.block(), block, "index pages are written in order");
        init_page(locked.page());
        while first < tids.len() && tids[first].block == block {
            let i = first as u32;
            let level = graph.level(i);
            let links: Vec<Vec<Tid>> = (0..=level)
                .map(|l| {
                    graph
                        .neighbors(i, l)
                        .iter()
                        .map(|&n| tids[n as usize])
                        .collect()
                })
                .collect();
            let bytes = layout.encode(
                state.heap_tids[first],
                level,
                level,
                graph.vector(i),
                &links,
            );
            let offset = add_item(state.index, locked.page(), &bytes);
            assert_eq!(
                offset, tids[first].offset,
                "element offsets are assigned in order"
            );
            first += 1;
        }
        // SAFETY: the buffer is pinned and exclusively locked by `locked`.
        unsafe { pg_sys::MarkBufferDirty(locked.buffer) };
        progress(PROGRESS_TUPLES_DONE, first as i64);
    }
    let (entry, top) = graph.entry().expect("a non-empty graph has an entry");
    let last = tids.last().unwrap().block;
    let locked = Locked::new(state.index, page::META_BLOCK, buffer::Lock::Exclusive);
    // SAFETY: the meta page is pinned and exclusively locked by `locked`.
    unsafe {
        let meta = &mut *meta_of(locked.page());
        meta.entry = tids[entry as usize];
        meta.entry_level = top as i16;
        meta.insert_page = last;
        pg_sys::MarkBufferDirty(locked.buffer);
    }
}

/// Where each element will be: pages filled in order from block 1.
fn assign_tids(graph: &MemoryGraph, layout: &Layout) -> Vec<Tid> {
    let capacity = page_capacity();
    let (mut block, mut offset, mut used) = (1u32, 0u16, 0usize);
    (0..graph.len() as u32)
        .map(|i| {
            let space = space_for(layout.tuple_len(graph.level(i)));
            if used + space > capacity {
                (block, offset, used) = (block + 1, 0, 0);
            }
            used += space;
            offset += 1;
            Tid { block, offset }
        })
        .collect()
}
