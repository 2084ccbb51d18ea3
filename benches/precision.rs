//! bf16 on the CPU's matrix unit against f32, in one run (issue 29): forward
//! throughput of the tiny and small presets at batch 1 and 32, the forward pass as a
//! fraction of the bf16 matmul peak measured on the model's own matmul shapes, and
//! training steps (SimDINO, MAE) per second. 2D inputs at 128 px (64 patch tokens,
//! as the shipped model). Medians of repeated runs; ratios bf16 / f32.
//!
//! Also m3ret_embed_batch in SQL (a backend, the extension installed) in both.
//!
//! `cargo bench -p m3ret-benches --bench precision`; M3RET_BENCH_THREADS (default
//! "1,2") lists the thread counts, M3RET_BENCH_REPS (default 7) the repetitions,
//! M3RET_BENCH_WHAT (default "forward,train,sql") the parts.

use m3ret_core::model::config::{DecoderConfig, HeadConfig};
use m3ret_core::model::mae::Mae;
use m3ret_core::model::simdino::{simdino_loss, Branch};
use m3ret_core::model::{Embedder, Method, ModelConfig, Preset};
use m3ret_core::precision::{bf16_unit, Precision};
use m3ret_core::torch_ext::autocast;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const SIZE: i64 = 128;
const PRECISIONS: [Precision; 2] = [Precision::F32, Precision::Bf16];

