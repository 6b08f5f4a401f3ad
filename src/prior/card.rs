//! The model card `model.json` of a prior directory: which network, which diffusion, which
//! intensities, which weights.
//!
//! Format `posterior-card/2` (written by `posterior import`, `notebooks/convert_checkpoint.py`
//! and the training scripts):
//!
//! ```json
//! {"format": "posterior-card/2",
//!  "architecture": {"type": "guided-diffusion-unet" | "diffusers-unet2d" | "edm-dhariwal-unet"
//!                   | "edm-song-unet", ...},
//!  "schedule": {"kind": "vp-discrete" | "edm" | "vp-precond" | "ve-precond", ...},
//!  "intensity_range": [-1, 1], "channels": C, "resolution": [H, W],
//!  "weights": {"file": "model.safetensors", "dtype": "f32"}, ...}
//! ```
//!
//! `architecture` holds the constructor arguments of the reference implementation named by
//! `type`: guided-diffusion's resolved `UNetModel` arguments ([`UNetConfig`]), diffusers'
//! `UNet2DModel` config ([`DiffusersUNetConfig`]), EDM's `DhariwalUNet` arguments
//! ([`DhariwalConfig`]) or EDM's `SongUNet` arguments ([`SongConfig`]: DDPM++ / NCSN++).
//! `schedule.kind` says how the network is queried:
//! - `vp-discrete`: the network takes the discrete step index `n` in `[0, T)` of a VP
//!   schedule (`diffusion_steps` = T, `noise_schedule` `linear` | `scaled_linear` | `cosine`,
//!   optional `beta_start` / `beta_end`, defaults `1e-4 s`, `0.02 s` with `s = 1000 / T`) and
//!   predicts `output`: `eps`, `x0` or `v` (diffusers' `epsilon` / `sample` /
//!   `v_prediction`);
//! - `edm`, `vp-precond`, `ve-precond`: EDM's preconditioned denoiser `D(x; sigma) = c_skip x
//!   + c_out F(c_in x, c_noise)` of `EDMPrecond` (`sigma_data`, `sigma_min`, `sigma_max`),
//!   `VPPrecond` (`beta_d`, `beta_min`, `M`, `epsilon_t`) or `VEPrecond` (`sigma_min`,
//!   `sigma_max`), with EDM's defaults.
//!
//! Unknown `format`, `type`, `kind`, `noise_schedule` or `output` values are errors. Cards of
//! format 1 (`posterior-adm-v1`: guided-diffusion only, `output` a free-text description of
//! eps) keep loading.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::nn::diffusers::DiffusersUNetConfig;
use crate::nn::edm::DhariwalConfig;
use crate::nn::song::SongConfig;
use crate::nn::unet::UNetConfig;

/// The format tag of the current model card.
pub const CARD_FORMAT: &str = "posterior-card/2";
/// The format tag of version-1 cards (guided-diffusion only), still read.
pub const CARD_FORMAT_V1: &str = "posterior-adm-v1";
/// The card's file name inside a prior directory.
pub const CARD_FILE: &str = "model.json";

/// The network: a reference implementation's constructor arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[allow(clippy::large_enum_variant)] // one per prior: size does not matter
pub enum Architecture {
    /// guided-diffusion's `UNetModel` (ADM), resolved arguments.
    #[serde(rename = "guided-diffusion-unet")]
    GuidedDiffusion(UNetConfig),
    /// diffusers' `UNet2DModel`, its `config.json`.
    #[serde(rename = "diffusers-unet2d")]
    Diffusers(DiffusersUNetConfig),
    /// EDM's `DhariwalUNet`.
    #[serde(rename = "edm-dhariwal-unet")]
    EdmDhariwal(DhariwalConfig),
    /// EDM's `SongUNet` (DDPM++, NCSN++).
    #[serde(rename = "edm-song-unet")]
    EdmSong(SongConfig),
}

/// What the rest of a card is checked against: the network's image channels in and out,
/// the divisor of its image sides, and its number of resolution levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkShape {
    pub in_channels: usize,
    pub out_channels: usize,
    pub size_divisor: usize,
    pub levels: usize,
}

