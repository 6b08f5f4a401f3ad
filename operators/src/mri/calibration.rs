//! What measured k-space says about its own sampling: the mask (from the zero pattern) and
//! the fully sampled centre (the auto-calibration region, ACS) that coil-map estimation
//! ([`super::espirit()`], [`super::walsh()`]) calibrates from.
//!
//! K-space here is `(coils, H, W)` complex on the centred grid of [`super::SingleCoilMri`]
//! (DC at `(H/2, W/2)`), readout along `H`, phase-encode lines as columns.

use ndarray::{Array2, ArrayView3, Axis};
use num_complex::Complex32;

use crate::error::{Error, Result};

const OP: &str = "mri calibration";

/// The sampling mask implied by the data: 1 where any coil holds a non-zero value, 0 where
/// every coil is exactly zero (how scanners and fastMRI store unsampled entries).
pub fn detect_mask(kspace: ArrayView3<Complex32>) -> Array2<f32> {
    let (_, h, w) = kspace.dim();
    let mut mask = Array2::<f32>::zeros((h, w));
    for coil in kspace.axis_iter(Axis(0)) {
        mask.zip_mut_with(&coil, |m, v| {
            if v.re != 0.0 || v.im != 0.0 {
                *m = 1.0;
            }
        });
    }
    mask
}

/// A rectangle of k-space: rows `row0..row0 + rows`, columns `col0..col0 + cols`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub row0: usize,
    pub rows: usize,
    pub col0: usize,
    pub cols: usize,
}

impl Region {
    /// Whether `(i, j)` lies inside.
    pub fn contains(&self, i: usize, j: usize) -> bool {
        (self.row0..self.row0 + self.rows).contains(&i)
            && (self.col0..self.col0 + self.cols).contains(&j)
    }
}

/// The fully sampled centre of `mask` `(H, W)`, at most `limit` lines along each axis.
///
/// Grown as BART's `calib_geom` grows it: from 1 x 1, one line at a time along each axis in
/// turn, every size `s` placed at `(n - s) / 2` (floor), an axis stopping when the next size
/// would include an unsampled entry, reach `limit` or the grid. (BART then slides the window
/// along the readout to the position of largest energy; here it stays centred, which is
/// the same for k-space whose energy peaks at the centre.) Fails when the centre itself is
/// not sampled.
pub fn calibration_region(mask: &Array2<f32>, limit: usize) -> Result<Region> {
    let (h, w) = mask.dim();
    if h == 0 || w == 0 || mask[[h / 2, w / 2]] == 0.0 {
        return Err(Error::param(
            OP,
            "mask",
            format!(
                "has no sampled k-space centre (DC at ({}, {}) is not sampled): coil maps are \
                 calibrated from a fully sampled centre (ACS lines)",
                h / 2,
                w / 2
            ),
        ));
    }
    let n = [h, w];
    let mut size = [1usize, 1];
    let mut stop = [false, false];
    let full = |s: [usize; 2]| {
        let (r0, c0) = ((h - s[0]) / 2, (w - s[1]) / 2);
        mask.slice(ndarray::s![r0..r0 + s[0], c0..c0 + s[1]])
            .iter()
            .all(|&v| v != 0.0)
    };
    while !(stop[0] && stop[1]) {
        for a in 0..2 {
            if size[a] >= n[a] || size[a] >= limit {
                stop[a] = true;
            }
            if stop[a] {
                continue;
            }
            let mut next = size;
            next[a] += 1;
            if full(next) {
                size = next;
            } else {
                stop[a] = true;
            }
        }
    }
    Ok(Region {
        row0: (h - size[0]) / 2,
        rows: size[0],
        col0: (w - size[1]) / 2,
        cols: size[1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mri::masks::{make_mask, MaskKind};
    use ndarray::Array3;

    #[test]
    fn mask_is_where_any_coil_is_nonzero() {
        let mut k = Array3::<Complex32>::zeros((2, 4, 5));
        k[[0, 1, 2]] = Complex32::new(0.0, -1e-30);
        k[[1, 3, 4]] = Complex32::new(2.0, 0.0);
        let m = detect_mask(k.view());
        assert_eq!(m.sum(), 2.0);
        assert_eq!((m[[1, 2]], m[[3, 4]]), (1.0, 1.0));
    }

    #[test]
    fn region_is_the_acs_block_of_generated_masks() {
        // uniform1d at 4x with 24 ACS columns of 96: every row is fully sampled, so the
        // region is limited by the cap along H and by the ACS columns along W.
        let mask = make_mask(MaskKind::Uniform1d, 64, 96, 4.0, 0.25, 0).unwrap();
        let r = calibration_region(&mask, 24).unwrap();
        assert_eq!((r.rows, r.cols), (24, 24), "{r:?}");
        assert_eq!((r.row0, r.col0), (20, 36));
        assert!(mask
            .indexed_iter()
            .filter(|((i, j), _)| r.contains(*i, *j))
            .all(|(_, &v)| v == 1.0));
        // A wider cap finds exactly the 24 ACS columns (the neighbours are not sampled).
        let r = calibration_region(&mask, 1000).unwrap();
        assert_eq!((r.rows, r.cols), (64, 24));
        // A 2-D Poisson mask with a 12 x 12 ACS block.
        let mask = make_mask(MaskKind::Poisson, 96, 96, 4.0, 0.125, 3).unwrap();
        let r = calibration_region(&mask, 24).unwrap();
        assert!(r.rows >= 12 && r.cols >= 12, "{r:?}");
    }

    #[test]
    fn unsampled_centre_is_an_error() {
        let mut mask = Array2::<f32>::ones((8, 8));
        mask[[4, 4]] = 0.0;
        let e = calibration_region(&mask, 24).unwrap_err().to_string();
        assert!(e.contains("centre") && e.contains("(4, 4)"), "{e}");
    }
}
