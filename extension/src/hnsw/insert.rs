//! Inserting into a live index (`aminsert`), and the on-disk part of a build that
//! outgrew `maintenance_work_mem`.
//!
//! Concurrency: every insert holds the index's update lock in share mode (a
//! heavyweight lock, so inserts run side by side); one that becomes the new entry
//! element, or finds the index empty, takes it exclusively, and so does VACUUM while
//! it repairs links. Pages are locked one at a time and each change is one
//! GenericXLog record; a neighbour list changed meanwhile by someone else is re-read.

use super::buffer::{self, change_pages, update_meta, Lock, Locked};
use super::graph::{draw_level, prepare_value, DiskGraph, TidMap};
use super::page::{space_for, Element, Layout, Meta, Tid};
use super::update_lock::UpdateLock;
use m3ret_core::hnsw::{find_neighbours, select_neighbors, spare_left_out, Candidate, Metric};
use pgrx::pg_sys;

/// `aminsert`.
// The signature is PostgreSQL's.
#[allow(clippy::too_many_arguments)]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn aminsert(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    heap_tid: pg_sys::ItemPointer,
    _heap: pg_sys::Relation,
    _unique: pg_sys::IndexUniqueCheck::Type,
    _unchanged: bool,
    _info: *mut pg_sys::IndexInfo,
) -> bool {
    // SAFETY: PostgreSQL passes one value, one null flag and the row's tid, valid
    // for the call (the index has one column).
    if unsafe { *isnull } {
        return false;
    }
    let meta = buffer::read_meta(index);
    // SAFETY: as above; not null, so the datum is an embedding.
    let vector = prepare_value(unsafe { *values }, meta.metric(), meta.dims as usize);
    if meta.dims == 0 {
        set_dims(index, vector.len());
    }
    // SAFETY: as above.
    let heap_tid = Tid::from_item_pointer(unsafe { &*heap_tid });
    insert_vector(index, heap_tid, &vector);
    false
}

/// The first row of an index on a column without a declared dimension count fixes
/// the count for every later row.
pub fn set_dims(index: pg_sys::Relation, dims: usize) {
    let _alone = UpdateLock::exclusive(index);
    let meta = buffer::read_meta(index);
    if meta.dims == 0 {
        super::page::check_fits(dims, meta.params(), meta.quantization());
        update_meta(index, |m| m.dims = dims as u32);
    } else if meta.dims as usize != dims {
        crate::error::raise(
            pg_sys::errcodes::PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!("expected {} dimensions, not {dims}", meta.dims),
        );
    }
}

/// Links one prepared vector into the graph on disk.
pub fn insert_vector(index: pg_sys::Relation, heap: Tid, vector: &[f32]) {
    let mut lock = UpdateLock::share(index);
    let mut meta = buffer::read_meta(index);
    let (layout, metric) = (meta.layout(), meta.metric());
    let level = draw_level(&layout);
    if meta.entry().is_none_or(|(_, top)| level > top) {
        // This insert may change the entry element: nobody else may meanwhile.
        lock.upgrade();
        meta = buffer::read_meta(index);
    }
    let links = match meta.entry() {
        Some((entry, top)) => find_links(index, &meta, vector, level, entry, top),
        None => Vec::new(),
    };
    let tid = place_element(index, &meta, heap, level, vector, &links);
    let mut nblocks = buffer::block_count(index);
    for (l, list) in links.iter().enumerate() {
        let mut homed = false;
        let new_links: Vec<Tid> = list.iter().map(|c| c.id).collect();
        for c in list {
            let link = Link {
                to: c.id,
                new: tid,
                new_vector: vector,
                new_links: &new_links,
                distance: c.distance,
                level: l,
            };
            homed |= link_back(index, layout, metric, &link, &mut nblocks);
        }
        // No list took the new element on layer 0 (every full list kept what it had, to
        // orphan nobody): without an in-link no search would ever reach it.
        if l == 0 && !homed && !list.is_empty() {
            let newcomer = Newcomer {
                tid,
                links: &new_links,
            };
            find_home(index, layout, metric, &newcomer, list, &mut nblocks);
        }
    }
    if meta.entry().is_none_or(|(_, top)| level > top) {
        update_meta(index, |m| {
            m.entry = tid;
            m.entry_level = level as i16;
        });
    }
    drop(lock);
}

