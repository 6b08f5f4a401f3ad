//! The posterior samplers by name, with their official defaults: what `posterior
//! reconstruct --sampler` and the benchmark suites call.

use std::sync::Arc;

use posterior_operators::noise::NoiseModel;

use ndarray::{ArrayD, Axis};

use super::calibrate::CalibrationTable;
use super::flair::{Flair, FlairSettings};
use super::settings::{self, SettingValues};
use super::units::{problem_in_prior_units, PriorUnits};
use super::{
    Dds, DdsSettings, Dps, DpsSettings, Problem, RedDiff, RedDiffSettings, Sampler, Smc,
    SmcSettings,
};
use super::{Executor, Outcome};
use crate::error::{Error, Result};
use crate::prior::Gmm;
use crate::prior::{Denoiser, NetworkPrior, OnPath, Schedule};
use crate::spec::Physics;

/// The names [`build`] accepts.
pub const POSTERIOR_SAMPLERS: &[&str] = &["dps", "reddiff", "flair", "dds", "smc", "tds", "fps"];

/// Whether the sampler runs on the rectified-flow path (the caller presents the prior there
/// with [`crate::prior::OnPath`]); the others run on the prior's own path.
pub fn runs_on_flow_path(name: &str) -> bool {
    name == "flair"
}

/// A built posterior sampler: most run under the [`super::Executor`] as they are; SMC also
/// hands back its weighted ensemble (uncertainty map).
pub enum PosteriorSampler {
    Plain(Box<dyn Sampler>),
    Smc(Box<Smc>),
}

impl PosteriorSampler {
    /// The sampler's description.
    pub fn name(&self) -> String {
        match self {
            PosteriorSampler::Plain(s) => s.name(),
            PosteriorSampler::Smc(s) => s.name(),
        }
    }
}

/// Overrides of a sampler's defaults (`None` keeps the official default).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Denoiser steps.
    pub steps: Option<usize>,
    /// SMC particles per posterior sample.
    pub particles: Option<usize>,
    /// FLAIR's regulariser weights `lambda(t)` (the prior's calibration table); `None`
    /// keeps the uniform table.
    pub calibration: Option<CalibrationTable>,
    /// The sampler's other settings by name (`zeta`, `gamma`, `twist_scale`, ...; see
    /// [`super::settings`]); a key the sampler does not have is an error.
    pub set: SettingValues,
}

/// The sampler called `name` for `problem`; `family` is the operator family (`blur`,
/// `inpaint`, `sr`, `mri`, `ct`, `phase`), which picks DPS's official step size.
pub fn build(
    name: &str,
    problem: Arc<Problem>,
    family: &str,
    o: &Overrides,
) -> Result<PosteriorSampler> {
    let steps = |default: usize| o.steps.unwrap_or(default);
    if o.particles.is_some() && !matches!(name, "smc" | "tds" | "fps") {
        return Err(Error::Invalid(format!(
            "--particles applies to the SMC samplers (smc, tds, fps), not {name}"
        )));
    }
    Ok(match name {
        "dps" => PosteriorSampler::Plain(Box::new(Dps::new(problem, dps_settings(family, o)?)?)),
        "reddiff" | "red-diff" => {
            let d = RedDiffSettings::default();
            let s = RedDiffSettings {
                steps: steps(d.steps),
                ..d
            };
            let s = settings::apply_reddiff(s, &o.set)?;
            PosteriorSampler::Plain(Box::new(RedDiff::new(problem, s)?))
        }
        "flair" => {
            let d = FlairSettings::default();
            let s = FlairSettings {
                steps: steps(d.steps),
                table: o.calibration.clone().unwrap_or(d.table.clone()),
                ..d
            };
            let s = settings::apply_flair(s, &o.set)?;
            PosteriorSampler::Plain(Box::new(Flair::new(problem, s)?))
        }
        "dds" => PosteriorSampler::Plain(Box::new(Dds::new(problem, dds_settings(o)?)?)),
        "smc" | "tds" | "fps" => {
            let d = if name == "fps" {
                SmcSettings::fps()
            } else {
                SmcSettings::tds()
            };
            let s = SmcSettings {
                steps: steps(d.steps),
                particles: o.particles.unwrap_or(d.particles),
                ..d
            };
            let s = settings::apply_smc(s, &o.set)?;
            PosteriorSampler::Smc(Box::new(Smc::new(problem, s)?))
        }
        other => {
            return Err(Error::Invalid(format!(
                "unknown sampler `{other}`: expected one of {}",
                POSTERIOR_SAMPLERS.join(", ")
            )))
        }
    })
}

