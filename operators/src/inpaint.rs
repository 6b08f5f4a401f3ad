//! Inpainting: a pixel mask `y = m ⊙ x`.
//!
//! Conventions:
//! - Domain and range are images `(C, H, W)`. The mask `m` has shape `(H, W)`, values in
//!   {0, 1} (1 = observed, 0 = missing), and is broadcast over the channels.
//! - The range keeps the image's shape: missing pixels are present in `y` and hold 0. The
//!   operator is an orthogonal projection, so `A^T = A`, `A^T A = A`, and
//!   `(A^T A + gamma I)^-1 = diag(1 / (m + gamma))`; [`LinearOperator::restrict_to_measured`]
//!   zeroes the missing pixels, so noise lands only where there are data.
//!
//! Mask generators (all return a boolean `(H, W)` array, `true` = observed, and are seeded
//! where random): [`box_mask`] (one centred square hole, as DPS's 128x128 box on 256x256
//! images), [`random_boxes`], [`random_pixels`] (a given FRACTION OF PIXELS MISSING, as the
//! "random inpainting" of DPS / RED-diff with 0.7 missing) and [`strokes`] (free-form thick
//! brush strokes like the irregular masks of LaMa / Co-Mod-GAN).

use ndarray::{Array2, ArrayD, ArrayViewD, ArrayViewMutD, Axis, Zip};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{validate, Error, Result};
use crate::linear::LinearOperator;
use crate::rng;

const OP: &str = "inpaint";

/// Checks that `(h, w)` are positive image sizes.
fn check_dims(h: usize, w: usize) -> Result<()> {
    if h == 0 || w == 0 {
        Err(Error::param(
            OP,
            "shape",
            format!("must have positive height and width, got {h}x{w}"),
        ))
    } else {
        Ok(())
    }
}

/// Checks a square hole's side against the image.
fn check_box_size(h: usize, w: usize, size: usize) -> Result<()> {
    if size == 0 || size > h.min(w) {
        Err(Error::param(
            OP,
            "size",
            format!(
                "must be a box side between 1 and {} pixels for a {h}x{w} image, got {size}",
                h.min(w)
            ),
        ))
    } else {
        Ok(())
    }
}

/// One centred square hole of `size x size` pixels; everything else observed. The hole
/// starts at row `(h - size) / 2` and column `(w - size) / 2`.
pub fn box_mask(h: usize, w: usize, size: usize) -> Result<Array2<bool>> {
    check_dims(h, w)?;
    check_box_size(h, w, size)?;
    let (top, left) = ((h - size) / 2, (w - size) / 2);
    Ok(Array2::from_shape_fn((h, w), |(i, j)| {
        !(i >= top && i < top + size && j >= left && j < left + size)
    }))
}

/// `count` square holes of `size x size` pixels at uniformly random positions, each lying
/// wholly inside the image; holes may overlap.
pub fn random_boxes(
    h: usize,
    w: usize,
    count: usize,
    size: usize,
    seed: u64,
) -> Result<Array2<bool>> {
    check_dims(h, w)?;
    check_box_size(h, w, size)?;
    if count == 0 {
        return Err(Error::param(OP, "count", "must be at least 1 box, got 0"));
    }
    let mut r = rng::seeded(seed, "inpaint-boxes");
    let mut m = Array2::from_elem((h, w), true);
    for _ in 0..count {
        let top = r.random_range(0..=h - size);
        let left = r.random_range(0..=w - size);
        m.slice_mut(ndarray::s![top..top + size, left..left + size])
            .fill(false);
    }
    Ok(m)
}

/// Exactly `round(fraction_missing * h * w)` pixels missing, chosen uniformly at random
/// without replacement. `fraction_missing` is the fraction of pixels MISSING (not observed)
/// and lies in [0, 1]: DPS and RED-diff's random inpainting uses 0.7.
pub fn random_pixels(h: usize, w: usize, fraction_missing: f64, seed: u64) -> Result<Array2<bool>> {
    check_dims(h, w)?;
    validate::in_range(OP, "fraction", fraction_missing, 0.0, 1.0)?;
    let n = h * w;
    let missing = ((fraction_missing * n as f64).round() as usize).min(n);
    let mut r = rng::seeded(seed, "inpaint-pixels");
    // Partial Fisher-Yates: the first `missing` entries are a uniform random subset.
    let mut idx: Vec<usize> = (0..n).collect();
    for k in 0..missing {
        let j = r.random_range(k..n);
        idx.swap(k, j);
    }
    let mut m = Array2::from_elem((h, w), true);
    if let Some(flat) = m.as_slice_mut() {
        for &k in &idx[..missing] {
            flat[k] = false;
        }
    }
    Ok(m)
}