/// The links a new element at `level` gets on each of its layers.
fn find_links(
    index: pg_sys::Relation,
    meta: &Meta,
    vector: &[f32],
    level: usize,
    entry: Tid,
    top: usize,
) -> Vec<Vec<Candidate<Tid>>> {
    let (params, metric) = (meta.params(), meta.metric());
    let mut graph = DiskGraph::new(index, meta, vector.to_vec());
    let Some(start) = graph.descend(entry, top, level) else {
        return Vec::new();
    };
    let mut vectors: TidMap<Option<Vec<f32>>> = TidMap::default();
    find_neighbours(
        &mut graph,
        start,
        level.min(top),
        params.ef_construction,
        |graph, l, found| {
            // Freed elements (awaiting reuse) are passed through, never linked to.
            let live: Vec<Candidate<Tid>> = found
                .iter()
                .copied()
                .filter(|c| {
                    vectors
                        .entry(c.id.key())
                        .or_insert_with(|| graph.read(c.id, live_vector).flatten())
                        .is_some()
                })
                .collect();
            select_neighbors(&live, params.max_neighbors(l), |a, b| {
                metric.graph_distance(
                    vectors[&a.key()].as_deref().unwrap(),
                    vectors[&b.key()].as_deref().unwrap(),
                )
            })
        },
    )
}

fn live_vector(e: &Element) -> Option<Vec<f32>> {
    (!e.is_deleted()).then(|| e.vector().to_vec())
}

/// Writes the element tuple: into a freed tuple large enough, else into free space
/// from the insert page on, else on a new page. Returns where it went.
fn place_element(
    index: pg_sys::Relation,
    meta: &Meta,
    heap: Tid,
    level: usize,
    vector: &[f32],
    links: &[Vec<Candidate<Tid>>],
) -> Tid {
    let layout = meta.layout();
    let link_tids: Vec<Vec<Tid>> = links
        .iter()
        .map(|l| l.iter().map(|c| c.id).collect())
        .collect();
    let fresh = layout.encode(heap, level, level, vector, &link_tids);
    let nblocks = buffer::block_count(index);
    // The first page passed over that still has a freed tuple too small for this
    // element: later inserts (most are level 0) must still look there.
    let mut skipped: Option<u32> = None;
    for block in meta.insert_page.max(1)..nblocks {
        let mut locked = Locked::new(index, block, Lock::Exclusive);
        let (fits, freed) = reusable_slot(index, &locked, layout, level);
        if let Some(offset) = fits {
            change_pages(index, &mut [&mut locked], false, |pages| {
                pages[0]
                    .element_mut(offset, layout)
                    .unwrap()
                    .write(heap, level, vector, &link_tids);
            });
            return placed(index, meta, Tid { block, offset }, skipped);
        }
        if locked.free_space() >= space_for(fresh.len()) {
            let offset = change_pages(index, &mut [&mut locked], false, |pages| {
                pages[0].add_item(index, &fresh)
            });
            return placed(index, meta, Tid { block, offset }, skipped);
        }
        if !freed.is_empty() {
            // Freed tuples each too small, but together with the free space
            // enough: drop them (their line pointers stay unused) to make room.
            let reclaimable: usize = freed
                .iter()
                // SAFETY: arithmetic only.
                .map(|&(_, len)| unsafe { pg_sys::MAXALIGN(len) })
                .sum();
            if locked.free_space() + reclaimable >= space_for(fresh.len()) {
                let offset = change_pages(index, &mut [&mut locked], false, |pages| {
                    for &(offset, _) in freed.iter().rev() {
                        if pages[0].free_space() >= space_for(fresh.len()) {
                            break;
                        }
                        pages[0].delete_item_keeping_offsets(offset);
                    }
                    pages[0].add_item(index, &fresh)
                });
                return placed(index, meta, Tid { block, offset }, skipped);
            }
            skipped.get_or_insert(block);
        }
    }
    let mut locked = Locked::extend(index);
    let block = locked.block();
    let offset = change_pages(index, &mut [&mut locked], true, |pages| {
        pages[0].init();
        pages[0].add_item(index, &fresh)
    });
    placed(index, meta, Tid { block, offset }, skipped)
}

