//! Blur: circular convolution of every channel of an image with one normalised kernel.
//!
//! Conventions:
//! - Domain and range are images `(C, H, W)`; the same kernel blurs every channel.
//! - The kernel `k` (`kh x kw`, at most `H x W`) is normalised to sum 1 at construction. Its
//!   centre is the pixel `(kh / 2, kw / 2)` (the middle pixel of an odd-sized kernel), so a
//!   symmetric kernel does not shift the image.
//! - Boundary condition: periodic (circular). The operator is the true convolution
//!   `y[c, m, n] = sum_{i, j} k[i, j] x[c, (m - i + kh/2) mod H, (n - j + kw/2) mod W]`,
//!   computed in Fourier space with FFTs planned once at construction and the kernel's
//!   spectrum precomputed. For a symmetric kernel convolution and correlation coincide.
//! - The adjoint is the correlation with the same kernel (conjugate spectrum); `normal`
//!   multiplies by `|K|^2` and `solve_regularized` divides by `|K|^2 + gamma`, both in
//!   Fourier space.
//! - Two real channels are transformed together as one complex image (the kernel is real),
//!   so a colour image costs two FFT pairs, not three.
//!
//! Kernel builders: [`gaussian`], [`uniform`], [`motion`] (random camera-shake trajectories,
//! as in the DPS benchmarks) and any user kernel given to [`Blur::new`].
//!
//! # Boundaries ([`Boundary`], [`with_boundary`])
//! Photos from elsewhere are not periodic. Besides the circular [`Blur`]:
//! - [`Boundary::Valid`] ([`ValidBlur`]): only the outputs whose kernel footprint lies
//!   inside the image, `y[c, m, n] = sum_{i, j} k[i, j] x[c, m + kh - 1 - i, n + kw - 1 - j]`
//!   for `m < H - kh + 1`, `n < W - kw + 1`: the measurement is smaller than the image by
//!   the kernel size minus one (what a camera records of a larger scene; the reconstruction
//!   recovers the full `H x W` scene, its border constrained by fewer measurements);
//! - [`Boundary::Reflect`]: the image extended by half-sample symmetric reflection
//!   (`... c b a | a b c ...`, scipy.ndimage's `reflect`, MATLAB's `symmetric`) by
//!   `kh - 1 - kh/2` rows above, `kh/2` below (likewise for columns), then the valid blur:
//!   range = domain, no wrap-around. Built as [`ValidBlur`] after [`ReflectPad`], whose
//!   adjoint folds the padding back onto the pixels it copied.

use ndarray::{Array2, ArrayD, ArrayViewD, ArrayViewMutD, Axis, IxDyn};
use num_complex::Complex32;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::error::{validate, Error, Result};
use crate::fft::Fft2;
use crate::linear::LinearOperator;
use crate::rng;

const OP: &str = "blur";

/// Checks that a kernel size is odd and at least 1.
fn check_odd_size(key: &str, size: usize) -> Result<()> {
    if size == 0 || size.is_multiple_of(2) {
        Err(Error::param(
            OP,
            key,
            format!("must be an odd positive integer (the kernel has a middle pixel), got {size}"),
        ))
    } else {
        Ok(())
    }
}

/// An isotropic Gaussian kernel `exp(-(di^2 + dj^2) / (2 sigma^2))` sampled at the integer
/// offsets from the middle pixel of a `size x size` grid (odd `size`), normalised to sum 1.
/// `sigma` is in pixels. Choose `size >= 2 * ceil(3 sigma) + 1` to avoid a visible
/// truncation (DPS uses `sigma = 3`, `size = 61`).
pub fn gaussian(sigma: f64, size: usize) -> Result<Array2<f32>> {
    validate::positive(OP, "sigma", sigma)?;
    check_odd_size("size", size)?;
    let c = (size / 2) as f64;
    let k = Array2::from_shape_fn((size, size), |(i, j)| {
        let (di, dj) = (i as f64 - c, j as f64 - c);
        (-(di * di + dj * dj) / (2.0 * sigma * sigma)).exp()
    });
    Ok(normalised(k))
}

/// A uniform (box) kernel of `size x size` pixels (odd `size`), each weight `1 / size^2`.
pub fn uniform(size: usize) -> Result<Array2<f32>> {
    check_odd_size("size", size)?;
    Ok(Array2::from_elem((size, size), 1.0 / (size * size) as f32))
}

