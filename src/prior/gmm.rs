//! An exact Gaussian-mixture prior: `p(x0) = sum_k w_k N(x0; mu_k, Sigma_k)` in any
//! dimension, with full or diagonal covariances.
//!
//! On a path `x_t = a x0 + s eps` the noised marginal is again a mixture,
//! `sum_k w_k N(x_t; a mu_k, a^2 Sigma_k + s^2 I)`, so everything a sampler asks of a prior is
//! exact here:
//! - responsibilities `r_k(x_t) ∝ w_k N(x_t; a mu_k, C_k)`, `C_k = a^2 Sigma_k + s^2 I`;
//! - Tweedie's `x0_hat = sum_k r_k m_k`, `m_k = mu_k + a Sigma_k C_k^{-1} (x_t - a mu_k)`;
//! - the score `g = sum_k r_k g_k`, `g_k = -C_k^{-1} (x_t - a mu_k)`;
//! - the Jacobian `d x0_hat / d x_t = sum_k r_k a Sigma_k C_k^{-1} + sum_k r_k m_k (g_k - g)^T`,
//!   hence the VJP `v -> sum_k r_k a C_k^{-1} Sigma_k v + sum_k r_k (m_k . v) (g_k - g)`.
//!
//! Each `Sigma_k = U_k diag(lambda_k) U_k^T` is diagonalised once (faer, f64), so `C_k` and its
//! inverse and determinant are diagonal in the same basis for every `(a, s)`: one evaluation
//! costs `O(K D^2)` per sample with no factorisation.
//!
//! For a linear measurement `y = A x0 + n`, `n ~ N(0, sigma_y^2 I)`, the posterior is again a
//! mixture ([`Gmm::posterior`]), with, per component, `G_k = A Sigma_k A^T + sigma_y^2 I`:
//! weight `∝ w_k N(y; A mu_k, G_k)`, mean `mu_k + Sigma_k A^T G_k^{-1} (y - A mu_k)`,
//! covariance `Sigma_k - Sigma_k A^T G_k^{-1} A Sigma_k` (Cholesky of `G_k` in f64 by faer).
//!
//! Samples are flat vectors of dimension `D` by default (a batch is `(N, D)`); a mixture can
//! also present itself with an image shape `(C, H, W)` (`D = C H W`, row-major), so that it
//! serves as an exact image prior for small images.

use faer::prelude::*;
use faer::{Mat, Side};
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use posterior_operators::rng::Rng;
use posterior_operators::LinearOperator;
use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use super::denoiser::{check_batch, Denoiser, PriorInfo};
use super::dense::dense_matrix;
use super::schedule::Schedule;
use crate::error::{Error, Result};

/// A component covariance as given to [`Gmm::new`].
#[derive(Clone, Debug, PartialEq)]
pub enum Covariance {
    /// A full `D x D` matrix, row-major; must be symmetric positive definite.
    Full(Vec<f64>),
    /// The diagonal of a diagonal covariance; entries positive.
    Diagonal(Vec<f64>),
    /// `v I`, `v > 0`.
    Isotropic(f64),
}

#[derive(Clone, Debug)]
struct Component {
    weight: f64,
    log_weight: f64,
    mean: Vec<f64>,
    /// Row-major `D x D`.
    cov: Vec<f64>,
    /// Eigenvectors as columns, row-major `D x D`: `cov = U diag(lambda) U^T`.
    u: Vec<f64>,
    lambda: Vec<f64>,
}

/// A Gaussian mixture prior with exact denoiser, score and VJP on any noising path.
#[derive(Clone, Debug)]
pub struct Gmm {
    dim: usize,
    comps: Vec<Component>,
    schedule: Schedule,
    info: PriorInfo,
}

fn invalid(msg: String) -> Error {
    Error::Invalid(format!("gmm: {msg}"))
}

fn to_mat(d: usize, m: &[f64]) -> Mat<f64> {
    Mat::from_fn(d, d, |i, j| m[i * d + j])
}

/// Per-sample quantities at one `(a, s)`.
struct Local {
    resp: Vec<f64>,
    /// Per component: `m_k` and `g_k`.
    m: Vec<Vec<f64>>,
    g: Vec<Vec<f64>>,
    log_density: f64,
}