/// Remembers where there was room, so the next insert starts there.
fn placed(index: pg_sys::Relation, meta: &Meta, tid: Tid, skipped: Option<u32>) -> Tid {
    let start = skipped.unwrap_or(tid.block);
    if start != meta.insert_page {
        update_meta(index, |m| m.insert_page = start);
    }
    tid
}

/// A freed element tuple on `page` with room for an element of `level`; else the
/// freed tuples there (offset, length).
fn reusable_slot(
    index: pg_sys::Relation,
    page: &Locked,
    layout: Layout,
    level: usize,
) -> (Option<u16>, Vec<(u16, usize)>) {
    let mut freed = Vec::new();
    for (offset, e) in page.elements(index, layout).filter(|(_, e)| e.is_deleted()) {
        if e.capacity() >= level {
            return (Some(offset), freed);
        }
        freed.push((offset, layout.tuple_len(e.capacity())));
    }
    (None, freed)
}

/// A link from an existing element `to` back to the element just placed.
struct Link<'v> {
    to: Tid,
    new: Tid,
    new_vector: &'v [f32],
    /// `new`'s own links on `level`.
    new_links: &'v [Tid],
    /// Between `to` and `new`.
    distance: f32,
    level: usize,
}

/// Adds `link.new` to `link.to`'s links on its level; when the list is full, the
/// selection heuristic decides what stays. Whether `link.new` is in the list after.
fn link_back(
    index: pg_sys::Relation,
    layout: Layout,
    metric: Metric,
    link: &Link,
    nblocks: &mut u32,
) -> bool {
    let max = layout.params.max_neighbors(link.level);
    // Each lost race means another insert or VACUUM changed the list meanwhile, so
    // the index as a whole makes progress; retrying until the write lands means a
    // link back is never dropped silently (a cancel still ends the loop).
    loop {
        pgrx::check_for_interrupts!();
        let read = buffer::with_element(index, link.to, layout, nblocks, |e| {
            (!e.is_deleted() && e.level() >= link.level).then(|| {
                (
                    e.neighbors(link.level).collect::<Vec<_>>(),
                    e.vector().to_vec(),
                )
            })
        });
        let Some(Some((current, to_vector))) = read else {
            return false;
        };
        if current.contains(&link.new) {
            return true;
        }
        let updated = if current.len() < max {
            let mut list = current.clone();
            list.push(link.new);
            list
        } else {
            match reselect(index, layout, metric, &to_vector, &current, link, nblocks) {
                Some(list) => list,
                None => return false,
            }
        };
        if write_if_unchanged(index, layout, link.to, link.level, &current, &updated) {
            return true;
        }
        // Another insert changed the list between our read and our lock: read again.
    }
}

/// Writes `updated` as `owner`'s list on `level` if the list is still `current`.
fn write_if_unchanged(
    index: pg_sys::Relation,
    layout: Layout,
    owner: Tid,
    level: usize,
    current: &[Tid],
    updated: &[Tid],
) -> bool {
    let mut locked = Locked::new(index, owner.block, Lock::Exclusive);
    let unchanged = locked
        .element(index, owner.offset, layout)
        .is_some_and(|e| !e.is_deleted() && e.neighbors(level).eq(current.iter().copied()));
    if unchanged {
        change_pages(index, &mut [&mut locked], false, |pages| {
            pages[0]
                .element_mut(owner.offset, layout)
                .unwrap()
                .set_neighbors(level, updated)
        });
    }
    unchanged
}

