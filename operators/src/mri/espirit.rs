//! ESPIRiT coil sensitivities from the fully sampled k-space centre (Uecker et al., MRM
//! 71:990, 2014), with the settings of BART's `ecalib -m1`.
//!
//! Input: multi-coil k-space `(coils, H, W)` on the centred grid of [`super::MultiCoilMri`]
//! (unsampled entries exactly zero). Output: one set of maps `(coils, H, W)` with
//! `sum_c |S_c|^2 = 1` where kept, 0 where cropped, and the eigenvalue map `(H, W)`.
//!
//! # Algorithm
//! 1. The calibration region: the fully sampled centre, at most
//!    [`EspiritSettings::region`] lines per axis ([`super::calibration::calibration_region`]).
//! 2. The calibration matrix `A`: one row per position of a `k x k` window inside the
//!    region, `A[r, (q, c)] = y_c(r + q)` (`k` = [`EspiritSettings::kernel`], `N = k^2 coils`
//!    columns). Its right singular vectors `v_i` (from the eigen-decomposition of `A^H A`,
//!    in f64 on faer) with singular value `s_i > sqrt(threshold) s_0` span the signal space
//!    (BART keeps `s_i / s_0 > sqrt(threshold)` too, [`EspiritSettings::threshold`]).
//! 3. Every k-space patch lies in `span{conj(v_i)}`, with projector `P = conj(V V^H)`. Made
//!    a pointwise operator in image space this is, at pixel `m`,
//!    `G(m)[c, c'] = (1/k^2) sum_{q, q'} P[(q, c), (q', c')] exp(2 pi i (q - q') . (m - m0) / n)`
//!    (`m0 = (H/2, W/2)`, `n = (H, W)`, the phase sign that of our forward FFT), whose
//!    eigenvalues lie in [0, 1]; true sensitivities are eigenvectors with eigenvalue 1.
//!    `G` is a trigonometric polynomial of degree `k - 1`, so it is summed exactly on the
//!    full grid from its `(2k - 1)^2` Fourier coefficients (BART computes it on a `2k x 2k`
//!    grid and sinc-interpolates, which is the same polynomial).
//! 4. Per pixel, the eigenvector of the largest eigenvalue `lambda(m)` (faer, exact; BART
//!    uses 30 orthogonal iterations) is the map; pixels with `lambda < crop` (0.8,
//!    [`EspiritSettings::crop`]) are set to 0 (BART's hard crop).
//! 5. Phase: each pixel's map is rotated so that its inner product with the first
//!    principal component of the calibration data's coil covariance is real and positive
//!    (BART's `rotphase`), which makes the phase smooth and the combined image's phase
//!    that of a virtual body coil.
//!
//! Cost: `O(R N^2 + N^3)` for the calibration (`R` window positions; 288 x 288 for 8
//! coils and `k = 6`) and `O(H W ((2k - 1) coils^2 + coils^3))` for the maps.
//!
//! Departures from BART: the calibration window stays centred along the readout (BART
//! slides it to the position of largest energy); `G` is summed exactly instead of
//! interpolated; the per-pixel eigenvectors are exact. The maps agree with BART's to the
//! sign conventions above: the reconstructions they give are checked against BART's maps'
//! (`tests/real_data.rs`, `benches/peers/bart_espirit.sh`).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self_adjoint_evd, self_adjoint_evd_scratch, ComputeEigenvectors};
use faer::{c64, Mat, Par, Side};
use ndarray::{s, Array2, Array3, ArrayView3, Axis};
use num_complex::Complex32;
use rayon::prelude::*;

use super::calibration::{calibration_region, detect_mask, Region};
use crate::error::{Error, Result};

const OP: &str = "espirit";

/// The settings of one ESPIRiT calibration; the defaults are BART's `ecalib -m1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EspiritSettings {
    /// Side of the k-space kernel (BART `-k`, default 6).
    pub kernel: usize,
    /// Largest side of the calibration region (BART `-r`, default 24).
    pub region: usize,
    /// Singular values kept: `s_i / s_0 > sqrt(threshold)` (BART `-t`, default 0.001).
    pub threshold: f64,
    /// Pixels whose largest eigenvalue is below this get a zero map (BART `-c`, default 0.8;
    /// 0 keeps every pixel).
    pub crop: f64,
}

impl Default for EspiritSettings {
    fn default() -> Self {
        EspiritSettings {
            kernel: 6,
            region: 24,
            threshold: 0.001,
            crop: 0.8,
        }
    }
}

