//! EDM's `SongUNet` (Karras et al. 2022, `training/networks.py`): the DDPM++ and NCSN++
//! architectures of Song et al. 2021 as EDM re-implements them, with EDM's parameter names.
//!
//! Its blocks are guided-diffusion's residual block ([`ResBlock`] without scale-shift:
//! `h = conv1(silu(norm1(conv0(silu(norm0(x))) + affine(emb))))`, plus the skip) with four
//! differences carried here: every block's output is scaled by `skip_scale = sqrt(1/2)`
//! (after the residual sum, and again after the attention's); up/down blocks resample by
//! the FIR filter `resample_filter` ([`Fir`]: `[1, 1]` for DDPM++, `[1, 3, 3, 1]` for
//! NCSN++) and always project their skip by a 1x1 convolution (`resample_proj`); GroupNorm
//! uses `min(32, C / 4)` groups and eps 1e-6; attention has one head (`qkv` rows stored
//! interleaved per channel, reordered at load).
//!
//! The structure (EDM's `enc` / `dec` module dicts, run in order as a program of `Step`s):
//! - mapping: `emb = map_layer1(silu(map_layer0(e)))` (the blocks apply the last SiLU),
//!   where `e` is the noise label's positional embedding (`endpoint=True`: frequencies
//!   `10000^(-i / (C/2 - 1))`) or, for NCSN++, its Fourier embedding (`2 pi freqs`, a stored
//!   random buffer), over `model_channels * channel_mult_noise` channels, sines first;
//! - encoder, level by level: level 0 a 3x3 convolution to `model_channels` (narrower than
//!   level 0's blocks when `channel_mult[0] > 1`), other levels a down block; NCSN++'s
//!   `residual` encoder then adds `aux_residual` (`x = aux = (x + down(conv(aux))) / sqrt 2`,
//!   `aux` starting as the input image, the convolution padded by both radii before an
//!   unpadded filter: EDM's fused resampling), the `skip` encoder `aux_down` and `aux_skip`
//!   (`x += conv1x1(aux)`); then `num_blocks` blocks, with attention at every block of a
//!   resolution in `attn_resolutions`. Every non-aux output is a skip (an aux step replaces
//!   the newest);
//! - decoder: `in0` (always with attention) and `in1` at the lowest resolution, an up block
//!   at the others, then `num_blocks + 1` blocks each taking `cat([x, skip])`, attention only
//!   in the last block of a listed resolution; the output is `aux_conv(silu(aux_norm(x)))`
//!   at level 0 (`standard` decoder) or, for the `skip` decoder, the sum over levels of each
//!   level's head, the running sum upsampled by `aux_up` between levels.
//!
//! Class labels (`label_dim`) are not supported; augmentation labels (`augment_dim`, what
//! EDM's CIFAR-10 models were trained with) are accepted and unused, as at EDM's sampling,
//! which passes none. The VJP is with respect to the input image, exact through every step.

use std::borrow::Cow;
use std::sync::Arc;

use ndarray::{s, Array1, Array2, Array4, ArrayView2, ArrayView4, Axis};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::fir::Fir;
use crate::nn::layout::{legacy_order, permute_rows};
use crate::nn::unet::ParamSource;
use crate::nn::{silu_vjp, AttentionBlock, Conv2d, GroupNorm, Linear, ResBlock, UpDown};

/// The noise-level embedding (`embedding_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingType {
    /// DDPM++'s sinusoidal embedding.
    #[default]
    Positional,
    /// NCSN++'s random Fourier features.
    Fourier,
}

/// The encoder's auxiliary path (`encoder_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderType {
    /// None (DDPM++).
    #[default]
    Standard,
    /// The input image downsampled and added by a 1x1 convolution at every level.
    Skip,
    /// A strided residual path from the input image (NCSN++).
    Residual,
}

/// The decoder's output path (`decoder_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderType {
    /// One output head at full resolution (DDPM++ and NCSN++).
    #[default]
    Standard,
    /// An output head per level, summed and upsampled.
    Skip,
}

/// `SongUNet`'s constructor arguments (EDM's names and defaults; `img_resolution`,
/// `in_channels` and `out_channels` come from the preconditioning wrapper).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SongConfig {
    pub img_resolution: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    #[serde(default)]
    pub label_dim: usize,
    /// Width of the augmentation labels the network was trained with (0: none; EDM's
    /// CIFAR-10 models: 9). Unused at inference.
    #[serde(default)]
    pub augment_dim: usize,
    #[serde(default = "defaults::model_channels")]
    pub model_channels: usize,
    #[serde(default = "defaults::channel_mult")]
    pub channel_mult: Vec<usize>,
    #[serde(default = "defaults::four")]
    pub channel_mult_emb: usize,
    #[serde(default = "defaults::four")]
    pub num_blocks: usize,
    #[serde(default = "defaults::attn_resolutions")]
    pub attn_resolutions: Vec<usize>,
    /// Training only (recorded, no effect).
    #[serde(default)]
    pub dropout: f64,
    /// Training only (recorded, no effect).
    #[serde(default)]
    pub label_dropout: f64,
    #[serde(default)]
    pub embedding_type: EmbeddingType,
    #[serde(default = "defaults::one")]
    pub channel_mult_noise: usize,
    #[serde(default)]
    pub encoder_type: EncoderType,
    #[serde(default)]
    pub decoder_type: DecoderType,
    #[serde(default = "defaults::box_filter")]
    pub resample_filter: Vec<f64>,
    /// The number of stored values (parameters and buffers), checked at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_parameters: Option<usize>,
}