/// Puts the new element into the layer-0 list of the nearest of `nearest` that has a
/// link to give up: the farthest link whose target the new element reaches in at
/// most two links through its own (`Newcomer::links`, its layer-0 links), so that the
/// target stays reachable through the new element. Failing that in every list, the
/// new element takes over the farthest link it can ([`take_over_link`]).
pub(super) fn find_home(
    index: pg_sys::Relation,
    layout: Layout,
    metric: Metric,
    newcomer: &Newcomer,
    nearest: &[Candidate<Tid>],
    nblocks: &mut u32,
) {
    for safe_only in [true, false] {
        if try_homes(index, layout, metric, newcomer, nearest, safe_only, nblocks) {
            return;
        }
    }
    pgrx::warning!("m3ret_hnsw: a new element found no neighbour list to join; REINDEX links it");
}

/// An element that needs a way in: one just placed that no full list took, or one
/// VACUUM found unreachable. Its own layer-0 links tell which links a list may
/// give up for it.
pub(super) struct Newcomer<'a> {
    pub tid: Tid,
    pub links: &'a [Tid],
}

/// One pass of [`find_home`]; whether a list took the new element.
fn try_homes(
    index: pg_sys::Relation,
    layout: Layout,
    metric: Metric,
    newcomer: &Newcomer,
    nearest: &[Candidate<Tid>],
    safe_only: bool,
    nblocks: &mut u32,
) -> bool {
    let (new, new_links) = (newcomer.tid, newcomer.links);
    for c in nearest {
        let read = buffer::with_element(index, c.id, layout, nblocks, |e| {
            (!e.is_deleted()).then(|| (e.neighbors(0).collect::<Vec<_>>(), e.vector().to_vec()))
        });
        let Some(Some((current, to_vector))) = read else {
            continue;
        };
        if current.len() < layout.params.max_neighbors(0) {
            // Room (VACUUM left the list short): nothing to give up.
            let updated: Vec<Tid> = current.iter().copied().chain([new]).collect();
            if write_if_unchanged(index, layout, c.id, 0, &current, &updated) {
                return true;
            }
            continue;
        }
        let mut by_distance: Vec<(f32, Tid)> = current
            .iter()
            .filter_map(|&n| {
                buffer::with_element(index, n, layout, nblocks, live_vector)
                    .flatten()
                    .map(|v| (metric.graph_distance(&to_vector, &v), n))
            })
            .collect();
        by_distance.sort_by(|a, b| b.0.total_cmp(&a.0));
        let give_up = if safe_only {
            by_distance
                .iter()
                .map(|(_, n)| *n)
                .find(|&n| reached_through(index, layout, new_links, c.id, n, 0, nblocks))
        } else {
            by_distance
                .iter()
                .map(|(_, n)| *n)
                .find(|&n| take_over_link(index, layout, new, n, nblocks))
        };
        let Some(give_up) = give_up else {
            continue;
        };
        let updated: Vec<Tid> = current
            .iter()
            .map(|&n| if n == give_up { new } else { n })
            .collect();
        if write_if_unchanged(index, layout, c.id, 0, &current, &updated) {
            return true;
        }
    }
    false
}

/// Gives the new element a layer-0 link to `target`, so that a list may hand its own
/// link to `target` over to the new element: added if the new element's list has
/// room, else in place of one of its links whose target `target` links to (the way
/// goes on through `target`). False if neither.
fn take_over_link(
    index: pg_sys::Relation,
    layout: Layout,
    new: Tid,
    target: Tid,
    nblocks: &mut u32,
) -> bool {
    let Some(own) = live_neighbours(index, layout, new, 0, nblocks) else {
        return false;
    };
    if own.contains(&target) {
        return true;
    }
    let updated: Vec<Tid> = if own.len() < layout.params.max_neighbors(0) {
        own.iter().copied().chain([target]).collect()
    } else {
        let Some(beyond) = live_neighbours(index, layout, target, 0, nblocks) else {
            return false;
        };
        let Some(&replaced) = own.iter().rev().find(|h| beyond.contains(h)) else {
            return false;
        };
        own.iter()
            .map(|&h| if h == replaced { target } else { h })
            .collect()
    };
    write_if_unchanged(index, layout, new, 0, &own, &updated)
}

