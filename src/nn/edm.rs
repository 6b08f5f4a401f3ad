//! EDM's `DhariwalUNet` (Karras et al. 2022, `training/networks.py`: the ADM architecture
//! re-implemented) on the guided-diffusion engine.
//!
//! EDM's `UNetBlock` with `adaptive_scale=True`, `skip_scale=1` and the `[1, 1]` resampling
//! filter (DhariwalUNet's settings) is guided-diffusion's `ResBlock` with scale-shift norm
//! and up/down sampling inside the block (`conv0` after nearest-2x or 2x2 average pooling,
//! the skip resampled and, when the width changes, projected by a 1x1 conv), followed by
//! guided-diffusion's `AttentionBlock` when the block has heads (`out_channels // 64`).
//! The mapping `emb = silu(map_layer1(silu(map_layer0(pos(t)))))` is guided-diffusion's
//! `time_embed` with the SiLU every block applies first, and the positional embedding
//! (`endpoint=False`, cosines first) is guided-diffusion's. The decoder's `in0`/`in1` blocks
//! are the middle block, `_up` blocks close the previous level's last output block, and a
//! decoder block concatenates a skip exactly when its input width differs, which is every
//! `block{i}`: the skip bookkeeping of guided-diffusion's `output_blocks`.
//!
//! Differences carried by [`UNetConfig`]: GroupNorm groups `min(32, C / 4)` per layer, the
//! embedding width `model_channels * channel_mult_emb`, and no middle attention when the
//! widest level has fewer than 64 channels. The checkpoint's `qkv` rows are interleaved
//! per channel (`reshape(heads, C / heads, 3, T)`) and are reordered at load; the
//! `resample_filter` buffers stored for up/down blocks are checked to be the `[1, 1]`
//! filter. SongUNet (DDPM++ / NCSN++: aux paths, FIR filters, skip scaling) does not map
//! onto this engine and is its own network: [`crate::nn::song`].
//!
//! The preconditioning (`EDMPrecond`, `VPPrecond`, `VEPrecond`) is the prior's, not the
//! network's: see [`crate::prior::network`].

use serde::{Deserialize, Serialize};

use crate::checkpoint::Weights;
use crate::error::{Error, Result};
use crate::nn::layout::{legacy_order, permute_rows, Naming, Plan, Target};
use crate::nn::unet::UNetConfig;

/// `DhariwalUNet`'s constructor arguments (EDM's names and defaults; `img_resolution`,
/// `in_channels` and `out_channels` come from the preconditioning wrapper).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhariwalConfig {
    pub img_resolution: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    #[serde(default)]
    pub label_dim: usize,
    #[serde(default)]
    pub augment_dim: usize,
    #[serde(default = "mc")]
    pub model_channels: usize,
    #[serde(default = "mult")]
    pub channel_mult: Vec<usize>,
    #[serde(default = "four")]
    pub channel_mult_emb: usize,
    #[serde(default = "three")]
    pub num_blocks: usize,
    #[serde(default = "attn")]
    pub attn_resolutions: Vec<usize>,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub label_dropout: f64,
    /// The parameter count (checked against the weights at load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_parameters: Option<usize>,
}

fn mc() -> usize {
    192
}
fn mult() -> Vec<usize> {
    vec![1, 2, 3, 4]
}
fn four() -> usize {
    4
}
fn three() -> usize {
    3
}
fn attn() -> Vec<usize> {
    vec![32, 16, 8]
}

/// EDM's attention head width in `DhariwalUNet`.
const CHANNELS_PER_HEAD: usize = 64;

fn unsupported(key: &str, value: impl std::fmt::Display, want: &str) -> Error {
    Error::Unsupported(format!(
        "EDM DhariwalUNet: `{key}` = {value} is not supported (expected {want})"
    ))
}

impl DhariwalConfig {
    /// Checks what the engine computes: unconditional, no augmentation labels.
    pub fn check(&self) -> Result<()> {
        if self.label_dim != 0 {
            return Err(unsupported(
                "label_dim",
                self.label_dim,
                "0 (unconditional)",
            ));
        }
        if self.augment_dim != 0 {
            return Err(unsupported("augment_dim", self.augment_dim, "0"));
        }
        if self.channel_mult.is_empty() || self.model_channels == 0 {
            return Err(Error::Invalid(
                "EDM DhariwalUNet: channel_mult must be non-empty and model_channels >= 1".into(),
            ));
        }
        let levels = self.channel_mult.len();
        if self.img_resolution == 0 || !self.img_resolution.is_multiple_of(1 << (levels - 1)) {
            return Err(Error::Invalid(format!(
                "EDM DhariwalUNet: img_resolution {} is not a multiple of 2^{} as {levels} levels need",
                self.img_resolution,
                levels - 1
            )));
        }
        Ok(())
    }

    fn res(&self, level: usize) -> usize {
        self.img_resolution >> level
    }
    fn channels(&self, level: usize) -> usize {
        self.model_channels * self.channel_mult[level]
    }
    /// Heads of the attention of a block at `level` (0: the block has no attention).
    fn heads(&self, level: usize) -> usize {
        self.channels(level) / CHANNELS_PER_HEAD
    }
    fn attention_at(&self, level: usize) -> bool {
        self.attn_resolutions.contains(&self.res(level)) && self.heads(level) > 0
    }

