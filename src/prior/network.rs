//! A pretrained network as a prior: the prior directory format (`model.safetensors` +
//! `model.json`, format `posterior-adm-v1`, written by `notebooks/convert_checkpoint.py`
//! and the training scripts) and [`NetworkPrior`], the [`Denoiser`] built on guided-diffusion's
//! U-Net.
//!
//! Time convention: the network takes guided-diffusion's step index `n` in `[0, T)` (as a
//! float); on the continuous path of [`Schedule`] step `n` sits at `t = (n + 1) / T`, so
//! a query at time `t` feeds `n = t T - 1`, clamped to `[0, T - 1]` (times below `1/T`,
//! where the discrete model was never trained, use step 0). The network predicts `eps`
//! (the first `C` output channels; a learned-sigma model's variance channels are ignored
//! by the denoiser and available through [`NetworkPrior::raw`]), and Tweedie's estimate is
//! `x0 = (x_t - s(t) eps) / a(t)`, unclipped (clipping to the intensity range would make
//! the VJP inexact; samplers may clip).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ndarray::{s, ArrayD, ArrayView4, ArrayViewD, Axis, Ix4};
use serde::{Deserialize, Serialize};

use super::denoiser::{check_batch, Denoiser, PriorInfo, Pullback};
use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::gpu::unet::{GpuUNet, GpuUNetTape};
use crate::gpu::{Backend, GpuTensor};
use crate::nn::safetensors::{Dtype, SafeTensors};
use crate::nn::unet::{ParamSource, UNet, UNetConfig, UNetTape};

/// The activation tape of one forward pass, on the device that ran it.
enum Tape<'a> {
    Cpu(UNetTape<'a>),
    Gpu(GpuUNetTape<'a>),
}

/// The calibration table's file name inside a prior directory (`posterior calibrate`).
pub const CALIBRATION_FILE: &str = "calibration.json";

/// The format tag of a prior directory's model card.
pub const CARD_FORMAT: &str = "posterior-adm-v1";
/// The card's file name inside a prior directory.
pub const CARD_FILE: &str = "model.json";

/// The diffusion the network was trained for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleCard {
    pub diffusion_steps: usize,
    /// `linear` (betas `1e-4 s .. 0.02 s`, `s = 1000 / T`) or `cosine`.
    pub noise_schedule: String,
}

/// Where the weights are and how they are stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightsCard {
    /// The safetensors file, relative to the directory (`null` for generated test weights).
    pub file: Option<String>,
    /// `f32` or `f16` (optional; checked against the file when present).
    #[serde(default)]
    pub dtype: Option<String>,
}

/// A prior directory's `model.json` (the fields the engine uses; the rest, such as training
/// data and figures, is kept in `extra` and shown by `posterior priors`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub format: String,
    pub architecture: UNetConfig,
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
    /// Reads and checks `model.json` (format tag, self-consistency).
    pub fn read(path: &Path) -> Result<ModelCard> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| file_err(path, format!("cannot read the model card: {e}")))?;
        let card: ModelCard = serde_json::from_str(&text)
            .map_err(|e| file_err(path, format!("not a valid model card: {e}")))?;
        if card.format != CARD_FORMAT {
            return Err(file_err(
                path,
                format!(
                    "model card format `{}` is not supported (expected `{CARD_FORMAT}`)",
                    card.format
                ),
            ));
        }
        card.check().map_err(|e| file_err(path, e.to_string()))?;
        Ok(card)
    }

    /// The card's fields agree with each other.
    pub fn check(&self) -> Result<()> {
        let a = &self.architecture;
        // Caps before anything is sized from the card (crate::limits).
        crate::limits::check_elements(
            "the card's image (channels, resolution)",
            &[self.channels, self.resolution[0], self.resolution[1]],
        )?;
        crate::limits::check_steps("schedule.diffusion_steps", self.schedule.diffusion_steps)?;
        a.validate()?;
        let bad = |m: String| Err(Error::Invalid(m));
        if self.channels != a.in_channels {
            return bad(format!(
                "the card says {} channel(s) but the architecture takes {}",
                self.channels, a.in_channels
            ));
        }
        if !self.resolution[0].is_multiple_of(a.size_divisor())
            || !self.resolution[1].is_multiple_of(a.size_divisor())
        {
            return bad(format!(
                "resolution {:?} is not a multiple of {} as the architecture's {} levels need",
                self.resolution,
                a.size_divisor(),
                a.channel_mult.len()
            ));
        }
        let [lo, hi] = self.intensity_range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return bad(format!("intensity_range [{lo}, {hi}] is not an interval"));
        }
        self.path_schedule()?;
        Ok(())
    }

    /// The continuous path matching the card's discrete schedule.
    pub fn path_schedule(&self) -> Result<Schedule> {
        let s = &self.schedule;
        match s.noise_schedule.as_str() {
            "linear" if s.diffusion_steps == 1000 => Ok(Schedule::vp_linear()),
            "linear" => {
                let scale = 1000.0 / s.diffusion_steps as f64;
                Schedule::vp_linear_with(1e-4 * scale, 0.02 * scale, s.diffusion_steps)
            }
            "cosine" => Ok(Schedule::vp_cosine()),
            other => Err(Error::Invalid(format!(
                "noise_schedule `{other}` is not supported (expected linear or cosine)"
            ))),
        }
    }

    /// The number of parameters the card declares (`architecture.num_parameters`), if any.
    pub fn declared_parameters(&self) -> Option<usize> {
        self.architecture.num_parameters
    }
}

