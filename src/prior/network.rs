//! A pretrained network as a prior: the prior directory (`model.json` card + weights, see
//! [`super::card`]; or a diffusers `UNet2DModel` directory, read as it is) and
//! [`NetworkPrior`], the [`Denoiser`] built on the ADM U-Net engine of [`crate::nn::unet`]
//! or on EDM's SongUNet ([`crate::nn::song`]).
//!
//! A prior is named by a directory or a shipped name, optionally followed by
//! `@SCHEDULE` for a diffusers UNet directory: its training schedule where no
//! `scheduler_config.json` states it (or in place of the one there), as comma-separated
//! diffusers scheduler settings, e.g. `./unet@scaled_linear,v_prediction` or
//! `./unet@linear,epsilon,num_train_timesteps=1000,beta_start=0.0001,beta_end=0.02` (see
//! [`parse_schedule_spec`]).
//!
//! Every supported network is queried through one form: at time `t` on the prior's path,
//! with `(a, s)` its coefficients, the network `F` is evaluated at `c_in x` with noise label
//! `c_noise`, and Tweedie's estimate is `x0 = c_x x + c_out F[:C]` (unclipped: clipping to
//! the intensity range would make the VJP inexact; samplers may clip). Per
//! `schedule.kind`:
//! - `vp-discrete` (guided-diffusion, diffusers): `c_in = 1`; the label is the discrete step
//!   `n = t T - 1` clamped to `[0, T - 1]` (step `n` of the official code sits at
//!   `t = (n + 1) / T`; times below `1/T`, where the discrete model was never trained, use
//!   step 0); eps: `x0 = (x - s eps) / a`; x0: `x0 = F`; v: `x0 = a x - s v`. A learned-sigma
//!   model's variance channels are ignored by the denoiser and available through
//!   [`NetworkPrior::raw`].
//! - `edm`, `vp-precond`, `ve-precond` (EDM): the network is EDM's preconditioned
//!   `D(x~; sigma) = c_skip x~ + c_out F(c_in x~, c_noise)` at `sigma = s / a` and
//!   `x~ = x / a` (the VE form of the same point), with `EDMPrecond`'s, `VPPrecond`'s or
//!   `VEPrecond`'s coefficients; `sigma` is floored at the schedule's `sigma_min` for the
//!   logarithmic labels (EDM, VE), where a sampler on another path asks at `s = 0`.
//!
//! The VJP is `v^T dx0/dx = c_x v + c_in J_F^T (c_out v)`, exact through the network.

use std::path::{Path, PathBuf};

use ndarray::{s, ArrayD, ArrayView4, ArrayViewD, Axis, Ix4};

use super::card::{Architecture, Output, ScheduleCard, ScheduleKind, WeightsCard};
use super::denoiser::{check_batch, Denoiser, PriorInfo, Pullback};
use super::schedule::Schedule;
use crate::checkpoint::{open_weights, Weights};
use crate::error::{Error, Result};
use crate::gpu::unet::{GpuUNet, GpuUNetTape};
use crate::gpu::{Backend, GpuTensor};
use crate::nn::diffusers::{DiffusersNaming, DiffusersUNetConfig};
use crate::nn::edm::{check_resample_filters, EdmNaming};
use crate::nn::layout::Renamed;
use crate::nn::safetensors::SafeTensors;
use crate::nn::song::{SongTape, SongUNet};
use crate::nn::unet::{UNet, UNetTape};

pub use super::card::{ModelCard, CARD_FILE, CARD_FORMAT, CARD_FORMAT_V1};

/// A network the CPU engine computes: the ADM U-Net (guided-diffusion, diffusers'
/// `UNet2DModel`, EDM's `DhariwalUNet`) or EDM's `SongUNet`.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per prior
pub enum Network {
    Adm(UNet),
    Song(SongUNet),
}

/// The activations of one forward pass of a [`Network`], kept for its VJP.
pub enum NetworkTape<'a> {
    Adm(UNetTape<'a>),
    Song(SongTape<'a>),
}

impl NetworkTape<'_> {
    /// `d/dx sum(model(x, labels) * v)` for the recorded forward pass.
    pub fn backward(self, v: ArrayView4<f32>) -> Result<ndarray::Array4<f32>> {
        match self {
            NetworkTape::Adm(t) => t.backward(v),
            NetworkTape::Song(t) => t.backward(v),
        }
    }
}

impl Network {
    /// `model(x, labels)`: `(N, C, H, W) -> (N, C_out, H, W)`.
    pub fn forward(&self, x: ArrayView4<f32>, labels: &[f32]) -> Result<ndarray::Array4<f32>> {
        match self {
            Network::Adm(u) => u.forward(x, labels),
            Network::Song(s) => s.forward(x, labels),
        }
    }

