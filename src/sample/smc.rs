//! Sequential Monte Carlo posterior samplers: `K` weighted particles per posterior sample move
//! down the diffusion together. Two proposals share one weighting, resampling and output
//! machinery ([`Smc`]):
//! - [`SmcMethod::Tds`], twisted diffusion sampling (Wu et al., 2023), for any forward model
//!   (linear or not) with Gaussian noise;
//! - [`SmcMethod::Fps`], filtering posterior sampling (FPS-SMC, Dou & Song, 2024), for linear
//!   operators with Gaussian noise.
//!
//! # The target and the weights (both methods)
//!
//! Knots `k_0 (t = 1), .., k_{S-1}` are the noisy knots of [`crate::prior::Schedule::knots`]
//! and `k_S` the clean point. The model is the ancestral chain the prior defines,
//! `p(x_{i+1} | x_i) = N(c_x0 x0_hat(x_i) + c_x x_i, sd^2 I)` ([`AncestralKernel`]) started at
//! `x_0 = s(1) z`, and its last step is the final denoise `x_clean = x0_hat(x_{S-1})`. Each
//! method picks positive twisting functions `h_i(x_i)` (any choice is valid; good ones keep
//! the weights even) and a proposal `q(x_{i+1} | x_i)`; the incremental log-weight of the move
//! `i -> i+1` is
//! `log p(x_{i+1} | x_i) + log h_{i+1}(x_{i+1}) - log h_i(x_i) - log q(x_{i+1} | x_i)`,
//! and the final step is weighted by the exact likelihood,
//! `log p(y | x_clean) - log h_{S-1}(x_{S-1})` with `p(y | x) = N(y; A(x), sigma_y^2 I)`. The
//! weighted particles then target `p_model(x_clean) p(y | x_clean)`: the posterior, up to the
//! chain's discretisation error (which vanishes as `steps` grows, exactly as for
//! [`super::Ddpm`]), for any number of particles `K` asymptotically and with a bias of order
//! `1/K` for one draw from a finite ensemble.
//!
//! Log-weights are f64 and normalised per sample by log-sum-exp. Constants that are the same
//! for every particle of a step (Gaussian normalisers, log-determinants) are dropped: they
//! cancel in the normalisation. After the weight of step `i` is complete (it needs
//! `h_i(x_i)`, known once `x0_hat(x_i)` is), a sample's `K` particles are resampled
//! systematically when their effective sample size `1 / sum w^2` falls below
//! `ess_fraction * K` (default `K/2`); resampled particles restart with equal weights.
//!
//! # TDS
//!
//! Twist `h_i(x) = N(y; A(x0_hat(x)), v_i I)` with `v_i = sigma_y^2 + r_i^2`. Decision (the
//! paper leaves `r_i` to the user): `r_i^2 = twist_scale^2 * s_i^2 / (a_i^2 + s_i^2)`, the
//! variance of `x0` given `x_i` per coordinate for a unit-variance Gaussian prior (`1 - abar`
//! on VP), so the twist is flat at `t = 1` and sharpens to the exact likelihood as `t -> 0`.
//! Proposal: the ancestral step with its mean shifted by `sd^2 grad_x log h_i(x_i)` (the
//! gradient through the denoiser: one VJP), same `sd`. Per step this costs one batched
//! denoiser call whose forward pass is kept for the VJP ([`crate::prior::Pullback`]: the
//! cotangent `J^T (y - A(x0_hat)) / v_i` needs the estimate first); [`super::Context`]
//! counts 1 NFE + 1 VJP per step, except the last step (1 NFE, no VJP).
//!
//! # FPS
//!
//! The measurement is noised along the path: `y_0 = a_0 y + s_0 A z`, then per step the DDIM
//! update [`DdimStep`] with "clean point" `y` and noise `A z` (`eta = 1` by default, for which
//! `(y_i)` has exactly the joint law of `A x_i + a_i n` under the forward process; one
//! sequence per posterior sample, shared by its `K` particles). Twist
//! `h_i(x) = N(y_i; A x, tau_i^2 I)`. Decision: `tau_i^2 = a_i^2 sigma_y^2 + s_i^2`, not the
//! `a_i^2 sigma_y^2` of a measurement of the forward trajectory itself: `y_i`'s path noise is
//! drawn independently of the particles', so `y_i - A x_i` also carries `s_i` noise, and a
//! twist as narrow as `a_i sigma_y` makes `1 / h_i` at the pinned particles a heavy-tailed
//! weight (measured: resampling at nearly every step and single-draw biases of 20 s.e.).
//! The first particles are drawn from the twisted initial law `p(x_0) h_0(x_0)` (the same
//! Gaussian conditional with `mu = 0`, `sd = s(1)`), whose weight is a constant.
//! Proposal: the exact Gaussian conditional
//! `q(x' | x) ∝ N(x'; mu, sd^2 I) N(y_{i+1}; A x', tau_{i+1}^2 I)` (locally optimal), with
//! `mu` the ancestral mean: mean `mu + S A^T (y_{i+1} - A mu)`, covariance `tau^2 S`,
//! `S = (A^T A + gamma I)^-1`, `gamma = tau^2 / sd^2`. It is drawn exactly by perturbation:
//! `x' = mu' + S A^T (y_{i+1} + tau z_2 - A mu')`, `mu' = mu + sd z_1`. Then
//! `p h_{i+1} / q = N(y_{i+1}; A mu, tau^2 I + sd^2 A A^T)`, whose quadratic form is
//! `(|e|^2 + gamma |u|^2) / tau^2` with `r = y_{i+1} - A mu`, `u = S A^T r`, `e = r - A u`
//! (Woodbury, written as a sum of nonnegative terms to avoid cancellation in f32). `S` is
//! applied by [`Problem::solve_regularized`] (closed form where the operator has one,
//! otherwise conjugate gradients with `cg_iters`, `cg_tol`): two solves
//! per particle and step. One denoiser call per step, no VJP.
//!
//! Difference from the published FPS-SMC: it weights each move by the predictive
//! `p(y_{i+1} | x_i)` alone, i.e. treats the noised measurements as independent
//! observations, which is exact only in its continuous-time limit; here the twists
//! telescope and the final weight is the exact likelihood, so the ensemble targets the
//! posterior itself at any step count (up to the chain's own discretisation).
//!
//! # Output
//!
//! The sampler fits the [`super::Executor`]: during the run `state.x` holds all particles as a
//! batch `(N K, ...sample_shape)` (sample `n` owns rows `n K .. (n + 1) K`) and
//! `state.x0_hat` the weighted mean of the particles' denoised estimates, `(N, ...)`. At the
//! end `state.x` (hence [`super::Outcome::samples`]) is one particle per sample, drawn by
//! weight, `(N, ...sample_shape)`, and the whole weighted ensemble ([`Ensemble`]: particles
//! `(N, K, ...)`, weights, weighted mean, pixelwise weighted standard deviation) is kept in the
//! sampler ([`Smc::ensemble`]). [`Smc::run`] does both in one call.
//!
//! Both methods need `sigma_y > 0` (the final weight is the likelihood; noise-free data make
//! it a point mass).

