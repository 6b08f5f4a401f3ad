//! diffusers' `UNet2DModel` (a `config.json` + `diffusion_pytorch_model.safetensors`
//! directory, as `save_pretrained` writes it) on the guided-diffusion engine.
//!
//! `UNet2DModel` with `DownBlock2D` / `AttnDownBlock2D`, `UNetMidBlock2D` and `UpBlock2D` /
//! `AttnUpBlock2D` has guided-diffusion's structure exactly: `conv_in`; per level
//! `layers_per_block` `ResnetBlock2D`s (+ attention) and a strided-conv `Downsample2D`; a
//! middle resnet-attention-resnet; per level in reverse `layers_per_block + 1` resnets, each
//! on `cat([h, skip])` (+ attention), and a nearest-2x + conv `Upsample2D`; GroupNorm, SiLU,
//! `conv_out`. `ResnetBlock2D` is guided-diffusion's `ResBlock` (`time_embedding_norm`
//! `default` adds the projected embedding, `scale_shift` is the scale-shift norm), and
//! diffusers' `Attention` with a group norm and residual connection is its `AttentionBlock`
//! with `q, k, v` as three linears (softmax scale `1 / sqrt(head_dim)` in both). The
//! timestep embedding is `Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)`.
//!
//! So the configuration maps onto [`UNetConfig`] ([`DiffusersUNetConfig::unet_config`]) and
//! the checkpoint's keys onto guided-diffusion's (`DiffusersNaming`). Configuration keys are
//! checked against an allow-list ([`DiffusersUNetConfig::parse`]): the metadata keys that do not
//! change the computation pass, every `UNet2DModel` argument is read, and a value the engine
//! does not compute (a `fourier` embedding, class conditioning, `resnet` up/down sampling,
//! an activation other than SiLU, output scale factors other than 1, ...) is an error naming
//! the key.

use serde::{Deserialize, Serialize};

use crate::checkpoint::Weights;
use crate::error::{Error, Result};
use crate::nn::layout::{legacy_order, permute_rows, Naming, Plan, Target};
use crate::nn::unet::UNetConfig;

/// `UNet2DModel`'s constructor arguments (diffusers 0.2x-0.4x), as `config.json` stores them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusersUNetConfig {
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default = "default_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "default_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "default_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "two")]
    pub layers_per_block: usize,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "conv")]
    pub downsample_type: String,
    #[serde(default = "conv")]
    pub upsample_type: String,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "eight")]
    pub attention_head_dim: Option<usize>,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    #[serde(default = "eps")]
    pub norm_eps: f64,
    #[serde(default = "default_str")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "yes")]
    pub add_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
}

/// `sample_size`: one side or `[height, width]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect([usize; 2]),
}

