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
use crate::vector::int8::Int8Vector;

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

    /// [`Metric::graph_distance`] to the decoded form of an 8-bit encoded vector: an
    /// estimate of the distance to the vector it encodes.
    #[inline]
    pub fn graph_distance_int8(self, query: &[f32], v: &Int8Vector) -> f32 {
        match self {
            Metric::L2 => v.l2_squared(query),
            Metric::InnerProduct => -v.dot(query),
            Metric::Cosine => 0.5 * v.l2_squared(query),
        }
    }

    /// A lower bound, in the SQL operator's units (`<->`, `<#>`, `<=>`), of the
    /// distance from a prepared query (`query_norm` its length) to the vector `v`
    /// encodes, from `estimate`, the graph distance to `v`'s decoded form. The
    /// triangle inequality gives it: the decoded vector is `v.error` away from the
    /// original. The margins cover the rounding of this estimate's f32 sums and of
    /// the operator's own (at most about 1e-5 of the distance at 384 dimensions),
    /// since the executor re-ranking on the real vectors raises an ERROR if a bound
    /// is ever above the distance it recomputes.
    pub fn lower_bound(self, estimate: f32, v: &Int8Vector, query_norm: f32) -> f64 {
        // Worst-case relative error of an f32 sum in eight lanes, times four: this
        // estimate's sum and the operator's own, each way.
        let rounding = 4.0 * ((v.codes.len() / 8 + 8) as f64) * (f32::EPSILON as f64 / 2.0);
        let error = v.error as f64 * (1.0 + rounding);
        let estimate = estimate as f64;
        match self {
            Metric::L2 => (estimate.max(0.0).sqrt() * (1.0 - rounding) - error).max(0.0),
            Metric::Cosine => {
                // 1 - cos of unit vectors is half their squared Euclidean distance;
                // 1e-6 covers the rounding of normalising both.
                let apart = (2.0 * estimate.max(0.0)).sqrt() * (1.0 - rounding) - error - 1e-6;
                (0.5 * apart.max(0.0).powi(2) - rounding).max(0.0)
            }
            Metric::InnerProduct => {
                let q = query_norm as f64;
                estimate - q * error - rounding * q * (v.norm_bound() as f64 + error)
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::int8;
    use rand::{Rng, SeedableRng};

    /// The executor ERRORs if a bound is above the distance it recomputes, so every
    /// bound must hold, also between near-duplicates and for every dimension count.
    #[test]
    fn int8_lower_bounds_hold_and_are_tight() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for dims in [3, 64, 384, 1000] {
            for trial in 0..200 {
                let base: Vec<f32> = (0..dims).map(|_| rng.gen_range(-1.0..1.0)).collect();
                // Half the pairs nearly identical (the hard case for a bound).
                let spread = if trial % 2 == 0 { 1e-4 } else { 1.0 };
                let x: Vec<f32> = base
                    .iter()
                    .map(|b| b + rng.gen_range(-spread..spread))
                    .collect();
                for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
                    let (mut q, mut stored) = (base.clone(), x.clone());
                    metric.prepare(&mut q).unwrap();
                    metric.prepare(&mut stored).unwrap();
                    let mut bytes = vec![0; int8::encoded_len(dims)];
                    int8::encode(&stored, &mut bytes);
                    let v = Int8Vector::parse(&bytes, dims).unwrap();
                    let estimate = metric.graph_distance_int8(&q, &v);
                    let bound = metric.lower_bound(estimate, &v, distance::dot(&q, &q).sqrt());
                    // What the SQL operators compute, on the values as given.
                    let real = match metric {
                        Metric::L2 => distance::l2_distance(&base, &x),
                        Metric::InnerProduct => distance::negative_inner_product(&base, &x),
                        Metric::Cosine => distance::cosine_distance(&base, &x),
                    };
                    assert!(
                        bound <= real,
                        "{metric:?} dims {dims}: bound {bound} > {real}"
                    );
                    // Loose by twice the encoding error at most (once in the estimate,
                    // once subtracted), scaled by the distance for cosine and inner product.
                    let slack = 2.0 * v.error as f64 * (1.0 + 2.0 * real.abs()) + 1e-4;
                    assert!(
                        real - bound <= slack,
                        "{metric:?} dims {dims}: {bound} vs {real}"
                    );
                }
            }
        }
    }
}