use std::sync::Arc;

use ndarray::{Array2, ArrayD, ArrayViewD, Axis, IxDyn};
use posterior_operators::LinearOperator;
use rand::Rng as _;
use rayon::prelude::*;

use super::problem::Problem;
use super::{AncestralKernel, Context, DdimStep, Executor, Outcome, Sampler, State};
use crate::error::{Error, Result};
use crate::prior::{Denoiser, Knot};

/// The samplers of the toolkit that serve nonlinear forward models.
/// FPS: the factor on `s_i` in the twist width `tau_i` (see the module docs).
const FPS_WIDTH: f64 = 1.0;

pub const NONLINEAR_SAMPLERS: &str = "dps, reddiff, smc (tds) or flair";

/// Which proposal and twist an [`Smc`] run uses (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmcMethod {
    /// Twisted diffusion sampling: guided ancestral proposal, Tweedie twist.
    Tds,
    /// Filtering posterior sampling: noised measurements and exact Gaussian conditionals
    /// (linear operators only).
    Fps,
}

impl SmcMethod {
    /// `tds` or `fps`.
    pub fn name(&self) -> &'static str {
        match self {
            SmcMethod::Tds => "tds",
            SmcMethod::Fps => "fps",
        }
    }
}

/// Settings of an [`Smc`] run; [`Default`] holds FPS's official 100 steps x 20 particles with
/// TDS as the method (which any `K >= 4` serves); [`SmcSettings::fps`] the same for FPS.
#[derive(Clone, Debug, PartialEq)]
pub struct SmcSettings {
    pub method: SmcMethod,
    /// Denoiser steps (`>= 1`).
    pub steps: usize,
    /// Particles per posterior sample, `K >= 1`.
    pub particles: usize,
    /// Resample a sample's particles when their ESS falls below `ess_fraction * K`; in
    /// `[0, 1]` (0 never resamples). Default 0.5.
    pub ess_fraction: f64,
    /// TDS: the factor on `r_i` in the twist variance `sigma_y^2 + r_i^2` (default 1).
    pub twist_scale: f64,
    /// FPS: the stochasticity of the measurement bridge `y_i`, in `[0, 1]` (default 1, the
    /// forward process's own joint law).
    pub eta: f64,
    /// FPS without a closed-form regularised solve: conjugate-gradient iterations per solve
    /// (default 100) and relative tolerance (default 1e-6).
    pub cg_iters: usize,
    pub cg_tol: f64,
}

impl Default for SmcSettings {
    fn default() -> Self {
        SmcSettings {
            method: SmcMethod::Tds,
            steps: 100,
            particles: 20,
            ess_fraction: 0.5,
            twist_scale: 1.0,
            eta: 1.0,
            cg_iters: 100,
            cg_tol: 1e-6,
        }
    }
}

impl SmcSettings {
    /// The defaults with TDS.
    pub fn tds() -> Self {
        SmcSettings::default()
    }
    /// The defaults with FPS (official: 100 steps x 20 particles).
    pub fn fps() -> Self {
        SmcSettings {
            method: SmcMethod::Fps,
            ..SmcSettings::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("smc ({}): {m}", self.method.name())));
        if self.steps == 0 {
            return bad("the number of steps must be at least 1".into());
        }
        if self.particles == 0 {
            return bad("the number of particles must be at least 1".into());
        }
        if !(self.ess_fraction.is_finite() && (0.0..=1.0).contains(&self.ess_fraction)) {
            return bad(format!(
                "the ESS threshold fraction must be in [0, 1], got {}",
                self.ess_fraction
            ));
        }
        if !(self.twist_scale.is_finite() && self.twist_scale >= 0.0) {
            return bad(format!(
                "the twist scale must be finite and >= 0, got {}",
                self.twist_scale
            ));
        }
        if !(self.eta.is_finite() && (0.0..=1.0).contains(&self.eta)) {
            return bad(format!("eta must be in [0, 1], got {}", self.eta));
        }
        if self.cg_iters == 0 || !(self.cg_tol.is_finite() && self.cg_tol > 0.0) {
            return bad(format!(
                "CG needs at least 1 iteration and a positive tolerance, got {} and {}",
                self.cg_iters, self.cg_tol
            ));
        }
        Ok(())
    }
}

/// A finished weighted ensemble.
#[derive(Clone, Debug)]
pub struct Ensemble {
    /// The particles, `(N, K, ...sample_shape)`.
    pub particles: ArrayD<f32>,
    /// Normalised weights `(N, K)`: each row sums to 1.
    pub weights: Array2<f64>,
    /// The weighted posterior mean per sample, `(N, ...sample_shape)`.
    pub mean: ArrayD<f32>,
    /// The pixelwise weighted standard deviation (uncertainty map), `(N, ...sample_shape)`.
    pub std: ArrayD<f32>,
    /// The final effective sample size per sample, in `[1, K]`.
    pub ess: Vec<f64>,
    /// How many times some sample's particles were resampled.
    pub resamples: usize,
}

