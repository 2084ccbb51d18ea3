//! 8-bit scalar quantisation of one vector, for indexes that keep a quarter of the
//! bytes per vector and re-rank their candidates on the full vectors.
//!
//! Each vector has its own range: `value_i ~ low + step * code_i`, `step` =
//! (max - min) / 255. A per-vector range needs no statistics fitted on a sample, so
//! rows inserted after an index was built quantise as well as the first ones. The
//! encoding also stores `error = |x - decoded(x)|`, computed exactly, which turns a
//! distance to the decoded vector into a guaranteed lower bound of the distance to
//! the original (the triangle inequality): what lets PostgreSQL's executor re-rank
//! rows on their real vectors without ever putting them out of order.
//!
//! ```text
//! low (f32) | step (f32) | error (f32) | codes (1 byte per dimension)
//! ```

/// Bytes before the codes.
pub const HEADER_BYTES: usize = 12;
const LANES: usize = 8;

/// Bytes of one encoded vector of `dims` dimensions.
pub fn encoded_len(dims: usize) -> usize {
    HEADER_BYTES + dims
}

/// Encodes `x` into `out` (exactly [`encoded_len`] bytes).
pub fn encode(x: &[f32], out: &mut [u8]) {
    assert_eq!(out.len(), encoded_len(x.len()), "int8 encoding buffer size");
    let low = x.iter().copied().fold(f32::INFINITY, f32::min);
    let high = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (low, step) = if x.is_empty() {
        (0.0, 0.0)
    } else {
        (low, (high - low) / 255.0)
    };
    let codes = &mut out[HEADER_BYTES..];
    let mut error = 0.0f64;
    for (c, &v) in codes.iter_mut().zip(x) {
        let code = if step > 0.0 {
            ((v - low) / step).round().clamp(0.0, 255.0) as u8
        } else {
            0
        };
        *c = code;
        error += (v as f64 - decoded(low, step, code) as f64).powi(2);
    }
    // Rounded up, so that the bound built on it never claims too much.
    let error = (error.sqrt() as f32).next_up();
    out[0..4].copy_from_slice(&low.to_ne_bytes());
    out[4..8].copy_from_slice(&step.to_ne_bytes());
    out[8..12].copy_from_slice(&error.to_ne_bytes());
}

/// One value as every kernel here decodes it (no fused multiply-add, so that each
/// variant decodes to the same float the encoder measured its error against).
#[inline(always)]
fn decoded(low: f32, step: f32, code: u8) -> f32 {
    low + step * code as f32
}

/// An encoded vector, read in place.
#[derive(Clone, Copy, Debug)]
pub struct Int8Vector<'a> {
    pub low: f32,
    pub step: f32,
    /// `|x - decoded|` of the vector it encodes, rounded up.
    pub error: f32,
    pub codes: &'a [u8],
}

impl<'a> Int8Vector<'a> {
    /// Reads an encoding of `dims` dimensions; None if `bytes` has another size.
    pub fn parse(bytes: &'a [u8], dims: usize) -> Option<Self> {
        if bytes.len() != encoded_len(dims) {
            return None;
        }
        let float = |at: usize| f32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        Some(Int8Vector {
            low: float(0),
            step: float(4),
            error: float(8),
            codes: &bytes[HEADER_BYTES..],
        })
    }

    /// The decoded vector.
    pub fn decode(&self) -> Vec<f32> {
        self.codes
            .iter()
            .map(|&c| decoded(self.low, self.step, c))
            .collect()
    }

    /// `q . decoded`.
    pub fn dot(&self, q: &[f32]) -> f32 {
        dispatch!(dot_kernel(q, self))
    }

    /// `|q - decoded|^2`, summed term by term (no cancellation between near vectors).
    pub fn l2_squared(&self, q: &[f32]) -> f32 {
        dispatch!(l2_squared_kernel(q, self))
    }

    /// An upper bound of `|decoded|`, for the rounding margin of inner products.
    pub fn norm_bound(&self) -> f32 {
        let largest = self.low.abs().max(decoded(self.low, self.step, 255).abs());
        largest * (self.codes.len() as f32).sqrt()
    }

    /// Whether the header can be an encoder's: finite, a non-negative step, and an
    /// error no larger than half a step per dimension allows.
    pub fn is_plausible(&self) -> bool {
        let most = 0.5 * self.step * (self.codes.len() as f32).sqrt();
        self.low.is_finite()
            && self.step.is_finite()
            && self.step >= 0.0
            && self.error.is_finite()
            && self.error >= 0.0
            && self.error <= most * 1.001 + f32::MIN_POSITIVE * 2.0
    }
}