/// Network work per step of sampler `name` for one posterior sample: evaluations of the
/// network on one image, a VJP through it counted as 2 (a VJP reuses the forward pass and
/// runs the backward pass, about twice a forward's cost; measured on the shipped U-Nets at
/// 2.2-2.6x, see benches/README.md). DPS and TDS take one VJP per step (3), DDS, RED-diff,
/// FLAIR and FPS none (1); SMC multiplies by its particles. The last step of DPS and TDS has
/// no VJP for TDS only; this counts every step alike (an upper bound by 2 K).
pub fn work_per_step(name: &str, particles: usize) -> f64 {
    match name {
        "dps" => 3.0,
        "smc" | "tds" => 3.0 * particles as f64,
        "fps" => particles as f64,
        _ => 1.0,
    }
}

/// The step count that spends `work` (see [`work_per_step`]) on `samples` posterior samples
/// of sampler `name`, with `particles` for SMC (the sampler's default when `None`); at
/// least 1.
pub fn steps_for_work(name: &str, particles: Option<usize>, samples: usize, work: f64) -> usize {
    let k = particles.unwrap_or(SmcSettings::default().particles);
    let per = work_per_step(name, k) * samples.max(1) as f64;
    ((work / per).floor() as usize).max(1)
}

/// DPS's settings for the operator `family` (its official step size) with `o`'s overrides.
pub fn dps_settings(family: &str, o: &Overrides) -> Result<DpsSettings> {
    let d = DpsSettings::for_task(family);
    settings::apply_dps(
        DpsSettings {
            steps: o.steps.unwrap_or(d.steps),
            ..d
        },
        &o.set,
    )
}

/// DDS's settings with `o`'s overrides.
pub fn dds_settings(o: &Overrides) -> Result<DdsSettings> {
    let d = DdsSettings::default();
    settings::apply_dds(
        DdsSettings {
            steps: o.steps.unwrap_or(d.steps),
            ..d
        },
        &o.set,
    )
}

/// The Gaussian noise level per real measurement entry that a noise model implies:
/// `sigma` for Gaussian, `sigma / sqrt 2` per component for complex Gaussian, 0 for none;
/// for Poisson with `scale` counts per unit, the Gaussian approximation
/// `sqrt(mean(y) / scale)` of its variance `y / scale`.
pub fn gaussian_level(noise: &NoiseModel, y: ndarray::ArrayViewD<f32>) -> f64 {
    match *noise {
        NoiseModel::None => 0.0,
        NoiseModel::Gaussian { sigma } => sigma as f64,
        NoiseModel::ComplexGaussian { sigma } => sigma as f64 / std::f64::consts::SQRT_2,
        NoiseModel::Poisson { scale } => {
            let mean = y.iter().map(|v| v.max(0.0) as f64).sum::<f64>() / y.len().max(1) as f64;
            (mean / scale as f64).sqrt()
        }
    }
}

/// A prior the posterior samplers use: a [`Denoiser`] (whose [`crate::prior::PriorInfo`]
/// gives the intensity range, the resolution and the channels) plus what a reconstruction
/// asks of it beyond denoising. A shipped or imported network ([`NetworkPrior`]), an exact
/// mixture ([`Gmm`]), or a user's own denoiser (a Python callable in the bindings): the
/// defaults suit a denoiser that has nothing more to offer.
pub trait Prior: Denoiser {
    /// FLAIR's regulariser weights `lambda(t)` (the prior's calibration table), if it has
    /// one; FLAIR uses uniform weights otherwise.
    fn calibration(&self) -> Result<Option<CalibrationTable>> {
        Ok(None)
    }
    /// Runs the whole reconstruction on a device where the prior can (DPS and DDS resident
    /// on the GPU: no host round trip per step); `None` runs the host loop, which calls the
    /// denoiser once per step.
    fn resident(&self, _problem: &Problem, _run: &ResidentRun) -> Result<Option<Outcome>> {
        Ok(None)
    }
}

/// What [`Prior::resident`] is asked to run.
pub struct ResidentRun<'a> {
    /// The sampler's name (`dps`, `dds`; others run on the host).
    pub sampler: &'a str,
    pub dds: &'a DdsSettings,
    pub dps: &'a DpsSettings,
    /// Independent posterior samples.
    pub samples: usize,
    pub seed: u64,
}

impl Prior for NetworkPrior {
    fn calibration(&self) -> Result<Option<CalibrationTable>> {
        NetworkPrior::calibration(self)
    }
    fn resident(&self, problem: &Problem, run: &ResidentRun) -> Result<Option<Outcome>> {
        crate::gpu::sampler::resident_posterior(
            self,
            problem,
            run.sampler,
            run.dds,
            run.dps,
            run.samples,
            run.seed,
        )
    }
}

