//! One call from a measurement to a reconstruction: [`Reconstruction`], a builder that reads
//! as the sentence a user would say.
//!
//! ```no_run
//! use posterior::prelude::*;
//! # fn main() -> posterior::Result<()> {
//! # let y = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[8, 2, 64, 64]));
//! let physics = Mri::coils(8).accel(4.0).build(&[1, 64, 64])?;
//! let prior = NetworkPrior::open("brain-mri")?;
//! let r = Reconstruction::new(physics, y)
//!     .noise(NoiseModel::ComplexGaussian { sigma: 0.005 })
//!     .sampler(Dds::default().steps(50))
//!     .prior(prior)
//!     .seed(0)
//!     .run()?;
//! println!("{} NFE in {:.1} s", r.nfe, r.seconds);
//! # Ok(()) }
//! ```
//!
//! # Units
//! A prior works in its own intensity range (usually `[-1, 1]`); the measurement is in the
//! image's units. The builder restates the measurement in the prior's units
//! ([`crate::sample::units`]) from the image range: [`Reconstruction::image_range`] when
//! given, else the measurement's own ([`crate::sample::units::measured_range`]: MRI
//! `[0, p99.5]` of the zero-filled magnitude, CT of the filtered back-projection), else
//! `[min(0, y), max(1, y)]` (image-like measurements of `[0, 1]` images). Results come back
//! in image units.
//!
//! # What comes back
//! [`Reconstructed`]: the image `(C, H, W)` (for MRI, the magnitude of the complex image
//! unless [`Reconstruction::keep_complex`]), the pixelwise posterior standard deviation
//! where there is an ensemble, every draw, and the counts (denoiser evaluations, VJPs,
//! seconds). The same request gives the same numbers as `posterior reconstruct` with the
//! same seed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, ArrayViewD, Axis};
use posterior_operators::noise::NoiseModel;

use crate::error::{Error, Result};
use crate::measurement::Measurement;
use crate::recon::{self, Method, ReconOptions};
use crate::sample::posterior::{reconstruct_with_prior, Overrides, Prior};
use crate::sample::settings::{self, SettingValue, SettingValues};
use crate::sample::{Executor, Observer};
use crate::solve::Likelihood;
use crate::spec::{Embedding, Physics};

/// A posterior sampler by name with its overrides: what [`Reconstruction::sampler`] takes
/// (from [`Dps`], [`Dds`], ... or [`SamplerChoice::named`]).
#[derive(Clone, Debug)]
pub struct SamplerChoice {
    name: String,
    steps: Option<usize>,
    particles: Option<usize>,
    set: SettingValues,
}

impl SamplerChoice {
    /// The sampler called `name` (`dps`, `reddiff`, `flair`, `dds`, `smc`, `tds`, `fps`)
    /// with its official defaults; an unknown name is an error when the reconstruction runs.
    pub fn named(name: &str) -> SamplerChoice {
        SamplerChoice {
            name: name.to_string(),
            steps: None,
            particles: None,
            set: SettingValues::new(),
        }
    }
    /// The sampler's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Denoiser steps (the sampler's default when not set).
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = Some(steps);
        self
    }
    /// Particles per posterior sample (SMC samplers only).
    pub fn particles(mut self, particles: usize) -> Self {
        self.particles = Some(particles);
        self
    }
    /// A setting by name (`zeta`, `eta`, `cg_iters`, ...; `posterior ops` and
    /// [`crate::sample::settings`] list them); checked when the reconstruction runs.
    pub fn set(mut self, key: &str, value: f64) -> Self {
        self.set
            .insert(key.to_string(), SettingValue::Number(value));
        self
    }
    /// A flag setting by name.
    pub fn flag(mut self, key: &str, value: bool) -> Self {
        self.set.insert(key.to_string(), SettingValue::Flag(value));
        self
    }
    /// Whether the sampler differentiates through the denoiser (a VJP per step): DPS and
    /// the twisted SMC samplers.
    pub fn needs_vjp(&self) -> bool {
        matches!(self.name.as_str(), "dps" | "smc" | "tds")
    }
}

