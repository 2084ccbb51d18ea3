//! SimDINO (Wu et al., 2025): DINO without the centring and sharpening tricks.
//! A student and an EMA teacher, each an encoder with [CLS] and a projection head;
//! the loss aligns every student view with every teacher global view (but its own)
//! and subtracts a coding-rate term that keeps the batch's features spread out.

use super::config::{EncoderConfig, HeadConfig};
use super::vit::{linear, Encoder};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// The projection head: in -> hidden -> hidden -> out with GELU, output L2-normalised.
#[derive(Debug)]
pub struct Head {
    fc1: nn::Linear,
    fc2: nn::Linear,
    fc3: nn::Linear,
}

impl Head {
    pub fn new(vs: nn::Path, input: i64, config: &HeadConfig) -> Self {
        Head {
            fc1: linear(&vs / "fc1", input, config.hidden),
            fc2: linear(&vs / "fc2", config.hidden, config.hidden),
            fc3: linear(&vs / "fc3", config.hidden, config.out),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.fc1.forward(x).gelu("none");
        let h = self.fc2.forward(&h).gelu("none");
        l2_normalize(&self.fc3.forward(&h).to_kind(Kind::Float))
    }
}

pub use super::l2_normalize;

/// Encoder + head: one side (student or teacher).
#[derive(Debug)]
pub struct Branch {
    pub encoder: Encoder,
    pub head: Head,
}

impl Branch {
    pub fn new(vs: nn::Path, encoder: &EncoderConfig, head: &HeadConfig) -> Self {
        Branch {
            encoder: Encoder::new(&vs / "encoder", encoder),
            head: Head::new(&vs / "head", encoder.width, head),
        }
    }

    /// The head's output for the [CLS] token of each view: `[B, out]`.
    pub fn project(&self, view: &Tensor) -> Tensor {
        let cls = self
            .encoder
            .forward(view)
            .cls
            .expect("SimDINO encoders have [CLS]");
        self.head.forward(&cls)
    }
}

/// The SimDINO objective's parts.
pub struct SimDinoLoss {
    pub loss: Tensor,
    pub alignment: Tensor,
    /// The alignment's mean over the pairs of two global views, and over the pairs of a
    /// local student view and a global teacher view (0 without local views): which
    /// kind of view the student fails to match, when the alignment stays high.
    pub alignment_global: f64,
    pub alignment_local: f64,
    pub coding_rate: Tensor,
}

/// `student`: one `[B, d]` tensor per view, global views first; `teacher`: one per
/// global view. Both L2-normalised.
///
/// loss = w * mean over pairs (teacher view t, student view s != t) of 1/2 |z_s - z_t|^2
///        - gamma * mean over global student views of R(Z),
/// w = `alignment_weight` (the reference's `coeff`, 1 by default),
/// R(Z) = 1/2 logdet(I + d / (m eps^2) Z^T Z), Z the view's `[m, d]` batch.
/// gamma = (d + m) / (d m) balances the two terms as the official implementation does.
/// (The official code writes the scale as d / (m eps'), so its `eps = 0.05` is our eps^2.)
// `x = x + y`, not `x += y`: on a tch Tensor `+=` is an in-place add, which
// autograd may refuse or get wrong; the new tensor is what is meant.
#[allow(clippy::assign_op_pattern)]
pub fn simdino_loss(
    student: &[Tensor],
    teacher: &[Tensor],
    eps: f64,
    alignment_weight: f64,
) -> SimDinoLoss {
    let mut alignment = Tensor::zeros([], (Kind::Float, student[0].device()));
    let mut terms = 0;
    // (sum, count) of the pairs' values, for global and for local student views.
    let mut kinds = [(0.0, 0usize); 2];
    for (t, zt) in teacher.iter().enumerate() {
        for (s, zs) in student.iter().enumerate() {
            if s == t {
                continue;
            }
            let pair = (zs - zt)
                .square()
                .sum_dim_intlist(-1, false, Kind::Float)
                .mean(Kind::Float)
                * 0.5;
            let kind = &mut kinds[usize::from(s >= teacher.len())];
            kind.0 += pair.double_value(&[]);
            kind.1 += 1;
            alignment = alignment + pair;
            terms += 1;
        }
    }
    let alignment = alignment / terms.max(1) as f64;
    let [global, local] = kinds.map(|(sum, n)| if n > 0 { sum / n as f64 } else { 0.0 });
    let (m, d) = student[0].size2().expect("[B, d]");
    let rates: Vec<Tensor> = student[..teacher.len()]
        .iter()
        .map(|z| coding_rate(z, eps))
        .collect();
    let coding_rate = Tensor::stack(&rates, 0).mean(Kind::Float);
    let gamma = (d + m) as f64 / (d * m) as f64;
    let loss = &alignment * alignment_weight - &coding_rate * gamma;
    SimDinoLoss {
        loss,
        alignment,
        alignment_global: global,
        alignment_local: local,
        coding_rate,
    }
}

/// R(Z) = 1/2 logdet(I + d / (m eps^2) Z^T Z), through a Cholesky factor:
/// 1/2 logdet(A) = sum(log(diag(chol(A)))). In f32 also under CPU bf16 autocast
/// (the Gram matrix's rounding would reach the factor).
pub fn coding_rate(z: &Tensor, eps: f64) -> Tensor {
    let _f32 = crate::torch_ext::CpuF32::enter();
    let (m, d) = z.size2().expect("[m, d]");
    let z = z.to_kind(Kind::Float);
    let scale = d as f64 / (m as f64 * eps * eps);
    let a = Tensor::eye(d, (Kind::Float, z.device())) + z.transpose(0, 1).matmul(&z) * scale;
    a.linalg_cholesky(false)
        .diagonal(0, 0, 1)
        .log()
        .sum(Kind::Float)
}

/// The teacher momentum at `step` of `total`: cosine from `start` (DINO: 0.996) up
/// to `end` (DINO: 1).
pub fn teacher_momentum(step: i64, total: i64, start: f64, end: f64) -> f64 {
    let progress = (step as f64 / total.max(1) as f64).clamp(0.0, 1.0);
    end - (end - start) * (std::f64::consts::PI * progress).cos().mul_add(0.5, 0.5)
}

/// teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter.
pub fn ema_update(teacher: &nn::VarStore, student: &nn::VarStore, momentum: f64) {
    tch::no_grad(|| {
        let student_vars = student.variables();
        for (name, mut t) in teacher.variables() {
            let s = student_vars
                .get(&name)
                .unwrap_or_else(|| panic!("student has no {name}"));
            t.copy_(&(&t * momentum + s * (1.0 - momentum)));
        }
    });
}
