//! Writing prior directories from checkpoints: guided-diffusion's flags resolved into a card
//! exactly as `notebooks/convert_checkpoint.py` does, and [`write_prior_dir`], which checks
//! that the weights build the card's network before writing `model.safetensors` and
//! `model.json`.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::card::{Architecture, ModelCard, Output, ScheduleCard, WeightsCard, CARD_FILE};
use crate::checkpoint::{TensorSource, Weights};
use crate::error::{Error, Result};
use crate::nn::safetensors::Dtype;
use crate::nn::unet::UNetConfig;

/// guided-diffusion's model and diffusion flags (`script_util.model_and_diffusion_defaults`,
/// plus `in_channels`), as given on the command line.
#[derive(Clone, Debug, PartialEq)]
pub struct GuidedDiffusionFlags {
    pub image_size: usize,
    pub num_channels: usize,
    pub num_res_blocks: usize,
    pub num_heads: usize,
    pub num_heads_upsample: i64,
    pub num_head_channels: i64,
    pub attention_resolutions: String,
    pub channel_mult: String,
    pub dropout: f64,
    pub class_cond: bool,
    pub use_checkpoint: bool,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    pub use_fp16: bool,
    pub use_new_attention_order: bool,
    pub learn_sigma: bool,
    pub diffusion_steps: usize,
    pub noise_schedule: String,
    pub in_channels: usize,
}

impl Default for GuidedDiffusionFlags {
    /// guided-diffusion's defaults.
    fn default() -> Self {
        GuidedDiffusionFlags {
            image_size: 64,
            num_channels: 128,
            num_res_blocks: 2,
            num_heads: 4,
            num_heads_upsample: -1,
            num_head_channels: -1,
            attention_resolutions: "16,8".into(),
            channel_mult: String::new(),
            dropout: 0.0,
            class_cond: false,
            use_checkpoint: false,
            use_scale_shift_norm: true,
            resblock_updown: false,
            use_fp16: false,
            use_new_attention_order: false,
            learn_sigma: false,
            diffusion_steps: 1000,
            noise_schedule: "linear".into(),
            in_channels: 3,
        }
    }
}

fn flag_err(flag: &str, value: &str, want: &str) -> Error {
    Error::Invalid(format!("--{flag} {value:?}: expected {want}"))
}