/// `tid`'s links on `level`; None if it is deleted or has no such layer.
pub(super) fn live_neighbours(
    index: pg_sys::Relation,
    layout: Layout,
    tid: Tid,
    level: usize,
    nblocks: &mut u32,
) -> Option<Vec<Tid>> {
    buffer::with_element(index, tid, layout, nblocks, |e| {
        (!e.is_deleted() && e.level() >= level).then(|| e.neighbors(level).collect())
    })
    .flatten()
}

/// Whether live `from` links to `to` on `level`.
fn links_to(
    index: pg_sys::Relation,
    layout: Layout,
    from: Tid,
    to: Tid,
    level: usize,
    nblocks: &mut u32,
) -> bool {
    buffer::with_element(index, from, layout, nblocks, |e| {
        !e.is_deleted() && e.level() >= level && e.neighbors(level).any(|t| t == to)
    }) == Some(true)
}

/// The links a full list keeps once `link.new` competes for a place; None if it loses.
fn reselect(
    index: pg_sys::Relation,
    layout: Layout,
    metric: Metric,
    to: &[f32],
    current: &[Tid],
    link: &Link,
    nblocks: &mut u32,
) -> Option<Vec<Tid>> {
    let max = layout.params.max_neighbors(link.level);
    let mut vectors: TidMap<Vec<f32>> = TidMap::default();
    vectors.insert(link.new.key(), link.new_vector.to_vec());
    let mut candidates = vec![Candidate {
        distance: link.distance,
        id: link.new,
    }];
    for &n in current {
        if let Some(Some(v)) = buffer::with_element(index, n, layout, nblocks, live_vector) {
            candidates.push(Candidate {
                distance: metric.graph_distance(to, &v),
                id: n,
            });
            vectors.insert(n.key(), v);
        }
    }
    candidates.sort();
    // select_neighbors gives the places the heuristic leaves empty to the nearest of
    // the rest: lists VACUUM refilled stay full, and a new element nearer than their
    // farthest link still gets in.
    let chosen = select_neighbors(&candidates, max, |a, b| {
        metric.graph_distance(&vectors[&a.key()], &vectors[&b.key()])
    });
    let mut kept: Vec<Tid> = chosen.into_iter().map(|c| c.id).collect();
    if !kept.contains(&link.new) {
        return None;
    }
    // A link dropped here may be its target's last way in. So a list gives up only
    // a link whose target the new element reaches too: the way to the target then
    // goes on through the new element, which this list now leads to. Every link an
    // insert removes is replaced by a path through the new element, so no insert,
    // whatever the data or the concurrent inserts, leaves unreachable an element
    // that was reachable (find_home's last resort aside).
    let dropped: Vec<Tid> = current
        .iter()
        .copied()
        .filter(|t| !kept.contains(t) && vectors.contains_key(&t.key()))
        .collect();
    // The list held at most `max` live links and gained one: at most one is dropped.
    let left_out = match dropped[..] {
        [] => return Some(kept),
        [left_out] => left_out,
        _ => return None,
    };
    // Unless the new element links to the left-out target too, give up instead the
    // farthest kept link it has too and keep the left-out one; if it has none,
    // the heuristic's choice stands when the new element reaches the left-out
    // target in two links.
    let by_distance: Vec<Tid> = candidates.iter().map(|c| c.id).collect();
    if spare_left_out(&mut kept, &by_distance, left_out, |id| {
        id != link.new && link.new_links.contains(&id)
    }) {
        return Some(kept);
    }
    reached_through(
        index,
        layout,
        link.new_links,
        link.to,
        left_out,
        link.level,
        nblocks,
    )
    .then_some(kept)
}

/// Whether an element whose links on `level` are `links` reaches `target` in at
/// most two links without passing through `owner`: then `owner`'s list, once it
/// leads to that element, may drop its own link to `target` (a way through
/// `owner` would use the very link dropped).
fn reached_through(
    index: pg_sys::Relation,
    layout: Layout,
    links: &[Tid],
    owner: Tid,
    target: Tid,
    level: usize,
    nblocks: &mut u32,
) -> bool {
    links.contains(&target)
        || links
            .iter()
            .filter(|&&x| x != owner)
            .any(|&x| links_to(index, layout, x, target, level, nblocks))
}