/// A random camera-shake kernel of `size x size` pixels (odd `size`), seeded.
///
/// The idea is that of the `motionblur` package used by the DPS benchmarks (and of Boracchi
/// & Foi's camera-shake model): the camera follows a random 2-D trajectory during the
/// exposure, and the kernel is the time the trajectory spends over each pixel. Here the
/// trajectory is a walk of constant speed whose heading changes by a damped random angular
/// velocity, with occasional abrupt jerks. `intensity` in [0, 1] scales both the jitter
/// (angular noise and how often jerks happen) and the path length, so `intensity = 0`
/// gives a straight streak across about a third of the kernel and `intensity = 1` a long,
/// tangled trajectory.
///
/// The trajectory is centred on its centroid (so the kernel does not shift the image on
/// average), shrunk if needed to fit inside the kernel, rasterised by bilinear splatting of
/// points every quarter pixel along the path, and normalised to sum 1. All random draws are
/// made independently of `intensity`, so for a fixed seed increasing `intensity` deforms the
/// same trajectory.
pub fn motion(size: usize, intensity: f64, seed: u64) -> Result<Array2<f32>> {
    check_odd_size("size", size)?;
    validate::in_range(OP, "intensity", intensity, 0.0, 1.0)?;
    let mut kernel = Array2::<f64>::zeros((size, size));
    if size < 3 {
        kernel[[0, 0]] = 1.0;
        return Ok(kernel.mapv(|v| v as f32));
    }
    let mut r = rng::seeded(seed, "motion-kernel");
    let steps = 256usize;
    let mut heading: f64 = r.random::<f64>() * std::f64::consts::TAU;
    let length_draw: f64 = r.random();
    let mut omega = 0.0f64;
    let mut path = Vec::with_capacity(steps + 1);
    let (mut px, mut py) = (0.0f64, 0.0f64);
    path.push((px, py));
    for _ in 0..steps {
        let n: f64 = StandardNormal.sample(&mut r);
        let jerk_draw: f64 = r.random();
        let jerk: f64 = StandardNormal.sample(&mut r);
        // Damped angular velocity: smooth curvature whose strength grows with intensity.
        omega = 0.95 * omega + intensity * 0.015 * n;
        heading += omega;
        // Abrupt jerks, more frequent and larger for a shakier camera.
        if jerk_draw < 0.03 * intensity {
            heading += jerk * intensity * std::f64::consts::FRAC_PI_2;
        }
        px += heading.cos();
        py += heading.sin();
        path.push((px, py));
    }
    // Path length: from ~a third of the kernel's width (intensity 0) to ~twice it (1).
    let max_radius = (size / 2) as f64 - 1.0;
    let length = 2.0 * max_radius * (0.4 + 1.6 * intensity) * (0.7 + 0.3 * length_draw);
    let scale = length / steps as f64;
    let (mx, my) = path
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let (mx, my) = (mx / path.len() as f64, my / path.len() as f64);
    let mut pts: Vec<(f64, f64)> = path
        .iter()
        .map(|&(x, y)| ((x - mx) * scale, (y - my) * scale))
        .collect();
    let extent = pts
        .iter()
        .fold(0.0f64, |m, &(x, y)| m.max(x.abs()).max(y.abs()));
    if extent > max_radius {
        let s = max_radius / extent;
        pts.iter_mut().for_each(|p| *p = (p.0 * s, p.1 * s));
    }
    let c = (size / 2) as f64;
    for seg in pts.windows(2) {
        let ((x0, y0), (x1, y1)) = (seg[0], seg[1]);
        let len = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
        let n = ((len * 4.0).ceil() as usize).max(1);
        for s in 0..n {
            let t = (s as f64 + 0.5) / n as f64;
            let (x, y) = (c + x0 + t * (x1 - x0), c + y0 + t * (y1 - y0));
            // x is the column, y the row; bilinear splat with weight len / n.
            let (j0, i0) = (x.floor(), y.floor());
            let (fx, fy) = (x - j0, y - i0);
            let w = len / n as f64;
            for (di, wy) in [(0usize, 1.0 - fy), (1, fy)] {
                for (dj, wx) in [(0usize, 1.0 - fx), (1, fx)] {
                    let (i, j) = (i0 as usize + di, j0 as usize + dj);
                    if i < size && j < size {
                        kernel[[i, j]] += w * wx * wy;
                    }
                }
            }
        }
    }
    let total: f64 = kernel.sum();
    if total <= 0.0 {
        // A degenerate (zero-length) path: a delta at the centre.
        kernel[[size / 2, size / 2]] = 1.0;
        return Ok(kernel.mapv(|v| v as f32));
    }
    Ok(kernel.mapv(|v| (v / total) as f32))
}

