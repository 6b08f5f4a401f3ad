//! guided-diffusion's `UNetModel` (2-D, unconditional) assembled from the layers of
//! [`crate::nn`], configured by the same arguments and loading the same state-dict keys.
//!
//! Structure (for `channel_mult = (m_0, ..., m_L)`, `ch_l = m_l * model_channels`,
//! `E = 4 * model_channels`):
//! - `time_embed.0` Linear(`model_channels -> E`), SiLU, `time_embed.2` Linear(`E -> E`),
//!   applied to the sinusoidal embedding of the (float) timestep;
//! - `input_blocks.0.0`: conv 3x3 `in_channels -> ch_0`; then per level `l`,
//!   `num_res_blocks` blocks `ResBlock(-> ch_l)` (+ `AttentionBlock` when the level's
//!   downsample rate `ds` is in `attention_resolutions`), and between levels a downsampling
//!   block: a `ResBlock(down)` with `resblock_updown`, else `Downsample` (`.op`: conv 3x3
//!   stride 2, or 2x2 average pooling without `conv_resample`);
//! - `middle_block`: ResBlock, AttentionBlock, ResBlock;
//! - `output_blocks`: per level in reverse, `num_res_blocks + 1` blocks, each taking
//!   `cat([h, skip])` (h first, the skip popped from the input blocks' outputs):
//!   `ResBlock(-> ch_l)` (+ attention), and at the last block of every level but the first,
//!   an upsampling layer (`ResBlock(up)` with `resblock_updown`, else `Upsample`: nearest
//!   2x then, with `conv_resample`, `.conv` 3x3);
//! - `out.0` GroupNorm, SiLU, `out.2` conv 3x3 `ch_0 -> out_channels`.
//!
//! Attention heads: `channels / num_head_channels` when `num_head_channels != -1`, else
//! `num_heads` (input and middle blocks) or `num_heads_upsample` (output blocks). The new
//! attention order (`use_new_attention_order`: q, k, v split before the heads) differs
//! from the legacy one only in the order of the `qkv` projection's output rows, so its
//! weights are permuted into the legacy order at load time and one kernel serves both.
//!
//! Inputs are `(N, in_channels, H, W)` with `H`, `W` divisible by `2^L`; timesteps one per
//! sample, as floats (guided-diffusion feeds the integer step index). The VJP is with
//! respect to the input image (the timestep held fixed) and exact through every layer; its
//! activation tape lives only for the duration of the call.

use ndarray::{s, Array1, Array2, Array4, ArrayView2, ArrayView4, Axis};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::nn::{
    avg_pool2x, avg_pool2x_vjp, embed::sinusoidal_embedding, silu, silu_vjp, upsample_nearest2x,
    upsample_nearest2x_vjp, AttentionBlock, Conv2d, GroupNorm, Linear, ResBlock, UpDown,
};