    /// `model(x, labels)` and the tape for its VJP with respect to `x`.
    pub fn forward_tape(
        &self,
        x: ArrayView4<f32>,
        labels: &[f32],
    ) -> Result<(ndarray::Array4<f32>, NetworkTape<'_>)> {
        Ok(match self {
            Network::Adm(u) => {
                let (o, t) = u.forward_tape(x, labels)?;
                (o, NetworkTape::Adm(t))
            }
            Network::Song(s) => {
                let (o, t) = s.forward_tape(x, labels)?;
                (o, NetworkTape::Song(t))
            }
        })
    }

    /// `(model(x, labels), d/dx sum(model(x, labels) * v))`.
    pub fn forward_vjp(
        &self,
        x: ArrayView4<f32>,
        labels: &[f32],
        v: ArrayView4<f32>,
    ) -> Result<(ndarray::Array4<f32>, ndarray::Array4<f32>)> {
        let (out, tape) = self.forward_tape(x, labels)?;
        Ok((out, tape.backward(v)?))
    }
}

/// The activation tape of one forward pass, on the device that ran it.
enum Tape<'a> {
    Cpu(NetworkTape<'a>),
    Gpu(GpuUNetTape<'a>),
}

/// The calibration table's file name inside a prior directory (`posterior calibrate`).
pub const CALIBRATION_FILE: &str = "calibration.json";

fn file_err(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Checks a safetensors file's element type against the card's `weights.dtype`.
fn check_dtype(card: &ModelCard, path: &Path) -> Result<()> {
    let Some(want) = card.weights.dtype.as_deref() else {
        return Ok(());
    };
    if crate::io::extension(path) != "safetensors" {
        return Ok(());
    }
    let st = SafeTensors::read(path)?;
    let want_d = match want.to_ascii_lowercase().as_str() {
        "f32" | "float32" => "F32",
        "f16" | "float16" => "F16",
        "bf16" | "bfloat16" => "BF16",
        _ => "?",
    };
    match st.common_dtype() {
        Some(found) if found.name() != want_d => Err(file_err(
            path,
            format!(
                "the card says the weights are {want}, but the file stores {}",
                found.name()
            ),
        )),
        _ => Ok(()),
    }
}

/// Builds the network of `card` from the weights file `path` (safetensors or a PyTorch
/// checkpoint); `config_file` names the file that describes the architecture, for messages.
pub fn load_network(card: &ModelCard, path: &Path, config_file: &str) -> Result<Network> {
    check_dtype(card, path)?;
    let src = open_weights(path)?;
    let mut w = Weights::new(src.as_ref(), config_file);
    let net = build_from(card, &mut w)?;
    w.finish(card.declared_parameters())?;
    Ok(net)
}

/// The prefix of EDM's networks in a state dict: `model.` when it is a preconditioning
/// wrapper's (`EDMPrecond`, `VPPrecond`, ...), else none.
fn edm_prefix(w: &Weights) -> &'static str {
    let names = w.names();
    if !names.is_empty() && names.iter().all(|n| n.starts_with("model.")) {
        "model."
    } else {
        ""
    }
}

/// Builds the network of `card`, taking its parameters from `w` in the layout of the card's
/// architecture (the caller checks with [`Weights::finish`] that every tensor was used).
pub fn build_from(card: &ModelCard, w: &mut Weights) -> Result<Network> {
    let arch = &card.architecture;
    Ok(match arch {
        Architecture::GuidedDiffusion(_) => Network::Adm(UNet::build(arch.unet_config()?, w)?),
        Architecture::Diffusers(d) => {
            let mut r = Renamed {
                weights: w,
                plan: d.plan(),
                naming: DiffusersNaming,
                prefix: String::new(),
            };
            Network::Adm(UNet::build(arch.unet_config()?, &mut r)?)
        }
        Architecture::EdmDhariwal(e) => {
            let prefix = edm_prefix(w).to_string();
            let mut r = Renamed {
                weights: w,
                plan: e.plan(),
                naming: EdmNaming,
                prefix,
            };
            let unet = UNet::build(arch.unet_config()?, &mut r)?;
            check_resample_filters(w)?;
            Network::Adm(unet)
        }
        Architecture::EdmSong(c) => {
            let prefix = edm_prefix(w);
            Network::Song(SongUNet::build(c.clone(), w, prefix)?)
        }
    })
}

/// Builds the ADM-engine network of `card` from the weights file `path` (described by
/// `model.json`); an error for a SongUNet card (see [`load_network`]).
pub fn load_unet(card: &ModelCard, path: &Path) -> Result<UNet> {
    match load_network(card, path, CARD_FILE)? {
        Network::Adm(u) => Ok(u),
        Network::Song(_) => Err(Error::Unsupported(
            "an edm-song-unet card describes a SongUNet, not an ADM U-Net: use load_network".into(),
        )),
    }
}

/// Weights file names diffusers writes, in the order they are looked for.
const DIFFUSERS_WEIGHTS: [&str; 4] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
];