    /// The engine configuration computing this network.
    pub fn unet_config(&self) -> Result<UNetConfig> {
        self.check()?;
        let levels = self.channel_mult.len();
        Ok(UNetConfig {
            image_size: self.img_resolution,
            in_channels: self.in_channels,
            model_channels: self.model_channels,
            out_channels: self.out_channels,
            num_res_blocks: self.num_blocks,
            attention_resolutions: (0..levels)
                .filter(|&l| self.attention_at(l))
                .map(|l| 1 << l)
                .collect(),
            channel_mult: self.channel_mult.iter().map(|&m| m as f64).collect(),
            num_heads: 1,
            num_head_channels: CHANNELS_PER_HEAD as i64,
            num_heads_upsample: 1,
            use_scale_shift_norm: true,
            resblock_updown: true,
            use_new_attention_order: false,
            conv_resample: true,
            num_classes: None,
            learn_sigma: self.out_channels == 2 * self.in_channels,
            group_norm_groups: 32,
            group_norm_eps: 1e-5,
            num_parameters: self.num_parameters,
            time_embed_dim: Some(self.model_channels * self.channel_mult_emb),
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            group_norm_min_channels: Some(4),
            middle_attention: self.heads(levels - 1) > 0,
        })
    }

    /// Where each guided-diffusion module is in a `DhariwalUNet` state dict.
    pub(crate) fn plan(&self) -> Plan {
        let mut p = Plan::new();
        let levels = self.channel_mult.len();
        let name = |side: &str, level: usize, what: &str| {
            let r = self.res(level);
            format!("{side}.{r}x{r}_{what}")
        };
        let block = |p: &mut Plan, adm: String, edm: String, level: usize, attention: bool| {
            p.insert(format!("{adm}.0"), Target::Res(edm.clone()));
            if attention {
                p.insert(
                    format!("{adm}.1"),
                    Target::Attn {
                        prefix: edm,
                        heads: self.heads(level),
                    },
                );
            }
        };
        p.insert("time_embed.0".into(), Target::Plain("map_layer0".into()));
        p.insert("time_embed.2".into(), Target::Plain("map_layer1".into()));
        p.insert(
            "input_blocks.0.0".into(),
            Target::Plain(name("enc", 0, "conv")),
        );
        let mut k = 1;
        for level in 0..levels {
            if level > 0 {
                p.insert(
                    format!("input_blocks.{k}.0"),
                    Target::Res(name("enc", level, "down")),
                );
                k += 1;
            }
            for i in 0..self.num_blocks {
                let edm = name("enc", level, &format!("block{i}"));
                block(
                    &mut p,
                    format!("input_blocks.{k}"),
                    edm,
                    level,
                    self.attention_at(level),
                );
                k += 1;
            }
        }
        let top = levels - 1;
        block(
            &mut p,
            "middle_block".into(),
            name("dec", top, "in0"),
            top,
            self.heads(top) > 0,
        );
        // Without middle attention the second residual block is still `middle_block.2`.
        p.insert(
            "middle_block.2".into(),
            Target::Res(name("dec", top, "in1")),
        );
        let mut k = 0;
        for level in (0..levels).rev() {
            for i in 0..=self.num_blocks {
                let adm = format!("output_blocks.{k}");
                let attention = self.attention_at(level);
                block(
                    &mut p,
                    adm.clone(),
                    name("dec", level, &format!("block{i}")),
                    level,
                    attention,
                );
                if i == self.num_blocks && level > 0 {
                    let j = if attention { 2 } else { 1 };
                    p.insert(
                        format!("{adm}.{j}"),
                        Target::Res(name("dec", level - 1, "up")),
                    );
                }
                k += 1;
            }
        }
        p.insert("out.0".into(), Target::Plain("out_norm".into()));
        p.insert("out.2".into(), Target::Plain("out_conv".into()));
        p
    }
}

/// Checks the `resample_filter` buffers EDM stores for up/down blocks (`(1, 1, 2, 2)`, all
/// 0.25: the `[1, 1]` filter, i.e. nearest-2x up and 2x2 average pooling down) and marks them
/// used.
pub(crate) fn check_resample_filters(w: &mut Weights) -> Result<()> {
    for name in w.names() {
        if !name.ends_with(".resample_filter") {
            continue;
        }
        let v = w.take(&name, &[1, 1, 2, 2]).map_err(|e| {
            Error::Unsupported(format!(
                "{e} (DhariwalUNet resamples with the [1, 1] filter; a [1, 3, 3, 1] filter is NCSN++'s: --arch edm-song)"
            ))
        })?;
        if v.iter().any(|&x| x != 0.25) {
            return Err(Error::Unsupported(format!(
                "EDM resample filter `{name}` holds {v:?}, expected the [1, 1] filter (all 0.25)"
            )));
        }
    }
    Ok(())
}

/// EDM's sub-layer names.
pub(crate) struct EdmNaming;

impl Naming for EdmNaming {
    fn res_part(&self, adm: &str) -> Option<&'static str> {
        Some(match adm {
            "in_layers.0" => "norm0",
            "in_layers.2" => "conv0",
            "emb_layers.1" => "affine",
            "out_layers.0" => "norm1",
            "out_layers.3" => "conv1",
            "skip_connection" => "skip",
            _ => return None,
        })
    }
    fn attn_part(&self, adm: &str) -> Option<&'static str> {
        Some(match adm {
            "norm" => "norm2",
            "proj_out" => "proj",
            _ => return None,
        })
    }
    fn qkv(
        &self,
        w: &mut Weights,
        prefix: &str,
        c: usize,
        heads: usize,
        param: &str,
    ) -> Result<Vec<f32>> {
        let (shape, width) = if param == "bias" {
            (vec![3 * c], 1)
        } else {
            (vec![3 * c, c, 1, 1], c)
        };
        let v = w.take(&format!("{prefix}.qkv.{param}"), &shape)?;
        // EDM's rows: head h, channel j, part p at h 3d + 3 j + p.
        let order = legacy_order(c, heads, |h, p, j, d| h * 3 * d + 3 * j + p);
        Ok(permute_rows(&v, width, &order))
    }
}