/// Parameters from a safetensors file, every shape checked against the architecture and
/// every stored tensor required to be used.
struct FileSource<'a> {
    st: &'a SafeTensors,
    used: BTreeSet<String>,
    count: usize,
}

impl ParamSource for FileSource<'_> {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let path = self.st.path();
        let info = self.st.info(key).ok_or_else(|| {
            file_err(
                path,
                format!(
                    "missing tensor `{key}` (shape {shape:?}) that the architecture in {CARD_FILE} needs; the card disagrees with the weights"
                ),
            )
        })?;
        if info.shape != shape {
            return Err(file_err(
                path,
                format!(
                    "tensor `{key}` has shape {:?}, but the architecture in {CARD_FILE} expects {shape:?}; the card disagrees with the weights",
                    info.shape
                ),
            ));
        }
        self.used.insert(key.to_string());
        self.count += shape.iter().product::<usize>();
        let v = self.st.f32_values(key)?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(file_err(
                path,
                format!("tensor `{key}` holds a non-finite value at flat index {i}"),
            ));
        }
        Ok(v)
    }
}

/// Builds the network of `card` from the weights file `path`.
pub fn load_unet(card: &ModelCard, path: &Path) -> Result<UNet> {
    let st = SafeTensors::read(path)?;
    if let (Some(want), Some(found)) = (card.weights.dtype.as_deref(), st.common_dtype()) {
        let want_d = match want.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Some(Dtype::F32),
            "f16" | "float16" => Some(Dtype::F16),
            "bf16" | "bfloat16" => Some(Dtype::Bf16),
            _ => None,
        };
        if want_d != Some(found) {
            return Err(file_err(
                path,
                format!(
                    "the card says the weights are {want}, but the file stores {}",
                    found.name()
                ),
            ));
        }
    }
    let mut src = FileSource {
        st: &st,
        used: BTreeSet::new(),
        count: 0,
    };
    let unet = UNet::build(card.architecture.clone(), &mut src)?;
    let unused: Vec<&str> = st.keys().filter(|k| !src.used.contains(*k)).collect();
    if let Some(first) = unused.first() {
        return Err(file_err(
            path,
            format!(
                "{} stored tensor(s) are not part of the architecture in {CARD_FILE}, e.g. `{first}`; the card disagrees with the weights",
                unused.len()
            ),
        ));
    }
    if let Some(n) = card.declared_parameters() {
        if n != src.count {
            return Err(file_err(
                path,
                format!(
                    "the card declares {n} parameters, the weights hold {}",
                    src.count
                ),
            ));
        }
    }
    Ok(unet)
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