impl Gmm {
    /// A mixture from weights (positive; normalised here), means (each of length `D`) and
    /// covariances. Fails, saying what was wrong, on inconsistent sizes, non-positive weights,
    /// or covariances that are not symmetric positive definite.
    pub fn new(weights: Vec<f64>, means: Vec<Vec<f64>>, covs: Vec<Covariance>) -> Result<Gmm> {
        let k = weights.len();
        if k == 0 || means.len() != k || covs.len() != k {
            return Err(invalid(format!(
                "needs one weight, mean and covariance per component; got {} weights, {} means, {} covariances",
                k,
                means.len(),
                covs.len()
            )));
        }
        if weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
            return Err(invalid(format!(
                "weights must be positive and finite, got {weights:?}"
            )));
        }
        let dim = means[0].len();
        if dim == 0 {
            return Err(invalid("means must have at least one entry".into()));
        }
        let mut full = Vec::with_capacity(k);
        for (i, (m, c)) in means.iter().zip(&covs).enumerate() {
            if m.len() != dim || m.iter().any(|v| !v.is_finite()) {
                return Err(invalid(format!(
                    "mean {i} has {} entries (or a non-finite one), expected {dim} finite values",
                    m.len()
                )));
            }
            let mat = match c {
                Covariance::Full(v) => {
                    if v.len() != dim * dim {
                        return Err(invalid(format!(
                            "covariance {i} has {} entries, expected {dim} x {dim} = {}",
                            v.len(),
                            dim * dim
                        )));
                    }
                    let scale = v.iter().fold(0.0f64, |a, b| a.max(b.abs()));
                    for r in 0..dim {
                        for q in 0..r {
                            if (v[r * dim + q] - v[q * dim + r]).abs() > 1e-9 * scale {
                                return Err(invalid(format!(
                                    "covariance {i} is not symmetric (entries ({r},{q}) and ({q},{r}) differ)"
                                )));
                            }
                        }
                    }
                    v.clone()
                }
                Covariance::Diagonal(d) => {
                    if d.len() != dim {
                        return Err(invalid(format!(
                            "diagonal covariance {i} has {} entries, expected {dim}",
                            d.len()
                        )));
                    }
                    let mut v = vec![0.0; dim * dim];
                    for (r, x) in d.iter().enumerate() {
                        v[r * dim + r] = *x;
                    }
                    v
                }
                Covariance::Isotropic(x) => {
                    let mut v = vec![0.0; dim * dim];
                    for r in 0..dim {
                        v[r * dim + r] = *x;
                    }
                    v
                }
            };
            if mat.iter().any(|v| !v.is_finite()) {
                return Err(invalid(format!("covariance {i} has non-finite entries")));
            }
            full.push(mat);
        }
        let g = Self::from_parts(weights, means, full, false)?;
        Ok(g)
    }

    /// Builds the components; with `allow_singular`, eigenvalues down to 0 are accepted
    /// (exact posteriors of noise-free measurements are degenerate).
    fn from_parts(
        weights: Vec<f64>,
        means: Vec<Vec<f64>>,
        covs: Vec<Vec<f64>>,
        allow_singular: bool,
    ) -> Result<Gmm> {
        let dim = means[0].len();
        let total: f64 = weights.iter().sum();
        let mut comps = Vec::with_capacity(weights.len());
        for (i, ((w, mean), cov)) in weights.iter().zip(means).zip(covs).enumerate() {
            let eig = to_mat(dim, &cov)
                .self_adjoint_eigen(Side::Lower)
                .map_err(|e| {
                    invalid(format!("covariance {i}: eigendecomposition failed ({e:?})"))
                })?;
            let s = eig.S().column_vector();
            let mut lambda: Vec<f64> = (0..dim).map(|j| s[j]).collect();
            let max = lambda.iter().fold(0.0f64, |a, b| a.max(b.abs()));
            let min = lambda.iter().fold(f64::INFINITY, |a, b| a.min(*b));
            if allow_singular {
                if min < -1e-8 * max.max(1e-300) {
                    return Err(invalid(format!(
                        "covariance {i} is not positive semidefinite (eigenvalue {min})"
                    )));
                }
                lambda.iter_mut().for_each(|l| *l = l.max(0.0));
            } else if !(min > 1e-12 * max && min > 0.0) {
                return Err(invalid(format!(
                    "covariance {i} is not positive definite (smallest eigenvalue {min}, largest {max})"
                )));
            }
            let um = eig.U();
            let mut u = vec![0.0; dim * dim];
            for r in 0..dim {
                for c in 0..dim {
                    u[r * dim + c] = um[(r, c)];
                }
            }
            let weight = w / total;
            comps.push(Component {
                weight,
                log_weight: weight.ln(),
                mean,
                cov,
                u,
                lambda,
            });
        }
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for c in &comps {
            for j in 0..dim {
                let sd = c.cov[j * dim + j].max(0.0).sqrt();
                lo = lo.min(c.mean[j] - 3.0 * sd);
                hi = hi.max(c.mean[j] + 3.0 * sd);
            }
        }
        let info = PriorInfo {
            name: format!("gmm({} components, dim {dim})", comps.len()),
            range: (lo as f32, hi as f32),
            sample_shape: vec![dim],
        };
        Ok(Gmm {
            dim,
            comps,
            schedule: Schedule::vp_linear(),
            info,
        })
    }

    /// The same mixture, served as a denoiser trained on `schedule` (default: VP linear).
    pub fn with_schedule(mut self, schedule: Schedule) -> Gmm {
        self.schedule = schedule;
        self
    }

    /// The same mixture with samples of shape `shape` (product `D`, e.g. `(C, H, W)`).
    pub fn with_sample_shape(mut self, shape: &[usize]) -> Result<Gmm> {
        if shape.iter().product::<usize>() != self.dim || shape.is_empty() {
            return Err(invalid(format!(
                "sample shape {shape:?} does not hold {} values",
                self.dim
            )));
        }
        self.info.sample_shape = shape.to_vec();
        Ok(self)
    }

    /// A 2-D demo mixture of four anisotropic components in roughly `[-3, 3]^2`.
    pub fn demo2d() -> Gmm {
        let g = Gmm::new(
            vec![0.35, 0.25, 0.25, 0.15],
            vec![
                vec![-1.5, 0.8],
                vec![1.4, 1.3],
                vec![1.0, -1.4],
                vec![-0.6, -1.2],
            ],
            vec![
                Covariance::Full(vec![0.30, 0.18, 0.18, 0.20]),
                Covariance::Full(vec![0.12, -0.05, -0.05, 0.10]),
                Covariance::Diagonal(vec![0.25, 0.04]),
                Covariance::Isotropic(0.06),
            ],
        );
        // The parameters above are valid; fall back to a standard normal only to avoid a
        // panic path.
        g.unwrap_or_else(|_| Self::standard_normal(2))
    }

    /// `N(0, I)` in `dim` dimensions, built directly (no factorisation, cannot fail).
    fn standard_normal(dim: usize) -> Gmm {
        let eye: Vec<f64> = (0..dim * dim)
            .map(|k| if k % (dim + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        Gmm {
            dim,
            comps: vec![Component {
                weight: 1.0,
                log_weight: 0.0,
                mean: vec![0.0; dim],
                cov: eye.clone(),
                u: eye,
                lambda: vec![1.0; dim],
            }],
            schedule: Schedule::vp_linear(),
            info: PriorInfo {
                name: format!("gmm(1 component, dim {dim})"),
                range: (-3.0, 3.0),
                sample_shape: vec![dim],
            },
        }
    }

    /// A random mixture of `components` components in `dim` dimensions drawn from `seed`:
    /// means `~ N(0, 2^2 I)`, weights uniform in `[0.5, 1.5]` (normalised), covariances
    /// `0.5 B B^T / dim + 0.05 I` with `B` standard normal (or, with `diagonal`, a diagonal of
    /// entries uniform in `[0.05, 0.6]`).
    pub fn random(components: usize, dim: usize, seed: u64, diagonal: bool) -> Result<Gmm> {
        if components == 0 || dim == 0 || components > 1000 || dim > 1024 {
            return Err(invalid(format!(
                "random mixture needs 1..=1000 components and 1..=1024 dimensions, got {components} and {dim}"
            )));
        }
        let mut rng = posterior_operators::rng::seeded(seed, "gmm-random");
        let mut weights = Vec::new();
        let mut means = Vec::new();
        let mut covs = Vec::new();
        for _ in 0..components {
            weights.push(rng.random_range(0.5..1.5));
            means.push(
                (0..dim)
                    .map(|_| {
                        let e: f64 = StandardNormal.sample(&mut rng);
                        2.0 * e
                    })
                    .collect(),
            );
            if diagonal {
                covs.push(Covariance::Diagonal(
                    (0..dim).map(|_| rng.random_range(0.05..0.6)).collect(),
                ));
            } else {
                let b: Vec<f64> = (0..dim * dim)
                    .map(|_| StandardNormal.sample(&mut rng))
                    .collect();
                let mut c = vec![0.0; dim * dim];
                for i in 0..dim {
                    for j in 0..dim {
                        let mut acc = 0.0;
                        for q in 0..dim {
                            acc += b[i * dim + q] * b[j * dim + q];
                        }
                        c[i * dim + j] = 0.5 * acc / dim as f64 + if i == j { 0.05 } else { 0.0 };
                    }
                }
                covs.push(Covariance::Full(c));
            }
        }
        Gmm::new(weights, means, covs)
    }

    /// The dimension `D`.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The number of components.
    pub fn components(&self) -> usize {
        self.comps.len()
    }
    /// The normalised weights.
    pub fn weights(&self) -> Vec<f64> {
        self.comps.iter().map(|c| c.weight).collect()
    }
    /// The component means.
    pub fn means(&self) -> Vec<Vec<f64>> {
        self.comps.iter().map(|c| c.mean.clone()).collect()
    }
    /// The component covariances, row-major `D x D`.
    pub fn covariances(&self) -> Vec<Vec<f64>> {
        self.comps.iter().map(|c| c.cov.clone()).collect()
    }

    /// The mixture's mean.
    pub fn mean(&self) -> Vec<f64> {
        let mut m = vec![0.0; self.dim];
        for c in &self.comps {
            for (a, b) in m.iter_mut().zip(&c.mean) {
                *a += c.weight * b;
            }
        }
        m
    }

    /// The mixture's covariance, row-major `D x D`.
    pub fn covariance(&self) -> Vec<f64> {
        let d = self.dim;
        let m = self.mean();
        let mut out = vec![0.0; d * d];
        for c in &self.comps {
            for i in 0..d {
                for j in 0..d {
                    out[i * d + j] +=
                        c.weight * (c.cov[i * d + j] + (c.mean[i] - m[i]) * (c.mean[j] - m[j]));
                }
            }
        }
        out
    }

    /// The noised marginal at `(a, s)` as a mixture: means `a mu_k`, covariances
    /// `a^2 Sigma_k + s^2 I`.
    pub fn noised(&self, a: f64, s: f64) -> Result<Gmm> {
        let d = self.dim;
        let covs = self
            .comps
            .iter()
            .map(|c| {
                let mut m: Vec<f64> = c.cov.iter().map(|v| a * a * v).collect();
                for i in 0..d {
                    m[i * d + i] += s * s;
                }
                m
            })
            .collect();
        let means = self
            .comps
            .iter()
            .map(|c| c.mean.iter().map(|v| a * v).collect())
            .collect();
        let mut g = Gmm::from_parts(self.weights(), means, covs, true)?;
        g.schedule = self.schedule.clone();
        g.info.sample_shape = self.info.sample_shape.clone();
        Ok(g)
    }

    /// Draws `n` exact samples: a batch `(n, ...sample_shape)` and each sample's component.
    pub fn sample(&self, n: usize, rng: &mut Rng) -> (ArrayD<f32>, Vec<usize>) {
        let d = self.dim;
        let mut flat = vec![0.0f32; n * d];
        let mut labels = Vec::with_capacity(n);
        let cum: Vec<f64> = self
            .comps
            .iter()
            .scan(0.0, |acc, c| {
                *acc += c.weight;
                Some(*acc)
            })
            .collect();
        let mut z = vec![0.0f64; d];
        for row in flat.chunks_mut(d.max(1)) {
            let r: f64 = rng.random::<f64>() * cum[cum.len() - 1];
            let k = cum.iter().position(|c| r < *c).unwrap_or(cum.len() - 1);
            labels.push(k);
            let c = &self.comps[k];
            for (j, zj) in z.iter_mut().enumerate() {
                let e: f64 = StandardNormal.sample(rng);
                *zj = e * c.lambda[j].sqrt();
            }
            for (r, x) in row.iter_mut().enumerate() {
                let mut acc = c.mean[r];
                for (q, zq) in z.iter().enumerate() {
                    acc += c.u[r * d + q] * zq;
                }
                *x = acc as f32;
            }
        }
        let out = ArrayD::from_shape_vec(IxDyn(&self.info.batch_shape(n)), flat)
            .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&self.info.batch_shape(n))));
        (out, labels)
    }

    fn local(&self, x: &[f64], a: f64, s: f64, want_mg: bool) -> Local {
        let d = self.dim;
        let kk = self.comps.len();
        let mut logp = Vec::with_capacity(kk);
        let mut ms = Vec::with_capacity(if want_mg { kk } else { 0 });
        let mut gs = Vec::with_capacity(if want_mg { kk } else { 0 });
        let mut z = vec![0.0; d];
        let mut tmp_m = vec![0.0; d];
        let mut tmp_g = vec![0.0; d];
        let ln2pi = (2.0 * std::f64::consts::PI).ln();
        for c in &self.comps {
            // z = U^T (x - a mu)
            for (q, zq) in z.iter_mut().enumerate() {
                let mut acc = 0.0;
                for (r, (xr, mr)) in x.iter().zip(&c.mean).enumerate() {
                    acc += c.u[r * d + q] * (xr - a * mr);
                }
                *zq = acc;
            }
            let mut quad = 0.0;
            let mut logdet = 0.0;
            for (q, zq) in z.iter().enumerate() {
                let cq = a * a * c.lambda[q] + s * s;
                quad += zq * zq / cq;
                logdet += cq.ln();
                tmp_m[q] = a * c.lambda[q] / cq * zq;
                tmp_g[q] = -zq / cq;
            }
            logp.push(c.log_weight - 0.5 * (quad + logdet + d as f64 * ln2pi));
            if want_mg {
                let mut m = c.mean.clone();
                let mut g = vec![0.0; d];
                for r in 0..d {
                    let mut am = 0.0;
                    let mut ag = 0.0;
                    for q in 0..d {
                        am += c.u[r * d + q] * tmp_m[q];
                        ag += c.u[r * d + q] * tmp_g[q];
                    }
                    m[r] += am;
                    g[r] = ag;
                }
                ms.push(m);
                gs.push(g);
            }
        }
        let mx = logp.iter().fold(f64::NEG_INFINITY, |a, b| a.max(*b));
        let sum: f64 = logp.iter().map(|l| (l - mx).exp()).sum();
        let resp = logp.iter().map(|l| (l - mx).exp() / sum).collect();
        Local {
            resp,
            m: ms,
            g: gs,
            log_density: mx + sum.ln(),
        }
    }

    /// `log p_t(x)` of the noised marginal at `(a, s)` for one flat sample `x` (length `D`).
    pub fn log_density_at(&self, x: &[f64], a: f64, s: f64) -> f64 {
        self.local(x, a, s, false).log_density
    }

    /// `log p(x0)`.
    pub fn log_density(&self, x: &[f64]) -> f64 {
        self.log_density_at(x, 1.0, 0.0)
    }

    /// The component responsibilities `P(k | x_t)` at `(a, s)` for one flat sample.
    pub fn responsibilities(&self, x: &[f64], a: f64, s: f64) -> Vec<f64> {
        self.local(x, a, s, false).resp
    }

    fn rows(&self, x: &ArrayViewD<f32>) -> Vec<Vec<f64>> {
        let n = x.shape()[0];
        (0..n)
            .map(|i| x.index_axis(Axis(0), i).iter().map(|v| *v as f64).collect())
            .collect()
    }

    fn per_sample<F>(&self, x_t: &ArrayViewD<f32>, t: &[f32], f: F) -> ArrayD<f32>
    where
        F: Fn(usize, &[f64], f64, f64) -> Vec<f64> + Sync,
    {
        let rows = self.rows(x_t);
        let out: Vec<Vec<f64>> = rows
            .par_iter()
            .enumerate()
            .map(|(i, x)| {
                let (a, s) = self.schedule.coeffs(t[i] as f64);
                f(i, x, a, s)
            })
            .collect();
        let flat: Vec<f32> = out.into_iter().flatten().map(|v| v as f32).collect();
        ArrayD::from_shape_vec(IxDyn(x_t.shape()), flat)
            .unwrap_or_else(|_| ArrayD::zeros(IxDyn(x_t.shape())))
    }

    /// The exact score `grad log p_t(x_t)` for a batch, one time per sample.
    pub fn score(&self, x_t: ArrayViewD<f32>, t: &[f32]) -> Result<ArrayD<f32>> {
        check_batch(&self.info, &x_t, t, "x_t")?;
        Ok(self.per_sample(&x_t, t, |_, x, a, s| {
            let l = self.local(x, a, s, true);
            let mut g = vec![0.0; self.dim];
            for (r, gk) in l.resp.iter().zip(&l.g) {
                for (o, v) in g.iter_mut().zip(gk) {
                    *o += r * v;
                }
            }
            g
        }))
    }

    /// The exact posterior of `x0` given `y = A x0 + n`, `n ~ N(0, sigma_y^2 I)`, as a
    /// mixture (see the module docs). `op`'s domain must hold `D` values (any shape, in
    /// row-major order) and `y` must have its range shape. `sigma_y = 0` is allowed when every
    /// `A Sigma_k A^T` is nonsingular (the posterior covariances are then singular).
    pub fn posterior(
        &self,
        op: &dyn LinearOperator,
        y: ArrayViewD<f32>,
        sigma_y: f64,
    ) -> Result<Gmm> {
        let d_op: usize = op.domain_shape().iter().product();
        if d_op != self.dim {
            return Err(invalid(format!(
                "the operator {} acts on {:?} ({d_op} values), but the mixture has dimension {}",
                op.name(),
                op.domain_shape(),
                self.dim
            )));
        }
        if y.shape() != op.range_shape() {
            return Err(invalid(format!(
                "the measurement has shape {:?}, expected the operator's range {:?}",
                y.shape(),
                op.range_shape()
            )));
        }
        let (m, _, a) = dense_matrix(op)?;
        let yv: Vec<f64> = y.iter().map(|v| *v as f64).collect();
        self.posterior_dense(m, &a, &yv, sigma_y)
            .map(|g| g.with_sample_shape(&self.info.sample_shape.clone()))?
    }

    /// [`Gmm::posterior`] for a dense `m x D` matrix (row-major) and a flat measurement.
    pub fn posterior_dense(&self, m: usize, a: &[f64], y: &[f64], sigma_y: f64) -> Result<Gmm> {
        let d = self.dim;
        if a.len() != m * d || y.len() != m || m == 0 {
            return Err(invalid(format!(
                "posterior: matrix has {} entries and measurement {} for m = {m}, D = {d}",
                a.len(),
                y.len()
            )));
        }
        if !(sigma_y.is_finite() && sigma_y >= 0.0) {
            return Err(invalid(format!(
                "posterior: noise level sigma_y must be finite and >= 0, got {sigma_y}"
            )));
        }
        let am = Mat::from_fn(m, d, |i, j| a[i * d + j]);
        let ym = Mat::from_fn(m, 1, |i, _| y[i]);
        let mut log_w = Vec::new();
        let mut means = Vec::new();
        let mut covs = Vec::new();
        for (k, c) in self.comps.iter().enumerate() {
            let sig = to_mat(d, &c.cov);
            let mu = Mat::from_fn(d, 1, |i, _| c.mean[i]);
            let sat = &sig * am.transpose(); // D x m
            let mut g = &am * &sat; // m x m
            for i in 0..m {
                g[(i, i)] += sigma_y * sigma_y;
            }
            let llt = g.llt(Side::Lower).map_err(|_| {
                invalid(format!(
                    "posterior: the measurement covariance A Sigma_{k} A^T + sigma_y^2 I is singular \
                     (a noise-free measurement of directions the prior does not vary in); use sigma_y > 0"
                ))
            })?;
            let r = &ym - &am * &mu;
            let w = llt.solve(&r);
            let mean = &mu + &sat * &w;
            let x = llt.solve(sat.transpose()); // m x D = G^-1 A Sigma
            let cov = &sig - &sat * &x;
            let l = llt.L();
            let logdet: f64 = (0..m).map(|i| 2.0 * l[(i, i)].ln()).sum();
            let quad: f64 = (0..m).map(|i| r[(i, 0)] * w[(i, 0)]).sum();
            let ln2pi = (2.0 * std::f64::consts::PI).ln();
            log_w.push(c.log_weight - 0.5 * (quad + logdet + m as f64 * ln2pi));
            means.push((0..d).map(|i| mean[(i, 0)]).collect::<Vec<f64>>());
            let mut cv = vec![0.0; d * d];
            for i in 0..d {
                for j in 0..d {
                    cv[i * d + j] = 0.5 * (cov[(i, j)] + cov[(j, i)]);
                }
            }
            covs.push(cv);
        }
        let mx = log_w.iter().fold(f64::NEG_INFINITY, |a, b| a.max(*b));
        if !mx.is_finite() {
            return Err(invalid(
                "posterior: the measurement has zero likelihood under every component".into(),
            ));
        }
        let weights: Vec<f64> = log_w.iter().map(|l| (l - mx).exp()).collect();
        // Components with negligible weight are kept (weights may underflow to 0 only if
        // far below 1e-300 relative); give them a tiny positive weight to stay valid.
        let weights = weights.into_iter().map(|w| w.max(1e-300)).collect();
        let mut g = Gmm::from_parts(weights, means, covs, true)?;
        g.schedule = self.schedule.clone();
        g.info.name = format!("posterior of {}", self.info.name);
        Ok(g)
    }
}