/// `UNetModel`'s constructor arguments, resolved (the `architecture` object of a prior's
/// model card). `attention_resolutions` holds downsample rates `ds` (guided-diffusion's
/// `script_util` converts the pixel sizes of its `--attention_resolutions` flag into these:
/// `image_size / res`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    pub image_size: usize,
    pub in_channels: usize,
    pub model_channels: usize,
    pub out_channels: usize,
    pub num_res_blocks: usize,
    pub attention_resolutions: Vec<usize>,
    pub channel_mult: Vec<f64>,
    pub num_heads: usize,
    pub num_head_channels: i64,
    pub num_heads_upsample: usize,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    pub use_new_attention_order: bool,
    #[serde(default = "default_true")]
    pub conv_resample: bool,
    #[serde(default)]
    pub num_classes: Option<usize>,
    pub learn_sigma: bool,
    #[serde(default = "default_groups")]
    pub group_norm_groups: usize,
    #[serde(default = "default_eps")]
    pub group_norm_eps: f64,
    /// The parameter count a model card declares (checked against the weights at load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_parameters: Option<usize>,
    // The options below generalise guided-diffusion's U-Net to the networks that share its
    // block structure (diffusers' `UNet2DModel`, EDM's `DhariwalUNet`); their defaults are
    // guided-diffusion's, and cards leave them out.
    /// Width of the timestep embedding after `time_embed` (default `4 model_channels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_embed_dim: Option<usize>,
    /// Cosines before sines in the sinusoidal embedding (diffusers' name; guided-diffusion:
    /// true).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub flip_sin_to_cos: bool,
    /// Frequencies `exp(-ln(10000) i / (half - freq_shift))` (diffusers' name; 0 here).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub freq_shift: f64,
    /// EDM's GroupNorm rule: `min(group_norm_groups, channels / this)` groups per layer
    /// (none: `group_norm_groups` everywhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_norm_min_channels: Option<usize>,
    /// Whether the middle block has its attention layer (EDM drops it when the widest level
    /// has fewer channels than one head).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub middle_attention: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn default_true() -> bool {
    true
}
fn default_groups() -> usize {
    32
}
fn default_eps() -> f64 {
    1e-5
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

impl UNetConfig {
    /// The FFHQ-256 configuration of DPS / DDS / deepinv (`ffhq_10m.pt`): 128 channels,
    /// multipliers (1, 1, 2, 2, 4, 4), one residual block per level, attention at 16x16
    /// (ds 16), 64-channel heads, learned sigma, scale-shift norm, resblock up/down.
    pub fn ffhq256() -> UNetConfig {
        UNetConfig {
            image_size: 256,
            in_channels: 3,
            model_channels: 128,
            out_channels: 6,
            num_res_blocks: 1,
            attention_resolutions: vec![16],
            channel_mult: vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
            num_heads: 4,
            num_head_channels: 64,
            num_heads_upsample: 4,
            use_scale_shift_norm: true,
            resblock_updown: true,
            use_new_attention_order: false,
            conv_resample: true,
            num_classes: None,
            learn_sigma: true,
            group_norm_groups: 32,
            group_norm_eps: 1e-5,
            num_parameters: Some(93_563_910),
            ..UNetConfig::guided_diffusion_defaults()
        }
    }

    /// The generalising options at guided-diffusion's values (used to fill configurations
    /// built in code with `..`).
    pub fn guided_diffusion_defaults() -> UNetConfig {
        UNetConfig {
            image_size: 0,
            in_channels: 0,
            model_channels: 0,
            out_channels: 0,
            num_res_blocks: 0,
            attention_resolutions: Vec::new(),
            channel_mult: Vec::new(),
            num_heads: 1,
            num_head_channels: -1,
            num_heads_upsample: 1,
            use_scale_shift_norm: false,
            resblock_updown: false,
            use_new_attention_order: false,
            conv_resample: true,
            num_classes: None,
            learn_sigma: false,
            group_norm_groups: 32,
            group_norm_eps: 1e-5,
            num_parameters: None,
            time_embed_dim: None,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            group_norm_min_channels: None,
            middle_attention: true,
        }
    }

    /// Width of the timestep embedding after `time_embed`.
    pub fn embed_dim(&self) -> usize {
        self.time_embed_dim.unwrap_or(4 * self.model_channels)
    }

    /// The sinusoidal embedding's frequencies (`model_channels / 2` of them).
    pub fn time_frequencies(&self) -> Vec<f32> {
        crate::nn::embed::timestep_frequencies(self.model_channels, 10000.0, self.freq_shift as f32)
    }

    /// GroupNorm groups of a layer over `c` channels.
    pub fn groups_for(&self, c: usize) -> usize {
        match self.group_norm_min_channels {
            Some(m) if m > 0 => self.group_norm_groups.min(c / m),
            _ => self.group_norm_groups,
        }
    }

    /// Whether the GPU twin computes this configuration (it has guided-diffusion's cosine-
    /// first embedding only).
    pub fn runs_on_gpu(&self) -> bool {
        self.flip_sin_to_cos
    }

    /// Channels of level `l`.
    fn level_channels(&self, mult: f64) -> Result<usize> {
        let c = mult * self.model_channels as f64;
        if !(c.is_finite() && c >= 1.0 && c.fract() == 0.0) {
            return Err(invalid(format!(
                "unet: channel multiplier {mult} times model_channels {} is not a whole number of channels",
                self.model_channels
            )));
        }
        Ok(c as usize)
    }

    /// The U-Net's input checks on a shape `(N, C, H, W)` and its timesteps (shared by the
    /// CPU and GPU networks).
    pub(crate) fn check_input_shape(&self, shape: &[usize], timesteps: &[f32]) -> Result<()> {
        let (n, c, h, w) = match *shape {
            [n, c, h, w] => (n, c, h, w),
            _ => (0, 0, 0, 0),
        };
        let d = self.size_divisor();
        if c != self.in_channels || h == 0 || w == 0 || h % d != 0 || w % d != 0 {
            return Err(invalid(format!(
                "unet: expected input (N, {}, H, W) with H and W multiples of {d}, found {:?}",
                self.in_channels, shape
            )));
        }
        if timesteps.len() != n {
            return Err(invalid(format!(
                "unet: {} timestep(s) for a batch of {n}",
                timesteps.len()
            )));
        }
        if let Some(bad) = timesteps.iter().find(|t| !t.is_finite()) {
            return Err(invalid(format!("unet: timestep {bad} is not finite")));
        }
        Ok(())
    }

    /// Checks what the layers cannot check on their own.
    pub fn validate(&self) -> Result<()> {
        if self.channel_mult.is_empty() || self.in_channels == 0 || self.out_channels == 0 {
            return Err(invalid(
                "unet: channel_mult must be non-empty and in/out channels >= 1".into(),
            ));
        }
        // Sizes a config could claim, capped before any layer list or weight is made (a
        // `layers_per_block` of 2^32 would otherwise size the layer plan).
        const MAX_RES_BLOCKS: usize = 64;
        const MAX_LEVELS: usize = 16;
        if self.num_res_blocks > MAX_RES_BLOCKS || self.channel_mult.len() > MAX_LEVELS {
            return Err(Error::TooLarge(format!(
                "unet: {} res blocks per level and {} levels; at most {MAX_RES_BLOCKS} and \
                 {MAX_LEVELS} are read (published networks use up to 3 and 6)",
                self.num_res_blocks,
                self.channel_mult.len()
            )));
        }
        for &m in &self.channel_mult {
            let c = self.level_channels(m)?;
            crate::limits::check_elements("unet: a 3x3 convolution's weights", &[c, c, 3, 3])?;
        }
        crate::limits::check_elements(
            "unet: the input convolution",
            &[self.model_channels, self.in_channels, 3, 3],
        )?;
        crate::limits::check_elements(
            "unet: the output convolution",
            &[self.out_channels, self.model_channels, 3, 3],
        )?;
        if self.num_classes.is_some() {
            return Err(invalid(
                "unet: class-conditional models (num_classes) are not supported; use an unconditional checkpoint".into(),
            ));
        }
        let expect_out = if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        };
        if self.out_channels != expect_out {
            return Err(invalid(format!(
                "unet: out_channels {} does not fit in_channels {} with learn_sigma {} (expected {expect_out})",
                self.out_channels, self.in_channels, self.learn_sigma
            )));
        }
        for &m in &self.channel_mult {
            let c = self.level_channels(m)?;
            let g = self.groups_for(c);
            if g == 0 || c % g != 0 {
                return Err(invalid(format!(
                    "unet: level width {c} is not divisible by the {g} GroupNorm groups"
                )));
            }
        }
        if !(self.freq_shift.is_finite() && (self.freq_shift as usize) < self.model_channels / 2) {
            return Err(invalid(format!(
                "unet: freq_shift {} must be below half the embedding width {}",
                self.freq_shift, self.model_channels
            )));
        }
        if self.embed_dim() == 0 {
            return Err(invalid("unet: time_embed_dim must be >= 1".into()));
        }
        if !self.model_channels.is_multiple_of(2) {
            return Err(invalid(format!(
                "unet: model_channels {} must be even (sinusoidal embedding)",
                self.model_channels
            )));
        }
        Ok(())
    }

    /// Heads of an attention block over `ch` channels (`upsample`: in an output block).
    fn heads(&self, ch: usize, upsample: bool) -> Result<usize> {
        if self.num_head_channels == -1 {
            let h = if upsample {
                self.num_heads_upsample
            } else {
                self.num_heads
            };
            if h == 0 || !ch.is_multiple_of(h) {
                return Err(invalid(format!(
                    "unet: {ch} attention channels cannot be split into {h} heads"
                )));
            }
            return Ok(h);
        }
        let hc = usize::try_from(self.num_head_channels)
            .ok()
            .filter(|&hc| hc > 0 && ch.is_multiple_of(hc))
            .ok_or_else(|| {
                invalid(format!(
                    "unet: {ch} attention channels are not a multiple of num_head_channels {}",
                    self.num_head_channels
                ))
            })?;
        Ok(ch / hc)
    }

    /// The divisor the input's height and width must be a multiple of (`2^(levels - 1)`).
    pub fn size_divisor(&self) -> usize {
        1 << (self.channel_mult.len() - 1)
    }
}

