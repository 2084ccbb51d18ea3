//! The `embedding(dim)` type.
//!
//! On disk (identical to pgvector's `vector`): a varlena of
//! `int32 length | int16 dim | int16 unused (0) | float4 values[dim]`.
//!
//! - `datum.rs`: reading and writing that layout ([`EmbeddingRef`], [`Embedding`]);
//! - `io.rs`: text and binary input/output and the typmod;
//! - `operators.rs`: `<=>`, `<->`, `<#>` and the helper functions;
//! - `casts.rs`: casts to and from `real[]`, `double precision[]` and to `embedding(n)`.

mod casts;
mod datum;
mod io;
mod operators;

pub use datum::{Embedding, EmbeddingRef};

use crate::error::raise;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;

/// Checks the dimension count against the column's typmod (`-1` = unconstrained).
pub fn check_typmod(dims: usize, typmod: i32) {
    if typmod >= 0 && dims != typmod as usize {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!("expected {typmod} dimensions, not {dims}"),
        );
    }
}

/// Checks that two operands have the same number of dimensions.
pub fn check_same_dims(a: &[f32], b: &[f32]) {
    if a.len() != b.len() {
        crate::error::raise_vector_error(m3ret_core::vector::VectorError::DimensionMismatch(
            a.len(),
            b.len(),
        ));
    }
}