/// Divides a kernel with a positive sum by that sum.
fn normalised(k: Array2<f64>) -> Array2<f32> {
    let s: f64 = k.sum();
    k.mapv(|v| (v / s) as f32)
}

/// What to multiply the spectrum by.
#[derive(Clone, Copy)]
enum Mode {
    Apply,
    Adjoint,
    Normal,
    Solve(f32),
}

/// Circular convolution of each channel of a `(C, H, W)` image with one normalised kernel.
/// See the module docs for the conventions.
#[derive(Debug)]
pub struct Blur {
    shape: Vec<usize>,
    kernel: Array2<f32>,
    label: String,
    fft: Fft2,
    /// The DFT of the kernel embedded circularly with its centre at (0, 0), divided by
    /// `H W` (the inverse FFT is unnormalised).
    spectrum: Vec<Complex32>,
    /// `|K|^2` (unscaled), for `normal` and `solve_regularized`.
    power: Vec<f32>,
}

impl Blur {
    /// A blur of images of `shape = (C, H, W)` by `kernel`, described as `label` in messages
    /// (e.g. `gaussian, sigma=3`).
    ///
    /// The kernel must be non-empty, finite, non-negative, with a positive sum, and no larger
    /// than the image (`kh <= H`, `kw <= W`); it is normalised to sum 1.
    pub fn new(shape: &[usize], kernel: Array2<f32>, label: &str) -> Result<Self> {
        let (c, h, w) = crate::error::validate::image_shape(OP, shape)?;
        let (kh, kw) = kernel.dim();
        if kh == 0 || kw == 0 {
            return Err(Error::param(OP, "kernel", "is empty"));
        }
        if kh > h || kw > w {
            return Err(Error::param(
                OP,
                "kernel",
                format!("is {kh}x{kw}, larger than the {h}x{w} image: expected at most {h}x{w}"),
            ));
        }
        if let Some(v) = kernel.iter().find(|v| !v.is_finite()) {
            return Err(Error::param(
                OP,
                "kernel",
                format!("contains a non-finite value ({v}): expected finite weights"),
            ));
        }
        if let Some(v) = kernel.iter().find(|&&v| v < 0.0) {
            return Err(Error::param(
                OP,
                "kernel",
                format!("contains a negative weight ({v}): expected non-negative weights"),
            ));
        }
        let sum: f64 = kernel.iter().map(|&v| v as f64).sum();
        if sum <= 0.0 {
            return Err(Error::param(
                OP,
                "kernel",
                "sums to zero: expected a positive total weight",
            ));
        }
        let kernel = normalised(kernel.mapv(|v| v as f64));
        let fft = Fft2::new(h, w);
        let mut buf = vec![Complex32::default(); h * w];
        let (ci, cj) = (kh / 2, kw / 2);
        for ((i, j), &v) in kernel.indexed_iter() {
            let m = (i + h - ci) % h;
            let n = (j + w - cj) % w;
            buf[m * w + n].re += v;
        }
        fft.forward(&mut buf);
        let power = buf.iter().map(|v| v.norm_sqr()).collect();
        let inv = 1.0 / (h * w) as f32;
        let spectrum = buf.iter().map(|v| v * inv).collect();
        Ok(Blur {
            shape: vec![c, h, w],
            kernel,
            label: label.to_string(),
            fft,
            spectrum,
            power,
        })
    }

    /// The normalised kernel.
    pub fn kernel(&self) -> &Array2<f32> {
        &self.kernel
    }