/// Where a network's parameters come from: a weights file, a seeded generator, a recorder.
pub trait ParamSource {
    /// The row-major values of the tensor `key`, which must have `shape` (guided-diffusion's
    /// shape: 1-D convolutions of the attention blocks are `(out, in, 1)`).
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>>;
}

/// Records every key and shape the network asks for, answering with zeros: the list of a
/// configuration's parameters, in construction order.
#[derive(Default, Debug)]
pub struct ShapeRecorder {
    pub entries: Vec<(String, Vec<usize>)>,
}

impl ParamSource for ShapeRecorder {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.entries.push((key.to_string(), shape.to_vec()));
        Ok(vec![0.0; shape.iter().product()])
    }
}

/// One layer of a `TimestepEmbedSequential` block.
#[derive(Debug, Clone)]
pub(crate) enum Layer {
    /// A plain convolution (the input conv, or `Downsample.op`, stride 2).
    Conv(Conv2d),
    Res(Box<ResBlock>),
    Attn(Box<AttentionBlock>),
    /// `Downsample` without a convolution: 2x2 average pooling.
    Pool,
    /// `Upsample`: nearest 2x, then the convolution when present.
    Up(Option<Conv2d>),
}

fn dim4(a: ndarray::ArrayD<f32>) -> Result<Array4<f32>> {
    a.into_dimensionality()
        .map_err(|e| invalid(format!("unet: {e}")))
}

