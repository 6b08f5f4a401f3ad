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
//! of measured values (entries of `y` the operator actually measures: the zeros a mask or an
//! undersampled k-space operator keeps in place of missing data do not count, as in the
//! official code, whose inpainting operator returns only the kept pixels; counted once with
//! [`posterior_operators::Operator::restrict_to_measured`]), `d` the number of values in
//! one sample, and the SNR weighting
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

use super::dps::knot_pair;
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
    /// The number of measured entries of `y` (see the module docs).
    measured: usize,
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
            measured: 1,
        })
    }
    /// The settings.
    pub fn settings(&self) -> &RedDiffSettings {
        &self.settings
    }

    /// The stochastic gradient of the loss at `mu` (a batch) and knot `knot`, with one draw
    /// of `eps`, and the denoiser's `x0_hat(x_t)` (see the module docs).
    fn gradient(
        &self,
        cx: &mut Context,
        mu: &ArrayD<f32>,
        knot: &Knot,
    ) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
        let (a, s) = (knot.a as f32, knot.s as f32);
        let eps = cx.normal(mu.shape());
        let mut xt = mu.mapv(|m| a * m);
        xt.zip_mut_with(&eps, |x, &e| *x += s * e);
        let x0 = cx.x0(xt.view(), knot.t)?;
        let eps_hat = eps_from_x0(&xt, &x0, knot);
        let d: usize = mu.shape()[1..].iter().product();
        let mut g = regulariser_gradient(knot, &eps_hat, &eps, self.settings.lambda, d);
        let (data, _) = self.problem.data_grad_batch(mu.view())?;
        let m = self.measured.max(1) as f32;
        g.zip_mut_with(&data, |g, &gd| *g += gd / m);
        Ok((g, x0))
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
        let mut ones = ArrayD::from_elem(self.problem.y().raw_dim(), 1.0f32);
        self.problem
            .operator()
            .restrict_to_measured(ones.view_mut());
        self.measured = ones.iter().filter(|v| **v != 0.0).count();
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
        let (knot, next) = knot_pair(&self.knots, state.step, "reddiff")?;
        let (g, x0) = self.gradient(cx, &state.x, &knot)?;
        let adam = self
            .adam
            .as_mut()
            .ok_or_else(|| Error::Invalid("reddiff: step called before init".into()))?;
        adam.step(&mut state.x, &g);
        state.x0_hat = Some(x0);
        state.step += 1;
        state.t = next.t;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prior::{Covariance, DenseOperator, Gmm, Schedule};
    use crate::sample::Executor;
    use ndarray::IxDyn;
    use posterior_operators::linear::Identity;
    use posterior_operators::Operator;

    const A: [f32; 6] = [1.0, 0.5, -0.3, 0.2, -1.0, 0.8];

    fn problem() -> Arc<Problem> {
        let op = DenseOperator::new(2, 3, A.to_vec()).unwrap();
        let y = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.6, -0.2]).unwrap();
        Arc::new(Problem::new(Operator::Linear(Box::new(op)), y, 0.05).unwrap())
    }

    #[test]
    fn the_expected_gradient_matches_the_gaussian_closed_form() {
        // For a Gaussian prior N(m, diag(c)), x0_hat is linear and
        // E_eps[eps_hat - eps] = a s (mu - m) / (a^2 c + s^2), so the expected gradient is
        // A^T (A mu - y) / m + lambda / d * s^2 (mu - m) / (a^2 c + s^2) per coordinate, and
        // its per-draw noise has standard deviation lambda / d * (s / a) * a^2 c / (a^2 c + s^2).
        // 20000 draws: the mean must lie within 5 standard errors of the closed form (plus
        // 1e-6 for f32 sums), and more than 5 standard errors from the closed form with the
        // inverted weighting w = a / s (a broken variant).
        let (m, c) = ([0.5, -1.0, 0.2], [0.3, 0.8, 0.1]);
        let gmm = Gmm::new(
            vec![1.0],
            vec![m.to_vec()],
            vec![Covariance::Diagonal(c.to_vec())],
        )
        .unwrap();
        let p = problem();
        let settings = RedDiffSettings {
            lambda: 3.0,
            ..Default::default()
        };
        let mut rd = RedDiff::new(p, settings).unwrap();
        let mu0 = [0.9f32, 0.1, -0.7];
        let n = 20000;
        let mu = ArrayD::from_shape_fn(IxDyn(&[n, 3]), |ix| mu0[ix[1]]);
        let knot = Schedule::vp_linear().knot(0.4);
        let (a, s) = (knot.a, knot.s);
        assert!(
            (s / a - a / s).abs() > 0.5,
            "the broken variant must differ here"
        );
        let mut cx = Context::new(&gmm, 5);
        rd.init(&mut cx, 1).unwrap();
        let (g, _) = rd.gradient(&mut cx, &mu, &knot).unwrap();
        assert_eq!(cx.nfe(), 1);
        let r: Vec<f64> = (0..2)
            .map(|i| (0..3).map(|j| (A[i * 3 + j] * mu0[j]) as f64).sum::<f64>() - [0.6, -0.2][i])
            .collect();
        let (lambda, d) = (3.0, 3.0);
        for j in 0..3 {
            let data = (0..2).map(|i| A[i * 3 + j] as f64 * r[i]).sum::<f64>() / 2.0;
            let k = 1.0 / (a * a * c[j] + s * s);
            let diff = mu0[j] as f64 - m[j];
            let want = data + lambda / d * s * s * k * diff;
            let broken = data + lambda / d * a * a * k * diff;
            let se = lambda / d * (s / a) * a * a * c[j] * k / (n as f64).sqrt();
            let got = g
                .index_axis(Axis(1), j)
                .iter()
                .map(|v| *v as f64)
                .sum::<f64>()
                / n as f64;
            eprintln!(
                "coordinate {j}: mean {got:.5}, closed form {want:.5}, broken {broken:.5}, s.e. {se:.1e}"
            );
            assert!(
                (got - want).abs() < 5.0 * se + 1e-6,
                "coordinate {j}: {got} vs {want} (s.e. {se})"
            );
            assert!(
                (got - broken).abs() > 5.0 * se,
                "coordinate {j}: cannot tell"
            );
        }
    }

    #[test]
    fn only_measured_entries_count_in_the_data_mean() {
        // A mask observing 5 of 9 pixels keeps zeros for the other 4: m = 5.
        let mask = ndarray::Array2::from_shape_fn((3, 3), |(i, j)| (i + j) % 2 == 0);
        let op = posterior_operators::inpaint::Mask::new(&[1, 3, 3], mask, "checker").unwrap();
        let y = ArrayD::zeros(IxDyn(&[1, 3, 3]));
        let p = Arc::new(Problem::new(Operator::Linear(Box::new(op)), y, 0.1).unwrap());
        let gmm = Gmm::random(1, 9, 0, false)
            .unwrap()
            .with_sample_shape(&[1, 3, 3])
            .unwrap();
        let mut rd = RedDiff::new(p, RedDiffSettings::default()).unwrap();
        rd.init(&mut Context::new(&gmm, 0), 2).unwrap();
        assert_eq!(rd.measured, 5);
    }

    #[test]
    fn adam_matches_a_naive_reference() {
        // PyTorch's Adam written out in f64 for three steps on two coordinates.
        let (lr, b1, b2) = (0.1, 0.9, 0.99);
        let grads = [[0.5, -2.0], [0.1, -1.0], [-0.3, 4.0]];
        let mut adam = Adam::new(&[2], lr, (b1, b2));
        let mut x = ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.0f32, -1.0]).unwrap();
        let (mut xr, mut m, mut v) = ([1.0f64, -1.0], [0.0f64; 2], [0.0f64; 2]);
        for (k, g) in grads.iter().enumerate() {
            let ga = ArrayD::from_shape_vec(IxDyn(&[2]), vec![g[0] as f32, g[1] as f32]).unwrap();
            adam.step(&mut x, &ga);
            let k = (k + 1) as i32;
            for i in 0..2 {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let (mh, vh) = (m[i] / (1.0 - b1.powi(k)), v[i] / (1.0 - b2.powi(k)));
                xr[i] -= lr * mh / (vh.sqrt() + 1e-8);
                assert!(
                    (x[i] as f64 - xr[i]).abs() < 1e-6,
                    "step {k}: {} vs {}",
                    x[i],
                    xr[i]
                );
            }
        }
    }

    #[test]
    fn the_pseudo_inverse_start_is_the_tikhonov_solution() {
        // Dense operator (no closed form: the CG path) against A^T (A A^T + g I)^-1 y solved
        // by hand, g = 1e-3 ||A||^2; Identity (closed form) against y / (1 + g).
        let p = problem();
        let x = p.pseudo_inverse().unwrap();
        let op = p.linear().unwrap();
        let nrm = posterior_operators::LinearOperatorExt::norm_estimate(op, 30, 0);
        let g = 1e-3 * nrm * nrm;
        let a: Vec<f64> = A.iter().map(|v| *v as f64).collect();
        let aat = |i: usize, j: usize| (0..3).map(|k| a[i * 3 + k] * a[j * 3 + k]).sum::<f64>();
        let (p00, p01, p11) = (aat(0, 0) + g, aat(0, 1), aat(1, 1) + g);
        let det = p00 * p11 - p01 * p01;
        let w = [
            (p11 * 0.6 - p01 * -0.2) / det,
            (-p01 * 0.6 + p00 * -0.2) / det,
        ];
        for j in 0..3 {
            let want = a[j] * w[0] + a[3 + j] * w[1];
            assert!((x[j] as f64 - want).abs() < 1e-4, "{j}: {} vs {want}", x[j]);
        }
        let y = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0f32, -2.0, 0.5, 0.0]).unwrap();
        let p = Problem::new(
            Operator::Linear(Box::new(Identity::new(&[2, 2]))),
            y.clone(),
            0.1,
        )
        .unwrap();
        let x = p.pseudo_inverse().unwrap();
        for (xv, yv) in x.iter().zip(y.iter()) {
            assert!((*xv - *yv / (1.0 + 1e-3)).abs() < 1e-5);
        }
    }

    #[test]
    fn counts_reproducibility_start_and_errors() {
        let gmm = Gmm::random(2, 3, 1, false).unwrap();
        let p = problem();
        let settings = RedDiffSettings {
            steps: 9,
            ..Default::default()
        };
        let mut s = RedDiff::new(p.clone(), settings).unwrap();
        let a = Executor::new(1).run(&mut s, &gmm, 4).unwrap();
        assert_eq!((a.nfe, a.vjps, a.steps), (9, 0, 9));
        assert_eq!(
            a.samples,
            Executor::new(1).run(&mut s, &gmm, 4).unwrap().samples
        );
        assert_ne!(
            a.samples,
            Executor::new(2).run(&mut s, &gmm, 4).unwrap().samples
        );
        // Zero steps of Adam do not exist; the state after init is the pseudo-inverse.
        let mut cx = Context::new(&gmm, 0);
        let st = s.init(&mut cx, 2).unwrap();
        let pinv = p.pseudo_inverse().unwrap();
        for row in st.x.axis_iter(Axis(0)) {
            assert_eq!(row, pinv.view());
        }
        let base = RedDiffSettings::default();
        for (bad, what) in [
            (RedDiffSettings { steps: 0, ..base }, "steps"),
            (
                RedDiffSettings {
                    lambda: -0.1,
                    ..base
                },
                "lambda",
            ),
            (RedDiffSettings { lr: 0.0, ..base }, "learning rate"),
            (
                RedDiffSettings {
                    betas: (1.0, 0.99),
                    ..base
                },
                "beta1",
            ),
            (
                RedDiffSettings {
                    betas: (0.9, f64::NAN),
                    ..base
                },
                "beta2",
            ),
        ] {
            let msg = RedDiff::new(p.clone(), bad).err().unwrap().to_string();
            assert!(msg.contains(what), "{msg}");
        }
        let wrong = Gmm::random(1, 5, 0, false).unwrap();
        let msg = Executor::new(0)
            .run(&mut s, &wrong, 1)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("[3]") && msg.contains("[5]"), "{msg}");
    }
}
