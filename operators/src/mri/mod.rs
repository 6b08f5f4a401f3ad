//! Cartesian MRI: undersampled Fourier sampling of a complex image, single-coil and
//! multi-coil (SENSE).
//!
//! # Conventions
//! - Domain: a complex image `(2, H, W)`, the channel pair (re, im).
//! - Fourier transform: `F` is the centred orthonormal 2-D DFT of
//!   [`crate::fft::Fft2::forward_centered`], `F = fftshift . fft2 . ifftshift / sqrt(H W)`
//!   over both axes, i.e. `(F x)[k, l] = sum_{m,n} x[m, n]
//!   exp(-2 pi i ((k - H/2)(m - H/2) / H + (l - W/2)(n - W/2) / W)) / sqrt(H W)` with floor
//!   divisions. The image centre and the k-space centre (DC) both sit at index `(H/2, W/2)`,
//!   for odd sizes too (numpy's `fftshift` convention). `F` is unitary, so `F^H = F^-1`.
//! - Mask `M`: an `(H, W)` array in {0, 1} over the centred k-space grid (see [`masks`]).
//!   The readout runs along `H`; phase-encode lines are columns.
//! - Single coil ([`SingleCoilMri`]): `y = M . F x`, range `(2, H, W)` with unsampled
//!   entries exactly zero.
//! - Multi-coil ([`MultiCoilMri`], SENSE): `y_c = M . F (S_c . x)` for each coil `c`, range
//!   `(coils, 2, H, W)`; adjoint `x = sum_c conj(S_c) . F^H (M . y_c)`. The sensitivities
//!   live on the image grid (no shift is applied to them).
//! - Adjoints are in the real Euclidean inner product of the (re, im) pairs, which equals
//!   the Hermitian adjoint of the complex operator.
//! - Scaling: no extra factors; with a full mask and `sum_c |S_c|^2 = 1` both operators are
//!   isometries (`A^T A = I`).

pub mod calibration;
pub mod coils;
pub mod espirit;
pub mod masks;
pub mod walsh;

use ndarray::parallel::prelude::*;
use ndarray::{Array2, Array3, ArrayD, ArrayViewD, ArrayViewMutD, Axis, IxDyn};
use num_complex::Complex32;

use crate::error::{Error, Result};
use crate::fft::Fft2;
use crate::linear::LinearOperator;

pub use calibration::{calibration_region, detect_mask, Region};
pub use coils::{check_sensitivities, synthetic_sensitivities};
pub use espirit::{espirit, CoilMaps, EspiritSettings};
pub use masks::{make_mask, sampled_fraction, MaskKind};
pub use walsh::{walsh, WalshSettings};

/// Checks a mask: at least 1 x 1, every entry 0 or 1. Returns it row-major.
fn check_mask(op: &str, mask: &Array2<f32>) -> Result<Vec<f32>> {
    let (h, w) = mask.dim();
    if h == 0 || w == 0 {
        return Err(Error::param(
            op,
            "mask",
            format!("must be at least 1 x 1, got {h} x {w}"),
        ));
    }
    let bad = mask.iter().filter(|&&v| v != 0.0 && v != 1.0).count();
    if bad > 0 {
        return Err(Error::param(
            op,
            "mask",
            format!("must hold only 0 and 1, found {bad} other value(s)"),
        ));
    }
    Ok(mask.iter().copied().collect())
}

/// Reads a `(2, H, W)` view into row-major complex numbers (any memory layout).
fn read_pair(x: ArrayViewD<f32>) -> Vec<Complex32> {
    let re = x.index_axis(Axis(0), 0);
    let im = x.index_axis(Axis(0), 1);
    re.iter()
        .zip(im.iter())
        .map(|(&a, &b)| Complex32::new(a, b))
        .collect()
}

/// Writes row-major complex numbers into a `(2, H, W)` view.
fn write_pair(data: &[Complex32], mut y: ArrayViewMutD<f32>) {
    for (o, v) in y.index_axis_mut(Axis(0), 0).iter_mut().zip(data) {
        *o = v.re;
    }
    for (o, v) in y.index_axis_mut(Axis(0), 1).iter_mut().zip(data) {
        *o = v.im;
    }
}

/// Zeroes the unsampled entries of a `(2, H, W)` view.
fn mask_pair(mask: &[f32], mut y: ArrayViewMutD<f32>) {
    for mut ch in y.axis_iter_mut(Axis(0)) {
        for (o, &m) in ch.iter_mut().zip(mask) {
            if m == 0.0 {
                *o = 0.0;
            }
        }
    }
}