impl Layer {
    /// Forward; with `keep`, also what the VJP would otherwise recompute expensively (a
    /// residual block's first convolution).
    fn forward(
        &self,
        x: ArrayView4<f32>,
        emb: ArrayView2<f32>,
        keep: bool,
    ) -> Result<(Array4<f32>, Option<Array4<f32>>)> {
        let out = match self {
            Layer::Conv(c) => c.forward(x),
            Layer::Res(r) => return r.forward_saving(x, emb, keep),
            Layer::Attn(a) => a.forward(x),
            Layer::Pool => Ok(avg_pool2x(x)),
            Layer::Up(c) => {
                let u = upsample_nearest2x(x);
                match c {
                    Some(c) => c.forward(u.view()),
                    None => Ok(u),
                }
            }
        };
        Ok((out?, None))
    }

    /// VJP at input `x` for the output gradient `dy`; `kept` is what `forward` kept.
    fn vjp(
        &self,
        x: ArrayView4<f32>,
        emb: ArrayView2<f32>,
        kept: Option<ArrayView4<f32>>,
        dy: ArrayView4<f32>,
    ) -> Result<Array4<f32>> {
        let (n, c, h, w) = x.dim();
        match self {
            Layer::Conv(cv) => cv.vjp(h, w, dy),
            Layer::Res(r) => r.vjp(x, emb, kept, dy),
            Layer::Attn(a) => a.vjp(x, dy),
            Layer::Pool => avg_pool2x_vjp([n, c, h, w], dy),
            Layer::Up(cv) => match cv {
                Some(cv) => upsample_nearest2x_vjp(cv.vjp(2 * h, 2 * w, dy)?.view()),
                None => upsample_nearest2x_vjp(dy),
            },
        }
    }
}

/// What the VJP of one layer needs from the forward pass: its input (shared with the skip
/// list when it is an input block's output) and what the layer kept.
struct Saved {
    input: Arc<Array4<f32>>,
    kept: Option<Array4<f32>>,
}

/// A sequence of layers sharing the timestep embedding.
pub(crate) type Block = Vec<Layer>;

/// guided-diffusion's `UNetModel`, inference only.
#[derive(Debug, Clone)]
pub struct UNet {
    config: UNetConfig,
    time_in: Linear,
    time_out: Linear,
    input_blocks: Vec<Block>,
    middle: Block,
    output_blocks: Vec<Block>,
    /// Channels of each input block's output (the skips).
    skip_channels: Vec<usize>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
}

