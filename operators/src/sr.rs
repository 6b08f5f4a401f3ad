//! Super-resolution: downsampling an image `(C, H, W)` by an integer factor `f` to
//! `(C, H / f, W / f)`.
//!
//! Two methods, both separable (one sparse matrix per axis, `y = R x C^T` for every
//! channel, so the adjoint `x = R^T y C` is the exact transpose):
//! - [`Method::AvgPool`]: the mean of each `f x f` block. `A A^T = I / f^2`, which gives
//!   closed forms for `normal` and for `(A^T A + gamma I)^-1 = (1/gamma) (I - A^T A /
//!   (gamma + 1/f^2))`.
//! - [`Method::Bicubic`]: anti-aliased bicubic downsampling as Pillow's
//!   `Image.resize(.., Image.BICUBIC)` (and MATLAB `imresize`) compute it, used by the DPS
//!   and RED-diff benchmarks: output sample `o` is centred at input coordinate
//!   `(o + 0.5) s - 0.5` with `s = in / out`; the weights are the Keys cubic with `a = -0.5`
//!   stretched by `s` (support `2 s` on each side), normalised to sum 1 for every output
//!   sample. Edge handling (Pillow's): taps that fall outside the image are dropped and the
//!   remaining weights renormalised (MATLAB instead mirrors the image at the edges, which
//!   differs in the outermost ~`2 f` input pixels).
//!
//! Bicubic has no closed-form `normal`; its `solve_regularized` uses Woodbury with the
//! Kronecker structure `A A^T = (R R^T) ⊗ (C C^T)` and one small eigendecomposition per
//! axis (computed on first use).
//!
//! The factor must divide both `H` and `W`.

use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, ArrayViewMut2, ArrayViewMutD, Axis, IxDyn};
use rayon::prelude::*;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::linear::LinearOperator;

const OP: &str = "sr";

/// How the image is downsampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Mean of each `f x f` block.
    AvgPool,
    /// Anti-aliased bicubic (Keys, `a = -0.5`), as Pillow's `BICUBIC` resize.
    Bicubic,
}

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::AvgPool => "avgpool",
            Method::Bicubic => "bicubic",
        }
    }
}

/// One axis of a separable resampling: a sparse `out x inp` matrix whose row `o` holds the
/// contiguous weights `weights[o]` starting at input index `start[o]`.
#[derive(Clone, Debug)]
pub struct AxisWeights {
    pub inp: usize,
    pub out: usize,
    pub start: Vec<usize>,
    pub weights: Vec<Vec<f32>>,
}

impl AxisWeights {
    /// Block averaging of `out * factor` inputs into `out` outputs.
    pub fn boxes(out: usize, factor: usize) -> Self {
        AxisWeights {
            inp: out * factor,
            out,
            start: (0..out).map(|o| o * factor).collect(),
            weights: vec![vec![1.0 / factor as f32; factor]; out],
        }
    }

