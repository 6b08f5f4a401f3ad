//! Sampling: an [`Executor`] that owns the loop, the seed, evaluation counts, a time limit
//! and [`Observer`]s, and samplers that take one step at a time ([`Sampler`]).
//!
//! Unconditional samplers, each for any step count and on any path (the path is the
//! denoiser's own, [`Denoiser::schedule`]; to run on another, wrap the denoiser in
//! [`crate::prior::OnPath`]):
//! - [`ddpm::Ddpm`]: ancestral sampling from the Gaussian posterior `q(x_next | x_t, x0_hat)`;
//! - [`ddim::Ddim`]: DDIM with `eta` (0 deterministic, 1 ancestral);
//! - [`ode::Euler`], [`ode::Heun`]: the probability-flow ODE `dx/dt = a' x0_hat + s' eps_hat`;
//! - [`dpm_solver::DpmSolver2M`]: DPM-Solver++(2M), multistep in `log(a/s)` on `x0`.
//!
//! Batches are `(N, ...sample_shape)` (`(N, C, H, W)` for images, `(N, D)` for vectors), one
//! shared time per step. The grid is [`crate::prior::Schedule::knots`]: `steps` noisy knots
//! from `t = 1` down, then the clean point; every sampler's last step lands on the clean
//! point by returning the denoised estimate `x0_hat` (a final denoising step), so `steps`
//! denoiser evaluations give `steps` steps (Heun: `2 steps - 1` evaluations). Sampling starts
//! from `x_1 = s(1) z`, `z ~ N(0, I)`, neglecting the `a(1) x0` term (`a(1) = 0` for
//! rectified flow and cosine, `0.0064` for discrete VP; VE neglects the data's own spread
//! against `sigma_max = 50`). For targets that are narrow and far from the origin the
//! deterministic samplers carry that start offset to the end (about `sd * a(1) * |mean|` on
//! VP, `sd * |mean| / sigma_max` on VE; see the image-posterior test in
//! `tests/sampler_stats.rs`); rectified flow starts exactly.
//!
//! NFE counts batched denoiser calls (one call on a batch of N is one NFE, as for a network
//! evaluated on a batch).

use std::time::{Duration, Instant};

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use posterior_operators::rng::{seeded, Rng};
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use crate::prior::{Denoiser, Knot, Pullback};

pub mod calibrate;
pub mod ddim;
pub mod ddpm;
pub mod dds;
pub mod dpm_solver;
pub mod dps;
pub mod flair;
pub mod ode;
pub mod posterior;
pub mod problem;
pub mod reddiff;
pub mod settings;
pub mod smc;
pub mod stats;
pub mod units;

pub use calibrate::{calibrate, CalibrationTable, CALIBRATION_FORMAT};
pub use ddim::{Ddim, DdimStep};
pub use ddpm::{AncestralKernel, Ddpm};
pub use dds::{Dds, DdsSettings, DdsVolume, SliceTv};
pub use dpm_solver::DpmSolver2M;
pub use dps::{default_zeta, Dps, DpsSettings, DpsUpdate};
pub use flair::{Flair, FlairSettings};
pub use ode::{Euler, Heun};
pub use problem::Problem;
pub use reddiff::{RedDiff, RedDiffSettings};
pub use settings::{SettingValue, SettingValues};
pub use smc::{Ensemble, Smc, SmcMethod, SmcSettings};

/// The state of a sampler between steps.
#[derive(Clone, Debug)]
pub struct State {
    /// The current iterate, `(N, ...sample_shape)`.
    pub x: ArrayD<f32>,
    /// The latest denoised estimate `x0_hat`, once one was computed.
    pub x0_hat: Option<ArrayD<f32>>,
    /// Steps taken so far.
    pub step: usize,
    /// Steps in all.
    pub total: usize,
    /// The current time on the denoiser's path (0 once finished).
    pub t: f64,
}

/// What a sampler may use during a step: the denoiser (through counting wrappers) and the
/// seeded random generator.
pub struct Context<'a> {
    denoiser: &'a dyn Denoiser,
    rng: Rng,
    nfe: usize,
    vjps: usize,
}

