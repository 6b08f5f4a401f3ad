//! DDPM ancestral sampling (Ho et al., 2020) on any path.
//!
//! From knot `(a, s)` to the next `(a', s')`: the forward kernel between them is
//! `x = r x' + sqrt(v) n` with `r = a / a'`, `v = s^2 - r^2 s'^2`, so the exact posterior
//! `q(x' | x, x0)` is Gaussian with precision `1/s'^2 + r^2/v` and mean
//! `var (a' x0 / s'^2 + r x / v)`. The sampler draws from it with `x0 = x0_hat` (the
//! "posterior variance" choice `beta_tilde` of DDPM; with the T = 1000 VP grid it is exactly
//! the original sampler). The step to the clean point returns `x0_hat`.

use ndarray::ArrayD;

use super::{knot_step, start, Context, Sampler, State};
use crate::error::Result;
use crate::prior::Knot;

/// The Gaussian `q(x' | x, x0) = N(c_x0 x0 + c_x x, sd^2 I)` between two noisy knots (see
/// the module docs): the ancestral step, shared by every sampler that takes one (DDPM, DPS,
/// the SMC proposals, whose log-densities need `sd`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AncestralKernel {
    pub c_x0: f32,
    pub c_x: f32,
    pub sd: f32,
}

impl AncestralKernel {
    /// The kernel from knot `cur` to the less noisy knot `nxt` (both with `s > 0`).
    pub fn between(cur: Knot, nxt: Knot) -> AncestralKernel {
        let r = cur.a / nxt.a;
        let v = (cur.s * cur.s - r * r * nxt.s * nxt.s).max(1e-300);
        let var = 1.0 / (1.0 / (nxt.s * nxt.s) + r * r / v);
        AncestralKernel {
            c_x0: (var * nxt.a / (nxt.s * nxt.s)) as f32,
            c_x: (var * r / v) as f32,
            sd: var.sqrt() as f32,
        }
    }
    /// A draw from the kernel: `c_x0 x0 + c_x x + sd z` with `z` standard normal from `cx`.
    pub fn sample(&self, cx: &mut Context, x: &ArrayD<f32>, x0: &ArrayD<f32>) -> ArrayD<f32> {
        let z = cx.normal(x.shape());
        let mut m = self.mean(x, x0);
        m.zip_mut_with(&z, |o, &zi| *o += self.sd * zi);
        m
    }
    /// The kernel's mean `c_x0 x0 + c_x x`.
    pub fn mean(&self, x: &ArrayD<f32>, x0: &ArrayD<f32>) -> ArrayD<f32> {
        let mut m = x0.mapv(|u| self.c_x0 * u);
        m.zip_mut_with(x, |o, &xi| *o += self.c_x * xi);
        m
    }
}

/// Ancestral sampling with `steps` steps.
#[derive(Clone, Debug)]
pub struct Ddpm {
    steps: usize,
    knots: Vec<Knot>,
}

impl Ddpm {
    pub fn new(steps: usize) -> Ddpm {
        Ddpm {
            steps: steps.max(1),
            knots: Vec::new(),
        }
    }
}

impl Sampler for Ddpm {
    fn name(&self) -> String {
        format!("ddpm({} steps)", self.steps)
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn init(&mut self, cx: &mut Context, n: usize) -> Result<State> {
        self.knots = cx.denoiser().schedule().knots(self.steps);
        Ok(start(cx, &self.knots, n))
    }
    fn step(&mut self, cx: &mut Context, state: State) -> Result<State> {
        knot_step(cx, &self.knots, state, |cx, cur, nxt, xt, x0| {
            Ok(AncestralKernel::between(cur, nxt).sample(cx, &xt, x0))
        })
    }
}