/// A diffusers directory's UNet folder and scheduler config: a pipeline directory
/// (`unet/`, `scheduler/`) or a bare `UNet2DModel` directory (`config.json` + weights, with
/// `scheduler_config.json` beside it).
fn diffusers_layout(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    if dir.join("unet").join("config.json").is_file() {
        return Some((
            dir.join("unet"),
            dir.join("scheduler").join("scheduler_config.json"),
        ));
    }
    dir.join("config.json")
        .is_file()
        .then(|| (dir.to_path_buf(), dir.join("scheduler_config.json")))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = crate::io::read_text(path)?;
    serde_json::from_str(&text).map_err(|e| file_err(path, format!("not valid JSON: {e}")))
}

/// diffusers scheduler config keys that only steer diffusers' own sampling loop (our
/// samplers have their own settings) or record provenance.
const SCHEDULER_PASS_KEYS: [&str; 13] = [
    "_class_name",
    "_diffusers_version",
    "variance_type",
    "clip_sample",
    "clip_sample_range",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "timestep_spacing",
    "steps_offset",
    "set_alpha_to_one",
    "skip_prk_steps",
    "_use_default_values",
];

/// The schedule card of a diffusers `DDPMScheduler` / `DDIMScheduler` config: the training
/// betas (`linear`, `scaled_linear`, `squaredcos_cap_v2`) and `prediction_type`. Keys that
/// only steer diffusers' sampling loop pass; any other key is an error naming it.
pub fn schedule_from_diffusers(cfg: &serde_json::Value) -> Result<ScheduleCard> {
    let obj = cfg
        .as_object()
        .ok_or_else(|| Error::Invalid("the scheduler config is not a JSON object".into()))?;
    let bad = |k: &str, v: &serde_json::Value, want: &str| {
        Err(Error::Unsupported(format!(
            "diffusers scheduler: `{k}` = {v} is not supported (expected {want})"
        )))
    };
    let mut card = ScheduleCard::vp_discrete(1000, "linear", Output::Eps);
    card.beta_start = Some(1e-4);
    card.beta_end = Some(0.02);
    for (k, v) in obj {
        match k.as_str() {
            "num_train_timesteps" => match v.as_u64() {
                Some(n) if n >= 2 => card.diffusion_steps = n as usize,
                _ => return bad(k, v, "an integer >= 2"),
            },
            "beta_start" | "beta_end" => match v.as_f64() {
                Some(b) => {
                    if k == "beta_start" {
                        card.beta_start = Some(b)
                    } else {
                        card.beta_end = Some(b)
                    }
                }
                None => return bad(k, v, "a number"),
            },
            "beta_schedule" => {
                card.noise_schedule = match v.as_str() {
                    Some("linear") => "linear".into(),
                    Some("scaled_linear") => "scaled_linear".into(),
                    Some("squaredcos_cap_v2") => "cosine".into(),
                    _ => return bad(k, v, "linear, scaled_linear or squaredcos_cap_v2"),
                }
            }
            "prediction_type" => {
                card.output = match v.as_str() {
                    Some("epsilon") => Output::Eps,
                    Some("sample") => Output::X0,
                    Some("v_prediction") => Output::V,
                    _ => return bad(k, v, "epsilon, sample or v_prediction"),
                }
            }
            "trained_betas" if v.is_null() => {}
            "trained_betas" => return bad(k, &"[...]".into(), "null"),
            "rescale_betas_zero_snr" if v.as_bool() != Some(true) => {}
            "rescale_betas_zero_snr" => return bad(k, v, "false"),
            _ if SCHEDULER_PASS_KEYS.contains(&k.as_str()) => {}
            other => {
                return Err(Error::Unsupported(format!(
                    "diffusers scheduler: the key `{other}` is not supported (read: num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type, trained_betas, rescale_betas_zero_snr; passed: {})",
                    SCHEDULER_PASS_KEYS.join(", ")
                )))
            }
        }
    }
    if card.noise_schedule == "cosine" {
        card.beta_start = None;
        card.beta_end = None;
    }
    Ok(card)
}

/// The card of a diffusers directory (read in memory, nothing written) and its weights file;
/// `schedule` overrides (or stands in for a missing) scheduler config.
pub fn diffusers_card(dir: &Path, schedule: Option<ScheduleCard>) -> Result<(ModelCard, PathBuf)> {
    let (unet_dir, sched_path) = diffusers_layout(dir).ok_or_else(|| {
        file_err(
            dir,
            "not a diffusers directory: no config.json or unet/config.json",
        )
    })?;
    let cfg_path = unet_dir.join("config.json");
    let cfg = DiffusersUNetConfig::parse(&read_json(&cfg_path)?)
        .map_err(|e| file_err(&cfg_path, e.to_string()))?;
    let schedule = match schedule {
        Some(s) => s,
        None if sched_path.is_file() => schedule_from_diffusers(&read_json(&sched_path)?)
            .map_err(|e| file_err(&sched_path, e.to_string()))?,
        None => {
            return Err(file_err(
                &sched_path,
                format!(
                    "missing: the training schedule of a diffusers UNet comes from its scheduler_config.json (beside config.json, or scheduler/ in a pipeline), or name it after the directory: `{}@linear,epsilon` (beta schedule, prediction type, ...; see the README's \"Bring your own checkpoint\")",
                    dir.display()
                ),
            ))
        }
    };
    let resolution = cfg.resolution().ok_or_else(|| {
        file_err(
            &cfg_path,
            "`sample_size` is missing: the image size the UNet was trained at is needed",
        )
    })?;
    let weights = DIFFUSERS_WEIGHTS
        .iter()
        .map(|f| unet_dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            file_err(
                &unet_dir,
                format!(
                    "no weights: expected one of {}",
                    DIFFUSERS_WEIGHTS.join(", ")
                ),
            )
        })?;
    let mut extra = serde_json::Map::new();
    extra.insert(
        "source".into(),
        format!("diffusers directory {}", dir.display()).into(),
    );
    let card = ModelCard {
        format: CARD_FORMAT.into(),
        channels: cfg.in_channels,
        architecture: Architecture::Diffusers(cfg),
        schedule,
        intensity_range: [-1.0, 1.0],
        resolution,
        weights: WeightsCard {
            file: weights
                .file_name()
                .map(|f| f.to_string_lossy().into_owned()),
            dtype: None,
        },
        extra,
    };
    card.check()
        .map_err(|e| file_err(&cfg_path, e.to_string()))?;
    Ok((card, weights))
}