impl EspiritSettings {
    /// Checks the settings' own ranges.
    pub fn check(&self) -> Result<()> {
        if self.kernel < 1 {
            return Err(Error::param(OP, "kernel", "must be at least 1"));
        }
        if self.region < 2 {
            return Err(Error::param(OP, "region", "must be at least 2"));
        }
        if !(self.threshold.is_finite() && (0.0..1.0).contains(&self.threshold)) {
            return Err(Error::param(
                OP,
                "threshold",
                format!("must lie in [0, 1), got {}", self.threshold),
            ));
        }
        if !(self.crop.is_finite() && (0.0..=1.0).contains(&self.crop)) {
            return Err(Error::param(
                OP,
                "crop",
                format!("must lie in [0, 1], got {}", self.crop),
            ));
        }
        Ok(())
    }
}

/// Coil maps estimated from data, with what the estimate was made from.
#[derive(Clone, Debug)]
pub struct CoilMaps {
    /// `(coils, H, W)`; `sum_c |S_c|^2` is 1 where a map was kept, 0 where cropped.
    pub maps: Array3<Complex32>,
    /// `(H, W)`: the largest eigenvalue at each pixel (ESPIRiT, in [0, 1]), or the
    /// normalised coil-covariance eigenvalue (Walsh).
    pub eigenvalues: Array2<f32>,
    /// The calibration region used.
    pub region: Region,
    /// Signal-space kernels kept out of `k^2 coils` (ESPIRiT; 0 for Walsh).
    pub kernels: usize,
}

/// ESPIRiT maps of multi-coil k-space `(coils, H, W)` (see the module docs).
///
/// Fails, naming what was found and what is needed, when the k-space is empty or not
/// finite, when its centre is not sampled, or when the fully sampled centre is not larger
/// than the kernel along both axes.
pub fn espirit(kspace: ArrayView3<Complex32>, settings: &EspiritSettings) -> Result<CoilMaps> {
    settings.check()?;
    let (coils, h, w) = kspace.dim();
    check_kspace(kspace)?;
    let mask = detect_mask(kspace);
    let region = calibration_region(&mask, settings.region)?;
    let k = settings.kernel;
    if region.rows <= k || region.cols <= k {
        return Err(Error::param(
            OP,
            "kernel",
            format!(
                "is {k} x {k}, but the fully sampled k-space centre is only {} x {} \
                 (rows x phase-encode columns): ESPIRiT needs a calibration region larger \
                 than its kernel; acquire more ACS lines (24 is usual) or use a smaller kernel",
                region.rows, region.cols
            ),
        ));
    }
    let cal = kspace.slice(s![
        ..,
        region.row0..region.row0 + region.rows,
        region.col0..region.col0 + region.cols
    ]);
    let (signal, kept) = signal_space(cal, k, settings.threshold)?;
    let coeffs = pointwise_coefficients(&signal, k, coils);
    let reference = principal_coil_component(cal);
    let (maps, eigenvalues) = pointwise_maps(&coeffs, k, coils, h, w, |g| {
        let (val, mut vec) = top_eigenpair(g, coils);
        if val < settings.crop {
            vec.iter_mut().for_each(|v| *v = c64::new(0.0, 0.0));
        } else {
            rotate_phase(&mut vec, &reference);
        }
        (val, vec)
    });
    Ok(CoilMaps {
        maps,
        eigenvalues,
        region,
        kernels: kept,
    })
}

/// Rejects empty or non-finite k-space.
pub(crate) fn check_kspace(kspace: ArrayView3<Complex32>) -> Result<()> {
    let (coils, h, w) = kspace.dim();
    if coils == 0 || h == 0 || w == 0 {
        return Err(Error::param(
            OP,
            "kspace",
            format!("must be (coils, H, W) with positive sizes, got ({coils}, {h}, {w})"),
        ));
    }
    let bad = kspace
        .iter()
        .filter(|v| !(v.re.is_finite() && v.im.is_finite()))
        .count();
    if bad > 0 {
        return Err(Error::NonFinite {
            what: "k-space".into(),
            count: bad,
        });
    }
    Ok(())
}