impl Architecture {
    /// The `type` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            Architecture::GuidedDiffusion(_) => "guided-diffusion-unet",
            Architecture::Diffusers(_) => "diffusers-unet2d",
            Architecture::EdmDhariwal(_) => "edm-dhariwal-unet",
            Architecture::EdmSong(_) => "edm-song-unet",
        }
    }

    /// The configuration of the ADM engine ([`crate::nn::UNet`]) that computes this
    /// network; an error for `edm-song-unet`, which [`crate::nn::song::SongUNet`] computes.
    pub fn unet_config(&self) -> Result<UNetConfig> {
        match self {
            Architecture::GuidedDiffusion(c) => Ok(c.clone()),
            Architecture::Diffusers(d) => {
                d.check()?;
                d.unet_config()
            }
            Architecture::EdmDhariwal(e) => e.unet_config(),
            Architecture::EdmSong(_) => Err(Error::Unsupported(
                "an edm-song-unet is computed by SongUNet, not the ADM U-Net engine".into(),
            )),
        }
    }

    /// The network's channels and size constraints, its configuration checked.
    pub fn network_shape(&self) -> Result<NetworkShape> {
        if let Architecture::EdmSong(c) = self {
            c.check()?;
            return Ok(NetworkShape {
                in_channels: c.in_channels,
                out_channels: c.out_channels,
                size_divisor: c.size_divisor(),
                levels: c.channel_mult.len(),
            });
        }
        let a = self.unet_config()?;
        a.validate()?;
        Ok(NetworkShape {
            in_channels: a.in_channels,
            out_channels: a.out_channels,
            size_divisor: a.size_divisor(),
            levels: a.channel_mult.len(),
        })
    }

    /// Whether the network is one of EDM's, queried through its preconditioning.
    fn is_edm(&self) -> bool {
        matches!(
            self,
            Architecture::EdmDhariwal(_) | Architecture::EdmSong(_)
        )
    }

    /// The parameter count the card declares, if any.
    pub fn declared_parameters(&self) -> Option<usize> {
        match self {
            Architecture::GuidedDiffusion(c) => c.num_parameters,
            Architecture::EdmDhariwal(e) => e.num_parameters,
            Architecture::EdmSong(s) => s.num_parameters,
            Architecture::Diffusers(_) => None,
        }
    }
}

/// How the network is queried (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    VpDiscrete,
    Edm,
    VpPrecond,
    VePrecond,
}

/// What a `vp-discrete` network predicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// The noise (diffusers' `epsilon`).
    #[default]
    Eps,
    /// The clean image (diffusers' `sample`).
    X0,
    /// `v = a eps - s x0` (diffusers' `v_prediction`).
    V,
}

fn default_kind() -> ScheduleKind {
    ScheduleKind::VpDiscrete
}
fn default_steps() -> usize {
    1000
}
fn default_noise_schedule() -> String {
    "linear".into()
}

/// The diffusion the network was trained for and how it is queried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleCard {
    #[serde(default = "default_kind")]
    pub kind: ScheduleKind,
    /// `vp-discrete`: the number of training steps T.
    #[serde(default = "default_steps")]
    pub diffusion_steps: usize,
    /// `vp-discrete`: `linear` (betas `beta_start .. beta_end`), `scaled_linear` (their
    /// square roots linear) or `cosine`.
    #[serde(default = "default_noise_schedule")]
    pub noise_schedule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_start: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_end: Option<f64>,
    /// `vp-discrete`: what the network predicts.
    #[serde(default)]
    pub output: Output,
    /// EDM: the data's standard deviation (0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_data: Option<f64>,
    /// EDM / VE: the smallest and largest noise levels (EDM 0.002 / 80, VE 0.02 / 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_max: Option<f64>,
    /// VP: `beta_d` (19.9), `beta_min` (0.1), `M` (1000), `epsilon_t` (1e-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_d: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_min: Option<f64>,
    #[serde(rename = "M", default, skip_serializing_if = "Option::is_none")]
    pub m: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_t: Option<f64>,
    /// Free text: what the network's time input is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_input: Option<String>,
}

impl ScheduleCard {
    /// A discrete VP schedule of `steps` steps named `noise_schedule`, predicting `output`.
    pub fn vp_discrete(steps: usize, noise_schedule: &str, output: Output) -> ScheduleCard {
        ScheduleCard {
            kind: ScheduleKind::VpDiscrete,
            diffusion_steps: steps,
            noise_schedule: noise_schedule.to_string(),
            beta_start: None,
            beta_end: None,
            output,
            sigma_data: None,
            sigma_min: None,
            sigma_max: None,
            beta_d: None,
            beta_min: None,
            m: None,
            epsilon_t: None,
            timestep_input: None,
        }
    }

    /// An EDM-preconditioned schedule of `kind` with EDM's defaults.
    pub fn precond(kind: ScheduleKind) -> ScheduleCard {
        ScheduleCard {
            kind,
            ..ScheduleCard::vp_discrete(1000, "linear", Output::Eps)
        }
    }

