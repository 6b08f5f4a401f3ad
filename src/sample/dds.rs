//! DDS, the decomposed diffusion sampler (Chung, Lee, Ye, ICLR 2024), and its slice-wise
//! volume variant with a TV term along the slice axis.
//!
//! Each step from knot `(a, s)` to the next knot `(a', s')`:
//! 1. `x0_hat` by Tweedie (one denoiser evaluation, no network gradient);
//! 2. data consistency: `M` conjugate-gradient iterations ([`conjugate_gradient`], the
//!    toolkit's one CG) started at `x0_hat`, which keeps the correction in the Krylov subspace
//!    around `x0_hat`: on `A^T A x = A^T y` for noise-free data (`sigma_y = 0`), on
//!    `(I + gamma A^T A) x = x0_hat + gamma A^T y` otherwise; the result is `x0'`;
//! 3. the DDIM update `x' = a' x0' + s' (sqrt(1 - eta^2) eps_hat + eta z)`, as a [`DdimStep`]
//!    with `keep = s' sqrt(1 - eta^2)`, `sigma = eta s'`.
//!
//! The step to the clean knot returns `x0'`. NFE = steps, VJPs = 0.
//!
//! Decisions, from the official code (HJ-harry/DDS, `solver_2d.py`, `solver_3d.py`):
//! - `eps_hat` is the network's noise estimate at `x_t`, `(x_t - a x0_hat) / s`, kept as it is:
//!   it is NOT recomputed from the corrected `x0'` (the official update reuses the network's
//!   `et`). The data consistency thus moves only the signal part of the next iterate.
//! - `eta` multiplies `s'` directly (`sigma = eta s'`), as in the official code; this is not
//!   DDIM's `eta` (which scales the posterior standard deviation, [`DdimStep::between`]):
//!   DDS's `eta = 0.85` injects more fresh noise than DDIM's would.
//! - CG stops after `M` iterations or when `||b - M x|| <= tol ||b||` (relative; the official
//!   code tests the absolute residual against `1e-5`, which depends on the data's scale).
//!   `M = 0` skips the data consistency (plain DDS-style DDIM: unconditional sampling).
//! - The per-sample CG runs on each sample of the batch separately (independent samples).
//! - `x0_hat` in the state is the corrected `x0'`, so a run stopped early returns a
//!   data-consistent estimate.
//!
//! Only linear operators: [`Sampler::init`] fails for a nonlinear model and names DPS and
//! RED-diff, which take any forward model through its VJP.
//!
//! # Volumes
//!
//! [`DdsVolume`] reconstructs a stack of `S` slices `(S, ...sample_shape)`, one
//! [`Problem`] per slice, with a prior over single slices: the batch axis carries the
//! slices (run it with `n = S`), every step denoises all slices in one batched call, and the
//! data consistency becomes one ADMM step for
//! `min_x sum_i f_i(x_i) + lambda ||D_z x||_1`, where `D_z` is the forward difference along
//! the slice axis and `f_i` slice `i`'s data term as above (`1/2 ||A_i x_i - y_i||^2`
//! noise-free, `1/2 ||x_i - x0_hat_i||^2 + gamma/2 ||A_i x_i - y_i||^2` with noise). With the
//! split `z = D_z x` and scaled dual `u`:
//! `x <- M CG iterations from x0_hat on (H + rho D_z^T D_z) x = b + rho D_z^T (z - u)`,
//! `z <- shrink(D_z x + u, lambda / rho)`, `u <- u + D_z x - z`, with `z` and `u` carried across
//! diffusion steps (as the official `solver_3d.py`, one ADMM iteration per step by default;
//! `rho = 10`, `lambda = 0.04`). Decisions: the slice differences are NOT periodic (the
//! official `_Dz` wraps the last slice onto the first, which couples two unrelated ends of a
//! volume); the shrinkage is anisotropic (per voxel), as the official one; `lambda` is in the
//! units of the data term, not normalised by `||A||^2`.
//!
//! Scale: the official values were set for a CT projector whose `A^T A` has a large norm;
//! with operators of norm ~1 (masks, normalised MRI) `rho = 10` outweighs the data term and
//! couples the slices strongly (each step's slice differences are pulled towards the
//! previous step's). On a 3x3 mask problem with noise 0.1 (`tests/posterior_samplers_a.rs`)
//! the official values still cut the step between identically measured slices by ~80% and
//! keep 72-92% of the measured part of a real jump between two blocks of slices, while
//! differences in unmeasured pixels, which only the prior informs, are largely flattened.
//! Lower `rho` and `lambda` together for such operators.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, Slice, Zip};
use posterior_operators::{LinearOperator, LinearOperatorExt};

