//! m3ret-core: everything m3ret knows about medical images, the M3Ret model and
//! embedding vectors, with no knowledge of PostgreSQL.
//!
//! The extension (`m3ret`) and the trainer (`m3ret-train`) are two front ends over
//! this crate; they never depend on each other.

pub mod io;
pub mod modality;
pub mod model;
pub mod precision;
pub mod preprocess;
pub mod runtime;
pub mod study;
pub mod torch_ext;

// Vectors and the graph index live in their own crate, which links no libtorch;
// they stay reachable here under the paths they always had.
pub use m3ret_index::{hnsw, rng, vector};

/// The text of a panic payload (`panic!` with a message gives a String or a &str).
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
}
