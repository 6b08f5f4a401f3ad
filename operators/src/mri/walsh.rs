//! Walsh's adaptive-combine coil sensitivities (Walsh, Gmitro & Marcellin, MRM 43:682,
//! 2000) from the low-resolution images of the fully sampled k-space centre.
//!
//! 1. The calibration region ([`super::calibration::calibration_region`], at most
//!    [`WalshSettings::region`] lines per axis) is kept, the rest of k-space zeroed, and each
//!    coil transformed to a low-resolution image `c(m)` (centred orthonormal inverse FFT).
//! 2. At each pixel the coil covariance `R(m) = sum_{m' in window} c(m') c(m')^H` over a
//!    `window x window` neighbourhood (clamped at the borders) is formed; its dominant unit
//!    eigenvector is the map, its eigenvalue over the trace (the share of the signal one
//!    map explains, in [0, 1]) is reported as the eigenvalue map.
//! 3. The phase is fixed as ESPIRiT's is ([`super::espirit()`]): relative to the first
//!    principal component of the calibration data.
//!
//! Maps are unit-norm at every pixel (no crop): outside the object they follow the noise.
//! Cheaper than ESPIRiT and needs no kernel-sized calibration region, but the low-resolution
//! images blur the maps' edges.

use faer::c64;
use ndarray::{s, Array3, ArrayView3};
use num_complex::Complex32;
use rayon::prelude::*;

use super::calibration::{calibration_region, detect_mask};
use super::espirit::{
    check_kspace, principal_coil_component, rotate_phase, top_eigenpair, CoilMaps,
};
use crate::error::{Error, Result};
use crate::fft::Fft2;

/// The settings of Walsh's method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WalshSettings {
    /// Largest side of the calibration region (default 24, as ESPIRiT's).
    pub region: usize,
    /// Side of the pixel neighbourhood the coil covariance is summed over (odd, default 7).
    pub window: usize,
}

impl Default for WalshSettings {
    fn default() -> Self {
        WalshSettings {
            region: 24,
            window: 7,
        }
    }
}

/// Walsh maps of multi-coil k-space `(coils, H, W)` (see the module docs).
pub fn walsh(kspace: ArrayView3<Complex32>, settings: &WalshSettings) -> Result<CoilMaps> {
    if settings.window == 0 || settings.window.is_multiple_of(2) {
        return Err(Error::param(
            "walsh",
            "window",
            format!("must be odd and positive, got {}", settings.window),
        ));
    }
    check_kspace(kspace)?;
    let (coils, h, w) = kspace.dim();
    let mask = detect_mask(kspace);
    let region = calibration_region(&mask, settings.region.max(2))?;
    let cal = kspace.slice(s![
        ..,
        region.row0..region.row0 + region.rows,
        region.col0..region.col0 + region.cols
    ]);
    let reference = principal_coil_component(cal);
    let fft = Fft2::new(h, w);
    let images: Vec<Vec<c64>> = (0..coils)
        .map(|c| {
            let mut buf: Vec<Complex32> = (0..h * w)
                .map(|p| {
                    let (i, j) = (p / w, p % w);
                    if region.contains(i, j) {
                        kspace[[c, i, j]]
                    } else {
                        Complex32::default()
                    }
                })
                .collect();
            fft.inverse_centered(&mut buf);
            buf.iter()
                .map(|v| c64::new(v.re as f64, v.im as f64))
                .collect()
        })
        .collect();
    let half = settings.window / 2;
    let rows: Vec<Vec<(f32, Vec<c64>)>> = (0..h)
        .into_par_iter()
        .map(|i| {
            (0..w)
                .map(|j| {
                    let mut cov = vec![c64::new(0.0, 0.0); coils * coils];
                    for ii in i.saturating_sub(half)..(i + half + 1).min(h) {
                        for jj in j.saturating_sub(half)..(j + half + 1).min(w) {
                            let p = ii * w + jj;
                            for a in 0..coils {
                                for b in 0..coils {
                                    cov[a * coils + b] += images[a][p] * images[b][p].conj();
                                }
                            }
                        }
                    }
                    let trace: f64 = (0..coils).map(|a| cov[a * coils + a].re).sum();
                    let (val, mut vec) = top_eigenpair(&cov, coils);
                    rotate_phase(&mut vec, &reference);
                    let share = if trace > 0.0 { val / trace } else { 0.0 };
                    (share as f32, vec)
                })
                .collect()
        })
        .collect();
    let mut maps = Array3::<Complex32>::zeros((coils, h, w));
    let mut eigenvalues = ndarray::Array2::<f32>::zeros((h, w));
    for (i, row) in rows.into_iter().enumerate() {
        for (j, (val, vec)) in row.into_iter().enumerate() {
            eigenvalues[[i, j]] = val;
            for (c, v) in vec.iter().enumerate() {
                maps[[c, i, j]] = Complex32::new(v.re as f32, v.im as f32);
            }
        }
    }
    Ok(CoilMaps {
        maps,
        eigenvalues,
        region,
        kernels: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mri::coils::synthetic_sensitivities;
    use crate::mri::masks::{make_mask, MaskKind};

    #[test]
    fn recovers_smooth_maps_inside_a_uniform_object() {
        // A uniform disc through known maps, fully sampled centre of 24 lines: the dominant
        // eigenvector of the local coil covariance is the true map up to a phase wherever
        // the low-resolution image is not blurred by the disc's edge. 0.97: the 24-line
        // low-pass leaves the maps' finer variation out.
        let (coils, h, w) = (4, 48, 48);
        let sens = synthetic_sensitivities(coils, h, w).unwrap();
        let mask = make_mask(MaskKind::Uniform1d, h, w, 1.5, 0.5, 0).unwrap();
        let fft = Fft2::new(h, w);
        let inside = |i: usize, j: usize, r: f32| {
            let (u, v) = (i as f32 / h as f32 - 0.5, j as f32 / w as f32 - 0.5);
            u * u + v * v < r * r
        };
        let mut k = Array3::<Complex32>::zeros((coils, h, w));
        for c in 0..coils {
            let mut buf: Vec<Complex32> = (0..h * w)
                .map(|p| {
                    let (i, j) = (p / w, p % w);
                    if inside(i, j, 0.4) {
                        sens[[c, i, j]]
                    } else {
                        Complex32::default()
                    }
                })
                .collect();
            fft.forward_centered(&mut buf);
            for (p, v) in buf.into_iter().enumerate() {
                k[[c, p / w, p % w]] = v * mask[[p / w, p % w]];
            }
        }
        let est = walsh(k.view(), &WalshSettings::default()).unwrap();
        for i in 0..h {
            for j in 0..w {
                if !inside(i, j, 0.25) {
                    continue;
                }
                let ip: Complex32 = (0..coils)
                    .map(|c| est.maps[[c, i, j]] * sens[[c, i, j]].conj())
                    .sum();
                assert!(ip.norm() > 0.97, "{} at ({i}, {j})", ip.norm());
            }
        }
        let bad = WalshSettings {
            window: 4,
            ..WalshSettings::default()
        };
        assert!(walsh(k.view(), &bad).is_err());
    }
}
