//! Image quality metrics: PSNR, SSIM and NRMSE, as scikit-image computes them.
//!
//! Inputs are `f32` images of shape (H, W) or (C, H, W); all arithmetic is in `f64`.
//! `x` is the estimate, `reference` the ground truth; the two must have the same shape
//! and hold only finite values, otherwise an error says which.
//!
//! - [`psnr`] = 10 log10(data_range^2 / MSE), MSE over all entries
//!   (`skimage.metrics.peak_signal_noise_ratio`); `+inf` when `x == reference`.
//! - [`ssim`]: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5, truncated at
//!   3.5 sigma), K1 = 0.01, K2 = 0.03, population (co)variances, the mean of the SSIM map
//!   over the valid region (the map cropped by the window radius, 5 pixels, on every
//!   side); multi-channel = mean over channels. This is
//!   `skimage.metrics.structural_similarity(x, ref, data_range=R, gaussian_weights=True,
//!   sigma=1.5, use_sample_covariance=False, channel_axis=0)` on float64 inputs.
//!   H and W must be at least 11.
//! - [`nrmse`] = ||x - ref|| / ||ref|| (`normalized_root_mse`, `normalization='euclidean'`).
//!
//! The `*_volume` versions take (D, H, W) or (D, C, H, W), score each slice along the
//! first axis, and return the per-slice values with their mean.

use ndarray::{Array2, ArrayView2, ArrayViewD, Axis, Ix2};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Gaussian window radius: int(3.5 * 1.5 + 0.5) = 5, i.e. an 11-tap window.
const RADIUS: usize = 5;
const SIGMA: f64 = 1.5;
const K1: f64 = 0.01;
const K2: f64 = 0.03;

/// Per-slice values of a metric over a volume, and their mean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeMetric {
    /// One value per slice along the first axis.
    pub per_slice: Vec<f64>,
    /// Mean of `per_slice` (for PSNR, `+inf` if any slice is exact).
    pub mean: f64,
}

fn check_pair(name: &str, x: &ArrayViewD<f32>, reference: &ArrayViewD<f32>) -> Result<()> {
    if x.shape() != reference.shape() {
        return Err(Error::Invalid(format!(
            "{name}: image shape {:?} differs from reference shape {:?}; expected equal shapes",
            x.shape(),
            reference.shape()
        )));
    }
    if x.is_empty() {
        return Err(Error::Invalid(format!(
            "{name}: empty images of shape {:?}",
            x.shape()
        )));
    }
    let bad_x = x.iter().filter(|v| !v.is_finite()).count();
    let bad_r = reference.iter().filter(|v| !v.is_finite()).count();
    for (what, bad) in [("image", bad_x), ("reference", bad_r)] {
        if bad > 0 {
            return Err(Error::Invalid(format!(
                "{name}: {what} has {bad} NaN or infinite values; expected finite values"
            )));
        }
    }
    Ok(())
}

fn check_image(name: &str, x: &ArrayViewD<f32>, reference: &ArrayViewD<f32>) -> Result<()> {
    check_pair(name, x, reference)?;
    if !(x.ndim() == 2 || x.ndim() == 3) {
        return Err(Error::Invalid(format!(
            "{name}: shape {:?}; expected an image (H, W) or (C, H, W)",
            x.shape()
        )));
    }
    Ok(())
}

fn check_range(name: &str, data_range: f64) -> Result<()> {
    if !(data_range.is_finite() && data_range > 0.0) {
        return Err(Error::Invalid(format!(
            "{name}: data_range {data_range} is invalid; expected a finite value > 0 (e.g. 1 for images in [0, 1])"
        )));
    }
    Ok(())
}

fn mse(x: &ArrayViewD<f32>, reference: &ArrayViewD<f32>) -> f64 {
    let sum: f64 = x
        .iter()
        .zip(reference.iter())
        .map(|(&a, &b)| {
            let d = a as f64 - b as f64;
            d * d
        })
        .sum();
    sum / x.len() as f64
}

/// Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / MSE); `+inf` if identical.
pub fn psnr(x: ArrayViewD<f32>, reference: ArrayViewD<f32>, data_range: f64) -> Result<f64> {
    check_image("psnr", &x, &reference)?;
    check_range("psnr", data_range)?;
    let m = mse(&x, &reference);
    Ok(if m == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (data_range * data_range / m).log10()
    })
}

