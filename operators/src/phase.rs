//! Fourier phase retrieval: `y = |F P x|`, and its classical solvers (Fienup's hybrid
//! input-output with error reduction, and gradient descent on the squared residual).
//!
//! Conventions:
//! - Domain: a real single-channel image `(1, H, W)`.
//! - `P` zero-pads the image into an oversampled `Ho x Wo` grid with
//!   `Ho = round(oversampling * H)`, `Wo = round(oversampling * W)`; the image occupies rows
//!   `top .. top + H` and columns `left .. left + W` with `top = (Ho - H) / 2`,
//!   `left = (Wo - W) / 2` (floor division), i.e. it sits in the centre of the grid. With the
//!   default `oversampling = 2` the image is padded by `H/2` on each side (for even `H`)
//!   into a `2H x 2W` grid: the Fourier magnitudes then sample the image's autocorrelation
//!   without aliasing, the classical condition for (generic) uniqueness. (The DPS reference
//!   code pads a 256 x 256 image by 64 pixels per side, a `1.5x` grid: `oversampling = 1.5`.)
//! - `F` is the centred orthonormal 2-D DFT ([`Fft2::forward_centered`]): the zero
//!   frequency sits at index `(Ho/2, Wo/2)`, and `F` is unitary, so `||y||_2 = ||x||_2`
//!   (Parseval) and the magnitudes do not grow with the grid size (the DC magnitude is
//!   `|sum x| / sqrt(Ho Wo)`).
//! - Range: the magnitudes `(1, Ho, Wo)`, in the image's units.
//! - VJP: for `y = |z|`, `z = F P x`, `J^T v = P^T Re(F^H (v ⊙ z / |z|))`. Where `z = 0` the
//!   magnitude is not differentiable; the VJP uses `z / |z| := 0` there, the minimum-norm
//!   element of the subdifferential of `|.|` at 0 (the unit disc).
//!
//! Phase retrieval has trivial ambiguities: `x`, its translations (that keep it inside the
//! support), `-x` and its 180-degree rotation `x(-r)` (the conjugate twin) all give the same
//! `y`. With the box support used here and an image that reaches all four edges of its
//! box, the translations are excluded; nonnegativity excludes `-x`; the twin remains.

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use num_complex::Complex32;
use rand::Rng as _;

use crate::error::{check_finite, check_shape, Error, Result};
use crate::fft::Fft2;
use crate::forward::ForwardOperator;
use crate::rng;

/// `x -> |F P x|`: Fourier magnitudes of a zero-padded real image (see the module docs for
/// the padding, placement and scaling).
#[derive(Clone, Debug)]
pub struct FourierPhaseRetrieval {
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    top: usize,
    left: usize,
    oversampling: f32,
    fft: Fft2,
    /// For each image pixel (row-major `H x W`), its index in the FFT frame: the padded
    /// grid after `ifftshift`, so that the plain FFT of that buffer is the centred DFT up to
    /// the output `fftshift` (no copies for the input shift).
    pixel_index: Vec<usize>,
    /// For each plain-FFT output index, its index in the centred measurement (`fftshift`).
    out_index: Vec<usize>,
    domain: Vec<usize>,
    range: Vec<usize>,
}

const OP: &str = "phase";

impl FourierPhaseRetrieval {
    /// Phase retrieval on images of `shape = (1, H, W)` with the grid oversampled by
    /// `oversampling` per axis (`1 <= oversampling <= 16`; 2 is the usual choice).
    pub fn new(shape: &[usize], oversampling: f32) -> Result<Self> {
        let (h, w) = match shape {
            [1, h, w] if *h > 0 && *w > 0 => (*h, *w),
            _ => {
                return Err(Error::param(
                    OP,
                    "shape",
                    format!(
                        "must be a single-channel image (1, H, W) with H, W >= 1; got {shape:?}"
                    ),
                ))
            }
        };
        if !(oversampling.is_finite() && (1.0..=16.0).contains(&oversampling)) {
            return Err(Error::param(
                OP,
                "oversampling",
                format!(
                    "must lie in [1, 16] (the padded grid is oversampling x the image per \
                     axis; 2 is usual), got {oversampling}"
                ),
            ));
        }
        let ho = ((oversampling as f64 * h as f64).round() as usize).max(h);
        let wo = ((oversampling as f64 * w as f64).round() as usize).max(w);
        Self::build(h, w, ho, wo, oversampling)
    }