    /// Pillow's anti-aliased bicubic resampling weights from `inp` to `out` samples
    /// (`out >= 1`); see the module docs. Weights are computed in f64 and stored as f32.
    pub fn bicubic(inp: usize, out: usize) -> Self {
        let scale = inp as f64 / out as f64;
        let stretch = scale.max(1.0);
        let support = 2.0 * stretch;
        let mut start = Vec::with_capacity(out);
        let mut weights = Vec::with_capacity(out);
        for o in 0..out {
            // Centre in "pixel-edge" coordinates: input sample k covers [k, k + 1).
            let centre = (o as f64 + 0.5) * scale;
            let lo = ((centre - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((centre + support + 0.5).floor() as usize).min(inp);
            let mut w: Vec<f64> = (lo..hi)
                .map(|k| keys_cubic((k as f64 + 0.5 - centre) / stretch))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            start.push(lo);
            weights.push(w.into_iter().map(|v| v as f32).collect());
        }
        AxisWeights {
            inp,
            out,
            start,
            weights,
        }
    }

    /// `t = M a` along the rows of `a` (`inp x n` -> `out x n`).
    fn rows(&self, a: ArrayView2<f32>, mut t: ArrayViewMut2<f32>) {
        t.fill(0.0);
        for (o, (w, &s)) in self.weights.iter().zip(&self.start).enumerate() {
            let mut row = t.row_mut(o);
            for (k, &wk) in w.iter().enumerate() {
                row.scaled_add(wk, &a.row(s + k));
            }
        }
    }

    /// `a = M^T t` along the rows (`out x n` -> `inp x n`).
    fn rows_t(&self, t: ArrayView2<f32>, mut a: ArrayViewMut2<f32>) {
        a.fill(0.0);
        for (o, (w, &s)) in self.weights.iter().zip(&self.start).enumerate() {
            for (k, &wk) in w.iter().enumerate() {
                a.row_mut(s + k).scaled_add(wk, &t.row(o));
            }
        }
    }

    /// `t = a M^T` along the columns of `a` (`n x inp` -> `n x out`).
    fn cols(&self, a: ArrayView2<f32>, mut t: ArrayViewMut2<f32>) {
        for (ar, mut tr) in a.rows().into_iter().zip(t.rows_mut()) {
            for (o, (w, &s)) in self.weights.iter().zip(&self.start).enumerate() {
                let mut acc = 0.0f32;
                for (k, &wk) in w.iter().enumerate() {
                    acc += wk * ar[s + k];
                }
                tr[o] = acc;
            }
        }
    }

    /// `a = t M` along the columns (`n x out` -> `n x inp`).
    fn cols_t(&self, t: ArrayView2<f32>, mut a: ArrayViewMut2<f32>) {
        a.fill(0.0);
        for (tr, mut ar) in t.rows().into_iter().zip(a.rows_mut()) {
            for (o, (w, &s)) in self.weights.iter().zip(&self.start).enumerate() {
                let v = tr[o];
                for (k, &wk) in w.iter().enumerate() {
                    ar[s + k] += wk * v;
                }
            }
        }
    }
}

/// The Keys cubic convolution kernel with `a = -0.5` (Catmull-Rom), support [-2, 2].
fn keys_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Downsampling of images `(C, H, W)` by an integer `factor` to `(C, H / f, W / f)`; see
/// the module docs.
#[derive(Clone, Debug)]
pub struct Downsample {
    method: Method,
    factor: usize,
    shape: Vec<usize>,
    out_shape: Vec<usize>,
    rows: AxisWeights,
    cols: AxisWeights,
    /// Eigendecompositions of `R R^T` and `C C^T`, computed on the first bicubic
    /// `solve_regularized`.
    gram_eigen: OnceLock<(SymEigen, SymEigen)>,
}

/// A symmetric eigendecomposition `M = V diag(values) V^T` (columns of `vectors`).
#[derive(Clone, Debug)]
struct SymEigen {
    vectors: Array2<f64>,
    values: Vec<f64>,
}

/// `M M^T` (`out x out`) of one axis, in f64.
fn gram(a: &AxisWeights) -> Array2<f64> {
    let mut g = Array2::zeros((a.out, a.out));
    for p in 0..a.out {
        for q in 0..a.out {
            let (sp, sq) = (a.start[p], a.start[q]);
            let lo = sp.max(sq);
            let hi = (sp + a.weights[p].len()).min(sq + a.weights[q].len());
            g[[p, q]] = (lo..hi)
                .map(|k| a.weights[p][k - sp] as f64 * a.weights[q][k - sq] as f64)
                .sum();
        }
    }
    g
}

/// Cyclic Jacobi eigendecomposition of a symmetric matrix, to f64 round-off. O(n^3) per
/// sweep, ~10 sweeps: fine for the few-hundred-row Gram matrices here.
fn jacobi_eigen(mut a: Array2<f64>) -> SymEigen {
    let n = a.nrows();
    let mut v = Array2::<f64>::eye(n);
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..60 {
        let mut off = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                off += a[[p, q]] * a[[p, q]];
            }
        }
        if off <= 1e-30 * total.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[[p, q]];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[[q, q]] - a[[p, p]]) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[[k, p]], a[[k, q]]);
                    a[[k, p]] = c * akp - s * akq;
                    a[[k, q]] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[[p, k]], a[[q, k]]);
                    a[[p, k]] = c * apk - s * aqk;
                    a[[q, k]] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[[k, p]], v[[k, q]]);
                    v[[k, p]] = c * vkp - s * vkq;
                    v[[k, q]] = s * vkp + c * vkq;
                }
            }
        }
    }
    SymEigen {
        values: (0..n).map(|i| a[[i, i]]).collect(),
        vectors: v,
    }
}

