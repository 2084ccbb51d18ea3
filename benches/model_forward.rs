//! Forward throughput of the M3Ret encoder (small preset, SimDINO pooling) through
//! tch, for 2D, video and CT inputs. `benches/model_forward.sh` runs this and the
//! PyTorch-eager baseline (python/bench_forward.py) in one go and prints the ratios.
//!
//! M3RET_BENCH_THREADS (default 2) sets libtorch's intra-op threads for both.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use m3ret_core::model::{Embedder, Method, ModelConfig, Preset};
use tch::{Device, Kind, Tensor};

const KINDS: [(&str, i64, i64); 3] = [("2d", 8, 4), ("video", 2, 16), ("ct", 1, 64)];

fn bench_forward(c: &mut Criterion) {
    let threads: i32 = std::env::var("M3RET_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let embedder = Embedder::random_init(
        &ModelConfig::new(Method::Simdino, Preset::Small),
        Device::Cpu,
    );
    let kinds = std::env::var("M3RET_BENCH_KINDS").unwrap_or_else(|_| "2d,video,ct".into());
    let mut group = c.benchmark_group("forward/small");
    group.sample_size(10);
    for (kind, batch, slices) in KINDS
        .into_iter()
        .filter(|(k, _, _)| kinds.split(',').any(|x| x == *k))
    {
        let input = Tensor::rand([batch, 3, slices, 256, 256], (Kind::Float, Device::Cpu));
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(kind, |b| {
            b.iter(|| embedder.features_batch(&input).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_forward);
criterion_main!(benches);
