//! The model on the CPU with small configurations and fixed seeds: token counts,
//! masking, the losses against independent computations, EMA, model files.

mod common;

use m3ret_core::model::config::{DecoderConfig, EncoderConfig, HeadConfig};
use m3ret_core::model::file::{self, ModelFile, WeightDtype};
use m3ret_core::model::mae::{self, Mae};
use m3ret_core::model::simdino::{self, Branch};
use m3ret_core::model::vit::Encoder;
use m3ret_core::model::{Embedder, Method, ModelConfig, ModelError, Preset};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// A small model of `method` over 64 x 64 inputs (tests must run in seconds on a CPU).
fn small_config(method: Method) -> ModelConfig {
    let mut c = ModelConfig::new(method, Preset::Tiny);
    c.encoder = EncoderConfig {
        width: 96,
        depth: 2,
        heads: 3,
        mlp_ratio: 4.0,
        patch: [4, 16, 16],
        cls_token: method == Method::Simdino,
    };
    c.input.image_size = 64;
    if let Some(d) = c.decoder.as_mut() {
        *d = DecoderConfig {
            width: 96,
            depth: 1,
            heads: 3,
            mask_ratio: 0.75,
            norm_pix_loss: false,
        };
    }
    if let Some(h) = c.head.as_mut() {
        *h = HeadConfig {
            hidden: 128,
            out: 32,
            eps: 0.5,
        };
    }
    c.validate().unwrap();
    c
}

/// Real chest X-rays from the shared corpus as canonical 2D tensors `[3, 4, 64, 64]`.
fn real_xrays(n: usize) -> Vec<Tensor> {
    let files = common::corpus_files("xray/chest_covid19", n);
    files.iter().map(|f| grey_tensor(f, 64)).collect()
}

fn grey_tensor(path: &std::path::Path, size: u32) -> Tensor {
    let img = image::open(path).unwrap().to_luma8();
    let img = image::imageops::resize(&img, size, size, image::imageops::FilterType::Triangle);
    let data: Vec<f32> = img
        .into_raw()
        .into_iter()
        .map(|v| v as f32 / 255.0)
        .collect();
    let t = Tensor::from_slice(&data).view([1, 1, size as i64, size as i64]);
    t.expand([3, 4, size as i64, size as i64], false)
        .contiguous()
}

#[test]
fn token_counts_per_modality() {
    let vs = nn::VarStore::new(Device::Cpu);
    let encoder = Encoder::new(
        vs.root(),
        &ModelConfig::new(Method::Mae, Preset::Tiny).encoder,
    );
    for (slices, expected) in [(4, 256), (16, 1024), (64, 4096)] {
        let input = Tensor::zeros([1, 3, slices, 256, 256], (Kind::Float, Device::Cpu));
        let tokens = tch::no_grad(|| encoder.tokens(&input));
        assert_eq!(tokens.size(), vec![1, expected, 192], "S = {slices}");
    }
}

#[test]
fn masking_keeps_exactly_a_quarter_per_sample() {
    tch::manual_seed(1);
    let m = mae::random_masking(8, 256, 0.75, Device::Cpu);
    assert_eq!(m.ids_keep.size(), vec![8, 64]);
    let masked_per_sample: Vec<f32> =
        Vec::try_from(m.mask.sum_dim_intlist(1, false, Kind::Float)).unwrap();
    assert_eq!(masked_per_sample, vec![192.0; 8]);
    // The kept ids are exactly the unmasked positions.
    let visible = m.mask.gather(1, &m.ids_keep, false);
    assert_eq!(visible.sum(Kind::Float).double_value(&[]), 0.0);
    // Different samples get different masks.
    assert!(
        m.mask
            .get(0)
            .not_equal_tensor(&m.mask.get(1))
            .any()
            .int64_value(&[])
            == 1
    );
}

#[test]
fn mae_overfits_one_batch_of_real_images() {
    let images = real_xrays(8);
    tch::manual_seed(0);
    let config = small_config(Method::Mae);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Mae::new(vs.root(), &config.encoder, config.decoder.as_ref().unwrap());
    let batch = Tensor::stack(&images, 0);
    let mut opt = nn::AdamW {
        beta1: 0.9,
        beta2: 0.95,
        wd: 0.05,
        ..Default::default()
    }
    .build(&vs, 1e-3)
    .unwrap();
    let mut losses = Vec::new();
    for _ in 0..40 {
        let loss = model.forward(&batch).loss;
        opt.backward_step(&loss);
        losses.push(loss.double_value(&[]));
    }
    let first = losses[..3].iter().sum::<f64>() / 3.0;
    let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    eprintln!("MAE loss {first:.4} -> {last:.4}");
    assert!(
        last < first * 0.5,
        "MAE loss went from {first:.4} to {last:.4}: {losses:?}"
    );
}

