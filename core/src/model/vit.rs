//! The ViT encoder with M3Ret's unified 4D patchification.
//!
//! Input: `[B, 3, S, H, W]` (the canonical tensor, batched). One `Conv3d` with kernel
//! and stride (4, 16, 16) over (slice, height, width) turns every modality into
//! tokens: 2D (S = 4) gives 256, video (S = 16) 1,024, CT (S = 64) 4,096.

use super::config::EncoderConfig;
use super::pos_embed::sincos_3d;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// LayerNorm eps of the reference ViTs.
pub const LN_EPS: f64 = 1e-6;

pub fn layer_norm(vs: nn::Path, width: i64) -> nn::LayerNorm {
    nn::layer_norm(
        vs,
        vec![width],
        nn::LayerNormConfig {
            eps: LN_EPS,
            ..Default::default()
        },
    )
}

/// Linear layer initialised as the reference ViTs do (normal, std 0.02; zero bias).
pub fn linear(vs: nn::Path, i: i64, o: i64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(vs, i, o, config)
}

/// Multi-head self-attention: `scaled_dot_product_attention`, except when training
/// on the CPU in bf16, where the explicit form (matmul, softmax, matmul) gives the
/// same result and the CPU's fused backward is slow (issue 29 measured the explicit
/// form 2.4x faster on an AMX CPU; not measured on this project's AVX512-BF16 one).
#[derive(Debug)]
struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    heads: i64,
}

impl Attention {
    fn new(vs: nn::Path, width: i64, heads: i64) -> Self {
        Attention {
            qkv: linear(&vs / "qkv", width, 3 * width),
            proj: linear(&vs / "proj", width, width),
            heads,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, n, c) = x.size3().expect("[B, N, C]");
        let qkv = self
            .qkv
            .forward(x)
            .reshape([b, n, 3, self.heads, c / self.heads])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let explicit = x.device() == tch::Device::Cpu
            && x.requires_grad()
            && crate::torch_ext::CpuBf16::active();
        let out = if explicit {
            explicit_attention(&q, &k, &v)
        } else {
            Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None::<Tensor>,
                0.0,
                false,
                None,
                false,
            )
        };
        self.proj.forward(&out.transpose(1, 2).reshape([b, n, c]))
    }
}

/// softmax(q k^T / sqrt(d)) v over `[B, heads, N, d]`, the softmax in f32.
pub fn explicit_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let d = *q.size().last().expect("[.., d]");
    let scores = q.matmul(&k.transpose(-2, -1)) * (1.0 / (d as f64).sqrt());
    scores.softmax(-1, Kind::Float).to_kind(v.kind()).matmul(v)
}