    /// The operator on images of `shape = (1, H, W)` with an explicit padded grid
    /// `Ho x Wo` (`H <= Ho <= 16 H`, likewise for `W`), e.g. to rebuild an operator from its
    /// domain and range shapes. The image is placed as in [`FourierPhaseRetrieval::new`].
    pub fn with_padded_shape(shape: &[usize], ho: usize, wo: usize) -> Result<Self> {
        let (h, w) = match shape {
            [1, h, w] if *h > 0 && *w > 0 => (*h, *w),
            _ => {
                return Err(Error::param(
                    OP,
                    "shape",
                    format!(
                        "must be a single-channel image (1, H, W) with H, W >= 1; got {shape:?}"
                    ),
                ))
            }
        };
        if ho < h || wo < w || ho > 16 * h || wo > 16 * w {
            return Err(Error::param(
                OP,
                "padded shape",
                format!(
                    "must be between the image ({h}, {w}) and 16 times it per axis; got ({ho}, {wo})"
                ),
            ));
        }
        Self::build(h, w, ho, wo, ho as f32 / h as f32)
    }

    fn build(h: usize, w: usize, ho: usize, wo: usize, oversampling: f32) -> Result<Self> {
        let (top, left) = ((ho - h) / 2, (wo - w) / 2);
        // ifftshift moves centred index i to (i + ho - ho/2) % ho.
        let pixel_index = (0..h * w)
            .map(|p| {
                let (i, j) = (p / w + top, p % w + left);
                ((i + ho - ho / 2) % ho) * wo + (j + wo - wo / 2) % wo
            })
            .collect();
        // fftshift moves plain index k to (k + ho/2) % ho.
        let out_index = (0..ho * wo)
            .map(|k| {
                let (i, j) = (k / wo, k % wo);
                ((i + ho / 2) % ho) * wo + (j + wo / 2) % wo
            })
            .collect();
        Ok(FourierPhaseRetrieval {
            pixel_index,
            out_index,
            h,
            w,
            ho,
            wo,
            top,
            left,
            oversampling,
            fft: Fft2::new(ho, wo),
            domain: vec![1, h, w],
            range: vec![1, ho, wo],
        })
    }

    /// The padded grid `(Ho, Wo)`, which is also the measurement's spatial shape.
    pub fn padded_shape(&self) -> (usize, usize) {
        (self.ho, self.wo)
    }

    /// Where the image's top-left pixel sits in the padded grid: `(top, left)`.
    pub fn offset(&self) -> (usize, usize) {
        (self.top, self.left)
    }

    /// The oversampling factor the operator was built with.
    pub fn oversampling(&self) -> f32 {
        self.oversampling
    }

    /// `1 / sqrt(Ho Wo)`, the orthonormal DFT's scale.
    fn scale(&self) -> f32 {
        1.0 / ((self.ho * self.wo) as f32).sqrt()
    }

    /// The support (the image box) as a mask over the FFT frame.
    fn support_mask(&self) -> Vec<bool> {
        let mut s = vec![false; self.ho * self.wo];
        for &k in &self.pixel_index {
            s[k] = true;
        }
        s
    }

    /// `P x` in the FFT frame (see `pixel_index`), as complex numbers.
    fn pad(&self, x: ArrayViewD<f32>) -> Vec<Complex32> {
        let mut g = vec![Complex32::default(); self.ho * self.wo];
        for (&k, &v) in self.pixel_index.iter().zip(x.iter()) {
            g[k] = Complex32::new(v, 0.0);
        }
        g
    }

    /// `P^T Re(g)` for `g` in the FFT frame, as a `(1, H, W)` image.
    fn crop_real(&self, g: &[Complex32]) -> ArrayD<f32> {
        let data = self.pixel_index.iter().map(|&k| g[k].re).collect();
        ArrayD::from_shape_vec(IxDyn(&[1, self.h, self.w]), data)
            .expect("phase: domain shape matches the pixel count")
    }

