//! DDIM (Song et al., 2021) on any path.
//!
//! From knot `(a, s)` to the next `(a', s')` with `x0_hat` and `eps_hat = (x - a x0_hat)/s`:
//! `x' = a' x0_hat + sqrt(s'^2 - sigma^2) eps_hat + sigma z`, where
//! `sigma = eta s' sqrt(1 - (a s' / (a' s))^2)` is `eta` times the standard deviation of the
//! exact posterior `q(x' | x, x0)` (for VP exactly DDIM's `sigma_t(eta)`). `eta = 0` is the
//! deterministic DDIM, `eta = 1` the ancestral (DDPM) sampler. The step to the clean point
//! returns `x0_hat`.

use ndarray::ArrayD;

use super::{eps_from_x0, knot_step, start, Context, Sampler, State};
use crate::error::{Error, Result};
use crate::prior::Knot;

/// One DDIM update between two knots (see the module docs), shared by every sampler that
/// takes a DDIM step with its own `x0` (DDIM itself, DPS's DDIM variant, DDS with the
/// data-consistent `x0'`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdimStep {
    /// `a'`, the next knot's signal coefficient.
    pub a_next: f32,
    /// `sqrt(s'^2 - sigma^2)`, the weight of the predicted noise.
    pub keep: f32,
    /// `sigma`, the standard deviation of the fresh noise.
    pub sigma: f32,
}

impl DdimStep {
    /// The step from knot `cur` to the less noisy knot `nxt` with stochasticity `eta`.
    pub fn between(cur: Knot, nxt: Knot, eta: f64) -> DdimStep {
        let ratio = cur.a * nxt.s / (nxt.a * cur.s);
        let sigma = eta * nxt.s * (1.0 - ratio * ratio).max(0.0).sqrt();
        DdimStep {
            a_next: nxt.a as f32,
            keep: (nxt.s * nxt.s - sigma * sigma).max(0.0).sqrt() as f32,
            sigma: sigma as f32,
        }
    }
    /// `a' x0 + keep eps + noise_scale sigma z` (`z` standard normal, needed when
    /// `sigma > 0`; `noise_scale` is 1 except in tests that break the sampler on purpose).
    pub fn apply(
        &self,
        x0: &ArrayD<f32>,
        eps: &ArrayD<f32>,
        z: Option<&ArrayD<f32>>,
        noise_scale: f32,
    ) -> ArrayD<f32> {
        let mut x = x0.mapv(|v| self.a_next * v);
        x.zip_mut_with(eps, |x, &e| *x += self.keep * e);
        if let Some(z) = z {
            let sg = self.sigma * noise_scale;
            x.zip_mut_with(z, |x, &z| *x += sg * z);
        }
        x
    }
}

/// DDIM with `steps` steps and stochasticity `eta` in `[0, 1]`.
#[derive(Clone, Debug)]
pub struct Ddim {
    steps: usize,
    eta: f64,
    /// Multiplies the fresh noise: 1 for DDIM. Tests set it to demonstrate that the
    /// statistical harness catches a wrong noise scale.
    pub noise_scale: f64,
    knots: Vec<Knot>,
}

impl Ddim {
    /// Fails unless `0 <= eta <= 1`.
    pub fn new(steps: usize, eta: f64) -> Result<Ddim> {
        if !(eta.is_finite() && (0.0..=1.0).contains(&eta)) {
            return Err(Error::Invalid(format!(
                "ddim: eta must lie in [0, 1], got {eta}"
            )));
        }
        Ok(Ddim {
            steps: steps.max(1),
            eta,
            noise_scale: 1.0,
            knots: Vec::new(),
        })
    }
}

impl Sampler for Ddim {
    fn name(&self) -> String {
        format!("ddim({} steps, eta={})", self.steps, self.eta)
    }
    fn steps(&self) -> usize {
        self.steps
    }
    fn init(&mut self, cx: &mut Context, n: usize) -> Result<State> {
        self.knots = cx.denoiser().schedule().knots(self.steps);
        Ok(start(cx, &self.knots, n))
    }
    fn step(&mut self, cx: &mut Context, state: State) -> Result<State> {
        knot_step(cx, &self.knots, state, |cx, cur, nxt, x, x0| {
            let eps = eps_from_x0(&x, x0, &cur);
            let step = DdimStep::between(cur, nxt, self.eta);
            let z = (step.sigma > 0.0).then(|| cx.normal(x.shape()));
            Ok(step.apply(x0, &eps, z.as_ref(), self.noise_scale as f32))
        })
    }
}
