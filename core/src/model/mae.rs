//! MAE (He et al., 2022) over the 4D patch grid: random masking, an encoder that
//! sees only the visible 25% of tokens, a light decoder that reconstructs the pixels
//! of the masked patches, and an MSE loss on those patches only.

use super::config::{DecoderConfig, EncoderConfig};
use super::pos_embed::sincos_3d;
use super::vit::{layer_norm, linear, Block, Encoder};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Random per-sample masking by argsort of uniform noise.
pub struct Masking {
    /// `[B, N_keep]` indices of the visible tokens.
    pub ids_keep: Tensor,
    /// `[B, N]`: where each original token went in the shuffled order.
    pub ids_restore: Tensor,
    /// `[B, N]`: 1 for masked tokens, 0 for visible ones, in the original order.
    pub mask: Tensor,
}

/// Tokens kept out of `n` at `mask_ratio` (MAE rounds the kept count down).
pub fn kept_tokens(n: i64, mask_ratio: f64) -> i64 {
    ((n as f64) * (1.0 - mask_ratio)) as i64
}

pub fn random_masking(batch: i64, n: i64, mask_ratio: f64, device: tch::Device) -> Masking {
    let keep = kept_tokens(n, mask_ratio);
    let noise = Tensor::rand([batch, n], (Kind::Float, device));
    let ids_shuffle = noise.argsort(1, false);
    let ids_restore = ids_shuffle.argsort(1, false);
    let ids_keep = ids_shuffle.narrow(1, 0, keep);
    let shuffled_mask = Tensor::cat(
        &[
            Tensor::zeros([batch, keep], (Kind::Float, device)),
            Tensor::ones([batch, n - keep], (Kind::Float, device)),
        ],
        1,
    );
    let mask = shuffled_mask.gather(1, &ids_restore, false);
    Masking {
        ids_keep,
        ids_restore,
        mask,
    }
}

/// Gathers `[B, N, C]` tokens at `[B, K]` indices into `[B, K, C]`.
pub fn gather_tokens(tokens: &Tensor, ids: &Tensor) -> Tensor {
    let c = tokens.size()[2];
    let index = ids.unsqueeze(-1).expand([-1, -1, c], false);
    tokens.gather(1, &index, false)
}

/// The input cut into flattened patches `[B, N, 3 * ps * ph * pw]`, in token order.
pub fn patchify(input: &Tensor, patch: [i64; 3]) -> Tensor {
    let size = input.size();
    let (b, c) = (size[0], size[1]);
    let [ps, ph, pw] = patch;
    let (gs, gh, gw) = (size[2] / ps, size[3] / ph, size[4] / pw);
    input
        .reshape([b, c, gs, ps, gh, ph, gw, pw])
        .permute([0, 2, 4, 6, 1, 3, 5, 7])
        .reshape([b, gs * gh * gw, c * ps * ph * pw])
}

/// The reconstruction decoder.
#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    embed: nn::Linear,
    mask_token: Tensor,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
    pred: nn::Linear,
}

impl Decoder {
    pub fn new(vs: nn::Path, config: &DecoderConfig, encoder: &EncoderConfig) -> Self {
        let w = config.width;
        let patch_pixels = 3 * encoder.patch.iter().product::<i64>();
        Decoder {
            config: config.clone(),
            embed: linear(&vs / "embed", encoder.width, w),
            mask_token: vs.var(
                "mask_token",
                &[1, 1, w],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            blocks: (0..config.depth)
                .map(|i| Block::new(&vs / "blocks" / i, w, config.heads, 4.0))
                .collect(),
            norm: layer_norm(&vs / "norm", w),
            pred: linear(&vs / "pred", w, patch_pixels),
        }
    }

    /// Visible encoded tokens `[B, K, width]` -> predicted pixels of every patch `[B, N, P]`.
    // `x = x + y`, not `x += y`: on a tch Tensor `+=` is an in-place add, which
    // autograd may refuse or get wrong; the new tensor is what is meant.
    #[allow(clippy::assign_op_pattern)]
    fn forward(&self, visible: &Tensor, masking: &Masking, grid: [i64; 3]) -> Tensor {
        // The residual stream in the weights' precision (f32 under autocast), as in the
        // encoder (`Encoder::tokens`).
        let x = self.embed.forward(visible).to_kind(self.mask_token.kind());
        let (b, k, w) = x.size3().expect("[B, K, W]");
        let n = masking.ids_restore.size()[1];
        let masked = self.mask_token.expand([b, n - k, w], false);
        let shuffled = Tensor::cat(&[x, masked], 1);
        let mut x = gather_tokens(&shuffled, &masking.ids_restore);
        let kind = x.kind();
        x = x + sincos_3d(w, grid, visible.device())
            .to_kind(kind)
            .unsqueeze(0);
        for block in &self.blocks {
            x = block.forward(&x);
        }
        self.pred.forward(&self.norm.forward(&x))
    }
}

/// Encoder + decoder, trained by reconstruction of masked patches.
#[derive(Debug)]
pub struct Mae {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

/// One MAE forward pass: the loss and what it was computed from.
pub struct MaeOutput {
    pub loss: Tensor,
    pub mask: Tensor,
}

impl Mae {
    pub fn new(vs: nn::Path, encoder: &EncoderConfig, decoder: &DecoderConfig) -> Self {
        Mae {
            encoder: Encoder::new(&vs / "encoder", encoder),
            decoder: Decoder::new(&vs / "decoder", decoder, encoder),
        }
    }

    pub fn forward(&self, input: &Tensor) -> MaeOutput {
        let tokens = self.encoder.tokens(input);
        let (b, n, _) = tokens.size3().expect("[B, N, C]");
        let masking = random_masking(b, n, self.decoder.config.mask_ratio, input.device());
        let visible = self
            .encoder
            .encode_tokens(&gather_tokens(&tokens, &masking.ids_keep))
            .patches;
        let pred = self
            .decoder
            .forward(&visible, &masking, self.encoder.grid(input));
        let loss = reconstruction_loss(
            &pred,
            &patchify(input, self.encoder.config.patch),
            &masking.mask,
            self.decoder.config.norm_pix_loss,
        );
        MaeOutput {
            loss,
            mask: masking.mask,
        }
    }
}

/// Mean squared error per patch, averaged over the masked patches only.
/// With `norm_pix`, each target patch is normalised by its own mean and variance.
pub fn reconstruction_loss(
    pred: &Tensor,
    target: &Tensor,
    mask: &Tensor,
    norm_pix: bool,
) -> Tensor {
    let target = if norm_pix {
        let mean = target.mean_dim(-1, true, Kind::Float);
        let var = target.var_dim(-1, true, true);
        (target - mean) / (var + 1e-6).sqrt()
    } else {
        target.shallow_clone()
    };
    let per_patch = (pred.to_kind(Kind::Float) - target)
        .square()
        .mean_dim(-1, false, Kind::Float);
    (per_patch * mask).sum(Kind::Float) / mask.sum(Kind::Float)
}
