//! DPS, diffusion posterior sampling (Chung et al., ICLR 2023).
//!
//! Each step from knot `(a, s)` at time `t` to the next knot:
//! 1. `x0_hat = x0_hat(x_t)` (Tweedie, through the denoiser);
//! 2. the guidance `g = grad_{x_t} ||y - A(x0_hat(x_t))||_2`, the gradient of the
//!    UNSQUARED residual norm through the denoiser's Jacobian, per sample:
//!    `g = J_x0^T J_A^T (A(x0_hat) - y) / ||y - A(x0_hat)||` (one VJP through the denoiser,
//!    one through `A`, which for a linear `A` is its adjoint);
//! 3. `x'` = the unconditional step to the next knot with `x0_hat`: ancestral
//!    ([`AncestralKernel`], DDPM, the paper's sampler) or DDIM ([`DdimStep`] with `eta`);
//! 4. `x_next = x' - zeta g`.
//!
//! Decisions where the paper is silent or where this toolkit's conventions differ:
//! - The residual norm is per sample: a batch of `N` is `N` independent posterior samples
//!   sharing the measurement (the official code takes one norm over the whole batch, which
//!   couples the samples and shrinks each one's step by about `sqrt(N)`).
//! - Where a residual is exactly zero (a noise-free measurement matched exactly) the guidance
//!   is zero rather than undefined.
//! - The last step, to the clean knot, returns `x0_hat - zeta g` (the official sampler also
//!   applies the guidance after its last, noise-free step).
//! - `sigma_y` is not used: as in the official code, the noise level is absorbed into `zeta`
//!   (the official defaults, [`default_zeta`], were tuned for images in `[-1, 1]` with
//!   `sigma_y = 0.05`).
//! - The guidance is divided by `max(1, ||A||)` ([`guidance_gain`]; `||A||` by power
//!   iteration, linear operators only). The official step sizes were tuned on operators of
//!   norm at most 1 (masks, blurs, averaging downsamplers: unchanged here); the guidance
//!   scales with `||A||`, so on CT line integrals (norm ~100 in prior units) the official
//!   `zeta` threw the iterate far off and the run diverged (PSNR below 0 dB on every CT suite).
//! - Cost: the cotangent depends on `x0_hat`, so each step takes the denoiser's
//!   [`crate::prior::Pullback`] (the network keeps its forward pass and runs the backward
//!   pass on it): **NFE = steps, VJPs = steps** as counted by the [`Context`].
//! - The time grid is [`crate::prior::Schedule::knots`]: any step count, on the denoiser's own
//!   path (the paper: VP, 1000 ancestral steps).
//!
//! Nonlinear forward models (phase retrieval, Beer-Lambert CT) work through their VJP.

use std::sync::Arc;

use ndarray::{ArrayD, Axis};

use super::{eps_from_x0, start, AncestralKernel, Context, DdimStep, Problem, Sampler, State};
use crate::error::{Error, Result};
use crate::prior::Knot;

/// The step DPS takes before its guidance correction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DpsUpdate {
    /// The ancestral (DDPM) step, as in the paper.
    Ancestral,
    /// A DDIM step with stochasticity `eta` in `[0, 1]`.
    Ddim { eta: f64 },
}

/// DPS settings. `Default` is the paper's: 1000 ancestral steps, `zeta = 0.3` (the official
/// value for super-resolution and deblurring; see [`default_zeta`] for other tasks).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpsSettings {
    /// Steps (denoiser knots), at least 1.
    pub steps: usize,
    /// The guidance step size `zeta >= 0` (constant over the run).
    pub zeta: f64,
    /// The unconditional step.
    pub update: DpsUpdate,
}

impl Default for DpsSettings {
    fn default() -> Self {
        DpsSettings {
            steps: 1000,
            zeta: default_zeta("sr"),
            update: DpsUpdate::Ancestral,
        }
    }
}

impl DpsSettings {
    /// The defaults with the official `zeta` for the task family (see [`default_zeta`]).
    pub fn for_task(family: &str) -> DpsSettings {
        DpsSettings {
            zeta: default_zeta(family),
            ..DpsSettings::default()
        }
    }
}