use super::dps::knot_pair;
use super::{eps_from_x0, start, Context, DdimStep, Problem, Sampler, State};
use crate::error::{Error, Result};
use crate::prior::Knot;
use crate::solve::krylov::conjugate_gradient;

/// DDS settings; `Default` holds the official values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdsSettings {
    /// Steps (denoiser evaluations), at least 1. Default 50.
    pub steps: usize,
    /// DDS's `eta` in `[0, 1]` (see the module docs). Default 0.85.
    pub eta: f64,
    /// CG iterations `M` per step. Default 5.
    pub cg_iters: usize,
    /// CG relative residual tolerance, `>= 0`. Default `1e-5`.
    pub cg_tol: f64,
    /// `gamma > 0`, scales the data weight of the noisy-data system: the system is
    /// `(I + g A^T A) x = x0_hat + g A^T y` with `g = gamma / sigma_y^2` ([`data_weight`]).
    /// Default 1.
    pub gamma: f64,
}

impl Default for DdsSettings {
    fn default() -> Self {
        DdsSettings {
            steps: 50,
            eta: 0.85,
            cg_iters: 5,
            cg_tol: 1e-5,
            gamma: 1.0,
        }
    }
}

impl DdsSettings {
    /// Checks `steps >= 1`, `eta` in `[0, 1]`, `cg_tol >= 0` and `gamma > 0` (all finite).
    pub fn check(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::Invalid(
                "dds: the number of steps must be at least 1".into(),
            ));
        }
        if !(self.eta.is_finite() && (0.0..=1.0).contains(&self.eta)) {
            return Err(Error::Invalid(format!(
                "dds: eta must lie in [0, 1], got {}",
                self.eta
            )));
        }
        if !(self.cg_tol.is_finite() && self.cg_tol >= 0.0) {
            return Err(Error::Invalid(format!(
                "dds: the CG tolerance must be a finite number >= 0, got {}",
                self.cg_tol
            )));
        }
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(Error::Invalid(format!(
                "dds: gamma must be a finite number > 0, got {}",
                self.gamma
            )));
        }
        Ok(())
    }
}

/// The linear operator of a problem, or an error naming the samplers that take any model.
fn linear_of<'p>(problem: &'p Problem, who: &str) -> Result<&'p dyn LinearOperator> {
    problem.linear().ok_or_else(|| {
        Error::Invalid(format!(
            "{who}: needs a linear operator for its conjugate-gradient data consistency, but {} \
             is nonlinear; use dps or reddiff, which take any forward model through its VJP",
            problem.operator().name()
        ))
    })
}

/// The weight `g` of `A^T A` in DDS's noisy-data system `(I + g A^T A) x = x0_hat + g A^T y`:
/// `gamma / sigma_y^2`, the MAP weight for the likelihood `N(y; A x, sigma_y^2)` against a unit
/// Gaussian `N(x0_hat, I)` around Tweedie's estimate (prior units), scaled by `gamma`.
///
/// Departure from the official code, which uses `g = gamma = 1` whatever the noise: there the
/// weight only works for data at the scale it was tuned on. In prior units (an image range
/// mapped onto [-1, 1] halves `A`, so `A^T A` shrinks 4x) `g = 1` left the data nearly unused:
/// an 8-coil 4x MRI brain slice with sigma_y = 0.01 came out as a different brain
/// (17.3 dB, below zero-filling's 21.0 dB); with `g = 1 / sigma_y^2` the 5 CG iterations
/// started at `x0_hat` behave like the noise-free solve (early stopping regularises).
pub fn data_weight(gamma: f64, sigma_y: f64) -> f32 {
    (gamma / (sigma_y * sigma_y)) as f32
}