fn reps() -> usize {
    std::env::var("M3RET_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
}

/// Median seconds of `f` over the repetitions, after one warm-up call.
fn median_s(f: impl FnMut()) -> f64 {
    m3ret_benches::median_seconds(1, reps(), f)
}

fn config(method: Method, preset: Preset) -> ModelConfig {
    let mut c = ModelConfig::new(method, preset);
    c.input.image_size = SIZE;
    c
}

/// Matmul FLOPs of one 2D study through the encoder: per block qkv, proj, the MLP,
/// and attention's two products, over N tokens.
fn forward_flops(c: &ModelConfig) -> f64 {
    let (w, depth) = (c.encoder.width as f64, c.encoder.depth as f64);
    let hidden = c.encoder.mlp_hidden() as f64;
    let n = (SIZE / 16) as f64 * (SIZE / 16) as f64 + 1.0;
    let per_block = 2.0 * n * (3.0 * w * w + w * w + 2.0 * w * hidden) + 2.0 * 2.0 * n * n * w;
    depth * per_block
}

/// The best bf16 GFLOP/s of the model's own matmul shapes at `rows` rows.
fn matmul_peak_gflops(c: &ModelConfig, rows: i64) -> f64 {
    let w = c.encoder.width;
    let hidden = c.encoder.mlp_hidden();
    let shapes = [(w, 3 * w), (w, w), (w, hidden), (hidden, w)];
    shapes
        .iter()
        .map(|&(k, n)| {
            let a = Tensor::rand([rows, k], (Kind::BFloat16, Device::Cpu));
            let b = Tensor::rand([k, n], (Kind::BFloat16, Device::Cpu));
            let s = median_s(|| {
                let _ = a.matmul(&b);
            });
            2.0 * (rows * k * n) as f64 / s / 1e9
        })
        .fold(0.0, f64::max)
}

fn bench_forward(preset: Preset, threads: i32) {
    let c = config(Method::Simdino, preset);
    tch::manual_seed(0);
    let embedder = Embedder::random_init(&c, Device::Cpu);
    for batch in [1i64, 32] {
        let input = Tensor::rand([batch, 3, 4, SIZE, SIZE], (Kind::Float, Device::Cpu));
        let rates: Vec<f64> = PRECISIONS
            .iter()
            .map(|&p| {
                embedder.set_cpu_precision(p);
                batch as f64 / median_s(|| drop(embedder.features_batch(&input).unwrap()))
            })
            .collect();
        let peak = matmul_peak_gflops(&c, batch * 65);
        let achieved = forward_flops(&c) * rates[1] / 1e9;
        println!(
            "forward {preset:?} threads {threads} batch {batch:>2}: f32 {:>7.1} img/s, bf16 {:>7.1} img/s, {:.2}x; bf16 {achieved:.0} GFLOP/s of a {peak:.0} GFLOP/s matmul peak ({:.0}%)",
            rates[0],
            rates[1],
            rates[1] / rates[0],
            100.0 * achieved / peak
        );
    }
}

/// Samples per second of a SimDINO step: two global views at 128 px and four local
/// at 64 px through the student, the globals through the teacher, AdamW.
fn simdino_rate(preset: Preset, precision: Precision, batch: i64) -> f64 {
    let c = config(Method::Simdino, preset);
    let head = HeadConfig {
        hidden: 2048,
        out: 256,
        eps: 0.5,
    };
    let (vs, teacher_vs) = (
        nn::VarStore::new(Device::Cpu),
        nn::VarStore::new(Device::Cpu),
    );
    let student = Branch::new(vs.root(), &c.encoder, &head);
    let teacher = Branch::new(teacher_vs.root(), &c.encoder, &head);
    let mut opt = nn::AdamW::default().build(&vs, 1e-4).unwrap();
    let global = Tensor::rand([batch, 3, 4, SIZE, SIZE], (Kind::Float, Device::Cpu));
    let local = Tensor::rand(
        [batch, 3, 4, SIZE / 2, SIZE / 2],
        (Kind::Float, Device::Cpu),
    );
    let s = median_s(|| {
        opt.zero_grad();
        let loss = autocast(Device::Cpu, precision, || {
            let views = [&global, &global, &local, &local, &local, &local];
            let zs: Vec<Tensor> = views.iter().map(|v| student.project(v)).collect();
            let zt: Vec<Tensor> =
                tch::no_grad(|| views[..2].iter().map(|v| teacher.project(v)).collect());
            simdino_loss(&zs, &zt, head.eps, 1.0).loss
        });
        loss.backward();
        opt.step();
    });
    batch as f64 / s
}

/// Samples per second of an MAE step (75% masked, the official decoder), AdamW.
fn mae_rate(preset: Preset, precision: Precision, batch: i64) -> f64 {
    let c = config(Method::Mae, preset);
    let decoder = DecoderConfig {
        width: 512,
        depth: 8,
        heads: 16,
        mask_ratio: 0.75,
        norm_pix_loss: false,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let mae = Mae::new(vs.root(), &c.encoder, &decoder);
    let mut opt = nn::AdamW::default().build(&vs, 1e-4).unwrap();
    let input = Tensor::rand([batch, 3, 4, SIZE, SIZE], (Kind::Float, Device::Cpu));
    let s = median_s(|| {
        opt.zero_grad();
        let loss = autocast(Device::Cpu, precision, || mae.forward(&input).loss);
        loss.backward();
        opt.step();
    });
    batch as f64 / s
}

fn bench_training(preset: Preset, threads: i32) {
    let batch = 32;
    for (name, rate) in [
        ("simdino", simdino_rate as fn(Preset, Precision, i64) -> f64),
        ("mae", mae_rate),
    ] {
        let [f32, bf16] = PRECISIONS.map(|p| rate(preset, p, batch));
        println!(
            "train {name:<7} {preset:?} threads {threads} batch {batch}: f32 {f32:>6.1} samples/s, bf16 {bf16:>6.1} samples/s, {:.2}x",
            bf16 / f32
        );
    }
}

/// m3ret_embed_batch over 64 capsule JPEGs (the fixture, repeated) in a backend,
/// images per second in f32 and bf16 for each preset, batch size and thread count.
fn bench_sql(threads: &[i32]) {
    let cluster = m3ret_e2e::Cluster::start(&[]);
    let db = cluster.database("bench_precision");
    let mut c = db.connect();
    let jpeg = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/wce_img1310.jpg"),
    )
    .unwrap();
    let images = vec![jpeg; 64];
    for preset in [Preset::Tiny, Preset::Small] {
        let name = format!("{preset:?}").to_lowercase();
        c.query_one(
            &format!("SELECT m3ret_model_import('{name}', $1)"),
            &[&m3ret_benches::preset_model(preset, Some(SIZE))],
        )
        .unwrap();
        for &t in threads {
            for batch in [1, 32] {
                let rates: Vec<f64> = ["f32", "bf16"]
                    .iter()
                    .map(|p| {
                        c.batch_execute(&format!(
                            "SET m3ret.inference = backend; SET m3ret.threads = {t}; SET m3ret.batch_size = {batch}; SET m3ret.cpu_precision = {p}"
                        ))
                        .unwrap();
                        let s = median_s(|| {
                            c.query_one(
                                &format!("SELECT count(*) FROM m3ret_embed_batch($1, 'endoscopy', '{name}')"),
                                &[&images],
                            )
                            .unwrap();
                        });
                        images.len() as f64 / s
                    })
                    .collect();
                println!(
                    "sql_embed {preset:?} threads {t} batch {batch:>2}: f32 {:>7.1} img/s, bf16 {:>7.1} img/s, {:.2}x",
                    rates[0],
                    rates[1],
                    rates[1] / rates[0]
                );
            }
        }
    }
    cluster.assert_no_backend_crashed();
}

fn main() {
    let Some(unit) = bf16_unit() else {
        println!("skipped: this CPU has no bf16 unit (amx_bf16 or avx512_bf16)");
        return;
    };
    println!("bf16 unit: {unit}; {} repetitions, medians", reps());
    let threads: Vec<i32> = std::env::var("M3RET_BENCH_THREADS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    let what = std::env::var("M3RET_BENCH_WHAT").unwrap_or_else(|_| "forward,train,sql".into());
    if what.contains("sql") {
        bench_sql(&threads);
    }
    for &t in &threads {
        tch::set_num_threads(t);
        for preset in [Preset::Tiny, Preset::Small] {
            if what.contains("forward") {
                bench_forward(preset, t);
            }
            if what.contains("train") {
                bench_training(preset, t);
            }
        }
    }
}
