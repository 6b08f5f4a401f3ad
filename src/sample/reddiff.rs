//! RED-diff, regularization by denoising diffusion (Mardani et al., ICLR 2024).
//!
//! Variational: each sample of the batch is one image `mu` (a point-mass posterior), an
//! independent problem sharing the measurement `y`, optimised with Adam while the time walks
//! down the knots of [`crate::prior::Schedule::knots`] from `t = 1` (the clean knot is not
//! visited: its weight is 0). At the knot `(a, s)`, with fresh `eps ~ N(0, I)`:
//! `x_t = a mu + s eps`, `eps_hat = (x_t - a x0_hat(x_t)) / s` (one denoiser evaluation, no
//! gradient through the network), and Adam takes one step on the gradient of
//!
//! `L(mu) = 1/2 mean_m((y - A(mu))^2) + lambda w(t) mean_d(stopgrad(eps_hat - eps) mu)`,
//!
//! that is `g = J_A^T (A(mu) - y) / m + lambda w(t) (eps_hat - eps) / d`, with `m` the number
//! of measured values, `d` the number of values in one sample, and the SNR weighting
//! `w(t) = s / a`. These normalisations (means over the measurement and over the pixels, the
//! "linear" `1/SNR` weighting) follow the official code (NVlabs/RED-diff, `algos/reddiff.py`),
//! which takes its means over the whole batch: a uniform factor `1/N` on both terms, which
//! Adam's per-coordinate scaling cancels, so the per-sample means here give the same steps
//! per sample (up to Adam's `eps = 1e-8`).
//!
//! Decisions:
//! - Adam: `lr = 0.1`, `betas = (0.9, 0.99)`, `eps = 1e-8`, bias-corrected (PyTorch's Adam
//!   without weight decay, as the official code).
//! - `mu` starts at [`Problem::pseudo_inverse`] (Tikhonov with a small relative weight, closed
//!   form where available, else CG; zero for a nonlinear model), the same for every sample.
//! - The official code can perturb `mu` by `sigma_x0` noise before noising it; that option is
//!   off in its configurations and is left out.
//! - Knots where `a = 0` (rectified flow at `t = 1`) carry no information about `mu` and have
//!   an infinite weight; there the regulariser is skipped (data term only). RED-diff is a VP
//!   method; on other paths it runs as stated with the same `w = s / a`.
//! - The output is `mu` after the last step. `x0_hat` in the state is the denoiser's latest
//!   estimate `x0_hat(x_t)`.
//! - NFE = steps, VJPs = 0.

use std::sync::Arc;

use ndarray::{ArrayD, Axis, Zip};

use super::{eps_from_x0, Context, Problem, Sampler, State};
use crate::error::{Error, Result};
use crate::prior::Knot;

/// RED-diff settings; `Default` holds the official values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RedDiffSettings {
    /// Steps (denoiser evaluations), at least 1. Default 1000.
    pub steps: usize,
    /// Regulariser weight `lambda >= 0`. Default 0.25.
    pub lambda: f64,
    /// Adam learning rate `> 0`. Default 0.1.
    pub lr: f64,
    /// Adam's `(beta1, beta2)`, each in `[0, 1)`. Default `(0.9, 0.99)`.
    pub betas: (f64, f64),
}

impl Default for RedDiffSettings {
    fn default() -> Self {
        RedDiffSettings {
            steps: 1000,
            lambda: 0.25,
            lr: 0.1,
            betas: (0.9, 0.99),
        }
    }
}

/// Adam (bias-corrected, no weight decay) on one array of parameters.
#[derive(Clone, Debug)]
struct Adam {
    lr: f64,
    b1: f64,
    b2: f64,
    m: ArrayD<f32>,
    v: ArrayD<f32>,
    k: i32,
}

impl Adam {
    const EPS: f32 = 1e-8;

    fn new(shape: &[usize], lr: f64, (b1, b2): (f64, f64)) -> Adam {
        Adam {
            lr,
            b1,
            b2,
            m: ArrayD::zeros(shape),
            v: ArrayD::zeros(shape),
            k: 0,
        }
    }

    /// One step on `x` with gradient `g`.
    fn step(&mut self, x: &mut ArrayD<f32>, g: &ArrayD<f32>) {
        self.k += 1;
        let (b1, b2) = (self.b1 as f32, self.b2 as f32);
        let c1 = (1.0 - self.b1.powi(self.k)) as f32;
        let c2 = (1.0 - self.b2.powi(self.k)) as f32;
        let lr = self.lr as f32;
        Zip::from(x)
            .and(&mut self.m)
            .and(&mut self.v)
            .and(g)
            .for_each(|x, m, v, &g| {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *x -= lr * (*m / c1) / ((*v / c2).sqrt() + Self::EPS);
            });
    }
}