/// One slice's data term as a quadratic: `H x = c x + g A^T A x`, right-hand side
/// `c x0_hat + g A^T y` (`c = 0, g = 1` for noise-free data, `c = 1, g = ` [`data_weight`]
/// otherwise).
struct DataTerm {
    c: f32,
    g: f32,
    aty: ArrayD<f32>,
}

impl DataTerm {
    fn new(problem: &Problem, gamma: f64, who: &str) -> Result<DataTerm> {
        let op = linear_of(problem, who)?;
        let aty = op.adjoint_to(problem.y().view())?;
        Ok(if problem.sigma_y() > 0.0 {
            DataTerm {
                c: 1.0,
                g: data_weight(gamma, problem.sigma_y()),
                aty,
            }
        } else {
            DataTerm {
                c: 0.0,
                g: 1.0,
                aty,
            }
        })
    }
    /// `out = H v` (overwrites `out`).
    fn apply(&self, op: &dyn LinearOperator, v: ArrayViewD<f32>, mut out: ArrayViewMutD<f32>) {
        op.normal(v.view(), out.view_mut());
        let (c, g) = (self.c, self.g);
        Zip::from(&mut out)
            .and(&v)
            .for_each(|o, &v| *o = g * *o + c * v);
    }
    /// `c x0_hat + g A^T y`.
    fn rhs(&self, x0: ArrayViewD<f32>) -> ArrayD<f32> {
        let (c, g) = (self.c, self.g);
        let mut b = self.aty.mapv(|v| g * v);
        b.zip_mut_with(&x0, |b, &x| *b += c * x);
        b
    }
}

/// DDS's DDIM update to `nxt` (see the module docs): `keep = s' sqrt(1 - eta^2)`,
/// `sigma = eta s'`.
fn dds_ddim(nxt: Knot, eta: f64) -> DdimStep {
    DdimStep {
        a_next: nxt.a as f32,
        keep: (nxt.s * (1.0 - eta * eta).max(0.0).sqrt()) as f32,
        sigma: (eta * nxt.s) as f32,
    }
}

/// The step shared by [`Dds`] and [`DdsVolume`]: Tweedie, `consistency(x0_hat) -> x0'`, then
/// the DDS update (or `x0'` at the clean knot).
fn dds_step(
    cx: &mut Context,
    knots: &[Knot],
    eta: f64,
    mut state: State,
    consistency: impl FnOnce(&ArrayD<f32>) -> Result<ArrayD<f32>>,
) -> Result<State> {
    let (cur, nxt) = knot_pair(knots, state.step, "dds")?;
    let x = std::mem::take(&mut state.x);
    let x0 = cx.x0(x.view(), cur.t)?;
    let x0c = consistency(&x0)?;
    state.x = if nxt.is_clean() {
        x0c.clone()
    } else {
        let eps = eps_from_x0(&x, &x0, &cur);
        let step = dds_ddim(nxt, eta);
        let z = (step.sigma > 0.0).then(|| cx.normal(x.shape()));
        step.apply(&x0c, &eps, z.as_ref(), 1.0)
    };
    state.x0_hat = Some(x0c);
    state.step += 1;
    state.t = nxt.t;
    Ok(state)
}

/// The DDS sampler for one linear problem (see the module docs).
pub struct Dds {
    problem: Arc<Problem>,
    settings: DdsSettings,
    knots: Vec<Knot>,
    data: Option<DataTerm>,
    cg_iterations: usize,
}