/// Free-form brush strokes: random thick polylines, drawn until a fraction `coverage` of
/// the pixels is missing (the last segment is cut short at that point, so the coverage is
/// met to within a stroke's width times a few pixels).
///
/// Each stroke starts at a random pixel and has 4 to 10 segments; the heading turns by a
/// random angle (standard deviation 45°) at each vertex (and turns back where it would
/// leave the image), segment lengths are uniform in
/// [1/16, 1/5] of the image's smaller side, and the brush width is uniform in [1/40, 1/12]
/// of that side (at least 2 pixels), fixed per stroke, as in the irregular masks of LaMa
/// and Co-Mod-GAN. `coverage` lies in [0, 0.9].
pub fn strokes(h: usize, w: usize, coverage: f64, seed: u64) -> Result<Array2<bool>> {
    check_dims(h, w)?;
    validate::in_range(OP, "coverage", coverage, 0.0, 0.9)?;
    let mut r = rng::seeded(seed, "inpaint-strokes");
    let mut m = Array2::from_elem((h, w), true);
    let target = (coverage * (h * w) as f64).round() as usize;
    let mut missing = 0usize;
    let side = h.min(w) as f64;
    // A generous cap: every stroke covers at least a few pixels, so this is never reached
    // for coverage <= 0.9 unless the image is tiny; it guarantees termination.
    let max_strokes = 10_000;
    'outer: for _ in 0..max_strokes {
        if missing >= target {
            break;
        }
        let radius = (side * r.random_range(1.0 / 40.0..1.0 / 12.0)).max(2.0) / 2.0;
        let mut y = r.random_range(0.0..h as f64);
        let mut x = r.random_range(0.0..w as f64);
        let mut heading = r.random_range(0.0..std::f64::consts::TAU);
        let segments = r.random_range(4..=10);
        for _ in 0..segments {
            let turn: f64 = StandardNormal.sample(&mut r);
            heading += turn * std::f64::consts::FRAC_PI_4;
            let len = side * r.random_range(1.0 / 16.0..1.0 / 5.0);
            let inside =
                |a: f64, b: f64| a >= 0.0 && a <= (w - 1) as f64 && b >= 0.0 && b <= (h - 1) as f64;
            if !inside(x + len * heading.cos(), y + len * heading.sin()) {
                // Turn back rather than run along the border.
                heading += std::f64::consts::PI;
            }
            let (x1, y1) = (
                (x + len * heading.cos()).clamp(0.0, (w - 1) as f64),
                (y + len * heading.sin()).clamp(0.0, (h - 1) as f64),
            );
            // Sweep the brush along the segment in sub-pixel steps, so that the stroke can
            // stop as soon as the target is met.
            let seg = ((x1 - x).powi(2) + (y1 - y).powi(2)).sqrt();
            let n = ((seg * 2.0).ceil() as usize).max(1);
            for s in 0..=n {
                let t = s as f64 / n as f64;
                let (cx, cy) = (x + t * (x1 - x), y + t * (y1 - y));
                missing += stamp_disc(&mut m, cy, cx, radius);
                if missing >= target {
                    break 'outer;
                }
            }
            (x, y) = (x1, y1);
        }
    }
    Ok(m)
}

/// Marks as missing the pixels whose centres lie within `radius` of `(cy, cx)`; returns how
/// many were newly marked.
fn stamp_disc(m: &mut Array2<bool>, cy: f64, cx: f64, radius: f64) -> usize {
    let (h, w) = m.dim();
    let i0 = (cy - radius).floor().max(0.0) as usize;
    let i1 = ((cy + radius).ceil() as usize).min(h - 1);
    let j0 = (cx - radius).floor().max(0.0) as usize;
    let j1 = ((cx + radius).ceil() as usize).min(w - 1);
    let mut newly = 0;
    for i in i0..=i1 {
        for j in j0..=j1 {
            let d2 = (i as f64 - cy).powi(2) + (j as f64 - cx).powi(2);
            if d2 <= radius * radius && m[[i, j]] {
                m[[i, j]] = false;
                newly += 1;
            }
        }
    }
    newly
}

/// The inpainting operator `y = m ⊙ x` on images `(C, H, W)`; see the module docs.
#[derive(Clone, Debug)]
pub struct Mask {
    shape: Vec<usize>,
    /// 1.0 where observed, 0.0 where missing.
    mask: Array2<f32>,
    label: String,
    observed: usize,
}