impl DpsSettings {
    /// Checks `steps >= 1`, `zeta` finite and `>= 0`, DDIM `eta` in `[0, 1]`.
    pub fn check(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::Invalid(
                "dps: the number of steps must be at least 1".into(),
            ));
        }
        if !(self.zeta.is_finite() && self.zeta >= 0.0) {
            return Err(Error::Invalid(format!(
                "dps: the step size zeta must be a finite number >= 0, got {}",
                self.zeta
            )));
        }
        if let DpsUpdate::Ddim { eta } = self.update {
            if !(eta.is_finite() && (0.0..=1.0).contains(&eta)) {
                return Err(Error::Invalid(format!(
                    "dps: the DDIM eta must lie in [0, 1], got {eta}"
                )));
            }
        }
        Ok(())
    }
}

/// The official DPS step size `zeta` for a task family, named as in the operator specs
/// (`blur`, `sr`, `inpaint`, `phase`; a full spec such as `blur:kernel=gaussian` is
/// accepted, the part before `:` counts): 0.3 for super-resolution (x4) and deblurring, 0.5
/// for inpainting, 1.0 for phase retrieval. They refer to images in `[-1, 1]` measured with
/// `sigma_y = 0.05`. Families without an official value (MRI, CT, anything else) get 1.0, a
/// starting point to tune rather than a calibrated value.
pub fn default_zeta(family: &str) -> f64 {
    let family = family.split(':').next().unwrap_or("").trim().to_lowercase();
    match family.as_str() {
        "sr" | "super-resolution" | "superresolution" | "blur" | "deblur" | "deblurring" => 0.3,
        "inpaint" | "inpainting" => 0.5,
        "phase" | "phase-retrieval" | "phase_retrieval" => 1.0,
        _ => 1.0,
    }
}

/// What one guidance evaluation gives, per sample of the batch.
#[derive(Clone, Debug)]
pub struct Guidance {
    /// `x0_hat(x_t)`, `(N, ...sample_shape)`.
    pub x0: ArrayD<f32>,
    /// `grad_{x_t} ||y - A(x0_hat(x_t))||_2`, `(N, ...sample_shape)`.
    pub grad: ArrayD<f32>,
    /// `||y - A(x0_hat)||_2`, one per sample.
    pub residual_norms: Vec<f64>,
}

/// The DPS guidance at `x` (a batch on the denoiser's path at time `t`): one denoiser
/// evaluation that keeps its forward pass, and the VJP through it (see the module docs).
pub fn guidance(cx: &mut Context, problem: &Problem, x: &ArrayD<f32>, t: f64) -> Result<Guidance> {
    let (x0, pullback) = cx.x0_pullback(x.view(), t)?;
    // J_A^T (A(x0) - y) and ||y - A(x0)||^2 per sample.
    let (mut v, sq) = problem.data_grad_batch(x0.view())?;
    let mut norms = Vec::with_capacity(sq.len());
    for (mut vi, &sqi) in v.axis_iter_mut(Axis(0)).zip(&sq) {
        let n = sqi.sqrt();
        norms.push(n);
        let inv = if n > 0.0 { (1.0 / n) as f32 } else { 0.0 };
        vi.mapv_inplace(|u| u * inv);
    }
    let grad = pullback(v.view())?;
    Ok(Guidance {
        x0,
        grad,
        residual_norms: norms,
    })
}

/// The knots a step goes between, `(knots[step], knots[step + 1])`, or an error when the
/// sampler was not initialised for that many steps (a caller driving [`Sampler::step`] by
/// hand past the end or before [`Sampler::init`]). Shared by DPS, RED-diff and DDS.
pub(crate) fn knot_pair(knots: &[Knot], step: usize, who: &str) -> Result<(Knot, Knot)> {
    match (knots.get(step), knots.get(step + 1)) {
        (Some(a), Some(b)) => Ok((*a, *b)),
        _ => Err(Error::Invalid(format!(
            "{who}: step {step} requested, but the sampler was initialised for {} steps; call init first and step at most that many times",
            knots.len().saturating_sub(1)
        ))),
    }
}

/// The DPS sampler (see the module docs).
pub struct Dps {
    problem: Arc<Problem>,
    settings: DpsSettings,
    knots: Vec<Knot>,
    /// [`guidance_gain`] of the problem, set by `init`.
    gain: f64,
}

