//! What a model is: architecture, training method, pooling and input spec.
//! Stored as JSON in the model file's safetensors metadata.

use super::standardize::StandardizeConfig;
use serde::{Deserialize, Serialize};

/// The self-supervised objective the encoder was (or will be) trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Mae,
    Simdino,
}

/// How token outputs become one embedding (the paper's figure 3b).
/// Written in model files as "avg", "cls", "cls+avg" or "gridNxN".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Pooling {
    /// Mean of the patch tokens.
    Avg,
    /// The [CLS] token.
    Cls,
    /// [CLS] concatenated with the mean of the patch tokens (SimDINO's default).
    ClsAvg,
    /// The means of the patch tokens in each of N x N regions of the token grid (all
    /// slices or frames together), concatenated row by row: keeps where in the image a
    /// pattern is, which one global mean throws away.
    Grid(i64),
}

/// The largest N of `gridNxN`: the token grid of a 128-pixel input is 8 x 8.
pub const MAX_GRID_SIDE: i64 = 8;

impl Pooling {
    pub fn name(self) -> String {
        match self {
            Pooling::Avg => "avg".into(),
            Pooling::Cls => "cls".into(),
            Pooling::ClsAvg => "cls+avg".into(),
            Pooling::Grid(n) => format!("grid{n}x{n}"),
        }
    }

    pub fn parse(name: &str) -> Result<Pooling, String> {
        match name {
            "avg" => return Ok(Pooling::Avg),
            "cls" => return Ok(Pooling::Cls),
            "cls+avg" => return Ok(Pooling::ClsAvg),
            _ => {}
        }
        let side = name
            .strip_prefix("grid")
            .and_then(|rest| rest.split_once('x'))
            .filter(|(a, b)| a == b)
            .and_then(|(a, _)| a.parse::<i64>().ok())
            .filter(|n| (1..=MAX_GRID_SIDE).contains(n));
        side.map(Pooling::Grid).ok_or_else(|| {
            format!(
                "unknown pooling \"{name}\" (avg, cls, cls+avg or gridNxN with N from 1 to {MAX_GRID_SIDE})"
            )
        })
    }
}

impl TryFrom<String> for Pooling {
    type Error = String;
    fn try_from(name: String) -> Result<Pooling, String> {
        Pooling::parse(&name)
    }
}

impl From<Pooling> for String {
    fn from(p: Pooling) -> String {
        p.name()
    }
}

/// ViT widths, depths and head counts of the paper's presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Tiny,
    Small,
    Base,
}

impl Preset {
    /// (width, depth, heads)
    pub fn dims(self) -> (i64, i64, i64) {
        match self {
            Preset::Tiny => (192, 12, 3),
            Preset::Small => (384, 12, 6),
            Preset::Base => (768, 12, 12),
        }
    }

    pub fn parse(name: &str) -> Option<Preset> {
        match name {
            "tiny" => Some(Preset::Tiny),
            "small" => Some(Preset::Small),
            "base" => Some(Preset::Base),
            _ => None,
        }
    }
}

/// The encoder's architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub width: i64,
    pub depth: i64,
    pub heads: i64,
    pub mlp_ratio: f64,
    /// Patch size over (slice, height, width); the channel axis is always whole (3).
    pub patch: [i64; 3],
    /// Whether a [CLS] token is prepended (SimDINO: yes; MAE: no).
    pub cls_token: bool,
}

/// MAE's decoder (the official implementation: 512 wide, 8 deep, 16 heads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub width: i64,
    pub depth: i64,
    pub heads: i64,
    pub mask_ratio: f64,
    pub norm_pix_loss: bool,
}

/// SimDINO's projection head: in -> hidden -> hidden -> out, GELU, L2-normalised output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub hidden: i64,
    pub out: i64,
    /// The coding-rate epsilon: R = 1/2 logdet(I + d / (m eps^2) Z^T Z).
    pub eps: f64,
}

