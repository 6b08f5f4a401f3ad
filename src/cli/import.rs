//! `posterior import CKPT --out DIR`: a checkpoint into a prior directory, without Python.
//!
//! - guided-diffusion (`--arch guided-diffusion`, the default for a file): a PyTorch `.pt`
//!   state dict read natively (nested checkpoints: `--key`, default the first of `ema`,
//!   `model`, `state_dict`) with guided-diffusion's model flags under their own names
//!   (`--image_size 256 --num_channels 128 ... --learn_sigma True`); writes the same
//!   `model.safetensors` and `model.json` as `notebooks/convert_checkpoint.py`.
//! - EDM (`--arch edm-dhariwal`): a state dict of `DhariwalUNet` or of its wrapper
//!   (`EDMPrecond`, ...; keys `model.*`) with `--precond edm|vp|ve` and the network's
//!   arguments under EDM's names (`--img_resolution 64 --model_channels 192 --channel_mult
//!   1,2,3,4 --num_blocks 3 --attn_resolutions 32,16,8`).
//! - EDM SongUNet (`--arch edm-song`): DDPM++ / NCSN++ from `--preset ddpmpp|ncsnpp` (EDM's
//!   train.py settings: 128 channels, multipliers 2,2,2, 4 blocks, attention at 16), any
//!   argument overridden under EDM's names (`--embedding_type`, `--encoder_type`,
//!   `--decoder_type`, `--channel_mult_noise`, `--resample_filter 1,3,3,1`, ...);
//!   `--augment_dim` is read from the state dict's `map_augment` when not given.
//! - diffusers (`--arch diffusers`, the default for a directory): a `UNet2DModel` directory
//!   copied into a prior directory, its schedule from `scheduler_config.json` or from
//!   `--prediction-type`, `--beta-schedule`, `--num-train-timesteps`, `--beta-start`,
//!   `--beta-end` (which also stand in for a missing scheduler config).
//!
//! The weights are checked to build the network before anything is written.

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Map, Value};

use crate::checkpoint::{open_weights, StateDict, TensorSource};
use crate::error::{Error, Result};
use crate::nn::edm::DhariwalConfig;
use crate::nn::safetensors::Dtype;
use crate::nn::song::SongConfig;
use crate::prior::card::{Architecture, ModelCard, ScheduleCard, ScheduleKind, WeightsCard};
use crate::prior::import::{parse_bool, write_prior_dir, GuidedDiffusionFlags};
use crate::prior::network::{diffusers_card, schedule_from_diffusers};