impl Dds {
    /// Checks the settings (`steps >= 1`, `eta` in `[0, 1]`, `cg_tol >= 0`, `gamma > 0`) and
    /// that the operator is linear.
    pub fn new(problem: Arc<Problem>, settings: DdsSettings) -> Result<Dds> {
        settings.check()?;
        linear_of(&problem, "dds")?;
        Ok(Dds {
            problem,
            settings,
            knots: Vec::new(),
            data: None,
            cg_iterations: 0,
        })
    }
    /// The settings.
    pub fn settings(&self) -> &DdsSettings {
        &self.settings
    }
    /// CG iterations run so far (over all samples and steps).
    pub fn cg_iterations(&self) -> usize {
        self.cg_iterations
    }
}

impl Sampler for Dds {
    fn name(&self) -> String {
        let s = &self.settings;
        format!(
            "dds({} steps, eta={}, {} CG iterations)",
            s.steps, s.eta, s.cg_iters
        )
    }
    fn steps(&self) -> usize {
        self.settings.steps
    }
    fn init(&mut self, cx: &mut Context, n: usize) -> Result<State> {
        self.problem.check_prior(cx.denoiser().info())?;
        self.data = Some(DataTerm::new(&self.problem, self.settings.gamma, "dds")?);
        self.knots = cx.denoiser().schedule().knots(self.settings.steps);
        self.cg_iterations = 0;
        Ok(start(cx, &self.knots, n))
    }
    fn step(&mut self, cx: &mut Context, state: State) -> Result<State> {
        let op = linear_of(&self.problem, "dds")?;
        let data = self
            .data
            .as_ref()
            .ok_or_else(|| Error::Invalid("dds: step called before init".into()))?;
        let (iters, tol) = (self.settings.cg_iters, self.settings.cg_tol);
        let mut cg_total = 0;
        let out = dds_step(cx, &self.knots, self.settings.eta, state, |x0| {
            let mut xc = x0.clone();
            if iters == 0 {
                return Ok(xc);
            }
            let apply = |v: ArrayViewD<f32>, out: ArrayViewMutD<f32>| data.apply(op, v, out);
            for (mut xi, x0i) in xc.axis_iter_mut(Axis(0)).zip(x0.axis_iter(Axis(0))) {
                let b = data.rhs(x0i.view());
                let mut sol = x0i.to_owned();
                let rep =
                    conjugate_gradient(&apply, b.view(), &mut sol, iters, tol, &mut |_, _| {});
                cg_total += rep.iterations;
                xi.assign(&sol);
            }
            Ok(xc)
        })?;
        self.cg_iterations += cg_total;
        Ok(out)
    }
}

/// Settings of the slice-axis TV step of [`DdsVolume`]; `Default` holds the official
/// values (`rho = 10`, `lambda = 0.04` as for sparse-view CT; the paper uses 0.4 for
/// limited-angle CT), one ADMM iteration per diffusion step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SliceTv {
    /// ADMM penalty `rho > 0`.
    pub rho: f64,
    /// TV weight `lambda >= 0` (0 turns the shrinkage into the identity).
    pub lambda: f64,
    /// ADMM iterations per diffusion step, at least 1.
    pub admm_iters: usize,
}

impl Default for SliceTv {
    fn default() -> Self {
        SliceTv {
            rho: 10.0,
            lambda: 0.04,
            admm_iters: 1,
        }
    }
}

/// Forward differences along the slice axis: `(S - 1, ...)` from `(S, ...)`.
fn dz(x: ArrayViewD<f32>) -> ArrayD<f32> {
    let s = x.shape()[0];
    if s < 2 {
        let mut sh = x.shape().to_vec();
        sh[0] = 0;
        return ArrayD::zeros(sh);
    }
    &x.slice_axis(Axis(0), Slice::from(1..)) - &x.slice_axis(Axis(0), Slice::from(..s - 1))
}

/// The adjoint of [`dz`], accumulated: `out += D_z^T w` for `w` of shape `(S - 1, ...)`.
fn dz_adjoint_add(w: ArrayViewD<f32>, mut out: ArrayViewMutD<f32>) {
    let s = out.shape()[0];
    if s < 2 {
        return;
    }
    // (D_z^T w)_i = w_{i-1} - w_i, with w_{-1} = w_{S-1} = 0.
    {
        let mut tail = out.slice_axis_mut(Axis(0), Slice::from(1..));
        tail += &w;
    }
    let mut head = out.slice_axis_mut(Axis(0), Slice::from(..s - 1));
    head -= &w;
}