/// The signal-space kernels of the calibration data `(coils, rows, cols)`: the columns
/// `conj(v_i)` of the kept right singular vectors, as an `N x n` matrix, and `n`.
fn signal_space(cal: ArrayView3<Complex32>, k: usize, threshold: f64) -> Result<(Mat<c64>, usize)> {
    let (coils, rows, cols) = cal.dim();
    let (pr, pc) = (rows - k + 1, cols - k + 1);
    let n = k * k * coils;
    let a = Mat::<c64>::from_fn(pr * pc, n, |r, col| {
        let (r1, r2) = (r / pc, r % pc);
        let (q, c) = (col / coils, col % coils);
        let v = cal[[c, r1 + q / k, r2 + q % k]];
        c64::new(v.re as f64, v.im as f64)
    });
    let gram = a.adjoint() * &a;
    let evd = gram.self_adjoint_eigen(Side::Lower).map_err(|e| {
        Error::param(
            OP,
            "kspace",
            format!("calibration eigen-decomposition failed: {e:?}"),
        )
    })?;
    let vals: Vec<f64> = (0..n)
        .rev()
        .map(|i| evd.S()[i].re.max(0.0).sqrt())
        .collect();
    if vals[0].is_nan() || vals[0] <= 0.0 {
        return Err(Error::param(
            OP,
            "kspace",
            "is zero in the calibration region: no signal to calibrate from",
        ));
    }
    let kept = vals
        .iter()
        .filter(|&&s| s / vals[0] > threshold.sqrt())
        .count()
        .max(1);
    let u = evd.U();
    let signal = Mat::<c64>::from_fn(n, kept, |row, i| u[(row, n - 1 - i)].conj());
    Ok((signal, kept))
}

/// The Fourier coefficients of the pointwise operator `G` (module docs, step 3):
/// `C[d][c * coils + c'] = (1/k^2) sum_{q - q' = d} P[(q, c), (q', c')]` for the
/// `(2k - 1)^2` offsets `d` (row-major, `d + k - 1` per axis), `P = W W^H`.
fn pointwise_coefficients(w: &Mat<c64>, k: usize, coils: usize) -> Vec<Vec<c64>> {
    let p = w * w.adjoint();
    let dn = 2 * k - 1;
    let mut coeffs = vec![vec![c64::new(0.0, 0.0); coils * coils]; dn * dn];
    let scale = 1.0 / (k * k) as f64;
    for q in 0..k * k {
        for q2 in 0..k * k {
            let d1 = q / k + k - 1 - q2 / k;
            let d2 = q % k + k - 1 - q2 % k;
            let out = &mut coeffs[d1 * dn + d2];
            for c in 0..coils {
                for c2 in 0..coils {
                    out[c * coils + c2] += p[(q * coils + c, q2 * coils + c2)] * scale;
                }
            }
        }
    }
    coeffs
}

/// `exp(2 pi i d (m - n/2) / n)` for `d` in `-(k-1)..=k-1` (index `d + k - 1`) and `m < n`.
fn phase_table(k: usize, n: usize) -> Vec<Vec<c64>> {
    (0..2 * k - 1)
        .map(|di| {
            let d = di as f64 - (k - 1) as f64;
            (0..n)
                .map(|m| {
                    let t = 2.0 * std::f64::consts::PI * d * (m as f64 - (n / 2) as f64) / n as f64;
                    c64::new(t.cos(), t.sin())
                })
                .collect()
        })
        .collect()
}