impl Prior for Gmm {}

/// What [`reconstruct_with_prior`] produced.
pub struct PriorReconstruction {
    /// The estimate in image units: the mean of the samples (SMC: of the weighted means).
    pub image: ArrayD<f32>,
    /// The pixelwise posterior standard deviation in image units: the SMC ensemble's (with
    /// two or more samples, within plus between their ensembles), or the spread of two or
    /// more samples; `None` otherwise.
    pub spread: Option<ArrayD<f32>>,
    /// The sampler's description.
    pub label: String,
    /// The run: its samples (in the prior's units, see `units`), counts and time.
    pub outcome: Outcome,
    /// Images per denoiser call: the samples, times the particles for SMC. A run evaluated
    /// the network on `outcome.nfe * batch` images and back-propagated through it
    /// `outcome.vjps * batch` times.
    pub batch: usize,
    /// The SMC ensemble's weight diagnostics (SMC samplers only).
    pub smc: Option<SmcReport>,
    /// Prior units to image units (`outcome.samples` are in the prior's units).
    pub units: PriorUnits,
    /// Every draw in image units, `(M, ...image_shape)`: the SMC particles of all samples'
    /// ensembles (`M = samples x particles`), else the independent samples (`M = samples`).
    pub particles: ArrayD<f32>,
}

/// What an SMC run's weights did (see [`super::smc::StepTrace`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SmcReport {
    /// Particles per posterior sample.
    pub particles: usize,
    /// The mean ESS over samples at each step, before resampling (the last entry: the
    /// final weights).
    pub ess_per_step: Vec<f64>,
    /// How many times some sample's particles were resampled.
    pub resamples: usize,
    /// Particles lost to non-finite values over the run.
    pub nonfinite: usize,
}