impl<'a> Context<'a> {
    /// A context over `denoiser` with the generator for `seed` (stream `"sample"`).
    pub fn new(denoiser: &'a dyn Denoiser, seed: u64) -> Self {
        Context {
            denoiser,
            rng: seeded(seed, "sample"),
            nfe: 0,
            vjps: 0,
        }
    }
    /// The denoiser.
    pub fn denoiser(&self) -> &'a dyn Denoiser {
        self.denoiser
    }
    /// `x0_hat(x, t)` for the whole batch at one time; counts one NFE.
    pub fn x0(&mut self, x: ArrayViewD<f32>, t: f64) -> Result<ArrayD<f32>> {
        let n = x.shape().first().copied().unwrap_or(0);
        self.nfe += 1;
        self.denoiser.x0(x, &vec![t as f32; n])
    }
    /// `(x0_hat, v^T d x0_hat / dx)` at one time; counts one NFE and one VJP.
    pub fn x0_vjp(
        &mut self,
        x: ArrayViewD<f32>,
        t: f64,
        v: ArrayViewD<f32>,
    ) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
        let n = x.shape().first().copied().unwrap_or(0);
        self.nfe += 1;
        self.vjps += 1;
        self.denoiser.x0_vjp(x, &vec![t as f32; n], v)
    }
    /// `x0_hat(x, t)` and a [`Pullback`] for a VJP whose vector depends on `x0_hat` (DPS,
    /// twisted SMC); counts one NFE and one VJP (a network reuses the forward pass).
    pub fn x0_pullback(
        &mut self,
        x: ArrayViewD<f32>,
        t: f64,
    ) -> Result<(ArrayD<f32>, Pullback<'a>)> {
        let n = x.shape().first().copied().unwrap_or(0);
        self.nfe += 1;
        self.vjps += 1;
        self.denoiser.x0_pullback(x, &vec![t as f32; n])
    }
    /// Standard normal noise of `shape`.
    pub fn normal(&mut self, shape: &[usize]) -> ArrayD<f32> {
        let rng = &mut self.rng;
        ArrayD::from_shape_simple_fn(IxDyn(shape), || {
            let v: f32 = StandardNormal.sample(rng);
            v
        })
    }
    /// The generator, for samplers with other randomness.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
    /// Denoiser evaluations so far.
    pub fn nfe(&self) -> usize {
        self.nfe
    }
    /// Vector-Jacobian products so far.
    pub fn vjps(&self) -> usize {
        self.vjps
    }
}

/// A sampler: one step at a time; the executor owns the loop.
pub trait Sampler {
    /// A short description, e.g. `ddim(50 steps, eta=0)`.
    fn name(&self) -> String;
    /// The number of steps [`Sampler::step`] will be called for.
    fn steps(&self) -> usize;
    /// The starting state for `n` samples.
    fn init(&mut self, cx: &mut Context, n: usize) -> Result<State>;
    /// One step; `state.step` tells which.
    fn step(&mut self, cx: &mut Context, state: State) -> Result<State>;
    /// Whether the sampler handles non-finite members of its iterate itself (SMC drops a
    /// diverged particle and resamples); otherwise [`Executor::run`] stops at the first
    /// step whose iterate holds one, naming it.
    fn handles_non_finite(&self) -> bool {
        false
    }
}

/// Sees the state after every step (progress bars, snapshots, logging).
pub trait Observer {
    fn observe(&mut self, step: usize, state: &State);
}

/// Keeps a copy of the denoised estimate (or the iterate, before one exists) every `every`
/// steps and after the last one.
#[derive(Debug, Default)]
pub struct Snapshots {
    pub every: usize,
    /// `(step, batch)` pairs in order.
    pub frames: Vec<(usize, ArrayD<f32>)>,
}

impl Snapshots {
    pub fn new(every: usize) -> Self {
        Snapshots {
            every: every.max(1),
            frames: Vec::new(),
        }
    }
}