/// The factor DPS multiplies its guidance by: `1 / max(1, ||A||)` for a linear operator
/// (`||A||` from 30 power iterations, seeded: deterministic), 1 for a nonlinear one. See the
/// module docs for why.
pub fn guidance_gain(problem: &Problem) -> f64 {
    1.0 / problem.norm_guard()
}

impl Dps {
    /// Checks the settings: `steps >= 1`, `zeta` finite and `>= 0`, DDIM `eta` in `[0, 1]`.
    /// The problem is checked against the prior in [`Sampler::init`].
    pub fn new(problem: Arc<Problem>, settings: DpsSettings) -> Result<Dps> {
        settings.check()?;
        Ok(Dps {
            problem,
            settings,
            knots: Vec::new(),
            gain: 1.0,
        })
    }
    /// The settings.
    pub fn settings(&self) -> &DpsSettings {
        &self.settings
    }
}

impl Sampler for Dps {
    fn name(&self) -> String {
        let update = match self.settings.update {
            DpsUpdate::Ancestral => "ancestral".to_string(),
            DpsUpdate::Ddim { eta } => format!("ddim eta={eta}"),
        };
        format!(
            "dps({} steps, {update}, zeta={})",
            self.settings.steps, self.settings.zeta
        )
    }
    fn steps(&self) -> usize {
        self.settings.steps
    }
    fn init(&mut self, cx: &mut Context, n: usize) -> Result<State> {
        self.problem.check_prior(cx.denoiser().info())?;
        self.knots = cx.denoiser().schedule().knots(self.settings.steps);
        self.gain = guidance_gain(&self.problem);
        Ok(start(cx, &self.knots, n))
    }
    fn step(&mut self, cx: &mut Context, mut state: State) -> Result<State> {
        let (cur, nxt) = knot_pair(&self.knots, state.step, "dps")?;
        let x = std::mem::take(&mut state.x);
        let g = guidance(cx, &self.problem, &x, cur.t)?;
        let mut next = if nxt.is_clean() {
            g.x0.clone()
        } else {
            match self.settings.update {
                DpsUpdate::Ancestral => AncestralKernel::between(cur, nxt).sample(cx, &x, &g.x0),
                DpsUpdate::Ddim { eta } => {
                    let eps = eps_from_x0(&x, &g.x0, &cur);
                    let step = DdimStep::between(cur, nxt, eta);
                    let z = (step.sigma > 0.0).then(|| cx.normal(x.shape()));
                    step.apply(&g.x0, &eps, z.as_ref(), 1.0)
                }
            }
        };
        let zeta = (self.settings.zeta * self.gain) as f32;
        next.zip_mut_with(&g.grad, |o, &gi| *o -= zeta * gi);
        state.x = next;
        state.x0_hat = Some(g.x0);
        state.step += 1;
        state.t = nxt.t;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prior::{Denoiser, DenseOperator, Gmm};
    use crate::sample::Executor;
    use ndarray::IxDyn;
    use posterior_operators::linear::random_array;
    use posterior_operators::Operator;

    /// A 3-component mixture in 4 dimensions, a 2 x 4 measurement, and the problem.
    fn setup() -> (Gmm, DenseOperator, Arc<Problem>) {
        let gmm = Gmm::random(3, 4, 7, false).unwrap();
        let a = random_array(&[8], 3, "a").iter().map(|v| v * 0.5).collect();
        let op = DenseOperator::new(2, 4, a).unwrap();
        let y = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.7, -0.4]).unwrap();
        let p = Problem::new(Operator::Linear(Box::new(op.clone())), y, 0.05).unwrap();
        (gmm, op, Arc::new(p))
    }

    /// `||y - A x0_hat(x)||` for one sample, in f64, through the exact mixture denoiser.
    fn objective(gmm: &Gmm, op: &DenseOperator, y: &[f32], x: &[f64], t: f64) -> f64 {
        let xa =
            ArrayD::from_shape_vec(IxDyn(&[1, 4]), x.iter().map(|v| *v as f32).collect()).unwrap();
        let x0 = gmm.x0(xa.view(), &[t as f32]).unwrap();
        let a = op.entries();
        (0..2)
            .map(|i| {
                let ax: f64 = (0..4)
                    .map(|j| a[i * 4 + j] as f64 * x0[[0, j]] as f64)
                    .sum();
                (y[i] as f64 - ax).powi(2)
            })
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn the_guidance_is_the_gradient_of_the_residual_norm_through_the_denoiser() {
        // Reference: central differences (h = 1e-2) of ||y - A x0_hat(x)|| with the exact
        // mixture denoiser. f32 rounding (~1e-7 relative) over 2h gives ~1e-5; truncation is
        // O(h^2) times the third derivative (errors seen: 4e-6 to 1.4e-4); 0.2% relative
        // agreement leaves room for both. The same check must reject the gradient that skips
        // the denoiser's Jacobian (`A^T r / ||r||`), off by 150% to 530% here.
        let (gmm, op, p) = setup();
        let y: Vec<f32> = p.y().iter().copied().collect();
        let t = 0.5;
        let x = random_array(&[3, 4], 11, "x");
        let mut cx = Context::new(&gmm, 0);
        let g = guidance(&mut cx, &p, &x, t).unwrap();
        assert_eq!((cx.nfe(), cx.vjps()), (1, 1));
        let (no_jac, _) = p.data_grad_batch(g.x0.view()).unwrap();
        for i in 0..3 {
            let xi: Vec<f64> = (0..4).map(|j| x[[i, j]] as f64).collect();
            let h = 1e-2;
            let fd: Vec<f64> = (0..4)
                .map(|j| {
                    let (mut up, mut dn) = (xi.clone(), xi.clone());
                    up[j] += h;
                    dn[j] -= h;
                    (objective(&gmm, &op, &y, &up, t) - objective(&gmm, &op, &y, &dn, t))
                        / (2.0 * h)
                })
                .collect();
            let norm = fd.iter().map(|v| v * v).sum::<f64>().sqrt();
            let err = |g: &dyn Fn(usize) -> f64| {
                (0..4).map(|j| (g(j) - fd[j]).powi(2)).sum::<f64>().sqrt() / norm
            };
            let ours = err(&|j| g.grad[[i, j]] as f64);
            eprintln!("sample {i}: guidance error {ours:.2e}");
            assert!(ours < 2e-3, "sample {i}: relative error {ours:.4}");
            let r = g.residual_norms[i];
            assert!((r - objective(&gmm, &op, &y, &xi, t)).abs() < 1e-4 * r.max(1.0));
            let broken = err(&|j| no_jac[[i, j]] as f64 / r);
            eprintln!("sample {i}: without the Jacobian {broken:.2e}");
            assert!(broken > 0.1, "the check cannot tell: {broken:.4}");
        }
    }

    #[test]
    fn the_guidance_does_not_grow_with_the_operator_norm() {
        // A = c M with y = c y_M is the same problem as (M, y_M) for any c > 0; with the gain
        // 1 / max(1, ||A||) DPS returns the same samples for c = 1 and c = 100 (M = the
        // first two coordinates, norm 1: the power iteration finds 100 for 100 M to ~1e-6,
        // so the runs agree to f32 rounding; tolerance 1e-4). Without the gain the c = 100
        // run takes 100x larger guidance steps: its samples differ by orders more.
        let gmm = Gmm::random(3, 4, 7, false).unwrap();
        let run = |c: f32| {
            let a = vec![c, 0.0, 0.0, 0.0, 0.0, c, 0.0, 0.0];
            let op = DenseOperator::new(2, 4, a).unwrap();
            let y = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.7 * c, -0.4 * c]).unwrap();
            let p = Arc::new(Problem::new(Operator::Linear(Box::new(op)), y, 0.05).unwrap());
            assert!((guidance_gain(&p) - 1.0 / c.max(1.0) as f64).abs() < 1e-5);
            let settings = DpsSettings {
                steps: 20,
                zeta: 0.3,
                update: DpsUpdate::Ddim { eta: 0.0 },
            };
            let mut dps = Dps::new(p, settings).unwrap();
            Executor::new(3).run(&mut dps, &gmm, 4).unwrap().samples
        };
        let (one, hundred) = (run(1.0), run(100.0));
        let diff = one
            .iter()
            .zip(hundred.iter())
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-4, "samples differ by {diff}");
    }

    #[test]
    fn a_zero_residual_gives_zero_guidance() {
        let gmm = Gmm::random(1, 2, 1, false).unwrap();
        let op = Operator::Linear(Box::new(DenseOperator::new(1, 2, vec![0.0, 0.0]).unwrap()));
        let p = Problem::new(op, ArrayD::zeros(IxDyn(&[1])), 0.0).unwrap();
        let mut cx = Context::new(&gmm, 0);
        let x = random_array(&[2, 2], 1, "x");
        let g = guidance(&mut cx, &p, &x, 0.3).unwrap();
        assert!(g.grad.iter().all(|v| *v == 0.0));
        assert_eq!(g.residual_norms, vec![0.0, 0.0]);
    }

    #[test]
    fn counts_reproducibility_and_step_variants() {
        // NFE = steps, VJPs = steps (module docs); the same seed gives identical samples,
        // another seed different ones; DDIM with eta = 1 equals the ancestral step in law but
        // draws the same noise in a different order only where sigma > 0, so it is only
        // checked to run and count the same.
        let (gmm, _, p) = setup();
        for update in [DpsUpdate::Ancestral, DpsUpdate::Ddim { eta: 0.0 }] {
            let settings = DpsSettings {
                steps: 7,
                zeta: 0.1,
                update,
            };
            let mut s = Dps::new(p.clone(), settings).unwrap();
            let a = Executor::new(3).run(&mut s, &gmm, 5).unwrap();
            assert_eq!((a.nfe, a.vjps, a.steps), (7, 7, 7));
            let b = Executor::new(3).run(&mut s, &gmm, 5).unwrap();
            assert_eq!(a.samples, b.samples);
            let c = Executor::new(4).run(&mut s, &gmm, 5).unwrap();
            assert_ne!(a.samples, c.samples);
            assert_eq!(a.samples.shape(), &[5, 4]);
        }
    }

    #[test]
    fn bad_settings_and_mismatched_priors_are_errors() {
        let (_, _, p) = setup();
        let base = DpsSettings::default();
        for (s, what) in [
            (DpsSettings { steps: 0, ..base }, "steps"),
            (DpsSettings { zeta: -1.0, ..base }, "zeta"),
            (
                DpsSettings {
                    zeta: f64::NAN,
                    ..base
                },
                "zeta",
            ),
            (
                DpsSettings {
                    update: DpsUpdate::Ddim { eta: 1.5 },
                    ..base
                },
                "eta",
            ),
        ] {
            let msg = Dps::new(p.clone(), s).err().unwrap().to_string();
            assert!(msg.contains(what), "{msg}");
        }
        let wrong = Gmm::random(1, 3, 0, false).unwrap();
        let mut s = Dps::new(p, base).unwrap();
        let msg = Executor::new(0)
            .run(&mut s, &wrong, 2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("[4]") && msg.contains("[3]"), "{msg}");
    }

    #[test]
    fn stepping_without_init_is_an_error_not_a_panic() {
        let (gmm, _, p) = setup();
        let mut cx = Context::new(&gmm, 0);
        let state = State {
            x: ArrayD::zeros(IxDyn(&[1, 4])),
            x0_hat: None,
            step: 0,
            total: 3,
            t: 1.0,
        };
        let mut s = Dps::new(p.clone(), DpsSettings::default()).unwrap();
        let msg = s.step(&mut cx, state.clone()).unwrap_err().to_string();
        assert!(msg.contains("init"), "{msg}");
        let mut r = crate::sample::RedDiff::new(p.clone(), Default::default()).unwrap();
        assert!(r.step(&mut cx, state.clone()).is_err());
        let mut d = crate::sample::Dds::new(p, Default::default()).unwrap();
        assert!(d.step(&mut cx, state).is_err());
    }

    #[test]
    fn official_step_sizes_per_task() {
        assert_eq!(default_zeta("sr"), 0.3);
        assert_eq!(default_zeta("blur:kernel=gaussian,sigma=3"), 0.3);
        assert_eq!(default_zeta("inpaint"), 0.5);
        assert_eq!(default_zeta("Phase"), 1.0);
        assert_eq!(default_zeta("mri"), 1.0);
        assert_eq!(DpsSettings::for_task("inpaint").zeta, 0.5);
        assert_eq!(DpsSettings::default().steps, 1000);
    }
}
