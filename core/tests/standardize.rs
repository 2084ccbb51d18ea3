//! Embedding standardisation: fitted statistics against an independent computation,
//! their round trip through a model file, and what the embedder does with them.

use m3ret_core::io::Format;
use m3ret_core::modality::Modality;
use m3ret_core::model::config::{EncoderConfig, HeadConfig, FORMAT_VERSION};
use m3ret_core::model::file::{self, WeightDtype};
use m3ret_core::model::simdino::Branch;
use m3ret_core::model::{
    Embedder, Method, ModelConfig, ModelError, Preset, Scope, StandardizeConfig, Standardizer,
};
use m3ret_core::preprocess::Layout;
use m3ret_core::study::{Detected, Study};
use tch::{nn, Device, Kind, Tensor};

fn config(whiten: Option<i64>, whitening: Scope) -> StandardizeConfig {
    StandardizeConfig {
        centering: Scope::Modality,
        whiten,
        whitening,
        shrinkage: 0.0,
        fitted_on: serde_json::Value::Null,
    }
}

/// Anisotropic features: a common offset per modality plus noise whose variance
/// falls off along the axes (as a trained encoder's features do).
fn features(
    modality: Modality,
    offset: f32,
    n: usize,
    dims: usize,
    seed: i64,
) -> Vec<(Modality, Vec<f32>)> {
    tch::manual_seed(seed);
    let scales = Tensor::from_slice(
        &(0..dims)
            .map(|i| 1.0 / (1.0 + i as f32))
            .collect::<Vec<_>>(),
    );
    let x =
        Tensor::randn([n as i64, dims as i64], (Kind::Float, Device::Cpu)) * scales + offset as f64;
    (0..n)
        .map(|i| (modality, Vec::<f32>::try_from(x.get(i as i64)).unwrap()))
        .collect()
}

fn covariance(rows: &[Vec<f32>]) -> Tensor {
    let n = rows.len() as i64;
    let x = Tensor::from_slice(&rows.concat())
        .view([n, -1])
        .to_kind(Kind::Double);
    let x = &x - x.mean_dim(0, true, Kind::Double);
    x.transpose(0, 1).matmul(&x) / n as f64
}

#[test]
fn whitening_gives_unit_variance_along_the_kept_axes_and_unit_length() {
    let fit = features(Modality::Xray, 3.0, 400, 12, 1);
    let s = Standardizer::fit(config(Some(5), Scope::Modality), &fit).unwrap();
    // Before the final L2 normalisation the whitened training features have identity
    // covariance: check it through an unnormalised re-computation of the transform.
    let tensors: std::collections::BTreeMap<String, Tensor> = s.tensors().into_iter().collect();
    let (mean, w) = (
        &tensors["standardize.mean.xray"],
        &tensors["standardize.whiten.xray"],
    );
    assert_eq!(w.size(), vec![12, 5]);
    let rows: Vec<Vec<f32>> = fit.iter().map(|(_, v)| v.clone()).collect();
    let x = Tensor::from_slice(&rows.concat()).view([400, 12]);
    let expected_mean = x.mean_dim(0, false, Kind::Float);
    assert!(
        mean.allclose(&expected_mean, 1e-5, 1e-5, false),
        "the mean of the modality's features"
    );
    let y = (&x - mean).matmul(w);
    let yy: Vec<Vec<f32>> = (0..400)
        .map(|i| Vec::<f32>::try_from(y.get(i)).unwrap())
        .collect();
    let c = covariance(&yy);
    assert!(
        c.allclose(
            &Tensor::eye(5, (Kind::Double, Device::Cpu)),
            1e-3,
            1e-3,
            false
        ),
        "whitened covariance {c}"
    );
    let out = s.apply_one(&fit[0].1, Modality::Xray);
    assert_eq!(out.len(), 5);
    let norm: f32 = out.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
}

#[test]
fn centering_per_modality_removes_each_modalitys_offset_and_unseen_modalities_use_the_global_statistics(
) {
    let mut fit = features(Modality::Xray, 3.0, 200, 8, 2);
    fit.extend(features(Modality::Mri, -1.0, 200, 8, 3));
    let s = Standardizer::fit(config(None, Scope::Global), &fit).unwrap();
    // An X-ray at its modality's mean offset plus one unit along axis 0 becomes that axis.
    let tensors: std::collections::BTreeMap<String, Tensor> = s.tensors().into_iter().collect();
    let xray_mean = Vec::<f32>::try_from(&tensors["standardize.mean.xray"]).unwrap();
    let mut probe = xray_mean.clone();
    probe[0] += 1.0;
    let out = s.apply_one(&probe, Modality::Xray);
    assert!(
        (out[0] - 1.0).abs() < 1e-5 && out[1..].iter().all(|v| v.abs() < 1e-5),
        "{out:?}"
    );
    // CT had no items: the global mean (the mean of the modality means, about 1.0).
    let global = Vec::<f32>::try_from(&tensors["standardize.mean.all"]).unwrap();
    assert!(global.iter().all(|v| (v - 1.0).abs() < 0.3), "{global:?}");
    let mut probe = global.clone();
    probe[3] -= 2.0;
    let out = s.apply_one(&probe, Modality::Ct);
    assert!((out[3] + 1.0).abs() < 1e-5, "{out:?}");
}