impl Observer for Snapshots {
    fn observe(&mut self, step: usize, state: &State) {
        if step.is_multiple_of(self.every) || step == state.total {
            let x = state.x0_hat.as_ref().unwrap_or(&state.x);
            self.frames.push((step, x.clone()));
        }
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The samples, `(N, ...sample_shape)`: the final iterate, or the latest denoised
    /// estimate when the run stopped early.
    pub samples: ArrayD<f32>,
    /// Denoiser evaluations (batched calls).
    pub nfe: usize,
    /// Vector-Jacobian products.
    pub vjps: usize,
    /// Steps taken.
    pub steps: usize,
    pub elapsed: Duration,
    /// Whether the time limit stopped the run before its last step.
    pub stopped_early: bool,
}

/// Runs a sampler: seeds it, loops over its steps, counts evaluations, calls the
/// observers, and stops at the time limit.
pub struct Executor<'o> {
    seed: u64,
    time_limit: Option<Duration>,
    observers: Vec<&'o mut dyn Observer>,
}

impl<'o> Executor<'o> {
    /// An executor for `seed`: the same seed gives the same samples.
    pub fn new(seed: u64) -> Self {
        Executor {
            seed,
            time_limit: None,
            observers: Vec::new(),
        }
    }
    /// Stop after `limit` (checked between steps); the outcome then holds the latest
    /// denoised estimate and `stopped_early`.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }
    /// Adds an observer.
    pub fn observe(mut self, observer: &'o mut dyn Observer) -> Self {
        self.observers.push(observer);
        self
    }
    /// The seed runs start from.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Whether a time limit was set.
    pub fn has_time_limit(&self) -> bool {
        self.time_limit.is_some()
    }
    /// Shows `state` to every observer, for loops that ran outside [`Executor::run`] (the
    /// device-resident samplers, which report once, at the end).
    pub fn notify(&mut self, state: &State) {
        for o in self.observers.iter_mut() {
            o.observe(state.step, state);
        }
    }
    /// Draws `n` samples with `sampler` from `denoiser`.
    pub fn run(
        &mut self,
        sampler: &mut dyn Sampler,
        denoiser: &dyn Denoiser,
        n: usize,
    ) -> Result<Outcome> {
        if n == 0 {
            return Err(Error::Invalid(
                "the number of samples must be at least 1".into(),
            ));
        }
        if sampler.steps() == 0 {
            return Err(Error::Invalid(format!(
                "{}: the number of steps must be at least 1",
                sampler.name()
            )));
        }
        let start = Instant::now();
        let mut cx = Context::new(denoiser, self.seed);
        let mut state = sampler.init(&mut cx, n)?;
        let total = state.total;
        let mut stopped_early = false;
        while state.step < total {
            if let Some(limit) = self.time_limit {
                if state.step > 0 && start.elapsed() >= limit {
                    stopped_early = true;
                    break;
                }
            }
            state = sampler.step(&mut cx, state)?;
            // Caught where it happens, so the message names the step (a NaN would otherwise
            // travel silently to the end of the run).
            let bad = (!sampler.handles_non_finite())
                .then(|| state.x.iter().find(|v| !v.is_finite()))
                .flatten();
            if let Some(bad) = bad {
                return Err(Error::NonFinite(format!(
                    "{}: step {} of {} (t = {:.4}) produced a non-finite value ({bad}); \
                     fewer or more steps, a smaller step size or a larger noise level may help",
                    sampler.name(),
                    state.step,
                    total,
                    state.t
                )));
            }
            for o in self.observers.iter_mut() {
                o.observe(state.step, &state);
            }
        }
        let steps = state.step;
        let samples = if stopped_early {
            state.x0_hat.unwrap_or(state.x)
        } else {
            state.x
        };
        if let Some(bad) = samples.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "{} produced a non-finite value ({bad}); the step count or path may be unsuitable",
                sampler.name()
            )));
        }
        Ok(Outcome {
            samples,
            nfe: cx.nfe(),
            vjps: cx.vjps(),
            steps,
            elapsed: start.elapsed(),
            stopped_early,
        })
    }
}

/// The starting state shared by the unconditional samplers: `x = s(t_0) z` at the first
/// knot.
pub(crate) fn start(cx: &mut Context, knots: &[Knot], n: usize) -> State {
    let shape = cx.denoiser().info().batch_shape(n);
    let s0 = knots[0].s as f32;
    let x = cx.normal(&shape).mapv(|v| v * s0);
    State {
        x,
        x0_hat: None,
        step: 0,
        total: knots.len() - 1,
        t: knots[0].t,
    }
}