/// Normalised root-mean-square error ||x - ref|| / ||ref||. Fails if `reference` is zero.
pub fn nrmse(x: ArrayViewD<f32>, reference: ArrayViewD<f32>) -> Result<f64> {
    check_image("nrmse", &x, &reference)?;
    let den: f64 = reference.iter().map(|&v| (v as f64) * (v as f64)).sum();
    if den == 0.0 {
        return Err(Error::Invalid(
            "nrmse: the reference is all zeros, so the normalised error is undefined".into(),
        ));
    }
    Ok((mse(&x, &reference) * x.len() as f64 / den).sqrt())
}

/// The normalised 11-tap Gaussian window.
fn window() -> [f64; 2 * RADIUS + 1] {
    let mut w = [0.0; 2 * RADIUS + 1];
    for (i, wi) in w.iter_mut().enumerate() {
        let t = i as f64 - RADIUS as f64;
        *wi = (-0.5 * t * t / (SIGMA * SIGMA)).exp();
    }
    let s: f64 = w.iter().sum();
    w.iter_mut().for_each(|v| *v /= s);
    w
}

/// Gaussian filter of `f(x, y)` at the valid positions only: output (H - 10, W - 10),
/// entry (r, c) = filtered value at pixel (r + 5, c + 5). The windows there lie inside
/// the image, so no boundary rule is involved (skimage's `reflect` never enters the
/// cropped mean).
fn filter_valid(
    x: &Array2<f64>,
    y: &Array2<f64>,
    f: impl Fn(f64, f64) -> f64,
    w: &[f64; 2 * RADIUS + 1],
) -> Array2<f64> {
    let (h, wd) = x.dim();
    let (ho, wo) = (h - 2 * RADIUS, wd - 2 * RADIUS);
    // Along columns (W) first, for every row.
    let mut tmp = Array2::<f64>::zeros((h, wo));
    for r in 0..h {
        for c in 0..wo {
            let mut acc = 0.0;
            for (k, wk) in w.iter().enumerate() {
                acc += wk * f(x[[r, c + k]], y[[r, c + k]]);
            }
            tmp[[r, c]] = acc;
        }
    }
    let mut out = Array2::<f64>::zeros((ho, wo));
    for r in 0..ho {
        for (k, wk) in w.iter().enumerate() {
            let row = tmp.row(r + k);
            out.row_mut(r).scaled_add(*wk, &row);
        }
    }
    out
}

fn ssim_plane(x: ArrayView2<f32>, y: ArrayView2<f32>, data_range: f64) -> f64 {
    let x = x.mapv(|v| v as f64);
    let y = y.mapv(|v| v as f64);
    let w = window();
    let ux = filter_valid(&x, &y, |a, _| a, &w);
    let uy = filter_valid(&x, &y, |_, b| b, &w);
    let uxx = filter_valid(&x, &y, |a, _| a * a, &w);
    let uyy = filter_valid(&x, &y, |_, b| b * b, &w);
    let uxy = filter_valid(&x, &y, |a, b| a * b, &w);
    let c1 = (K1 * data_range).powi(2);
    let c2 = (K2 * data_range).powi(2);
    let mut sum = 0.0;
    for ((((&mx, &my), &sxx), &syy), &sxy) in ux
        .iter()
        .zip(uy.iter())
        .zip(uxx.iter())
        .zip(uyy.iter())
        .zip(uxy.iter())
    {
        let vx = sxx - mx * mx;
        let vy = syy - my * my;
        let vxy = sxy - mx * my;
        let num = (2.0 * mx * my + c1) * (2.0 * vxy + c2);
        let den = (mx * mx + my * my + c1) * (vx + vy + c2);
        sum += num / den;
    }
    sum / ux.len() as f64
}

/// Structural similarity (Wang et al. 2004), as scikit-image computes it (module docs).
pub fn ssim(x: ArrayViewD<f32>, reference: ArrayViewD<f32>, data_range: f64) -> Result<f64> {
    check_image("ssim", &x, &reference)?;
    check_range("ssim", data_range)?;
    let (x3, r3) = if x.ndim() == 2 {
        (x.insert_axis(Axis(0)), reference.insert_axis(Axis(0)))
    } else {
        (x, reference)
    };
    let (c, h, w) = (x3.shape()[0], x3.shape()[1], x3.shape()[2]);
    if h < 2 * RADIUS + 1 || w < 2 * RADIUS + 1 {
        return Err(Error::Invalid(format!(
            "ssim: images of {h}x{w} are smaller than the 11x11 window; expected H, W >= 11"
        )));
    }
    let mut total = 0.0;
    for k in 0..c {
        let xp = x3.index_axis(Axis(0), k).into_dimensionality::<Ix2>();
        let rp = r3.index_axis(Axis(0), k).into_dimensionality::<Ix2>();
        match (xp, rp) {
            (Ok(xp), Ok(rp)) => total += ssim_plane(xp, rp, data_range),
            _ => return Err(Error::Invalid("ssim: internal shape error".into())),
        }
    }
    Ok(total / c as f64)
}