#[test]
fn one_mean_and_one_set_of_axes_are_stored_once_and_serve_every_modality() {
    let mut fit = features(Modality::Xray, 3.0, 200, 8, 5);
    fit.extend(features(Modality::Mri, -1.0, 200, 8, 6));
    let shared = StandardizeConfig {
        centering: Scope::Global,
        ..config(Some(4), Scope::Global)
    };
    let s = Standardizer::fit(shared, &fit).unwrap();
    let names: Vec<String> = s.tensors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["standardize.mean.all", "standardize.whiten.all"]);
    // Each modality gets the same transform: the global mean, the shared axes.
    let tensors: std::collections::BTreeMap<String, Tensor> = s.tensors().into_iter().collect();
    let (mean, w) = (
        &tensors["standardize.mean.all"],
        &tensors["standardize.whiten.all"],
    );
    for (m, v) in [&fit[0], &fit[250]] {
        let expected = (Tensor::from_slice(v) - mean).matmul(w);
        let expected = &expected / expected.norm();
        let out = Tensor::from_slice(&s.apply_one(v, *m));
        assert!(out.allclose(&expected, 1e-5, 1e-5, false), "{m:?}");
    }
}

#[test]
fn fitting_refuses_too_many_components_and_mixed_lengths() {
    let fit = features(Modality::Xray, 0.0, 50, 6, 4);
    let e = Standardizer::fit(config(Some(7), Scope::Global), &fit).unwrap_err();
    assert!(
        e.contains("whitening to 7 components of 6-dimensional features"),
        "{e}"
    );
    let mut mixed = fit.clone();
    mixed.push((Modality::Xray, vec![0.0; 5]));
    assert!(Standardizer::fit(config(None, Scope::Global), &mixed)
        .unwrap_err()
        .contains("mixed"));
    assert!(Standardizer::fit(config(None, Scope::Global), &[]).is_err());
}

/// A small SimDINO model file whose features are standardised with statistics fitted
/// on random features (shapes and the transform are what matter here).
fn standardized_model(whiten: i64) -> (Vec<u8>, Vec<u8>) {
    standardized_model_with(whiten, Scope::Global)
}

/// As [`standardized_model`], with the whitening's axes shared or per modality.
fn standardized_model_with(whiten: i64, whitening: Scope) -> (Vec<u8>, Vec<u8>) {
    tch::manual_seed(5);
    let mut c = ModelConfig::new(Method::Simdino, Preset::Tiny);
    c.encoder = EncoderConfig {
        width: 48,
        depth: 1,
        heads: 3,
        mlp_ratio: 2.0,
        patch: [4, 16, 16],
        cls_token: true,
    };
    c.head = Some(HeadConfig {
        hidden: 32,
        out: 16,
        eps: 0.5,
    });
    c.input.image_size = 32;
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = Branch::new(vs.root(), &c.encoder, c.head.as_ref().unwrap());
    let mut tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| n.starts_with("encoder."))
        .collect();
    let plain = file::to_bytes(&c, &tensors, WeightDtype::F16).unwrap();
    let mut fit = features(Modality::Xray, 0.5, 100, 96, 6);
    fit.extend(features(Modality::Ct, -0.5, 100, 96, 7));
    let s = Standardizer::fit(config(Some(whiten), whitening), &fit).unwrap();
    tensors.extend(s.tensors());
    c.standardize = Some(s.config);
    c.format_version = FORMAT_VERSION;
    (
        plain,
        file::to_bytes(&c, &tensors, WeightDtype::F16).unwrap(),
    )
}

/// A parsed model file written back to bytes, as it stands.
fn bytes_of(file: &m3ret_core::model::ModelFile, dtype: WeightDtype) -> Vec<u8> {
    let tensors: Vec<(String, Tensor)> = file
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    file::to_bytes(&file.config, &tensors, dtype).unwrap()
}

fn study(modality: Modality, seed: i64) -> Study {
    tch::manual_seed(seed);
    let tensor = Tensor::rand([3, 4, 32, 32], (Kind::Float, Device::Cpu));
    let detected = Detected {
        format: Format::Png,
        modality,
        layout: Layout::Image2d,
        shape: [1, 32, 32, 1],
        spacing: None,
        frame_indices: None,
    };
    Study { tensor, detected }
}