/// `posterior import` (see the module docs).
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The checkpoint: a PyTorch file (.pt, .pth, .bin), a .safetensors, or a diffusers
    /// UNet2DModel directory.
    pub checkpoint: PathBuf,
    /// The prior directory to write (model.safetensors + model.json).
    #[arg(long)]
    pub out: PathBuf,
    /// guided-diffusion | edm-dhariwal | edm-song | diffusers (default: diffusers for a
    /// directory, guided-diffusion for a file).
    #[arg(long)]
    pub arch: Option<String>,
    /// The entry of a nested checkpoint holding the state dict (default: the first of ema,
    /// model, state_dict).
    #[arg(long)]
    pub key: Option<String>,
    /// Storage type of the written weights: f32 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Replace a prior already in --out.
    #[arg(long)]
    pub force: bool,
    /// Free text recorded in the card, e.g. 'FFHQ 256'.
    #[arg(long = "training_data")]
    pub training_data: Option<String>,
    /// Image channels (guided-diffusion, EDM): 1 grayscale, 2 complex, 3 RGB.
    #[arg(long = "in_channels")]
    pub in_channels: Option<usize>,
    // guided-diffusion's flags, names and defaults as its script_util.
    #[arg(long = "image_size")]
    pub image_size: Option<usize>,
    #[arg(long = "num_channels")]
    pub num_channels: Option<usize>,
    #[arg(long = "num_res_blocks")]
    pub num_res_blocks: Option<usize>,
    #[arg(long = "num_heads")]
    pub num_heads: Option<usize>,
    #[arg(long = "num_heads_upsample", allow_hyphen_values = true)]
    pub num_heads_upsample: Option<i64>,
    #[arg(long = "num_head_channels", allow_hyphen_values = true)]
    pub num_head_channels: Option<i64>,
    #[arg(long = "attention_resolutions")]
    pub attention_resolutions: Option<String>,
    /// guided-diffusion: "" for the per-size default or "1,1,2"; EDM: "1,2,3,4".
    #[arg(long = "channel_mult")]
    pub channel_mult: Option<String>,
    #[arg(long = "dropout")]
    pub dropout: Option<f64>,
    #[arg(long = "class_cond")]
    pub class_cond: Option<String>,
    #[arg(long = "use_checkpoint")]
    pub use_checkpoint: Option<String>,
    #[arg(long = "use_scale_shift_norm")]
    pub use_scale_shift_norm: Option<String>,
    #[arg(long = "resblock_updown")]
    pub resblock_updown: Option<String>,
    #[arg(long = "use_fp16")]
    pub use_fp16: Option<String>,
    #[arg(long = "use_new_attention_order")]
    pub use_new_attention_order: Option<String>,
    #[arg(long = "learn_sigma")]
    pub learn_sigma: Option<String>,
    #[arg(long = "diffusion_steps")]
    pub diffusion_steps: Option<usize>,
    #[arg(long = "noise_schedule")]
    pub noise_schedule: Option<String>,
    // Accepted for compatibility with guided-diffusion's scripts; recorded, no effect.
    #[arg(long = "timestep_respacing")]
    pub timestep_respacing: Option<String>,
    #[arg(long = "use_kl")]
    pub use_kl: Option<String>,
    #[arg(long = "predict_xstart")]
    pub predict_xstart: Option<String>,
    #[arg(long = "rescale_timesteps")]
    pub rescale_timesteps: Option<String>,
    #[arg(long = "rescale_learned_sigmas")]
    pub rescale_learned_sigmas: Option<String>,
    // EDM: the preconditioning and DhariwalUNet's arguments.
    /// EDM preconditioning: edm | vp | ve.
    #[arg(long)]
    pub precond: Option<String>,
    #[arg(long = "img_resolution")]
    pub img_resolution: Option<usize>,
    #[arg(long = "model_channels")]
    pub model_channels: Option<usize>,
    #[arg(long = "channel_mult_emb")]
    pub channel_mult_emb: Option<usize>,
    #[arg(long = "num_blocks")]
    pub num_blocks: Option<usize>,
    #[arg(long = "attn_resolutions")]
    pub attn_resolutions: Option<String>,
    // EDM SongUNet: the preset and its arguments.
    /// ddpmpp | ncsnpp (--arch edm-song; default ddpmpp).
    #[arg(long)]
    pub preset: Option<String>,
    /// positional | fourier.
    #[arg(long = "embedding_type")]
    pub embedding_type: Option<String>,
    /// standard | skip | residual.
    #[arg(long = "encoder_type")]
    pub encoder_type: Option<String>,
    /// standard | skip.
    #[arg(long = "decoder_type")]
    pub decoder_type: Option<String>,
    #[arg(long = "channel_mult_noise")]
    pub channel_mult_noise: Option<usize>,
    /// The resampling filter's taps, e.g. 1,1 or 1,3,3,1.
    #[arg(long = "resample_filter")]
    pub resample_filter: Option<String>,
    #[arg(long = "augment_dim")]
    pub augment_dim: Option<usize>,
    #[arg(long = "sigma_data")]
    pub sigma_data: Option<f64>,
    #[arg(long = "sigma_min")]
    pub sigma_min: Option<f64>,
    #[arg(long = "sigma_max")]
    pub sigma_max: Option<f64>,
    #[arg(long = "beta_d")]
    pub beta_d: Option<f64>,
    #[arg(long = "beta_min")]
    pub beta_min: Option<f64>,
    // diffusers scheduler overrides.
    /// epsilon | sample | v_prediction.
    #[arg(long = "prediction-type")]
    pub prediction_type: Option<String>,
    /// linear | scaled_linear | squaredcos_cap_v2.
    #[arg(long = "beta-schedule")]
    pub beta_schedule: Option<String>,
    #[arg(long = "num-train-timesteps")]
    pub num_train_timesteps: Option<usize>,
    #[arg(long = "beta-start")]
    pub beta_start: Option<f64>,
    #[arg(long = "beta-end")]
    pub beta_end: Option<f64>,
}