/// Builds layers from a [`ParamSource`] under guided-diffusion's key names.
struct Builder<'a> {
    src: &'a mut dyn ParamSource,
    cfg: &'a UNetConfig,
}

impl Builder<'_> {
    fn conv(&mut self, key: &str, o: usize, i: usize, k: usize, stride: usize) -> Result<Conv2d> {
        let w = self.src.take(&format!("{key}.weight"), &[o, i, k, k])?;
        let b = self.src.take(&format!("{key}.bias"), &[o])?;
        let w = Array4::from_shape_vec((o, i, k, k), w).map_err(|e| invalid(e.to_string()))?;
        Conv2d::new(w, Array1::from(b), stride, k / 2)
    }
    /// A 1-D convolution with kernel 1 (`(o, i, 1)` in the state dict) as a 1x1 Conv2d,
    /// its output rows reordered by `rows` when given.
    fn conv1x1_1d(
        &mut self,
        key: &str,
        o: usize,
        i: usize,
        rows: Option<&[usize]>,
    ) -> Result<Conv2d> {
        let w = self.src.take(&format!("{key}.weight"), &[o, i, 1])?;
        let b = self.src.take(&format!("{key}.bias"), &[o])?;
        let (w, b) = match rows {
            None => (w, b),
            Some(rows) => (
                rows.iter()
                    .flat_map(|&r| w[r * i..(r + 1) * i].iter().copied())
                    .collect(),
                rows.iter().map(|&r| b[r]).collect(),
            ),
        };
        let w = Array4::from_shape_vec((o, i, 1, 1), w).map_err(|e| invalid(e.to_string()))?;
        Conv2d::new(w, Array1::from(b), 1, 0)
    }
    fn linear(&mut self, key: &str, o: usize, i: usize) -> Result<Linear> {
        let w = self.src.take(&format!("{key}.weight"), &[o, i])?;
        let b = self.src.take(&format!("{key}.bias"), &[o])?;
        let w = Array2::from_shape_vec((o, i), w).map_err(|e| invalid(e.to_string()))?;
        Linear::new(w, Array1::from(b))
    }
    fn norm(&mut self, key: &str, c: usize) -> Result<GroupNorm> {
        let w = self.src.take(&format!("{key}.weight"), &[c])?;
        let b = self.src.take(&format!("{key}.bias"), &[c])?;
        GroupNorm::new(
            self.cfg.groups_for(c),
            self.cfg.group_norm_eps as f32,
            Array1::from(w),
            Array1::from(b),
        )
    }
    fn res(&mut self, key: &str, c: usize, o: usize, updown: UpDown) -> Result<ResBlock> {
        let e = self.cfg.embed_dim();
        let ss = self.cfg.use_scale_shift_norm;
        let in_norm = self.norm(&format!("{key}.in_layers.0"), c)?;
        let in_conv = self.conv(&format!("{key}.in_layers.2"), o, c, 3, 1)?;
        let emb = self.linear(
            &format!("{key}.emb_layers.1"),
            if ss { 2 * o } else { o },
            e,
        )?;
        let out_norm = self.norm(&format!("{key}.out_layers.0"), o)?;
        let out_conv = self.conv(&format!("{key}.out_layers.3"), o, o, 3, 1)?;
        let skip = if c == o {
            None
        } else {
            Some(self.conv(&format!("{key}.skip_connection"), o, c, 1, 1)?)
        };
        ResBlock::new(in_norm, in_conv, emb, out_norm, out_conv, skip, ss, updown)
    }
    /// A level's block `key`: `ResBlock(c -> o)` at `key.0`, plus attention at `key.1` when
    /// the downsample rate `ds` is in `attention_resolutions` (`upsample`: an output block).
    fn res_attn(
        &mut self,
        key: &str,
        c: usize,
        o: usize,
        ds: usize,
        upsample: bool,
    ) -> Result<Block> {
        let mut block = vec![Layer::Res(Box::new(self.res(
            &format!("{key}.0"),
            c,
            o,
            UpDown::None,
        )?))];
        if self.cfg.attention_resolutions.contains(&ds) {
            block.push(Layer::Attn(Box::new(self.attn(
                &format!("{key}.1"),
                o,
                upsample,
            )?)));
        }
        Ok(block)
    }
    fn attn(&mut self, key: &str, c: usize, upsample: bool) -> Result<AttentionBlock> {
        let heads = self.cfg.heads(c, upsample)?;
        let norm = self.norm(&format!("{key}.norm"), c)?;
        // New order: row part*c + h*hc + j holds head h's part (q, k, v) channel j; the
        // legacy order wants it at row h*3hc + part*hc + j.
        let hc = c / heads;
        let rows: Option<Vec<usize>> = self.cfg.use_new_attention_order.then(|| {
            (0..heads)
                .flat_map(|h| (0..3).flat_map(move |p| (0..hc).map(move |j| p * c + h * hc + j)))
                .collect()
        });
        let qkv = self.conv1x1_1d(&format!("{key}.qkv"), 3 * c, c, rows.as_deref())?;
        let proj = self.conv1x1_1d(&format!("{key}.proj_out"), c, c, None)?;
        AttentionBlock::new(norm, qkv, heads, proj)
    }
}