    /// The unnormalised plain FFT of `P x` in the FFT frame: `z_plain[k] = sqrt(Ho Wo)
    /// (F P x)[out_index[k]]`.
    fn transform_plain(&self, x: ArrayViewD<f32>) -> Vec<Complex32> {
        let mut z = self.pad(x);
        self.fft.forward(&mut z);
        z
    }

    /// The complex field `z = F P x` (row-major `Ho x Wo`, DC at `(Ho/2, Wo/2)`).
    pub fn transform(&self, x: ArrayViewD<f32>) -> Vec<Complex32> {
        let plain = self.transform_plain(x);
        let s = self.scale();
        let mut z = vec![Complex32::default(); plain.len()];
        for (v, &o) in plain.iter().zip(&self.out_index) {
            z[o] = v * s;
        }
        z
    }

    /// Checks a measurement's shape and values; returns its magnitudes as a flat vector,
    /// negative values (from additive noise) clamped to 0.
    fn check_measurement(&self, y: ArrayViewD<f32>) -> Result<Vec<f32>> {
        check_shape(&self.name(), "measurement", &self.range, y.shape())?;
        check_finite("phase retrieval measurement", y.iter())?;
        Ok(y.iter().map(|&v| v.max(0.0)).collect())
    }
}

impl ForwardOperator for FourierPhaseRetrieval {
    fn name(&self) -> String {
        format!("phase(oversampling={})", self.oversampling)
    }
    fn domain_shape(&self) -> &[usize] {
        &self.domain
    }
    fn range_shape(&self) -> &[usize] {
        &self.range
    }
    fn forward(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        let z = self.transform_plain(x);
        let s = self.scale();
        let mut y = vec![0.0f32; z.len()];
        for (v, &o) in z.iter().zip(&self.out_index) {
            y[o] = v.norm() * s;
        }
        ArrayD::from_shape_vec(IxDyn(&self.range), y).expect("phase: range matches the grid")
    }
    /// `P^T Re F^H (v ⊙ z / |z|)`, computed in the FFT frame: with `F = S_out fft S_in /
    /// sqrt(N)` (the shifts are permutations), `F^H w = S_in^T ifft_unnormalised(S_out^T w)
    /// / sqrt(N)`, and `z / |z|` has the plain transform's phase.
    fn vjp(&self, x: ArrayViewD<f32>, cotangent: ArrayViewD<f32>) -> ArrayD<f32> {
        let mut z = self.transform_plain(x);
        let v = cotangent
            .as_slice()
            .map(|s| s.to_vec())
            .unwrap_or_else(|| cotangent.iter().copied().collect());
        let s = self.scale();
        for (zk, &o) in z.iter_mut().zip(&self.out_index) {
            let m = zk.norm();
            *zk = if m > 0.0 {
                *zk * (v[o] * s / m)
            } else {
                Complex32::default()
            };
        }
        self.fft.inverse(&mut z);
        self.crop_real(&z)
    }
}

/// Settings of [`hio_with`].
#[derive(Clone, Debug)]
pub struct HioOptions {
    /// Hybrid input-output iterations.
    pub iters: usize,
    /// Error-reduction iterations run after HIO (they remove the small out-of-support
    /// residue that HIO leaves and settle on the nearest consistent point).
    pub er_iters: usize,
    /// HIO feedback parameter, in (0, 1]: Fienup's usual 0.9.
    pub beta: f32,
    /// Also enforce `x >= 0` (in addition to the support), for images that cannot be
    /// negative. Without it `-x` is a solution too.
    pub nonnegative: bool,
    /// At most this many independent random starts; the result with the smallest
    /// measurement residual wins. HIO often stagnates (twin-image superpositions, stripes:
    /// Fienup & Wackerman 1986), and a stagnated run is recognisable by its residual, so
    /// restarts are the simple, reliable remedy.
    pub restarts: usize,
    /// Stop restarting once a start reaches this relative residual `||A(x) - y|| / ||y||`
    /// (noiseless data: converged runs reach ~1e-5, stagnated ones stay above ~2e-3; with
    /// noisy data every start runs and the best one is returned).
    pub tolerance: f64,
}