mod defaults {
    pub fn model_channels() -> usize {
        128
    }
    pub fn channel_mult() -> Vec<usize> {
        vec![1, 2, 2, 2]
    }
    pub fn four() -> usize {
        4
    }
    pub fn one() -> usize {
        1
    }
    pub fn attn_resolutions() -> Vec<usize> {
        vec![16]
    }
    pub fn box_filter() -> Vec<f64> {
        vec![1.0, 1.0]
    }
}

/// Every block's output scale (`skip_scale`).
const SKIP_SCALE: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// GroupNorm eps of SongUNet's blocks and output head.
const NORM_EPS: f32 = 1e-6;

fn invalid(m: String) -> Error {
    Error::Invalid(format!("EDM SongUNet: {m}"))
}

impl SongConfig {
    /// EDM's `--arch ddpmpp` or `--arch ncsnpp` (train.py: 128 channels, multipliers
    /// `[2, 2, 2]`, and SongUNet's defaults otherwise) for images of `channels` x
    /// `img_resolution`^2.
    pub fn preset(name: &str, img_resolution: usize, channels: usize) -> Result<SongConfig> {
        let base = SongConfig {
            img_resolution,
            in_channels: channels,
            out_channels: channels,
            label_dim: 0,
            augment_dim: 0,
            model_channels: 128,
            channel_mult: vec![2, 2, 2],
            channel_mult_emb: 4,
            num_blocks: 4,
            attn_resolutions: vec![16],
            dropout: 0.0,
            label_dropout: 0.0,
            embedding_type: EmbeddingType::Positional,
            channel_mult_noise: 1,
            encoder_type: EncoderType::Standard,
            decoder_type: DecoderType::Standard,
            resample_filter: vec![1.0, 1.0],
            num_parameters: None,
        };
        match name {
            "ddpmpp" => Ok(base),
            "ncsnpp" => Ok(SongConfig {
                embedding_type: EmbeddingType::Fourier,
                channel_mult_noise: 2,
                encoder_type: EncoderType::Residual,
                resample_filter: vec![1.0, 3.0, 3.0, 1.0],
                ..base
            }),
            other => Err(Error::Invalid(format!(
                "SongUNet preset `{other}`: expected ddpmpp or ncsnpp"
            ))),
        }
    }

    /// Checks what the layers cannot check on their own.
    pub fn check(&self) -> Result<()> {
        if self.label_dim != 0 {
            return Err(Error::Unsupported(format!(
                "EDM SongUNet: `label_dim` = {} is not supported (expected 0: unconditional)",
                self.label_dim
            )));
        }
        if self.channel_mult.is_empty()
            || self.channel_mult.contains(&0)
            || self.model_channels == 0
            || self.channel_mult_emb == 0
            || self.in_channels == 0
            || self.out_channels == 0
        {
            return Err(invalid(
                "channel_mult must be non-empty with positive entries, and model_channels, channel_mult_emb, in/out channels >= 1".into(),
            ));
        }
        let noise = self.noise_channels();
        if noise < 4 || !noise.is_multiple_of(2) {
            return Err(invalid(format!(
                "model_channels * channel_mult_noise = {noise}: the noise embedding needs an even width >= 4"
            )));
        }
        let d = self.size_divisor();
        if self.img_resolution == 0 || !self.img_resolution.is_multiple_of(d) {
            return Err(invalid(format!(
                "img_resolution {} is not a positive multiple of {d} as {} levels need",
                self.img_resolution,
                self.channel_mult.len()
            )));
        }
        Fir::new(&self.resample_filter)?;
        Ok(())
    }

    /// Image sides must be multiples of this.
    pub fn size_divisor(&self) -> usize {
        1 << (self.channel_mult.len().max(1) - 1)
    }

    fn noise_channels(&self) -> usize {
        self.model_channels * self.channel_mult_noise
    }

    fn emb_channels(&self) -> usize {
        self.model_channels * self.channel_mult_emb
    }

    fn check_input(&self, shape: &[usize], labels: &[f32]) -> Result<()> {
        let d = self.size_divisor();
        let ok = matches!(*shape, [_, c, h, w] if c == self.in_channels && h > 0 && w > 0 && h % d == 0 && w % d == 0);
        if !ok {
            return Err(Error::Shape(format!(
                "EDM SongUNet: expected input (N, {}, H, W) with H and W positive multiples of {d}, found {shape:?}",
                self.in_channels
            )));
        }
        if labels.len() != shape[0] {
            return Err(Error::Shape(format!(
                "EDM SongUNet: {} noise label(s) for a batch of {}",
                labels.len(),
                shape[0]
            )));
        }
        if let Some(bad) = labels.iter().find(|t| !t.is_finite()) {
            return Err(Error::NonFinite(format!(
                "EDM SongUNet: noise label {bad} is not finite"
            )));
        }
        Ok(())
    }
}

/// EDM's `UNetBlock` as SongUNet configures it: a residual block, optional one-head
/// attention, each followed by the scale `sqrt(1/2)`.
#[derive(Debug, Clone)]
struct SongBlock {
    res: ResBlock,
    attn: Option<AttentionBlock>,
}

