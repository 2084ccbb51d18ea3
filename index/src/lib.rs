//! m3ret-index: embedding vectors and the HNSW graph algorithms, with no knowledge
//! of models or PostgreSQL and without libtorch, so that the index's own tests and
//! benchmarks build in seconds.
//!
//! `m3ret-core` re-exports every module (`m3ret_core::hnsw` is this crate's `hnsw`);
//! the extension stores the graph in PostgreSQL pages over [`hnsw::Graph`].

pub mod hnsw;
pub mod rng;
pub mod vector;
