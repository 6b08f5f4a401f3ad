//! FPS, filtering posterior sampling (Dou & Song, 2024): noised measurements along the path
//! and exact Gaussian-conditional proposals (see the parent module's docs).

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use posterior_operators::LinearOperator;
use rayon::prelude::*;

use super::{Layout, Proposal, SmcSettings, Twist};
use crate::error::{Error, Result};
use crate::prior::Knot;
use crate::sample::problem::Problem;
use crate::sample::{AncestralKernel, Context, DdimStep};

/// The FPS proposal for one (linear) problem.
pub(super) struct Fps {
    pub problem: Arc<Problem>,
    pub eta: f64,
    pub cg_iters: usize,
    pub cg_tol: f64,
    /// The current noised measurement per posterior sample, `(N, ...range)`.
    y_cur: Option<ArrayD<f32>>,
}

impl Fps {
    pub fn new(problem: Arc<Problem>, s: &SmcSettings) -> Fps {
        Fps {
            problem,
            eta: s.eta,
            cg_iters: s.cg_iters,
            cg_tol: s.cg_tol,
            y_cur: None,
        }
    }

    fn op(&self) -> Result<&dyn LinearOperator> {
        self.problem
            .linear()
            .ok_or_else(|| Error::Unsupported("fps needs a linear operator".into()))
    }

    /// The twist width at a knot: `tau^2 = a^2 sigma_y^2 + (G s)^2`, `G` the problem's norm
    /// guard (the path noise `s A z` of `y_i` has that scale).
    pub fn tau(&self, k: Knot) -> f64 {
        let sig = self.problem.sigma_y();
        let g = self.problem.norm_guard();
        (k.a * k.a * sig * sig + (g * k.s).powi(2)).sqrt()
    }

    /// `-|y_n - A x_j|^2 / (2 tau^2)` per particle for the per-sample measurements `ys`
    /// `(N, ...range)`; zeros when `tau = 0`.
    fn gaussian_fit(
        &self,
        layout: &Layout,
        x: &ArrayD<f32>,
        ys: &ArrayD<f32>,
        tau: f64,
    ) -> Result<Vec<f64>> {
        let rows = x.shape()[0];
        if tau <= 0.0 {
            return Ok(vec![0.0; rows]);
        }
        let ax = self.problem.forward_batch(x.view())?;
        Ok(ax
            .axis_iter(Axis(0))
            .enumerate()
            .map(|(j, a)| {
                let y = ys.index_axis(Axis(0), j / layout.k);
                let sq: f64 = a
                    .iter()
                    .zip(y.iter())
                    .map(|(&p, &q)| (q as f64 - p as f64).powi(2))
                    .sum();
                -sq / (2.0 * tau * tau)
            })
            .collect())
    }

    /// `A z` per sample, `z ~ N(0, I)` on the domain: `(N, ...range)`.
    fn measured_noise(&self, cx: &mut Context, n: usize) -> Result<ArrayD<f32>> {
        let mut shape = vec![n];
        shape.extend_from_slice(self.problem.operator().domain_shape());
        let z = cx.normal(&shape);
        self.problem.forward_batch(z.view())
    }

    /// The next noised measurement per sample by the DDIM bridge towards `y`.
    fn bridge(
        &self,
        cx: &mut Context,
        n: usize,
        y_cur: &ArrayD<f32>,
        cur: Knot,
        nxt: Knot,
    ) -> Result<ArrayD<f32>> {
        let y0 = broadcast_rows(self.problem.y(), n);
        let mut eps = y_cur.clone();
        let (a, s) = (cur.a as f32, cur.s as f32);
        eps.zip_mut_with(&y0, |e, &y| *e = (*e - a * y) / s);
        let step = DdimStep::between(cur, nxt, self.eta);
        let az = if step.sigma > 0.0 {
            Some(self.measured_noise(cx, n)?)
        } else {
            None
        };
        Ok(step.apply(&y0, &eps, az.as_ref(), 1.0))
    }