impl Ensemble {
    /// `m` equally weighted draws per sample by systematic resampling, `(N m, ...)` (sample
    /// `n` owns rows `n m .. (n + 1) m`).
    pub fn resampled(&self, m: usize, seed: u64) -> ArrayD<f32> {
        let (n, k) = self.weights.dim();
        let sample_shape = &self.particles.shape()[2..];
        let d: usize = sample_shape.iter().product();
        let mut rng = posterior_operators::rng::seeded(seed, "smc-resampled");
        let flat = self.particles.as_standard_layout();
        let flat = flat.as_slice().unwrap_or(&[]);
        let mut out = Vec::with_capacity(n * m * d);
        for i in 0..n {
            let w: Vec<f64> = self.weights.row(i).to_vec();
            let u: f64 = rng.random::<f64>();
            for j in systematic(&w, m, u) {
                let row = (i * k + j) * d;
                out.extend_from_slice(&flat[row..row + d]);
            }
        }
        let mut shape = vec![n * m];
        shape.extend_from_slice(sample_shape);
        ArrayD::from_shape_vec(IxDyn(&shape), out).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])))
    }
}

/// A sequential Monte Carlo posterior sampler (see the module docs).
pub struct Smc {
    problem: Arc<Problem>,
    settings: SmcSettings,
    knots: Vec<Knot>,
    /// Posterior samples `N` of the current run.
    n: usize,
    /// Log-weights of the `N K` particles.
    logw: Vec<f64>,
    /// FPS: the current noised measurement per sample, `(N, ...range)`.
    y_cur: Option<ArrayD<f32>>,
    ensemble: Option<Ensemble>,
    resamples: usize,
    /// Tests only: leave the weights at zero (a deliberately broken sampler).
    ignore_weights: bool,
}