fn bool_flag(name: &str, v: &Option<String>, default: bool) -> Result<bool> {
    v.as_deref().map_or(Ok(default), |s| parse_bool(name, s))
}

fn f64_list(flag: &str, s: &str) -> Result<Vec<f64>> {
    s.split(',')
        .map(|p| {
            p.trim().parse::<f64>().map_err(|_| {
                Error::Invalid(format!("--{flag} {s:?}: expected comma-separated numbers"))
            })
        })
        .collect()
}

/// A flag naming one of EDM's string options (`positional`, `residual`, ...).
fn enum_flag<T: serde::de::DeserializeOwned>(
    flag: &str,
    v: &Option<String>,
    default: T,
    want: &str,
) -> Result<T> {
    match v {
        None => Ok(default),
        Some(s) => serde_json::from_value(json!(s))
            .map_err(|_| Error::Invalid(format!("--{flag} {s:?}: expected {want}"))),
    }
}

/// The augmentation-label width of a SongUNet state dict (`map_augment.weight`,
/// `(noise_channels, augment_dim)`), if it has one.
fn augment_dim_of(src: &dyn TensorSource) -> Option<usize> {
    ["map_augment.weight", "model.map_augment.weight"]
        .iter()
        .find_map(|k| src.tensor_shape(k))
        .and_then(|s| s.get(1).copied())
}

fn usize_list(flag: &str, s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim().parse::<usize>().map_err(|_| {
                Error::Invalid(format!("--{flag} {s:?}: expected comma-separated integers"))
            })
        })
        .collect()
}