#[test]
fn coding_rate_matches_eigenvalues() {
    tch::manual_seed(3);
    let z = simdino::l2_normalize(&Tensor::randn([16, 32], (Kind::Float, Device::Cpu)));
    let eps = 0.5;
    let rate = simdino::coding_rate(&z, eps).double_value(&[]);
    // 1/2 logdet(I + a Z^T Z) = 1/2 sum log(1 + a lambda_i), lambda the eigenvalues of Z^T Z,
    // computed in f64 by a symmetric eigensolver, not through Cholesky.
    let a = 32.0 / (16.0 * eps * eps);
    let gram = z
        .to_kind(Kind::Double)
        .transpose(0, 1)
        .matmul(&z.to_kind(Kind::Double));
    let eig: Vec<f64> = Vec::try_from(gram.linalg_eigvalsh("L")).unwrap();
    let expected: f64 = eig.iter().map(|l| (1.0 + a * l.max(0.0)).ln()).sum::<f64>() * 0.5;
    assert!(
        (rate - expected).abs() < 1e-3 * expected.abs(),
        "{rate} vs {expected}"
    );
}

#[test]
fn simdino_loss_aligns_views_and_trains() {
    tch::manual_seed(5);
    let config = small_config(Method::Simdino);
    let head = config.head.clone().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let student = Branch::new(vs.root(), &config.encoder, &head);
    let globals = [
        Tensor::rand([4, 3, 4, 64, 64], (Kind::Float, Device::Cpu)),
        Tensor::rand([4, 3, 4, 64, 64], (Kind::Float, Device::Cpu)),
    ];
    let local = Tensor::rand([4, 3, 4, 32, 32], (Kind::Float, Device::Cpu));
    let zs: Vec<Tensor> = globals
        .iter()
        .chain([&local])
        .map(|v| student.project(v))
        .collect();
    let zt: Vec<Tensor> = tch::no_grad(|| globals.iter().map(|v| student.project(v)).collect());
    assert_eq!(
        zs[2].size(),
        vec![4, 32],
        "local views of another size share the encoder"
    );
    let out = simdino::simdino_loss(&zs, &zt, head.eps, 1.0);
    // Alignment by hand: pairs (t0,s1), (t0,s2), (t1,s0), (t1,s2).
    let half_sq = |a: &Tensor, b: &Tensor| {
        ((a - b)
            .square()
            .sum_dim_intlist(-1, false, Kind::Float)
            .mean(Kind::Float)
            * 0.5)
            .double_value(&[])
    };
    let expected = (half_sq(&zs[1], &zt[0])
        + half_sq(&zs[2], &zt[0])
        + half_sq(&zs[0], &zt[1])
        + half_sq(&zs[2], &zt[1]))
        / 4.0;
    assert!((out.alignment.double_value(&[]) - expected).abs() < 1e-6);
    // Its parts: the global-global pairs, and the local-global ones.
    let global = (half_sq(&zs[1], &zt[0]) + half_sq(&zs[0], &zt[1])) / 2.0;
    let local = (half_sq(&zs[2], &zt[0]) + half_sq(&zs[2], &zt[1])) / 2.0;
    assert!((out.alignment_global - global).abs() < 1e-6);
    assert!((out.alignment_local - local).abs() < 1e-6);
    let gamma = (32.0 + 4.0) / (32.0 * 4.0);
    let rate = (simdino::coding_rate(&zs[0], 0.5).double_value(&[])
        + simdino::coding_rate(&zs[1], 0.5).double_value(&[]))
        / 2.0;
    assert!((out.loss.double_value(&[]) - (expected - gamma * rate)).abs() < 1e-5);
    out.loss.backward(); // gradients flow through both terms
}

#[test]
fn ema_update_and_momentum_schedule() {
    let teacher = nn::VarStore::new(Device::Cpu);
    let student = nn::VarStore::new(Device::Cpu);
    let t = teacher.root().var("w", &[3], nn::Init::Const(1.0));
    let _s = student.root().var("w", &[3], nn::Init::Const(3.0));
    simdino::ema_update(&teacher, &student, 0.9);
    let got: Vec<f32> = Vec::try_from(&t).unwrap();
    assert_eq!(got, vec![0.9 * 1.0 + 0.1 * 3.0; 3]);
    assert!((simdino::teacher_momentum(0, 100, 0.996, 1.0) - 0.996).abs() < 1e-12);
    assert!((simdino::teacher_momentum(50, 100, 0.996, 1.0) - 0.998).abs() < 1e-12);
    assert!((simdino::teacher_momentum(100, 100, 0.996, 1.0) - 1.0).abs() < 1e-12);
}