    /// Filters every channel of `x` into `y` with the multiplier of `mode`.
    fn filter(&self, x: ArrayViewD<f32>, mut y: ArrayViewMutD<f32>, mode: Mode) {
        let (c, h, w) = (self.shape[0], self.shape[1], self.shape[2]);
        let inv = 1.0 / (h * w) as f32;
        let pairs: Vec<Vec<Complex32>> = (0..c.div_ceil(2))
            .into_par_iter()
            .map(|p| {
                let a = x.index_axis(Axis(0), 2 * p);
                let mut buf: Vec<Complex32> = if 2 * p + 1 < c {
                    let b = x.index_axis(Axis(0), 2 * p + 1);
                    a.iter()
                        .zip(b.iter())
                        .map(|(&re, &im)| Complex32::new(re, im))
                        .collect()
                } else {
                    a.iter().map(|&re| Complex32::new(re, 0.0)).collect()
                };
                self.fft.forward(&mut buf);
                match mode {
                    Mode::Apply => buf
                        .iter_mut()
                        .zip(&self.spectrum)
                        .for_each(|(v, k)| *v *= k),
                    Mode::Adjoint => buf
                        .iter_mut()
                        .zip(&self.spectrum)
                        .for_each(|(v, k)| *v *= k.conj()),
                    Mode::Normal => buf
                        .iter_mut()
                        .zip(&self.power)
                        .for_each(|(v, p)| *v *= p * inv),
                    Mode::Solve(g) => buf
                        .iter_mut()
                        .zip(&self.power)
                        .for_each(|(v, p)| *v *= inv / (p + g)),
                }
                self.fft.inverse(&mut buf);
                buf
            })
            .collect();
        for (p, buf) in pairs.iter().enumerate() {
            for (v, z) in y.index_axis_mut(Axis(0), 2 * p).iter_mut().zip(buf) {
                *v = z.re;
            }
            if 2 * p + 1 < c {
                for (v, z) in y.index_axis_mut(Axis(0), 2 * p + 1).iter_mut().zip(buf) {
                    *v = z.im;
                }
            }
        }
    }
}

