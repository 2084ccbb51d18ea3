//! The model being pretrained: MAE (encoder + decoder) or SimDINO (student and EMA
//! teacher, each an encoder + head), with what a training step and a checkpoint need.

use crate::augment;
use m3ret_core::model::mae::Mae;
use m3ret_core::model::simdino::{self, Branch};
use m3ret_core::model::{Method, ModelConfig};
use tch::{nn, Device, Tensor};

// One value per run: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Trainee {
    Mae {
        vs: nn::VarStore,
        model: Mae,
    },
    SimDino {
        student_vs: nn::VarStore,
        student: Branch,
        teacher_vs: nn::VarStore,
        teacher: Branch,
    },
}

/// A step's loss and the numbers worth logging beside it.
pub struct StepLoss {
    pub loss: Tensor,
    pub parts: Vec<(&'static str, f64)>,
}

impl Trainee {
    pub fn new(config: &ModelConfig, device: Device) -> Trainee {
        match config.method {
            Method::Mae => {
                let vs = nn::VarStore::new(device);
                let model = Mae::new(
                    vs.root(),
                    &config.encoder,
                    config.decoder.as_ref().expect("MAE config has a decoder"),
                );
                Trainee::Mae { vs, model }
            }
            Method::Simdino => {
                let head = config.head.as_ref().expect("SimDINO config has a head");
                let student_vs = nn::VarStore::new(device);
                let student = Branch::new(student_vs.root(), &config.encoder, head);
                let mut teacher_vs = nn::VarStore::new(device);
                let teacher = Branch::new(teacher_vs.root(), &config.encoder, head);
                // The teacher starts as a copy of the student and is never trained directly.
                teacher_vs.copy(&student_vs).expect("same architecture");
                teacher_vs.freeze();
                Trainee::SimDino {
                    student_vs,
                    student,
                    teacher_vs,
                    teacher,
                }
            }
        }
    }

    /// The variables the optimiser updates.
    pub fn trainable(&self) -> &nn::VarStore {
        match self {
            Trainee::Mae { vs, .. } => vs,
            Trainee::SimDino { student_vs, .. } => student_vs,
        }
    }

    pub fn loss(
        &self,
        batch: &Tensor,
        config: &ModelConfig,
        local: augment::ViewSettings,
        alignment_weight: f64,
        seed: u64,
    ) -> StepLoss {
        match self {
            Trainee::Mae { model, .. } => {
                let out = model.forward(batch);
                StepLoss {
                    loss: out.loss,
                    parts: vec![],
                }
            }
            Trainee::SimDino {
                student, teacher, ..
            } => {
                let viewed = std::time::Instant::now();
                let v = augment::views(batch, local, config.encoder.patch[1], seed);
                let views_s = viewed.elapsed().as_secs_f64();
                let zs: Vec<Tensor> = v
                    .global
                    .iter()
                    .chain(v.local.iter())
                    .map(|x| student.project(x))
                    .collect();
                let zt: Vec<Tensor> =
                    tch::no_grad(|| v.global.iter().map(|x| teacher.project(x)).collect());
                let eps = config.head.as_ref().map(|h| h.eps).unwrap_or(0.5);
                let out = simdino::simdino_loss(&zs, &zt, eps, alignment_weight);
                let parts = vec![
                    ("alignment", out.alignment.double_value(&[])),
                    ("alignment_global", out.alignment_global),
                    ("alignment_local", out.alignment_local),
                    ("coding_rate", out.coding_rate.double_value(&[])),
                    ("views_s", views_s),
                ];
                StepLoss {
                    loss: out.loss,
                    parts,
                }
            }
        }
    }

    /// After the optimiser step: the SimDINO teacher follows the student with this
    /// step's momentum (the run's schedule).
    pub fn after_step(&self, momentum: f64) {
        if let Trainee::SimDino {
            student_vs,
            teacher_vs,
            ..
        } = self
        {
            simdino::ema_update(teacher_vs, student_vs, momentum);
        }
    }

    /// Every tensor, named for the checkpoint file.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        match self {
            Trainee::Mae { vs, .. } => vs.variables().into_iter().collect(),
            Trainee::SimDino {
                student_vs,
                teacher_vs,
                ..
            } => student_vs
                .variables()
                .into_iter()
                .map(|(n, t)| (format!("student.{n}"), t))
                .chain(
                    teacher_vs
                        .variables()
                        .into_iter()
                        .map(|(n, t)| (format!("teacher.{n}"), t)),
                )
                .collect(),
        }
    }

    pub fn load(&self, file: &m3ret_core::model::ModelFile) -> Result<(), String> {
        let r = match self {
            Trainee::Mae { vs, .. } => file.load_into(vs, ""),
            Trainee::SimDino {
                student_vs,
                teacher_vs,
                ..
            } => file
                .load_into(student_vs, "student.")
                .and_then(|_| file.load_into(teacher_vs, "teacher.")),
        };
        r.map_err(|e| e.to_string())
    }
}

/// The encoder to export from a checkpoint's tensors: MAE's encoder, or SimDINO's
/// `branch` (teacher: the EMA weights, which the reference evaluates; or student).
pub fn export_prefix(method: Method, branch: &str) -> &'static str {
    match (method, branch) {
        (Method::Mae, _) => "encoder.",
        (Method::Simdino, "student") => "student.encoder.",
        (Method::Simdino, _) => "teacher.encoder.",
    }
}
