//! DPM-Solver++(2M) (Lu et al., 2022): a second-order multistep solver of the
//! probability-flow ODE in `lambda = log(a/s)` with the data prediction `x0_hat`.
//!
//! From knot `(a, s)` to `(a', s')`, with `h = lambda' - lambda`:
//! `x' = (s'/s) x + a' (1 - e^{-h}) D`, where `D = x0_hat` on the first step and otherwise
//! `D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_prev`, `r = h_prev / h`. `e^{-h}` is computed as
//! `a s' / (s a')`, finite also where `a = 0` (rectified flow at `t = 1`); a previous step
//! from `a = 0` has `h_prev = inf` and falls back to first order. The last step (to the clean
//! point, `h = inf`) is first order, i.e. it returns `x0_hat` ("lower order final", as the
//! official code does for few steps).
//!
//! Grid: [`crate::prior::Schedule::knots_log_snr`], uniform in `lambda` (the official
//! "logSNR" spacing), which is the solver's natural variable: on the discrete VP path with
//! 10 steps it cuts the covariance error of the demo mixture from 0.63 (uniform in `t`) to
//! 0.13, with 25 steps from 0.064 to 0.020.

use ndarray::ArrayD;

use super::{knot_step, start, Context, Sampler, State};
use crate::error::Result;
use crate::prior::Knot;

/// DPM-Solver++(2M) with `steps` steps.
#[derive(Clone, Debug)]
pub struct DpmSolver2M {
    steps: usize,
    knots: Vec<Knot>,
    prev: Option<(ArrayD<f32>, f64)>,
    time_uniform: bool,
}

impl DpmSolver2M {
    pub fn new(steps: usize) -> DpmSolver2M {
        DpmSolver2M {
            steps: steps.max(1),
            knots: Vec::new(),
            prev: None,
            time_uniform: false,
        }
    }

    /// Uses the grid uniform in `t` ([`crate::prior::Schedule::knots`], the official
    /// "time_uniform" spacing) instead of the logSNR grid.
    pub fn time_uniform(mut self) -> Self {
        self.time_uniform = true;
        self
    }
}

impl Sampler for DpmSolver2M {
    fn name(&self) -> String {
        format!(
            "dpm++2m({} steps{})",
            self.steps,
            if self.time_uniform {
                ", time-uniform"
            } else {
                ""
            }
        )
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn init(&mut self, cx: &mut Context, n: usize) -> Result<State> {
        let sch = cx.denoiser().schedule();
        self.knots = if self.time_uniform {
            sch.knots(self.steps)
        } else {
            sch.knots_log_snr(self.steps)
        };
        self.prev = None;
        Ok(start(cx, &self.knots, n))
    }
    fn step(&mut self, cx: &mut Context, state: State) -> Result<State> {
        let (cur, nxt) = (self.knots[state.step], self.knots[state.step + 1]);
        let h = nxt.log_snr() - cur.log_snr();
        let prev = self.prev.take();
        let state = knot_step(cx, &self.knots, state, |_, cur, nxt, mut x, x0| {
            let e = cur.a * nxt.s / (cur.s * nxt.a); // e^{-h}
            let cxx = (nxt.s / cur.s) as f32;
            let cd = (nxt.a * (1.0 - e)) as f32;
            let d = match &prev {
                Some((x0p, hp)) if hp.is_finite() && h.is_finite() && *hp > 0.0 => {
                    let r = hp / h;
                    let (c1, c2) = ((1.0 + 0.5 / r) as f32, (0.5 / r) as f32);
                    let mut d = x0.mapv(|u| c1 * u);
                    d.zip_mut_with(x0p, |o, &p| *o -= c2 * p);
                    d
                }
                _ => x0.clone(),
            };
            x.mapv_inplace(|v| cxx * v);
            x.zip_mut_with(&d, |o, &dv| *o += cd * dv);
            Ok(x)
        })?;
        self.prev = state.x0_hat.clone().map(|x0| (x0, h));
        Ok(state)
    }
}