impl GuidedDiffusionFlags {
    /// `channel_mult`: the per-size default for `""` (guided-diffusion's table), else the
    /// comma-separated integers.
    pub fn channel_mult(&self) -> Result<Vec<f64>> {
        if self.channel_mult.is_empty() {
            return Ok(match self.image_size {
                512 => vec![0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
                256 => vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
                128 => vec![1.0, 1.0, 2.0, 3.0, 4.0],
                64 => vec![1.0, 2.0, 3.0, 4.0],
                s => {
                    return Err(Error::Invalid(format!(
                        "unsupported image size {s} for --channel_mult \"\" (automatic only for 64, 128, 256, 512); pass --channel_mult explicitly"
                    )))
                }
            });
        }
        self.channel_mult
            .split(',')
            .map(|m| {
                m.trim().parse::<u32>().map(f64::from).map_err(|_| {
                    flag_err(
                        "channel_mult",
                        &self.channel_mult,
                        "comma-separated integers",
                    )
                })
            })
            .collect()
    }

    /// `attention_resolutions` (pixel sizes) as downsample rates `image_size / res`.
    pub fn attention_ds(&self) -> Result<Vec<usize>> {
        self.attention_resolutions
            .split(',')
            .map(|r| match r.trim().parse::<usize>() {
                Ok(r) if r > 0 => Ok(self.image_size / r),
                _ => Err(flag_err(
                    "attention_resolutions",
                    &self.attention_resolutions,
                    "comma-separated positive integers",
                )),
            })
            .collect()
    }

    /// The flags as the converter records them (`card["flags"]`), keys sorted.
    fn as_json(&self) -> Map<String, Value> {
        let f = self;
        let pairs = [
            ("attention_resolutions", json!(f.attention_resolutions)),
            ("channel_mult", json!(f.channel_mult)),
            ("class_cond", json!(f.class_cond)),
            ("diffusion_steps", json!(f.diffusion_steps)),
            ("dropout", json!(f.dropout)),
            ("image_size", json!(f.image_size)),
            ("in_channels", json!(f.in_channels)),
            ("learn_sigma", json!(f.learn_sigma)),
            ("noise_schedule", json!(f.noise_schedule)),
            ("num_channels", json!(f.num_channels)),
            ("num_head_channels", json!(f.num_head_channels)),
            ("num_heads", json!(f.num_heads)),
            ("num_heads_upsample", json!(f.num_heads_upsample)),
            ("num_res_blocks", json!(f.num_res_blocks)),
            ("resblock_updown", json!(f.resblock_updown)),
            ("use_checkpoint", json!(f.use_checkpoint)),
            ("use_fp16", json!(f.use_fp16)),
            ("use_new_attention_order", json!(f.use_new_attention_order)),
            ("use_scale_shift_norm", json!(f.use_scale_shift_norm)),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The model card the converter writes for these flags (`num_parameters` filled in by
    /// [`write_prior_dir`]); `extra` holds the converter's provenance fields.
    pub fn card(&self, dtype: &str, extra: Map<String, Value>) -> Result<ModelCard> {
        if self.in_channels == 0 {
            return Err(flag_err("in_channels", "0", "at least 1"));
        }
        let mult = self.channel_mult()?;
        let arch = UNetConfig {
            image_size: self.image_size,
            in_channels: self.in_channels,
            model_channels: self.num_channels,
            out_channels: self.in_channels * if self.learn_sigma { 2 } else { 1 },
            num_res_blocks: self.num_res_blocks,
            attention_resolutions: self.attention_ds()?,
            channel_mult: mult,
            num_heads: self.num_heads,
            num_head_channels: self.num_head_channels,
            num_heads_upsample: if self.num_heads_upsample == -1 {
                self.num_heads
            } else {
                usize::try_from(self.num_heads_upsample).map_err(|_| {
                    flag_err(
                        "num_heads_upsample",
                        &self.num_heads_upsample.to_string(),
                        "-1 or >= 1",
                    )
                })?
            },
            use_scale_shift_norm: self.use_scale_shift_norm,
            resblock_updown: self.resblock_updown,
            use_new_attention_order: self.use_new_attention_order,
            conv_resample: true,
            num_classes: self.class_cond.then_some(1000),
            learn_sigma: self.learn_sigma,
            ..UNetConfig::guided_diffusion_defaults()
        };
        let mut schedule =
            ScheduleCard::vp_discrete(self.diffusion_steps, &self.noise_schedule, Output::Eps);
        schedule.timestep_input =
            Some("integer step index t in [0, diffusion_steps), fed as float".into());
        let mut all = Map::new();
        all.insert("flags".into(), Value::Object(self.as_json()));
        all.extend(extra);
        Ok(ModelCard {
            format: super::card::CARD_FORMAT.into(),
            architecture: Architecture::GuidedDiffusion(arch),
            schedule,
            intensity_range: [-1.0, 1.0],
            channels: self.in_channels,
            resolution: [self.image_size, self.image_size],
            weights: WeightsCard {
                file: Some("model.safetensors".into()),
                dtype: Some(dtype.into()),
            },
            extra: all,
        })
    }
}

/// Parses guided-diffusion's booleans (`True`/`False`, also yes/no/1/0).
pub fn parse_bool(flag: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "t" | "y" | "1" => Ok(true),
        "no" | "false" | "f" | "n" | "0" => Ok(false),
        _ => Err(flag_err(flag, v, "a boolean (True/False)")),
    }
}

/// Builds the network of `card` from `src` (every shape checked, every tensor used), then
/// writes `out/model.safetensors` (every tensor of `src` in `dtype`) and `out/model.json`
/// (with `num_parameters` where the card records it), each atomically. An existing
/// `model.json` is only replaced with `force`. Returns the number of parameters.
pub fn write_prior_dir(
    out: &Path,
    mut card: ModelCard,
    src: &dyn TensorSource,
    dtype: Dtype,
    force: bool,
) -> Result<usize> {
    let card_path = out.join(CARD_FILE);
    if card_path.exists() && !force {
        return Err(Error::file(
            &card_path,
            "exists already: give --force to replace the prior in this directory",
        ));
    }
    card.check()?;
    let mut w = Weights::new(src, "the flags");
    super::network::build_from(&card, &mut w)?;
    let n = w.finish(None)?;
    match &mut card.architecture {
        Architecture::GuidedDiffusion(c) => c.num_parameters = Some(n),
        Architecture::EdmDhariwal(e) => e.num_parameters = Some(n),
        Architecture::EdmSong(e) => e.num_parameters = Some(n),
        Architecture::Diffusers(_) => {}
    }
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, format!("cannot create: {e}")))?;
    let mut tensors = Vec::new();
    for name in src.tensor_names() {
        let shape = src.tensor_shape(&name).unwrap_or_default();
        tensors.push((name.clone(), shape, src.tensor_f32(&name)?));
    }
    crate::nn::safetensors::write(&out.join("model.safetensors"), &tensors, dtype)?;
    let text = card.to_json()?;
    crate::io::write_atomic(&card_path, |tmp| {
        std::fs::write(tmp, &text)
            .map_err(|e| Error::file(&card_path, format!("cannot write: {e}")))
    })?;
    Ok(n)
}
