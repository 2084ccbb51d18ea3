//! Casts: `real[]` and `double precision[]` to and from `embedding`, and the length
//! coercion to `embedding(n)` that enforces a column's dimension count on insert.

use super::{check_typmod, Embedding, EmbeddingRef};
use crate::error::{raise, OrRaise};
use m3ret_core::vector;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::prelude::*;

/// Length coercion: `x::embedding(3)` and assignment to an `embedding(3)` column.
#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_typmod_cast(e: EmbeddingRef<'_>, typmod: i32, _explicit: bool) -> Embedding {
    check_typmod(e.values().len(), typmod);
    Embedding(e.values().to_vec())
}

#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_from_real_array(array: Vec<Option<f32>>, typmod: i32, _explicit: bool) -> Embedding {
    from_elements(array.into_iter(), typmod)
}

#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_from_double_array(array: Vec<Option<f64>>, typmod: i32, _explicit: bool) -> Embedding {
    from_elements(array.into_iter().map(|v| v.map(|x| x as f32)), typmod)
}

#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_to_real_array(e: EmbeddingRef<'_>, _typmod: i32, _explicit: bool) -> Vec<f32> {
    e.values().to_vec()
}

fn from_elements(elements: impl ExactSizeIterator<Item = Option<f32>>, typmod: i32) -> Embedding {
    vector::check_dims(elements.len()).or_raise();
    let values: Vec<f32> = elements
        .map(|v| {
            v.unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                    "array must not contain nulls",
                )
            })
        })
        .collect();
    vector::check_finite(&values).or_raise();
    check_typmod(values.len(), typmod);
    Embedding(values)
}