fn apply_mask(buf: &mut [Complex32], mask: &[f32]) {
    for (v, &m) in buf.iter_mut().zip(mask) {
        *v *= m;
    }
}

fn percent(mask: &[f32]) -> f64 {
    100.0 * mask.iter().filter(|&&m| m != 0.0).count() as f64 / mask.len().max(1) as f64
}

/// Single-coil Cartesian MRI: `y = M . F x` (module docs for the conventions).
///
/// Domain and range are `(2, H, W)`; unsampled k-space entries of `y` are zero.
#[derive(Clone, Debug)]
pub struct SingleCoilMri {
    mask: Array2<f32>,
    mask_flat: Vec<f32>,
    fft: Fft2,
    shape: [usize; 3],
}

impl SingleCoilMri {
    /// The operator for an `(H, W)` mask in {0, 1} (e.g. from [`make_mask`]).
    pub fn new(mask: Array2<f32>) -> Result<Self> {
        let mask_flat = check_mask("mri", &mask)?;
        let (h, w) = mask.dim();
        Ok(SingleCoilMri {
            mask,
            mask_flat,
            fft: Fft2::new(h, w),
            shape: [2, h, w],
        })
    }

    /// The sampling mask `(H, W)`.
    pub fn mask(&self) -> &Array2<f32> {
        &self.mask
    }
}

impl LinearOperator for SingleCoilMri {
    fn name(&self) -> String {
        format!(
            "mri(single-coil, {}x{}, {:.1}% sampled)",
            self.shape[1],
            self.shape[2],
            percent(&self.mask_flat)
        )
    }
    fn domain_shape(&self) -> &[usize] {
        &self.shape
    }
    fn range_shape(&self) -> &[usize] {
        &self.shape
    }
    fn apply(&self, x: ArrayViewD<f32>, y: ArrayViewMutD<f32>) {
        let mut buf = read_pair(x);
        self.fft.forward_centered(&mut buf);
        apply_mask(&mut buf, &self.mask_flat);
        write_pair(&buf, y);
    }
    fn adjoint(&self, y: ArrayViewD<f32>, x: ArrayViewMutD<f32>) {
        let mut buf = read_pair(y);
        apply_mask(&mut buf, &self.mask_flat);
        self.fft.inverse_centered(&mut buf);
        write_pair(&buf, x);
    }
    /// `F^H M F x` (M is binary, so `M^2 = M`): one transform pair, no range array.
    fn normal(&self, x: ArrayViewD<f32>, out: ArrayViewMutD<f32>) {
        let mut buf = read_pair(x);
        self.fft.forward_centered(&mut buf);
        apply_mask(&mut buf, &self.mask_flat);
        self.fft.inverse_centered(&mut buf);
        write_pair(&buf, out);
    }
    /// `F^H (M + gamma)^-1 F rhs`; `None` when `gamma` is not finite, or when `M + gamma`
    /// has a zero (`gamma = 0` with an undersampled mask, `gamma = -1`).
    fn solve_regularized(&self, gamma: f32, rhs: ArrayViewD<f32>) -> Option<ArrayD<f32>> {
        if !gamma.is_finite() || self.mask_flat.iter().any(|&m| m + gamma == 0.0) {
            return None;
        }
        let mut buf = read_pair(rhs);
        self.fft.forward_centered(&mut buf);
        for (v, &m) in buf.iter_mut().zip(&self.mask_flat) {
            *v /= m + gamma;
        }
        self.fft.inverse_centered(&mut buf);
        let mut out = ArrayD::zeros(IxDyn(&self.shape));
        write_pair(&buf, out.view_mut());
        Some(out)
    }
    fn restrict_to_measured(&self, y: ArrayViewMutD<f32>) {
        mask_pair(&self.mask_flat, y);
    }
}

/// Multi-coil Cartesian MRI (SENSE): `y_c = M . F (S_c . x)` (module docs).
///
/// Domain `(2, H, W)`, range `(coils, 2, H, W)`. Coils are processed in parallel (rayon).
#[derive(Clone, Debug)]
pub struct MultiCoilMri {
    mask: Array2<f32>,
    mask_flat: Vec<f32>,
    sens: Array3<Complex32>,
    /// Row-major copy of each coil's map.
    sens_flat: Vec<Vec<Complex32>>,
    fft: Fft2,
    domain: [usize; 3],
    range: [usize; 4],
}