impl Downsample {
    /// Downsampling of images of `shape = (C, H, W)` by `factor` (>= 1, dividing `H` and
    /// `W`) with `method`.
    pub fn new(shape: &[usize], factor: usize, method: Method) -> Result<Self> {
        let (c, h, w) = crate::error::validate::image_shape(OP, shape)?;
        if factor == 0 {
            return Err(Error::param(
                OP,
                "factor",
                "must be a positive integer, got 0",
            ));
        }
        if h % factor != 0 || w % factor != 0 {
            return Err(Error::param(
                OP,
                "factor",
                format!(
                    "must divide the image's height and width: {factor} does not divide {h}x{w} \
                     (crop or pad the image to a multiple of {factor})"
                ),
            ));
        }
        let (ho, wo) = (h / factor, w / factor);
        let (rows, cols) = match method {
            Method::AvgPool => (
                AxisWeights::boxes(ho, factor),
                AxisWeights::boxes(wo, factor),
            ),
            Method::Bicubic => (AxisWeights::bicubic(h, ho), AxisWeights::bicubic(w, wo)),
        };
        Ok(Downsample {
            method,
            factor,
            shape: vec![c, h, w],
            out_shape: vec![c, ho, wo],
            rows,
            cols,
            gram_eigen: OnceLock::new(),
        })
    }

    pub fn method(&self) -> Method {
        self.method
    }

    pub fn factor(&self) -> usize {
        self.factor
    }

    /// The per-axis weights (rows = H axis, cols = W axis).
    pub fn axis_weights(&self) -> (&AxisWeights, &AxisWeights) {
        (&self.rows, &self.cols)
    }

    /// Runs `f` on every channel pair `(input, output)` in parallel.
    fn per_channel(
        &self,
        x: ArrayViewD<f32>,
        mut y: ArrayViewMutD<f32>,
        f: impl Fn(ArrayView2<f32>, ArrayViewMut2<f32>) + Sync,
    ) {
        let (yh, yw) = (y.shape()[1], y.shape()[2]);
        let outs: Vec<Array2<f32>> = (0..x.shape()[0])
            .into_par_iter()
            .map(|c| {
                let mut o = Array2::zeros((yh, yw));
                if let Ok(xc) = x.index_axis(Axis(0), c).into_dimensionality() {
                    f(xc, o.view_mut());
                }
                o
            })
            .collect();
        for (mut yc, o) in y.axis_iter_mut(Axis(0)).zip(outs) {
            yc.assign(&o.into_dyn());
        }
    }

    /// `coef A^T A x` for average pooling: each block replaced by its mean divided by `f^2`
    /// (times `coef`).
    fn pool_normal(&self, x: ArrayViewD<f32>, mut out: ArrayViewMutD<f32>, coef: f32) {
        let f = self.factor;
        let f2 = (f * f) as f32;
        let s = coef / (f2 * f2);
        for (xc, mut oc) in x.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
            let (h, w) = (xc.shape()[0], xc.shape()[1]);
            for bi in (0..h).step_by(f) {
                for bj in (0..w).step_by(f) {
                    let mut sum = 0.0f32;
                    for i in bi..bi + f {
                        for j in bj..bj + f {
                            sum += xc[[i, j]];
                        }
                    }
                    let v = sum * s;
                    for i in bi..bi + f {
                        for j in bj..bj + f {
                            oc[[i, j]] = v;
                        }
                    }
                }
            }
        }
    }
}

