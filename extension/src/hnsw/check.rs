//! `m3ret_hnsw_check(index)`: verifies an index's structure against its table and
//! reports what it found, for DBAs after a crash and for the tests after every
//! scenario. On a primary it also checks that each element holds its row's vector
//! as the index stores it (the floats, or the 8-bit codes of `quantization = int8`).

use super::buffer::{self, Lock, Locked};
use super::graph::TidMap;
use super::page::{self, Layout, Meta, Tid};
use crate::error::raise;
use pgrx::pg_sys::{self, errcodes::PgSqlErrorCode};
use pgrx::prelude::*;
use std::hash::{DefaultHasher, Hash, Hasher};

/// The table's rows that the index must hold, each with a digest of the vector its
/// element should store (None on a standby, where the check reads no values).
type Alive = TidMap<Option<u64>>;

/// Takes a share lock on the table, so it sees a stable set of rows. On a hot
/// standby, where that lock cannot be taken, it reads the rows its snapshot sees
/// instead (see [`visible_heap_rows`]).
// pgrx reads the result's column names from this signature: no type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn m3ret_hnsw_check(
    index_oid: pg_sys::Oid,
) -> TableIterator<
    'static,
    (
        name!(elements, i64),
        name!(live, i64),
        name!(dead, i64),
        name!(freed, i64),
        name!(unreachable, i64),
        name!(entry_level, i32),
        name!(problems, Vec<String>),
    ),
> {
    // SAFETY: PostgreSQL's catalog and relation calls, which ERROR on a bad oid;
    // the table is locked before its index is opened (the lock is held to the end
    // of the transaction), and the access method's name is read before anything
    // else is looked up.
    let (heap_oid, index) = unsafe {
        // A table's oid would reach IndexGetRelation's "cache lookup failed".
        if pg_sys::get_rel_relkind(index_oid) != pg_sys::RELKIND_INDEX as std::ffi::c_char {
            let name = pg_sys::get_rel_name(index_oid);
            let name = if name.is_null() {
                format!("OID {}", index_oid.to_u32())
            } else {
                format!("\"{}\"", std::ffi::CStr::from_ptr(name).to_string_lossy())
            };
            raise(
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                format!("m3ret_hnsw_check: {name} is not an index"),
            );
        }
        let heap_oid = pg_sys::IndexGetRelation(index_oid, false);
        if !crate::pg_compat::owns_relation(heap_oid) {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "m3ret_hnsw_check: must be the owner of the table",
            );
        }
        let lock = if pg_sys::RecoveryInProgress() {
            pg_sys::AccessShareLock
        } else {
            pg_sys::ShareLock
        };
        let heap = pg_sys::table_open(heap_oid, lock as i32);
        let index = pg_sys::index_open(index_oid, pg_sys::AccessShareLock as i32);
        let am = (*(*index).rd_rel).relam;
        let name = std::ffi::CStr::from_ptr(pg_sys::get_am_name(am))
            .to_string_lossy()
            .into_owned();
        if name != "m3ret_hnsw" {
            raise(
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                format!("m3ret_hnsw_check: the index uses {name}, not m3ret_hnsw"),
            );
        }
        pg_sys::table_close(heap, pg_sys::NoLock as i32);
        (heap_oid, index)
    };
    // SAFETY: a plain backend function: recovery state is shared memory it may read.
    let alive = if unsafe { pg_sys::RecoveryInProgress() } {
        visible_heap_rows(heap_oid, index)
    } else {
        live_heap_rows(heap_oid, index)
    };
    let report = check(index, &alive);
    // SAFETY: opened above, not used after.
    unsafe { pg_sys::index_close(index, pg_sys::NoLock as i32) };
    TableIterator::once((
        report.elements,
        report.live,
        report.dead,
        report.freed,
        report.unreachable,
        report.entry_level,
        report.problems,
    ))
}

#[derive(Default)]
struct Findings {
    elements: i64,
    live: i64,
    dead: i64,
    freed: i64,
    unreachable: i64,
    entry_level: i32,
    problems: Vec<String>,
}

impl Findings {
    fn problem(&mut self, text: String) {
        // A broken index can have millions; the first few tell the story.
        if self.problems.len() < 100 {
            self.problems.push(text);
        }
    }
}

/// One element as the check remembers it.
struct Seen {
    level: usize,
    freed: bool,
    links: Vec<Vec<Tid>>,
    vector_digest: u64,
}

fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

