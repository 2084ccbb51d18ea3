//! Embedding vectors: limits, distances and the `[1,2.5,-3]` text form.
//!
//! The extension's `embedding` type and its index both compute distances here, so
//! the SQL operators, the index and the trainer's evaluation agree to the bit.

pub mod distance;
pub mod int8;
pub mod prefetch;
pub mod synthetic;
pub mod text;

/// Most dimensions an embedding may have (pgvector's `vector` has the same cap).
pub const MAX_DIMS: usize = 16_000;

/// Checks a dimension count against the limits before anything is allocated.
pub fn check_dims(dims: usize) -> Result<(), VectorError> {
    if dims == 0 {
        Err(VectorError::Empty)
    } else if dims > MAX_DIMS {
        Err(VectorError::TooManyDims(dims))
    } else {
        Ok(())
    }
}

/// Checks that every value is finite (NaN and infinity have no place in a distance).
pub fn check_finite(values: &[f32]) -> Result<(), VectorError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(VectorError::NotFinite {
            index: i + 1,
            value: values[i].to_string(),
        }),
    }
}

/// Returns `v / |v|`; a zero vector stays zero (it has no direction to keep). The
/// norm is taken in f64 when the f32 sum of squares overflows or underflows (of
/// [3e38, 3e38], say), so every nonzero vector comes out of unit length.
pub fn l2_normalized(v: &[f32]) -> Vec<f32> {
    let squares = distance::dot(v, v);
    let norm = if squares.is_finite() && squares >= f32::MIN_POSITIVE {
        squares.sqrt() as f64
    } else {
        distance::wide::dot(v, v).sqrt()
    };
    if norm > 0.0 {
        v.iter().map(|x| (*x as f64 / norm) as f32).collect()
    } else {
        v.to_vec()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VectorError {
    #[error("embedding must have at least 1 dimension")]
    Empty,
    #[error("embedding cannot have more than {MAX_DIMS} dimensions (got {0})")]
    TooManyDims(usize),
    #[error("embedding element {index} is not finite ({value}): NaN and infinity are not allowed")]
    NotFinite { index: usize, value: String },
    #[error("malformed embedding literal \"{literal}\": {reason}")]
    Malformed { literal: String, reason: String },
    #[error("different embedding dimensions {0} and {1}")]
    DimensionMismatch(usize, usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_huge_and_tiny_vectors_to_unit_length() {
        for v in [[3e38f32, 3e38], [1e-30, 1e-30], [1e-44, 0.0]] {
            let n = l2_normalized(&v);
            let len: f64 = n.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            assert!((len - 1.0).abs() < 1e-6, "{v:?} -> {n:?}");
        }
    }

    #[test]
    fn normalizes_to_unit_length() {
        let n = l2_normalized(&[3.0, 4.0]);
        assert_eq!(n, vec![0.6, 0.8]);
        assert_eq!(l2_normalized(&[0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn dimension_limits() {
        assert_eq!(check_dims(0), Err(VectorError::Empty));
        assert!(check_dims(MAX_DIMS).is_ok());
        assert_eq!(
            check_dims(MAX_DIMS + 1),
            Err(VectorError::TooManyDims(MAX_DIMS + 1))
        );
    }

    #[test]
    fn rejects_non_finite() {
        assert!(check_finite(&[1.0, 2.0]).is_ok());
        let err = check_finite(&[1.0, f32::NAN]).unwrap_err();
        assert!(err.to_string().contains("element 2 is not finite"), "{err}");
    }
}