/// The input the model expects: the canonical tensor `3 x S x size x size`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub image_size: i64,
    pub slices_2d: i64,
    pub frames_video: i64,
    pub slices_volume: i64,
}

impl Default for InputSpec {
    fn default() -> Self {
        InputSpec {
            image_size: 256,
            slices_2d: 4,
            frames_video: 16,
            slices_volume: 64,
        }
    }
}

/// Everything needed to rebuild a model, saved with its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Always "m3ret": tells an m3ret model file from any other safetensors file.
    pub format: String,
    pub format_version: u32,
    pub method: Method,
    pub preset: Option<Preset>,
    pub encoder: EncoderConfig,
    pub pooling: Pooling,
    pub decoder: Option<DecoderConfig>,
    pub head: Option<HeadConfig>,
    pub input: InputSpec,
    /// Free-form record of how the model was trained (steps, data, hardware).
    #[serde(default)]
    pub training: serde_json::Value,
    /// Features are the mean of the pooled, L2-normalised outputs of the last this many
    /// blocks (1: the last block only, as the paper evaluates).
    #[serde(default = "one_block", skip_serializing_if = "is_one_block")]
    pub pool_blocks: i64,
    /// Centering and whitening of the pooled features, fitted after training
    /// (`m3ret-train standardize`); its statistics are tensors of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standardize: Option<StandardizeConfig>,
}

fn one_block() -> i64 {
    1
}

fn is_one_block(k: &i64) -> bool {
    *k == 1
}

/// The largest model file m3ret reads: the sizes below, documented in the README's
/// security model. They bound what a model file can make a backend or the model
/// server allocate: the ViT-base preset at 256 pixels and 64 slices (4,096 tokens a
/// CT volume) is well inside them.
pub mod limits {
    pub const MAX_WIDTH: i64 = 2048;
    pub const MAX_DEPTH: i64 = 48;
    pub const MAX_HEADS: i64 = 64;
    pub const MAX_MLP_RATIO: f64 = 8.0;
    pub const MAX_IMAGE_SIZE: i64 = 512;
    pub const MAX_SLICES: i64 = 256;
    /// Tokens of one study, in the layout with the most (2D, video or volume).
    pub const MAX_TOKENS: i64 = 8192;
    pub const MAX_DECODER_WIDTH: i64 = 2048;
    pub const MAX_DECODER_DEPTH: i64 = 32;
    pub const MAX_HEAD_HIDDEN: i64 = 16384;
    pub const MAX_HEAD_OUT: i64 = 65536;
}

impl EncoderConfig {
    /// The encoder's parameter count (its variables' elements): what building it
    /// allocates, known before building it.
    pub fn parameter_count(&self) -> i64 {
        let w = self.width;
        let hidden = self.mlp_hidden();
        let patch = w * 3 * self.patch.iter().product::<i64>() + w;
        let cls = if self.cls_token { w } else { 0 };
        let block = 2 * w
            + (3 * w * w + 3 * w)
            + (w * w + w)
            + 2 * w
            + (hidden * w + hidden)
            + (w * hidden + w);
        patch + cls + self.depth * block + 2 * w
    }

    /// The MLP's hidden width (as the reference ViTs compute it).
    pub fn mlp_hidden(&self) -> i64 {
        (self.width as f64 * self.mlp_ratio) as i64
    }
}

pub const FORMAT: &str = "m3ret";
/// The newest format this build reads. Version 2 added `standardize`: a file that
/// has one says 2, so that an older m3ret refuses it instead of ignoring it.
pub const FORMAT_VERSION: u32 = 2;
/// The version of files without a standardisation (readable by every m3ret).
pub const FORMAT_VERSION_PLAIN: u32 = 1;