impl UNet {
    /// Builds the network of `config`, taking every parameter from `src` in
    /// guided-diffusion's construction order.
    pub fn build(config: UNetConfig, src: &mut dyn ParamSource) -> Result<UNet> {
        config.validate()?;
        let cfg = config.clone();
        let mc = cfg.model_channels;
        let mut b = Builder { src, cfg: &cfg };
        let e = cfg.embed_dim();
        let time_in = b.linear("time_embed.0", e, mc)?;
        let time_out = b.linear("time_embed.2", e, e)?;
        let mut ch = cfg.level_channels(cfg.channel_mult[0])?;
        let input_ch = ch;
        let mut input_blocks = vec![vec![Layer::Conv(b.conv(
            "input_blocks.0.0",
            ch,
            cfg.in_channels,
            3,
            1,
        )?)]];
        let mut skip_channels = vec![ch];
        let mut ds = 1;
        let levels = cfg.channel_mult.len();
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            let out = cfg.level_channels(mult)?;
            for _ in 0..cfg.num_res_blocks {
                let k = format!("input_blocks.{}", input_blocks.len());
                input_blocks.push(b.res_attn(&k, ch, out, ds, false)?);
                ch = out;
                skip_channels.push(ch);
            }
            if level + 1 != levels {
                let k = format!("input_blocks.{}.0", input_blocks.len());
                let layer = if cfg.resblock_updown {
                    Layer::Res(Box::new(b.res(&k, ch, ch, UpDown::Down)?))
                } else if cfg.conv_resample {
                    Layer::Conv(b.conv(&format!("{k}.op"), ch, ch, 3, 2)?)
                } else {
                    Layer::Pool
                };
                input_blocks.push(vec![layer]);
                skip_channels.push(ch);
                ds *= 2;
            }
        }
        let mut middle = vec![Layer::Res(Box::new(b.res(
            "middle_block.0",
            ch,
            ch,
            UpDown::None,
        )?))];
        if cfg.middle_attention {
            middle.push(Layer::Attn(Box::new(b.attn(
                "middle_block.1",
                ch,
                false,
            )?)));
        }
        middle.push(Layer::Res(Box::new(b.res(
            "middle_block.2",
            ch,
            ch,
            UpDown::None,
        )?)));
        let mut output_blocks = Vec::new();
        let mut pending = skip_channels.clone();
        for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
            let out = cfg.level_channels(mult)?;
            for i in 0..=cfg.num_res_blocks {
                let k = format!("output_blocks.{}", output_blocks.len());
                let ich = pending
                    .pop()
                    .ok_or_else(|| invalid("unet: skip bookkeeping".into()))?;
                let mut block = b.res_attn(&k, ch + ich, out, ds, true)?;
                ch = out;
                if level > 0 && i == cfg.num_res_blocks {
                    let kk = format!("{k}.{}", block.len());
                    let layer = if cfg.resblock_updown {
                        Layer::Res(Box::new(b.res(&kk, ch, ch, UpDown::Up)?))
                    } else if cfg.conv_resample {
                        Layer::Up(Some(b.conv(&format!("{kk}.conv"), ch, ch, 3, 1)?))
                    } else {
                        Layer::Up(None)
                    };
                    block.push(layer);
                    ds /= 2;
                }
                output_blocks.push(block);
            }
        }
        let out_norm = b.norm("out.0", ch)?;
        let out_conv = b.conv("out.2", cfg.out_channels, input_ch, 3, 1)?;
        Ok(UNet {
            config,
            time_in,
            time_out,
            input_blocks,
            middle,
            output_blocks,
            skip_channels,
            out_norm,
            out_conv,
        })
    }

    /// Every parameter key of `config` with its shape, in construction order.
    pub fn parameter_shapes(config: &UNetConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let mut rec = ShapeRecorder::default();
        UNet::build(config.clone(), &mut rec)?;
        Ok(rec.entries)
    }

    /// Read-only access to the layers (the GPU twin uploads them): `(time_in, time_out)`.
    pub(crate) fn time_layers(&self) -> (&Linear, &Linear) {
        (&self.time_in, &self.time_out)
    }

    /// `(input_blocks, middle, output_blocks, skip_channels)`.
    pub(crate) fn blocks(&self) -> (&[Block], &[Layer], &[Block], &[usize]) {
        (
            &self.input_blocks,
            &self.middle,
            &self.output_blocks,
            &self.skip_channels,
        )
    }

    /// `(out_norm, out_conv)`.
    pub(crate) fn out_layers(&self) -> (&GroupNorm, &Conv2d) {
        (&self.out_norm, &self.out_conv)
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The timestep embedding after `time_embed`: `(N, embed_dim)`.
    pub fn embed_time(&self, timesteps: &[f32]) -> Result<Array2<f32>> {
        let c = &self.config;
        let t = sinusoidal_embedding(
            timesteps,
            c.model_channels,
            &c.time_frequencies(),
            c.flip_sin_to_cos,
        );
        let h = self.time_in.forward(t.view())?;
        let h = silu(h.into_dyn().view());
        let h = h
            .into_dimensionality()
            .map_err(|e| invalid(format!("unet: {e}")))?;
        self.time_out.forward(h.view())
    }

    fn check_input(&self, x: &ArrayView4<f32>, timesteps: &[f32]) -> Result<()> {
        self.config.check_input_shape(x.shape(), timesteps)
    }

    /// Runs every block; with `tape`, keeps what each layer's VJP needs (execution order)
    /// and, last, the input of the final norm.
    fn run(
        &self,
        x: ArrayView4<f32>,
        emb: ArrayView2<f32>,
        mut tape: Option<&mut Vec<Saved>>,
    ) -> Result<Array4<f32>> {
        let apply = |layers: &Block,
                     mut h: Arc<Array4<f32>>,
                     tape: &mut Option<&mut Vec<Saved>>|
         -> Result<Arc<Array4<f32>>> {
            for layer in layers {
                let (next, kept) = layer.forward(h.view(), emb, tape.is_some())?;
                if let Some(t) = tape.as_deref_mut() {
                    t.push(Saved { input: h, kept });
                }
                h = Arc::new(next);
            }
            Ok(h)
        };
        // Activations are shared (not copied) between the skip list and the tape.
        let mut h = Arc::new(x.to_owned());
        let mut skips = Vec::with_capacity(self.input_blocks.len());
        for block in &self.input_blocks {
            h = apply(block, h, &mut tape)?;
            skips.push(Arc::clone(&h));
        }
        h = apply(&self.middle, h, &mut tape)?;
        for block in &self.output_blocks {
            let skip = skips
                .pop()
                .ok_or_else(|| invalid("unet: skip bookkeeping".into()))?;
            let cat = ndarray::concatenate(Axis(1), &[h.view(), skip.view()])
                .map_err(|e| invalid(format!("unet: skip concat: {e}")))?;
            drop((h, skip));
            h = apply(block, Arc::new(cat), &mut tape)?;
        }
        let a = self.out_norm.forward_silu(h.view().into_dyn())?;
        if let Some(t) = tape {
            t.push(Saved {
                input: h,
                kept: None,
            });
        }
        self.out_conv.forward(dim4(a)?.view())
    }

    /// `model(x, timesteps)`: `(N, in_channels, H, W) -> (N, out_channels, H, W)`.
    pub fn forward(&self, x: ArrayView4<f32>, timesteps: &[f32]) -> Result<Array4<f32>> {
        self.check_input(&x, timesteps)?;
        let emb = self.embed_time(timesteps)?;
        self.run(x, emb.view(), None)
    }

    /// `(model(x, t), d/dx sum(model(x, t) * v))` for a cotangent `v` of the output's shape.
    pub fn forward_vjp(
        &self,
        x: ArrayView4<f32>,
        timesteps: &[f32],
        v: ArrayView4<f32>,
    ) -> Result<(Array4<f32>, Array4<f32>)> {
        let (out, tape) = self.forward_tape(x, timesteps)?;
        let g = tape.backward(v)?;
        Ok((out, g))
    }

    /// `model(x, t)` and the tape of its activations, from which [`UNetTape::backward`]
    /// computes the input VJP for a cotangent chosen after seeing the output (what DPS
    /// needs: its cotangent depends on the output). The tape holds every layer's input; it
    /// is freed when consumed or dropped.
    pub fn forward_tape(
        &self,
        x: ArrayView4<f32>,
        timesteps: &[f32],
    ) -> Result<(Array4<f32>, UNetTape<'_>)> {
        self.check_input(&x, timesteps)?;
        let emb = self.embed_time(timesteps)?;
        let mut saved = Vec::new();
        let out = self.run(x, emb.view(), Some(&mut saved))?;
        let out_shape = out.dim();
        Ok((
            out,
            UNetTape {
                unet: self,
                emb,
                saved,
                out_shape,
            },
        ))
    }
}