/// Every prior reachable by name, `(name, directory)`, sorted by name; where two roots hold
/// the same name, the first root wins.
pub fn shipped_priors() -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for root in prior_roots() {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut here: Vec<(String, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join(CARD_FILE).is_file())
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

/// Finds a prior by directory path or by name: a directory holding `model.json`, else a
/// shipped prior `NAME` under [`prior_roots`].
pub fn resolve_prior(name_or_path: &str) -> Result<PathBuf> {
    let direct = PathBuf::from(name_or_path);
    if direct.join(CARD_FILE).is_file() {
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
            "no prior here: not a directory with a {CARD_FILE}, and no shipped prior has this name (known: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ),
    ))
}

/// A guided-diffusion network seen as a [`Denoiser`] on its VP path.
///
/// On the CPU by default; [`NetworkPrior::use_backend`] with a CUDA backend uploads the
/// network, after which every evaluation runs on the GPU (inputs and outputs still cross
/// the host once per call).
#[derive(Debug)]
pub struct NetworkPrior {
    dir: Option<PathBuf>,
    unet: UNet,
    device: Option<Box<GpuUNet>>,
    card: ModelCard,
    schedule: Schedule,
    info: PriorInfo,
}

/// A checked batch, the network's step inputs and the path coefficients `(a, s)`.
type Prepared<'a> = (ArrayView4<'a, f32>, Vec<f32>, Vec<(f32, f32)>);

impl NetworkPrior {
    /// Opens a prior directory (or a shipped prior by name, see [`resolve_prior`]).
    pub fn open(name_or_path: &str) -> Result<NetworkPrior> {
        let dir = resolve_prior(name_or_path)?;
        let card = ModelCard::read(&dir.join(CARD_FILE))?;
        let file = card.weights.file.clone().ok_or_else(|| {
            file_err(
                &dir.join(CARD_FILE),
                "the card names no weights file (weights.file is null)",
            )
        })?;
        let unet = load_unet(&card, &dir.join(file))?;
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name_or_path.to_string());
        let mut prior = NetworkPrior::new(unet, card, &name)?;
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
        let text = std::fs::read_to_string(&path)
            .map_err(|e| file_err(&path, format!("cannot read: {e}")))?;
        crate::sample::calibrate::CalibrationTable::from_json(&text)
            .map(Some)
            .map_err(|e| file_err(&path, e.to_string()))
    }

    /// A prior from a built network and its card.
    pub fn new(unet: UNet, card: ModelCard, name: &str) -> Result<NetworkPrior> {
        card.check()?;
        if unet.config() != &card.architecture {
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
            unet,
            device: None,
            card,
            schedule,
            info,
        })
    }

    pub fn card(&self) -> &ModelCard {
        &self.card
    }
    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    /// Runs the network on `backend` from now on: CUDA uploads the weights to the GPU, CPU
    /// drops any device copy.
    pub fn use_backend(&mut self, backend: &Backend) -> Result<()> {
        self.device = match backend {
            Backend::Cpu => None,
            Backend::Cuda(gpu) => Some(Box::new(GpuUNet::from_cpu(gpu.clone(), &self.unet)?)),
        };
        Ok(())
    }

    /// The device copy of the network, when the prior runs on a GPU.
    pub fn gpu_unet(&self) -> Option<&GpuUNet> {
        self.device.as_deref()
    }

    /// `model(x, steps)` on whichever device the prior runs on.
    fn forward(&self, x: ArrayView4<f32>, steps: &[f32]) -> Result<ndarray::Array4<f32>> {
        match &self.device {
            Some(d) => d.forward_host(x, steps),
            None => self.unet.forward(x, steps),
        }
    }

    /// The network's step input for time `t`: `t T - 1` clamped to `[0, T - 1]`.
    pub fn step_for_time(&self, t: f32) -> f32 {
        let n = self.card.schedule.diffusion_steps as f32;
        (t * n - 1.0).clamp(0.0, n - 1.0)
    }

    /// The network's own output `model(x, steps)` (eps, then the variance channels of a
    /// learned-sigma model) at guided-diffusion step indices.
    pub fn raw(&self, x: ArrayView4<f32>, steps: &[f32]) -> Result<ndarray::Array4<f32>> {
        self.forward(x, steps)
    }

    fn prepare<'a>(&self, x_t: &ArrayViewD<'a, f32>, t: &[f32]) -> Result<Prepared<'a>> {
        check_batch(&self.info, x_t, t, "x_t")?;
        let x4 = x_t
            .clone()
            .into_dimensionality::<Ix4>()
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.info.name)))?;
        let steps = t.iter().map(|&ti| self.step_for_time(ti)).collect();
        let coeffs = t
            .iter()
            .map(|&ti| {
                let (a, s) = self.schedule.coeffs(ti as f64);
                (a as f32, s as f32)
            })
            .collect();
        Ok((x4, steps, coeffs))
    }
}