impl LinearOperator for Blur {
    fn name(&self) -> String {
        let (kh, kw) = self.kernel.dim();
        format!("blur({}, {kh}x{kw})", self.label)
    }
    fn domain_shape(&self) -> &[usize] {
        &self.shape
    }
    fn range_shape(&self) -> &[usize] {
        &self.shape
    }
    fn apply(&self, x: ArrayViewD<f32>, y: ArrayViewMutD<f32>) {
        self.filter(x, y, Mode::Apply);
    }
    fn adjoint(&self, y: ArrayViewD<f32>, x: ArrayViewMutD<f32>) {
        self.filter(y, x, Mode::Adjoint);
    }
    /// `A^T A x`: multiplication by `|K|^2` in Fourier space (one FFT pair, not two).
    fn normal(&self, x: ArrayViewD<f32>, out: ArrayViewMutD<f32>) {
        self.filter(x, out, Mode::Normal);
    }
    /// `(A^T A + gamma I)^-1 rhs`: division by `|K|^2 + gamma` in Fourier space. `None` for
    /// a negative or non-finite `gamma`, and for `gamma = 0` when the kernel's spectrum has
    /// (numerical) zeros, where the system is singular.
    fn solve_regularized(&self, gamma: f32, rhs: ArrayViewD<f32>) -> Option<ArrayD<f32>> {
        if !gamma.is_finite() || gamma < 0.0 {
            return None;
        }
        let min = self.power.iter().fold(f32::INFINITY, |m, &p| m.min(p));
        if min + gamma <= f32::EPSILON {
            return None;
        }
        let mut out = ArrayD::zeros(IxDyn(&self.shape));
        self.filter(rhs, out.view_mut(), Mode::Solve(gamma));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::{
        adjoint_test, normal_mismatch, random_array, solve_regularized_residual, LinearOperatorExt,
    };

    /// Direct spatial circular convolution, in f64, as the module docs define it.
    fn naive_blur(x: &ArrayD<f32>, k: &Array2<f32>) -> ArrayD<f64> {
        let (c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let (kh, kw) = k.dim();
        let mut y = ArrayD::<f64>::zeros(IxDyn(&[c, h, w]));
        for ch in 0..c {
            for m in 0..h {
                for n in 0..w {
                    let mut s = 0.0f64;
                    for i in 0..kh {
                        for j in 0..kw {
                            let mi = (m + h + kh / 2 - i) % h;
                            let nj = (n + w + kw / 2 - j) % w;
                            s += k[[i, j]] as f64 * x[[ch, mi, nj]] as f64;
                        }
                    }
                    y[[ch, m, n]] = s;
                }
            }
        }
        y
    }

    fn kernels(size: usize) -> Vec<(String, Array2<f32>)> {
        vec![
            ("gaussian".into(), gaussian(1.5, size).unwrap()),
            ("uniform".into(), uniform(size).unwrap()),
            ("motion".into(), motion(size, 0.5, 7).unwrap()),
            (
                "asymmetric".into(),
                Array2::from_shape_fn((size, size.max(2) - 1), |(i, j)| {
                    1.0 + (i * 3 + j * 7 % 5) as f32
                }),
            ),
        ]
    }

    #[test]
    fn adjoint_is_exact_for_every_kernel_and_shape() {
        for &(c, h, w) in &[(1, 8, 8), (3, 9, 7), (1, 16, 11), (3, 12, 12), (2, 5, 6)] {
            for (name, k) in kernels(5) {
                let op = Blur::new(&[c, h, w], k, &name).unwrap();
                adjoint_test(&op, 3)
                    .verdict(&format!("{name} {c}x{h}x{w}"), 1e-5)
                    .unwrap();
            }
        }
    }

    #[test]
    fn matches_direct_circular_convolution() {
        // f32 FFTs of sizes <= 16 on O(1) data: the round-off is ~1e-6 relative; 1e-5 of the
        // input's largest value leaves room while catching any shift, flip or scaling error.
        for &(c, h, w) in &[(1, 8, 8), (3, 9, 7), (2, 11, 16)] {
            for (name, k) in kernels(5) {
                let op = Blur::new(&[c, h, w], k, &name).unwrap();
                let x = random_array(&[c, h, w], 11, "x");
                let y = op.apply_to(x.view()).unwrap();
                let r = naive_blur(&x, op.kernel());
                let err = y
                    .iter()
                    .zip(r.iter())
                    .map(|(&a, &b)| (a as f64 - b).abs())
                    .fold(0.0, f64::max);
                assert!(err < 1e-5 * 4.0, "{name} {c}x{h}x{w}: max error {err}");
            }
        }
    }

    #[test]
    fn symmetric_kernel_does_not_shift_and_preserves_mean() {
        let op = Blur::new(&[1, 16, 16], gaussian(1.0, 7).unwrap(), "g").unwrap();
        let mut x = ArrayD::zeros(IxDyn(&[1, 16, 16]));
        x[[0, 5, 9]] = 1.0;
        let y = op.apply_to(x.view()).unwrap();
        let (mut best, mut at) = (f32::MIN, (0, 0));
        for i in 0..16 {
            for j in 0..16 {
                if y[[0, i, j]] > best {
                    best = y[[0, i, j]];
                    at = (i, j);
                }
            }
        }
        assert_eq!(at, (5, 9));
        assert!((y.sum() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn closed_form_normal_and_solve_match_generic() {
        for &(c, h, w) in &[(1, 9, 8), (3, 8, 7)] {
            for (name, k) in kernels(3) {
                let op = Blur::new(&[c, h, w], k, &name).unwrap();
                // Both paths are f32 FFT round trips of O(1) data: ~1e-6.
                let err = normal_mismatch(&op, 5);
                assert!(err < 1e-5, "{name}: normal differs by {err}");
                // The system's condition number is at most 1/gamma = 20, so the residual of
                // an f32 solution is ~20 * 1e-6.
                let err = solve_regularized_residual(&op, 0.05, 5).unwrap();
                assert!(err < 1e-4, "{name}: (A^T A + g) x - b = {err}");
            }
        }
        let op = Blur::new(&[1, 8, 8], uniform(3).unwrap(), "u").unwrap();
        let rhs = ArrayD::zeros(IxDyn(&[1, 8, 8]));
        assert!(op.solve_regularized(-1.0, rhs.view()).is_none());
    }

    #[test]
    fn kernel_builders_are_normalised_and_validated() {
        for k in [gaussian(3.0, 61).unwrap(), uniform(9).unwrap()] {
            assert!((k.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-5);
        }
        let g = gaussian(2.0, 9).unwrap();
        assert!(g[[4, 4]] > g[[4, 5]] && g[[4, 5]] > g[[4, 6]]);
        assert!((g[[3, 4]] - g[[4, 5]]).abs() < 1e-7);
        assert!(gaussian(0.0, 9).is_err());
        assert!(gaussian(1.0, 8).is_err());
        assert!(uniform(0).is_err());
        assert!(motion(9, 1.5, 0).is_err());
    }

    #[test]
    fn bad_user_kernels_are_rejected() {
        let s = [1, 8, 8];
        assert!(Blur::new(&s, Array2::zeros((0, 3)), "k").is_err());
        assert!(Blur::new(&s, Array2::zeros((3, 3)), "k").is_err());
        assert!(Blur::new(&s, Array2::from_elem((3, 3), f32::NAN), "k").is_err());
        let mut neg = Array2::from_elem((3, 3), 1.0);
        neg[[0, 0]] = -0.5;
        assert!(Blur::new(&s, neg, "k").is_err());
        let e = Blur::new(&s, Array2::from_elem((9, 3), 1.0), "k").unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        assert!(Blur::new(&[8, 8], Array2::from_elem((3, 3), 1.0), "k").is_err());
        // A user kernel is normalised.
        let op = Blur::new(&s, Array2::from_elem((3, 3), 2.0), "k").unwrap();
        assert!((op.kernel().sum() - 1.0).abs() < 1e-6);
    }

    /// Total variance of the kernel's mass about its centroid, in pixels^2.
    fn spread(k: &Array2<f32>) -> f64 {
        let (mut m, mut mi, mut mj) = (0.0, 0.0, 0.0);
        for ((i, j), &v) in k.indexed_iter() {
            m += v as f64;
            mi += v as f64 * i as f64;
            mj += v as f64 * j as f64;
        }
        let (ci, cj) = (mi / m, mj / m);
        k.indexed_iter()
            .map(|((i, j), &v)| v as f64 * ((i as f64 - ci).powi(2) + (j as f64 - cj).powi(2)))
            .sum::<f64>()
            / m
    }

    #[test]
    fn motion_kernels_are_normalised_seeded_and_spread_with_intensity() {
        for seed in 0..4 {
            let k = motion(31, 0.5, seed).unwrap();
            assert!(k.iter().all(|&v| v >= 0.0 && v.is_finite()));
            assert!((k.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-5);
            assert_eq!(k, motion(31, 0.5, seed).unwrap());
            assert_ne!(k, motion(31, 0.5, seed + 100).unwrap());
            // Centred on its centroid: the centre of mass is within a pixel of the middle.
            let (mut mi, mut mj) = (0.0, 0.0);
            for ((i, j), &v) in k.indexed_iter() {
                mi += v as f64 * i as f64;
                mj += v as f64 * j as f64;
            }
            assert!(
                (mi - 15.0).abs() < 1.0 && (mj - 15.0).abs() < 1.0,
                "{mi} {mj}"
            );
        }
        let mean_spread = |intensity: f64| {
            (0..8)
                .map(|s| spread(&motion(31, intensity, s).unwrap()))
                .sum::<f64>()
                / 8.0
        };
        let (lo, mid, hi) = (mean_spread(0.1), mean_spread(0.5), mean_spread(0.9));
        assert!(lo < mid && mid < hi, "spreads {lo} {mid} {hi}");
        // The kernel is neither a delta nor the whole square.
        assert!(lo > 1.0 && hi < 15.0 * 15.0, "spreads {lo} {hi}");
    }
}

/// How a blur treats the image's border.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boundary {
    /// Periodic: the image wraps around ([`Blur`]).
    Circular,
    /// Half-sample symmetric reflection; the measurement has the image's size.
    Reflect,
    /// No boundary: only the fully overlapping outputs; the measurement is smaller.
    Valid,
}

impl Boundary {
    /// Every boundary, in the order listed to users.
    pub const ALL: [Boundary; 3] = [Boundary::Circular, Boundary::Reflect, Boundary::Valid];

    /// `circular`, `reflect` or `valid`.
    pub fn name(self) -> &'static str {
        match self {
            Boundary::Circular => "circular",
            Boundary::Reflect => "reflect",
            Boundary::Valid => "valid",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Result<Boundary> {
        Boundary::ALL
            .into_iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| {
                Error::param(
                    OP,
                    "boundary",
                    format!("`{name}` is not one of circular, reflect, valid"),
                )
            })
    }

    /// The measurement shape of a blur of an image `(C, H, W)` by a `kh x kw` kernel.
    pub fn measurement_shape(self, image: &[usize], kernel: (usize, usize)) -> Vec<usize> {
        match self {
            Boundary::Valid => vec![
                image[0],
                (image[1] + 1).saturating_sub(kernel.0),
                (image[2] + 1).saturating_sub(kernel.1),
            ],
            _ => image.to_vec(),
        }
    }

    /// The image shape whose blur by a `kh x kw` kernel has `measurement` shape.
    pub fn image_shape(self, measurement: &[usize], kernel: (usize, usize)) -> Vec<usize> {
        match self {
            Boundary::Valid => vec![
                measurement[0],
                measurement[1] + kernel.0 - 1,
                measurement[2] + kernel.1 - 1,
            ],
            _ => measurement.to_vec(),
        }
    }
}

/// A blur of images of `shape = (C, H, W)` by `kernel` with the given boundary.
pub fn with_boundary(
    shape: &[usize],
    kernel: Array2<f32>,
    label: &str,
    boundary: Boundary,
) -> Result<Box<dyn LinearOperator>> {
    match boundary {
        Boundary::Circular => Ok(Box::new(Blur::new(shape, kernel, label)?)),
        Boundary::Valid => Ok(Box::new(ValidBlur::new(shape, kernel, label)?)),
        Boundary::Reflect => {
            let (c, h, w) = crate::error::validate::image_shape(OP, shape)?;
            let (kh, kw) = kernel.dim();
            let pad = ReflectPad::new(
                [c, h, w],
                [kh.saturating_sub(1) - kh / 2, kh / 2],
                [kw.saturating_sub(1) - kw / 2, kw / 2],
            );
            let padded = pad.range_shape().to_vec();
            let blur = ValidBlur::new(&padded, kernel, &format!("{label}, reflect"))?;
            Ok(Box::new(crate::linear::Composed::new(
                Box::new(blur),
                Box::new(pad),
            )?))
        }
    }
}

/// The valid part of a blur (see [`Boundary::Valid`]): the circular blur of the image,
/// cropped to the outputs that did not wrap; adjoint: zero-fill, then correlate.
#[derive(Debug)]
pub struct ValidBlur {
    blur: Blur,
    range: Vec<usize>,
    /// First kept row and column of the circular blur.
    offset: (usize, usize),
}

impl ValidBlur {
    /// The valid blur of images of `shape` by `kernel` (at most the image's size).
    pub fn new(shape: &[usize], kernel: Array2<f32>, label: &str) -> Result<Self> {
        let (kh, kw) = kernel.dim();
        let blur = Blur::new(shape, kernel, &format!("{label}, valid"))?;
        let range = Boundary::Valid.measurement_shape(shape, (kh, kw));
        // Output m of the circular blur reads rows m - i + kh/2 (i < kh): in range without
        // wrapping for m from kh - 1 - kh/2 to H - 1 - kh/2.
        Ok(ValidBlur {
            blur,
            range,
            offset: (kh - 1 - kh / 2, kw - 1 - kw / 2),
        })
    }
}

impl LinearOperator for ValidBlur {
    fn name(&self) -> String {
        self.blur.name()
    }
    fn domain_shape(&self) -> &[usize] {
        &self.blur.shape
    }
    fn range_shape(&self) -> &[usize] {
        &self.range
    }
    fn apply(&self, x: ArrayViewD<f32>, mut y: ArrayViewMutD<f32>) {
        let mut full = ArrayD::zeros(IxDyn(&self.blur.shape));
        self.blur.apply(x, full.view_mut());
        let (r0, c0) = self.offset;
        y.assign(&full.slice(ndarray::s![
            ..,
            r0..r0 + self.range[1],
            c0..c0 + self.range[2]
        ]));
    }
    fn adjoint(&self, y: ArrayViewD<f32>, x: ArrayViewMutD<f32>) {
        let mut full = ArrayD::zeros(IxDyn(&self.blur.shape));
        let (r0, c0) = self.offset;
        full.slice_mut(ndarray::s![
            ..,
            r0..r0 + self.range[1],
            c0..c0 + self.range[2]
        ])
        .assign(&y);
        self.blur.adjoint(full.view(), x);
    }
}

/// Half-sample symmetric padding of `(C, H, W)` images by `(top, bottom)` rows and
/// `(left, right)` columns (any amounts: the reflection repeats with period `2H`).
#[derive(Debug)]
pub struct ReflectPad {
    domain: Vec<usize>,
    range: Vec<usize>,
    rows: Vec<usize>,
    cols: Vec<usize>,
}

/// The source index of padded position `p` (offset by `before`) in a line of `n`.
fn reflect_index(p: usize, before: usize, n: usize) -> usize {
    let period = 2 * n as i64;
    let q = (p as i64 - before as i64).rem_euclid(period);
    if q < n as i64 {
        q as usize
    } else {
        (period - 1 - q) as usize
    }
}

impl ReflectPad {
    /// Padding of images `[c, h, w]` by `rows = [top, bottom]`, `cols = [left, right]`.
    pub fn new(shape: [usize; 3], rows: [usize; 2], cols: [usize; 2]) -> Self {
        let [c, h, w] = shape;
        let (ph, pw) = (h + rows[0] + rows[1], w + cols[0] + cols[1]);
        ReflectPad {
            domain: shape.to_vec(),
            range: vec![c, ph, pw],
            rows: (0..ph).map(|p| reflect_index(p, rows[0], h)).collect(),
            cols: (0..pw).map(|p| reflect_index(p, cols[0], w)).collect(),
        }
    }
}

impl LinearOperator for ReflectPad {
    fn name(&self) -> String {
        "reflect-pad".into()
    }
    fn domain_shape(&self) -> &[usize] {
        &self.domain
    }
    fn range_shape(&self) -> &[usize] {
        &self.range
    }
    fn apply(&self, x: ArrayViewD<f32>, mut y: ArrayViewMutD<f32>) {
        for c in 0..self.domain[0] {
            for (pi, &i) in self.rows.iter().enumerate() {
                for (pj, &j) in self.cols.iter().enumerate() {
                    y[[c, pi, pj]] = x[[c, i, j]];
                }
            }
        }
    }
    fn adjoint(&self, y: ArrayViewD<f32>, mut x: ArrayViewMutD<f32>) {
        x.fill(0.0);
        for c in 0..self.domain[0] {
            for (pi, &i) in self.rows.iter().enumerate() {
                for (pj, &j) in self.cols.iter().enumerate() {
                    x[[c, i, j]] += y[[c, pi, pj]];
                }
            }
        }
    }
}

#[cfg(test)]
mod boundary_tests {
    use super::*;
    use crate::linear::{adjoint_test, random_array, LinearOperatorExt};

    /// Direct linear convolution of an image extended by `value_at` (None = outside).
    fn naive(x: &ArrayD<f32>, k: &Array2<f32>, boundary: Boundary) -> ArrayD<f64> {
        let (c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let (kh, kw) = k.dim();
        let out = boundary.measurement_shape(&[c, h, w], (kh, kw));
        let sum: f64 = k.iter().map(|&v| v as f64).sum();
        let mut y = ArrayD::<f64>::zeros(IxDyn(&out));
        for ch in 0..c {
            for m in 0..out[1] {
                for n in 0..out[2] {
                    let mut s = 0.0;
                    for i in 0..kh {
                        for j in 0..kw {
                            // Valid output (m, n) is centred on image pixel
                            // (m + kh - 1 - kh/2, n + kw - 1 - kw/2); reflect on (m, n).
                            let (ci, cj) = match boundary {
                                Boundary::Valid => (m + kh - 1 - kh / 2, n + kw - 1 - kw / 2),
                                _ => (m, n),
                            };
                            let si = ci as i64 + (kh / 2) as i64 - i as i64;
                            let sj = cj as i64 + (kw / 2) as i64 - j as i64;
                            let fold = |p: i64, n: usize| {
                                let period = 2 * n as i64;
                                let q = p.rem_euclid(period);
                                if q < n as i64 {
                                    q as usize
                                } else {
                                    (period - 1 - q) as usize
                                }
                            };
                            let (a, b) = (fold(si, h), fold(sj, w));
                            if boundary == Boundary::Valid {
                                assert_eq!((a as i64, b as i64), (si, sj), "valid read outside");
                            }
                            s += k[[i, j]] as f64 / sum * x[[ch, a, b]] as f64;
                        }
                    }
                    y[[ch, m, n]] = s;
                }
            }
        }
        y
    }

    #[test]
    fn reflect_and_valid_match_direct_convolution_and_pass_the_adjoint_test() {
        // f32 FFTs on O(1) data: 1e-5 as in the circular test; an off-by-one offset, a flip
        // or a wrong reflection (numpy's `reflect`, without the edge sample) fails by ~0.1.
        let kernel = Array2::from_shape_fn((5, 3), |(i, j)| 1.0 + (i * 3 + j * 7 % 5) as f32);
        for boundary in [Boundary::Valid, Boundary::Reflect] {
            for &(c, h, w) in &[(1, 9, 8), (2, 12, 7), (3, 6, 5)] {
                let op = with_boundary(&[c, h, w], kernel.clone(), "test", boundary).unwrap();
                assert_eq!(
                    op.range_shape(),
                    boundary
                        .measurement_shape(&[c, h, w], kernel.dim())
                        .as_slice()
                );
                let x = random_array(&[c, h, w], 5, "x");
                let y = op.apply_to(x.view()).unwrap();
                let r = naive(&x, &kernel, boundary);
                for (a, b) in y.iter().zip(r.iter()) {
                    assert!((*a as f64 - b).abs() < 1e-5, "{boundary:?}: {a} vs {b}");
                }
                adjoint_test(op.as_ref(), 2)
                    .verdict(&format!("{boundary:?} {c}x{h}x{w}"), 1e-5)
                    .unwrap();
            }
        }
        assert_eq!(
            Boundary::Valid.image_shape(&[1, 5, 6], (5, 3)),
            vec![1, 9, 8]
        );
        assert!(Boundary::parse("wrap").is_err());
    }
}