    /// `sigma_data` (EDM default 0.5).
    pub fn sigma_data(&self) -> f64 {
        self.sigma_data.unwrap_or(0.5)
    }
    /// `(sigma_min, sigma_max)` of an `edm` or `ve-precond` schedule.
    pub fn sigma_range(&self) -> (f64, f64) {
        let (lo, hi) = match self.kind {
            ScheduleKind::VePrecond => (0.02, 100.0),
            _ => (0.002, 80.0),
        };
        (self.sigma_min.unwrap_or(lo), self.sigma_max.unwrap_or(hi))
    }
    /// `(beta_d, beta_min, M, epsilon_t)` of a `vp-precond` schedule.
    pub fn vp_params(&self) -> (f64, f64, f64, f64) {
        (
            self.beta_d.unwrap_or(19.9),
            self.beta_min.unwrap_or(0.1),
            self.m.unwrap_or(1000.0),
            self.epsilon_t.unwrap_or(1e-5),
        )
    }

    /// The continuous path the prior presents to samplers: the discrete VP schedule's
    /// (`vp-discrete`), the geometric VE path between `sigma_min` and `sigma_max` (`edm`,
    /// `ve-precond`), or the discrete VP path with linear betas `beta_min / M ..
    /// (beta_min + beta_d) / M` over `M` steps, the DDPM discretisation of `VPPrecond`'s SDE
    /// (`vp-precond`). Any path works: the network is asked at `sigma = s / a`.
    pub fn path(&self) -> Result<Schedule> {
        let bad = |m: String| Err(Error::Invalid(format!("schedule: {m}")));
        match self.kind {
            ScheduleKind::VpDiscrete => {
                let t = self.diffusion_steps;
                crate::limits::check_steps("schedule.diffusion_steps", t)?;
                let scale = 1000.0 / t.max(1) as f64;
                let (b0, b1) = (
                    self.beta_start.unwrap_or(1e-4 * scale),
                    self.beta_end.unwrap_or(0.02 * scale),
                );
                match self.noise_schedule.as_str() {
                    "linear" if t == 1000 && self.beta_start.is_none() && self.beta_end.is_none() => {
                        Ok(Schedule::vp_linear())
                    }
                    "linear" => Schedule::vp_linear_with(b0, b1, t),
                    "scaled_linear" => Schedule::vp_scaled_linear(b0, b1, t),
                    "cosine" | "squaredcos_cap_v2" => Ok(Schedule::vp_cosine()),
                    other => Err(Error::Unsupported(format!(
                        "schedule.noise_schedule `{other}` is not supported (expected linear, scaled_linear or cosine)"
                    ))),
                }
            }
            ScheduleKind::Edm | ScheduleKind::VePrecond => {
                let (lo, hi) = self.sigma_range();
                if self.kind == ScheduleKind::Edm
                    && self.sigma_data().partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
                {
                    return bad(format!("sigma_data {} must be positive", self.sigma_data()));
                }
                Schedule::ve(lo, hi)
            }
            ScheduleKind::VpPrecond => {
                let (d, b, m, e) = self.vp_params();
                if !(d > 0.0 && b > 0.0 && m >= 2.0 && m.fract() == 0.0 && e > 0.0 && e < 1.0) {
                    return bad(format!(
                        "vp-precond needs beta_d > 0, beta_min > 0, an integer M >= 2 and 0 < epsilon_t < 1; got {d}, {b}, {m}, {e}"
                    ));
                }
                crate::limits::check_steps("schedule.M", m as usize)?;
                Schedule::vp_linear_with(b / m, (b + d) / m, m as usize)
            }
        }
    }
}

/// Where the weights are and how they are stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightsCard {
    /// The weights file (safetensors or a PyTorch checkpoint), relative to the directory
    /// (`null` for generated test weights).
    pub file: Option<String>,
    /// `f32`, `f16` or `bf16` (optional; checked against a safetensors file when present).
    #[serde(default)]
    pub dtype: Option<String>,
}