impl Default for HioOptions {
    fn default() -> Self {
        HioOptions {
            iters: 500,
            er_iters: 50,
            beta: 0.9,
            nonnegative: true,
            restarts: 4,
            tolerance: 1e-3,
        }
    }
}

/// Fienup's hybrid input-output with the default settings ([`HioOptions::default`]) but
/// `iters` HIO iterations: support (the padding box) and nonnegativity constraints,
/// `beta = 0.9`, then 50 error-reduction iterations, up to 4 random starts (stopping at a
/// relative residual of 1e-3). Returns the `(1, H, W)` estimate.
pub fn hio(
    op: &FourierPhaseRetrieval,
    y: ArrayViewD<f32>,
    iters: usize,
    seed: u64,
) -> Result<ArrayD<f32>> {
    hio_with(
        op,
        y,
        &HioOptions {
            iters,
            ..HioOptions::default()
        },
        seed,
    )
}

/// Fienup's hybrid input-output algorithm followed by error reduction.
///
/// On the padded grid, with `g'` = the real part of `F^H (y ⊙ F g / |F g|)` (the current
/// estimate with its Fourier magnitudes replaced by the measured ones; phase 0 where
/// `F g = 0`), HIO sets `g <- g'` where `g'` satisfies the constraints (inside the support,
/// and `>= 0` if `nonnegative`) and `g <- g - beta g'` elsewhere; error reduction sets
/// `g <- g'` inside the support (clamped at 0 if `nonnegative`) and 0 elsewhere. Each start
/// is a seeded uniform random image on the support with the measurement's energy.
/// Negative measured magnitudes (from additive noise) are treated as 0.
pub fn hio_with(
    op: &FourierPhaseRetrieval,
    y: ArrayViewD<f32>,
    opts: &HioOptions,
    seed: u64,
) -> Result<ArrayD<f32>> {
    let mag = op.check_measurement(y.view())?;
    if !(opts.beta.is_finite() && opts.beta > 0.0 && opts.beta <= 1.0) {
        return Err(Error::param(
            "hio",
            "beta",
            format!("must lie in (0, 1], got {}", opts.beta),
        ));
    }
    let n = op.ho * op.wo;
    let support = op.support_mask();
    // The measured magnitudes in plain-FFT order, scaled so that one magnitude
    // projection is `ifft_unnormalised(z * mag_plain / |z|)`: sqrt(N) for the orthonormal
    // scale, 1/N for the unnormalised inverse.
    let s = op.scale();
    let mag_plain: Vec<f32> = op.out_index.iter().map(|&o| mag[o] * s).collect();
    let energy = mag.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    let mut r = rng::seeded(seed, "phase-hio");
    let mut best: Option<(f64, Vec<f32>)> = None;
    let mut gp = vec![Complex32::default(); n];
    for _ in 0..opts.restarts.max(1) {
        // Random start on the support, scaled to the measured energy (Parseval).
        let mut g: Vec<f32> = support
            .iter()
            .map(|&s| if s { r.random::<f32>() } else { 0.0 })
            .collect();
        let e0 = g.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        if e0 > 0.0 {
            let s = (energy / e0) as f32;
            g.iter_mut().for_each(|v| *v *= s);
        }
        let total = opts.iters + opts.er_iters;
        for it in 0..total {
            magnitude_projection(op, &g, &mag_plain, &mut gp);
            let hio_phase = it < opts.iters;
            for k in 0..n {
                let v = gp[k].re;
                let ok = support[k] && (!opts.nonnegative || v >= 0.0);
                g[k] = if hio_phase {
                    if ok {
                        v
                    } else {
                        g[k] - opts.beta * v
                    }
                } else if support[k] {
                    if opts.nonnegative {
                        v.max(0.0)
                    } else {
                        v
                    }
                } else {
                    0.0
                };
            }
        }
        // Score the start by its residual.
        let gc: Vec<Complex32> = g.iter().map(|&v| Complex32::new(v, 0.0)).collect();
        let x = op.crop_real(&gc);
        let res = residual(op, x.view(), y.view())?;
        if best.as_ref().is_none_or(|(b, _)| res < *b) {
            best = Some((res, x.into_raw_vec_and_offset().0));
        }
        if res < opts.tolerance {
            break;
        }
    }
    let (_, data) = best.expect("at least one start");
    Ok(ArrayD::from_shape_vec(IxDyn(&op.domain), data).expect("domain-shaped"))
}