/// `lambda w(t) (eps_hat - eps) / d` with `w = s / a`, per element: the gradient of the
/// regulariser term (zero where `a = 0`, see the module docs).
fn regulariser_gradient(
    knot: &Knot,
    eps_hat: &ArrayD<f32>,
    eps: &ArrayD<f32>,
    lambda: f64,
    d: usize,
) -> ArrayD<f32> {
    let c = if knot.a > 0.0 {
        (lambda * knot.s / knot.a / d.max(1) as f64) as f32
    } else {
        0.0
    };
    let mut g = eps_hat - eps;
    g.mapv_inplace(|v| c * v);
    g
}

/// The RED-diff sampler (see the module docs).
pub struct RedDiff {
    problem: Arc<Problem>,
    settings: RedDiffSettings,
    knots: Vec<Knot>,
    adam: Option<Adam>,
}

impl RedDiff {
    /// Checks the settings: `steps >= 1`, `lambda >= 0`, `lr > 0`, betas in `[0, 1)`, all
    /// finite. The problem is checked against the prior in [`Sampler::init`].
    pub fn new(problem: Arc<Problem>, settings: RedDiffSettings) -> Result<RedDiff> {
        let s = &settings;
        let bad = |what: &str, v: f64, expected: &str| {
            Err(Error::Invalid(format!(
                "reddiff: {what} must be {expected}, got {v}"
            )))
        };
        if s.steps == 0 {
            return Err(Error::Invalid(
                "reddiff: the number of steps must be at least 1".into(),
            ));
        }
        if !(s.lambda.is_finite() && s.lambda >= 0.0) {
            return bad("lambda", s.lambda, "a finite number >= 0");
        }
        if !(s.lr.is_finite() && s.lr > 0.0) {
            return bad("the learning rate", s.lr, "a finite number > 0");
        }
        for (name, b) in [("beta1", s.betas.0), ("beta2", s.betas.1)] {
            if !(b.is_finite() && (0.0..1.0).contains(&b)) {
                return bad(name, b, "in [0, 1)");
            }
        }
        Ok(RedDiff {
            problem,
            settings,
            knots: Vec::new(),
            adam: None,
        })
    }
    /// The settings.
    pub fn settings(&self) -> &RedDiffSettings {
        &self.settings
    }
}

impl Sampler for RedDiff {
    fn name(&self) -> String {
        let s = &self.settings;
        format!(
            "reddiff({} steps, lambda={}, lr={})",
            s.steps, s.lambda, s.lr
        )
    }
    fn steps(&self) -> usize {
        self.settings.steps
    }
    fn init(&mut self, cx: &mut Context, n: usize) -> Result<State> {
        let info = cx.denoiser().info();
        self.problem.check_prior(info)?;
        self.knots = cx.denoiser().schedule().knots(self.settings.steps);
        let mu0 = self.problem.pseudo_inverse()?;
        let shape = info.batch_shape(n);
        let mut x = ArrayD::zeros(shape.clone());
        for mut xi in x.axis_iter_mut(Axis(0)) {
            xi.assign(&mu0);
        }
        self.adam = Some(Adam::new(&shape, self.settings.lr, self.settings.betas));
        Ok(State {
            x,
            x0_hat: None,
            step: 0,
            total: self.settings.steps,
            t: self.knots[0].t,
        })
    }
    fn step(&mut self, cx: &mut Context, mut state: State) -> Result<State> {
        let knot = self.knots[state.step];
        let (a, s) = (knot.a as f32, knot.s as f32);
        let eps = cx.normal(state.x.shape());
        let mut xt = state.x.mapv(|m| a * m);
        xt.zip_mut_with(&eps, |x, &e| *x += s * e);
        let x0 = cx.x0(xt.view(), knot.t)?;
        let eps_hat = eps_from_x0(&xt, &x0, &knot);
        let d: usize = state.x.shape()[1..].iter().product();
        let mut g = regulariser_gradient(&knot, &eps_hat, &eps, self.settings.lambda, d);
        let (data, _) = self.problem.data_grad_batch(state.x.view())?;
        let m = self.problem.y().len().max(1) as f32;
        g.zip_mut_with(&data, |g, &gd| *g += gd / m);
        let adam = self
            .adam
            .as_mut()
            .ok_or_else(|| Error::Invalid("reddiff: step called before init".into()))?;
        adam.step(&mut state.x, &g);
        state.x0_hat = Some(x0);
        state.step += 1;
        state.t = self.knots[state.step].t;
        Ok(state)
    }
}