impl Mask {
    /// A mask operator for images of `shape = (C, H, W)`; `mask` is `(H, W)` with `true` =
    /// observed. `label` describes the mask in messages (e.g. `box 32`).
    pub fn new(shape: &[usize], mask: Array2<bool>, label: &str) -> Result<Self> {
        let (c, h, w) = crate::error::validate::image_shape(OP, shape)?;
        if mask.dim() != (h, w) {
            return Err(Error::shape(OP, "mask", &[h, w], mask.shape()));
        }
        let observed = mask.iter().filter(|&&b| b).count();
        Ok(Mask {
            shape: vec![c, h, w],
            mask: mask.mapv(|b| if b { 1.0 } else { 0.0 }),
            label: label.to_string(),
            observed,
        })
    }

    /// The mask as 0/1 values, `(H, W)`, 1 = observed.
    pub fn mask(&self) -> &Array2<f32> {
        &self.mask
    }

    /// The fraction of pixels observed.
    pub fn observed_fraction(&self) -> f64 {
        self.observed as f64 / self.mask.len() as f64
    }

    /// `out[c] = f(m, x[c])` for every channel.
    fn map(&self, x: ArrayViewD<f32>, mut out: ArrayViewMutD<f32>, f: impl Fn(f32, f32) -> f32) {
        for (xc, oc) in x.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
            Zip::from(oc)
                .and(xc)
                .and(self.mask.view().into_dyn())
                .for_each(|o, &v, &m| *o = f(m, v));
        }
    }
}

