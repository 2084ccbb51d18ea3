//! The graph in the index's pages, seen from one query: what the shared HNSW search
//! of `m3ret_core::hnsw` walks during scans and inserts.

use super::buffer::{self, with_element};
use super::page::{Layout, Meta, Tid};
use crate::embedding::EmbeddingRef;
use crate::error::raise;
use m3ret_core::hnsw::{descend, Candidate, Graph, LevelRng, Metric};
use pgrx::pg_sys::{self, errcodes::PgSqlErrorCode};
use pgrx::FromDatum;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a tid key with one multiplication: tids are not attacker-chosen and
/// SipHash would be most of a visit's cost.
#[derive(Default)]
pub struct TidHasher(u64);

impl Hasher for TidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys are hashed")
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
}

pub type TidSet = HashSet<u64, BuildHasherDefault<TidHasher>>;
pub type TidMap<V> = HashMap<u64, V, BuildHasherDefault<TidHasher>>;

pub struct DiskGraph {
    pub index: pg_sys::Relation,
    pub layout: Layout,
    pub metric: Metric,
    query: Vec<f32>,
    nblocks: u32,
    visited: TidSet,
    prefetched: buffer::Prefetched,
}

impl DiskGraph {
    /// The graph seen from `query` (prepared for the index's distance).
    pub fn new(index: pg_sys::Relation, meta: &Meta, query: Vec<f32>) -> Self {
        DiskGraph {
            index,
            layout: meta.layout(),
            metric: meta.metric(),
            query,
            nblocks: buffer::block_count(index),
            visited: TidSet::default(),
            prefetched: Default::default(),
        }
    }

    /// The prepared query.
    pub fn query(&self) -> &[f32] {
        &self.query
    }

    /// Reads one element: `f` sees it under a share lock.
    pub fn read<R>(&mut self, tid: Tid, f: impl FnOnce(&super::page::Element) -> R) -> Option<R> {
        with_element(self.index, tid, self.layout, &mut self.nblocks, f)
    }

    /// The start of the search on `level`, found from the entry element on layer
    /// `top`. None if the entry element cannot be read.
    pub fn descend(&mut self, entry: Tid, top: usize, level: usize) -> Option<Candidate<Tid>> {
        let distance = self.distance(entry)?;
        Some(descend(
            self,
            Candidate {
                distance,
                id: entry,
            },
            top,
            level,
        ))
    }
}

impl Graph for DiskGraph {
    type Id = Tid;

    fn distance(&mut self, id: Tid) -> Option<f32> {
        let (index, layout, metric, query) = (self.index, self.layout, self.metric, &self.query);
        let distance = |e: &super::page::Element| e.vector().graph_distance(metric, query);
        match self.prefetched.take(id) {
            Some(buffer) => buffer::with_prefetched_element(index, buffer, id, layout, distance),
            None => with_element(index, id, layout, &mut self.nblocks, distance),
        }
    }

    fn neighbors(&mut self, id: Tid, level: usize, out: &mut Vec<Tid>) {
        self.read(id, |e| out.extend(e.neighbors(level)));
    }

    fn visit(&mut self, id: Tid) -> bool {
        self.visited.insert(id.key())
    }

    fn forget_visited(&mut self) {
        self.visited.clear();
    }

    fn prefetch(&mut self, ids: &[Tid]) {
        buffer::prefetch_elements(self.index, ids, self.nblocks, &mut self.prefetched);
    }
}

thread_local! {
    // SAFETY (GetCurrentTimestamp): reads the clock, no shared state.
    static LEVELS: RefCell<LevelRng> = RefCell::new(LevelRng::new(std::process::id() as u64 ^ unsafe { pg_sys::GetCurrentTimestamp() } as u64));
}

/// A level for a new element, as the paper draws it, capped so its tuple fits a page.
pub fn draw_level(layout: &Layout) -> usize {
    let cap = layout.max_level().unwrap_or(0);
    LEVELS.with(|rng| layout.params.level_for(rng.borrow_mut().next_unit(), cap))
}

/// An `embedding` datum as the graph stores it; ERROR on a wrong dimension count
/// (`dims` 0: any) or, under cosine, a zero vector.
pub fn prepare_value(datum: pg_sys::Datum, metric: Metric, dims: usize) -> Vec<f32> {
    // SAFETY: the callers pass a non-null datum of the indexed column or of the
    // ORDER BY argument, both of type embedding.
    let value = unsafe { EmbeddingRef::from_polymorphic_datum(datum, false, pg_sys::InvalidOid) }
        .expect("not null");
    let mut vector = value.values().to_vec();
    if dims != 0 && vector.len() != dims {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!("expected {dims} dimensions, not {}", vector.len()),
        );
    }
    if let Err(e) = metric.prepare(&mut vector) {
        raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, e);
    }
    vector
}