    /// Per particle, an exact draw from `N(x'; mu, sd^2 I) N(y_n; A x', tau^2 I)`
    /// (normalised) and the log of its normaliser `N(y_n; A mu, tau^2 I + sd^2 A A^T)` up to
    /// a constant shared by all particles (see the module docs). `mu` is `(N K, ...)`, `ys`
    /// `(N, ...range)`. The quadratic form is evaluated as `(|e|^2 + gamma |u|^2) / tau^2`
    /// with `u = S A^T r`, `e = r - A u`, a sum of two nonnegative terms: the textbook
    /// `|r|^2 - r.A u` cancels catastrophically in f32 when `gamma` is small (`t ~ 1`).
    fn conditional(
        &self,
        cx: &mut Context,
        layout: &Layout,
        mu: &ArrayD<f32>,
        ys: &ArrayD<f32>,
        sd: f64,
        tau: f64,
    ) -> Result<(ArrayD<f32>, Vec<f64>)> {
        let op = self.op()?;
        let gamma = tau * tau / (sd * sd);
        let z1 = cx.normal(mu.shape());
        let mut rshape = vec![mu.shape()[0]];
        rshape.extend_from_slice(op.range_shape());
        let z2 = cx.normal(&rshape);
        let k = layout.k;
        let (iters, tol) = (self.cg_iters, self.cg_tol);
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
}

impl Proposal for Fps {
    fn start(
        &mut self,
        cx: &mut Context,
        layout: &Layout,
        knots: &[Knot],
    ) -> Result<(ArrayD<f32>, Vec<f64>)> {
        let first = knots[0];
        let shape = cx.denoiser().info().batch_shape(layout.rows());
        let mut x = cx.normal(&shape).mapv(|v| v * first.s as f32);
        let mut y0 = broadcast_rows(self.problem.y(), layout.n).mapv(|v| v * first.a as f32);
        let az = self.measured_noise(cx, layout.n)?;
        y0.zip_mut_with(&az, |y, &e| *y += first.s as f32 * e);
        let tau = self.tau(first);
        let mut logw = vec![0.0; layout.rows()];
        if tau > 0.0 {
            // Start from the twisted initial law p(x_0) h_0(x_0): its weight is a constant,
            // and the -log h_0 here cancels the +log h_0 of the first step.
            let zero = ArrayD::zeros(x.raw_dim());
            x = self.conditional(cx, layout, &zero, &y0, first.s, tau)?.0;
            let logh = self.gaussian_fit(layout, &x, &y0, tau)?;
            logw = logh.iter().map(|h| -h).collect();
        }
        self.y_cur = Some(y0);
        Ok((x, logw))
    }

    fn twist(
        &mut self,
        cx: &mut Context,
        layout: &Layout,
        x: &ArrayD<f32>,
        cur: Knot,
        last: bool,
    ) -> Result<Twist> {
        let x0 = cx.x0(x.view(), cur.t)?;
        if last {
            return Ok(Twist::plain(x0));
        }
        let y_cur = self
            .y_cur
            .as_ref()
            .ok_or_else(|| Error::Invalid("fps: step called before init".into()))?;
        let log_h = self.gaussian_fit(layout, x, y_cur, self.tau(cur))?;
        Ok(Twist {
            x0,
            log_h,
            carry: None,
        })
    }

    fn propose(
        &mut self,
        cx: &mut Context,
        layout: &Layout,
        x: &ArrayD<f32>,
        tw: &Twist,
        cur: Knot,
        nxt: Knot,
    ) -> Result<(ArrayD<f32>, Vec<f64>)> {
        let y_cur = self
            .y_cur
            .take()
            .ok_or_else(|| Error::Invalid("fps: step called before init".into()))?;
        let y_next = self.bridge(cx, layout.n, &y_cur, cur, nxt)?;
        let kern = AncestralKernel::between(cur, nxt);
        let mu = kern.mean(x, &tw.x0);
        let (sd, tau) = (kern.sd as f64, self.tau(nxt));
        let (x, log_z) = self.conditional(cx, layout, &mu, &y_next, sd, tau)?;
        // p h_{i+1} / q = Z, so log p - log q = log Z - log h_{i+1}(x_{i+1}).
        let logh_next = self.gaussian_fit(layout, &x, &y_next, tau)?;
        let inc = log_z.iter().zip(&logh_next).map(|(z, h)| z - h).collect();
        self.y_cur = Some(y_next);
        Ok((x, inc))
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