impl ImportArgs {
    /// Names of the flags given that `arch` does not read.
    fn foreign_flags(&self, arch: &str) -> Vec<&'static str> {
        let gd = [
            ("image_size", self.image_size.is_some()),
            ("num_channels", self.num_channels.is_some()),
            ("num_res_blocks", self.num_res_blocks.is_some()),
            ("num_heads", self.num_heads.is_some()),
            (
                "attention_resolutions",
                self.attention_resolutions.is_some(),
            ),
            ("learn_sigma", self.learn_sigma.is_some()),
            ("use_scale_shift_norm", self.use_scale_shift_norm.is_some()),
            ("resblock_updown", self.resblock_updown.is_some()),
            ("diffusion_steps", self.diffusion_steps.is_some()),
            ("noise_schedule", self.noise_schedule.is_some()),
        ];
        let edm = [
            ("precond", self.precond.is_some()),
            ("img_resolution", self.img_resolution.is_some()),
            ("model_channels", self.model_channels.is_some()),
            ("num_blocks", self.num_blocks.is_some()),
            ("attn_resolutions", self.attn_resolutions.is_some()),
            ("sigma_data", self.sigma_data.is_some()),
        ];
        let song = [
            ("preset", self.preset.is_some()),
            ("embedding_type", self.embedding_type.is_some()),
            ("encoder_type", self.encoder_type.is_some()),
            ("decoder_type", self.decoder_type.is_some()),
            ("channel_mult_noise", self.channel_mult_noise.is_some()),
            ("resample_filter", self.resample_filter.is_some()),
            ("augment_dim", self.augment_dim.is_some()),
        ];
        let diff = [
            ("prediction-type", self.prediction_type.is_some()),
            ("beta-schedule", self.beta_schedule.is_some()),
            ("num-train-timesteps", self.num_train_timesteps.is_some()),
        ];
        let mut out = Vec::new();
        for (archs, flags) in [
            (&["guided-diffusion"][..], &gd[..]),
            (&["edm-dhariwal", "edm-song"][..], &edm[..]),
            (&["edm-song"][..], &song[..]),
            (&["diffusers"][..], &diff[..]),
        ] {
            if !archs.contains(&arch) {
                out.extend(flags.iter().filter(|(_, given)| *given).map(|(n, _)| *n));
            }
        }
        out
    }

    fn guided_diffusion_flags(&self) -> Result<GuidedDiffusionFlags> {
        let d = GuidedDiffusionFlags::default();
        Ok(GuidedDiffusionFlags {
            image_size: self.image_size.unwrap_or(d.image_size),
            num_channels: self.num_channels.unwrap_or(d.num_channels),
            num_res_blocks: self.num_res_blocks.unwrap_or(d.num_res_blocks),
            num_heads: self.num_heads.unwrap_or(d.num_heads),
            num_heads_upsample: self.num_heads_upsample.unwrap_or(d.num_heads_upsample),
            num_head_channels: self.num_head_channels.unwrap_or(d.num_head_channels),
            attention_resolutions: self
                .attention_resolutions
                .clone()
                .unwrap_or(d.attention_resolutions),
            channel_mult: self.channel_mult.clone().unwrap_or(d.channel_mult),
            dropout: self.dropout.unwrap_or(d.dropout),
            class_cond: bool_flag("class_cond", &self.class_cond, d.class_cond)?,
            use_checkpoint: bool_flag("use_checkpoint", &self.use_checkpoint, d.use_checkpoint)?,
            use_scale_shift_norm: bool_flag(
                "use_scale_shift_norm",
                &self.use_scale_shift_norm,
                d.use_scale_shift_norm,
            )?,
            resblock_updown: bool_flag(
                "resblock_updown",
                &self.resblock_updown,
                d.resblock_updown,
            )?,
            use_fp16: bool_flag("use_fp16", &self.use_fp16, d.use_fp16)?,
            use_new_attention_order: bool_flag(
                "use_new_attention_order",
                &self.use_new_attention_order,
                d.use_new_attention_order,
            )?,
            learn_sigma: bool_flag("learn_sigma", &self.learn_sigma, d.learn_sigma)?,
            diffusion_steps: self.diffusion_steps.unwrap_or(d.diffusion_steps),
            noise_schedule: self.noise_schedule.clone().unwrap_or(d.noise_schedule),
            in_channels: self.in_channels.unwrap_or(d.in_channels),
        })
    }

    /// The converter's provenance fields: training data, the diffusion flags, the source.
    fn provenance(&self) -> Result<Map<String, Value>> {
        let mut m = Map::new();
        m.insert("training_data".into(), json!(self.training_data));
        m.insert(
            "diffusion_flags".into(),
            json!({
                "timestep_respacing": self.timestep_respacing.clone().unwrap_or_default(),
                "use_kl": bool_flag("use_kl", &self.use_kl, false)?,
                "predict_xstart": bool_flag("predict_xstart", &self.predict_xstart, false)?,
                "rescale_timesteps": bool_flag("rescale_timesteps", &self.rescale_timesteps, false)?,
                "rescale_learned_sigmas": bool_flag("rescale_learned_sigmas", &self.rescale_learned_sigmas, false)?,
            }),
        );
        m.insert(
            "source_checkpoint".into(),
            json!(self
                .checkpoint
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())),
        );
        Ok(m)
    }

    /// The card of an EDM network (`arch`: `edm-dhariwal` or `edm-song`) from the flags;
    /// `src` is the state dict (where a SongUNet's `augment_dim` is read when not given).
    fn edm_card(&self, dtype: &str, arch: &str, src: &dyn TensorSource) -> Result<ModelCard> {
        let channels = self.in_channels.ok_or_else(|| {
            Error::Invalid(format!(
                "--arch {arch} needs --in_channels (the image channels)"
            ))
        })?;
        let res = self
            .img_resolution
            .ok_or_else(|| Error::Invalid(format!("--arch {arch} needs --img_resolution")))?;
        let kind = match self.precond.as_deref().unwrap_or("edm") {
            "edm" => ScheduleKind::Edm,
            "vp" => ScheduleKind::VpPrecond,
            "ve" => ScheduleKind::VePrecond,
            other => {
                return Err(Error::Invalid(format!(
                    "--precond {other:?}: expected edm, vp or ve (iDDPMPrecond is not supported)"
                )))
            }
        };
        let mut schedule = ScheduleCard::precond(kind);
        schedule.sigma_data = self.sigma_data;
        schedule.sigma_min = self.sigma_min;
        schedule.sigma_max = self.sigma_max;
        schedule.beta_d = self.beta_d;
        schedule.beta_min = self.beta_min;
        let mult = self
            .channel_mult
            .as_deref()
            .map(|m| usize_list("channel_mult", m))
            .transpose()?;
        let attn = self
            .attn_resolutions
            .as_deref()
            .map(|a| usize_list("attn_resolutions", a))
            .transpose()?;
        let architecture = if arch == "edm-song" {
            let preset = self.preset.as_deref().unwrap_or("ddpmpp");
            let d = SongConfig::preset(preset, res, channels)?;
            Architecture::EdmSong(SongConfig {
                augment_dim: match self.augment_dim {
                    Some(a) => a,
                    None => augment_dim_of(src).unwrap_or(0),
                },
                model_channels: self.model_channels.unwrap_or(d.model_channels),
                channel_mult: mult.unwrap_or(d.channel_mult),
                channel_mult_emb: self.channel_mult_emb.unwrap_or(d.channel_mult_emb),
                num_blocks: self.num_blocks.unwrap_or(d.num_blocks),
                attn_resolutions: attn.unwrap_or(d.attn_resolutions),
                embedding_type: enum_flag(
                    "embedding_type",
                    &self.embedding_type,
                    d.embedding_type,
                    "positional or fourier",
                )?,
                channel_mult_noise: self.channel_mult_noise.unwrap_or(d.channel_mult_noise),
                encoder_type: enum_flag(
                    "encoder_type",
                    &self.encoder_type,
                    d.encoder_type,
                    "standard, skip or residual",
                )?,
                decoder_type: enum_flag(
                    "decoder_type",
                    &self.decoder_type,
                    d.decoder_type,
                    "standard or skip",
                )?,
                resample_filter: match &self.resample_filter {
                    Some(f) => f64_list("resample_filter", f)?,
                    None => d.resample_filter,
                },
                ..d
            })
        } else {
            Architecture::EdmDhariwal(DhariwalConfig {
                img_resolution: res,
                in_channels: channels,
                out_channels: channels,
                label_dim: 0,
                augment_dim: 0,
                model_channels: self.model_channels.unwrap_or(192),
                channel_mult: mult.unwrap_or_else(|| vec![1, 2, 3, 4]),
                channel_mult_emb: self.channel_mult_emb.unwrap_or(4),
                num_blocks: self.num_blocks.unwrap_or(3),
                attn_resolutions: attn.unwrap_or_else(|| vec![32, 16, 8]),
                dropout: 0.0,
                label_dropout: 0.0,
                num_parameters: None,
            })
        };
        let mut extra = Map::new();
        extra.insert("training_data".into(), json!(self.training_data));
        extra.insert(
            "source_checkpoint".into(),
            json!(self
                .checkpoint
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())),
        );
        Ok(ModelCard {
            format: crate::prior::card::CARD_FORMAT.into(),
            architecture,
            schedule,
            intensity_range: [-1.0, 1.0],
            channels,
            resolution: [res, res],
            weights: WeightsCard {
                file: Some("model.safetensors".into()),
                dtype: Some(dtype.into()),
            },
            extra,
        })
    }

    /// A scheduler config from the diffusers flags, if any was given.
    fn scheduler_override(&self) -> Result<Option<ScheduleCard>> {
        let mut m = Map::new();
        if let Some(v) = &self.prediction_type {
            m.insert("prediction_type".into(), json!(v));
        }
        if let Some(v) = &self.beta_schedule {
            m.insert("beta_schedule".into(), json!(v));
        }
        if let Some(v) = self.num_train_timesteps {
            m.insert("num_train_timesteps".into(), json!(v));
        }
        if let Some(v) = self.beta_start {
            m.insert("beta_start".into(), json!(v));
        }
        if let Some(v) = self.beta_end {
            m.insert("beta_end".into(), json!(v));
        }
        if m.is_empty() {
            return Ok(None);
        }
        schedule_from_diffusers(&Value::Object(m)).map(Some)
    }
}