/// What a block's VJP reuses from its forward pass: the first convolution's output and
/// the attention's input.
#[derive(Debug, Default)]
struct BlockKept {
    h1: Option<Array4<f32>>,
    mid: Option<Array4<f32>>,
}

impl SongBlock {
    fn in_channels(&self) -> usize {
        self.res.in_norm.weight.len()
    }

    fn forward(
        &self,
        x: ArrayView4<f32>,
        emb: ArrayView2<f32>,
        keep: bool,
    ) -> Result<(Array4<f32>, BlockKept)> {
        let (mut h, h1) = self.res.forward_saving(x, emb, keep)?;
        h *= SKIP_SCALE;
        let mut mid = None;
        if let Some(a) = &self.attn {
            let mut y = a.forward(h.view())?;
            y *= SKIP_SCALE;
            let m = std::mem::replace(&mut h, y);
            mid = keep.then_some(m);
        }
        Ok((h, BlockKept { h1, mid }))
    }

    fn vjp(
        &self,
        x: ArrayView4<f32>,
        emb: ArrayView2<f32>,
        kept: &BlockKept,
        dy: ArrayView4<f32>,
    ) -> Result<Array4<f32>> {
        let mut g = dy.mapv(|v| v * SKIP_SCALE);
        if let Some(a) = &self.attn {
            let mid = match &kept.mid {
                Some(m) => Cow::Borrowed(m),
                None => Cow::Owned(self.res.forward(x, emb)? * SKIP_SCALE),
            };
            g = a.vjp(mid.view(), g.view())?;
            g *= SKIP_SCALE;
        }
        self.res
            .vjp(x, emb, kept.h1.as_ref().map(|h| h.view()), g.view())
    }
}

/// One entry of EDM's `enc` / `dec` module dicts (see the module docs).
#[derive(Debug, Clone)]
enum Step {
    /// `x = conv(x)`; a new skip.
    Conv(Conv2d),
    /// `x = block(x)`, after `x = cat([x, skips.pop()])` when the block is wider (decoder);
    /// a new skip (encoder).
    Block(Box<SongBlock>),
    /// `aux = down(aux)`.
    AuxDown(Fir),
    /// `x = skips[-1] = x + conv(aux)`.
    AuxSkip(Conv2d),
    /// `x = skips[-1] = aux = (x + down_valid(conv(aux))) / sqrt 2`.
    AuxResidual { conv: Conv2d, fir: Fir },
    /// `aux = up(aux)`.
    AuxUp(Fir),
    /// `aux = conv(silu(norm(x))) (+ aux)`.
    AuxOut { norm: GroupNorm, conv: Conv2d },
}

/// What the VJP of one step needs from the forward pass.
#[derive(Default)]
struct Saved {
    /// The step's `x` input (after a decoder block's concatenation).
    x: Option<Arc<Array4<f32>>>,
    kept: BlockKept,
    /// The shape of the step's `aux` input.
    aux_shape: [usize; 4],
    /// The skip written (encoder) or concatenated (decoder), and for a concatenation the
    /// width of `x` before it.
    skip: Option<usize>,
    split: usize,
    /// Whether `aux` existed before an output head added to it.
    had_aux: bool,
}

/// The running values of the program.
struct State {
    x: Arc<Array4<f32>>,
    aux: Option<Arc<Array4<f32>>>,
    skips: Vec<Arc<Array4<f32>>>,
}

/// EDM's `SongUNet`, inference only.
#[derive(Debug, Clone)]
pub struct SongUNet {
    config: SongConfig,
    /// Angular frequencies of the noise embedding (`noise_channels / 2`), in f64: arguments
    /// reach ~1e3 rad (VP labels up to 999, NCSN++'s frequencies ~16 x 2 pi), where f32
    /// would lose ~1e-4 of each angle.
    freqs: Vec<f64>,
    map_layer0: Linear,
    map_layer1: Linear,
    enc: Vec<Step>,
    dec: Vec<Step>,
    n_skips: usize,
}

fn bookkeeping(what: &str) -> Error {
    Error::Invalid(format!("EDM SongUNet: internal bookkeeping ({what})"))
}

fn dim4(a: ndarray::ArrayD<f32>) -> Result<Array4<f32>> {
    a.into_dimensionality()
        .map_err(|e| Error::Shape(format!("EDM SongUNet: {e}")))
}

fn add_into(acc: &mut Option<Array4<f32>>, g: Array4<f32>) {
    match acc {
        Some(a) => *a += &g,
        None => *acc = Some(g),
    }
}

/// Takes the parameters of a `SongUNet` under EDM's names.
struct Builder<'a> {
    src: &'a mut dyn ParamSource,
    prefix: &'a str,
    fir: Fir,
}