/// Typed sampler requests: each is a [`SamplerChoice`] for one sampler.
macro_rules! sampler {
    ($(#[$doc:meta])* $t:ident, $name:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $t(SamplerChoice);
        impl Default for $t {
            fn default() -> Self {
                $t(SamplerChoice::named($name))
            }
        }
        impl $t {
            /// Denoiser steps (the sampler's default when not set).
            pub fn steps(self, steps: usize) -> Self {
                $t(self.0.steps(steps))
            }
            /// A setting by name (see [`SamplerChoice::set`]).
            pub fn set(self, key: &str, value: f64) -> Self {
                $t(self.0.set(key, value))
            }
            /// A flag setting by name.
            pub fn flag(self, key: &str, value: bool) -> Self {
                $t(self.0.flag(key, value))
            }
        }
        impl From<$t> for SamplerChoice {
            fn from(s: $t) -> SamplerChoice {
                s.0
            }
        }
    };
}

macro_rules! smc_sampler {
    ($(#[$doc:meta])* $t:ident, $name:literal) => {
        sampler!($(#[$doc])* $t, $name);
        impl $t {
            /// Particles per posterior sample.
            pub fn particles(self, particles: usize) -> Self {
                $t(self.0.particles(particles))
            }
        }
    };
}

sampler!(
    /// Diffusion posterior sampling: ancestral steps plus the gradient of the data term
    /// through the denoiser's VJP (1000 steps, the official step size per operator family).
    Dps,
    "dps"
);
sampler!(
    /// RED-diff: Adam on one image with an SNR-weighted denoising regulariser.
    RedDiff,
    "reddiff"
);
sampler!(
    /// FLAIR-style variational sampling on the rectified-flow path (50 steps).
    Flair,
    "flair"
);
sampler!(
    /// Decomposed diffusion sampling: Tweedie, then conjugate gradients on the data term,
    /// DDIM eta 0.85 (50 steps, 5 CG iterations; linear operators).
    Dds,
    "dds"
);
smc_sampler!(
    /// Twisted SMC (the default twisting): a weighted particle ensemble with an
    /// uncertainty map.
    Smc,
    "smc"
);
smc_sampler!(
    /// TDS, twisted diffusion sampling: SMC twisted by the denoiser's VJP.
    Tds,
    "tds"
);
smc_sampler!(
    /// Filtering posterior sampling: exact Gaussian conditionals per particle (linear
    /// operators, Gaussian noise).
    Fps,
    "fps"
);

/// The adjoint `c A^T y` (zero-filling for MRI, back-projection for CT), `c` fitted to `y`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Adjoint;

/// Least squares by conjugate gradients with Tikhonov weight `lambda`.
#[derive(Clone, Copy, Debug)]
pub struct Cg {
    pub lambda: f32,
    pub iters: usize,
}

impl Default for Cg {
    fn default() -> Self {
        Cg {
            lambda: 0.0,
            iters: Method::Cg.default_iters(),
        }
    }
}

/// Total-variation regularised least squares (PDHG), relative weight `lambda`.
#[derive(Clone, Copy, Debug)]
pub struct Tv {
    pub lambda: f32,
    pub iters: usize,
    /// Constrain the image to `x >= 0`.
    pub nonnegative: bool,
}

impl Default for Tv {
    fn default() -> Self {
        Tv {
            lambda: crate::solve::TvOptions::default().lambda,
            iters: Method::Tv.default_iters(),
            nonnegative: false,
        }
    }
}

/// Filtered back-projection (CT) with a filter: `ramp`, `shepp-logan`, `cosine`, `hann`.
#[derive(Clone, Debug)]
pub struct Fbp {
    pub filter: String,
}

impl Default for Fbp {
    fn default() -> Self {
        Fbp {
            filter: "ramp".into(),
        }
    }
}

impl From<Adjoint> for ReconOptions {
    fn from(_: Adjoint) -> ReconOptions {
        ReconOptions::new(Method::Adjoint)
    }
}

impl From<Cg> for ReconOptions {
    fn from(m: Cg) -> ReconOptions {
        ReconOptions {
            lambda: Some(m.lambda),
            iters: Some(m.iters),
            ..ReconOptions::new(Method::Cg)
        }
    }
}

impl From<Tv> for ReconOptions {
    fn from(m: Tv) -> ReconOptions {
        ReconOptions {
            lambda: Some(m.lambda),
            iters: Some(m.iters),
            nonnegative: m.nonnegative,
            ..ReconOptions::new(Method::Tv)
        }
    }
}

impl From<Fbp> for ReconOptions {
    fn from(m: Fbp) -> ReconOptions {
        ReconOptions {
            filter: m.filter,
            ..ReconOptions::new(Method::Fbp)
        }
    }
}

impl From<Method> for ReconOptions {
    fn from(m: Method) -> ReconOptions {
        ReconOptions::new(m)
    }
}

/// Anything that can serve as the prior of a [`Reconstruction`]: a prior by value, or one
/// shared behind an [`Arc`].
pub trait IntoPrior {
    /// The shared prior.
    fn into_prior(self) -> Arc<dyn Prior>;
}

impl<P: Prior + 'static> IntoPrior for P {
    fn into_prior(self) -> Arc<dyn Prior> {
        Arc::new(self)
    }
}

impl<P: Prior + 'static> IntoPrior for Arc<P> {
    fn into_prior(self) -> Arc<dyn Prior> {
        self
    }
}

impl<P: Prior + 'static> IntoPrior for &Arc<P> {
    fn into_prior(self) -> Arc<dyn Prior> {
        self.clone()
    }
}

impl IntoPrior for Arc<dyn Prior> {
    fn into_prior(self) -> Arc<dyn Prior> {
        self
    }
}

impl IntoPrior for &Arc<dyn Prior> {
    fn into_prior(self) -> Arc<dyn Prior> {
        self.clone()
    }
}

/// How the reconstruction is made.
enum How {
    Unset,
    Classical(ReconOptions),
    Sampler(SamplerChoice),
}

/// A reconstruction request: the measurement, its forward model, and how to reconstruct.
pub struct Reconstruction<'o> {
    physics: Physics,
    y: ArrayD<f32>,
    noise: NoiseModel,
    image_range: Option<(f32, f32)>,
    how: How,
    prior: Option<Arc<dyn Prior>>,
    seed: u64,
    samples: usize,
    time_limit: Option<Duration>,
    observers: Vec<&'o mut (dyn Observer + Send)>,
    on_iter: Option<&'o mut (dyn FnMut(usize, f64) + Send)>,
    keep_complex: bool,
}

