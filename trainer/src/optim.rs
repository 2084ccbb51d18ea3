//! AdamW, the learning-rate schedule and gradient clipping, written out so that the
//! optimiser's state (the moment estimates) can be checkpointed and resumed exactly:
//! tch's built-in optimisers cannot save their state.

use std::collections::BTreeMap;
use tch::{nn, Kind, Tensor};

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken (for bias correction).
    pub steps: i64,
    /// First and second moments, by variable name.
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
}

impl AdamW {
    pub fn new(beta1: f64, beta2: f64, weight_decay: f64) -> AdamW {
        AdamW {
            beta1,
            beta2,
            eps: 1e-8,
            weight_decay,
            steps: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }

    /// One update of every trainable variable of `vs` that has a gradient.
    /// Biases and norm weights (1-D) get no weight decay, as in the reference code.
    pub fn step(&mut self, vs: &nn::VarStore, lr: f64) {
        self.steps += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - b1.powi(self.steps as i32);
        let bc2 = 1.0 - b2.powi(self.steps as i32);
        tch::no_grad(|| {
            for (name, mut p) in vs.variables() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                // In place, one temporary per tensor (as PyTorch's AdamW): each fresh
                // buffer of a large tensor costs page faults on every step. tch's
                // addcmul_/addcdiv_ take no scale, so the scales are folded in.
                let m = self.m.entry(name.clone()).or_insert_with(|| p.zeros_like());
                let _ = m.lerp_(&g, 1.0 - b1); // m = b1 m + (1 - b1) g
                let v = self.v.entry(name.clone()).or_insert_with(|| p.zeros_like());
                let _ = v.g_mul_scalar_(b2 / (1.0 - b2));
                let _ = v.addcmul_(&g, &g);
                let _ = v.g_mul_scalar_(1.0 - b2); // v = b2 v + (1 - b2) g^2
                if lr <= 0.0 {
                    continue;
                }
                let decay = if p.dim() > 1 { self.weight_decay } else { 0.0 };
                if decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * decay);
                }
                let mut denom = v.sqrt();
                let _ = denom.g_div_scalar_(bc2.sqrt());
                let _ = denom.g_add_scalar_(self.eps);
                let _ = denom.g_mul_scalar_(-bc1 / lr);
                let _ = p.addcdiv_(m, &denom); // p -= (lr / bc1) m / (sqrt(v / bc2) + eps)
            }
        });
    }
}

/// Drops the gradients of every variable (set to None, as PyTorch does by default).
pub fn zero_grad(vs: &nn::VarStore) {
    for p in vs.variables().values() {
        m3ret_core::torch_ext::clear_grad(p);
    }
}

/// Scales gradients so that their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(vs: &nn::VarStore, max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = vs
            .variables()
            .into_values()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        // One synchronisation for the whole norm, not one per tensor.
        let squares: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float))
            .collect();
        let total = Tensor::stack(&squares, 0)
            .sum(Kind::Float)
            .sqrt()
            .double_value(&[]);
        if total > max_norm {
            let scale = max_norm / (total + 1e-6);
            for mut g in grads {
                let _ = g.g_mul_scalar_(scale);
            }
        }
        total
    })
}

/// Linear warm-up to `peak` over `warmup` steps, then cosine decay to `peak * final_fraction`.
pub fn learning_rate(step: i64, total: i64, warmup: i64, peak: f64, final_fraction: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    let floor = peak * final_fraction;
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((learning_rate(0, 100, 10, 1e-3, 0.0) - 1e-4).abs() < 1e-12);
        assert!((learning_rate(9, 100, 10, 1e-3, 0.0) - 1e-3).abs() < 1e-12);
        assert!((learning_rate(55, 100, 10, 1e-3, 0.0) - 5e-4).abs() < 1e-9);
        assert!(learning_rate(100, 100, 10, 1e-3, 0.0).abs() < 1e-12);
    }

    #[test]
    fn adamw_first_step_moves_by_lr_times_sign() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let w = vs.root().var("w", &[2, 2], nn::Init::Const(1.0));
        let loss =
            (&w * Tensor::from_slice(&[1.0f32, -2.0, 3.0, -4.0]).view([2, 2])).sum(Kind::Float);
        loss.backward();
        let mut opt = AdamW::new(0.9, 0.95, 0.0);
        opt.step(&vs, 0.1);
        // Bias-corrected first step: m/sqrt(v) = sign(g), so w moves by -lr * sign(g).
        let got: Vec<f32> = Vec::try_from(w.flatten(0, -1)).unwrap();
        for (g, expected) in got.iter().zip([0.9f32, 1.1, 0.9, 1.1]) {
            assert!((g - expected).abs() < 1e-5, "{got:?}");
        }
    }
}
