//! m3ret-core: everything m3ret knows about medical images, the M3Ret model and
//! embedding vectors, with no knowledge of PostgreSQL.
//!
//! The extension (`m3ret`) and the trainer (`m3ret-train`) are two front ends over
//! this crate; they never depend on each other.

pub mod model;
pub mod runtime;
pub mod vector;