/// `gp <- F^H (y ⊙ F g / |F g|)` on the padded grid in the FFT frame (phase 0 where
/// `F g = 0`), with `mag_plain` the measured magnitudes in plain-FFT order times
/// `1 / sqrt(N)` (see [`hio_with`]).
fn magnitude_projection(
    op: &FourierPhaseRetrieval,
    g: &[f32],
    mag_plain: &[f32],
    gp: &mut [Complex32],
) {
    for (o, &v) in gp.iter_mut().zip(g) {
        *o = Complex32::new(v, 0.0);
    }
    op.fft.forward(gp);
    for (z, &m) in gp.iter_mut().zip(mag_plain) {
        let a = z.norm();
        *z = if a > 0.0 {
            *z * (m / a)
        } else {
            Complex32::new(m, 0.0)
        };
    }
    op.fft.inverse(gp);
}

/// Gradient descent on `f(x) = ||A(x) - y||^2 / 2` with the VJP, `x <- x - step J^T (A(x) - y)`,
/// from a seeded uniform random start with the measurement's energy.
///
/// `step = 1` is the natural choice: `F` is unitary and `P` an isometry, and a unit step
/// is exactly the unconstrained error-reduction (Gerchberg-Saxton) update
/// `x <- P^T Re F^H (y ⊙ z / |z|)`, which never increases `f`. Without the support and
/// nonnegativity constraints it stagnates more often than [`hio`]; it is the baseline that
/// diffusion samplers' likelihood steps build on. `step` must be in (0, 2).
pub fn gradient_descent(
    op: &FourierPhaseRetrieval,
    y: ArrayViewD<f32>,
    iters: usize,
    step: f32,
    seed: u64,
) -> Result<ArrayD<f32>> {
    op.check_measurement(y.view())?;
    if !(step.is_finite() && step > 0.0 && step < 2.0) {
        return Err(Error::param(
            "gradient_descent",
            "step",
            format!("must lie in (0, 2) (1 is the natural step), got {step}"),
        ));
    }
    let energy = y.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    let mut r = rng::seeded(seed, "phase-gd");
    let mut x = ArrayD::from_shape_simple_fn(IxDyn(&op.domain), || r.random::<f32>());
    let e0 = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    if e0 > 0.0 {
        let s = (energy / e0) as f32;
        x.mapv_inplace(|v| v * s);
    }
    for _ in 0..iters {
        let mut res = op.forward(x.view());
        res -= &y;
        let g = op.vjp(x.view(), res.view());
        x.scaled_add(-step, &g);
    }
    Ok(x)
}