/// Reconstructs the measurement `y` of `physics` (noise model `noise`, image range
/// `image_range` mapped onto the prior's) with the sampler `name` and `prior`: the
/// measurement is restated in the prior's units ([`super::units`]), the sampler runs
/// `samples` independent posterior samples under `executor` (its seed, observers such as a
/// progress bar or [`super::Snapshots`], and time limit), and the result comes back in image
/// units. A run stopped by the time limit returns the latest denoised estimate (SMC: the
/// weighted mean at that step, without a spread).
#[allow(clippy::too_many_arguments)]
pub fn reconstruct_with_prior(
    physics: Physics,
    y: ArrayD<f32>,
    noise: &NoiseModel,
    image_range: (f32, f32),
    prior: Arc<dyn Prior>,
    name: &str,
    o: &Overrides,
    mut executor: Executor,
    samples: usize,
) -> Result<PriorReconstruction> {
    let info = prior.info().clone();
    let family = physics.family.name;
    let sigma_y = gaussian_level(noise, y.view());
    let units = PriorUnits::new(image_range, info.range)?;
    let problem = problem_in_prior_units(physics.operator, physics.embedding, y, sigma_y, units)?;
    problem.check_prior(&info)?;
    let mut o = o.clone();
    if o.calibration.is_none() {
        o.calibration = prior.calibration()?;
    }
    let problem = Arc::new(problem);
    let mut sampler = build(name, problem.clone(), family, &o)?;
    // DPS and DDS run resident on the GPU when the prior does and the operator has a device
    // twin (no per-step host round trip, so no time limit and one report at the end).
    let resident = if executor.has_time_limit() || !matches!(name, "dps" | "dds") {
        None
    } else {
        let (dds, dps) = if name == "dds" {
            (dds_settings(&o)?, DpsSettings::default())
        } else {
            (DdsSettings::default(), dps_settings(family, &o)?)
        };
        prior.resident(
            &problem,
            &ResidentRun {
                sampler: name,
                dds: &dds,
                dps: &dps,
                samples,
                seed: executor.seed(),
            },
        )?
    };
    let (label, outcome) = match resident {
        Some(outcome) => {
            executor.notify(&super::State {
                x: outcome.samples.clone(),
                x0_hat: None,
                step: outcome.steps,
                total: outcome.steps,
                t: 0.0,
            });
            (format!("{} (resident on the GPU)", sampler.name()), outcome)
        }
        None => {
            let prior: Arc<dyn Denoiser> = if runs_on_flow_path(name) {
                Arc::new(OnPath::new(prior, Schedule::rectified_flow()))
            } else {
                prior
            };
            let outcome = match &mut sampler {
                PosteriorSampler::Plain(s) => executor.run(s.as_mut(), prior.as_ref(), samples)?,
                PosteriorSampler::Smc(s) => executor.run(s.as_mut(), prior.as_ref(), samples)?,
            };
            (sampler.name(), outcome)
        }
    };
    let ensemble = match &sampler {
        PosteriorSampler::Smc(s) => s.ensemble(),
        PosteriorSampler::Plain(_) => None,
    };
    let (batch, smc) = match &sampler {
        PosteriorSampler::Smc(s) => {
            let k = s.settings().particles;
            let report = ensemble.map(|e| SmcReport {
                particles: k,
                ess_per_step: e.trace.iter().map(|t| t.ess_mean).collect(),
                resamples: e.resamples,
                nonfinite: e.trace.iter().map(|t| t.nonfinite).sum(),
            });
            (samples * k, report)
        }
        PosteriorSampler::Plain(_) => (samples, None),
    };
    let (mean, spread) = match ensemble {
        Some(ens) => {
            // The law of total variance over the independent samples' ensembles: the mean
            // within-ensemble variance plus the variance of the ensembles' means.
            let within = ens.std.mapv(|v| v * v).mean_axis(Axis(0));
            let between = ens.mean.var_axis(Axis(0), 0.0);
            let var = within.map(|w| w + between);
            (ens.mean.mean_axis(Axis(0)), var.map(|v| v.mapv(f32::sqrt)))
        }
        None => (
            outcome.samples.mean_axis(Axis(0)),
            (samples >= 2).then(|| outcome.samples.std_axis(Axis(0), 1.0)),
        ),
    };
    let draws = match ensemble {
        Some(ens) => {
            let sh = ens.particles.shape();
            let mut flat = vec![sh[0] * sh[1]];
            flat.extend_from_slice(&sh[2..]);
            ens.particles
                .to_shape(flat)
                .map_err(|e| Error::Shape(format!("SMC particles: {e}")))?
                .to_owned()
        }
        None => outcome.samples.clone(),
    };
    let mean = mean.ok_or_else(|| Error::Invalid("no samples were drawn".into()))?;
    Ok(PriorReconstruction {
        image: units.to_image(mean.view()),
        spread: spread.map(|s| s.mapv(|v| v * units.scale.abs())),
        label,
        outcome,
        batch,
        smc,
        units,
        particles: units.to_image(draws.view()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};
    use posterior_operators::forward::Operator;
    use posterior_operators::linear::Identity;

    fn problem(sigma: f64) -> Arc<Problem> {
        let op = Operator::Linear(Box::new(Identity::new(&[1, 4, 4])));
        Arc::new(Problem::new(op, ArrayD::zeros(IxDyn(&[1, 4, 4])), sigma).unwrap())
    }

    #[test]
    fn names_build_their_samplers_with_overrides_and_bad_requests_fail() {
        let o = Overrides {
            steps: Some(7),
            ..Overrides::default()
        };
        for name in ["dps", "reddiff", "dds", "flair"] {
            let s = build(name, problem(0.1), "blur", &o).unwrap();
            assert!(
                matches!(s, PosteriorSampler::Plain(ref p) if p.steps() == 7),
                "{name}"
            );
        }
        let o = Overrides {
            steps: Some(5),
            particles: Some(3),
            ..Overrides::default()
        };
        let s = build("fps", problem(0.1), "blur", &o).unwrap();
        assert!(s.name().contains("3 particles"), "{}", s.name());
        assert!(build("dps", problem(0.1), "blur", &o).is_err());
        let e = build("magic", problem(0.1), "blur", &Overrides::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("dps, reddiff"), "{e}");
        // SMC needs a noise level.
        assert!(build("smc", problem(0.0), "blur", &Overrides::default()).is_err());
    }

    #[test]
    fn noise_levels() {
        let y = ArrayD::from_elem(IxDyn(&[4]), 4.0f32);
        assert_eq!(gaussian_level(&NoiseModel::None, y.view()), 0.0);
        assert!(
            (gaussian_level(&NoiseModel::Gaussian { sigma: 0.1 }, y.view()) - 0.1).abs() < 1e-7
        );
        let c = gaussian_level(&NoiseModel::ComplexGaussian { sigma: 0.2 }, y.view());
        assert!((c - 0.2 / 2f64.sqrt()).abs() < 1e-7);
        let p = gaussian_level(&NoiseModel::Poisson { scale: 100.0 }, y.view());
        assert!((p - 0.2).abs() < 1e-7);
    }
}
