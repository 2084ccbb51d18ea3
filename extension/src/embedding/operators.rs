//! Distance operators and helper functions over `embedding`.

use super::{check_same_dims, Embedding, EmbeddingRef};
use m3ret_core::vector::{self, distance};
use pgrx::prelude::*;

/// `<=>`: 1 - cosine similarity, in [0, 2]; NaN when either side is a zero vector.
#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_cosine_distance(a: EmbeddingRef<'_>, b: EmbeddingRef<'_>) -> f64 {
    check_same_dims(a.values(), b.values());
    distance::cosine_distance(a.values(), b.values())
}

/// `<->`: Euclidean distance.
#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_l2_distance(a: EmbeddingRef<'_>, b: EmbeddingRef<'_>) -> f64 {
    check_same_dims(a.values(), b.values());
    distance::l2_distance(a.values(), b.values())
}

/// `<#>`: the negative inner product (so that smaller is closer, as ORDER BY wants).
#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_negative_inner_product(a: EmbeddingRef<'_>, b: EmbeddingRef<'_>) -> f64 {
    check_same_dims(a.values(), b.values());
    distance::negative_inner_product(a.values(), b.values())
}

#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_inner_product(a: EmbeddingRef<'_>, b: EmbeddingRef<'_>) -> f64 {
    -embedding_negative_inner_product(a, b)
}

#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_dims(a: EmbeddingRef<'_>) -> i32 {
    a.values().len() as i32
}

#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_l2_normalize(a: EmbeddingRef<'_>) -> Embedding {
    Embedding(vector::l2_normalized(a.values()))
}