impl Builder<'_> {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.src.take(&format!("{}{key}", self.prefix), shape)
    }
    fn conv(&mut self, key: &str, o: usize, i: usize, k: usize, pad: usize) -> Result<Conv2d> {
        let w = self.take(&format!("{key}.weight"), &[o, i, k, k])?;
        let b = self.take(&format!("{key}.bias"), &[o])?;
        let w = Array4::from_shape_vec((o, i, k, k), w).map_err(|e| invalid(e.to_string()))?;
        Conv2d::new(w, Array1::from(b), 1, pad)
    }
    fn linear(&mut self, key: &str, o: usize, i: usize) -> Result<Linear> {
        let w = self.take(&format!("{key}.weight"), &[o, i])?;
        let b = self.take(&format!("{key}.bias"), &[o])?;
        let w = Array2::from_shape_vec((o, i), w).map_err(|e| invalid(e.to_string()))?;
        Linear::new(w, Array1::from(b))
    }
    fn norm(&mut self, key: &str, c: usize) -> Result<GroupNorm> {
        let w = self.take(&format!("{key}.weight"), &[c])?;
        let b = self.take(&format!("{key}.bias"), &[c])?;
        GroupNorm::new((c / 4).min(32), NORM_EPS, Array1::from(w), Array1::from(b))
    }
    /// Checks the `resample_filter` buffer EDM stores for a resampling layer `key` against
    /// the configured filter (to f16 rounding) and returns the filter.
    fn filter(&mut self, key: &str) -> Result<Fir> {
        let k = self.fir.taps();
        let name = format!("{key}.resample_filter");
        let stored = self.take(&name, &[1, 1, k, k])?;
        let want = self.fir.kernel_2d();
        if stored
            .iter()
            .zip(&want)
            .any(|(s, w)| (s - w).abs() > 1e-3 * w.abs())
        {
            return Err(Error::Unsupported(format!(
                "EDM SongUNet: `{}{name}` holds {stored:?}, but the configured resample_filter gives {want:?}; the configuration disagrees with the weights",
                self.prefix
            )));
        }
        Ok(self.fir.clone())
    }
    /// `UNetBlock(cin -> cout)` at `key` with SongUNet's settings.
    fn block(
        &mut self,
        key: &str,
        cin: usize,
        cout: usize,
        emb: usize,
        updown: UpDown,
        attention: bool,
    ) -> Result<SongBlock> {
        let resampled = updown != UpDown::None;
        let norm0 = self.norm(&format!("{key}.norm0"), cin)?;
        let conv0 = self.conv(&format!("{key}.conv0"), cout, cin, 3, 1)?;
        if resampled {
            self.filter(&format!("{key}.conv0"))?;
        }
        let affine = self.linear(&format!("{key}.affine"), cout, emb)?;
        let norm1 = self.norm(&format!("{key}.norm1"), cout)?;
        let conv1 = self.conv(&format!("{key}.conv1"), cout, cout, 3, 1)?;
        let skip = if cout != cin || resampled {
            let s = self.conv(&format!("{key}.skip"), cout, cin, 1, 0)?;
            if resampled {
                self.filter(&format!("{key}.skip"))?;
            }
            Some(s)
        } else {
            None
        };
        let res = ResBlock::new(norm0, conv0, affine, norm1, conv1, skip, false, updown)?
            .with_filter(self.fir.clone());
        let attn = if attention {
            let norm = self.norm(&format!("{key}.norm2"), cout)?;
            let (w, b) = (
                self.take(&format!("{key}.qkv.weight"), &[3 * cout, cout, 1, 1])?,
                self.take(&format!("{key}.qkv.bias"), &[3 * cout])?,
            );
            // EDM's rows: channel j, part p at 3 j + p (one head).
            let order = legacy_order(cout, 1, |h, p, j, d| h * 3 * d + 3 * j + p);
            let w = Array4::from_shape_vec((3 * cout, cout, 1, 1), permute_rows(&w, cout, &order))
                .map_err(|e| invalid(e.to_string()))?;
            let qkv = Conv2d::new(w, Array1::from(permute_rows(&b, 1, &order)), 1, 0)?;
            let proj = self.conv(&format!("{key}.proj"), cout, cout, 1, 0)?;
            Some(AttentionBlock::new(norm, qkv, 1, proj)?)
        } else {
            None
        };
        Ok(SongBlock { res, attn })
    }
}