macro_rules! dispatch {
    ($kernel:ident($q:expr, $v:expr)) => {{
        let (q, v): (&[f32], &Int8Vector) = ($q, $v);
        assert_eq!(
            q.len(),
            v.codes.len(),
            "query and codes of different lengths"
        );
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports the features the variant was compiled for.
                return unsafe { avx2::$kernel(q, v.low, v.step, v.codes) };
            }
        }
        // SAFETY: the portable variant needs no CPU feature.
        unsafe { portable::$kernel(q, v.low, v.step, v.codes) }
    }};
}
use dispatch;

/// The kernels, written once and instantiated per instruction set below: eight
/// independent partial sums, which the compiler turns into SIMD lanes.
macro_rules! kernels {
    ($($attr:meta)?) => {
        use super::{decoded, LANES};

        $(#[$attr])?
        pub(super) unsafe fn dot_kernel(q: &[f32], low: f32, step: f32, codes: &[u8]) -> f32 {
            let mut acc = [0.0f32; LANES];
            let (cq, cc) = (q.chunks_exact(LANES), codes.chunks_exact(LANES));
            let (rq, rc) = (cq.remainder(), cc.remainder());
            for (x, c) in cq.zip(cc) {
                for l in 0..LANES {
                    acc[l] += x[l] * decoded(low, step, c[l]);
                }
            }
            let mut sum: f32 = acc.iter().sum();
            for (x, c) in rq.iter().zip(rc) {
                sum += x * decoded(low, step, *c);
            }
            sum
        }

        $(#[$attr])?
        pub(super) unsafe fn l2_squared_kernel(q: &[f32], low: f32, step: f32, codes: &[u8]) -> f32 {
            let mut acc = [0.0f32; LANES];
            let (cq, cc) = (q.chunks_exact(LANES), codes.chunks_exact(LANES));
            let (rq, rc) = (cq.remainder(), cc.remainder());
            for (x, c) in cq.zip(cc) {
                for l in 0..LANES {
                    let d = x[l] - decoded(low, step, c[l]);
                    acc[l] += d * d;
                }
            }
            let mut sum: f32 = acc.iter().sum();
            for (x, c) in rq.iter().zip(rc) {
                let d = x - decoded(low, step, *c);
                sum += d * d;
            }
            sum
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    kernels!(target_feature(enable = "avx2"));
}

mod portable {
    kernels!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    fn encoded(x: &[f32]) -> Vec<u8> {
        let mut out = vec![0; encoded_len(x.len())];
        encode(x, &mut out);
        out
    }

    #[test]
    fn stored_error_is_the_exact_distance_to_the_decoded_vector() {
        for n in [1, 7, 8, 9, 384, 1001] {
            let x = random(n, n as u64);
            let bytes = encoded(&x);
            let v = Int8Vector::parse(&bytes, n).unwrap();
            let d = v.decode();
            let exact: f64 = x
                .iter()
                .zip(&d)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(v.error as f64 >= exact, "n={n}: {} < {exact}", v.error);
            assert!((v.error as f64 - exact) <= 1e-6 * exact.max(1e-30), "n={n}");
            // Half a step per dimension at most.
            assert!(v.is_plausible(), "n={n}");
            assert!(x
                .iter()
                .zip(&d)
                .all(|(a, b)| (a - b).abs() <= v.step * 0.5001));
        }
    }

    #[test]
    fn kernels_match_the_decoded_vector_for_every_remainder() {
        for n in [1, 3, 8, 9, 383, 384, 1001] {
            let (x, q) = (random(n, n as u64), random(n, 1000 + n as u64));
            let bytes = encoded(&x);
            let v = Int8Vector::parse(&bytes, n).unwrap();
            let d = v.decode();
            let dot: f64 = q.iter().zip(&d).map(|(a, b)| *a as f64 * *b as f64).sum();
            let l2: f64 = q
                .iter()
                .zip(&d)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum();
            assert!((v.dot(&q) as f64 - dot).abs() < 1e-4, "dot n={n}");
            assert!((v.l2_squared(&q) as f64 - l2).abs() < 1e-3, "l2 n={n}");
            // SAFETY: the portable variant needs no CPU feature.
            let portable = unsafe { portable::l2_squared_kernel(&q, v.low, v.step, v.codes) };
            assert!((portable as f64 - l2).abs() < 1e-3, "portable n={n}");
        }
    }

    #[test]
    fn a_constant_vector_decodes_exactly() {
        let x = vec![0.25f32; 20];
        let bytes = encoded(&x);
        let v = Int8Vector::parse(&bytes, 20).unwrap();
        assert_eq!(v.step, 0.0);
        assert_eq!(v.decode(), x);
        assert_eq!(v.error, 0.0f32.next_up());
    }

    #[test]
    fn parse_refuses_a_wrong_size() {
        assert!(Int8Vector::parse(&[0u8; 20], 9).is_none());
        assert!(Int8Vector::parse(&[0u8; 21], 9).is_some());
    }
}
