//! bf16 on the CPU's matrix unit against f32 (issue 29): the two attention forms
//! agree, and the shipped model embeds every modality's studies in bf16 as in f32.
//! Where the CPU has no bf16 unit the comparisons are skipped, saying so.

mod common;

use m3ret_core::modality::ModalityChoice;
use m3ret_core::model::vit::explicit_attention;
use m3ret_core::model::Embedder;
use m3ret_core::precision::{bf16_unit, Precision};
use m3ret_core::study::{self, StudyOptions};
use m3ret_core::torch_ext::CpuBf16;
use tch::{Device, Kind, Tensor};

fn skipped(test: &str) -> bool {
    if bf16_unit().is_none() {
        eprintln!("{test}: skipped: this CPU has no bf16 unit (no amx_bf16 or avx512_bf16 flag in /proc/cpuinfo)");
        return true;
    }
    false
}

#[test]
fn explicit_attention_agrees_with_the_fused_form() {
    tch::manual_seed(3);
    let shape = [2, 3, 65, 64];
    let (q, k, v) = (
        Tensor::randn(shape, (Kind::Float, Device::Cpu)),
        Tensor::randn(shape, (Kind::Float, Device::Cpu)),
        Tensor::randn(shape, (Kind::Float, Device::Cpu)),
    );
    let fused = |q: &Tensor, k: &Tensor, v: &Tensor| {
        Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, false, None, false)
    };
    let diff = |a: &Tensor, b: &Tensor| {
        (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[])
    };
    assert!(diff(&explicit_attention(&q, &k, &v), &fused(&q, &k, &v)) < 1e-5);
    if skipped("explicit_attention_agrees_with_the_fused_form (bf16)") {
        return;
    }
    let _bf16 = CpuBf16::enter();
    let (qb, kb, vb) = (
        q.to_kind(Kind::BFloat16),
        k.to_kind(Kind::BFloat16),
        v.to_kind(Kind::BFloat16),
    );
    let (e, f) = (explicit_attention(&qb, &kb, &vb), fused(&qb, &kb, &vb));
    assert!(diff(&e, &f) < 0.05, "bf16 forms differ by {}", diff(&e, &f));
    assert!(diff(&e, &fused(&q, &k, &v)) < 0.05);
}

/// A study of each committed fixture and up to four of each modality's corpus
/// studies (the first of every kind in the manifest), with their modality.
fn studies_of_every_modality() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("pmnist_train_0000.png", "xray"),
        ("covidrepo_0637.jpg", "xray"),
        ("wce_img1310.jpg", "endoscopy"),
        (
            "pocus_convex_Cov_recommendations_likebutterfly_mov5.mp4",
            "ultrasound",
        ),
        ("totalseg_example_mr_sm.nii.gz", "mri"),
        ("totalseg_example_ct.nii.gz", "ct"),
    ]
    .iter()
    .map(|(f, m)| (common::fixture(f).display().to_string(), m.to_string()))
    .collect();
    let root = common::shared_data();
    let manifest = std::fs::read_to_string(root.join("manifest.csv")).unwrap();
    let mut taken = std::collections::BTreeMap::<(String, String), usize>::new();
    for line in manifest.lines().skip(1) {
        let f: Vec<&str> = line.splitn(8, ',').collect();
        let n = taken
            .entry((f[1].to_string(), f[6].to_string()))
            .or_default();
        if *n < 4 {
            *n += 1;
            out.push((root.join(f[0]).display().to_string(), f[1].to_string()));
        }
    }
    out
}

/// A study from a file, or from a folder of files (a DICOM series, a video's frames).
fn load(path: &std::path::Path, options: &StudyOptions) -> study::Study {
    if !path.is_dir() {
        return study::load(&std::fs::read(path).unwrap(), options).unwrap();
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let buffers: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let refs: Vec<&[u8]> = buffers.iter().map(Vec::as_slice).collect();
    study::load_many(&refs, options).unwrap()
}

#[test]
fn the_shipped_model_embeds_in_bf16_as_in_f32() {
    if skipped("the_shipped_model_embeds_in_bf16_as_in_f32") {
        return;
    }
    let bytes = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/m3ret-default.safetensors"),
    )
    .unwrap();
    let embedder = Embedder::from_bytes(&bytes, Device::Cpu).unwrap();
    let mut worst = (1.0f32, String::new());
    let studies = studies_of_every_modality();
    for (path, modality) in &studies {
        let options = StudyOptions::for_input(
            ModalityChoice::parse(modality).unwrap(),
            &embedder.config.input,
        );
        let s = load(std::path::Path::new(path), &options);
        let embed = |p: Precision| {
            embedder.set_cpu_precision(p);
            embedder
                .embed_studies(std::slice::from_ref(&s), 1)
                .unwrap()
                .remove(0)
        };
        let (f32, bf16) = (embed(Precision::F32), embed(Precision::Bf16));
        let cos: f32 = f32.iter().zip(&bf16).map(|(a, b)| a * b).sum();
        if cos < worst.0 {
            worst = (cos, path.clone());
        }
    }
    eprintln!(
        "{} studies; lowest cosine {:.5} ({})",
        studies.len(),
        worst.0,
        worst.1
    );
    assert!(worst.0 >= 0.999, "cosine {} for {}", worst.0, worst.1);
}
