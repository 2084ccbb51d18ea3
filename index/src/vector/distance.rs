//! Distance kernels over `f32` slices of equal length.
//!
//! Each kernel keeps eight independent partial sums, so the compiler can turn the
//! loop into SIMD lanes (a plain `sum += a[i] * b[i]` cannot be vectorised, because
//! reordering float additions changes the result). On x86-64 the same code is also
//! compiled for AVX2+FMA and picked at run time.

const LANES: usize = 8;

/// Inner product `a . b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dispatch!(dot_kernel(a, b))
}

/// Squared Euclidean distance `|a - b|^2`.
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    dispatch!(l2_squared_kernel(a, b))
}

/// `(a . b, |a|^2, |b|^2)` in one pass, for the cosine distance.
pub fn dot_and_norms(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
    dispatch!(dot_and_norms_kernel(a, b))
}

// The SQL operators below run the f32 kernels, and again in f64 when an f32 sum
// overflowed or fell below f32's normal range: elements near 3e38 or 1e-30 are
// legal, and their squares are not f32s (`<=>` of [3e38,3e38] with itself was NaN).

/// Whether an f32 sum of products may have lost its value: not finite, or below
/// the normal range (zero included, so an exact zero is confirmed in f64).
fn lost(sum: f32) -> bool {
    !sum.is_finite() || sum.abs() < f32::MIN_POSITIVE
}

/// Euclidean distance `|a - b|` (the `<->` operator).
pub fn l2_distance(a: &[f32], b: &[f32]) -> f64 {
    let d = l2_squared(a, b);
    if lost(d) {
        return wide::l2_squared(a, b).sqrt();
    }
    (d as f64).sqrt()
}

/// Negative inner product `-(a . b)` (the `<#>` operator: smaller is closer).
pub fn negative_inner_product(a: &[f32], b: &[f32]) -> f64 {
    let ab = dot(a, b);
    if lost(ab) {
        return -wide::dot(a, b);
    }
    -(ab as f64)
}

/// Cosine distance `1 - cos(a, b)` clamped to `[0, 2]` (the `<=>` operator).
/// NaN when either vector is zero: a zero vector has no direction.
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    let (ab, aa, bb) = dot_and_norms(a, b);
    let (ab, aa, bb) = if lost(aa) || lost(bb) || !ab.is_finite() {
        (wide::dot(a, b), wide::dot(a, a), wide::dot(b, b))
    } else {
        (ab as f64, aa as f64, bb as f64)
    };
    let denom = (aa * bb).sqrt();
    if denom == 0.0 {
        return f64::NAN;
    }
    let cos = (ab / denom).clamp(-1.0, 1.0);
    1.0 - cos
}

/// The same sums in f64, for the rare vectors whose f32 sums lose their value.
pub mod wide {
    pub fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    pub fn l2_squared(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum()
    }
}

/// Runs a kernel through the fastest variant this CPU supports.
macro_rules! dispatch {
    ($kernel:ident($a:expr, $b:expr)) => {{
        let (a, b) = ($a, $b);
        assert_eq!(
            a.len(),
            b.len(),
            "distance between slices of different lengths"
        );
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports the features the variant was compiled for.
                return unsafe { avx2::$kernel(a, b) };
            }
        }
        portable::$kernel(a, b)
    }};
}
use dispatch;

/// The kernels, written once and instantiated per instruction set below.
macro_rules! kernels {
    ($($attr:meta)?) => {
        $(#[$attr])?
        pub(super) unsafe fn dot_kernel(a: &[f32], b: &[f32]) -> f32 {
            let mut acc = [0.0f32; super::LANES];
            let (ca, cb) = (a.chunks_exact(super::LANES), b.chunks_exact(super::LANES));
            let (ra, rb) = (ca.remainder(), cb.remainder());
            for (x, y) in ca.zip(cb) {
                for l in 0..super::LANES {
                    acc[l] = x[l].mul_add(y[l], acc[l]);
                }
            }
            let mut sum: f32 = acc.iter().sum();
            for (x, y) in ra.iter().zip(rb) {
                sum = x.mul_add(*y, sum);
            }
            sum
        }

        $(#[$attr])?
        pub(super) unsafe fn l2_squared_kernel(a: &[f32], b: &[f32]) -> f32 {
            let mut acc = [0.0f32; super::LANES];
            let (ca, cb) = (a.chunks_exact(super::LANES), b.chunks_exact(super::LANES));
            let (ra, rb) = (ca.remainder(), cb.remainder());
            for (x, y) in ca.zip(cb) {
                for l in 0..super::LANES {
                    let d = x[l] - y[l];
                    acc[l] = d.mul_add(d, acc[l]);
                }
            }
            let mut sum: f32 = acc.iter().sum();
            for (x, y) in ra.iter().zip(rb) {
                let d = x - y;
                sum = d.mul_add(d, sum);
            }
            sum
        }

    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    kernels!(target_feature(enable = "avx2,fma"));

    /// Written with intrinsics: LLVM does not vectorise three reductions in one loop.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_and_norms_kernel(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
        let n = a.len() / super::LANES * super::LANES;
        let (mut ab, mut aa, mut bb) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len of both slices.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                )
            };
            ab = _mm256_fmadd_ps(x, y, ab);
            aa = _mm256_fmadd_ps(x, x, aa);
            bb = _mm256_fmadd_ps(y, y, bb);
            i += super::LANES;
        }
        let (mut sab, mut saa, mut sbb) =
            (horizontal_sum(ab), horizontal_sum(aa), horizontal_sum(bb));
        for (x, y) in a[n..].iter().zip(&b[n..]) {
            sab = x.mul_add(*y, sab);
            saa = x.mul_add(*x, saa);
            sbb = y.mul_add(*y, sbb);
        }
        (sab, saa, sbb)
    }

    #[target_feature(enable = "avx2,fma")]
    fn horizontal_sum(v: __m256) -> f32 {
        let mut lanes = [0.0f32; super::LANES];
        // SAFETY: lanes has room for 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().sum()
    }
}