/// A finished reconstruction, in image units.
#[derive(Clone, Debug)]
pub struct Reconstructed {
    /// The estimate `(C, H, W)`: the posterior mean of the draws for samplers; for MRI the
    /// magnitude of the complex image unless complex was kept.
    pub image: ArrayD<f32>,
    /// The pixelwise posterior standard deviation `(C, H, W)`: an SMC ensemble's, or the
    /// spread of two or more samples; `None` for one sample and classical methods.
    pub std: Option<ArrayD<f32>>,
    /// Every draw `(M, C, H, W)`: SMC particles (all samples' ensembles), else the
    /// independent samples; `None` for classical methods.
    pub particles: Option<ArrayD<f32>>,
    /// Denoiser evaluations (batched calls).
    pub nfe: usize,
    /// Vector-Jacobian products through the denoiser.
    pub vjps: usize,
    /// Wall time of the reconstruction.
    pub seconds: f64,
    /// The method's or sampler's description.
    pub label: String,
    /// The image range that was mapped onto the prior's range (samplers), or the range the
    /// measurement implies (classical methods): for display.
    pub image_range: (f32, f32),
    /// Whether a time limit stopped a sampler early (the image is then its latest denoised
    /// estimate).
    pub stopped_early: bool,
}

impl<'o> Reconstruction<'o> {
    /// A reconstruction of the measurement `y` (the operator's range shape, finite) made by
    /// `physics`; choose a [`Reconstruction::method`] or a [`Reconstruction::sampler`].
    pub fn new(physics: Physics, y: ArrayD<f32>) -> Self {
        Reconstruction {
            physics,
            y,
            noise: NoiseModel::None,
            image_range: None,
            how: How::Unset,
            prior: None,
            seed: 0,
            samples: 1,
            time_limit: None,
            observers: Vec::new(),
            on_iter: None,
            keep_complex: false,
        }
    }
    /// The noise model of the measurement (default none); samplers take their noise level
    /// from it.
    pub fn noise(mut self, noise: NoiseModel) -> Self {
        self.noise = noise;
        self
    }
    /// The image intensity range `(lo, hi)` mapped onto the prior's (default: from the
    /// measurement, see the module docs).
    pub fn image_range(mut self, lo: f32, hi: f32) -> Self {
        self.image_range = Some((lo, hi));
        self
    }
    /// A classical method: [`Adjoint`], [`Cg`], [`Tv`], [`Fbp`], or any [`ReconOptions`].
    pub fn method(mut self, method: impl Into<ReconOptions>) -> Self {
        self.how = How::Classical(method.into());
        self
    }
    /// A posterior sampler: [`Dps`], [`RedDiff`], [`Flair`], [`Dds`], [`Smc`], [`Tds`],
    /// [`Fps`], or [`SamplerChoice::named`]; needs a [`Reconstruction::prior`].
    pub fn sampler(mut self, sampler: impl Into<SamplerChoice>) -> Self {
        self.how = How::Sampler(sampler.into());
        self
    }
    /// The prior the sampler uses: a [`crate::prior::NetworkPrior`], a
    /// [`crate::prior::Gmm`], your own [`Prior`], by value or in an [`Arc`].
    pub fn prior(mut self, prior: impl IntoPrior) -> Self {
        self.prior = Some(prior.into_prior());
        self
    }
    /// The seed of every random choice of the sampler (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Independent posterior samples (default 1): the image is their mean, `std` their
    /// spread.
    pub fn samples(mut self, samples: usize) -> Self {
        self.samples = samples;
        self
    }
    /// Stops a sampler after `limit` (checked between steps) with its latest estimate.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }
    /// Sees the sampler's state after every step (progress, snapshots).
    pub fn observe(mut self, observer: &'o mut (dyn Observer + Send)) -> Self {
        self.observers.push(observer);
        self
    }
    /// Called with `(iteration, objective)` by the classical iterative methods.
    pub fn on_iteration(mut self, f: &'o mut (dyn FnMut(usize, f64) + Send)) -> Self {
        self.on_iter = Some(f);
        self
    }
    /// Keep MRI's complex image `(2, H, W)` (re, im) instead of its magnitude.
    pub fn keep_complex(mut self) -> Self {
        self.keep_complex = true;
        self
    }