/// A prior directory's `model.json` (the fields the engine uses; the rest, such as training
/// data and figures, is kept in `extra` and shown by `posterior priors`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub format: String,
    pub architecture: Architecture,
    pub schedule: ScheduleCard,
    pub intensity_range: [f32; 2],
    pub channels: usize,
    pub resolution: [usize; 2],
    pub weights: WeightsCard,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn file_err(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl ModelCard {
    /// Reads and checks `model.json` (format tag, known types and kinds, self-consistency).
    pub fn read(path: &Path) -> Result<ModelCard> {
        let text = crate::io::read_text(path)?;
        Self::parse(&text).map_err(|e| match e {
            Error::File { .. } => e,
            other => file_err(path, other.to_string()),
        })
    }

    /// Parses and checks the text of a card (version 1 or 2).
    pub fn parse(text: &str) -> Result<ModelCard> {
        let mut v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("not a valid model card: {e}")))?;
        let format = v
            .get("format")
            .and_then(|f| f.as_str())
            .unwrap_or("(missing)")
            .to_string();
        match format.as_str() {
            CARD_FORMAT => {}
            CARD_FORMAT_V1 => upgrade_v1(&mut v),
            other => {
                return Err(Error::Unsupported(format!(
                    "model card format `{other}` is not supported (expected `{CARD_FORMAT}` or `{CARD_FORMAT_V1}`)"
                )))
            }
        }
        let card: ModelCard = serde_json::from_value(v)
            .map_err(|e| Error::Invalid(format!("not a valid model card: {e}")))?;
        card.check()?;
        Ok(card)
    }

    /// The card's fields agree with each other.
    pub fn check(&self) -> Result<()> {
        // A cap before anything is sized from the card (crate::limits).
        crate::limits::check_elements(
            "the card's image (channels, resolution)",
            &[self.channels, self.resolution[0], self.resolution[1]],
        )?;
        let a = self.architecture.network_shape()?;
        let bad = |m: String| Err(Error::Invalid(m));
        if self.channels != a.in_channels {
            return bad(format!(
                "the card says {} channel(s) but the architecture takes {}",
                self.channels, a.in_channels
            ));
        }
        if !self.resolution[0].is_multiple_of(a.size_divisor)
            || !self.resolution[1].is_multiple_of(a.size_divisor)
            || self.resolution.contains(&0)
        {
            return bad(format!(
                "resolution {:?} is not a positive multiple of {} as the architecture's {} levels need",
                self.resolution, a.size_divisor, a.levels
            ));
        }
        let [lo, hi] = self.intensity_range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return bad(format!("intensity_range [{lo}, {hi}] is not an interval"));
        }
        let precond = self.schedule.kind != ScheduleKind::VpDiscrete;
        if precond && !self.architecture.is_edm() {
            // Any network could sit under EDM's preconditioning; only EDM's own are known to.
            return Err(Error::Unsupported(format!(
                "schedule.kind {:?} with architecture `{}`: EDM preconditioning is read for EDM networks",
                self.schedule.kind,
                self.architecture.type_name()
            )));
        }
        if !precond && self.architecture.is_edm() {
            return Err(Error::Unsupported(format!(
                "architecture `{}` with schedule.kind vp-discrete: EDM's networks are queried through their preconditioning (schedule.kind edm, vp-precond or ve-precond)",
                self.architecture.type_name()
            )));
        }
        if precond && a.out_channels != a.in_channels {
            return Err(Error::Unsupported(format!(
                "an EDM-preconditioned network with {} output channels for {} input channels (iDDPMPrecond's learned variance is not supported)",
                a.out_channels, a.in_channels
            )));
        }
        if a.out_channels != a.in_channels && self.schedule.output != Output::Eps {
            return Err(Error::Unsupported(format!(
                "a learned-variance network ({} outputs) predicting {:?}: only eps is read with variance channels",
                a.out_channels, self.schedule.output
            )));
        }
        self.path_schedule()?;
        Ok(())
    }

    /// The continuous path the prior presents (see [`ScheduleCard::path`]).
    pub fn path_schedule(&self) -> Result<Schedule> {
        self.schedule.path()
    }

    /// The number of parameters the card declares, if any.
    pub fn declared_parameters(&self) -> Option<usize> {
        self.architecture.declared_parameters()
    }

    /// Serialises the card (pretty JSON, one space indent as the Python writers).
    pub fn to_json(&self) -> Result<String> {
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        self.serialize(&mut ser)
            .map_err(|e| Error::Invalid(format!("cannot serialise the model card: {e}")))?;
        let mut s = String::from_utf8(buf).map_err(|e| Error::Invalid(e.to_string()))?;
        s.push('\n');
        Ok(s)
    }
}

/// A version-1 card in version-2 form: the architecture is guided-diffusion's, the schedule
/// discrete VP, and `output` (free text there, always eps) becomes `eps`.
fn upgrade_v1(v: &mut serde_json::Value) {
    if let Some(a) = v.get_mut("architecture").and_then(|a| a.as_object_mut()) {
        a.entry("type").or_insert("guided-diffusion-unet".into());
    }
    if let Some(s) = v.get_mut("schedule").and_then(|s| s.as_object_mut()) {
        s.entry("kind").or_insert("vp-discrete".into());
        s.insert("output".into(), "eps".into());
    }
}
