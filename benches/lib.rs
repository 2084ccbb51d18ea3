//! m3ret's benchmarks. The criterion benches are the `[[bench]]` targets of this
//! package (`cargo bench -p m3ret-benches`); the SQL benchmark harness lives beside
//! them as it is added.

use m3ret_core::model::file::{self, WeightDtype};
use m3ret_core::model::simdino::Branch;
use m3ret_core::model::{Method, ModelConfig, Preset};
use tch::{nn, Device};

/// The small preset's encoder (ViT-S/16, 88 MB in float32) with random weights
/// (seed 0), for the SQL benchmarks; `image_size` overrides the preset's input size.
pub fn small_preset_model(image_size: Option<i64>) -> Vec<u8> {
    preset_model(Preset::Small, image_size)
}

/// As [`small_preset_model`], for any preset.
pub fn preset_model(preset: Preset, image_size: Option<i64>) -> Vec<u8> {
    tch::manual_seed(0);
    let mut config = ModelConfig::new(Method::Simdino, preset);
    if let Some(size) = image_size {
        config.input.image_size = size;
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = Branch::new(vs.root(), &config.encoder, config.head.as_ref().unwrap());
    let tensors: Vec<(String, tch::Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| n.starts_with("encoder."))
        .collect();
    file::to_bytes(&config, &tensors, WeightDtype::F32).unwrap()
}

/// The median seconds of `f` over `reps` calls, after `warmups` calls not counted.
pub fn median_seconds(warmups: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmups {
        f();
    }
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