/// The shipped prior used for an operator family when none is given: `brain-mri` for MRI,
/// `ct-ellipses` for CT, `fmnist-32` otherwise.
pub fn default_prior_for(family: &str) -> &'static str {
    match family {
        "mri" => "brain-mri",
        "ct" => "ct-ellipses",
        _ => "fmnist-32",
    }
}

/// The directories searched for priors by name: `$POSTERIOR_PRIORS` (`:`-separated), then
/// the project's `priors/`.
pub fn prior_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = std::env::var("POSTERIOR_PRIORS")
        .map(|v| {
            v.split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("priors"));
    roots
}

/// Every prior reachable by name, `(name, directory)`: prior directories (a `model.json`)
/// and diffusers directories, sorted by name; where two roots hold the same name, the
/// first root wins.
pub fn shipped_priors() -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for root in prior_roots() {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut here: Vec<(String, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join(CARD_FILE).is_file() || diffusers_layout(p).is_some())
            .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), p)))
            .collect();
        here.sort();
        for (name, dir) in here {
            if !found.iter().any(|(n, _)| *n == name) {
                found.push((name, dir));
            }
        }
    }
    found.sort();
    found
}

/// Finds a prior by directory path or by name: a directory holding `model.json` or a
/// diffusers `UNet2DModel` (pipeline or bare UNet directory), else a shipped prior `NAME`
/// under [`prior_roots`].
pub fn resolve_prior(name_or_path: &str) -> Result<PathBuf> {
    let direct = PathBuf::from(name_or_path);
    if direct.join(CARD_FILE).is_file() || diffusers_layout(&direct).is_some() {
        return Ok(direct);
    }
    let known = shipped_priors();
    if let Some((_, dir)) = known.iter().find(|(n, _)| n == name_or_path) {
        return Ok(dir.clone());
    }
    let names: Vec<&str> = known.iter().map(|(n, _)| n.as_str()).collect();
    Err(file_err(
        &direct,
        format!(
            "no prior here: not a directory with a {CARD_FILE} or a diffusers config.json, and no shipped prior has this name (known: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ),
    ))
}

/// Splits a prior reference `NAME_OR_DIR[@SCHEDULE]` (see the module docs). An existing
/// path is taken whole, even with an `@` in it.
pub fn split_prior_spec(spec: &str) -> Result<(&str, Option<ScheduleCard>)> {
    if Path::new(spec).exists() {
        return Ok((spec, None));
    }
    match spec.rsplit_once('@') {
        Some((name, schedule)) if !name.is_empty() => {
            Ok((name, Some(parse_schedule_spec(schedule)?)))
        }
        _ => Ok((spec, None)),
    }
}

/// A diffusers training schedule from comma-separated settings: `key=value` with the keys
/// of a diffusers scheduler config (`beta_schedule`, `prediction_type`,
/// `num_train_timesteps`, `beta_start`, `beta_end`), or bare values: a beta schedule
/// (`linear`, `scaled_linear`, `squaredcos_cap_v2`), a prediction type (`epsilon`,
/// `sample`, `v_prediction`) or the number of training steps. Unset keys take diffusers'
/// `DDPMScheduler` defaults (1000 steps, linear betas 1e-4 .. 0.02, epsilon).
pub fn parse_schedule_spec(text: &str) -> Result<ScheduleCard> {
    let spec_err = |m: String| {
        Error::Spec(format!(
            "schedule `{text}`: {m} (expected comma-separated settings such as linear,epsilon or scaled_linear,v_prediction,beta_start=0.00085,beta_end=0.012)"
        ))
    };
    let mut cfg = serde_json::Map::new();
    for item in text.split(',').map(str::trim) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => match item {
                "linear" | "scaled_linear" | "squaredcos_cap_v2" => ("beta_schedule", item),
                "epsilon" | "sample" | "v_prediction" => ("prediction_type", item),
                _ if item.parse::<u64>().is_ok() => ("num_train_timesteps", item),
                _ => {
                    return Err(spec_err(format!(
                        "`{item}` is not a beta schedule, a prediction type or a step count"
                    )))
                }
            },
        };
        let value: serde_json::Value = match key {
            "beta_schedule" | "prediction_type" => value.into(),
            "num_train_timesteps" | "beta_start" | "beta_end" => serde_json::from_str(value)
                .map_err(|_| spec_err(format!("`{key}` needs a number, got `{value}`")))?,
            _ => return Err(spec_err(format!("unknown setting `{key}`"))),
        };
        if cfg.insert(key.to_string(), value).is_some() {
            return Err(spec_err(format!("`{key}` is given twice")));
        }
    }
    schedule_from_diffusers(&serde_json::Value::Object(cfg)).map_err(|e| spec_err(e.to_string()))
}