/// Slice-wise DDS for a volume `(S, ...sample_shape)` with a TV step along the slice axis
/// (see the module docs). Run it with `n = S`: one volume per run.
pub struct DdsVolume {
    slices: Vec<Arc<Problem>>,
    settings: DdsSettings,
    tv: SliceTv,
    knots: Vec<Knot>,
    data: Vec<DataTerm>,
    z: ArrayD<f32>,
    u: ArrayD<f32>,
}

impl DdsVolume {
    /// One linear problem per slice (all on the prior's sample shape), the DDS settings and
    /// the TV step. Fails on an empty stack, bad settings, or a nonlinear slice operator.
    pub fn new(slices: Vec<Arc<Problem>>, settings: DdsSettings, tv: SliceTv) -> Result<Self> {
        settings.check()?;
        if slices.is_empty() {
            return Err(Error::Invalid(
                "dds-volume: the stack has no slices; expected one problem per slice".into(),
            ));
        }
        if !(tv.rho.is_finite() && tv.rho > 0.0) {
            return Err(Error::Invalid(format!(
                "dds-volume: rho must be a finite number > 0, got {}",
                tv.rho
            )));
        }
        if !(tv.lambda.is_finite() && tv.lambda >= 0.0) {
            return Err(Error::Invalid(format!(
                "dds-volume: lambda must be a finite number >= 0, got {}",
                tv.lambda
            )));
        }
        if tv.admm_iters == 0 {
            return Err(Error::Invalid(
                "dds-volume: at least one ADMM iteration per step is needed".into(),
            ));
        }
        for (i, p) in slices.iter().enumerate() {
            linear_of(p, &format!("dds-volume (slice {i})"))?;
        }
        Ok(DdsVolume {
            slices,
            settings,
            tv,
            knots: Vec::new(),
            data: Vec::new(),
            z: ArrayD::zeros(vec![0]),
            u: ArrayD::zeros(vec![0]),
        })
    }

    /// `out = (H + rho D_z^T D_z) v` over the whole stack.
    fn apply_system(&self, v: ArrayViewD<f32>, mut out: ArrayViewMutD<f32>) {
        for (i, (vi, oi)) in v
            .axis_iter(Axis(0))
            .zip(out.axis_iter_mut(Axis(0)))
            .enumerate()
        {
            // Every slice was checked to be linear in `new`.
            if let Some(op) = self.slices[i].linear() {
                self.data[i].apply(op, vi, oi);
            }
        }
        let rho = self.tv.rho as f32;
        let w = dz(v.view()).mapv(|d| rho * d);
        dz_adjoint_add(w.view(), out.view_mut());
    }

    /// The ADMM data consistency of the whole stack from `x0_hat`.
    fn consistency(&mut self, x0: &ArrayD<f32>) -> ArrayD<f32> {
        let mut x = x0.clone();
        let rho = self.tv.rho as f32;
        let thresh = (self.tv.lambda / self.tv.rho) as f32;
        for _ in 0..self.tv.admm_iters {
            let mut b = x0.clone();
            for ((mut bi, x0i), d) in b
                .axis_iter_mut(Axis(0))
                .zip(x0.axis_iter(Axis(0)))
                .zip(&self.data)
            {
                bi.assign(&d.rhs(x0i));
            }
            let zu = (&self.z - &self.u).mapv(|v| rho * v);
            dz_adjoint_add(zu.view(), b.view_mut());
            if self.settings.cg_iters > 0 {
                let apply = |v: ArrayViewD<f32>, out: ArrayViewMutD<f32>| self.apply_system(v, out);
                conjugate_gradient(
                    &apply,
                    b.view(),
                    &mut x,
                    self.settings.cg_iters,
                    self.settings.cg_tol,
                    &mut |_, _| {},
                );
            }
            let dx = dz(x.view());
            let mut z = &dx + &self.u;
            z.mapv_inplace(|v| v.signum() * (v.abs() - thresh).max(0.0));
            self.u += &(&dx - &z);
            self.z = z;
        }
        x
    }
}