impl SongUNet {
    /// Builds the network of `config`, taking every parameter and buffer from `src` under
    /// EDM's names preceded by `prefix` (`model.` for a preconditioning wrapper's state dict).
    pub fn build(config: SongConfig, src: &mut dyn ParamSource, prefix: &str) -> Result<SongUNet> {
        config.check()?;
        let cfg = &config;
        let fir = Fir::new(&cfg.resample_filter)?;
        let mut b = Builder {
            src,
            prefix,
            fir: fir.clone(),
        };
        let (noise, emb) = (cfg.noise_channels(), cfg.emb_channels());
        let half = noise / 2;
        let freqs = match cfg.embedding_type {
            EmbeddingType::Positional => (0..half)
                .map(|i| 10000f64.powf(-(i as f64) / (half - 1) as f64))
                .collect(),
            EmbeddingType::Fourier => b
                .take("map_noise.freqs", &[half])?
                .iter()
                .map(|&f| 2.0 * std::f64::consts::PI * f as f64)
                .collect(),
        };
        if cfg.augment_dim > 0 {
            b.take("map_augment.weight", &[noise, cfg.augment_dim])?;
        }
        let map_layer0 = b.linear("map_layer0", emb, noise)?;
        let map_layer1 = b.linear("map_layer1", emb, emb)?;
        let mc = cfg.model_channels;
        let levels = cfg.channel_mult.len();
        let fpad = (fir.taps() - 1) / 2;
        let mut enc = Vec::new();
        let mut skips = Vec::new();
        let (mut cout, mut caux) = (cfg.in_channels, cfg.in_channels);
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            let r = cfg.img_resolution >> level;
            let name = |what: &str| format!("enc.{r}x{r}_{what}");
            if level == 0 {
                enc.push(Step::Conv(b.conv(&name("conv"), mc, cout, 3, 1)?));
                cout = mc;
                skips.push(cout);
            } else {
                let blk = b.block(&name("down"), cout, cout, emb, UpDown::Down, false)?;
                enc.push(Step::Block(Box::new(blk)));
                skips.push(cout);
                match cfg.encoder_type {
                    EncoderType::Standard => {}
                    EncoderType::Skip => {
                        enc.push(Step::AuxDown(b.filter(&name("aux_down"))?));
                        enc.push(Step::AuxSkip(b.conv(
                            &name("aux_skip"),
                            cout,
                            caux,
                            1,
                            0,
                        )?));
                    }
                    EncoderType::Residual => {
                        let key = name("aux_residual");
                        let conv = b.conv(&key, cout, caux, 3, 1 + fpad)?;
                        let fir = b.filter(&key)?;
                        enc.push(Step::AuxResidual { conv, fir });
                        caux = cout;
                    }
                }
            }
            let attention = cfg.attn_resolutions.contains(&r);
            for i in 0..cfg.num_blocks {
                let cin = cout;
                cout = mc * mult;
                let blk = b.block(
                    &name(&format!("block{i}")),
                    cin,
                    cout,
                    emb,
                    UpDown::None,
                    attention,
                )?;
                enc.push(Step::Block(Box::new(blk)));
                skips.push(cout);
            }
        }
        let n_skips = skips.len();
        let mut dec = Vec::new();
        for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
            let r = cfg.img_resolution >> level;
            let name = |what: &str| format!("dec.{r}x{r}_{what}");
            if level == levels - 1 {
                let in0 = b.block(&name("in0"), cout, cout, emb, UpDown::None, true)?;
                let in1 = b.block(&name("in1"), cout, cout, emb, UpDown::None, false)?;
                dec.push(Step::Block(Box::new(in0)));
                dec.push(Step::Block(Box::new(in1)));
            } else {
                let up = b.block(&name("up"), cout, cout, emb, UpDown::Up, false)?;
                dec.push(Step::Block(Box::new(up)));
            }
            for i in 0..=cfg.num_blocks {
                let cin = cout + skips.pop().ok_or_else(|| bookkeeping("skip widths"))?;
                cout = mc * mult;
                let attention = i == cfg.num_blocks && cfg.attn_resolutions.contains(&r);
                let blk = b.block(
                    &name(&format!("block{i}")),
                    cin,
                    cout,
                    emb,
                    UpDown::None,
                    attention,
                )?;
                dec.push(Step::Block(Box::new(blk)));
            }
            let skip_decoder = cfg.decoder_type == DecoderType::Skip;
            if skip_decoder || level == 0 {
                if skip_decoder && level < levels - 1 {
                    dec.push(Step::AuxUp(b.filter(&name("aux_up"))?));
                }
                let norm = b.norm(&name("aux_norm"), cout)?;
                let conv = b.conv(&name("aux_conv"), cfg.out_channels, cout, 3, 1)?;
                dec.push(Step::AuxOut { norm, conv });
            }
        }
        Ok(SongUNet {
            config,
            freqs,
            map_layer0,
            map_layer1,
            enc,
            dec,
            n_skips,
        })
    }

    pub fn config(&self) -> &SongConfig {
        &self.config
    }

    /// `map_layer1(silu(map_layer0(e)))` for the noise labels: `(N, emb_channels)` (the
    /// blocks apply the final SiLU).
    pub fn embed(&self, labels: &[f32]) -> Result<Array2<f32>> {
        let half = self.freqs.len();
        let mut e = Array2::zeros((labels.len(), 2 * half));
        for (mut row, &t) in e.outer_iter_mut().zip(labels) {
            for (i, &f) in self.freqs.iter().enumerate() {
                let a = t as f64 * f;
                row[i] = a.sin() as f32;
                row[half + i] = a.cos() as f32;
            }
        }
        let h = self.map_layer0.forward(e.view())?;
        let h = h.mapv(crate::nn::act::silu1);
        self.map_layer1.forward(h.view())
    }

    /// Runs `steps` on `st`; with `tape`, records what each step's VJP needs.
    fn run(
        &self,
        steps: &[Step],
        encoder: bool,
        st: &mut State,
        emb: ArrayView2<f32>,
        mut tape: Option<&mut Vec<Saved>>,
    ) -> Result<()> {
        let keep = tape.is_some();
        let aux_of = |st: &State| st.aux.clone().ok_or_else(|| bookkeeping("aux path"));
        for step in steps {
            let mut rec = Saved::default();
            match step {
                Step::Conv(c) => {
                    let y = c.forward(st.x.view())?;
                    rec.x = Some(std::mem::replace(&mut st.x, Arc::new(y)));
                    rec.skip = Some(st.skips.len());
                    st.skips.push(Arc::clone(&st.x));
                }
                Step::Block(blk) => {
                    if !encoder && st.x.dim().1 != blk.in_channels() {
                        let skip = st.skips.pop().ok_or_else(|| bookkeeping("skips"))?;
                        rec.skip = Some(st.skips.len());
                        rec.split = st.x.dim().1;
                        let cat = ndarray::concatenate(Axis(1), &[st.x.view(), skip.view()])
                            .map_err(|e| Error::Shape(format!("EDM SongUNet: skip concat: {e}")))?;
                        st.x = Arc::new(cat);
                    }
                    let (y, kept) = blk.forward(st.x.view(), emb, keep)?;
                    rec.kept = kept;
                    rec.x = Some(std::mem::replace(&mut st.x, Arc::new(y)));
                    if encoder {
                        rec.skip = Some(st.skips.len());
                        st.skips.push(Arc::clone(&st.x));
                    }
                }
                Step::AuxDown(fir) => {
                    let a = aux_of(st)?;
                    rec.aux_shape = shape4(&a);
                    st.aux = Some(Arc::new(fir.down2x(a.view())?));
                }
                Step::AuxSkip(conv) => {
                    let a = aux_of(st)?;
                    rec.aux_shape = shape4(&a);
                    let mut y = st.x.as_ref().clone();
                    conv.forward_add(a.view(), &mut y)?;
                    self.replace_skip(st, Arc::new(y), &mut rec)?;
                }
                Step::AuxResidual { conv, fir } => {
                    let a = aux_of(st)?;
                    rec.aux_shape = shape4(&a);
                    let mut y = fir.down2x_valid(conv.forward(a.view())?.view())?;
                    crate::nn::same_shape(
                        "EDM SongUNet aux_residual",
                        "output",
                        st.x.shape(),
                        y.shape(),
                    )?;
                    y.zip_mut_with(&st.x, |o, &x| *o = (*o + x) * SKIP_SCALE);
                    let y = Arc::new(y);
                    st.aux = Some(Arc::clone(&y));
                    self.replace_skip(st, y, &mut rec)?;
                }
                Step::AuxUp(fir) => {
                    let a = aux_of(st)?;
                    rec.aux_shape = shape4(&a);
                    st.aux = Some(Arc::new(fir.up2x(a.view())));
                }
                Step::AuxOut { norm, conv } => {
                    let a = dim4(norm.forward_silu(st.x.view().into_dyn())?)?;
                    let mut out = match st.aux.take() {
                        Some(prev) => {
                            rec.had_aux = true;
                            Arc::try_unwrap(prev).unwrap_or_else(|p| p.as_ref().clone())
                        }
                        None => {
                            Array4::zeros((st.x.dim().0, conv.out_channels(), a.dim().2, a.dim().3))
                        }
                    };
                    conv.forward_add(a.view(), &mut out)?;
                    st.aux = Some(Arc::new(out));
                    rec.x = Some(Arc::clone(&st.x));
                }
            }
            if let Some(t) = tape.as_deref_mut() {
                t.push(rec);
            }
        }
        Ok(())
    }

    /// `x = skips[-1] = y` (an aux step of the encoder).
    fn replace_skip(&self, st: &mut State, y: Arc<Array4<f32>>, rec: &mut Saved) -> Result<()> {
        let last = st.skips.last_mut().ok_or_else(|| bookkeeping("skips"))?;
        *last = Arc::clone(&y);
        rec.skip = Some(st.skips.len() - 1);
        st.x = y;
        Ok(())
    }

    /// The forward pass, recording into `tape` when given.
    fn run_all(
        &self,
        x: ArrayView4<f32>,
        labels: &[f32],
        tape: Option<&mut Vec<Saved>>,
    ) -> Result<(Array4<f32>, Array2<f32>)> {
        self.config.check_input(x.shape(), labels)?;
        let emb = self.embed(labels)?;
        let input = Arc::new(x.to_owned());
        let mut st = State {
            x: Arc::clone(&input),
            aux: Some(input),
            skips: Vec::with_capacity(self.n_skips),
        };
        let mut tape = tape;
        self.run(&self.enc, true, &mut st, emb.view(), tape.as_deref_mut())?;
        st.aux = None;
        self.run(&self.dec, false, &mut st, emb.view(), tape)?;
        let out = st.aux.take().ok_or_else(|| bookkeeping("no output head"))?;
        drop(st);
        let out = Arc::try_unwrap(out).unwrap_or_else(|o| o.as_ref().clone());
        Ok((out, emb))
    }

    /// `model(x, noise_labels)`: `(N, in_channels, H, W) -> (N, out_channels, H, W)`.
    pub fn forward(&self, x: ArrayView4<f32>, noise_labels: &[f32]) -> Result<Array4<f32>> {
        Ok(self.run_all(x, noise_labels, None)?.0)
    }

    /// `model(x, labels)` and the tape from which [`SongTape::backward`] computes the VJP
    /// with respect to `x` for a cotangent chosen after seeing the output.
    pub fn forward_tape(
        &self,
        x: ArrayView4<f32>,
        noise_labels: &[f32],
    ) -> Result<(Array4<f32>, SongTape<'_>)> {
        let mut saved = Vec::with_capacity(self.enc.len() + self.dec.len());
        let (out, emb) = self.run_all(x, noise_labels, Some(&mut saved))?;
        let out_shape = shape4(&out);
        Ok((
            out,
            SongTape {
                net: self,
                emb,
                saved,
                out_shape,
                in_shape: shape4(&x),
            },
        ))
    }

    /// `(model(x, labels), d/dx sum(model(x, labels) * v))`.
    pub fn forward_vjp(
        &self,
        x: ArrayView4<f32>,
        noise_labels: &[f32],
        v: ArrayView4<f32>,
    ) -> Result<(Array4<f32>, Array4<f32>)> {
        let (out, tape) = self.forward_tape(x, noise_labels)?;
        Ok((out, tape.backward(v)?))
    }
}