/// The card of the prior in `dir`, its weights file and the file that describes its
/// network: `model.json`, or a diffusers directory's `config.json` with its schedule
/// (`schedule`, else its `scheduler_config.json`). A schedule given for a prior directory,
/// whose card states its own, is an error.
pub fn prior_card(
    dir: &Path,
    schedule: Option<ScheduleCard>,
) -> Result<(ModelCard, PathBuf, &'static str)> {
    let card_path = dir.join(CARD_FILE);
    if !card_path.is_file() {
        let (card, weights) = diffusers_card(dir, schedule)?;
        return Ok((card, weights, "config.json"));
    }
    if schedule.is_some() {
        return Err(file_err(
            &card_path,
            "a schedule after `@` applies to diffusers directories; this prior's card states its own (edit schedule in model.json)",
        ));
    }
    let card = ModelCard::read(&card_path)?;
    let file = card.weights.file.clone().ok_or_else(|| {
        file_err(
            &card_path,
            "the card names no weights file (weights.file is null)",
        )
    })?;
    Ok((card, dir.join(file), CARD_FILE))
}

/// How the network is queried at one time (see the module docs): input scale `c_in`,
/// noise label, and `x0 = c_x x + c_out F`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Coef {
    c_in: f32,
    label: f32,
    c_x: f32,
    c_out: f32,
}

/// The card's query form, resolved.
#[derive(Clone, Debug, PartialEq)]
enum Precond {
    Discrete { steps: usize, output: Output },
    Edm { sigma_data: f64, floor: f64 },
    Vp { beta_d: f64, beta_min: f64, m: f64 },
    Ve { floor: f64 },
}

impl Precond {
    fn from_card(s: &ScheduleCard) -> Precond {
        match s.kind {
            ScheduleKind::VpDiscrete => Precond::Discrete {
                steps: s.diffusion_steps,
                output: s.output,
            },
            ScheduleKind::Edm => Precond::Edm {
                sigma_data: s.sigma_data(),
                floor: s.sigma_range().0,
            },
            ScheduleKind::VpPrecond => {
                let (beta_d, beta_min, m, _) = s.vp_params();
                Precond::Vp {
                    beta_d,
                    beta_min,
                    m,
                }
            }
            ScheduleKind::VePrecond => Precond::Ve {
                floor: s.sigma_range().0,
            },
        }
    }

    /// The discrete step for time `t` (`t T - 1` clamped to `[0, T - 1]`).
    fn step(steps: usize, t: f64) -> f64 {
        let n = steps as f64;
        (t * n - 1.0).clamp(0.0, n - 1.0)
    }

    /// The coefficients at time `t` with path coefficients `(a, s)`.
    fn coef(&self, t: f64, a: f64, s: f64) -> Coef {
        let c = |c_in: f64, label: f64, c_x: f64, c_out: f64| Coef {
            c_in: c_in as f32,
            label: label as f32,
            c_x: c_x as f32,
            c_out: c_out as f32,
        };
        let sigma = |floor: f64| (s / a).max(floor);
        match *self {
            Precond::Discrete { steps, output } => {
                let n = Self::step(steps, t);
                match output {
                    Output::Eps => c(1.0, n, 1.0 / a, -s / a),
                    Output::X0 => c(1.0, n, 0.0, 1.0),
                    Output::V => c(1.0, n, a, -s),
                }
            }
            Precond::Edm { sigma_data, floor } => {
                let (sg, sd2) = (sigma(floor), sigma_data * sigma_data);
                let r = (sg * sg + sd2).sqrt();
                c(
                    1.0 / (r * a),
                    sg.ln() / 4.0,
                    sd2 / (sg * sg + sd2) / a,
                    sg * sigma_data / r,
                )
            }
            Precond::Vp {
                beta_d,
                beta_min,
                m,
            } => {
                let sg = sigma(0.0);
                let t_of_sigma =
                    ((beta_min * beta_min + 2.0 * beta_d * (1.0 + sg * sg).ln()).sqrt() - beta_min)
                        / beta_d;
                c(
                    1.0 / ((sg * sg + 1.0).sqrt() * a),
                    (m - 1.0) * t_of_sigma,
                    1.0 / a,
                    -sg,
                )
            }
            Precond::Ve { floor } => {
                let sg = sigma(floor);
                c(1.0 / a, (0.5 * sg).ln(), 1.0 / a, sg)
            }
        }
    }
}