/// `eps_hat = (x - a x0_hat) / s`.
/// The step every sampler here shares: denoise at the current knot, move to the next
/// with `update(cx, current, next, x, x0_hat)` (which takes the iterate and returns the new
/// one), except at the final noise-free knot, where the iterate becomes the denoised
/// estimate; then record the estimate and advance the step and the time.
pub(crate) fn knot_step(
    cx: &mut Context,
    knots: &[Knot],
    mut state: State,
    update: impl FnOnce(&mut Context, Knot, Knot, ArrayD<f32>, &ArrayD<f32>) -> Result<ArrayD<f32>>,
) -> Result<State> {
    let (cur, nxt) = (knots[state.step], knots[state.step + 1]);
    let x0 = cx.x0(state.x.view(), cur.t)?;
    state.x = if nxt.is_clean() {
        x0.clone()
    } else {
        update(cx, cur, nxt, std::mem::take(&mut state.x), &x0)?
    };
    state.x0_hat = Some(x0);
    state.step += 1;
    state.t = nxt.t;
    Ok(state)
}

pub(crate) fn eps_from_x0(x: &ArrayD<f32>, x0: &ArrayD<f32>, k: &Knot) -> ArrayD<f32> {
    let (a, s) = (k.a as f32, k.s as f32);
    let mut e = x.clone();
    e.zip_mut_with(x0, |e, &x0| *e = (*e - a * x0) / s);
    e
}

/// The unconditional sampler called `name` (`ddpm`, `ddim`, `euler`, `heun`, `dpm++2m`)
/// with `steps` steps; `eta` is DDIM's.
pub fn by_name(name: &str, steps: usize, eta: f64) -> Result<Box<dyn Sampler>> {
    if steps == 0 {
        return Err(Error::Invalid(
            "the number of steps must be at least 1".into(),
        ));
    }
    Ok(match name {
        "ddpm" | "ancestral" => Box::new(Ddpm::new(steps)),
        "ddim" => Box::new(Ddim::new(steps, eta)?),
        "euler" | "ode" => Box::new(Euler::new(steps)),
        "heun" => Box::new(Heun::new(steps)),
        "dpm++2m" | "dpm-solver++" | "dpmpp2m" | "dpm" => Box::new(DpmSolver2M::new(steps)),
        other => {
            return Err(Error::Invalid(format!(
                "unknown sampler `{other}`: expected one of ddpm, ddim, euler, heun, dpm++2m"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prior::Gmm;

    /// A sampler that writes a NaN into its iterate at step `bad` (1-based, as `state.step`
    /// counts after the step) and otherwise leaves it alone.
    struct NanAt {
        bad: usize,
    }

    impl Sampler for NanAt {
        fn name(&self) -> String {
            "nan-at".into()
        }
        fn steps(&self) -> usize {
            5
        }
        fn init(&mut self, cx: &mut Context, n: usize) -> Result<State> {
            let shape = cx.denoiser().info().batch_shape(n);
            Ok(State {
                x: ArrayD::zeros(shape),
                x0_hat: None,
                step: 0,
                total: 5,
                t: 1.0,
            })
        }
        fn step(&mut self, _: &mut Context, mut state: State) -> Result<State> {
            state.step += 1;
            state.t = 1.0 - state.step as f64 / 5.0;
            if state.step == self.bad {
                state.x[[0, 1]] = f32::NAN;
            }
            Ok(state)
        }
    }

    #[test]
    fn a_non_finite_iterate_stops_the_run_at_the_step_that_made_it() {
        let gmm = Gmm::random(1, 3, 0, false).unwrap();
        let e = Executor::new(0)
            .run(&mut NanAt { bad: 3 }, &gmm, 2)
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::NonFinite(_)), "{msg}");
        assert!(msg.contains("nan-at: step 3 of 5"), "{msg}");
        // A run that never makes one completes.
        let ok = Executor::new(0)
            .run(&mut NanAt { bad: 99 }, &gmm, 2)
            .unwrap();
        assert_eq!(ok.steps, 5);
    }
}
