//! Synthetic clustered vectors with a fixed seed, for index tests and benchmarks:
//! every front end (core tests, SQL tests, the SQL benchmark and its in-memory
//! baseline) must see exactly the same data.
//!
//! Each cluster has a centre and a few directions of its own along which its
//! members spread, plus a little isotropic noise: a low intrinsic dimension, as
//! real embeddings have (uniform noise in all dimensions would make every point
//! nearly equidistant from every other, which no real data set does).

use crate::hnsw::LevelRng;

const SPREAD_DIRECTIONS: usize = 8;

/// The shape of a data set; `vectors(seed)` draws members, the same centres for
/// every seed (so queries drawn with another seed fall into the same clusters).
pub struct Clustered {
    dims: usize,
    centres: Vec<Vec<f32>>,
    bases: Vec<Vec<Vec<f32>>>,
}

impl Clustered {
    pub fn new(dims: usize, clusters: usize) -> Self {
        let mut rng = LevelRng::new(0x006d_3372_6574);
        let mut uniform = |scale: f32| (rng.next_unit() as f32 * 2.0 - 1.0) * scale;
        let centres = (0..clusters)
            .map(|_| (0..dims).map(|_| uniform(1.0)).collect())
            .collect();
        let bases = (0..clusters)
            .map(|_| {
                (0..SPREAD_DIRECTIONS)
                    .map(|_| (0..dims).map(|_| uniform(0.15)).collect())
                    .collect()
            })
            .collect();
        Clustered {
            dims,
            centres,
            bases,
        }
    }

    /// `n` members, member i in cluster i mod clusters.
    pub fn vectors(&self, n: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = LevelRng::new(seed);
        let mut uniform = |scale: f32| (rng.next_unit() as f32 * 2.0 - 1.0) * scale;
        (0..n)
            .map(|i| {
                let c = i % self.centres.len();
                let z: Vec<f32> = (0..SPREAD_DIRECTIONS).map(|_| uniform(1.0)).collect();
                (0..self.dims)
                    .map(|d| {
                        self.centres[c][d]
                            + (0..SPREAD_DIRECTIONS)
                                .map(|k| z[k] * self.bases[c][k][d])
                                .sum::<f32>()
                            + uniform(0.01)
                    })
                    .collect()
            })
            .collect()
    }
}

/// The near-duplicate rows of the HNSW reachability tests: row i has every
/// component `(i mod 50) * 0.1 + uniform(-0.5, 0.5)`. Under cosine most rows are
/// nearly parallel (as a weak model's embeddings of one modality are), and the
/// neighbour-selection heuristic prunes almost every candidate: the data on which
/// HNSW graphs orphan elements.
pub fn near_duplicates(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = LevelRng::new(seed);
    (0..n)
        .map(|i| {
            (0..dims)
                .map(|_| (i % 50) as f32 * 0.1 + rng.next_unit() as f32 - 0.5)
                .collect()
        })
        .collect()
}

/// Isotropic Gaussian clusters: `clusters` centres drawn uniformly from [-1, 1]^dims
/// (the same centres for every seed), row i the centre of cluster i mod clusters
/// plus N(0, sigma^2) noise in every dimension. A full-rank spread, unlike
/// `Clustered`: graph indexes do not saturate at low ef_search on it.
pub fn isotropic_clusters(
    n: usize,
    dims: usize,
    clusters: usize,
    sigma: f32,
    seed: u64,
) -> Vec<Vec<f32>> {
    let mut centre_rng = LevelRng::new(0x6973_6f74);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| {
            (0..dims)
                .map(|_| centre_rng.next_unit() as f32 * 2.0 - 1.0)
                .collect()
        })
        .collect();
    let mut rng = LevelRng::new(seed);
    let mut gaussian = move || {
        // Box-Muller; next_unit is in (0, 1], so the logarithm is finite.
        let (u, v) = (rng.next_unit(), rng.next_unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    };
    (0..n)
        .map(|i| {
            centres[i % clusters]
                .iter()
                .map(|c| c + sigma * gaussian())
                .collect()
        })
        .collect()
}
