//! TDS, twisted diffusion sampling (Wu et al., 2023): the Tweedie twist and the guided
//! ancestral proposal (see the parent module's docs for the weights).

use std::sync::Arc;

use ndarray::{ArrayD, Axis};

use super::{Layout, Proposal, SmcSettings, Twist};
use crate::error::Result;
use crate::prior::Knot;
use crate::sample::problem::Problem;
use crate::sample::{AncestralKernel, Context};

/// The TDS proposal for one problem.
pub(super) struct Tds {
    pub problem: Arc<Problem>,
    pub twist_scale: f64,
    pub clip: bool,
}

impl Tds {
    pub fn new(problem: Arc<Problem>, s: &SmcSettings) -> Tds {
        Tds {
            problem,
            twist_scale: s.twist_scale,
            clip: s.clip,
        }
    }

    /// The twist variance `sigma_y^2 + (twist_scale G r)^2` at a knot, `r^2 = s^2 / (a^2 +
    /// s^2)` and `G` the problem's norm guard.
    pub fn variance(&self, k: Knot) -> f64 {
        let sig2 = self.problem.sigma_y().powi(2);
        let r2 = k.s * k.s / (k.a * k.a + k.s * k.s);
        sig2 + (self.twist_scale * self.problem.norm_guard()).powi(2) * r2
    }
}

impl Proposal for Tds {
    fn start(
        &mut self,
        cx: &mut Context,
        layout: &Layout,
        knots: &[Knot],
    ) -> Result<(ArrayD<f32>, Vec<f64>)> {
        let first = knots[0];
        let shape = cx.denoiser().info().batch_shape(layout.rows());
        let x = cx.normal(&shape).mapv(|v| v * first.s as f32);
        Ok((x, vec![0.0; layout.rows()]))
    }

    fn twist(
        &mut self,
        cx: &mut Context,
        _layout: &Layout,
        x: &ArrayD<f32>,
        cur: Knot,
        last: bool,
    ) -> Result<Twist> {
        if last {
            let x0 = cx.x0(x.view(), cur.t)?;
            return Ok(Twist::plain(x0));
        }
        // One denoiser evaluation that keeps its forward pass for the twist's VJP.
        let (x0, pullback) = cx.x0_pullback(x.view(), cur.t)?;
        let (grad, sq) = self.problem.data_grad_batch(x0.view())?;
        let var = self.variance(cur);
        let log_h: Vec<f64> = sq.iter().map(|q| -q / (2.0 * var)).collect();
        // grad_x log h = J^T (-J_A^T (A x0 - y) / var), through the denoiser by the VJP.
        let v = grad.mapv(|g| -g / var as f32);
        let g = pullback(v.view())?;
        Ok(Twist {
            x0,
            log_h,
            carry: Some(g),
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
        let kern = AncestralKernel::between(cur, nxt);
        let (sd, c_x0) = (kern.sd, kern.c_x0);
        // The conditional Tweedie estimate x0 + (s^2 / a) grad log h, clipped to the prior's
        // range as the official code does; the proposal mean moves by c_x0 times its change.
        let lift = (cur.s * cur.s / cur.a) as f32;
        let (lo, hi) = layout.range;
        let mut d = tw.x0.clone();
        if let Some(g) = &tw.carry {
            ndarray::Zip::from(&mut d)
                .and(&tw.x0)
                .and(g)
                .for_each(|d, &x0, &g| {
                    let mut tw0 = x0 + lift * g;
                    if self.clip {
                        tw0 = tw0.clamp(lo, hi);
                    }
                    // A non-finite gradient leaves the particle unguided (its weight is
                    // already zero when its estimate is non-finite).
                    *d = if tw0.is_finite() {
                        c_x0 * (tw0 - x0)
                    } else {
                        0.0
                    };
                });
        } else {
            d.fill(0.0);
        }
        let mut out = kern.mean(x, &tw.x0);
        let z = cx.normal(out.shape());
        ndarray::Zip::from(&mut out)
            .and(&d)
            .and(&z)
            .for_each(|o, &d, &z| *o += d + sd * z);
        // log p - log q for q = N(m_p + d, sd^2), p = N(m_p, sd^2), x' = m_p + d + sd z:
        // -z.d / sd - |d|^2 / (2 sd^2) per particle.
        let sd = sd as f64;
        let inc = d
            .axis_iter(Axis(0))
            .zip(z.axis_iter(Axis(0)))
            .map(|(dr, zr)| {
                let (mut zd, mut dd) = (0.0f64, 0.0f64);
                for (&di, &zi) in dr.iter().zip(zr.iter()) {
                    zd += di as f64 * zi as f64;
                    dd += di as f64 * di as f64;
                }
                -zd / sd - dd / (2.0 * sd * sd)
            })
            .collect();
        Ok((out, inc))
    }
}