impl Sampler for DdsVolume {
    fn name(&self) -> String {
        format!(
            "dds-volume({} slices, {} steps, eta={}, {} CG iterations, rho={}, lambda={})",
            self.slices.len(),
            self.settings.steps,
            self.settings.eta,
            self.settings.cg_iters,
            self.tv.rho,
            self.tv.lambda
        )
    }
    fn steps(&self) -> usize {
        self.settings.steps
    }
    fn init(&mut self, cx: &mut Context, n: usize) -> Result<State> {
        if n != self.slices.len() {
            return Err(Error::Invalid(format!(
                "dds-volume: asked for {n} samples, but the stack has {} slices; run one volume at a time with n = the number of slices",
                self.slices.len()
            )));
        }
        let info = cx.denoiser().info();
        self.data = Vec::with_capacity(n);
        for (i, p) in self.slices.iter().enumerate() {
            p.check_prior(info)?;
            self.data.push(DataTerm::new(
                p,
                self.settings.gamma,
                &format!("dds-volume (slice {i})"),
            )?);
        }
        let mut zshape = info.batch_shape(n.saturating_sub(1));
        zshape[0] = n.saturating_sub(1);
        self.z = ArrayD::zeros(zshape.clone());
        self.u = ArrayD::zeros(zshape);
        self.knots = cx.denoiser().schedule().knots(self.settings.steps);
        Ok(start(cx, &self.knots, n))
    }
    fn step(&mut self, cx: &mut Context, state: State) -> Result<State> {
        let knots = std::mem::take(&mut self.knots);
        let out = dds_step(cx, &knots, self.settings.eta, state, |x0| {
            Ok(self.consistency(x0))
        });
        self.knots = knots;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prior::{Denoiser, DenseOperator, Gmm};
    use crate::sample::Executor;
    use ndarray::IxDyn;
    use posterior_operators::linear::{dot, random_array};
    use posterior_operators::phase::FourierPhaseRetrieval;
    use posterior_operators::Operator;

    const A: [f32; 6] = [1.0, 0.5, -0.3, 0.2, -1.0, 0.8];

    fn problem(sigma_y: f64) -> Arc<Problem> {
        let op = DenseOperator::new(2, 3, A.to_vec()).unwrap();
        let y = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.6, -0.2]).unwrap();
        Arc::new(Problem::new(Operator::Linear(Box::new(op)), y, sigma_y).unwrap())
    }

    /// Solves the 3 x 3 system `m x = b` by Gaussian elimination with partial pivoting (f64).
    fn solve3(mut m: [[f64; 3]; 3], mut b: [f64; 3]) -> [f64; 3] {
        for c in 0..3 {
            let p = (c..3)
                .max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))
                .unwrap();
            m.swap(c, p);
            b.swap(c, p);
            for r in c + 1..3 {
                let f = m[r][c] / m[c][c];
                let pivot = m[c];
                for (v, p) in m[r].iter_mut().zip(pivot).skip(c) {
                    *v -= f * p;
                }
                b[r] -= f * b[c];
            }
        }
        let mut x = [0.0; 3];
        for r in (0..3).rev() {
            let s: f64 = (r + 1..3).map(|k| m[r][k] * x[k]).sum();
            x[r] = (b[r] - s) / m[r][r];
        }
        x
    }

    #[test]
    fn the_slice_difference_and_its_adjoint_agree() {
        // <D_z x, w> = <x, D_z^T w> on random arrays, and D_z of a constant stack is zero.
        for s in [1, 2, 5] {
            let x = random_array(&[s, 1, 2, 3], 1, "x");
            let w = random_array(&[s.saturating_sub(1), 1, 2, 3], 2, "w");
            let mut adj = ArrayD::zeros(x.raw_dim());
            dz_adjoint_add(w.view(), adj.view_mut());
            let (l, r) = (
                dot(dz(x.view()).view(), w.view()),
                dot(x.view(), adj.view()),
            );
            assert!(
                (l - r).abs() <= 1e-5 * (1.0 + l.abs()),
                "{s} slices: {l} vs {r}"
            );
            let c = ArrayD::from_elem(IxDyn(&[s, 1, 2, 3]), 0.7f32);
            assert!(dz(c.view()).iter().all(|v| *v == 0.0));
        }
        // Not periodic: the first and last slices are not coupled.
        let x = ArrayD::from_shape_vec(IxDyn(&[3, 1]), vec![0.0f32, 1.0, 3.0]).unwrap();
        assert_eq!(dz(x.view()).as_slice().unwrap(), &[1.0, 2.0]);
    }

    #[test]
    fn the_update_uses_the_official_eta_convention() {
        // x' = a' x0 + s' (sqrt(1 - eta^2) eps + eta z) (official c1, c2).
        let nxt = Knot {
            t: 0.3,
            a: 0.8,
            s: 0.6,
        };
        let st = dds_ddim(nxt, 0.85);
        assert!((st.a_next - 0.8).abs() < 1e-7);
        assert!((st.sigma as f64 - 0.6 * 0.85).abs() < 1e-7);
        assert!((st.keep as f64 - 0.6 * (1.0f64 - 0.85 * 0.85).sqrt()).abs() < 1e-7);
        assert_eq!(dds_ddim(nxt, 1.0).keep, 0.0);
    }

    #[test]
    fn one_step_returns_the_exact_regularised_solve_from_the_tweedie_estimate() {
        // steps = 1: the only step goes to the clean knot and returns x0' = the CG solution
        // of (I + g A^T A) x = x0_hat + g A^T y (noisy data, g = gamma / sigma_y^2 = 0.7)
        // started at x0_hat; with
        // 3 CG iterations on a 3 x 3 SPD system that is the exact solution (reference: a
        // direct solve in f64; tolerance 1e-4 for f32 CG). With noise-free data the system
        // is A^T A x = A^T y, and the result then satisfies A x = y.
        let gmm = Gmm::random(2, 3, 4, false).unwrap();
        for sigma_y in [0.05, 0.0] {
            let p = problem(sigma_y);
            let settings = DdsSettings {
                steps: 1,
                cg_iters: 3,
                cg_tol: 0.0,
                gamma: if sigma_y > 0.0 {
                    0.7 * sigma_y * sigma_y
                } else {
                    0.7
                },
                ..Default::default()
            };
            let mut dds = Dds::new(p.clone(), settings).unwrap();
            let mut cx = Context::new(&gmm, 0);
            let mut st = dds.init(&mut cx, 2).unwrap();
            st.x = random_array(&[2, 3], 8, "x");
            let x0 = gmm.x0(st.x.view(), &[st.t as f32; 2]).unwrap();
            let out = dds.step(&mut cx, st).unwrap();
            assert_eq!((cx.nfe(), cx.vjps(), out.step), (1, 0, 1));
            // Two samples, at most 3 iterations each (the rank-2 noise-free system may stop
            // after 2 when its residual reaches rounding level).
            let it = dds.cg_iterations();
            assert!(
                it <= 6 && (it == 6 || sigma_y == 0.0) && it >= 4,
                "{it} iterations"
            );
            let a: Vec<f64> = A.iter().map(|v| *v as f64).collect();
            let yv = [0.6, -0.2];
            for i in 0..2 {
                if sigma_y > 0.0 {
                    let g = 0.7;
                    let mut m = [[0.0; 3]; 3];
                    let mut b = [0.0; 3];
                    for (r, row) in m.iter_mut().enumerate() {
                        for (c, v) in row.iter_mut().enumerate() {
                            let ata: f64 = (0..2).map(|k| a[k * 3 + r] * a[k * 3 + c]).sum();
                            *v = g * ata + if r == c { 1.0 } else { 0.0 };
                        }
                        b[r] = x0[[i, r]] as f64
                            + g * (0..2).map(|k| a[k * 3 + r] * yv[k]).sum::<f64>();
                    }
                    let want = solve3(m, b);
                    for (j, w) in want.iter().enumerate() {
                        assert!((out.x[[i, j]] as f64 - w).abs() < 1e-4, "{i},{j}");
                    }
                } else {
                    for (k, yk) in yv.iter().enumerate() {
                        let ax: f64 = (0..3).map(|j| a[k * 3 + j] * out.x[[i, j]] as f64).sum();
                        assert!((ax - yk).abs() < 1e-4, "sample {i}: {ax} vs {yk}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_one_slice_volume_is_plain_dds_and_weak_coupling_changes_little() {
        // The volume runs the same shared step: one slice gives DDS's samples; S slices with
        // the same problem and a negligible rho (1e-6) give DDS's batch of S to rounding.
        let gmm = Gmm::random(2, 3, 4, false).unwrap();
        let p = problem(0.05);
        let settings = DdsSettings {
            steps: 12,
            ..Default::default()
        };
        let mut dds = Dds::new(p.clone(), settings).unwrap();
        // The check can fail: with the default rho = 10 the 4-slice stack is coupled and
        // differs from the independent batch by far more than the tolerance.
        for (s, rho, same) in [(1usize, 10.0, true), (4, 1e-6, true), (4, 10.0, false)] {
            let tv = SliceTv {
                rho,
                ..Default::default()
            };
            let mut vol = DdsVolume::new(vec![p.clone(); s], settings, tv).unwrap();
            let a = Executor::new(9).run(&mut dds, &gmm, s).unwrap();
            let b = Executor::new(9).run(&mut vol, &gmm, s).unwrap();
            assert_eq!((b.nfe, b.vjps), (12, 0));
            let diff = (&a.samples - &b.samples)
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(
                diff < 1e-4,
                same,
                "{s} slices, rho {rho}: max difference {diff}"
            );
        }
    }

    #[test]
    fn nonlinear_models_and_bad_settings_are_errors_that_say_what_to_use() {
        let op = FourierPhaseRetrieval::new(&[1, 4, 4], 2.0).unwrap();
        let y = ArrayD::zeros(IxDyn(posterior_operators::ForwardOperator::range_shape(
            &op,
        )));
        let p = Arc::new(Problem::new(Operator::Nonlinear(Box::new(op)), y, 0.0).unwrap());
        let msg = Dds::new(p.clone(), DdsSettings::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("linear") && msg.contains("dps") && msg.contains("reddiff"),
            "{msg}"
        );
        let msg = DdsVolume::new(vec![p], DdsSettings::default(), SliceTv::default())
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("slice 0") && msg.contains("dps"), "{msg}");
        let base = DdsSettings::default();
        for (bad, what) in [
            (DdsSettings { steps: 0, ..base }, "steps"),
            (DdsSettings { eta: 1.2, ..base }, "eta"),
            (
                DdsSettings {
                    cg_tol: -1.0,
                    ..base
                },
                "tolerance",
            ),
            (DdsSettings { gamma: 0.0, ..base }, "gamma"),
        ] {
            let msg = Dds::new(problem(0.1), bad).err().unwrap().to_string();
            assert!(msg.contains(what), "{msg}");
        }
        let tv = SliceTv::default();
        for (bad, what) in [
            (SliceTv { rho: 0.0, ..tv }, "rho"),
            (SliceTv { lambda: -1.0, ..tv }, "lambda"),
            (
                SliceTv {
                    admm_iters: 0,
                    ..tv
                },
                "ADMM",
            ),
        ] {
            let msg = DdsVolume::new(vec![problem(0.1)], base, bad)
                .err()
                .unwrap()
                .to_string();
            assert!(msg.contains(what), "{msg}");
        }
        assert!(DdsVolume::new(vec![], base, tv).is_err());
        let gmm = Gmm::random(1, 3, 0, false).unwrap();
        let mut vol = DdsVolume::new(vec![problem(0.1); 3], base, tv).unwrap();
        let msg = Executor::new(0)
            .run(&mut vol, &gmm, 2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("3 slices"), "{msg}");
    }
}