impl NetworkPrior {
    /// `x0 = (x - s eps) / a` per sample, `eps` the first `C` output channels.
    fn tweedie(
        &self,
        x4: ArrayView4<f32>,
        out: &ndarray::Array4<f32>,
        coeffs: &[(f32, f32)],
    ) -> ArrayD<f32> {
        let c = self.card.channels;
        let mut x0 = x4.to_owned();
        for (i, &(a, s)) in coeffs.iter().enumerate() {
            let eps = out.slice(s![i, ..c, .., ..]);
            x0.index_axis_mut(Axis(0), i)
                .zip_mut_with(&eps, |x, &e| *x = (*x - s * e) / a);
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
        let (x4, steps, coeffs) = self.prepare(&x_t, t)?;
        let out = self.forward(x4.view(), &steps)?;
        Ok(self.tweedie(x4, &out, &coeffs))
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
        let (x4, steps, coeffs) = self.prepare(&x_t, t)?;
        let c = self.card.channels;
        let (out, tape) = match &self.device {
            None => {
                let (out, tape) = self.unet.forward_tape(x4.view(), &steps)?;
                (out, Tape::Cpu(tape))
            }
            Some(d) => {
                let g = d.gpu();
                let xd = GpuTensor::from_host(g, x4.into_dyn())?;
                let (out, tape) = d.forward_tape(&xd, &steps)?;
                let out = out
                    .to_host(g)?
                    .into_dimensionality::<Ix4>()
                    .map_err(|e| Error::Invalid(format!("{}: {e}", self.info.name)))?;
                (out, Tape::Gpu(tape))
            }
        };
        let x0 = self.tweedie(x4, &out, &coeffs);
        let out_channels = self.card.architecture.out_channels;
        let name = self.info.name.clone();
        let want = x_t.shape().to_vec();
        let pullback = move |v: ArrayViewD<f32>| -> Result<ArrayD<f32>> {
            if v.shape() != want.as_slice() {
                return Err(Error::Invalid(format!(
                    "{name}: the VJP vector has shape {:?}, expected {want:?}",
                    v.shape()
                )));
            }
            // x0 = (x - s eps(x)) / a, so v^T dx0/dx = v / a + J_eps^T (-(s / a) v).
            let (n, _, h, w) = (want[0], want[1], want[2], want[3]);
            let mut cot = ndarray::Array4::<f32>::zeros((n, out_channels, h, w));
            for (i, &(a, s)) in coeffs.iter().enumerate() {
                cot.slice_mut(s![i, ..c, .., ..])
                    .zip_mut_with(&v.index_axis(Axis(0), i), |o, &u| *o = -(s / a) * u);
            }
            let mut g = match tape {
                Tape::Cpu(tape) => tape.backward(cot.view())?,
                Tape::Gpu(tape) => {
                    let dev = tape.gpu().clone();
                    let cd = GpuTensor::from_host(&dev, cot.view().into_dyn())?;
                    tape.backward(&cd)?
                        .to_host(&dev)?
                        .into_dimensionality::<Ix4>()
                        .map_err(|e| Error::Invalid(format!("{name}: {e}")))?
                }
            };
            for (i, &(a, _)) in coeffs.iter().enumerate() {
                g.index_axis_mut(Axis(0), i)
                    .zip_mut_with(&v.index_axis(Axis(0), i), |gi, &u| *gi += u / a);
            }
            Ok(g.into_dyn())
        };
        Ok((x0, Box::new(pullback)))
    }
}