fn check(index: pg_sys::Relation, alive: &Alive) -> Findings {
    let mut f = Findings::default();
    let meta = buffer::read_meta(index);
    let layout = meta.layout();
    f.entry_level = meta.entry_level as i32;
    let elements = read_all(index, layout, &mut f);
    let mut indexed: TidMap<u32> = TidMap::default();
    for (key, (heap, seen)) in &elements {
        let tid = Tid::from_key(*key);
        f.elements += 1;
        if seen.freed {
            f.freed += 1;
            if seen.links.iter().flatten().next().is_some() {
                f.problem(format!("freed element {tid:?} still has links"));
            }
            continue;
        }
        *indexed.entry(heap.key()).or_default() += 1;
        match alive.get(&heap.key()) {
            Some(expected) => {
                f.live += 1;
                if expected.is_some_and(|d| d != seen.vector_digest) {
                    f.problem(format!(
                        "element {tid:?} does not hold the vector of its row {heap:?}"
                    ));
                }
            }
            None => f.dead += 1,
        }
        check_links(&mut f, &meta, tid, seen, &elements);
    }
    check_entry(&mut f, &meta, &elements);
    f.unreachable = count_unreachable(&meta, &elements, alive);
    if f.unreachable > 0 {
        // No search can return these rows: as much a fault as a lost row.
        f.problem(format!(
            "{} elements cannot be reached from the entry point: no search returns them",
            f.unreachable
        ));
    }
    for heap in alive.keys() {
        match indexed.get(heap).copied().unwrap_or(0) {
            1 => {}
            n => f.problem(format!(
                "heap row ({},{}) is indexed {n} times",
                heap >> 16,
                heap & 0xFFFF
            )),
        }
    }
    f
}

fn read_all(index: pg_sys::Relation, layout: Layout, f: &mut Findings) -> TidMap<(Tid, Seen)> {
    let mut elements = TidMap::default();
    for block in 1..buffer::block_count(index) {
        let locked = Locked::new(index, block, Lock::Share);
        // A page the index was extended by when a crash came, before its first WAL
        // record: all zeros, holding nothing (inserts and VACUUM pass it by).
        // SAFETY: the page is pinned and share-locked by `locked`.
        if unsafe { pg_sys::PageIsNew(locked.page()) } {
            continue;
        }
        // SAFETY: as above; an initialised page of this index has the special
        // space `init_page` reserved (its id is checked next).
        let special =
            unsafe { &*(pg_sys::PageGetSpecialPointer(locked.page()) as *const page::Special) };
        if special.page_id != page::PAGE_ID {
            f.problem(format!("block {block} is not an m3ret_hnsw page"));
            continue;
        }
        for offset in 1..=buffer::max_offset(locked.page()) {
            let Some(bytes) = locked.item(offset) else {
                continue;
            };
            match page::Element::parse(bytes, layout) {
                Ok(e) => {
                    if let page::StoredVector::Int8(v) = e.vector() {
                        if !e.is_deleted() && !v.is_plausible() {
                            f.problem(format!(
                                "block {block} item {offset}: int8 codes with range {} + {} x code and error {}",
                                v.low, v.step, v.error
                            ));
                        }
                    }
                    let links = (0..=e.level()).map(|l| e.neighbors(l).collect()).collect();
                    elements.insert(
                        Tid { block, offset }.key(),
                        (
                            e.heap_tid(),
                            Seen {
                                level: e.level(),
                                freed: e.is_deleted(),
                                links,
                                vector_digest: digest(e.vector_bytes()),
                            },
                        ),
                    );
                }
                Err(what) => f.problem(format!("block {block} item {offset}: {what}")),
            }
        }
    }
    elements
}

fn check_links(
    f: &mut Findings,
    meta: &Meta,
    tid: Tid,
    seen: &Seen,
    elements: &TidMap<(Tid, Seen)>,
) {
    if meta.entry_level < 0 || seen.level > meta.entry_level as usize {
        f.problem(format!(
            "element {tid:?} has level {} above the entry level {}",
            seen.level, meta.entry_level
        ));
    }
    for (level, links) in seen.links.iter().enumerate() {
        if links.len() > meta.params().max_neighbors(level) {
            f.problem(format!(
                "element {tid:?} has {} links on level {level}",
                links.len()
            ));
        }
        for (i, n) in links.iter().enumerate() {
            if *n == tid {
                f.problem(format!("element {tid:?} links to itself"));
            } else if links[..i].contains(n) {
                f.problem(format!("element {tid:?} links twice to {n:?}"));
            }
            match elements.get(&n.key()) {
                None => f.problem(format!(
                    "element {tid:?} links to {n:?}, which is no element"
                )),
                Some((_, target)) if target.freed => {
                    f.problem(format!("element {tid:?} links to freed element {n:?}"))
                }
                Some((_, target)) if target.level < level => f.problem(format!(
                    "element {tid:?} links to {n:?} on level {level}, above its level {}",
                    target.level
                )),
                Some(_) => {}
            }
        }
    }
}

fn check_entry(f: &mut Findings, meta: &Meta, elements: &TidMap<(Tid, Seen)>) {
    let live_top = elements
        .values()
        .filter(|(_, s)| !s.freed)
        .map(|(_, s)| s.level)
        .max();
    match (meta.entry(), live_top) {
        (None, None) => {}
        (None, Some(_)) => f.problem("the index has elements but no entry element".into()),
        (Some((entry, _)), None) => f.problem(format!("entry element {entry:?} in an index without elements")),
        (Some((entry, level)), Some(top)) => match elements.get(&entry.key()) {
            None => f.problem(format!("entry {entry:?} is no element")),
            Some((_, e)) if e.freed => f.problem(format!("entry {entry:?} is a freed element")),
            Some((_, e)) if e.level != level || level != top => {
                f.problem(format!("entry {entry:?} has level {}, the meta page says {level}, the highest element {top}", e.level))
            }
            Some(_) => {}
        },
    }
}