impl LinearOperator for Mask {
    fn name(&self) -> String {
        format!(
            "inpaint({}, {:.1}% observed)",
            self.label,
            100.0 * self.observed_fraction()
        )
    }
    fn domain_shape(&self) -> &[usize] {
        &self.shape
    }
    fn range_shape(&self) -> &[usize] {
        &self.shape
    }
    fn apply(&self, x: ArrayViewD<f32>, y: ArrayViewMutD<f32>) {
        self.map(x, y, |m, v| m * v);
    }
    fn adjoint(&self, y: ArrayViewD<f32>, x: ArrayViewMutD<f32>) {
        self.map(y, x, |m, v| m * v);
    }
    /// `A^T A = A` (a projection).
    fn normal(&self, x: ArrayViewD<f32>, out: ArrayViewMutD<f32>) {
        self.map(x, out, |m, v| m * v);
    }
    /// `rhs / (m + gamma)`. `None` for a negative or non-finite `gamma`, and for
    /// `gamma = 0` when some pixel is missing (the system is then singular).
    fn solve_regularized(&self, gamma: f32, rhs: ArrayViewD<f32>) -> Option<ArrayD<f32>> {
        if !gamma.is_finite() || gamma < 0.0 || (gamma == 0.0 && self.observed < self.mask.len()) {
            return None;
        }
        let mut out = ArrayD::zeros(rhs.raw_dim());
        self.map(rhs, out.view_mut(), |m, v| v / (m + gamma));
        Some(out)
    }
    /// Zeroes the missing pixels in every channel.
    fn restrict_to_measured(&self, mut y: ArrayViewMutD<f32>) {
        for yc in y.axis_iter_mut(Axis(0)) {
            Zip::from(yc)
                .and(self.mask.view().into_dyn())
                .for_each(|v, &m| {
                    if m == 0.0 {
                        *v = 0.0;
                    }
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::{
        adjoint_test, normal_mismatch, random_array, solve_regularized_residual, LinearOperatorExt,
    };
    use ndarray::IxDyn;

    fn missing_fraction(m: &Array2<bool>) -> f64 {
        m.iter().filter(|&&b| !b).count() as f64 / m.len() as f64
    }

    /// Every generator at one image size: (name, mask).
    fn masks(h: usize, w: usize, seed: u64) -> Vec<(&'static str, Array2<bool>)> {
        let s = h.min(w);
        vec![
            ("box", box_mask(h, w, s / 2).unwrap()),
            ("boxes", random_boxes(h, w, 3, s / 4 + 1, seed).unwrap()),
            ("random", random_pixels(h, w, 0.7, seed).unwrap()),
            ("strokes", strokes(h, w, 0.3, seed).unwrap()),
        ]
    }

    #[test]
    fn adjoint_is_exact_for_every_mask_and_shape() {
        for &(c, h, w) in &[(1, 8, 8), (3, 9, 7), (1, 16, 11), (3, 12, 12)] {
            for (name, m) in masks(h, w, 2) {
                let op = Mask::new(&[c, h, w], m, name).unwrap();
                adjoint_test(&op, 9)
                    .verdict(&format!("{name} {c}x{h}x{w}"), 1e-5)
                    .unwrap();
            }
        }
    }

    #[test]
    fn apply_matches_elementwise_product_and_closed_forms_match_generic() {
        for &(c, h, w) in &[(1, 9, 8), (3, 8, 7)] {
            for (name, m) in masks(h, w, 4) {
                let op = Mask::new(&[c, h, w], m.clone(), name).unwrap();
                let x = random_array(&[c, h, w], 1, "x");
                let y = op.apply_to(x.view()).unwrap();
                for ((ch, i, j), &v) in y
                    .view()
                    .into_dimensionality::<ndarray::Ix3>()
                    .unwrap()
                    .indexed_iter()
                {
                    let expect = if m[[i, j]] { x[[ch, i, j]] } else { 0.0 };
                    assert_eq!(v, expect, "{name} at {ch},{i},{j}");
                }
                assert_eq!(normal_mismatch(&op, 1), 0.0, "{name}: normal");
                // One division and one multiply-add per entry: a few ulps of O(1) values.
                let err = solve_regularized_residual(&op, 0.1, 1).unwrap();
                assert!(err < 1e-5, "{name}: residual {err}");

                let mut r = random_array(&[c, h, w], 3, "y");
                op.restrict_to_measured(r.view_mut());
                for ((_, i, j), &v) in r
                    .view()
                    .into_dimensionality::<ndarray::Ix3>()
                    .unwrap()
                    .indexed_iter()
                {
                    assert_eq!(v == 0.0, !m[[i, j]], "{name}: restrict at {i},{j}");
                }
            }
        }
        let op = Mask::new(&[1, 4, 4], box_mask(4, 4, 2).unwrap(), "b").unwrap();
        let rhs = ArrayD::zeros(IxDyn(&[1, 4, 4]));
        assert!(op.solve_regularized(0.0, rhs.view()).is_none());
        assert!(op.solve_regularized(-1.0, rhs.view()).is_none());
    }

    #[test]
    fn box_mask_is_centred() {
        let m = box_mask(256, 256, 128).unwrap();
        assert_eq!(missing_fraction(&m), 0.25);
        assert!(!m[[64, 64]] && !m[[191, 191]] && m[[63, 64]] && m[[192, 191]]);
        let m = box_mask(7, 9, 3).unwrap();
        assert!(!m[[2, 3]] && !m[[4, 5]] && m[[1, 3]] && m[[2, 2]] && m[[5, 5]] && m[[4, 6]]);
        assert!(box_mask(8, 8, 9).is_err());
        assert!(box_mask(8, 8, 0).is_err());
    }

    #[test]
    fn generators_hit_their_fractions_and_are_seeded() {
        let (h, w) = (64, 48);
        for f in [0.0, 0.3, 0.7, 0.95] {
            let m = random_pixels(h, w, f, 5).unwrap();
            // Exactly round(f * n) pixels are missing.
            assert!((missing_fraction(&m) - f).abs() <= 0.5 / (h * w) as f64);
        }
        for cov in [0.1, 0.3, 0.6] {
            for seed in 0..3 {
                let m = strokes(h, w, cov, seed).unwrap();
                // The last disc stamped can overshoot by at most its area (~ (48/12)^2 pi).
                let got = missing_fraction(&m);
                let target = (cov * (h * w) as f64).round() / (h * w) as f64;
                assert!(got >= target && got < cov + 0.02, "strokes {cov}: {got}");
            }
        }
        let b = random_boxes(h, w, 4, 8, 1).unwrap();
        let got = missing_fraction(&b);
        assert!(got > 0.0 && got <= 4.0 * 64.0 / (h * w) as f64, "{got}");
        for (seed_a, seed_b) in [(0u64, 1u64), (7, 8)] {
            for (name, a) in masks(h, w, seed_a) {
                let again = masks(h, w, seed_a)
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .unwrap()
                    .1;
                assert_eq!(a, again, "{name}: same seed, different mask");
                if name != "box" {
                    let other = masks(h, w, seed_b)
                        .into_iter()
                        .find(|(n, _)| *n == name)
                        .unwrap()
                        .1;
                    assert_ne!(a, other, "{name}: different seeds, same mask");
                }
            }
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(random_pixels(8, 8, 1.5, 0).is_err());
        assert!(random_pixels(0, 8, 0.5, 0).is_err());
        assert!(strokes(8, 8, 0.95, 0).is_err());
        assert!(random_boxes(8, 8, 0, 2, 0).is_err());
        let e = Mask::new(&[1, 8, 8], Array2::from_elem((8, 7), true), "m").unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        assert!(Mask::new(&[8, 8], Array2::from_elem((8, 8), true), "m").is_err());
    }
}