/// Runs `posterior import`.
pub fn run(a: &ImportArgs) -> Result<()> {
    let dtype = match a.dtype.as_str() {
        "f32" => Dtype::F32,
        "f16" => Dtype::F16,
        other => {
            return Err(Error::Invalid(format!(
                "--dtype {other:?}: expected f32 or f16"
            )))
        }
    };
    let arch = a.arch.clone().unwrap_or_else(|| {
        if a.checkpoint.is_dir() {
            "diffusers".into()
        } else {
            "guided-diffusion".into()
        }
    });
    let foreign = a.foreign_flags(&arch);
    if let Some(first) = foreign.first() {
        return Err(Error::Invalid(format!(
            "--{first} is not a flag of --arch {arch} ({} flag(s) of another architecture given)",
            foreign.len()
        )));
    }
    let read_state_dict = || -> Result<Box<dyn TensorSource>> {
        match crate::io::extension(&a.checkpoint).as_str() {
            "safetensors" => open_weights(&a.checkpoint),
            _ => {
                let sd = StateDict::read_pt(&a.checkpoint, a.key.as_deref())?;
                if let Some(k) = sd.picked() {
                    println!("{}: using the state dict in `{k}`", a.checkpoint.display());
                }
                Ok(Box::new(sd))
            }
        }
    };
    let (card, src): (ModelCard, Box<dyn TensorSource>) = match arch.as_str() {
        "guided-diffusion" => {
            let card = a
                .guided_diffusion_flags()?
                .card(&a.dtype, a.provenance()?)?;
            (card, read_state_dict()?)
        }
        "edm-dhariwal" | "edm-song" => {
            let src = read_state_dict()?;
            (a.edm_card(&a.dtype, &arch, src.as_ref())?, src)
        }
        "diffusers" => {
            let (mut card, weights) = diffusers_card(&a.checkpoint, a.scheduler_override()?)?;
            card.weights = WeightsCard {
                file: Some("model.safetensors".into()),
                dtype: Some(a.dtype.clone()),
            };
            card.extra
                .insert("training_data".into(), json!(a.training_data));
            (card, open_weights(&weights)?)
        }
        other => {
            return Err(Error::Invalid(format!(
                "--arch {other:?}: expected guided-diffusion, edm-dhariwal, edm-song or diffusers"
            )))
        }
    };
    let n = write_prior_dir(&a.out, card, src.as_ref(), dtype, a.force)?;
    println!(
        "wrote {}/model.safetensors ({n} parameters, {}) and {}/model.json",
        a.out.display(),
        a.dtype,
        a.out.display()
    );
    Ok(())
}