fn shape4<S: ndarray::Data<Elem = f32>>(a: &ndarray::ArrayBase<S, ndarray::Ix4>) -> [usize; 4] {
    let (n, c, h, w) = a.dim();
    [n, c, h, w]
}

/// The activations of one forward pass of a [`SongUNet`], kept for its VJP.
pub struct SongTape<'a> {
    net: &'a SongUNet,
    emb: Array2<f32>,
    saved: Vec<Saved>,
    out_shape: [usize; 4],
    in_shape: [usize; 4],
}

impl SongTape<'_> {
    /// `d/dx sum(model(x, labels) * v)` for the forward pass this tape recorded.
    pub fn backward(mut self, v: ArrayView4<f32>) -> Result<Array4<f32>> {
        crate::nn::same_shape("EDM SongUNet", "cotangent", &self.out_shape, v.shape())?;
        let net = self.net;
        let emb = self.emb.view();
        let dec_saved = self.saved.split_off(net.enc.len());
        let mut skip_grads: Vec<Option<Array4<f32>>> = vec![None; net.n_skips];
        let mut gx: Option<Array4<f32>> = None;
        let mut gaux = Some(v.to_owned());
        let missing = || bookkeeping("tape");
        for (step, rec) in net.dec.iter().zip(dec_saved).rev() {
            match step {
                Step::AuxOut { norm, conv } => {
                    let x = rec.x.ok_or_else(missing)?;
                    let g = gaux.as_ref().ok_or_else(missing)?;
                    let (_, _, h, w) = x.dim();
                    let pre = norm.forward(x.view().into_dyn())?;
                    let ga = conv.vjp(h, w, g.view())?;
                    let gp = silu_vjp(pre.view(), ga.into_dyn().view())?;
                    add_into(&mut gx, dim4(norm.vjp(x.view().into_dyn(), gp.view())?)?);
                    if !rec.had_aux {
                        gaux = None;
                    }
                }
                Step::AuxUp(fir) => {
                    let g = gaux.take().ok_or_else(missing)?;
                    gaux = Some(fir.up2x_vjp(g.view())?);
                }
                Step::Block(blk) => {
                    let x = rec.x.ok_or_else(missing)?;
                    let g = gx.take().ok_or_else(missing)?;
                    let gi = blk.vjp(x.view(), emb, &rec.kept, g.view())?;
                    match rec.skip {
                        Some(k) => {
                            let split = rec.split;
                            gx = Some(gi.slice(s![.., ..split, .., ..]).to_owned());
                            add_into(
                                &mut skip_grads[k],
                                gi.slice(s![.., split.., .., ..]).to_owned(),
                            );
                        }
                        None => gx = Some(gi),
                    }
                }
                _ => return Err(bookkeeping("encoder step in the decoder")),
            }
        }
        // The encoder's aux value is not read by the decoder.
        gaux = None;
        for (step, rec) in net.enc.iter().zip(self.saved).rev() {
            // The gradient of the value a skip-writing step produced: through `x` and, for
            // the newest value of its skip, through the decoder.
            let mut total = || -> Result<Array4<f32>> {
                let mut t = gx.take();
                if let Some(k) = rec.skip {
                    if let Some(g) = skip_grads[k].take() {
                        add_into(&mut t, g);
                    }
                }
                t.ok_or_else(missing)
            };
            match step {
                Step::Conv(c) => {
                    let t = total()?;
                    let x = rec.x.as_ref().ok_or_else(missing)?;
                    gx = Some(c.vjp(x.dim().2, x.dim().3, t.view())?);
                }
                Step::Block(blk) => {
                    let t = total()?;
                    let x = rec.x.as_ref().ok_or_else(missing)?;
                    gx = Some(blk.vjp(x.view(), emb, &rec.kept, t.view())?);
                }
                Step::AuxDown(fir) => {
                    if let Some(g) = gaux.take() {
                        gaux = Some(fir.down2x_vjp(rec.aux_shape, g.view())?);
                    }
                }
                Step::AuxSkip(conv) => {
                    let t = total()?;
                    let [_, _, h, w] = rec.aux_shape;
                    add_into(&mut gaux, conv.vjp(h, w, t.view())?);
                    gx = Some(t);
                }
                Step::AuxResidual { conv, fir } => {
                    let mut t = total()?;
                    if let Some(g) = gaux.take() {
                        t += &g;
                    }
                    t *= SKIP_SCALE;
                    let [n, _, h, w] = rec.aux_shape;
                    let (ch, cw) = conv.out_size(h, w)?;
                    let gc = fir.down2x_valid_vjp([n, conv.out_channels(), ch, cw], t.view())?;
                    gaux = Some(conv.vjp(h, w, gc.view())?);
                    gx = Some(t);
                }
                Step::AuxUp(_) | Step::AuxOut { .. } => {
                    return Err(bookkeeping("decoder step in the encoder"))
                }
            }
        }
        // The input feeds both `x` and the encoder's `aux`.
        let mut g = gx.unwrap_or_else(|| Array4::zeros(self.in_shape));
        if let Some(a) = gaux {
            g += &a;
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testutil::rand_vec;

    /// Random parameters (weights scaled by `1/sqrt(fan_in)`), the configured FIR kernel
    /// for `resample_filter` buffers, NCSN++-like Fourier frequencies.
    struct RandomWeights {
        fir: Fir,
        seed: u64,
    }

    impl ParamSource for RandomWeights {
        fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
            self.seed += 1;
            let n: usize = shape.iter().product();
            if key.ends_with("resample_filter") {
                return Ok(self.fir.kernel_2d());
            }
            let v = rand_vec(n, self.seed);
            // Uniform(-1, 1) has variance 1/3: weights of unit gain are sqrt(3 / fan_in) v.
            let (base, scale) = match shape {
                [o, ..] if shape.len() > 1 => (0.0, (3.0 * *o as f32 / n as f32).sqrt()),
                _ if key.ends_with("freqs") => (0.0, 4.0),
                _ if key.contains("norm") && key.ends_with("weight") => (1.0, 0.2),
                _ => (0.0, 0.1),
            };
            Ok(v.iter().map(|x| base + scale * x).collect())
        }
    }

    fn config(encoder: EncoderType, decoder: DecoderType, filter: &[f64]) -> SongConfig {
        SongConfig {
            img_resolution: 8,
            model_channels: 4,
            channel_mult: vec![2, 1],
            num_blocks: 1,
            attn_resolutions: vec![4],
            embedding_type: if encoder == EncoderType::Residual {
                EmbeddingType::Fourier
            } else {
                EmbeddingType::Positional
            },
            encoder_type: encoder,
            decoder_type: decoder,
            resample_filter: filter.to_vec(),
            ..SongConfig::preset("ddpmpp", 8, 2).unwrap()
        }
    }

    /// The VJP against central differences of the f32 forward, for every encoder and decoder
    /// path (the golden tests cover DDPM++, NCSN++ and skip/skip against EDM's code): step
    /// 1e-2 gives ~1e-4 truncation and f32 rounding, so a 1e-2 relative tolerance, while a
    /// mis-chained path is off by O(1).
    #[test]
    fn vjp_matches_directional_differences_for_every_encoder_and_decoder() {
        let dot = |a: &Array4<f32>, b: &Array4<f32>| -> f64 {
            a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum()
        };
        let mut k = 0;
        for encoder in [
            EncoderType::Standard,
            EncoderType::Skip,
            EncoderType::Residual,
        ] {
            for decoder in [DecoderType::Standard, DecoderType::Skip] {
                k += 1;
                let filter: &[f64] = if k % 2 == 0 {
                    &[1.0, 1.0]
                } else {
                    &[1.0, 3.0, 3.0, 1.0]
                };
                let cfg = config(encoder, decoder, filter);
                let mut src = RandomWeights {
                    fir: Fir::new(filter).unwrap(),
                    seed: 100 * k,
                };
                let net = SongUNet::build(cfg, &mut src, "").unwrap();
                let shape = (2, 2, 8, 8);
                let x = Array4::from_shape_vec(shape, rand_vec(256, k)).unwrap();
                let labels = [0.3f32, -1.1];
                let v = Array4::from_shape_vec(shape, rand_vec(256, 50 + k)).unwrap();
                let (y, g) = net.forward_vjp(x.view(), &labels, v.view()).unwrap();
                assert_eq!(y, net.forward(x.view(), &labels).unwrap());
                let d = Array4::from_shape_vec(shape, rand_vec(256, 80 + k)).unwrap();
                let st = 1e-2f32;
                let yp = net.forward((&x + &(&d * st)).view(), &labels).unwrap();
                let ym = net.forward((&x - &(&d * st)).view(), &labels).unwrap();
                let fd = (dot(&v, &yp) - dot(&v, &ym)) / (2.0 * st as f64);
                let an = dot(&g, &d);
                assert!(
                    (fd - an).abs() < 1e-2 * an.abs().max(1e-1),
                    "{encoder:?}/{decoder:?}: {fd} vs {an}"
                );
                // The aux paths matter: dropping the input's aux gradient is caught.
                assert!(an.abs() > 1e-3, "{encoder:?}/{decoder:?}: degenerate check");
            }
        }
    }

    #[test]
    fn inputs_and_configs_are_checked() {
        let cfg = config(EncoderType::Standard, DecoderType::Standard, &[1.0, 1.0]);
        let mut src = RandomWeights {
            fir: Fir::new(&[1.0, 1.0]).unwrap(),
            seed: 1,
        };
        let net = SongUNet::build(cfg.clone(), &mut src, "").unwrap();
        let x = Array4::<f32>::zeros((1, 2, 7, 8));
        assert!(matches!(
            net.forward(x.view(), &[0.0]),
            Err(Error::Shape(_))
        ));
        let x = Array4::<f32>::zeros((1, 2, 8, 8));
        assert!(matches!(
            net.forward(x.view(), &[0.0, 1.0]),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            net.forward(x.view(), &[f32::NAN]),
            Err(Error::NonFinite(_))
        ));
        let bad = SongConfig {
            label_dim: 10,
            ..cfg.clone()
        };
        assert!(matches!(bad.check(), Err(Error::Unsupported(_))));
        let bad = SongConfig {
            img_resolution: 7,
            ..cfg.clone()
        };
        assert!(bad.check().is_err());
        let bad = SongConfig {
            model_channels: 1,
            ..cfg
        };
        assert!(bad.check().is_err());
        assert!(SongConfig::preset("adm", 32, 3).is_err());
        let n = SongConfig::preset("ncsnpp", 32, 3).unwrap();
        assert_eq!(
            (
                n.embedding_type,
                n.encoder_type,
                n.channel_mult_noise,
                n.resample_filter.len()
            ),
            (EmbeddingType::Fourier, EncoderType::Residual, 2, 4)
        );
    }
}