#[allow(clippy::needless_range_loop)] // `n` indexes the phase table and the output row
/// Evaluates `G(m)` (`coils x coils`, row-major) at every pixel of `h x w` from its
/// coefficients and turns it into `(eigenvalue, map)` with `per_pixel`; rows in parallel.
fn pointwise_maps(
    coeffs: &[Vec<c64>],
    k: usize,
    coils: usize,
    h: usize,
    w: usize,
    per_pixel: impl Fn(&[c64]) -> (f64, Vec<c64>) + Sync,
) -> (Array3<Complex32>, Array2<f32>) {
    let dn = 2 * k - 1;
    let (eh, ew) = (phase_table(k, h), phase_table(k, w));
    let cc = coils * coils;
    let rows: Vec<(Vec<f32>, Vec<Vec<c64>>)> = (0..h)
        .into_par_iter()
        .map(|m| {
            // Sum over the row offset first: t[d2] = sum_d1 C[d1, d2] e_h[d1](m).
            let mut t = vec![c64::new(0.0, 0.0); dn * cc];
            for d1 in 0..dn {
                let e = eh[d1][m];
                for d2 in 0..dn {
                    let src = &coeffs[d1 * dn + d2];
                    let dst = &mut t[d2 * cc..(d2 + 1) * cc];
                    for (o, v) in dst.iter_mut().zip(src) {
                        *o += v * e;
                    }
                }
            }
            let mut g = vec![c64::new(0.0, 0.0); cc];
            let mut vals = Vec::with_capacity(w);
            let mut vecs = Vec::with_capacity(w);
            for n in 0..w {
                g.iter_mut().for_each(|v| *v = c64::new(0.0, 0.0));
                for d2 in 0..dn {
                    let e = ew[d2][n];
                    for (o, v) in g.iter_mut().zip(&t[d2 * cc..(d2 + 1) * cc]) {
                        *o += v * e;
                    }
                }
                let (val, vec) = per_pixel(&g);
                vals.push(val as f32);
                vecs.push(vec);
            }
            (vals, vecs)
        })
        .collect();
    let mut maps = Array3::<Complex32>::zeros((coils, h, w));
    let mut eig = Array2::<f32>::zeros((h, w));
    for (m, (vals, vecs)) in rows.into_iter().enumerate() {
        for (n, (val, vec)) in vals.into_iter().zip(vecs).enumerate() {
            eig[[m, n]] = val;
            for (c, v) in vec.iter().enumerate() {
                maps[[c, m, n]] = Complex32::new(v.re as f32, v.im as f32);
            }
        }
    }
    (maps, eig)
}

/// The largest eigenvalue of a Hermitian `n x n` matrix (row-major; the lower triangle is
/// read) and its unit eigenvector. Sequential faer, for use inside a parallel loop.
pub(crate) fn top_eigenpair(a: &[c64], n: usize) -> (f64, Vec<c64>) {
    let m = Mat::<c64>::from_fn(n, n, |i, j| a[i * n + j]);
    let mut s = faer::diag::Diag::<c64>::zeros(n);
    let mut u = Mat::<c64>::zeros(n, n);
    let mut buf = MemBuffer::new(self_adjoint_evd_scratch::<c64>(
        n,
        ComputeEigenvectors::Yes,
        Par::Seq,
        Default::default(),
    ));
    let ok = self_adjoint_evd(
        m.as_ref(),
        s.as_mut(),
        Some(u.as_mut()),
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    );
    if ok.is_err() {
        return (0.0, vec![c64::new(0.0, 0.0); n]);
    }
    let val = s[n - 1].re;
    (val, (0..n).map(|i| u[(i, n - 1)]).collect())
}

/// The first principal component over coils of calibration data `(coils, rows, cols)`: the
/// dominant eigenvector of `sum_k y(k) y(k)^H`, its largest entry real and positive.
pub(crate) fn principal_coil_component(cal: ArrayView3<Complex32>) -> Vec<c64> {
    let coils = cal.dim().0;
    let flat: Vec<Vec<c64>> = cal
        .axis_iter(Axis(0))
        .map(|c| {
            c.iter()
                .map(|v| c64::new(v.re as f64, v.im as f64))
                .collect()
        })
        .collect();
    let mut cov = vec![c64::new(0.0, 0.0); coils * coils];
    for a in 0..coils {
        for b in 0..coils {
            cov[a * coils + b] = flat[a]
                .iter()
                .zip(&flat[b])
                .map(|(x, y)| x * y.conj())
                .sum();
        }
    }
    // The eigenvector's global phase is arbitrary: fix it (largest entry real positive) so
    // the maps' phase does not depend on the eigen-solver.
    let mut u = top_eigenpair(&cov, coils).1;
    if let Some(big) = u
        .iter()
        .copied()
        .max_by(|a, b| a.norm().total_cmp(&b.norm()))
    {
        if big.norm() > 0.0 {
            let rot = big.conj() / big.norm();
            u.iter_mut().for_each(|v| *v *= rot);
        }
    }
    u
}