impl MultiCoilMri {
    /// The operator for sensitivities `(coils, H, W)` (used as given: not normalised) and
    /// an `(H, W)` mask in {0, 1}. Fails when the shapes disagree or a value is not finite.
    pub fn new(sens: Array3<Complex32>, mask: Array2<f32>) -> Result<Self> {
        let mask_flat = check_mask("mri", &mask)?;
        let (h, w) = mask.dim();
        check_sensitivities(&sens, h, w)?;
        let coils = sens.dim().0;
        let sens_flat = sens
            .axis_iter(Axis(0))
            .map(|s| s.iter().copied().collect())
            .collect();
        Ok(MultiCoilMri {
            mask,
            mask_flat,
            sens,
            sens_flat,
            fft: Fft2::new(h, w),
            domain: [2, h, w],
            range: [coils, 2, h, w],
        })
    }

    /// The operator with `coils` synthetic maps ([`synthetic_sensitivities`]).
    pub fn synthetic(coils: usize, mask: Array2<f32>) -> Result<Self> {
        let (h, w) = mask.dim();
        Self::new(synthetic_sensitivities(coils, h, w)?, mask)
    }

    /// The number of coils.
    pub fn coils(&self) -> usize {
        self.range[0]
    }

    /// The sampling mask `(H, W)`.
    pub fn mask(&self) -> &Array2<f32> {
        &self.mask
    }

    /// The sensitivity maps `(coils, H, W)`.
    pub fn sensitivities(&self) -> &Array3<Complex32> {
        &self.sens
    }

    /// `M . F (S_c . x)` for one coil.
    fn coil_forward(&self, c: usize, x: &[Complex32]) -> Vec<Complex32> {
        let mut buf: Vec<Complex32> = x
            .iter()
            .zip(&self.sens_flat[c])
            .map(|(a, s)| a * s)
            .collect();
        self.fft.forward_centered(&mut buf);
        apply_mask(&mut buf, &self.mask_flat);
        buf
    }

    /// `conj(S_c) . F^H (M . k)` for one coil, in place.
    fn coil_backward(&self, c: usize, buf: &mut [Complex32]) {
        apply_mask(buf, &self.mask_flat);
        self.fft.inverse_centered(buf);
        for (v, s) in buf.iter_mut().zip(&self.sens_flat[c]) {
            *v *= s.conj();
        }
    }

    /// Sums per-coil images in coil order (deterministic whatever the thread count).
    fn sum_coils(&self, parts: Vec<Vec<Complex32>>, out: ArrayViewMutD<f32>) {
        let mut acc = vec![Complex32::default(); self.domain[1] * self.domain[2]];
        for p in parts {
            for (a, v) in acc.iter_mut().zip(p) {
                *a += v;
            }
        }
        write_pair(&acc, out);
    }
}

impl LinearOperator for MultiCoilMri {
    fn name(&self) -> String {
        format!(
            "mri({} coils, {}x{}, {:.1}% sampled)",
            self.range[0],
            self.domain[1],
            self.domain[2],
            percent(&self.mask_flat)
        )
    }
    fn domain_shape(&self) -> &[usize] {
        &self.domain
    }
    fn range_shape(&self) -> &[usize] {
        &self.range
    }
    fn apply(&self, x: ArrayViewD<f32>, mut y: ArrayViewMutD<f32>) {
        let xc = read_pair(x);
        y.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(c, yc)| write_pair(&self.coil_forward(c, &xc), yc));
    }
    fn adjoint(&self, y: ArrayViewD<f32>, x: ArrayViewMutD<f32>) {
        let parts: Vec<Vec<Complex32>> = y
            .axis_iter(Axis(0))
            .into_par_iter()
            .enumerate()
            .map(|(c, yc)| {
                let mut buf = read_pair(yc);
                self.coil_backward(c, &mut buf);
                buf
            })
            .collect();
        self.sum_coils(parts, x);
    }
    /// `sum_c conj(S_c) F^H M F (S_c x)` without forming the range array.
    fn normal(&self, x: ArrayViewD<f32>, out: ArrayViewMutD<f32>) {
        let xc = read_pair(x);
        let parts: Vec<Vec<Complex32>> = (0..self.range[0])
            .into_par_iter()
            .map(|c| {
                let mut buf = self.coil_forward(c, &xc);
                self.coil_backward(c, &mut buf);
                buf
            })
            .collect();
        self.sum_coils(parts, out);
    }
    fn restrict_to_measured(&self, mut y: ArrayViewMutD<f32>) {
        for yc in y.axis_iter_mut(Axis(0)) {
            mask_pair(&self.mask_flat, yc);
        }
    }
}

#[cfg(test)]
mod tests;