mod portable {
    // `mul_add` without hardware FMA is a slow libm call, so the portable variant
    // uses plain multiply-add; the macro is instantiated with a shim for that.
    pub(super) fn dot_kernel(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; super::LANES];
        let (ca, cb) = (a.chunks_exact(super::LANES), b.chunks_exact(super::LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..super::LANES {
                acc[l] += x[l] * y[l];
            }
        }
        acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
    }

    pub(super) fn l2_squared_kernel(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; super::LANES];
        let (ca, cb) = (a.chunks_exact(super::LANES), b.chunks_exact(super::LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..super::LANES {
                let d = x[l] - y[l];
                acc[l] += d * d;
            }
        }
        acc.iter().sum::<f32>()
            + ra.iter()
                .zip(rb)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
    }

    pub(super) fn dot_and_norms_kernel(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
        (dot_kernel(a, b), dot_kernel(a, a), dot_kernel(b, b))
    }
}

/// Plain one-accumulator loops: the baseline the benchmark compares against, and
/// an independent reference for the tests.
pub mod scalar {
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut s = 0.0f32;
        for i in 0..a.len() {
            s += a[i] * b[i];
        }
        s
    }

    pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
        let mut s = 0.0f32;
        for i in 0..a.len() {
            let d = a[i] - b[i];
            s += d * d;
        }
        s
    }

    pub fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
        let (ab, aa, bb) = (dot(a, b), dot(a, a), dot(b, b));
        1.0 - (ab as f64 / (aa as f64 * bb as f64).sqrt()).clamp(-1.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_pair(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let a = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let b = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        (a, b)
    }

    /// Sums in f64, independent of the kernels' f32 lanes.
    fn exact(a: &[f32], b: &[f32]) -> (f64, f64, f64, f64) {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let aa: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
        let bb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum();
        let l2: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum();
        (dot, aa, bb, l2)
    }

    #[test]
    fn kernels_match_f64_reference_for_every_remainder() {
        for n in [1, 3, 7, 8, 9, 16, 383, 384, 768, 1001] {
            let (a, b) = random_pair(n, n as u64);
            let (d, aa, bb, l2) = exact(&a, &b);
            assert!((dot(&a, &b) as f64 - d).abs() < 1e-4, "dot n={n}");
            assert!((l2_squared(&a, &b) as f64 - l2).abs() < 1e-3, "l2 n={n}");
            assert!(
                (l2_distance(&a, &b) - l2.sqrt()).abs() < 1e-4,
                "l2 dist n={n}"
            );
            assert!(
                (negative_inner_product(&a, &b) + d).abs() < 1e-4,
                "ip n={n}"
            );
            let cos = 1.0 - d / (aa * bb).sqrt();
            assert!((cosine_distance(&a, &b) - cos).abs() < 1e-5, "cos n={n}");
            assert!((portable::dot_kernel(&a, &b) as f64 - d).abs() < 1e-4);
        }
    }

    /// Issue 28: legal elements whose squares are not f32s.
    #[test]
    fn huge_and_tiny_elements_give_the_f64_distances() {
        let huge = [3e38f32, 3e38];
        assert_eq!(super::cosine_distance(&huge, &huge), 0.0);
        assert!(super::l2_distance(&huge, &[-3e38, -3e38]).is_finite());
        assert!((super::l2_distance(&huge, &[-3e38, -3e38]) - 6e38 * 2f64.sqrt()).abs() < 1e33);
        let ip = super::negative_inner_product(&huge, &huge);
        assert!((ip / -(2.0 * 9e76) - 1.0).abs() < 1e-6, "{ip}");
        let tiny = [1e-30f32, 1e-30];
        assert!(super::cosine_distance(&tiny, &tiny).abs() < 1e-12);
        assert!((super::cosine_distance(&tiny, &[-1e-30, -1e-30]) - 2.0).abs() < 1e-12);
        let d = super::l2_distance(&tiny, &[0.0, 0.0]);
        assert!((d - 1e-30 * 2f64.sqrt()).abs() < 1e-36, "{d}");
        assert!(
            super::cosine_distance(&tiny, &[0.0, 0.0]).is_nan(),
            "zero still has no direction"
        );
    }

    #[test]
    fn cosine_is_clamped_and_nan_for_zero() {
        let a = [1.0, 2.0, 3.0];
        let same = cosine_distance(&a, &a);
        assert!((0.0..1e-7).contains(&same), "{same}");
        let neg = [-1.0, -2.0, -3.0];
        assert!(cosine_distance(&a, &neg) <= 2.0);
        assert!((cosine_distance(&a, &neg) - 2.0).abs() < 1e-6);
        assert!(cosine_distance(&a, &[0.0, 0.0, 0.0]).is_nan());
    }
}