    /// Runs the reconstruction.
    pub fn run(self) -> Result<Reconstructed> {
        let start = Instant::now();
        let Reconstruction {
            physics,
            y,
            noise,
            image_range,
            how,
            prior,
            seed,
            samples,
            time_limit,
            observers,
            on_iter,
            keep_complex,
        } = self;
        let (physics, y, image_range) = match image_range {
            Some(range) => {
                posterior_operators::error::check_shape(
                    &physics.operator.name(),
                    "measurement",
                    physics.operator.range_shape(),
                    y.shape(),
                )?;
                posterior_operators::error::check_finite("the measurement", y.iter())?;
                (physics, y, range)
            }
            None => {
                let m = Measurement::from_array(y, physics)?;
                (m.physics, m.y, m.image_range)
            }
        };
        let embedding = physics.embedding;
        match how {
            How::Unset => Err(Error::Invalid(
                "choose how to reconstruct: .method(Tv { .. }) (a classical method) or .sampler(Dds::default()) with .prior(..)".into(),
            )),
            How::Classical(mut opts) => {
                if prior.is_some() || samples != 1 || time_limit.is_some() {
                    return Err(Error::Invalid(
                        "a prior, samples and a time limit apply to samplers, not to classical methods".into(),
                    ));
                }
                if matches!(noise, NoiseModel::Poisson { .. }) {
                    opts.likelihood = Likelihood::Poisson;
                }
                let mut none = |_: usize, _: f64| {};
                let cb: &mut dyn FnMut(usize, f64) = match on_iter {
                    Some(f) => f,
                    None => &mut none,
                };
                let x = recon::reconstruct(&physics, y.view(), &opts, cb)?;
                Ok(Reconstructed {
                    image: extract(embedding, x.view(), keep_complex),
                    std: None,
                    particles: None,
                    nfe: 0,
                    vjps: 0,
                    seconds: start.elapsed().as_secs_f64(),
                    label: opts.method.name().to_string(),
                    image_range,
                    stopped_early: false,
                })
            }
            How::Sampler(choice) => {
                let prior = prior.ok_or_else(|| {
                    Error::Invalid(format!(
                        "sampler {} needs a prior: add .prior(NetworkPrior::open(\"NAME\")?)",
                        choice.name
                    ))
                })?;
                settings::check(&choice.name, &choice.set)?;
                let overrides = Overrides {
                    steps: choice.steps,
                    particles: choice.particles,
                    calibration: None,
                    set: choice.set.clone(),
                };
                let mut exec = Executor::new(seed);
                for o in observers {
                    exec = exec.observe(o as &mut dyn Observer);
                }
                if let Some(limit) = time_limit {
                    exec = exec.time_limit(limit);
                }
                let r = reconstruct_with_prior(
                    physics,
                    y,
                    &noise,
                    image_range,
                    prior,
                    &choice.name,
                    &overrides,
                    exec,
                    samples,
                )?;
                let per_draw = |a: &ArrayD<f32>| -> ArrayD<f32> {
                    let draws: Vec<ArrayD<f32>> = a
                        .axis_iter(Axis(0))
                        .map(|d| extract(embedding, d, keep_complex))
                        .collect();
                    let views: Vec<_> = draws.iter().map(|d| d.view()).collect();
                    ndarray::stack(Axis(0), &views).unwrap_or_else(|_| a.clone())
                };
                Ok(Reconstructed {
                    image: extract(embedding, r.image.view(), keep_complex),
                    std: r.spread.map(|s| extract(embedding, s.view(), keep_complex)),
                    particles: Some(per_draw(&r.particles)),
                    nfe: r.outcome.nfe,
                    vjps: r.outcome.vjps,
                    seconds: start.elapsed().as_secs_f64(),
                    label: r.label,
                    image_range,
                    stopped_early: r.outcome.stopped_early,
                })
            }
        }
    }
}

