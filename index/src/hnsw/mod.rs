//! HNSW (Malkov & Yashunin, 2018) graph algorithms, independent of where the graph
//! is stored.
//!
//! - `search.rs`: best-first search of one layer through the [`Graph`] trait;
//! - `select.rs`: the neighbour-selection heuristic;
//! - `memory.rs`: an in-memory graph built by worker threads (index builds).
//!
//! The extension stores the same graph in PostgreSQL pages and implements [`Graph`]
//! over its buffers; nothing here knows about PostgreSQL.

mod memory;
mod search;
mod select;

pub use memory::MemoryGraph;
pub use search::{
    descend, find_neighbours, search_layer, search_layer_afresh, search_layer_bounded, Candidate,
    Graph,
};
pub use select::{
    extend_neighbors, fill_nearest, reselect, select_neighbors, spare_left_out, ScoredLink,
};

use crate::vector::distance;

/// The distance an index orders by. Inside the graph, cosine works on unit vectors
/// (normalised once when stored) so that it costs one dot product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    L2,
    InnerProduct,
    Cosine,
}

impl Metric {
    /// Distance as the graph uses it: ordered like the SQL operator, cheaper to compute
    /// (squared L2; `-a.b`; `|a - b|^2 / 2` of unit vectors, which equals `1 - a.b`
    /// but keeps its precision between nearly parallel vectors, where `1 - a.b` in
    /// f32 is mostly rounding error).
    #[inline]
    pub fn graph_distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::L2 => distance::l2_squared(a, b),
            Metric::InnerProduct => -distance::dot(a, b),
            Metric::Cosine => 0.5 * distance::l2_squared(a, b),
        }
    }

    /// Turns a value into what the graph stores: a unit vector for cosine. A zero
    /// vector has no direction, so cosine refuses it.
    pub fn prepare(self, v: &mut [f32]) -> Result<(), String> {
        if self == Metric::Cosine {
            let norm = distance::dot(v, v).sqrt();
            if norm == 0.0 || !norm.is_finite() {
                return Err("cosine distance is undefined for a zero embedding".into());
            }
            v.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(())
    }
}

/// Construction parameters, as in the paper and pgvector: `m` links per element on
/// the upper layers (twice that on layer 0), `ef_construction` candidates per search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub m: usize,
    pub ef_construction: usize,
}

/// Highest layer any element gets. With m = 16, reaching it has probability 16^-15.
pub const MAX_LEVEL: usize = 15;

impl Params {
    /// Links an element keeps on `level`.
    pub fn max_neighbors(&self, level: usize) -> usize {
        if level == 0 {
            2 * self.m
        } else {
            self.m
        }
    }

    /// Neighbour slots of an element whose top layer is `level`.
    pub fn slots(&self, level: usize) -> usize {
        2 * self.m + level * self.m
    }

    /// The level for a uniform draw `u` in (0, 1]: floor(-ln(u) / ln(m)), capped.
    pub fn level_for(&self, u: f64, cap: usize) -> usize {
        let ml = 1.0 / (self.m as f64).ln();
        let level = (-u.max(f64::MIN_POSITIVE).ln() * ml).floor();
        (level as usize).min(cap).min(MAX_LEVEL)
    }
}

/// A small, fast, seedable generator (splitmix64) for levels: no dependency, and
/// the same sequence on every platform.
pub struct LevelRng(u64);

impl LevelRng {
    pub fn new(seed: u64) -> Self {
        LevelRng(seed)
    }

    /// A uniform draw in (0, 1].
    pub fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        // mix adds the increment once more: undo it, to keep the sequence of earlier builds.
        let z = crate::rng::mix(self.0.wrapping_sub(0x9E37_79B9_7F4A_7C15));
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}