/// The relative measurement residual `||A(x) - y|| / ||y||` (in f64), shapes checked.
pub fn residual(op: &FourierPhaseRetrieval, x: ArrayViewD<f32>, y: ArrayViewD<f32>) -> Result<f64> {
    check_shape(&op.name(), "input", &op.domain, x.shape())?;
    check_shape(&op.name(), "measurement", &op.range, y.shape())?;
    let ax = op.forward(x);
    let num: f64 = ax
        .iter()
        .zip(y.iter())
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let den: f64 = y.iter().map(|&b| (b as f64).powi(2)).sum();
    Ok((num / den.max(f64::MIN_POSITIVE)).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::vjp_mismatch;
    use crate::linear::{dot, random_array};
    use std::f64::consts::PI;

    /// Naive centred orthonormal DFT magnitudes of the explicitly padded image:
    /// `|sum_{m,n} xp[m,n] exp(-2 pi i ((k - Ho/2) m / Ho + (l - Wo/2) n / Wo))| / sqrt(Ho Wo)`
    /// (the input-side centring only changes the phase, so the magnitudes do not depend on
    /// it).
    fn naive(x: &ArrayD<f32>, ho: usize, wo: usize, top: usize, left: usize) -> Vec<f64> {
        let (h, w) = (x.shape()[1], x.shape()[2]);
        let mut out = vec![0.0; ho * wo];
        for k in 0..ho {
            for l in 0..wo {
                let (mut re, mut im) = (0.0f64, 0.0f64);
                for m in 0..h {
                    for n in 0..w {
                        let (mm, nn) = ((m + top) as f64, (n + left) as f64);
                        let ph = -2.0
                            * PI
                            * ((k as f64 - (ho / 2) as f64) * mm / ho as f64
                                + (l as f64 - (wo / 2) as f64) * nn / wo as f64);
                        let v = x[[0, m, n]] as f64;
                        re += v * ph.cos();
                        im += v * ph.sin();
                    }
                }
                out[k * wo + l] = (re * re + im * im).sqrt() / ((ho * wo) as f64).sqrt();
            }
        }
        out
    }

    /// A nonnegative test image: a ramp `0.5 + i/H` on the upper-left triangle
    /// `i/H + j/W < 1`, zero elsewhere. It touches all four edges of its box (so no
    /// translation stays inside the support), it is not centro-symmetric (its twin is the
    /// lower-right triangle), and its sharp edge keeps the high-frequency magnitudes strong.
    /// In a sweep (this code and an independent numpy HIO agree) HIO converged from 30 of
    /// 30 random starts on it, against 2-20% on smooth blob images with the same box
    /// support, where it stagnates in twin superpositions (Fienup & Wackerman 1986).
    fn test_image(h: usize, w: usize) -> ArrayD<f32> {
        ArrayD::from_shape_fn(IxDyn(&[1, h, w]), |ix| {
            let (i, j) = (ix[1] as f32 / h as f32, ix[2] as f32 / w as f32);
            if i + j < 1.0 {
                0.5 + i
            } else {
                0.0
            }
        })
    }

    fn rot180(x: &ArrayD<f32>) -> ArrayD<f32> {
        let (h, w) = (x.shape()[1], x.shape()[2]);
        ArrayD::from_shape_fn(IxDyn(&[1, h, w]), |ix| x[[0, h - 1 - ix[1], w - 1 - ix[2]]])
    }

    fn rel_err(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
        let num: f64 = a
            .iter()
            .zip(b)
            .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
            .sum();
        let den: f64 = b.iter().map(|&q| (q as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    /// Relative error up to the ambiguities left by the support and nonnegativity: the
    /// image and its twin (180-degree rotation in the box).
    fn err_up_to_twin(est: &ArrayD<f32>, truth: &ArrayD<f32>) -> f64 {
        rel_err(est, truth).min(rel_err(est, &rot180(truth)))
    }

    #[test]
    fn forward_matches_naive_dft() {
        // f32 FFT against an f64 naive sum: errors are ~1e-7 * log2(N) * ||x||_1 / sqrt(N);
        // 1e-5 of the largest magnitude leaves a wide margin and still catches any wrong
        // scale, placement or frequency ordering (those change entries by O(1)).
        for &(h, w, ov) in &[(3, 5, 2.0f32), (4, 4, 1.5), (5, 4, 2.0), (6, 3, 1.0)] {
            let op = FourierPhaseRetrieval::new(&[1, h, w], ov).unwrap();
            let x = random_array(&[1, h, w], 3, "x");
            let y = op.forward(x.view());
            let (ho, wo) = op.padded_shape();
            let (top, left) = op.offset();
            let r = naive(&x, ho, wo, top, left);
            let ymax = r.iter().cloned().fold(0.0, f64::max);
            for (a, b) in y.iter().zip(&r) {
                assert!(
                    (*a as f64 - b).abs() < 1e-5 * ymax,
                    "{h}x{w} x{ov}: {a} vs {b}"
                );
            }
            assert_eq!(op.range_shape(), &[1, ho, wo]);
        }
        let op = FourierPhaseRetrieval::new(&[1, 8, 6], 2.0).unwrap();
        assert_eq!(op.padded_shape(), (16, 12));
        assert_eq!(op.offset(), (4, 3));
        let op = FourierPhaseRetrieval::new(&[1, 7, 5], 2.0).unwrap();
        assert_eq!(op.padded_shape(), (14, 10));
        assert_eq!(op.offset(), (3, 2));
        let op = FourierPhaseRetrieval::new(&[1, 7, 9], 1.5).unwrap();
        let again = FourierPhaseRetrieval::with_padded_shape(&[1, 7, 9], 11, 14).unwrap();
        assert_eq!(op.padded_shape(), (11, 14));
        assert_eq!(again.padded_shape(), (11, 14));
        assert_eq!(again.offset(), op.offset());
        assert!(FourierPhaseRetrieval::with_padded_shape(&[1, 7, 9], 6, 14).is_err());
    }

    #[test]
    fn parseval_and_dc() {
        let op = FourierPhaseRetrieval::new(&[1, 9, 12], 2.0).unwrap();
        let x = random_array(&[1, 9, 12], 5, "x");
        let y = op.forward(x.view());
        let (nx, ny) = (dot(x.view(), x.view()), dot(y.view(), y.view()));
        assert!((nx - ny).abs() < 1e-5 * nx, "{nx} vs {ny}");
        // `transform` is the centred field whose magnitudes are `forward`.
        let z = op.transform(x.view());
        for (a, b) in z.iter().zip(y.iter()) {
            assert!((a.norm() - b).abs() < 1e-6);
        }
        // DC at (Ho/2, Wo/2) equals |sum x| / sqrt(Ho Wo).
        let s: f64 = x.iter().map(|&v| v as f64).sum();
        let dc = y[[0, 9, 12]] as f64;
        assert!((dc - s.abs() / (18.0f64 * 24.0).sqrt()).abs() < 1e-5);
    }

    #[test]
    fn vjp_matches_finite_differences() {
        // A smooth point: a random positive image, whose transform stays well away from 0
        // (a smooth image would have tiny high-frequency magnitudes, where |z| curves
        // sharply). Central differences with h = 3e-3 were measured at <= 1e-4 relative
        // mismatch here (halving h shrinks it 4x, the O(h^2) truncation signature); 1e-3
        // leaves margin for f32 rounding and still fails for a wrong crop, scale or sign.
        for &(h, w, ov) in &[(8, 8, 2.0f32), (7, 9, 1.5), (5, 6, 2.0)] {
            let op = FourierPhaseRetrieval::new(&[1, h, w], ov).unwrap();
            let x = random_array(&[1, h, w], 77, "x").mapv(|v| v.abs() + 0.5);
            for seed in 0..3 {
                let m = vjp_mismatch(&op, x.view(), 3e-3, seed);
                assert!(m < 1e-3, "{h}x{w}: vjp mismatch {m}");
            }
        }
    }

    #[test]
    fn vjp_satisfies_euler_identity_and_is_zero_safe() {
        // |F P x| is positively 1-homogeneous, so J(x) x = A(x) and hence
        // <J^T v, x> = <v, A(x)> for every v: an exact identity (up to f32 rounding).
        let op = FourierPhaseRetrieval::new(&[1, 10, 7], 2.0).unwrap();
        let x = random_array(&[1, 10, 7], 1, "x");
        let v = random_array(&[1, 20, 14], 2, "v");
        let lhs = dot(op.vjp(x.view(), v.view()).view(), x.view());
        let rhs = dot(v.view(), op.forward(x.view()).view());
        assert!(
            (lhs - rhs).abs() < 1e-4 * rhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
        // At x = 0 every z is 0: the VJP is the zero subgradient, not NaN.
        let z = ArrayD::zeros(IxDyn(&[1, 10, 7]));
        let g = op.vjp(z.view(), v.view());
        assert!(g.iter().all(|&a| a == 0.0));
    }

    #[test]
    fn hio_recovers_a_small_image_up_to_the_twin() {
        // Noiseless 16x16 and 11x13, oversampling 2, support + nonnegativity, beta 0.9,
        // 300 HIO + 50 ER iterations, default restarts (4, stopping at residual 1e-3).
        // Converged runs reach ~1e-6 relative error; stagnated ones sit at 0.1-0.3. The
        // bound 1e-3 (up to the twin) separates the two with a wide margin.
        for &(h, w) in &[(16, 16), (11, 13)] {
            let truth = test_image(h, w);
            let op = FourierPhaseRetrieval::new(&[1, h, w], 2.0).unwrap();
            let y = op.forward(truth.view());
            for seed in 0..4 {
                let est = hio(&op, y.view(), 300, seed).unwrap();
                let e = err_up_to_twin(&est, &truth);
                let res = residual(&op, est.view(), y.view()).unwrap();
                assert!(
                    e < 1e-3,
                    "{h}x{w} seed {seed}: relative error {e} (residual {res})"
                );
                assert!(res < 1e-3, "{h}x{w} seed {seed}: residual {res}");
                assert!(est.iter().all(|&v| v >= 0.0));
            }
            // The bound is not vacuous: a handful of iterations is far from it.
            let short = HioOptions {
                iters: 3,
                er_iters: 0,
                restarts: 1,
                ..HioOptions::default()
            };
            let est = hio_with(&op, y.view(), &short, 0).unwrap();
            assert!(err_up_to_twin(&est, &truth) > 1e-2);
        }
    }

    #[test]
    fn gradient_descent_reduces_the_residual() {
        let truth = test_image(12, 12);
        let op = FourierPhaseRetrieval::new(&[1, 12, 12], 2.0).unwrap();
        let y = op.forward(truth.view());
        let start = gradient_descent(&op, y.view(), 0, 1.0, 9).unwrap();
        let end = gradient_descent(&op, y.view(), 100, 1.0, 9).unwrap();
        let r0 = residual(&op, start.view(), y.view()).unwrap();
        let r1 = residual(&op, end.view(), y.view()).unwrap();
        assert!(r1 < 0.5 * r0, "residual {r0} -> {r1}");
        // Unit steps are error reduction: the residual never increases.
        let mut prev = r0;
        for it in [1, 2, 5, 10, 20] {
            let x = gradient_descent(&op, y.view(), it, 1.0, 9).unwrap();
            let r = residual(&op, x.view(), y.view()).unwrap();
            assert!(r <= prev * (1.0 + 1e-5), "iteration {it}: {prev} -> {r}");
            prev = r;
        }
    }

    #[test]
    fn bad_parameters_and_shapes_are_errors() {
        for ov in [0.5f32, f32::NAN, 17.0] {
            let e = FourierPhaseRetrieval::new(&[1, 8, 8], ov)
                .unwrap_err()
                .to_string();
            assert!(e.contains("oversampling"), "{e}");
        }
        for shape in [&[3usize, 8, 8][..], &[8, 8], &[1, 0, 8]] {
            let e = FourierPhaseRetrieval::new(shape, 2.0)
                .unwrap_err()
                .to_string();
            assert!(e.contains("shape"), "{e}");
        }
        let op = FourierPhaseRetrieval::new(&[1, 8, 8], 2.0).unwrap();
        let wrong = ArrayD::zeros(IxDyn(&[1, 8, 8]));
        assert!(hio(&op, wrong.view(), 5, 0).is_err());
        let mut nan = ArrayD::zeros(IxDyn(&[1, 16, 16]));
        nan[[0, 1, 1]] = f32::NAN;
        assert!(hio(&op, nan.view(), 5, 0).is_err());
        let y = ArrayD::zeros(IxDyn(&[1, 16, 16]));
        let e = hio_with(
            &op,
            y.view(),
            &HioOptions {
                beta: 1.5,
                ..HioOptions::default()
            },
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("beta"), "{e}");
        assert!(gradient_descent(&op, y.view(), 1, 2.5, 0).is_err());
    }
}