/// The activations of one forward pass of a [`UNet`], kept for its VJP.
pub struct UNetTape<'a> {
    unet: &'a UNet,
    emb: Array2<f32>,
    saved: Vec<Saved>,
    out_shape: (usize, usize, usize, usize),
}

impl UNetTape<'_> {
    /// `d/dx sum(model(x, t) * v)` for the forward pass this tape recorded.
    pub fn backward(mut self, v: ArrayView4<f32>) -> Result<Array4<f32>> {
        let (n, c, h, w) = self.out_shape;
        crate::nn::same_shape("unet", "cotangent", &[n, c, h, w], v.shape())?;
        let net = self.unet;
        let emb = self.emb.view();
        let tape = &mut self.saved;
        let mut pop = || {
            tape.pop()
                .ok_or_else(|| invalid("unet: tape underflow".into()))
        };
        // out = out_conv(silu(out_norm(h)))
        let h = pop()?.input;
        let (_, _, hh, ww) = h.dim();
        let a = net.out_norm.forward(h.view().into_dyn())?;
        let g = net.out_conv.vjp(hh, ww, v)?;
        let g = silu_vjp(a.view(), g.into_dyn().view())?;
        let mut g = dim4(net.out_norm.vjp(h.view().into_dyn(), g.view())?)?;
        drop((h, a));
        let back = |layers: &Block,
                    mut g: Array4<f32>,
                    pop: &mut dyn FnMut() -> Result<Saved>|
         -> Result<Array4<f32>> {
            for layer in layers.iter().rev() {
                let s = pop()?;
                g = layer.vjp(
                    s.input.view(),
                    emb,
                    s.kept.as_ref().map(|k| k.view()),
                    g.view(),
                )?;
            }
            Ok(g)
        };
        let n_in = net.input_blocks.len();
        // Gradients of the skips: the whole concatenated gradient, read from channel
        // `split` on.
        let mut skip_grads: Vec<Option<(Array4<f32>, usize)>> = vec![None; n_in];
        for (j, block) in net.output_blocks.iter().enumerate().rev() {
            let gc = back(block, g, &mut pop)?;
            let i = n_in - 1 - j;
            let split = gc.dim().1 - net.skip_channels[i];
            g = gc.slice(s![.., ..split, .., ..]).to_owned();
            skip_grads[i] = Some((gc, split));
        }
        g = back(&net.middle, g, &mut pop)?;
        for (i, block) in net.input_blocks.iter().enumerate().rev() {
            if let Some((sg, split)) = skip_grads[i].take() {
                g += &sg.slice(s![.., split.., .., ..]);
            }
            g = back(block, g, &mut pop)?;
        }
        Ok(g)
    }
}