#[test]
fn the_embedder_applies_the_files_standardisation_per_modality() {
    let (plain_bytes, bytes) = standardized_model(10);
    let plain = Embedder::from_bytes(&plain_bytes, Device::Cpu).unwrap();
    let model = Embedder::from_bytes(&bytes, Device::Cpu).unwrap();
    assert_eq!((plain.dims(), model.dims()), (96, 10));
    assert!(plain.standardizer().is_none() && model.standardizer().is_some());
    let studies = [
        study(Modality::Xray, 1),
        study(Modality::Ct, 2),
        study(Modality::Xray, 3),
    ];
    let got = model.embed_studies(&studies, 2).unwrap();
    // The same weights: features agree; the standardisation follows each study's modality.
    let features = plain
        .features(
            &studies
                .iter()
                .map(|s| s.tensor.shallow_clone())
                .collect::<Vec<_>>(),
            3,
        )
        .unwrap();
    let s = model.standardizer().unwrap();
    for (i, st) in studies.iter().enumerate() {
        assert_eq!(got[i].len(), 10);
        let expected = s.apply_one(&features[i], st.detected.modality);
        let diff = got[i]
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "study {i}: {diff}");
    }
    // The same image read as another modality is standardised differently.
    let as_ct = model
        .embed_studies(
            &[Study {
                tensor: studies[0].tensor.shallow_clone(),
                detected: studies[1].detected.clone(),
            }],
            1,
        )
        .unwrap();
    assert_ne!(as_ct[0], got[0]);
    // The statistics stay f32 in an f16 file.
    let file = m3ret_core::model::ModelFile::from_bytes(&bytes).unwrap();
    assert_eq!(file.config.format_version, FORMAT_VERSION);
}

#[test]
fn a_file_whose_statistics_do_not_fit_its_config_is_refused() {
    let (_, bytes) = standardized_model(10);
    let mut file = m3ret_core::model::ModelFile::from_bytes(&bytes).unwrap();
    file.config.standardize.as_mut().unwrap().whiten = Some(12);
    let wrong = bytes_of(&file, WeightDtype::F32);
    match Embedder::from_bytes(&wrong, Device::Cpu) {
        Err(ModelError::ShapeMismatch {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, "standardize.whiten.all");
            assert_eq!((expected, found), (vec![96, 12], vec![96, 10]));
        }
        other => panic!("expected a shape mismatch, got {:?}", other.map(|_| ())),
    }
    let mut file = m3ret_core::model::ModelFile::from_bytes(&bytes).unwrap();
    file.tensors
        .retain(|n, _| !n.starts_with("standardize.mean.all"));
    let missing = bytes_of(&file, WeightDtype::F32);
    assert!(
        matches!(Embedder::from_bytes(&missing, Device::Cpu), Err(ModelError::MissingTensor(n)) if n == "standardize.mean.all")
    );
}

#[test]
fn shared_axes_are_stored_once_and_files_with_a_copy_per_modality_still_load_alike() {
    let mut fit = features(Modality::Xray, 3.0, 200, 8, 8);
    fit.extend(features(Modality::Mri, -1.0, 200, 8, 9));
    let s = Standardizer::fit(config(Some(4), Scope::Global), &fit).unwrap();
    let names: Vec<String> = s.tensors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "standardize.mean.all",
            "standardize.whiten.all",
            "standardize.mean.mri",
            "standardize.mean.xray"
        ]
    );
    // A file as written before: the shared matrix copied under every modality.
    let (_, bytes) = standardized_model(10);
    let mut file = m3ret_core::model::ModelFile::from_bytes(&bytes).unwrap();
    assert!(!file.tensors.contains_key("standardize.whiten.xray"));
    let shared = file.tensors["standardize.whiten.all"].copy();
    for m in ["xray", "ct"] {
        file.tensors
            .insert(format!("standardize.whiten.{m}"), shared.copy());
    }
    let old = bytes_of(&file, WeightDtype::F16);
    assert!(old.len() > bytes.len() + 2 * 96 * 10 * 4);
    let studies = [
        study(Modality::Xray, 1),
        study(Modality::Ct, 2),
        study(Modality::Mri, 3),
    ];
    let new = Embedder::from_bytes(&bytes, Device::Cpu).unwrap();
    let old = Embedder::from_bytes(&old, Device::Cpu).unwrap();
    assert_eq!(
        new.embed_studies(&studies, 3).unwrap(),
        old.embed_studies(&studies, 3).unwrap()
    );
}

#[test]
fn per_modality_axes_must_each_be_in_the_file() {
    let (_, bytes) = standardized_model_with(10, Scope::Modality);
    let mut file = m3ret_core::model::ModelFile::from_bytes(&bytes).unwrap();
    assert!(file.tensors.contains_key("standardize.whiten.xray"));
    assert!(Embedder::from_bytes(&bytes, Device::Cpu).is_ok());
    // Unlike shared axes, a modality's own axes have no stand-in.
    file.tensors.remove("standardize.whiten.xray");
    let missing = bytes_of(&file, WeightDtype::F32);
    assert!(
        matches!(Embedder::from_bytes(&missing, Device::Cpu), Err(ModelError::MissingTensor(n)) if n == "standardize.whiten.xray")
    );
}