fn three() -> usize {
    3
}
fn two() -> usize {
    2
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn eight() -> Option<usize> {
    Some(8)
}
fn thirty_two() -> usize {
    32
}
fn eps() -> f64 {
    1e-5
}
fn positional() -> String {
    "positional".into()
}
fn conv() -> String {
    "conv".into()
}
fn silu() -> String {
    "silu".into()
}
fn default_str() -> String {
    "default".into()
}
fn default_mid() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn default_down() -> Vec<String> {
    [
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_up() -> Vec<String> {
    [
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_channels() -> Vec<usize> {
    vec![224, 448, 672, 896]
}

/// `config.json` keys that record provenance and do not change the computation.
const METADATA_KEYS: [&str; 4] = [
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "_use_default_values",
];

fn unsupported(key: &str, value: impl std::fmt::Display, want: &str) -> Error {
    Error::Unsupported(format!(
        "diffusers UNet2DModel: `{key}` = {value} is not supported (expected {want})"
    ))
}

impl DiffusersUNetConfig {
    /// Reads a `config.json` object: metadata keys pass, `_class_name` must be
    /// `UNet2DModel`, every other key must be a `UNet2DModel` argument (an unknown key is an
    /// error naming it), then [`DiffusersUNetConfig::check`].
    pub fn parse(json: &serde_json::Value) -> Result<DiffusersUNetConfig> {
        let obj = json
            .as_object()
            .ok_or_else(|| Error::Invalid("the UNet config is not a JSON object".into()))?;
        if let Some(cls) = obj.get("_class_name") {
            if cls.as_str() != Some("UNet2DModel") {
                return Err(unsupported(
                    "_class_name",
                    cls,
                    "\"UNet2DModel\" (UNet2DConditionModel and others are not supported)",
                ));
            }
        }
        let args: serde_json::Map<String, serde_json::Value> = obj
            .iter()
            .filter(|(k, _)| !METADATA_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let cfg: DiffusersUNetConfig = serde_json::from_value(serde_json::Value::Object(args))
            .map_err(|e| {
                Error::Unsupported(format!(
                    "diffusers UNet2DModel config: {e} (keys other than UNet2DModel's arguments and {} are not read)",
                    METADATA_KEYS.join(", ")
                ))
            })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks that every value is one the engine computes.
    pub fn check(&self) -> Result<()> {
        let s = self;
        if s.time_embedding_type != "positional" {
            return Err(unsupported(
                "time_embedding_type",
                &s.time_embedding_type,
                "\"positional\"",
            ));
        }
        if s.center_input_sample {
            return Err(unsupported("center_input_sample", true, "false"));
        }
        if !matches!(s.act_fn.as_str(), "silu" | "swish") {
            return Err(unsupported("act_fn", &s.act_fn, "\"silu\""));
        }
        if s.mid_block_type.as_deref() != Some("UNetMidBlock2D") {
            return Err(unsupported(
                "mid_block_type",
                format!("{:?}", s.mid_block_type),
                "\"UNetMidBlock2D\"",
            ));
        }
        if s.mid_block_scale_factor != 1.0 {
            return Err(unsupported(
                "mid_block_scale_factor",
                s.mid_block_scale_factor,
                "1",
            ));
        }
        if s.downsample_padding != 1 {
            return Err(unsupported("downsample_padding", s.downsample_padding, "1"));
        }
        if s.downsample_type != "conv" {
            return Err(unsupported(
                "downsample_type",
                &s.downsample_type,
                "\"conv\"",
            ));
        }
        if s.upsample_type != "conv" {
            return Err(unsupported("upsample_type", &s.upsample_type, "\"conv\""));
        }
        if !matches!(
            s.resnet_time_scale_shift.as_str(),
            "default" | "scale_shift"
        ) {
            return Err(unsupported(
                "resnet_time_scale_shift",
                &s.resnet_time_scale_shift,
                "\"default\" or \"scale_shift\"",
            ));
        }
        // With scale-shift, diffusers' middle attention has no group norm unless
        // attn_norm_num_groups is set; the engine's attention always has one.
        match s.attn_norm_num_groups {
            None if s.resnet_time_scale_shift == "scale_shift" => {
                return Err(unsupported(
                    "attn_norm_num_groups",
                    "null with resnet_time_scale_shift \"scale_shift\"",
                    "norm_num_groups (a middle attention without group norm is not computed)",
                ))
            }
            Some(g) if g != s.norm_num_groups => {
                return Err(unsupported(
                    "attn_norm_num_groups",
                    g,
                    "norm_num_groups or null",
                ))
            }
            _ => {}
        }
        if !s.add_attention {
            return Err(unsupported("add_attention", false, "true"));
        }
        if let Some(c) = &s.class_embed_type {
            return Err(unsupported("class_embed_type", c, "null (unconditional)"));
        }
        if let Some(n) = s.num_class_embeds {
            return Err(unsupported("num_class_embeds", n, "null (unconditional)"));
        }
        if s.freq_shift.fract() != 0.0 || s.freq_shift < 0.0 {
            return Err(unsupported(
                "freq_shift",
                s.freq_shift,
                "a non-negative integer",
            ));
        }
        let levels = s.block_out_channels.len();
        if levels == 0 || s.down_block_types.len() != levels || s.up_block_types.len() != levels {
            return Err(Error::Invalid(format!(
                "diffusers UNet2DModel: {} block_out_channels, {} down_block_types and {} up_block_types (expected the same number, at least 1)",
                levels,
                s.down_block_types.len(),
                s.up_block_types.len()
            )));
        }
        for (i, t) in s.down_block_types.iter().enumerate() {
            if !matches!(t.as_str(), "DownBlock2D" | "AttnDownBlock2D") {
                return Err(unsupported(
                    &format!("down_block_types[{i}]"),
                    t,
                    "\"DownBlock2D\" or \"AttnDownBlock2D\"",
                ));
            }
        }
        for (u, t) in s.up_block_types.iter().enumerate() {
            if !matches!(t.as_str(), "UpBlock2D" | "AttnUpBlock2D") {
                return Err(unsupported(
                    &format!("up_block_types[{u}]"),
                    t,
                    "\"UpBlock2D\" or \"AttnUpBlock2D\"",
                ));
            }
            let level = levels - 1 - u;
            if (t == "AttnUpBlock2D") != s.attention_at(level) {
                return Err(unsupported(
                    &format!("up_block_types[{u}]"),
                    t,
                    &format!(
                        "attention in the up block of a level exactly when its down block has it (down_block_types[{level}] = {})",
                        s.down_block_types[level]
                    ),
                ));
            }
        }
        if s.out_channels != s.in_channels && s.out_channels != 2 * s.in_channels {
            return Err(unsupported(
                "out_channels",
                s.out_channels,
                &format!(
                    "in_channels ({}) or twice that (learned variance)",
                    s.in_channels
                ),
            ));
        }
        Ok(())
    }

    /// Whether level `i` has attention.
    fn attention_at(&self, level: usize) -> bool {
        self.down_block_types[level] == "AttnDownBlock2D"
    }

    /// The image side (`sample_size`; `[h, w]` takes `h`), if the config gives one.
    pub fn resolution(&self) -> Option<[usize; 2]> {
        self.sample_size.as_ref().map(|s| match s {
            SampleSize::Square(n) => [*n, *n],
            SampleSize::Rect(hw) => *hw,
        })
    }

    /// The head width of the attention layers over `c` channels.
    fn head_dim(&self, c: usize) -> usize {
        self.attention_head_dim.unwrap_or(c)
    }

    /// The engine configuration computing this network.
    pub fn unet_config(&self) -> Result<UNetConfig> {
        let boc = &self.block_out_channels;
        let mc = boc[0];
        let res = self.resolution().map_or(0, |r| r[0]);
        Ok(UNetConfig {
            image_size: res,
            in_channels: self.in_channels,
            model_channels: mc,
            out_channels: self.out_channels,
            num_res_blocks: self.layers_per_block,
            attention_resolutions: (0..boc.len())
                .filter(|&l| self.attention_at(l))
                .map(|l| 1 << l)
                .collect(),
            channel_mult: boc.iter().map(|&c| c as f64 / mc as f64).collect(),
            num_heads: 1,
            num_head_channels: self.attention_head_dim.map_or(-1, |d| d as i64),
            num_heads_upsample: 1,
            use_scale_shift_norm: self.resnet_time_scale_shift == "scale_shift",
            resblock_updown: false,
            use_new_attention_order: false,
            conv_resample: true,
            num_classes: None,
            learn_sigma: self.out_channels == 2 * self.in_channels,
            group_norm_groups: self.norm_num_groups,
            group_norm_eps: self.norm_eps,
            num_parameters: None,
            time_embed_dim: self.time_embedding_dim,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            group_norm_min_channels: None,
            middle_attention: true,
        })
    }

    /// Where each guided-diffusion module is in a `UNet2DModel` state dict.
    pub(crate) fn plan(&self) -> Plan {
        let mut p = Plan::new();
        let boc = &self.block_out_channels;
        let levels = boc.len();
        let plain = |s: String| Target::Plain(s);
        p.insert(
            "time_embed.0".into(),
            plain("time_embedding.linear_1".into()),
        );
        p.insert(
            "time_embed.2".into(),
            plain("time_embedding.linear_2".into()),
        );
        p.insert("input_blocks.0.0".into(), plain("conv_in".into()));
        let attn = |prefix: String, c: usize| Target::Attn {
            prefix,
            heads: c / self.head_dim(c).max(1),
        };
        let mut k = 1;
        for (i, &c) in boc.iter().enumerate() {
            for r in 0..self.layers_per_block {
                p.insert(
                    format!("input_blocks.{k}.0"),
                    Target::Res(format!("down_blocks.{i}.resnets.{r}")),
                );
                if self.attention_at(i) {
                    p.insert(
                        format!("input_blocks.{k}.1"),
                        attn(format!("down_blocks.{i}.attentions.{r}"), c),
                    );
                }
                k += 1;
            }
            if i + 1 < levels {
                p.insert(
                    format!("input_blocks.{k}.0.op"),
                    plain(format!("down_blocks.{i}.downsamplers.0.conv")),
                );
                k += 1;
            }
        }
        let top = boc[levels - 1];
        p.insert(
            "middle_block.0".into(),
            Target::Res("mid_block.resnets.0".into()),
        );
        p.insert(
            "middle_block.1".into(),
            attn("mid_block.attentions.0".into(), top),
        );
        p.insert(
            "middle_block.2".into(),
            Target::Res("mid_block.resnets.1".into()),
        );
        let mut k = 0;
        for u in 0..levels {
            let level = levels - 1 - u;
            let c = boc[level];
            for r in 0..=self.layers_per_block {
                p.insert(
                    format!("output_blocks.{k}.0"),
                    Target::Res(format!("up_blocks.{u}.resnets.{r}")),
                );
                let mut j = 1;
                if self.attention_at(level) {
                    p.insert(
                        format!("output_blocks.{k}.1"),
                        attn(format!("up_blocks.{u}.attentions.{r}"), c),
                    );
                    j = 2;
                }
                if r == self.layers_per_block && level > 0 {
                    p.insert(
                        format!("output_blocks.{k}.{j}.conv"),
                        plain(format!("up_blocks.{u}.upsamplers.0.conv")),
                    );
                }
                k += 1;
            }
        }
        p.insert("out.0".into(), plain("conv_norm_out".into()));
        p.insert("out.2".into(), plain("conv_out".into()));
        p
    }
}

/// diffusers' sub-layer names.
pub(crate) struct DiffusersNaming;

impl Naming for DiffusersNaming {
    fn res_part(&self, adm: &str) -> Option<&'static str> {
        Some(match adm {
            "in_layers.0" => "norm1",
            "in_layers.2" => "conv1",
            "emb_layers.1" => "time_emb_proj",
            "out_layers.0" => "norm2",
            "out_layers.3" => "conv2",
            "skip_connection" => "conv_shortcut",
            _ => return None,
        })
    }
    fn attn_part(&self, adm: &str) -> Option<&'static str> {
        Some(match adm {
            "norm" => "group_norm",
            "proj_out" => "to_out.0",
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
        // Checkpoints from diffusers < 0.14 name the projections query / key / value.
        let names = if w.contains(&format!("{prefix}.query.{param}")) {
            ["query", "key", "value"]
        } else {
            ["to_q", "to_k", "to_v"]
        };
        let shape: Vec<usize> = if param == "bias" { vec![c] } else { vec![c, c] };
        let width = if param == "bias" { 1 } else { c };
        let mut stacked = Vec::with_capacity(3 * c * width);
        for n in names {
            stacked.extend(w.take(&format!("{prefix}.{n}.{param}"), &shape)?);
        }
        // Stacked rows: part p, head h, channel j at p c + h d + j.
        let order = legacy_order(c, heads, |h, p, j, d| p * c + h * d + j);
        Ok(permute_rows(&stacked, width, &order))
    }
}