/// A trained-looking SimDINO student saved as a model file (encoder + head).
/// A random SimDINO model written in each of `dtypes`. One set of weights for all:
/// the seed is global to the process and other tests draw from it concurrently.
fn simdino_files(dtypes: &[WeightDtype]) -> (ModelConfig, Vec<Vec<u8>>) {
    tch::manual_seed(9);
    let config = small_config(Method::Simdino);
    let vs = nn::VarStore::new(Device::Cpu);
    let _branch = Branch::new(vs.root(), &config.encoder, config.head.as_ref().unwrap());
    let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    let files = dtypes
        .iter()
        .map(|&d| file::to_bytes(&config, &tensors, d).unwrap())
        .collect();
    (config, files)
}

#[test]
fn saved_and_loaded_model_gives_identical_embeddings() {
    let images = real_xrays(4);
    let (config, files) = simdino_files(&[WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16]);
    let bytes = &files[0];
    let file = ModelFile::from_bytes(bytes).unwrap();
    assert_eq!(file.config, config);
    let a = Embedder::from_file(&file, Device::Cpu).unwrap();
    let b = Embedder::from_bytes(bytes, Device::Cpu).unwrap();
    let ea = a.features(&images, 2).unwrap();
    let eb = b.features(&images, 4).unwrap();
    assert_eq!(ea, eb, "same file, same input: bit-identical embeddings");
    assert_eq!(
        ea,
        a.features(&images, 2).unwrap(),
        "deterministic across calls"
    );
    assert_eq!(ea[0].len(), 192, "cls+avg pooling: twice the width");
    let norm: f32 = ea[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    assert_ne!(ea[0], ea[1], "different images, different embeddings");
    // Half precision files load too, with embeddings close to the f32 ones.
    for (dtype, half) in [WeightDtype::F16, WeightDtype::Bf16]
        .iter()
        .zip(&files[1..])
    {
        assert!(half.len() < bytes.len() * 6 / 10);
        let eh = Embedder::from_bytes(half, Device::Cpu)
            .unwrap()
            .features(&images, 4)
            .unwrap();
        let cos: f32 = ea[0].iter().zip(&eh[0]).map(|(x, y)| x * y).sum();
        assert!(cos > 0.99, "{dtype:?}: cosine {cos}");
    }
}

#[test]
fn mae_file_with_decoder_loads_encoder_only() {
    tch::manual_seed(4);
    let config = small_config(Method::Mae);
    let vs = nn::VarStore::new(Device::Cpu);
    let mae = Mae::new(vs.root(), &config.encoder, config.decoder.as_ref().unwrap());
    let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    assert!(tensors.iter().any(|(n, _)| n.starts_with("decoder.")));
    let bytes = file::to_bytes(&config, &tensors, WeightDtype::F32).unwrap();
    let embedder = Embedder::from_bytes(&bytes, Device::Cpu).unwrap();
    let input = Tensor::rand([2, 3, 4, 64, 64], (Kind::Float, Device::Cpu));
    let got = embedder.features_batch(&input).unwrap();
    assert_eq!(
        got.size(),
        vec![2, 96],
        "MAE: mean of patch tokens, encoder width"
    );
    // The same as the training model's encoder, pooled and normalised by hand.
    let expected = tch::no_grad(|| {
        simdino::l2_normalize(
            &mae.encoder
                .forward(&input)
                .patches
                .mean_dim(1, false, Kind::Float),
        )
    });
    assert!(got.allclose(&expected, 1e-5, 1e-6, false));
}

#[test]
fn mismatched_and_foreign_files_are_refused() {
    let (mut config, _) = simdino_files(&[WeightDtype::F32]);
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = Branch::new(vs.root(), &config.encoder, config.head.as_ref().unwrap());
    let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    // The config claims a wider MLP than the weights have.
    config.encoder.mlp_ratio = 2.0;
    let bytes = file::to_bytes(&config, &tensors, WeightDtype::F32).unwrap();
    match Embedder::from_bytes(&bytes, Device::Cpu) {
        Err(ModelError::ShapeMismatch {
            name,
            expected,
            found,
        }) => {
            assert!(
                name.starts_with("encoder.blocks.") && name.contains("mlp.fc"),
                "{name}"
            );
            assert_ne!(expected, found);
        }
        other => panic!("expected a shape mismatch, got {:?}", other.err()),
    }
    // A config with one block fewer than the file: an unexpected tensor.
    config.encoder.mlp_ratio = 4.0;
    config.encoder.depth = 1;
    let bytes = file::to_bytes(&config, &tensors, WeightDtype::F32).unwrap();
    let err = Embedder::from_bytes(&bytes, Device::Cpu).err().unwrap();
    assert!(
        matches!(err, ModelError::UnexpectedTensor(ref n) if n.starts_with("encoder.blocks.1.")),
        "{err}"
    );
    // Safetensors without our metadata, and bytes that are not safetensors at all.
    let plain = safetensors::tensor::serialize(
        Vec::<(String, safetensors::tensor::TensorView)>::new(),
        &None,
    )
    .unwrap();
    assert!(Embedder::from_bytes(&plain, Device::Cpu)
        .err()
        .unwrap()
        .to_string()
        .starts_with("not an m3ret model file"));
    assert!(Embedder::from_bytes(b"garbage", Device::Cpu)
        .err()
        .unwrap()
        .to_string()
        .starts_with("not a safetensors file"));
    // Inputs of the wrong shape are an error, not a crash.
    let e = Embedder::random_init(&small_config(Method::Mae), Device::Cpu);
    let err = e
        .features_batch(&Tensor::zeros(
            [1, 3, 5, 64, 64],
            (Kind::Float, Device::Cpu),
        ))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("multiples of the patch size"),
        "{err}"
    );
}