/// A pretrained network seen as a [`Denoiser`] on its path.
///
/// On the CPU by default; [`NetworkPrior::use_backend`] with a CUDA backend uploads the
/// network, after which every evaluation runs on the GPU (inputs and outputs still cross
/// the host once per call): guided-diffusion-style eps networks only so far.
#[derive(Debug)]
pub struct NetworkPrior {
    dir: Option<PathBuf>,
    net: Network,
    device: Option<Box<GpuUNet>>,
    card: ModelCard,
    schedule: Schedule,
    precond: Precond,
    info: PriorInfo,
}

/// A checked batch, the network's input (scaled by `c_in` where that is not 1), its noise
/// labels and the per-sample coefficients.
type Prepared<'a> = (
    ArrayView4<'a, f32>,
    Option<ndarray::Array4<f32>>,
    Vec<f32>,
    Vec<Coef>,
);

impl NetworkPrior {
    /// Opens a prior directory (or a shipped prior by name, see [`resolve_prior`]): a card
    /// with its weights, or a diffusers directory read as it is; `spec` may end in
    /// `@SCHEDULE` for a diffusers directory (see the module docs).
    pub fn open(spec: &str) -> Result<NetworkPrior> {
        let (name_or_path, schedule) = split_prior_spec(spec)?;
        let dir = resolve_prior(name_or_path)?;
        let (card, weights, config_file) = prior_card(&dir, schedule)?;
        let net = load_network(&card, &weights, config_file)?;
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name_or_path.to_string());
        let mut prior = NetworkPrior::new(net, card, &name)?;
        prior.dir = Some(dir);
        Ok(prior)
    }

    /// The directory the prior was opened from.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The FLAIR calibration table stored beside the weights, if there is one.
    pub fn calibration(&self) -> Result<Option<crate::sample::calibrate::CalibrationTable>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = dir.join(CALIBRATION_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = crate::io::read_text(&path)?;
        crate::sample::calibrate::CalibrationTable::from_json(&text)
            .map(Some)
            .map_err(|e| file_err(&path, e.to_string()))
    }

    /// A prior from a built network and its card.
    pub fn new(net: Network, card: ModelCard, name: &str) -> Result<NetworkPrior> {
        card.check()?;
        let same = match (&net, &card.architecture) {
            (Network::Song(s), Architecture::EdmSong(c)) => s.config() == c,
            (Network::Adm(u), a) if !matches!(a, Architecture::EdmSong(_)) => {
                u.config() == &a.unet_config()?
            }
            _ => false,
        };
        if !same {
            return Err(Error::Invalid(
                "the network's configuration differs from the card's architecture".into(),
            ));
        }
        let schedule = card.path_schedule()?;
        let info = PriorInfo {
            name: name.to_string(),
            range: (card.intensity_range[0], card.intensity_range[1]),
            sample_shape: vec![card.channels, card.resolution[0], card.resolution[1]],
        };
        Ok(NetworkPrior {
            dir: None,
            net,
            device: None,
            precond: Precond::from_card(&card.schedule),
            card,
            schedule,
            info,
        })
    }

    pub fn card(&self) -> &ModelCard {
        &self.card
    }
    /// The network on the CPU.
    pub fn network(&self) -> &Network {
        &self.net
    }
    /// The ADM U-Net of a guided-diffusion, diffusers or EDM DhariwalUNet prior (an error
    /// for a SongUNet prior).
    pub fn unet(&self) -> Result<&UNet> {
        match &self.net {
            Network::Adm(u) => Ok(u),
            Network::Song(_) => Err(Error::Unsupported(format!(
                "{}: an EDM SongUNet, not an ADM U-Net (it runs on the CPU only for now)",
                self.info.name
            ))),
        }
    }

    /// Whether the GPU path computes this prior: an eps-predicting discrete network with
    /// guided-diffusion's embedding order.
    pub fn runs_on_gpu(&self) -> bool {
        matches!(
            self.precond,
            Precond::Discrete {
                output: Output::Eps,
                ..
            }
        ) && matches!(&self.net, Network::Adm(u) if u.config().runs_on_gpu())
    }

    /// An error unless [`NetworkPrior::runs_on_gpu`].
    pub fn check_gpu(&self) -> Result<()> {
        if self.runs_on_gpu() {
            return Ok(());
        }
        Err(Error::Unsupported(format!(
            "{}: a {} network with schedule kind {:?} (output {:?}) runs on the CPU only for now (use --device cpu)",
            self.info.name,
            self.card.architecture.type_name(),
            self.card.schedule.kind,
            self.card.schedule.output
        )))
    }

    /// Runs the network on `backend` from now on: CUDA uploads the weights to the GPU, CPU
    /// drops any device copy. A prior the GPU path does not compute refuses CUDA
    /// ([`NetworkPrior::check_gpu`]).
    pub fn use_backend(&mut self, backend: &Backend) -> Result<()> {
        self.device = match backend {
            Backend::Cpu => None,
            Backend::Cuda(gpu) => {
                self.check_gpu()?;
                Some(Box::new(GpuUNet::from_cpu(gpu.clone(), self.unet()?)?))
            }
        };
        Ok(())
    }

    /// The device copy of the network, when the prior runs on a GPU.
    pub fn gpu_unet(&self) -> Option<&GpuUNet> {
        self.device.as_deref()
    }

    /// `model(x, labels)` on whichever device the prior runs on.
    fn forward(&self, x: ArrayView4<f32>, labels: &[f32]) -> Result<ndarray::Array4<f32>> {
        match &self.device {
            Some(d) => d.forward_host(x, labels),
            None => self.net.forward(x, labels),
        }
    }

    /// The network's noise label at time `t`: the discrete step `t T - 1` clamped to
    /// `[0, T - 1]` (`vp-discrete`), EDM's `c_noise(sigma)` otherwise.
    pub fn noise_label(&self, t: f32) -> f32 {
        let (a, s) = self.schedule.coeffs(t as f64);
        self.precond.coef(t as f64, a, s).label
    }

    /// The discrete steps `T` of a `vp-discrete` prior (`None` for EDM's continuous labels).
    pub fn diffusion_steps(&self) -> Option<usize> {
        match self.precond {
            Precond::Discrete { steps, .. } => Some(steps),
            _ => None,
        }
    }

    /// The network's own output `model(x, labels)` (for guided-diffusion: eps, then the
    /// variance channels of a learned-sigma model, at step indices; for EDM: `F` at noise
    /// labels `c_noise`, the input not scaled).
    pub fn raw(&self, x: ArrayView4<f32>, labels: &[f32]) -> Result<ndarray::Array4<f32>> {
        self.forward(x, labels)
    }

    fn prepare<'a>(&self, x_t: &ArrayViewD<'a, f32>, t: &[f32]) -> Result<Prepared<'a>> {
        check_batch(&self.info, x_t, t, "x_t")?;
        let x4 = x_t
            .clone()
            .into_dimensionality::<Ix4>()
            .map_err(|e| Error::Shape(format!("{}: {e}", self.info.name)))?;
        let coefs: Vec<Coef> = t
            .iter()
            .map(|&ti| {
                let (a, s) = self.schedule.coeffs(ti as f64);
                self.precond.coef(ti as f64, a, s)
            })
            .collect();
        let labels = coefs.iter().map(|c| c.label).collect();
        let scaled = coefs.iter().any(|c| c.c_in != 1.0).then(|| {
            let mut x = x4.to_owned();
            for (i, c) in coefs.iter().enumerate() {
                x.index_axis_mut(Axis(0), i).mapv_inplace(|v| v * c.c_in);
            }
            x
        });
        Ok((x4, scaled, labels, coefs))
    }

    /// `x0 = c_x x + c_out F[:C]` per sample.
    fn tweedie(
        &self,
        x4: ArrayView4<f32>,
        out: &ndarray::Array4<f32>,
        coefs: &[Coef],
    ) -> ArrayD<f32> {
        let c = self.card.channels;
        let mut x0 = x4.to_owned();
        for (i, k) in coefs.iter().enumerate() {
            let f = out.slice(s![i, ..c, .., ..]);
            x0.index_axis_mut(Axis(0), i)
                .zip_mut_with(&f, |x, &e| *x = k.c_x * *x + k.c_out * e);
        }
        x0.into_dyn()
    }
}