/// An image from the operator's domain (see [`Embedding::extract`]).
fn extract(embedding: Embedding, x: ArrayViewD<f32>, keep_complex: bool) -> ArrayD<f32> {
    embedding.extract(x, keep_complex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physics::{Blur, Mri};

    fn blurred() -> (Physics, ArrayD<f32>) {
        let physics = Blur::gaussian(1.0).build(&[1, 12, 12]).unwrap();
        let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 12, 12]), |i| {
            ((i[1] * 3 + i[2] * 5) % 7) as f32 / 7.0
        });
        let y = physics.measure(x.view(), &NoiseModel::None, 0).unwrap();
        (physics, y)
    }

    #[test]
    fn a_classical_method_is_the_library_call_it_stands_for() {
        // The builder adds nothing to a classical method: the same CG solve as
        // `recon::reconstruct`, bit for bit.
        let (mut physics, y) = blurred();
        let opts = ReconOptions::from(Cg {
            lambda: 1e-3,
            iters: 20,
        });
        let direct = recon::reconstruct(&physics, y.view(), &opts, &mut |_, _| {}).unwrap();
        let mut iters = 0;
        let mut count = |_: usize, _: f64| iters += 1;
        let r = Reconstruction::new(physics.share(), y)
            .method(Cg {
                lambda: 1e-3,
                iters: 20,
            })
            .on_iteration(&mut count)
            .run()
            .unwrap();
        assert_eq!(r.image, direct);
        assert!(iters > 0 && iters <= 20, "{iters} iterations reported");
        assert!(r.std.is_none() && r.particles.is_none() && r.nfe == 0);
    }

    #[test]
    fn incomplete_or_contradictory_requests_are_refused_with_the_fix() {
        let (mut physics, y) = blurred();
        let e = Reconstruction::new(physics.share(), y.clone())
            .run()
            .unwrap_err();
        assert!(e.to_string().contains("choose how to reconstruct"), "{e}");
        let e = Reconstruction::new(physics.share(), y.clone())
            .sampler(Dds::default())
            .run()
            .unwrap_err();
        assert!(e.to_string().contains("needs a prior"), "{e}");
        let e = Reconstruction::new(physics.share(), y.clone())
            .method(Tv::default())
            .samples(3)
            .run()
            .unwrap_err();
        assert!(e.to_string().contains("apply to samplers"), "{e}");
        // A measurement of the wrong shape names both shapes.
        let wrong = ArrayD::zeros(ndarray::IxDyn(&[1, 10, 12]));
        let e = Reconstruction::new(physics, wrong)
            .method(Adjoint)
            .image_range(0.0, 1.0)
            .run()
            .unwrap_err();
        assert_eq!(e.kind(), "shape", "{e}");
        assert!(
            e.to_string().contains("[1, 12, 12]") && e.to_string().contains("[1, 10, 12]"),
            "{e}"
        );
    }

    #[test]
    fn mri_images_come_back_as_magnitudes_unless_complex_is_kept() {
        // Zero-filling of a real image: the complex adjoint's magnitude, one channel; with
        // keep_complex the (re, im) pair whose magnitude it is.
        let mut physics = Mri::coils(2).accel(2.0).seed(1).build(&[1, 8, 8]).unwrap();
        let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 8, 8]), |i| (i[1] + i[2]) as f32 / 14.0);
        let y = physics.measure(x.view(), &NoiseModel::None, 0).unwrap();
        let mag = Reconstruction::new(physics.share(), y.clone())
            .method(Adjoint)
            .run()
            .unwrap();
        let pair = Reconstruction::new(physics, y)
            .method(Adjoint)
            .keep_complex()
            .run()
            .unwrap();
        assert_eq!(mag.image.shape(), &[1, 8, 8]);
        assert_eq!(pair.image.shape(), &[2, 8, 8]);
        for ((m, re), im) in mag
            .image
            .iter()
            .zip(pair.image.index_axis(Axis(0), 0))
            .zip(pair.image.index_axis(Axis(0), 1))
        {
            assert!((m - (re * re + im * im).sqrt()).abs() < 1e-6);
        }
    }
}