/// Elements of live rows that no search can reach: not found walking every link
/// from the entry. (An element of a dead row needs no way in: no search may return
/// it, and VACUUM frees it. An insert cut off by a crash leaves one so.)
fn count_unreachable(meta: &Meta, elements: &TidMap<(Tid, Seen)>, alive: &Alive) -> i64 {
    let Some((entry, _)) = meta.entry() else {
        return 0;
    };
    let mut reached = super::graph::TidSet::default();
    let mut stack = vec![entry];
    while let Some(tid) = stack.pop() {
        if !reached.insert(tid.key()) {
            continue;
        }
        if let Some((_, seen)) = elements.get(&tid.key()) {
            stack.extend(seen.links.iter().flatten().copied());
        }
    }
    elements
        .iter()
        .filter(|(key, (heap, s))| {
            !s.freed && alive.contains_key(&heap.key()) && !reached.contains(key)
        })
        .count() as i64
}

/// What `collect_alive` fills, and how it prepares values as the index does.
struct Collect {
    alive: Alive,
    meta: Meta,
}

/// The heap rows the index must hold (what a build would index now), each with the
/// digest of its vector as an element stores it.
fn live_heap_rows(heap_oid: pg_sys::Oid, index: pg_sys::Relation) -> Alive {
    let mut collect = Collect {
        alive: Alive::default(),
        meta: buffer::read_meta(index),
    };
    // SAFETY: the table is locked by the caller; `collect` outlives the scan, which
    // passes it to `collect_alive` only.
    unsafe {
        let heap = pg_sys::table_open(heap_oid, pg_sys::NoLock as i32);
        let info = pg_sys::BuildIndexInfo(index);
        pg_sys::table_index_build_scan(
            heap,
            index,
            info,
            false,
            false,
            Some(collect_alive),
            &mut collect as *mut Collect as *mut std::ffi::c_void,
            std::ptr::null_mut(),
        );
        pg_sys::table_close(heap, pg_sys::NoLock as i32);
    }
    collect.alive
}

/// The digest of the bytes an element of `value` stores.
fn stored_digest(value: pg_sys::Datum, meta: &Meta) -> Option<u64> {
    // An index still without dimensions holds no element to compare with.
    if meta.dims == 0 {
        return None;
    }
    let vector = super::graph::prepare_value(value, meta.metric(), meta.dims as usize);
    let layout = meta.layout();
    let mut bytes = vec![0; layout.vector_len()];
    layout.write_vector(&vector, &mut bytes);
    Some(digest(&bytes))
}

/// The table's rows the statement's snapshot sees, with a non-NULL indexed value.
/// On a standby the primary writes while we read, without a lock that could stop
/// it; but WAL replays a row's index insertion before its transaction's commit, so
/// every row a snapshot sees as committed has its element, and a row the snapshot
/// does not see is counted as dead, as on the primary.
fn visible_heap_rows(heap_oid: pg_sys::Oid, index: pg_sys::Relation) -> Alive {
    let mut alive = Alive::default();
    // SAFETY: the table is locked (AccessShareLock, taken by the caller); the scan
    // runs under the active snapshot of the statement calling the function, and
    // every tuple pointer is used before the next heap_getnext.
    unsafe {
        let heap = pg_sys::table_open(heap_oid, pg_sys::NoLock as i32);
        let column = *(*(*index).rd_index).indkey.values.as_ptr() as i32;
        let flags = pg_sys::ScanOptions::SO_TYPE_SEQSCAN
            | pg_sys::ScanOptions::SO_ALLOW_STRAT
            | pg_sys::ScanOptions::SO_ALLOW_PAGEMODE;
        let scan = pg_sys::heap_beginscan(
            heap,
            pg_sys::GetActiveSnapshot(),
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            flags,
        );
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            // An expression index (column 0): every visible row counts.
            if column == 0 || !pg_sys::heap_attisnull(tuple, column, (*heap).rd_att) {
                alive.insert(Tid::from_item_pointer(&(*tuple).t_self).key(), None);
            }
        }
        pg_sys::heap_endscan(scan);
        pg_sys::table_close(heap, pg_sys::NoLock as i32);
    }
    alive
}

#[pg_guard]
unsafe extern "C-unwind" fn collect_alive(
    _index: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    is_alive: bool,
    state: *mut std::ffi::c_void,
) {
    // SAFETY: the scan passes one value and null flag (one column), the row's tid
    // and the `Collect` live_heap_rows gave it, all valid for the call.
    if is_alive && !unsafe { *isnull } {
        // SAFETY: as above.
        let collect = unsafe { &mut *(state as *mut Collect) };
        // SAFETY: as above.
        let digest = stored_digest(unsafe { *values }, &collect.meta);
        // SAFETY: as above.
        let key = Tid::from_item_pointer(unsafe { &*tid }).key();
        collect.alive.insert(key, digest);
    }
}