impl Denoiser for NetworkPrior {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn info(&self) -> &PriorInfo {
        &self.info
    }
    fn x0(&self, x_t: ArrayViewD<f32>, t: &[f32]) -> Result<ArrayD<f32>> {
        let (x4, scaled, labels, coefs) = self.prepare(&x_t, t)?;
        let input = scaled.as_ref().map_or(x4.view(), |x| x.view());
        let out = self.forward(input, &labels)?;
        Ok(self.tweedie(x4, &out, &coefs))
    }
    fn x0_vjp(
        &self,
        x_t: ArrayViewD<f32>,
        t: &[f32],
        v: ArrayViewD<f32>,
    ) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
        crate::prior::denoiser::x0_vjp_by_pullback(self, x_t, t, v)
    }
    fn x0_pullback<'a>(
        &'a self,
        x_t: ArrayViewD<f32>,
        t: &[f32],
    ) -> Result<(ArrayD<f32>, Pullback<'a>)> {
        let (x4, scaled, labels, coefs) = self.prepare(&x_t, t)?;
        let input = scaled.as_ref().map_or(x4.view(), |x| x.view());
        let c = self.card.channels;
        let (out, tape) = match &self.device {
            None => {
                let (out, tape) = self.net.forward_tape(input, &labels)?;
                (out, Tape::Cpu(tape))
            }
            Some(d) => {
                let g = d.gpu();
                let xd = GpuTensor::from_host(g, input.into_dyn())?;
                let (out, tape) = d.forward_tape(&xd, &labels)?;
                let out = out
                    .to_host(g)?
                    .into_dimensionality::<Ix4>()
                    .map_err(|e| Error::Shape(format!("{}: {e}", self.info.name)))?;
                (out, Tape::Gpu(tape))
            }
        };
        let x0 = self.tweedie(x4, &out, &coefs);
        drop(scaled);
        let out_channels = out.dim().1;
        let name = self.info.name.clone();
        let want = x_t.shape().to_vec();
        let pullback = move |v: ArrayViewD<f32>| -> Result<ArrayD<f32>> {
            if v.shape() != want.as_slice() {
                return Err(Error::Shape(format!(
                    "{name}: the VJP vector has shape {:?}, expected {want:?}",
                    v.shape()
                )));
            }
            // x0 = c_x x + c_out F(c_in x), so v^T dx0/dx = c_x v + c_in J_F^T (c_out v).
            let (n, _, h, w) = (want[0], want[1], want[2], want[3]);
            let mut cot = ndarray::Array4::<f32>::zeros((n, out_channels, h, w));
            for (i, k) in coefs.iter().enumerate() {
                cot.slice_mut(s![i, ..c, .., ..])
                    .zip_mut_with(&v.index_axis(Axis(0), i), |o, &u| *o = k.c_out * u);
            }
            let mut g = match tape {
                Tape::Cpu(tape) => tape.backward(cot.view())?,
                Tape::Gpu(tape) => {
                    let dev = tape.gpu().clone();
                    let cd = GpuTensor::from_host(&dev, cot.view().into_dyn())?;
                    tape.backward(&cd)?
                        .to_host(&dev)?
                        .into_dimensionality::<Ix4>()
                        .map_err(|e| Error::Shape(format!("{name}: {e}")))?
                }
            };
            for (i, k) in coefs.iter().enumerate() {
                g.index_axis_mut(Axis(0), i)
                    .zip_mut_with(&v.index_axis(Axis(0), i), |gi, &u| {
                        *gi = k.c_in * *gi + k.c_x * u
                    });
            }
            Ok(g.into_dyn())
        };
        Ok((x0, Box::new(pullback)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coefficients reproduce each form's definition at a generic point: VP eps / x0 / v
    /// give back x0 from a consistent (x0, eps) pair, and EDM's forms are `D(x~; sigma)` at
    /// `sigma = s / a`, `x~ = x / a` (EDM's own formulas written out).
    #[test]
    fn query_coefficients_match_each_parameterisation() {
        let (a, s) = (0.6f64, 0.8f64);
        let (x0, eps) = (0.3f64, -1.2f64);
        let x = a * x0 + s * eps;
        let v = a * eps - s * x0;
        for (output, f) in [(Output::Eps, eps), (Output::X0, x0), (Output::V, v)] {
            let k = Precond::Discrete {
                steps: 1000,
                output,
            }
            .coef(0.5, a, s);
            let got = k.c_x as f64 * x + k.c_out as f64 * f;
            assert!((got - x0).abs() < 1e-6, "{output:?}: {got} vs {x0}");
            assert_eq!(k.label, 499.0);
            assert_eq!(k.c_in, 1.0);
        }
        let sigma = s / a;
        let xt = x / a;
        let f = 0.7f64;
        let sd = 0.5f64;
        let k = Precond::Edm {
            sigma_data: sd,
            floor: 0.002,
        }
        .coef(0.5, a, s);
        let want = sd * sd / (sigma * sigma + sd * sd) * xt
            + sigma * sd / (sigma * sigma + sd * sd).sqrt() * f;
        let got = k.c_x as f64 * x + k.c_out as f64 * f;
        assert!((got - want).abs() < 1e-6);
        assert!((k.c_in as f64 * x - xt / (sd * sd + sigma * sigma).sqrt()).abs() < 1e-6);
        assert!((k.label as f64 - sigma.ln() / 4.0).abs() < 1e-6);
        // VP: c_noise = (M - 1) sigma^-1(sigma) inverts sigma(t) = sqrt(exp(bd t^2 / 2 + bm t) - 1).
        let (bd, bm) = (19.9f64, 0.1f64);
        let tt = 0.37f64;
        let sg = ((0.5 * bd * tt * tt + bm * tt).exp() - 1.0).sqrt();
        let a1 = 1.0 / (1.0 + sg * sg).sqrt();
        let k = Precond::Vp {
            beta_d: bd,
            beta_min: bm,
            m: 1000.0,
        }
        .coef(0.0, a1, sg * a1);
        assert!((k.label as f64 - 999.0 * tt).abs() < 1e-3, "{}", k.label);
        assert!((k.c_out as f64 + sg).abs() < 1e-5);
        // VE at s = 0 (another path's clean end): sigma floored, labels finite.
        let k = Precond::Ve { floor: 0.02 }.coef(0.0, 1.0, 0.0);
        assert!(k.label.is_finite() && (k.label as f64 - 0.01f64.ln()).abs() < 1e-6);
    }
}