impl ModelConfig {
    /// The paper's configuration of a method at a preset: MAE with the official
    /// decoder and mean pooling; SimDINO with [CLS], the 2048-2048-256 head and
    /// [CLS]+mean pooling.
    pub fn new(method: Method, preset: Preset) -> ModelConfig {
        let (width, depth, heads) = preset.dims();
        let encoder = EncoderConfig {
            width,
            depth,
            heads,
            mlp_ratio: 4.0,
            patch: [4, 16, 16],
            cls_token: method == Method::Simdino,
        };
        let (pooling, decoder, head) = match method {
            Method::Mae => (
                Pooling::Avg,
                Some(DecoderConfig {
                    width: 512,
                    depth: 8,
                    heads: 16,
                    mask_ratio: 0.75,
                    norm_pix_loss: false,
                }),
                None,
            ),
            Method::Simdino => (
                Pooling::ClsAvg,
                None,
                Some(HeadConfig {
                    hidden: 2048,
                    out: 256,
                    eps: 0.5,
                }),
            ),
        };
        ModelConfig {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION_PLAIN,
            method,
            preset: Some(preset),
            encoder,
            pooling,
            decoder,
            head,
            input: InputSpec::default(),
            training: serde_json::Value::Null,
            pool_blocks: 1,
            standardize: None,
        }
    }

    /// Dimensions of the pooled encoder output (before any standardisation).
    pub fn feature_dims(&self) -> i64 {
        match self.pooling {
            Pooling::Avg | Pooling::Cls => self.encoder.width,
            Pooling::ClsAvg => 2 * self.encoder.width,
            Pooling::Grid(n) => n * n * self.encoder.width,
        }
    }

    /// Dimensions of the embeddings this model produces.
    pub fn embedding_dims(&self) -> i64 {
        match &self.standardize {
            Some(s) => s.output_dims(self.feature_dims()),
            None => self.feature_dims(),
        }
    }

    /// Checks every size against [`limits`], before anything is allocated for it.
    fn within_limits(&self) -> Result<(), String> {
        use limits::*;
        let (e, i) = (&self.encoder, &self.input);
        let at_most = |what: &str, value: i64, max: i64| {
            if value > max {
                Err(format!("{what} {value} is over m3ret's limit of {max}"))
            } else {
                Ok(())
            }
        };
        at_most("encoder width", e.width, MAX_WIDTH)?;
        at_most("encoder depth", e.depth, MAX_DEPTH)?;
        at_most("encoder heads", e.heads, MAX_HEADS)?;
        if !(e.mlp_ratio > 0.0 && e.mlp_ratio <= MAX_MLP_RATIO) || e.mlp_hidden() < 1 {
            return Err(format!(
                "encoder mlp_ratio {} is not in (0, {MAX_MLP_RATIO}]",
                e.mlp_ratio
            ));
        }
        if i.image_size < 1 {
            return Err(format!("image size {} is not positive", i.image_size));
        }
        at_most("image size", i.image_size, MAX_IMAGE_SIZE)?;
        for (what, s) in [
            ("2D slices", i.slices_2d),
            ("video frames", i.frames_video),
            ("volume slices", i.slices_volume),
        ] {
            if s < 1 {
                return Err(format!("{what} {s} is not positive"));
            }
            at_most(what, s, MAX_SLICES)?;
            let [ps, ph, pw] = e.patch;
            if ps > 0 && ph > 0 && pw > 0 {
                let tokens = (s / ps) * (i.image_size / ph) * (i.image_size / pw);
                at_most(&format!("tokens of a study ({what})"), tokens, MAX_TOKENS)?;
            }
        }
        if let Some(d) = &self.decoder {
            at_most("decoder width", d.width, MAX_DECODER_WIDTH)?;
            at_most("decoder depth", d.depth, MAX_DECODER_DEPTH)?;
            at_most("decoder heads", d.heads, MAX_HEADS)?;
            if d.depth < 1 {
                return Err(format!("decoder depth {} is not positive", d.depth));
            }
        }
        if let Some(h) = &self.head {
            at_most("head hidden width", h.hidden, MAX_HEAD_HIDDEN)?;
            at_most("head output width", h.out, MAX_HEAD_OUT)?;
            if h.hidden < 1 || h.out < 1 {
                return Err(format!("head {h:?} is not valid"));
            }
        }
        Ok(())
    }

