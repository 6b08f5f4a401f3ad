//! The probability-flow ODE `dx/dt = E[a'(t) x0 + s'(t) eps | x_t] = a' x0_hat + s' eps_hat`
//! (`eps_hat = (x - a x0_hat) / s`), integrated in `t` on the path's own grid: for rectified
//! flow this is the learned velocity `eps_hat - x0_hat`. [`Euler`] is first order (one
//! evaluation per step), [`Heun`] second order (EDM's Heun: two evaluations per step, the last
//! step an Euler step). The step to the clean point returns `x0_hat` (for rectified flow this
//! equals the Euler step `x - t v`).

use ndarray::ArrayD;

use super::{eps_from_x0, start, Context, Sampler, State};
use crate::error::Result;
use crate::prior::Knot;

/// The ODE velocity at `k` given `x` and `x0_hat`.
fn velocity(cx: &Context, k: &Knot, x: &ArrayD<f32>, x0: &ArrayD<f32>) -> ArrayD<f32> {
    let (da, ds) = cx.denoiser().schedule().derivs(k.t);
    let eps = eps_from_x0(x, x0, k);
    let (da, ds) = (da as f32, ds as f32);
    let mut v = x0.mapv(|u| da * u);
    v.zip_mut_with(&eps, |o, &e| *o += ds * e);
    v
}

/// Euler steps on the probability-flow ODE.
#[derive(Clone, Debug)]
pub struct Euler {
    steps: usize,
    knots: Vec<Knot>,
}

impl Euler {
    pub fn new(steps: usize) -> Euler {
        Euler {
            steps: steps.max(1),
            knots: Vec::new(),
        }
    }
}

impl Sampler for Euler {
    fn name(&self) -> String {
        format!("euler({} steps)", self.steps)
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn init(&mut self, cx: &mut Context, n: usize) -> Result<State> {
        self.knots = cx.denoiser().schedule().knots(self.steps);
        Ok(start(cx, &self.knots, n))
    }
    fn step(&mut self, cx: &mut Context, mut state: State) -> Result<State> {
        let (cur, nxt) = (self.knots[state.step], self.knots[state.step + 1]);
        let x0 = cx.x0(state.x.view(), cur.t)?;
        if nxt.is_clean() {
            state.x = x0.clone();
        } else {
            let v = velocity(cx, &cur, &state.x, &x0);
            let h = (nxt.t - cur.t) as f32;
            state.x.zip_mut_with(&v, |x, &v| *x += h * v);
        }
        state.x0_hat = Some(x0);
        state.step += 1;
        state.t = nxt.t;
        Ok(state)
    }
}

/// Heun's method (explicit trapezoid) on the probability-flow ODE.
#[derive(Clone, Debug)]
pub struct Heun {
    steps: usize,
    knots: Vec<Knot>,
}

impl Heun {
    pub fn new(steps: usize) -> Heun {
        Heun {
            steps: steps.max(1),
            knots: Vec::new(),
        }
    }
}

impl Sampler for Heun {
    fn name(&self) -> String {
        format!("heun({} steps)", self.steps)
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn init(&mut self, cx: &mut Context, n: usize) -> Result<State> {
        self.knots = cx.denoiser().schedule().knots(self.steps);
        Ok(start(cx, &self.knots, n))
    }
    fn step(&mut self, cx: &mut Context, mut state: State) -> Result<State> {
        let (cur, nxt) = (self.knots[state.step], self.knots[state.step + 1]);
        let x0 = cx.x0(state.x.view(), cur.t)?;
        if nxt.is_clean() {
            state.x = x0.clone();
        } else {
            let v1 = velocity(cx, &cur, &state.x, &x0);
            let h = (nxt.t - cur.t) as f32;
            let mut xp = state.x.clone();
            xp.zip_mut_with(&v1, |x, &v| *x += h * v);
            let x0p = cx.x0(xp.view(), nxt.t)?;
            let v2 = velocity(cx, &nxt, &xp, &x0p);
            state.x.zip_mut_with(&v1, |x, &v| *x += 0.5 * h * v);
            state.x.zip_mut_with(&v2, |x, &v| *x += 0.5 * h * v);
        }
        state.x0_hat = Some(x0);
        state.step += 1;
        state.t = nxt.t;
        Ok(state)
    }
}