impl Denoiser for Gmm {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn info(&self) -> &PriorInfo {
        &self.info
    }
    fn x0(&self, x_t: ArrayViewD<f32>, t: &[f32]) -> Result<ArrayD<f32>> {
        check_batch(&self.info, &x_t, t, "x_t")?;
        Ok(self.per_sample(&x_t, t, |_, x, a, s| {
            let l = self.local(x, a, s, true);
            let mut out = vec![0.0; self.dim];
            for (r, mk) in l.resp.iter().zip(&l.m) {
                for (o, v) in out.iter_mut().zip(mk) {
                    *o += r * v;
                }
            }
            out
        }))
    }

    fn x0_vjp(
        &self,
        x_t: ArrayViewD<f32>,
        t: &[f32],
        v: ArrayViewD<f32>,
    ) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
        check_batch(&self.info, &x_t, t, "x_t")?;
        if v.shape() != x_t.shape() {
            return Err(invalid(format!(
                "x0_vjp: v has shape {:?}, expected the shape of x_t {:?}",
                v.shape(),
                x_t.shape()
            )));
        }
        let d = self.dim;
        let vs = self.rows(&v);
        let x0 = self.x0(x_t.view(), t)?;
        let g = self.per_sample(&x_t, t, |i, x, a, s| {
            let l = self.local(x, a, s, true);
            let vi = &vs[i];
            let mut gbar = vec![0.0; d];
            for (r, gk) in l.resp.iter().zip(&l.g) {
                for (o, q) in gbar.iter_mut().zip(gk) {
                    *o += r * q;
                }
            }
            let mut out = vec![0.0; d];
            let mut w = vec![0.0; d];
            for (k, c) in self.comps.iter().enumerate() {
                let r = l.resp[k];
                // a U diag(lambda / C) U^T v
                for (q, wq) in w.iter_mut().enumerate() {
                    let mut acc = 0.0;
                    for (p, vp) in vi.iter().enumerate() {
                        acc += c.u[p * d + q] * vp;
                    }
                    *wq = acc * a * c.lambda[q] / (a * a * c.lambda[q] + s * s);
                }
                let mv: f64 = l.m[k].iter().zip(vi).map(|(p, q)| p * q).sum();
                for (p, o) in out.iter_mut().enumerate() {
                    let mut acc = 0.0;
                    for (q, wq) in w.iter().enumerate() {
                        acc += c.u[p * d + q] * wq;
                    }
                    *o += r * (acc + mv * (l.g[k][p] - gbar[p]));
                }
            }
            out
        });
        Ok((x0, g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prior::dense::DenseOperator;
    use posterior_operators::rng::seeded;

    fn batch(rows: &[Vec<f64>]) -> ArrayD<f32> {
        let d = rows[0].len();
        ArrayD::from_shape_vec(
            IxDyn(&[rows.len(), d]),
            rows.iter().flatten().map(|v| *v as f32).collect(),
        )
        .unwrap()
    }

    fn test_mixtures() -> Vec<Gmm> {
        vec![
            Gmm::demo2d(),
            Gmm::random(3, 5, 7, false).unwrap(),
            Gmm::random(2, 4, 8, true).unwrap(),
        ]
    }

    #[test]
    fn validation_errors_name_the_problem() {
        let e = Gmm::new(
            vec![1.0],
            vec![vec![0.0, 0.0]],
            vec![Covariance::Full(vec![1.0, 2.0, 0.0, 1.0])],
        );
        assert!(format!("{}", e.unwrap_err()).contains("not symmetric"));
        let e = Gmm::new(
            vec![1.0],
            vec![vec![0.0, 0.0]],
            vec![Covariance::Full(vec![1.0, 2.0, 2.0, 1.0])],
        );
        assert!(format!("{}", e.unwrap_err()).contains("positive definite"));
        assert!(Gmm::new(
            vec![-1.0],
            vec![vec![0.0]],
            vec![Covariance::Isotropic(1.0)]
        )
        .is_err());
        assert!(Gmm::new(
            vec![1.0, 1.0],
            vec![vec![0.0]],
            vec![Covariance::Isotropic(1.0)]
        )
        .is_err());
        assert!(Gmm::new(
            vec![1.0],
            vec![vec![0.0, 1.0]],
            vec![Covariance::Diagonal(vec![1.0])]
        )
        .is_err());
        let g = Gmm::demo2d();
        assert!(g
            .x0(ArrayD::zeros(IxDyn(&[3, 3])).view(), &[0.5; 3])
            .is_err());
        assert!(g
            .x0(ArrayD::zeros(IxDyn(&[3, 2])).view(), &[0.5; 2])
            .is_err());
        assert!(g.x0(ArrayD::zeros(IxDyn(&[1, 2])).view(), &[1.5]).is_err());
    }

    #[test]
    fn density_matches_a_naive_evaluation() {
        // Naive: explicit inverse and determinant of a 2x2 covariance.
        let g = Gmm::demo2d();
        let (a, s) = (0.8, 0.6);
        for x in [[0.3, -0.2], [-1.0, 1.5], [2.0, 0.1]] {
            let mut p = 0.0;
            for k in 0..g.components() {
                let c = &g.covariances()[k];
                let mu = &g.means()[k];
                let (c00, c01, c11) = (a * a * c[0] + s * s, a * a * c[1], a * a * c[3] + s * s);
                let det = c00 * c11 - c01 * c01;
                let (d0, d1) = (x[0] - a * mu[0], x[1] - a * mu[1]);
                let q = (c11 * d0 * d0 - 2.0 * c01 * d0 * d1 + c00 * d1 * d1) / det;
                p += g.weights()[k] * (-0.5 * q).exp() / (2.0 * std::f64::consts::PI * det.sqrt());
            }
            let got = g.log_density_at(&x, a, s);
            assert!((got - p.ln()).abs() < 1e-12, "{got} vs {}", p.ln());
        }
    }

    #[test]
    fn tweedie_and_score_match_finite_differences_of_the_density() {
        // Tweedie: x0_hat = (x + s^2 grad log p_t(x)) / a. The score by central differences
        // of log p_t (h = 1e-5, f64): error ~1e-9; the f32 outputs limit agreement to ~1e-5.
        for g in test_mixtures() {
            let d = g.dim();
            let mut rng = seeded(1, "test");
            let (xs, _) = g.sample(4, &mut rng);
            for &t in &[0.15f32, 0.5, 0.85] {
                let (a, s) = g.schedule().coeffs(t as f64);
                let noisy: Vec<Vec<f64>> = (0..4)
                    .map(|i| {
                        (0..d)
                            .map(|j| a * xs[[i, j]] as f64 + s * 0.7 * ((i * d + j) as f64).sin())
                            .collect()
                    })
                    .collect();
                let xb = batch(&noisy);
                let x0 = g.x0(xb.view(), &[t; 4]).unwrap();
                let sc = g.score(xb.view(), &[t; 4]).unwrap();
                for (i, x) in noisy.iter().enumerate() {
                    for j in 0..d {
                        let h = 1e-5;
                        let mut xp = x.clone();
                        let mut xm = x.clone();
                        xp[j] += h;
                        xm[j] -= h;
                        let fd =
                            (g.log_density_at(&xp, a, s) - g.log_density_at(&xm, a, s)) / (2.0 * h);
                        let tol = 1e-4 * (1.0 + fd.abs());
                        assert!(
                            (sc[[i, j]] as f64 - fd).abs() < tol,
                            "score {i},{j}: {} vs {fd}",
                            sc[[i, j]]
                        );
                        let tw = (x[j] + s * s * fd) / a;
                        assert!(
                            (x0[[i, j]] as f64 - tw).abs() < 1e-4 * (1.0 + tw.abs()),
                            "x0 {i},{j}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn vjp_matches_finite_differences_of_x0() {
        for g in test_mixtures() {
            let d = g.dim();
            for &t in &[0.1f32, 0.4, 0.9] {
                let (a, s) = g.schedule().coeffs(t as f64);
                let x: Vec<f64> = (0..d)
                    .map(|j| a * (j as f64 * 0.37 - 0.5) + s * (j as f64).cos())
                    .collect();
                let v: Vec<f64> = (0..d).map(|j| ((j * 3 + 1) as f64).sin()).collect();
                let (_, got) = g
                    .x0_vjp(
                        batch(std::slice::from_ref(&x)).view(),
                        &[t],
                        batch(std::slice::from_ref(&v)).view(),
                    )
                    .unwrap();
                // Reference: the full Jacobian column by column from central differences of
                // x0 evaluated in f64 (the private per-sample routine), then v^T J.
                let x0_of = |x: &[f64]| {
                    let l = g.local(x, a, s, true);
                    let mut o = vec![0.0; d];
                    for (r, m) in l.resp.iter().zip(&l.m) {
                        for (p, q) in o.iter_mut().zip(m) {
                            *p += r * q;
                        }
                    }
                    o
                };
                for j in 0..d {
                    let h = 1e-6;
                    let mut xp = x.clone();
                    let mut xm = x.clone();
                    xp[j] += h;
                    xm[j] -= h;
                    let (fp, fm) = (x0_of(&xp), x0_of(&xm));
                    let want: f64 = (0..d).map(|i| v[i] * (fp[i] - fm[i]) / (2.0 * h)).sum();
                    // central differences, f64: ~1e-8; output in f32: ~1e-6 relative.
                    assert!(
                        (got[[0, j]] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "t {t} j {j}: {} vs {want}",
                        got[[0, j]]
                    );
                }
            }
        }
    }

    #[test]
    fn noised_mixture_and_sampling_moments() {
        let g = Gmm::random(3, 3, 2, false).unwrap();
        let n = g.noised(0.6, 0.8).unwrap();
        let x = [0.2, -0.4, 1.0];
        assert!((n.log_density(&x) - g.log_density_at(&x, 0.6, 0.8)).abs() < 1e-10);
        // Sample moments of 40000 exact samples vs the mixture's mean: each coordinate's
        // standard error is sqrt(var / n) ~ 0.01 here; allow 5 standard errors.
        let mut rng = seeded(5, "test");
        let (xs, labels) = g.sample(40000, &mut rng);
        let m = g.mean();
        let c = g.covariance();
        for j in 0..3 {
            let mean = xs
                .index_axis(Axis(1), j)
                .iter()
                .map(|v| *v as f64)
                .sum::<f64>()
                / 40000.0;
            let se = (c[j * 3 + j] / 40000.0).sqrt();
            assert!(
                (mean - m[j]).abs() < 5.0 * se,
                "coordinate {j}: {mean} vs {}",
                m[j]
            );
        }
        for k in 0..3 {
            let f = labels.iter().filter(|l| **l == k).count() as f64 / 40000.0;
            let w = g.weights()[k];
            assert!((f - w).abs() < 5.0 * (w * (1.0 - w) / 40000.0).sqrt());
        }
    }

    #[test]
    fn posterior_of_a_single_gaussian_matches_the_textbook_formula() {
        // One component N(mu, Sigma), y = A x + n: posterior precision Sigma^-1 + A^T A / s^2,
        // computed here by explicit 2x2 inverses (an independent route from the Woodbury form).
        let g = Gmm::new(
            vec![1.0],
            vec![vec![0.5, -1.0]],
            vec![Covariance::Full(vec![1.0, 0.3, 0.3, 0.5])],
        )
        .unwrap();
        let op = DenseOperator::new(1, 2, vec![1.0, 2.0]).unwrap();
        let y = ndarray::arr1(&[0.75f32]).into_dyn();
        let sy = 0.4;
        let p = g.posterior(&op, y.view(), sy).unwrap();
        let inv2 = |m: [f64; 4]| {
            let det = m[0] * m[3] - m[1] * m[2];
            [m[3] / det, -m[1] / det, -m[2] / det, m[0] / det]
        };
        let si = inv2([1.0, 0.3, 0.3, 0.5]);
        let prec = [
            si[0] + 1.0 / (sy * sy),
            si[1] + 2.0 / (sy * sy),
            si[2] + 2.0 / (sy * sy),
            si[3] + 4.0 / (sy * sy),
        ];
        let cov = inv2(prec);
        let rhs = [
            si[0] * 0.5 - si[1] + 0.75 / (sy * sy),
            si[2] * 0.5 - si[3] + 1.5 / (sy * sy),
        ];
        let mean = [
            cov[0] * rhs[0] + cov[1] * rhs[1],
            cov[2] * rhs[0] + cov[3] * rhs[1],
        ];
        let pm = &p.means()[0];
        let pc = &p.covariances()[0];
        for j in 0..2 {
            assert!((pm[j] - mean[j]).abs() < 1e-10);
        }
        for j in 0..4 {
            assert!((pc[j] - cov[j]).abs() < 1e-10);
        }
    }

    #[test]
    fn image_shaped_mixture_posterior_under_an_inpainting_mask() {
        // A mixture over (1, 3, 3) images measured by the operators crate's inpainting mask:
        // the posterior equals the one computed from the same operator as a dense matrix,
        // pins the observed pixels to y (sigma_y small), keeps the image shape, and serves
        // as a denoiser on (N, 1, 3, 3) batches.
        let g = Gmm::random(2, 9, 3, false)
            .unwrap()
            .with_sample_shape(&[1, 3, 3])
            .unwrap();
        let mut m = ndarray::Array2::from_elem((3, 3), true);
        m[[1, 1]] = false;
        m[[0, 2]] = false;
        let op = posterior_operators::inpaint::Mask::new(&[1, 3, 3], m, "test").unwrap();
        let truth = ArrayD::from_shape_fn(IxDyn(&[1, 3, 3]), |i| {
            (i[1] as f32 - 1.0) * 0.8 + i[2] as f32 * 0.3
        });
        let mut y = ArrayD::zeros(IxDyn(&[1, 3, 3]));
        op.apply(truth.view(), y.view_mut());
        let p = g.posterior(&op, y.view(), 1e-3).unwrap();
        assert_eq!(p.info().sample_shape, vec![1, 3, 3]);
        let (_, _, dense) = dense_matrix(&op).unwrap();
        let yv: Vec<f64> = y.iter().map(|v| *v as f64).collect();
        let q = g.posterior_dense(9, &dense, &yv, 1e-3).unwrap();
        for (a, b) in p.mean().iter().zip(q.mean()) {
            assert!((a - b).abs() < 1e-12);
        }
        let pm = p.mean();
        for (k, (t, mk)) in truth.iter().zip(&pm).enumerate() {
            if k != 4 && k != 2 {
                // observed: the posterior mean is y up to sigma_y^2 / prior variance
                assert!((*t as f64 - mk).abs() < 1e-3, "pixel {k}: {t} vs {mk}");
            }
        }
        let x = ArrayD::<f32>::zeros(IxDyn(&[5, 1, 3, 3]));
        assert_eq!(p.x0(x.view(), &[0.5; 5]).unwrap().shape(), &[5, 1, 3, 3]);
        // Wrong measurement shape is an error naming the expected shape.
        let e = g
            .posterior(&op, ArrayD::zeros(IxDyn(&[9])).view(), 0.1)
            .unwrap_err();
        assert!(e.to_string().contains("[1, 3, 3]"), "{e}");
    }
}