/// A pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).
#[derive(Debug)]
pub struct Block {
    norm1: nn::LayerNorm,
    attn: Attention,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Block {
    pub fn new(vs: nn::Path, width: i64, heads: i64, mlp_ratio: f64) -> Self {
        let hidden = (width as f64 * mlp_ratio) as i64;
        Block {
            norm1: layer_norm(&vs / "norm1", width),
            attn: Attention::new(&vs / "attn", width, heads),
            norm2: layer_norm(&vs / "norm2", width),
            fc1: linear(&vs / "mlp" / "fc1", width, hidden),
            fc2: linear(&vs / "mlp" / "fc2", hidden, width),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + self.attn.forward(&self.norm1.forward(x));
        let h = self
            .fc2
            .forward(&self.fc1.forward(&self.norm2.forward(&x)).gelu("none"));
        x + h
    }
}

/// The encoder: patch embedding, optional [CLS], blocks, final norm.
#[derive(Debug)]
pub struct Encoder {
    pub config: EncoderConfig,
    patch_embed: nn::Conv<[i64; 3]>,
    cls_token: Option<Tensor>,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
}

/// The encoder's output: token features after the final norm.
pub struct EncoderOutput {
    /// `[B, width]` when the encoder has a [CLS] token.
    pub cls: Option<Tensor>,
    /// `[B, N, width]`, the (visible) patch tokens.
    pub patches: Tensor,
}

impl Encoder {
    pub fn new(vs: nn::Path, config: &EncoderConfig) -> Self {
        let w = config.width;
        let conv_config = nn::ConvConfigND::<[i64; 3]> {
            stride: config.patch,
            padding: [0, 0, 0],
            dilation: [1, 1, 1],
            groups: 1,
            bias: true,
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            bs_init: nn::Init::Const(0.0),
            padding_mode: nn::PaddingMode::Zeros,
        };
        let patch_embed = nn::conv(&vs / "patch_embed", 3, w, config.patch, conv_config);
        let cls_token = config.cls_token.then(|| {
            vs.var(
                "cls_token",
                &[1, 1, w],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )
        });
        let blocks = (0..config.depth)
            .map(|i| Block::new(&vs / "blocks" / i, w, config.heads, config.mlp_ratio))
            .collect();
        Encoder {
            config: config.clone(),
            patch_embed,
            cls_token,
            blocks,
            norm: layer_norm(&vs / "norm", w),
        }
    }

    /// The token grid (slices, rows, columns) of an input `[B, 3, S, H, W]`.
    pub fn grid(&self, input: &Tensor) -> [i64; 3] {
        let size = input.size();
        let [ps, ph, pw] = self.config.patch;
        [size[2] / ps, size[3] / ph, size[4] / pw]
    }

    /// Patch tokens with positions added: `[B, N, width]`.
    pub fn tokens(&self, input: &Tensor) -> Tensor {
        let grid = self.grid(input);
        let x = self
            .patch_embed
            .forward(input)
            .flatten(2, -1)
            .transpose(1, 2);
        // In the weights' precision, not the patch embedding's output's: under autocast
        // that output is bf16 while the weights are f32, and the residual stream (and
        // with it every layer norm's input) must stay f32, as in PyTorch's AMP, where the
        // f32 position table promotes the sum. A bf16 residual stream rounds every
        // block's update to 8 bits of mantissa.
        let pos =
            sincos_3d(self.config.width, grid, input.device()).to_kind(self.patch_embed.ws.kind());
        x + pos.unsqueeze(0)
    }

    /// Runs the blocks over `tokens` (already position-coded), prepending [CLS].
    pub fn encode_tokens(&self, tokens: &Tensor) -> EncoderOutput {
        self.encode_tokens_with(tokens, &mut || {})
    }

    /// As [`Encoder::encode_tokens`], calling `between_blocks` before each block: the
    /// extension checks for query cancellation there, between tensor operations.
    pub fn encode_tokens_with(
        &self,
        tokens: &Tensor,
        between_blocks: &mut dyn FnMut(),
    ) -> EncoderOutput {
        self.encode_tokens_last(tokens, 1, between_blocks)
            .pop()
            .expect("one output")
    }

    /// The outputs of the last `k` blocks (each through the final norm, as DINO's
    /// intermediate layers are), earliest first; `k` is clamped to 1..=depth.
    pub fn encode_tokens_last(
        &self,
        tokens: &Tensor,
        k: usize,
        between_blocks: &mut dyn FnMut(),
    ) -> Vec<EncoderOutput> {
        let first_kept = self.blocks.len().saturating_sub(k.max(1));
        let b = tokens.size()[0];
        let mut x = match &self.cls_token {
            Some(cls) => Tensor::cat(
                &[
                    cls.expand([b, 1, self.config.width], false)
                        .to_kind(tokens.kind()),
                    tokens.shallow_clone(),
                ],
                1,
            ),
            None => tokens.shallow_clone(),
        };
        let mut outputs = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            between_blocks();
            x = block.forward(&x);
            if i >= first_kept {
                outputs.push(self.split(self.norm.forward(&x)));
            }
        }
        outputs
    }

    /// Normed tokens into [CLS] and patch tokens.
    fn split(&self, x: Tensor) -> EncoderOutput {
        match self.cls_token {
            Some(_) => EncoderOutput {
                cls: Some(x.select(1, 0)),
                patches: x.narrow(1, 1, x.size()[1] - 1),
            },
            None => EncoderOutput {
                cls: None,
                patches: x,
            },
        }
    }

    /// The full forward pass over every patch.
    pub fn forward(&self, input: &Tensor) -> EncoderOutput {
        self.encode_tokens(&self.tokens(input))
    }
}

/// Pools encoder outputs into one vector per input (not yet normalised). `grid` is
/// the token grid (slices, rows, columns) the patches were flattened from.
pub fn pool(output: &EncoderOutput, pooling: super::config::Pooling, grid: [i64; 3]) -> Tensor {
    use super::config::Pooling;
    let avg = || output.patches.mean_dim(1, false, Kind::Float);
    let cls = || {
        output
            .cls
            .as_ref()
            .expect("pooling needs [CLS]")
            .to_kind(Kind::Float)
    };
    match pooling {
        Pooling::Avg => avg(),
        Pooling::Cls => cls(),
        Pooling::ClsAvg => Tensor::cat(&[cls(), avg()], 1),
        Pooling::Grid(side) => {
            let (b, _, c) = output.patches.size3().expect("[B, N, C]");
            let [slices, rows, columns] = grid;
            output
                .patches
                .to_kind(Kind::Float)
                .reshape([b, slices, rows, columns, c])
                .mean_dim(1, false, Kind::Float)
                .permute([0, 3, 1, 2])
                .adaptive_avg_pool2d([side, side])
                .reshape([b, side * side * c])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Pooling;

    /// Tokens of two inputs of 2 slices x 4 x 6 patches, 5 channels.
    fn output() -> EncoderOutput {
        tch::manual_seed(3);
        EncoderOutput {
            cls: None,
            patches: Tensor::randn([2, 2 * 4 * 6, 5], (Kind::Float, tch::Device::Cpu)),
        }
    }

    #[test]
    fn grid_pooling_is_the_mean_of_each_quarter() {
        let out = output();
        let grid = pool(&out, Pooling::Grid(2), [2, 4, 6]);
        assert_eq!(grid.size(), [2, 4 * 5]);
        // The top-left quarter: rows 0-1, columns 0-2, of both slices.
        let tokens = out.patches.reshape([2, 2, 4, 6, 5]);
        let top_left =
            tokens
                .narrow(2, 0, 2)
                .narrow(3, 0, 3)
                .mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
        let first = grid.reshape([2, 5, 4]).select(2, 0);
        assert!(f64::try_from((first - top_left).abs().max()).unwrap() < 1e-6);
        // The four quarters are equal in size: their mean is the global mean.
        let avg = pool(&out, Pooling::Avg, [2, 4, 6]);
        let mean_of_quarters = grid.reshape([2, 5, 4]).mean_dim(2, false, Kind::Float);
        assert!(f64::try_from((mean_of_quarters - avg).abs().max()).unwrap() < 1e-6);
    }
}