/// Multiplies `map` by the phase that makes `<map, reference> = sum_c map_c conj(ref_c)`
/// real and positive (left alone when that product is zero).
pub(crate) fn rotate_phase(map: &mut [c64], reference: &[c64]) {
    let ip: c64 = map.iter().zip(reference).map(|(m, r)| m * r.conj()).sum();
    let norm = ip.norm();
    if norm > 0.0 {
        let rot = ip.conj() / norm;
        map.iter_mut().for_each(|v| *v *= rot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fft::Fft2;
    use crate::mri::coils::synthetic_sensitivities;
    use crate::mri::masks::{make_mask, MaskKind};

    /// Multi-coil k-space `(coils, H, W)` of a smooth complex object through `sens`.
    fn simulate(sens: &Array3<Complex32>, mask: &Array2<f32>) -> Array3<Complex32> {
        let (coils, h, w) = sens.dim();
        let fft = Fft2::new(h, w);
        let mut out = Array3::<Complex32>::zeros((coils, h, w));
        for c in 0..coils {
            let mut buf: Vec<Complex32> = (0..h * w)
                .map(|p| {
                    let (i, j) = (p / w, p % w);
                    let (u, v) = (
                        (i as f32 - h as f32 / 2.0) / (h as f32 / 2.0),
                        (j as f32 - w as f32 / 2.0) / (w as f32 / 2.0),
                    );
                    let r2 = u * u / 0.6 + v * v / 0.8;
                    let obj = if r2 < 1.0 {
                        1.0 + 0.5 * (3.0 * u).sin()
                    } else {
                        0.0
                    };
                    sens[[c, i, j]] * Complex32::from_polar(obj, 0.4 * v)
                })
                .collect();
            fft.forward_centered(&mut buf);
            for (p, v) in buf.into_iter().enumerate() {
                out[[c, p / w, p % w]] = v * mask[[p / w, p % w]];
            }
        }
        out
    }

    #[test]
    fn recovers_smooth_synthetic_maps_up_to_a_common_phase() {
        // Noise-free k-space of an object through known smooth maps with sum |S|^2 = 1:
        // inside the object ESPIRiT's maps must equal the true ones up to one phase per
        // pixel (common to all coils), with eigenvalue ~1. The tolerance 0.02 on the
        // normalised inner product leaves room for the k = 6 kernel's truncation of the
        // maps' spectrum; a wrong phase sign or a transposed grid gives ~0.3 here.
        let (coils, h, w) = (6, 48, 40);
        let sens = synthetic_sensitivities(coils, h, w).unwrap();
        let mask = make_mask(MaskKind::Uniform1d, h, w, 2.0, 0.5, 0).unwrap();
        let k = simulate(&sens, &mask);
        let est = espirit(k.view(), &EspiritSettings::default()).unwrap();
        assert_eq!((est.region.rows, est.region.cols), (24, 20));
        let mut checked = 0;
        for i in 0..h {
            for j in 0..w {
                let (u, v) = (
                    (i as f32 - h as f32 / 2.0) / (h as f32 / 2.0),
                    (j as f32 - w as f32 / 2.0) / (w as f32 / 2.0),
                );
                if u * u / 0.6 + v * v / 0.8 > 0.7 {
                    continue;
                }
                let ip: Complex32 = (0..coils)
                    .map(|c| est.maps[[c, i, j]] * sens[[c, i, j]].conj())
                    .sum();
                assert!(
                    ip.norm() > 0.98,
                    "|<S_est, S>| = {} at ({i}, {j})",
                    ip.norm()
                );
                assert!(
                    est.eigenvalues[[i, j]] > 0.98,
                    "{}",
                    est.eigenvalues[[i, j]]
                );
                checked += 1;
            }
        }
        assert!(checked > 500);
    }

    #[test]
    fn a_calibration_region_no_larger_than_the_kernel_is_an_error() {
        let sens = synthetic_sensitivities(4, 32, 32).unwrap();
        let mask = make_mask(MaskKind::Uniform1d, 32, 32, 4.0, 0.15, 0).unwrap();
        let k = simulate(&sens, &mask);
        let e = espirit(k.view(), &EspiritSettings::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("6 x 6") && e.contains("larger than its kernel"),
            "{e}"
        );
        let small = EspiritSettings {
            kernel: 3,
            ..EspiritSettings::default()
        };
        assert!(espirit(k.view(), &small).is_ok());
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut k = Array3::<Complex32>::zeros((2, 16, 16));
        assert!(espirit(k.view(), &EspiritSettings::default()).is_err());
        k.fill(Complex32::new(1.0, 0.0));
        k[[0, 3, 3]] = Complex32::new(f32::NAN, 0.0);
        let e = espirit(k.view(), &EspiritSettings::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-finite"), "{e}");
        let bad = EspiritSettings {
            threshold: 1.5,
            ..EspiritSettings::default()
        };
        assert!(espirit(k.view(), &bad)
            .unwrap_err()
            .to_string()
            .contains("threshold"));
    }
}