impl Smc {
    /// A sampler for `problem` with `settings`; checks the settings, and for FPS that the
    /// operator is linear and for both that `sigma_y > 0`.
    pub fn new(problem: Arc<Problem>, settings: SmcSettings) -> Result<Smc> {
        settings.validate()?;
        let m = settings.method.name();
        if problem.sigma_y() <= 0.0 {
            return Err(Error::Invalid(format!(
                "smc ({m}) weights particles by the Gaussian likelihood and needs a noise level sigma_y > 0; \
                 for noise-free data use dps, reddiff, dds or flair"
            )));
        }
        if settings.method == SmcMethod::Fps && problem.linear().is_none() {
            return Err(Error::Invalid(format!(
                "fps needs a linear operator with Gaussian noise, but {} is nonlinear; use {NONLINEAR_SAMPLERS}",
                problem.operator().name()
            )));
        }
        Ok(Smc {
            problem,
            settings,
            knots: Vec::new(),
            n: 0,
            logw: Vec::new(),
            y_cur: None,
            ensemble: None,
            resamples: 0,
            ignore_weights: false,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &SmcSettings {
        &self.settings
    }
    /// The weighted ensemble of the last finished run.
    pub fn ensemble(&self) -> Option<&Ensemble> {
        self.ensemble.as_ref()
    }

    /// Runs `n` posterior samples with an [`Executor`] seeded with `seed` and returns the
    /// outcome (one weighted draw per sample) with the ensemble.
    pub fn run(
        &mut self,
        denoiser: &dyn Denoiser,
        n: usize,
        seed: u64,
    ) -> Result<(Outcome, Ensemble)> {
        let out = Executor::new(seed).run(self, denoiser, n)?;
        let ens = self.ensemble.clone().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: the run stopped before its last step, so there is no weighted ensemble",
                self.name()
            ))
        })?;
        Ok((out, ens))
    }

    fn k(&self) -> usize {
        self.settings.particles
    }

    fn add_logw(&mut self, inc: &[f64]) {
        if self.ignore_weights {
            return;
        }
        for (w, i) in self.logw.iter_mut().zip(inc) {
            *w += i;
        }
    }

    /// TDS twist variance `sigma_y^2 + r^2` at a knot.
    fn tds_var(&self, k: Knot) -> f64 {
        let r2 = self.settings.twist_scale.powi(2) * k.s * k.s / (k.a * k.a + k.s * k.s);
        self.problem.sigma_y().powi(2) + r2
    }

    /// FPS twist width at a knot: `tau^2 = a^2 sigma_y^2 + (fps_width s)^2`.
    fn fps_tau(&self, k: Knot) -> f64 {
        let sig = self.problem.sigma_y();
        (k.a * k.a * sig * sig + (FPS_WIDTH * k.s).powi(2)).sqrt()
    }

    /// `-|y_n - A x_j|^2 / (2 tau^2)` per particle for the per-sample measurements `ys`
    /// `(N, ...range)`; zeros when `tau = 0`.
    fn gaussian_fit(&self, x: &ArrayD<f32>, ys: &ArrayD<f32>, tau: f64) -> Result<Vec<f64>> {
        let rows = x.shape()[0];
        if tau <= 0.0 {
            return Ok(vec![0.0; rows]);
        }
        let ax = self.problem.forward_batch(x.view())?;
        let k = self.k();
        Ok(ax
            .axis_iter(Axis(0))
            .enumerate()
            .map(|(j, a)| {
                let y = ys.index_axis(Axis(0), j / k);
                let sq: f64 = a
                    .iter()
                    .zip(y.iter())
                    .map(|(&p, &q)| (q as f64 - p as f64).powi(2))
                    .sum();
                -sq / (2.0 * tau * tau)
            })
            .collect())
    }

    /// Resamples every sample whose ESS is below the threshold; permutes the rows of
    /// `arrays` accordingly.
    fn maybe_resample(
        &mut self,
        rng: &mut posterior_operators::rng::Rng,
        arrays: &mut [&mut ArrayD<f32>],
        logs: &mut [&mut Vec<f64>],
    ) -> Result<()> {
        let k = self.k();
        let mut index: Vec<usize> = (0..self.n * k).collect();
        let mut any = false;
        for i in 0..self.n {
            let w = normalise_log_weights(&self.logw[i * k..(i + 1) * k])?;
            if ess(&w) < self.settings.ess_fraction * k as f64 {
                let u: f64 = rng.random::<f64>();
                for (slot, j) in systematic(&w, k, u).into_iter().enumerate() {
                    index[i * k + slot] = i * k + j;
                }
                self.logw[i * k..(i + 1) * k].fill(0.0);
                any = true;
                self.resamples += 1;
            }
        }
        if any {
            for a in arrays.iter_mut() {
                **a = a.select(Axis(0), &index);
            }
            for l in logs.iter_mut() {
                **l = index.iter().map(|&j| l[j]).collect();
            }
        }
        Ok(())
    }

    /// The weighted mean of `x` `(N K, ...)` per sample, with the current weights.
    fn weighted_mean(&self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let (mean, _) = self.weighted_moments(x, false)?;
        Ok(mean)
    }

    fn weighted_moments(
        &self,
        x: &ArrayD<f32>,
        with_std: bool,
    ) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
        let k = self.k();
        let mut shape = x.shape().to_vec();
        shape[0] = self.n;
        let mut mean = ArrayD::zeros(IxDyn(&shape));
        let mut std = ArrayD::zeros(IxDyn(&shape));
        for i in 0..self.n {
            let w = normalise_log_weights(&self.logw[i * k..(i + 1) * k])?;
            let d: usize = shape[1..].iter().product();
            let mut m1 = vec![0.0f64; d];
            let mut m2 = vec![0.0f64; d];
            for (j, wj) in w.iter().enumerate() {
                let row = x.index_axis(Axis(0), i * k + j);
                for ((a, b), &v) in m1.iter_mut().zip(m2.iter_mut()).zip(row.iter()) {
                    *a += wj * v as f64;
                    *b += wj * (v as f64) * (v as f64);
                }
            }
            for ((o, s), (a, b)) in mean
                .index_axis_mut(Axis(0), i)
                .iter_mut()
                .zip(std.index_axis_mut(Axis(0), i).iter_mut())
                .zip(m1.iter().zip(&m2))
            {
                *o = *a as f32;
                if with_std {
                    *s = (b - a * a).max(0.0).sqrt() as f32;
                }
            }
        }
        Ok((mean, std))
    }

    /// FPS: the next noised measurement per sample by the DDIM bridge towards `y`.
    fn fps_bridge(
        &self,
        cx: &mut Context,
        y_cur: &ArrayD<f32>,
        cur: Knot,
        nxt: Knot,
    ) -> Result<ArrayD<f32>> {
        let y = self.problem.y();
        let y0 = broadcast_rows(y, self.n);
        let mut eps = y_cur.clone();
        let (a, s) = (cur.a as f32, cur.s as f32);
        eps.zip_mut_with(&y0, |e, &y| *e = (*e - a * y) / s);
        let step = DdimStep::between(cur, nxt, self.settings.eta);
        let az = if step.sigma > 0.0 {
            Some(self.measured_noise(cx)?)
        } else {
            None
        };
        Ok(step.apply(&y0, &eps, az.as_ref(), 1.0))
    }

    /// `A z` per sample, `z ~ N(0, I)` on the domain: `(N, ...range)`.
    fn measured_noise(&self, cx: &mut Context) -> Result<ArrayD<f32>> {
        let mut shape = vec![self.n];
        shape.extend_from_slice(self.problem.operator().domain_shape());
        let z = cx.normal(&shape);
        self.problem.forward_batch(z.view())
    }

    /// Finishes a run at the clean knot: final weights, ensemble, one draw per sample.
    fn finish(
        &mut self,
        cx: &mut Context,
        mut state: State,
        x0: ArrayD<f32>,
        nxt: Knot,
    ) -> Result<State> {
        let (_, sq) = self.problem.data_grad_batch(x0.view())?;
        let s2 = self.problem.sigma_y().powi(2);
        // The completed weight of the last move would add `log h_{S-1}(x_{S-1})` and the
        // final step subtract it again (no resampling in between): only the likelihood stays.
        let inc: Vec<f64> = sq.iter().map(|q| -q / (2.0 * s2)).collect();
        self.add_logw(&inc);
        let k = self.k();
        let (mean, std) = self.weighted_moments(&x0, true)?;
        let mut weights = Array2::zeros((self.n, k));
        let mut ess_v = Vec::with_capacity(self.n);
        let mut pick = Vec::with_capacity(self.n);
        for i in 0..self.n {
            let w = normalise_log_weights(&self.logw[i * k..(i + 1) * k])?;
            ess_v.push(ess(&w));
            let u: f64 = cx.rng().random::<f64>();
            pick.push(i * k + systematic(&w, 1, u)[0]);
            weights.row_mut(i).assign(&ndarray::Array1::from(w));
        }
        let mut pshape = vec![self.n, k];
        pshape.extend_from_slice(&x0.shape()[1..]);
        let particles = x0
            .to_shape(IxDyn(&pshape))
            .map_err(|e| Error::Invalid(format!("smc: particle reshape failed: {e}")))?
            .to_owned();
        state.x = x0.select(Axis(0), &pick);
        state.x0_hat = Some(mean.clone());
        self.ensemble = Some(Ensemble {
            particles,
            weights,
            mean,
            std,
            ess: ess_v,
            resamples: self.resamples,
        });
        state.step += 1;
        state.t = nxt.t;
        Ok(state)
    }

    fn step_tds(&mut self, cx: &mut Context, mut state: State) -> Result<State> {
        let (cur, nxt) = (self.knots[state.step], self.knots[state.step + 1]);
        if nxt.is_clean() {
            let x0 = cx.x0(state.x.view(), cur.t)?;
            return self.finish(cx, state, x0, nxt);
        }
        // One denoiser evaluation that keeps its forward pass for the twist's VJP.
        let (mut x0, pullback) = cx.x0_pullback(state.x.view(), cur.t)?;
        let (grad, sq) = self.problem.data_grad_batch(x0.view())?;
        let var = self.tds_var(cur);
        let mut logh: Vec<f64> = sq.iter().map(|q| -q / (2.0 * var)).collect();
        self.add_logw(&logh);
        // grad log h wrt x0 is -grad / var; through the denoiser by the VJP. Computed before
        // resampling (a resampled particle is a copy of its parent, so its twist gradient is
        // the parent's) and resampled with the particles.
        let v = grad.mapv(|g| -g / var as f32);
        let mut g = pullback(v.view())?;
        self.maybe_resample(
            cx.rng(),
            &mut [&mut state.x, &mut x0, &mut g],
            &mut [&mut logh],
        )?;
        let kern = AncestralKernel::between(cur, nxt);
        let sd = kern.sd;
        let mut x = kern.mean(&state.x, &x0);
        let z = cx.normal(x.shape());
        let sd2 = sd * sd;
        x.zip_mut_with(&g, |x, &g| *x += sd2 * g);
        x.zip_mut_with(&z, |x, &z| *x += sd * z);
        // log p - log q = -sd z.g - sd^2 |g|^2 / 2 per particle, then - log h_i(x_i).
        let inc: Vec<f64> = g
            .axis_iter(Axis(0))
            .zip(z.axis_iter(Axis(0)))
            .zip(&logh)
            .map(|((gr, zr), h)| {
                let (mut zg, mut gg) = (0.0f64, 0.0f64);
                for (&gi, &zi) in gr.iter().zip(zr.iter()) {
                    zg += gi as f64 * zi as f64;
                    gg += gi as f64 * gi as f64;
                }
                -(sd as f64) * zg - 0.5 * (sd2 as f64) * gg - h
            })
            .collect();
        self.add_logw(&inc);
        state.x = x;
        state.x0_hat = Some(self.weighted_mean(&x0)?);
        state.step += 1;
        state.t = nxt.t;
        Ok(state)
    }

    /// FPS: per particle, an exact draw from `N(x'; mu, sd^2 I) N(y_n; A x', tau^2 I)`
    /// (normalised) and the log of its normaliser `N(y_n; A mu, tau^2 I + sd^2 A A^T)` up to
    /// a constant shared by all particles (see the module docs). `mu` is `(N K, ...)`, `ys`
    /// `(N, ...range)`. The quadratic form is evaluated as `(|e|^2 + gamma |u|^2) / tau^2`
    /// with `u = S A^T r`, `e = r - A u`, a sum of two nonnegative terms: the textbook
    /// `|r|^2 - r.A u` cancels catastrophically in f32 when `gamma` is small (`t ~ 1`).
    fn fps_conditional(
        &self,
        cx: &mut Context,
        mu: &ArrayD<f32>,
        ys: &ArrayD<f32>,
        sd: f64,
        tau: f64,
    ) -> Result<(ArrayD<f32>, Vec<f64>)> {
        let op = self
            .problem
            .linear()
            .ok_or_else(|| Error::Invalid("fps needs a linear operator".into()))?;
        let gamma = tau * tau / (sd * sd);
        let z1 = cx.normal(mu.shape());
        let mut rshape = vec![mu.shape()[0]];
        rshape.extend_from_slice(op.range_shape());
        let z2 = cx.normal(&rshape);
        let k = self.k();
        let (iters, tol) = (self.settings.cg_iters, self.settings.cg_tol);
        let problem = &self.problem;
        let solve = |rhs: ArrayD<f32>| problem.solve_regularized(gamma, rhs.view(), iters, tol);
        let rows: Vec<(ArrayD<f32>, f64)> = (0..mu.shape()[0])
            .into_par_iter()
            .map(|j| {
                let m = mu.index_axis(Axis(0), j);
                let yn = ys.index_axis(Axis(0), j / k);
                let mut r = apply(op, m.view());
                r.zip_mut_with(&yn, |r, &y| *r = y - *r);
                let u = solve(adjoint(op, r.view()))?;
                let au = apply(op, u.view());
                let ee: f64 = r
                    .iter()
                    .zip(au.iter())
                    .map(|(&r, &a)| (r as f64 - a as f64).powi(2))
                    .sum();
                let uu: f64 = u.iter().map(|&v| (v as f64).powi(2)).sum();
                let log_z = -(ee + gamma * uu) / (2.0 * tau * tau);
                // Draw: mu' = mu + sd z1, x' = mu' + S A^T (y + tau z2 - A mu').
                let mut mp = m.to_owned();
                mp.zip_mut_with(&z1.index_axis(Axis(0), j), |v, &z| *v += sd as f32 * z);
                let mut r2 = apply(op, mp.view());
                let z2j = z2.index_axis(Axis(0), j);
                ndarray::Zip::from(&mut r2)
                    .and(&yn)
                    .and(&z2j)
                    .for_each(|r, &y, &z| *r = y + tau as f32 * z - *r);
                let u2 = solve(adjoint(op, r2.view()))?;
                mp.zip_mut_with(&u2, |v, &u| *v += u);
                Ok((mp, log_z))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut x = ArrayD::zeros(mu.raw_dim());
        let mut log_z = Vec::with_capacity(rows.len());
        for (j, (row, lz)) in rows.into_iter().enumerate() {
            x.index_axis_mut(Axis(0), j).assign(&row);
            log_z.push(lz);
        }
        Ok((x, log_z))
    }

    fn step_fps(&mut self, cx: &mut Context, mut state: State) -> Result<State> {
        let (cur, nxt) = (self.knots[state.step], self.knots[state.step + 1]);
        let mut x0 = cx.x0(state.x.view(), cur.t)?;
        let y_cur = self
            .y_cur
            .take()
            .ok_or_else(|| Error::Invalid("fps: step called before init".into()))?;
        if nxt.is_clean() {
            return self.finish(cx, state, x0, nxt);
        }
        let mut logh = self.gaussian_fit(&state.x, &y_cur, self.fps_tau(cur))?;
        self.add_logw(&logh);
        self.maybe_resample(cx.rng(), &mut [&mut state.x, &mut x0], &mut [&mut logh])?;
        let y_next = self.fps_bridge(cx, &y_cur, cur, nxt)?;
        let kern = AncestralKernel::between(cur, nxt);
        let mu = kern.mean(&state.x, &x0);
        let (sd, tau) = (kern.sd as f64, self.fps_tau(nxt));
        let (x, log_z) = self.fps_conditional(cx, &mu, &y_next, sd, tau)?;
        let logh_next = self.gaussian_fit(&x, &y_next, tau)?;
        let inc: Vec<f64> = log_z
            .iter()
            .zip(&logh_next)
            .zip(&logh)
            .map(|((z, hn), h)| z - hn - h)
            .collect();
        self.add_logw(&inc);
        self.y_cur = Some(y_next);
        state.x = x;
        state.x0_hat = Some(self.weighted_mean(&x0)?);
        state.step += 1;
        state.t = nxt.t;
        Ok(state)
    }
}

impl Sampler for Smc {
    fn name(&self) -> String {
        format!(
            "smc-{}({} steps, {} particles)",
            self.settings.method.name(),
            self.settings.steps,
            self.settings.particles
        )
    }
    fn steps(&self) -> usize {
        self.settings.steps
    }
    fn init(&mut self, cx: &mut Context, n: usize) -> Result<State> {
        let den = cx.denoiser();
        self.problem.check_prior(den.info())?;
        self.knots = den.schedule().knots(self.settings.steps);
        self.n = n;
        let k = self.k();
        self.logw = vec![0.0; n * k];
        self.ensemble = None;
        self.resamples = 0;
        let first = self.knots[0];
        let shape = den.info().batch_shape(n * k);
        let mut x = cx.normal(&shape).mapv(|v| v * first.s as f32);
        if self.settings.method == SmcMethod::Fps {
            let mut y0 = broadcast_rows(self.problem.y(), n).mapv(|v| v * first.a as f32);
            let az = self.measured_noise(cx)?;
            y0.zip_mut_with(&az, |y, &e| *y += first.s as f32 * e);
            let tau = self.fps_tau(first);
            if tau > 0.0 {
                // Start from the twisted initial law p(x_0) h_0(x_0): its weight is a
                // constant, and the -log h_0 here cancels the +log h_0 of the first step.
                let zero = ArrayD::zeros(x.raw_dim());
                x = self.fps_conditional(cx, &zero, &y0, first.s, tau)?.0;
                let logh = self.gaussian_fit(&x, &y0, tau)?;
                self.logw = logh.iter().map(|h| -h).collect();
            }
            self.y_cur = Some(y0);
        }
        Ok(State {
            x,
            x0_hat: None,
            step: 0,
            total: self.knots.len() - 1,
            t: first.t,
        })
    }
    fn step(&mut self, cx: &mut Context, state: State) -> Result<State> {
        match self.settings.method {
            SmcMethod::Tds => self.step_tds(cx, state),
            SmcMethod::Fps => self.step_fps(cx, state),
        }
    }
}

/// `y` repeated as `n` rows: `(n, ...y.shape)`.
fn broadcast_rows(y: &ArrayD<f32>, n: usize) -> ArrayD<f32> {
    let mut shape = vec![n];
    shape.extend_from_slice(y.shape());
    let mut out = ArrayD::zeros(IxDyn(&shape));
    for mut r in out.axis_iter_mut(Axis(0)) {
        r.assign(y);
    }
    out
}

fn apply(op: &dyn LinearOperator, x: ArrayViewD<f32>) -> ArrayD<f32> {
    let mut y = ArrayD::zeros(IxDyn(op.range_shape()));
    op.apply(x, y.view_mut());
    y
}

fn adjoint(op: &dyn LinearOperator, y: ArrayViewD<f32>) -> ArrayD<f32> {
    let mut x = ArrayD::zeros(IxDyn(op.domain_shape()));
    op.adjoint(y, x.view_mut());
    x
}

/// Normalised weights from log-weights by log-sum-exp; an error when no weight is finite.
pub fn normalise_log_weights(logw: &[f64]) -> Result<Vec<f64>> {
    let mx = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !mx.is_finite() {
        return Err(Error::Invalid(format!(
            "smc: every particle has zero or non-finite weight (largest log-weight {mx}); \
             the measurement may be inconsistent with the prior or sigma_y too small"
        )));
    }
    let e: Vec<f64> = logw.iter().map(|l| (l - mx).exp()).collect();
    let s: f64 = e.iter().sum();
    Ok(e.into_iter().map(|v| v / s).collect())
}

/// The effective sample size `1 / sum w^2` of normalised weights.
pub fn ess(w: &[f64]) -> f64 {
    1.0 / w.iter().map(|v| v * v).sum::<f64>().max(f64::MIN_POSITIVE)
}

/// Systematic resampling: `m` indices into `w` (normalised) at positions `(u + j) / m`,
/// `u` in `[0, 1)`. Index `i` appears `floor(m w_i)` or `ceil(m w_i)` times.
pub fn systematic(w: &[f64], m: usize, u: f64) -> Vec<usize> {
    let mut out = Vec::with_capacity(m);
    let mut cum = 0.0;
    let mut i = 0;
    let last = w.len().saturating_sub(1);
    for j in 0..m {
        let p = (u + j as f64) / m as f64;
        while i < last && cum + w[i] <= p {
            cum += w[i];
            i += 1;
        }
        out.push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prior::{DenseOperator, Gmm};
    use crate::sample::stats::{compare, Bounds};
    use posterior_operators::forward::Operator;
    use posterior_operators::phase::FourierPhaseRetrieval;
    use posterior_operators::ForwardOperator;

    /// The demo mixture (four components in 2-D) measured through `A = [1, 0.5]` with
    /// `sigma_y = 0.3` at `y = 0.4`: one measurement of two unknowns, so the exact posterior
    /// keeps two modes, with weights (0.15, 0.85 on components 0 and 2) far from the prior's
    /// (0.35, 0.25): a sampler that ignores its weights gets them wrong.
    fn demo_problem() -> (Gmm, Arc<Problem>, Gmm) {
        let gmm = Gmm::demo2d();
        let a = DenseOperator::new(1, 2, vec![1.0, 0.5]).unwrap();
        let y = ArrayD::from_shape_vec(IxDyn(&[1]), vec![0.4f32]).unwrap();
        let post = gmm.posterior(&a, y.view(), 0.3).unwrap();
        let p = Problem::new(Operator::Linear(Box::new(a)), y, 0.3).unwrap();
        (gmm, Arc::new(p), post)
    }

    /// The default bounds are calibrated for 4000 samples; every figure but the z-scores
    /// scales as `1/sqrt(n)`, so for 1000 samples they widen by 2.
    fn bounds_1000() -> Bounds {
        let b = Bounds::default();
        Bounds {
            cov_rel: b.cov_rel * 2.0,
            sw: b.sw * 2.0,
            ..b
        }
    }

    fn settings(method: SmcMethod, steps: usize, particles: usize) -> SmcSettings {
        SmcSettings {
            method,
            steps,
            particles,
            ..SmcSettings::default()
        }
    }

    #[test]
    fn systematic_resampling_keeps_floor_or_ceil_copies() {
        let w = [0.05, 0.4, 0.0, 0.3, 0.25];
        for (m, u) in [(10, 0.0), (10, 0.99), (7, 0.5), (100, 0.123)] {
            let idx = systematic(&w, m, u);
            assert_eq!(idx.len(), m);
            for (i, wi) in w.iter().enumerate() {
                let c = idx.iter().filter(|&&j| j == i).count() as f64;
                let e = m as f64 * wi;
                assert!(
                    c >= e.floor() - 1e-9 && c <= e.ceil() + 1e-9,
                    "{i}: {c} vs {e}"
                );
            }
            assert!(idx.windows(2).all(|p| p[0] <= p[1]));
        }
        // Zero-weight particles are never picked; one particle takes everything.
        assert!(systematic(&[0.0, 1.0, 0.0], 5, 0.7).iter().all(|&j| j == 1));
    }

    #[test]
    fn log_weights_normalise_without_overflow() {
        let w = normalise_log_weights(&[-1e4, -1e4 + 2f64.ln(), f64::NEG_INFINITY]).unwrap();
        assert!((w[0] - 1.0 / 3.0).abs() < 1e-12 && (w[1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(w[2], 0.0);
        assert!((ess(&[0.25; 4]) - 4.0).abs() < 1e-12 && (ess(&[1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(normalise_log_weights(&[f64::NEG_INFINITY; 3]).is_err());
        assert!(normalise_log_weights(&[f64::NAN, 0.0]).is_ok());
    }

    #[test]
    fn tds_reproduces_the_exact_posterior_and_ignoring_weights_fails() {
        // 1000 posterior samples, each one weighted draw from its own 16 particles, 60 steps.
        // Seen: mean 1.3 s.e., covariance 0.10, SW 0.076, weights 1.2 s.e. (bounds: 4 s.e.,
        // 0.2, 0.15, 4 s.e.). The same run with the weights ignored (a DPS-like guided
        // sampler) puts far too much mass on the wrong mode: weight error ~18 s.e.
        let (gmm, p, post) = demo_problem();
        for broken in [false, true] {
            let mut s = Smc::new(p.clone(), settings(SmcMethod::Tds, 60, 16)).unwrap();
            s.ignore_weights = broken;
            let (out, ens) = s.run(&gmm, 1000, 3).unwrap();
            let r = compare(out.samples.view(), &post, 7);
            eprintln!("tds (weights ignored: {broken}): {r}");
            assert_eq!(r.check(&bounds_1000()).is_ok(), !broken, "{r}");
            assert_eq!((out.nfe, out.vjps), (60, 59));
            assert_eq!(ens.particles.shape(), &[1000, 16, 2]);
        }
    }

    #[test]
    fn fps_ensembles_reproduce_the_exact_posterior_and_ignoring_weights_fails() {
        // 20 posterior samples x 200 particles, 40 steps; 50 equally weighted draws per
        // sample by systematic resampling (50 < the final ESS ~120-190, few duplicates):
        // 1000 draws compared with the exact posterior under the 1000-sample bounds. Seen:
        // mean 1.6 s.e., covariance 0.11, SW 0.046, weights 1.2 s.e.; weights ignored: ~24
        // s.e. FPS needs more particles than TDS for the same accuracy (its noised
        // measurements make the weights noisier): with 32 particles one draw per sample is
        // still biased by ~4 s.e. The operator has no closed-form solve: this runs the CG
        // path.
        let (gmm, p, post) = demo_problem();
        for broken in [false, true] {
            let mut s = Smc::new(p.clone(), settings(SmcMethod::Fps, 40, 200)).unwrap();
            s.ignore_weights = broken;
            let (out, ens) = s.run(&gmm, 20, 11).unwrap();
            let draws = ens.resampled(50, 5);
            let r = compare(draws.view(), &post, 9);
            eprintln!(
                "fps (weights ignored: {broken}): {r}; final ESS {:?}",
                &ens.ess[..4]
            );
            assert_eq!(r.check(&bounds_1000()).is_ok(), !broken, "{r}");
            assert_eq!((out.nfe, out.vjps), (40, 0));
        }
    }

    #[test]
    fn runs_are_seeded_and_bad_requests_are_errors() {
        let (gmm, p, _) = demo_problem();
        // Same seed, same ensemble; another seed, another one. Weights sum to 1 per sample;
        // the uncertainty map is the weighted standard deviation of the particles.
        let run = |seed| {
            Smc::new(p.clone(), settings(SmcMethod::Fps, 8, 6))
                .unwrap()
                .run(&gmm, 3, seed)
                .unwrap()
        };
        let ((o1, e1), (o2, e2), (o3, _)) = (run(4), run(4), run(5));
        assert_eq!(o1.samples, o2.samples);
        assert_eq!(e1.particles, e2.particles);
        assert_ne!(o1.samples, o3.samples);
        assert_eq!(o1.samples.shape(), &[3, 2]);
        for i in 0..3 {
            let w = e1.weights.row(i);
            assert!((w.sum() - 1.0).abs() < 1e-12);
            for c in 0..2 {
                let m: f64 = (0..6).map(|j| w[j] * e1.particles[[i, j, c]] as f64).sum();
                let v: f64 = (0..6)
                    .map(|j| w[j] * (e1.particles[[i, j, c]] as f64 - m).powi(2))
                    .sum();
                assert!((e1.mean[[i, c]] as f64 - m).abs() < 1e-5);
                assert!((e1.std[[i, c]] as f64 - v.sqrt()).abs() < 1e-4);
            }
        }
        // Settings, noise level, operator kind and prior size are checked.
        for bad in [
            settings(SmcMethod::Tds, 0, 4),
            settings(SmcMethod::Tds, 10, 0),
            SmcSettings {
                ess_fraction: 1.5,
                ..SmcSettings::default()
            },
            SmcSettings {
                eta: -0.1,
                ..SmcSettings::fps()
            },
            SmcSettings {
                cg_tol: 0.0,
                ..SmcSettings::fps()
            },
        ] {
            assert!(Smc::new(p.clone(), bad).is_err());
        }
        let a = || Operator::Linear(Box::new(DenseOperator::new(1, 2, vec![1.0, 0.5]).unwrap()));
        let y = ArrayD::from_shape_vec(IxDyn(&[1]), vec![0.4f32]).unwrap();
        let noiseless = Arc::new(Problem::new(a(), y.clone(), 0.0).unwrap());
        let msg = Smc::new(noiseless, SmcSettings::fps())
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("sigma_y > 0"), "{msg}");
        let pr = FourierPhaseRetrieval::new(&[1, 4, 4], 2.0).unwrap();
        let yy = ArrayD::zeros(IxDyn(pr.range_shape()));
        let nonlinear = Arc::new(Problem::new(Operator::Nonlinear(Box::new(pr)), yy, 0.1).unwrap());
        let msg = Smc::new(nonlinear.clone(), SmcSettings::fps())
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("linear") && msg.contains("smc (tds)") && msg.contains("flair"),
            "{msg}"
        );
        assert!(Smc::new(nonlinear, SmcSettings::tds()).is_ok());
        let big = Gmm::random(2, 3, 1, true).unwrap();
        let mut s = Smc::new(p.clone(), SmcSettings::tds()).unwrap();
        let msg = Executor::new(0)
            .run(&mut s, &big, 2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("[2]") && msg.contains("[3]"), "{msg}");
    }

    #[test]
    #[ignore = "heavy (~1 min at the test profile): POSTERIOR_HEAVY_TESTS=1 cargo test -p posterior --lib sample::smc -- --ignored"]
    fn image_shaped_priors_with_a_mask_match_the_exact_posterior_mean() {
        if std::env::var("POSTERIOR_HEAVY_TESTS").is_err() {
            return;
        }
        // A 2-component mixture on (1, 3, 3) images, 4 of 9 pixels masked out, sigma_y = 0.2.
        // The mask has a closed-form regularised solve, so FPS runs its closed-form path
        // here. 600 samples, one weighted draw from K particles each (TDS 16, FPS 64: FPS's
        // noisier weights need more), 100 steps (at 40, TDS's chain error shows: 4.5 s.e.;
        // FPS with 16 particles: 6 s.e.): the mean
        // error in standard errors of the exact posterior (pixelwise, worst pixel) stays
        // under 4 (seen: TDS 3.1, FPS 3.7: the margin is thin; the residual is the chain's
        // discretisation and the finite-K bias) and the component fractions within 4 s.e.;
        // covariance and SW are left to the 2-D tests above, which resolve them better.
        let gmm = Gmm::random(2, 9, 4, true)
            .unwrap()
            .with_sample_shape(&[1, 3, 3])
            .unwrap();
        let mut mask = ndarray::Array2::from_elem((3, 3), true);
        for (i, j) in [(0, 0), (1, 1), (1, 2), (2, 0)] {
            mask[[i, j]] = false;
        }
        let op = posterior_operators::inpaint::Mask::new(&[1, 3, 3], mask, "test").unwrap();
        let (truth, _) = gmm.sample(1, &mut posterior_operators::rng::seeded(2, "truth"));
        let y = posterior_operators::LinearOperatorExt::apply_to(&op, truth.index_axis(Axis(0), 0))
            .unwrap();
        let post = gmm.posterior(&op, y.view(), 0.2).unwrap();
        let p = Arc::new(Problem::new(Operator::Linear(Box::new(op)), y, 0.2).unwrap());
        for (method, k) in [(SmcMethod::Tds, 16), (SmcMethod::Fps, 64)] {
            let mut s = Smc::new(p.clone(), settings(method, 100, k)).unwrap();
            let (out, ens) = s.run(&gmm, 600, 8).unwrap();
            assert_eq!(ens.particles.shape(), &[600, k, 1, 3, 3]);
            assert_eq!(ens.std.shape(), &[600, 1, 3, 3]);
            let r = compare(out.samples.view(), &post, 3);
            eprintln!("{} on a masked 3x3 image: {r}", method.name());
            assert!(r.mean_z < 4.0 && r.weight_z < 4.0, "{r}");
        }
    }
}