impl LinearOperator for Downsample {
    fn name(&self) -> String {
        format!("sr({}, x{})", self.method.label(), self.factor)
    }
    fn domain_shape(&self) -> &[usize] {
        &self.shape
    }
    fn range_shape(&self) -> &[usize] {
        &self.out_shape
    }
    fn apply(&self, x: ArrayViewD<f32>, y: ArrayViewMutD<f32>) {
        let (ho, w) = (self.out_shape[1], self.shape[2]);
        self.per_channel(x, y, |xc, yc| {
            let mut t = Array2::zeros((ho, w));
            self.rows.rows(xc, t.view_mut());
            self.cols.cols(t.view(), yc);
        });
    }
    fn adjoint(&self, y: ArrayViewD<f32>, x: ArrayViewMutD<f32>) {
        let (ho, w) = (self.out_shape[1], self.shape[2]);
        self.per_channel(y, x, |yc, xc| {
            let mut t = Array2::zeros((ho, w));
            self.cols.cols_t(yc, t.view_mut());
            self.rows.rows_t(t.view(), xc);
        });
    }
    /// Closed form for average pooling (block means / f^2); generic for bicubic.
    fn normal(&self, x: ArrayViewD<f32>, mut out: ArrayViewMutD<f32>) {
        match self.method {
            Method::AvgPool => self.pool_normal(x, out, 1.0),
            Method::Bicubic => {
                let mut y = ArrayD::zeros(IxDyn(&self.out_shape));
                self.apply(x, y.view_mut());
                self.adjoint(y.view(), out.view_mut());
            }
        }
    }
    /// `(A^T A + gamma I)^-1 rhs` for `gamma > 0` (`None` otherwise), by Woodbury:
    /// `(1/gamma) (rhs - A^T (gamma I + A A^T)^-1 A rhs)`.
    /// - Average pooling: `A A^T = I / f^2`, so this is `(1/gamma) (rhs - A^T A rhs /
    ///   (gamma + 1/f^2))`.
    /// - Bicubic: `A A^T = (R R^T) ⊗ (C C^T)` acts on a low-resolution channel `Y` as
    ///   `(R R^T) Y (C C^T)`; with the eigendecompositions `R R^T = U L U^T` and
    ///   `C C^T = V M V^T` (computed once, on the first call, by Jacobi in f64),
    ///   `(gamma I + A A^T)^-1 Y = U [(U^T Y V) / (gamma + l_i m_j)] V^T`.
    fn solve_regularized(&self, gamma: f32, rhs: ArrayViewD<f32>) -> Option<ArrayD<f32>> {
        if !gamma.is_finite() || gamma <= 0.0 {
            return None;
        }
        if self.method == Method::AvgPool {
            let f2 = (self.factor * self.factor) as f32;
            let mut p = ArrayD::zeros(IxDyn(&self.shape));
            self.pool_normal(rhs.view(), p.view_mut(), 1.0 / (gamma + 1.0 / f2));
            return Some((&rhs - &p).mapv(|v| v / gamma));
        }
        let (eu, ev) = self.gram_eigen.get_or_init(|| {
            (
                jacobi_eigen(gram(&self.rows)),
                jacobi_eigen(gram(&self.cols)),
            )
        });
        let g = gamma as f64;
        let mut y = ArrayD::zeros(IxDyn(&self.out_shape));
        self.apply(rhs.view(), y.view_mut());
        for mut yc in y.axis_iter_mut(Axis(0)) {
            let y64 = yc.mapv(|v| v as f64);
            let y64 = match y64.into_dimensionality::<ndarray::Ix2>() {
                Ok(a) => a,
                Err(_) => return None,
            };
            let mut z = eu.vectors.t().dot(&y64).dot(&ev.vectors);
            for ((i, j), v) in z.indexed_iter_mut() {
                *v /= g + eu.values[i] * ev.values[j];
            }
            let z = eu.vectors.dot(&z).dot(&ev.vectors.t());
            yc.iter_mut()
                .zip(z.iter())
                .for_each(|(o, &v)| *o = v as f32);
        }
        let mut back = ArrayD::zeros(IxDyn(&self.shape));
        self.adjoint(y.view(), back.view_mut());
        Some((&rhs - &back).mapv(|v| v / gamma))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::{
        adjoint_test, normal_mismatch, random_array, solve_regularized_residual, LinearOperatorExt,
    };

    #[test]
    fn adjoint_is_exact_for_both_methods_and_many_shapes() {
        for &(c, h, w, f) in &[
            (1, 8, 8, 2),
            (3, 12, 8, 4),
            (1, 9, 15, 3),
            (3, 16, 16, 8),
            (2, 10, 6, 2),
            (1, 7, 7, 1),
        ] {
            for m in [Method::AvgPool, Method::Bicubic] {
                let op = Downsample::new(&[c, h, w], f, m).unwrap();
                adjoint_test(&op, 4)
                    .verdict(&format!("{m:?} {c}x{h}x{w} /{f}"), 1e-5)
                    .unwrap();
            }
        }
    }

    #[test]
    fn avgpool_matches_naive_block_means() {
        for &(c, h, w, f) in &[(1, 8, 8, 2), (3, 12, 8, 4), (2, 9, 6, 3)] {
            let op = Downsample::new(&[c, h, w], f, Method::AvgPool).unwrap();
            let x = random_array(&[c, h, w], 2, "x");
            let y = op.apply_to(x.view()).unwrap();
            assert_eq!(y.shape(), &[c, h / f, w / f]);
            for ch in 0..c {
                for i in 0..h / f {
                    for j in 0..w / f {
                        let mut s = 0.0f64;
                        for a in 0..f {
                            for b in 0..f {
                                s += x[[ch, i * f + a, j * f + b]] as f64;
                            }
                        }
                        let want = s / (f * f) as f64;
                        // f^2 <= 16 f32 additions of O(1) values: error ~1e-6.
                        assert!((y[[ch, i, j]] as f64 - want).abs() < 1e-5);
                    }
                }
            }
        }
    }

    #[test]
    fn avgpool_closed_forms_match_generic() {
        for &(c, h, w, f) in &[(1, 8, 8, 2), (3, 12, 8, 4)] {
            let op = Downsample::new(&[c, h, w], f, Method::AvgPool).unwrap();
            let x = random_array(&[c, h, w], 8, "x");
            // Same sums in a different order: a few ulps.
            let err = normal_mismatch(&op, 8);
            assert!(err < 1e-6, "normal differs by {err}");
            for gamma in [1e-2f32, 0.5] {
                // Condition number <= (1/f^2 + gamma) / gamma <= 26 here: residual ~1e-5.
                let err = solve_regularized_residual(&op, gamma, 8).unwrap();
                assert!(err < 1e-4, "gamma {gamma}: residual {err}");
            }
            assert!(op.solve_regularized(0.0, x.view()).is_none());
        }
    }

    #[test]
    fn bicubic_solve_inverts_the_regularized_normal_operator() {
        for &(c, h, w, f) in &[(1, 8, 8, 2), (3, 12, 16, 4), (2, 9, 15, 3)] {
            let op = Downsample::new(&[c, h, w], f, Method::Bicubic).unwrap();
            let x = random_array(&[c, h, w], 6, "x");
            for gamma in [0.05f32, 0.5] {
                let err = solve_regularized_residual(&op, gamma, 6).unwrap();
                // ||A||^2 <= ~1.2 (weights sum to 1 with small negative lobes), so the
                // condition number is <= ~25 at gamma = 0.05 and the f32 parts (A, A^T)
                // leave a residual ~25 * 1e-6.
                assert!(err < 1e-4, "{c}x{h}x{w} /{f} gamma {gamma}: residual {err}");
            }
            assert!(op.solve_regularized(0.0, x.view()).is_none());
        }
    }

    #[test]
    fn jacobi_diagonalises_a_symmetric_matrix() {
        let m = Array2::from_shape_fn((7, 7), |(i, j)| 1.0 / (1.0 + i as f64 + j as f64));
        let e = jacobi_eigen(m.clone());
        let d = Array2::from_diag(&ndarray::Array1::from(e.values.clone()));
        let r = e.vectors.dot(&d).dot(&e.vectors.t()) - &m;
        assert!(r.iter().all(|v| v.abs() < 1e-12));
        let o = e.vectors.t().dot(&e.vectors) - Array2::<f64>::eye(7);
        assert!(o.iter().all(|v| v.abs() < 1e-12));
    }

    /// The test image of the Pillow golden values (exact in f32).
    fn golden_image(h: usize, w: usize) -> ArrayD<f32> {
        ArrayD::from_shape_fn(IxDyn(&[1, h, w]), |ix| {
            let (i, j) = (ix[1], ix[2]);
            ((i * 7 + j * 13) % 17) as f32 / 16.0 - ((i * j) % 5) as f32 / 8.0
        })
    }

    #[test]
    fn bicubic_matches_pillow() {
        // Golden values from Pillow 13.0.0, computed once with:
        //   import numpy as np; from PIL import Image
        //   def img(h, w):
        //       i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        //       return (((i*7 + j*13) % 17) / 16.0 - ((i*j) % 5) / 8.0).astype(np.float32)
        //   Image.fromarray(img(h, w)).resize((w // f, h // f), Image.BICUBIC)  # mode 'F'
        // Pillow accumulates in f64 and stores f32; we accumulate in f32 over <= 32 taps of
        // O(1) values, so ~1e-6 apart; values are printed to 7 significant digits. 2e-6
        // catches any wrong tap, centre or edge rule (those change values by > 1e-3).
        let cases: [(usize, usize, usize, &[f32]); 3] = [
            (
                12,
                16,
                2,
                &[
                    0.4086862, 0.4048238, 0.3167433, 0.3410215, 0.3269635, 0.4272512, 0.3547509,
                    0.4443287, 0.2742484, 0.1621743, 0.3122662, 0.1787816, 0.2603265, 0.3012545,
                    0.0823361, 0.4195752, 0.2991571, 0.3587774, 0.4579668, 0.226263, 0.4355383,
                    0.3826094, 0.2543465, 0.4354192, 0.4134639, 0.1363587, 0.3897381, 0.2596502,
                    0.1540136, 0.4233036, 0.1511212, 0.3646072, 0.2866502, 0.1440069, 0.3931013,
                    0.1990434, 0.274021, 0.3654267, 0.1953105, 0.3141932, 0.4304525, 0.2948933,
                    0.4391334, 0.443864, 0.223877, 0.4910894, 0.3266405, 0.2772514,
                ],
            ),
            (
                12,
                16,
                4,
                &[
                    0.3191118, 0.2919377, 0.3127268, 0.3324195, 0.2921031, 0.3038658, 0.3102845,
                    0.2972572, 0.2963304, 0.3301659, 0.3177857, 0.2896378,
                ],
            ),
            (
                9,
                15,
                3,
                &[
                    0.3598444, 0.2970528, 0.2922325, 0.3443191, 0.2700444, 0.2643976, 0.3528045,
                    0.2555965, 0.3556237, 0.2459137, 0.2914667, 0.3121341, 0.2385905, 0.3506707,
                    0.1501889,
                ],
            ),
        ];
        for (h, w, f, want) in cases {
            let op = Downsample::new(&[1, h, w], f, Method::Bicubic).unwrap();
            let y = op.apply_to(golden_image(h, w).view()).unwrap();
            assert_eq!(y.len(), want.len());
            for (k, (&got, &exp)) in y.iter().zip(want).enumerate() {
                assert!(
                    (got - exp).abs() < 2e-6,
                    "{h}x{w} /{f} at {k}: got {got}, Pillow {exp}"
                );
            }
        }
    }

    #[test]
    fn bicubic_weights_are_normalised_and_preserve_constants() {
        let a = AxisWeights::bicubic(64, 16);
        for w in &a.weights {
            let s: f32 = w.iter().sum();
            assert!((s - 1.0).abs() < 1e-6);
            // The stretched kernel spans 4 f = 16 taps in the interior.
            assert!(w.len() <= 17);
        }
        let op = Downsample::new(&[3, 16, 24], 4, Method::Bicubic).unwrap();
        let y = op
            .apply_to(ArrayD::from_elem(IxDyn(&[3, 16, 24]), 0.25).view())
            .unwrap();
        assert!(y.iter().all(|&v| (v - 0.25).abs() < 1e-6));
    }

    #[test]
    fn factor_must_divide_the_image() {
        let e = Downsample::new(&[1, 10, 12], 4, Method::AvgPool).unwrap_err();
        assert!(e.to_string().contains("factor"), "{e}");
        assert!(Downsample::new(&[1, 8, 8], 0, Method::Bicubic).is_err());
        assert!(Downsample::new(&[8, 8], 2, Method::Bicubic).is_err());
    }
}
