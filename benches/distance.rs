//! Distance kernels against plain one-accumulator scalar loops, same data, same run.
//!
//! `cargo bench -p m3ret-benches --bench distance`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use m3ret_core::vector::distance::{self, scalar};
use rand::{Rng, SeedableRng};

fn vectors(dims: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(dims as u64);
    let mut v = || {
        (0..dims)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect::<Vec<_>>()
    };
    (v(), v())
}

fn bench_distances(c: &mut Criterion) {
    for dims in [384, 768] {
        let (a, b) = vectors(dims);
        let mut group = c.benchmark_group(format!("distance/{dims}"));
        group.bench_with_input(BenchmarkId::new("cosine", "m3ret"), &dims, |bench, _| {
            bench.iter(|| distance::cosine_distance(black_box(&a), black_box(&b)))
        });
        group.bench_with_input(BenchmarkId::new("cosine", "scalar"), &dims, |bench, _| {
            bench.iter(|| scalar::cosine_distance(black_box(&a), black_box(&b)))
        });
        group.bench_with_input(BenchmarkId::new("l2", "m3ret"), &dims, |bench, _| {
            bench.iter(|| distance::l2_distance(black_box(&a), black_box(&b)))
        });
        group.bench_with_input(BenchmarkId::new("l2", "scalar"), &dims, |bench, _| {
            bench.iter(|| (scalar::l2_squared(black_box(&a), black_box(&b)) as f64).sqrt())
        });
        group.bench_with_input(
            BenchmarkId::new("inner_product", "m3ret"),
            &dims,
            |bench, _| {
                bench.iter(|| distance::negative_inner_product(black_box(&a), black_box(&b)))
            },
        );
        group.bench_with_input(
            BenchmarkId::new("inner_product", "scalar"),
            &dims,
            |bench, _| bench.iter(|| -(scalar::dot(black_box(&a), black_box(&b)) as f64)),
        );
        group.finish();
    }
}

criterion_group!(benches, bench_distances);
criterion_main!(benches);