fn per_slice(
    name: &str,
    x: ArrayViewD<f32>,
    reference: ArrayViewD<f32>,
    f: impl Fn(ArrayViewD<f32>, ArrayViewD<f32>) -> Result<f64>,
) -> Result<VolumeMetric> {
    check_pair(name, &x, &reference)?;
    if !(x.ndim() == 3 || x.ndim() == 4) {
        return Err(Error::Invalid(format!(
            "{name}: shape {:?}; expected a volume (D, H, W) or (D, C, H, W)",
            x.shape()
        )));
    }
    let per_slice = x
        .axis_iter(Axis(0))
        .zip(reference.axis_iter(Axis(0)))
        .map(|(a, b)| f(a, b))
        .collect::<Result<Vec<f64>>>()?;
    let mean = per_slice.iter().sum::<f64>() / per_slice.len() as f64;
    Ok(VolumeMetric { per_slice, mean })
}

/// [`psnr`] of each slice along the first axis of a (D, H, W) or (D, C, H, W) volume.
pub fn psnr_volume(
    x: ArrayViewD<f32>,
    reference: ArrayViewD<f32>,
    data_range: f64,
) -> Result<VolumeMetric> {
    per_slice("psnr_volume", x, reference, |a, b| psnr(a, b, data_range))
}

/// [`ssim`] of each slice along the first axis of a (D, H, W) or (D, C, H, W) volume.
pub fn ssim_volume(
    x: ArrayViewD<f32>,
    reference: ArrayViewD<f32>,
    data_range: f64,
) -> Result<VolumeMetric> {
    per_slice("ssim_volume", x, reference, |a, b| ssim(a, b, data_range))
}

/// [`nrmse`] of each slice along the first axis of a (D, H, W) or (D, C, H, W) volume.
pub fn nrmse_volume(x: ArrayViewD<f32>, reference: ArrayViewD<f32>) -> Result<VolumeMetric> {
    per_slice("nrmse_volume", x, reference, nrmse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};

    /// A direct (unseparated) SSIM at one pixel, for cross-checking the separable filter.
    fn naive_ssim(x: &Array2<f64>, y: &Array2<f64>, range: f64) -> f64 {
        let w = window();
        let (h, wd) = x.dim();
        let (c1, c2) = ((K1 * range).powi(2), (K2 * range).powi(2));
        let mut sum = 0.0;
        let mut n = 0.0;
        for r in RADIUS..h - RADIUS {
            for c in RADIUS..wd - RADIUS {
                let (mut mx, mut my, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for i in 0..11 {
                    for j in 0..11 {
                        let g = w[i] * w[j];
                        let a = x[[r + i - RADIUS, c + j - RADIUS]];
                        let b = y[[r + i - RADIUS, c + j - RADIUS]];
                        mx += g * a;
                        my += g * b;
                        sxx += g * a * a;
                        syy += g * b * b;
                        sxy += g * a * b;
                    }
                }
                let (vx, vy, vxy) = (sxx - mx * mx, syy - my * my, sxy - mx * my);
                sum += (2.0 * mx * my + c1) * (2.0 * vxy + c2)
                    / ((mx * mx + my * my + c1) * (vx + vy + c2));
                n += 1.0;
            }
        }
        sum / n
    }

    #[test]
    fn ssim_matches_direct_2d_window() {
        let x = Array2::from_shape_fn((13, 17), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 10.0);
        let y = Array2::from_shape_fn((13, 17), |(i, j)| ((i * i + 2 * j) % 9) as f32 / 8.0);
        let got = ssim(x.view().into_dyn(), y.view().into_dyn(), 1.0).unwrap();
        let want = naive_ssim(&x.mapv(|v| v as f64), &y.mapv(|v| v as f64), 1.0);
        // Same sums in a different order: agreement to rounding.
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn identical_images() {
        let x = Array3::from_shape_fn((2, 12, 12), |(c, i, j)| (c + i * j) as f32 / 100.0);
        let v = x.view().into_dyn();
        assert!((ssim(v.clone(), v.clone(), 1.0).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(psnr(v.clone(), v.clone(), 1.0).unwrap(), f64::INFINITY);
        assert_eq!(nrmse(v.clone(), v.clone()).unwrap(), 0.0);
    }
}
