//! Test model files made with m3ret-core, and the embeddings `m3ret-train eval`
//! computes for a file (the same `study::load` + `Embedder` path), for comparison
//! with what SQL returns.

use m3ret_core::modality::ModalityChoice;
use m3ret_core::model::config::{EncoderConfig, HeadConfig};
use m3ret_core::model::file::{self, WeightDtype};
use m3ret_core::model::simdino::Branch;
use m3ret_core::model::{Embedder, Method, ModelConfig, Preset};
use m3ret_core::study::{self, StudyOptions};
use tch::{nn, Device};

/// A small SimDINO model (96 wide, 2 deep, 64 x 64 inputs, 192-dim embeddings) with
/// weights drawn from `seed`: fast enough on a CPU for tests.
pub fn small_model(seed: i64) -> Vec<u8> {
    model_with(seed, 96, 2, 64)
}

/// A model of any size, e.g. a slower one for cancellation tests.
pub fn model_with(seed: i64, width: i64, depth: i64, image_size: i64) -> Vec<u8> {
    model_claiming(seed, width, depth, image_size, |_| {})
}

/// As [`model_with`], with the weights of that model and a config changed by
/// `claim` after they were made: a file whose config does not describe its tensors.
pub fn model_claiming(
    seed: i64,
    width: i64,
    depth: i64,
    image_size: i64,
    claim: impl FnOnce(&mut ModelConfig),
) -> Vec<u8> {
    tch::manual_seed(seed);
    let mut config = ModelConfig::new(Method::Simdino, Preset::Tiny);
    config.encoder = EncoderConfig {
        width,
        depth,
        heads: 3,
        mlp_ratio: 4.0,
        patch: [4, 16, 16],
        cls_token: true,
    };
    config.head = Some(HeadConfig {
        hidden: 64,
        out: 32,
        eps: 0.5,
    });
    config.input.image_size = image_size;
    config.input.slices_volume = 16;
    config.input.frames_video = 8;
    config.training = serde_json::json!({"note": "random weights for tests", "seed": seed});
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = Branch::new(vs.root(), &config.encoder, config.head.as_ref().unwrap());
    let tensors: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    claim(&mut config);
    file::to_bytes(&config, &tensors, WeightDtype::F32).unwrap()
}

/// The embedding of `data` (one buffer, or several for a series) outside PostgreSQL.
pub fn reference_embedding(model: &[u8], data: &[&[u8]], modality: &str) -> Vec<f32> {
    let embedder = Embedder::from_bytes(model, Device::Cpu).unwrap();
    let options = StudyOptions::for_input(
        ModalityChoice::parse(modality).unwrap(),
        &embedder.config.input,
    );
    let study = study::load_buffers(data, &options).unwrap();
    embedder.embed_studies(&[study], 1).unwrap().remove(0)
}