    /// Checks the combinations a model cannot be built from.
    pub fn validate(&self) -> Result<(), String> {
        let e = &self.encoder;
        if self.format != FORMAT {
            return Err(format!("format is \"{}\", not \"{FORMAT}\"", self.format));
        }
        if self.format_version > FORMAT_VERSION {
            return Err(format!(
                "format version {} is newer than this m3ret reads ({FORMAT_VERSION})",
                self.format_version
            ));
        }
        if e.width < 1 || e.depth < 1 || e.heads < 1 || e.width % e.heads != 0 {
            return Err(format!(
                "encoder width {} / depth {} / heads {} is not a valid ViT",
                e.width, e.depth, e.heads
            ));
        }
        self.within_limits()?;
        if e.width % 2 != 0 || e.width < 6 {
            return Err(format!(
                "encoder width {} must be even (and at least 6) for the 3-axis sin-cos positions",
                e.width
            ));
        }
        if e.patch.iter().any(|p| *p < 1 || *p > 256) {
            return Err(format!("patch size {:?} out of range", e.patch));
        }
        let i = &self.input;
        for (what, s) in [
            ("2D", i.slices_2d),
            ("video", i.frames_video),
            ("volume", i.slices_volume),
        ] {
            if s % e.patch[0] != 0 {
                return Err(format!(
                    "{what} slices {s} are not a multiple of the slice patch {}",
                    e.patch[0]
                ));
            }
        }
        if i.image_size % e.patch[1] != 0 || i.image_size % e.patch[2] != 0 {
            return Err(format!(
                "image size {} is not a multiple of the patch size {:?}",
                i.image_size, e.patch
            ));
        }
        if matches!(self.pooling, Pooling::Cls | Pooling::ClsAvg) && !e.cls_token {
            return Err("pooling uses [CLS] but the encoder has no [CLS] token".to_string());
        }
        if let Pooling::Grid(side) = self.pooling {
            let tokens = (i.image_size / e.patch[1]).min(i.image_size / e.patch[2]);
            if side > tokens {
                return Err(format!(
                    "pooling {} needs a token grid of at least {side} x {side}, not {tokens} x {tokens}",
                    self.pooling.name()
                ));
            }
        }
        if !(1..=e.depth).contains(&self.pool_blocks) {
            return Err(format!(
                "pool_blocks {} is not between 1 and the depth {}",
                self.pool_blocks, e.depth
            ));
        }
        if let Some(s) = &self.standardize {
            s.validate(self.feature_dims())?;
        }
        if let Some(d) = &self.decoder {
            if d.heads < 1
                || d.width % d.heads != 0
                || d.width % 2 != 0
                || !(0.0..1.0).contains(&d.mask_ratio)
            {
                return Err(format!("decoder {d:?} is not valid"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_names_round_trip_and_bad_ones_are_refused() {
        for name in ["avg", "cls", "cls+avg", "grid2x2", "grid4x4", "grid1x1"] {
            let p: Pooling = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(serde_json::to_value(p).unwrap(), serde_json::json!(name));
        }
        assert_eq!(Pooling::parse("grid2x2"), Ok(Pooling::Grid(2)));
        for bad in ["grid2x4", "grid9x9", "grid0x0", "gridx", "max"] {
            let e = Pooling::parse(bad).unwrap_err();
            assert!(e.contains(&format!("unknown pooling \"{bad}\"")), "{e}");
        }
    }

    #[test]
    fn a_grid_finer_than_the_token_grid_is_refused() {
        let mut c = ModelConfig::new(Method::Mae, Preset::Tiny);
        c.input.image_size = 64;
        c.pooling = Pooling::Grid(4);
        assert!(c.validate().is_ok());
        c.pooling = Pooling::Grid(5);
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("needs a token grid of at least 5 x 5, not 4 x 4"),
            "{e}"
        );
    }
}