/// Issue 28, finding 4: a model file's config is held to m3ret's limits, and one that
/// declares more than the file holds is refused before the encoder is built.
#[test]
fn oversized_or_inconsistent_configs_are_refused_before_allocating() {
    let (config, _) = simdino_files(&[WeightDtype::F32]);
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = Branch::new(vs.root(), &config.encoder, config.head.as_ref().unwrap());
    let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    // The count of parameters known before building is exact.
    let encoder_vs = nn::VarStore::new(Device::Cpu);
    let _ = Encoder::new(encoder_vs.root(), &config.encoder);
    let built: i64 = encoder_vs
        .variables()
        .values()
        .map(|t| t.numel() as i64)
        .sum();
    assert_eq!(config.encoder.parameter_count(), built);
    let refused = |c: &ModelConfig, tensors: &[(String, Tensor)]| -> String {
        match file::to_bytes(c, tensors, WeightDtype::F32) {
            Ok(bytes) => Embedder::from_bytes(&bytes, Device::Cpu)
                .err()
                .expect("refused")
                .to_string(),
            Err(e) => e.to_string(),
        }
    };
    let mut huge = config.clone();
    huge.input.image_size = 65536;
    let err = refused(&huge, &tensors);
    assert!(
        err.contains("image size 65536 is over m3ret's limit of 512"),
        "{err}"
    );
    let mut many = config.clone();
    many.input.slices_volume = 256;
    many.input.image_size = 256;
    let err = refused(&many, &tensors);
    assert!(
        err.contains("tokens of a study (volume slices) 16384 is over m3ret's limit of 8192"),
        "{err}"
    );
    for (what, change) in [
        (
            "depth 13",
            (|c: &mut ModelConfig| c.encoder.depth = 13) as fn(&mut ModelConfig),
        ),
        ("width 384", |c: &mut ModelConfig| {
            c.encoder.width = 384;
            c.encoder.heads = 6
        }),
    ] {
        let mut c = config.clone();
        change(&mut c);
        let err = refused(&c, &tensors);
        assert!(
            err.contains("the config describes an encoder of") && err.contains("hold only"),
            "{what}: {err}"
        );
    }
    // A weight reshaped to 1-D: as many parameters, the wrong shape.
    let flat: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            let t = if n == "encoder.blocks.0.attn.qkv.weight" {
                t.flatten(0, -1)
            } else {
                t.shallow_clone()
            };
            (n.clone(), t)
        })
        .collect();
    let err = refused(&config, &flat);
    assert!(
        err.contains("tensor \"encoder.blocks.0.attn.qkv.weight\" has shape"),
        "{err}"
    );
}

#[test]
fn clear_grad_drops_the_gradient_so_backward_does_not_accumulate() {
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().var("w", &[3], nn::Init::Const(2.0));
    (&w * &w).sum(Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(w.grad()).unwrap(), vec![4.0; 3]);
    m3ret_core::torch_ext::clear_grad(&w);
    assert!(!w.grad().defined());
    (&w * &w).sum(Kind::Float).backward();
    assert_eq!(
        Vec::<f32>::try_from(w.grad()).unwrap(),
        vec![4.0; 3],
        "fresh, not 8 = 4 + 4"
    );
}
