//! The ray-driven CT projector (Joseph's method) and its exact adjoint.
//!
//! For each ray (a line of [`Geometry`]) the dominant axis is the image axis the ray is
//! closer to: a ray with `|dx| >= |dy|` is sampled once per column, otherwise once per row.
//! At each sample the image is linearly interpolated between the two neighbouring pixels
//! along the other axis (pixels outside the image count as zero), and the samples are
//! weighted by the length of ray per column (row) step, `pixel / |dx|` (`pixel / |dy|`). So
//! `A x` approximates the line integrals of the piecewise-bilinear image, in units of
//! attenuation x length (x pixels with the default `pixel = 1`).
//!
//! The back-projection [`LinearOperator::adjoint`] scatters the same weights back, so it is
//! the exact adjoint (up to f32 rounding). Both run in parallel across views.

use ndarray::{ArrayView2, ArrayViewD, ArrayViewMutD, Axis, Ix2, Ix3};
use rayon::prelude::*;

use super::geometry::{Geometry, Ray};
use crate::error::{Error, Result};
use crate::linear::LinearOperator;

/// One ray, prepared for tracing: along the dominant ("major") axis index `m` in
/// `lo..hi`, the other ("minor") coordinate is `a0 + m * slope` (in pixel index units), and
/// each sample carries `weight`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Trace {
    /// True when the ray is sampled once per column (major axis = columns).
    cols: bool,
    a0: f32,
    slope: f32,
    weight: f32,
    lo: u32,
    hi: u32,
    /// The samples in `inner_lo..inner_hi` (a sub-range of `lo..hi`) have both
    /// interpolation neighbours inside the grid: they take the unchecked fast path.
    inner_lo: u32,
    inner_hi: u32,
}

impl Trace {
    /// Prepares `ray` for an `h x w` grid of side `pixel`.
    pub(crate) fn new(ray: &Ray, h: usize, w: usize, pixel: f64) -> Trace {
        // Pixel index coordinates: column c = x / pixel + (w - 1) / 2, row r = (h - 1) / 2
        // - y / pixel.
        let c0 = ray.origin[0] / pixel + (w as f64 - 1.0) / 2.0;
        let r0 = (h as f64 - 1.0) / 2.0 - ray.origin[1] / pixel;
        let dc = ray.direction[0];
        let dr = -ray.direction[1];
        let cols = dc.abs() >= dr.abs();
        let (m0, n0, dm, dn, n_major, n_minor) = if cols {
            (c0, r0, dc, dr, w, h)
        } else {
            (r0, c0, dr, dc, h, w)
        };
        let slope = dn / dm;
        let a0 = n0 - m0 * slope;
        let weight = pixel / dm.abs();
        // The samples whose minor coordinate lies in [lo_v, hi_v), clamped to the grid.
        let range = |lo_v: f64, hi_v: f64, outward: bool| -> (usize, usize) {
            if slope == 0.0 {
                return if a0 >= lo_v && a0 < hi_v {
                    (0, n_major)
                } else {
                    (0, 0)
                };
            }
            let t1 = (lo_v - a0) / slope;
            let t2 = (hi_v - a0) / slope;
            let (a, b) = if t1 < t2 { (t1, t2) } else { (t2, t1) };
            // Outward: a superset (whole samples around the interval); inward: a subset.
            let (a, b) = if outward {
                (a.floor(), b.ceil() + 1.0)
            } else {
                (a.ceil(), b.floor())
            };
            let lo = a.max(0.0).min(n_major as f64) as usize;
            let hi = b.max(0.0).min(n_major as f64) as usize;
            (lo, hi.max(lo))
        };
        // Samples that can touch the grid: minor coordinate in (-1, n_minor).
        let (lo, hi) = range(-1.0, n_minor as f64, true);
        // Samples with both neighbours inside: minor coordinate in [0, n_minor - 1), with a
        // margin far above the f32 rounding of `a0 + m * slope`.
        let margin = 1e-3;
        let (inner_lo, inner_hi) = if n_minor >= 2 {
            let (a, b) = range(margin, n_minor as f64 - 1.0 - margin, false);
            let (a, b) = (a.max(lo).min(hi), b.max(lo).min(hi));
            (a, b.max(a))
        } else {
            (lo, lo)
        };
        Trace {
            cols,
            a0: a0 as f32,
            slope: slope as f32,
            weight: weight as f32,
            lo: lo as u32,
            hi: hi as u32,
            inner_lo: inner_lo as u32,
            inner_hi: inner_hi as u32,
        }
    }

    /// Calls `f(index, weight)` for every pixel the ray touches, where `index` is into a
    /// buffer laid out `minor * n_major + major` (the image for column rays, its transpose
    /// for row rays). Forward and adjoint both go through here, so they use the same
    /// weights.
    #[inline(always)]
    fn visit(&self, n_major: usize, n_minor: usize, mut f: impl FnMut(usize, f32)) {
        let (lo, hi) = (self.lo as usize, self.hi as usize);
        let (ilo, ihi) = (self.inner_lo as usize, self.inner_hi as usize);
        for m in (lo..ilo).chain(ihi..hi) {
            self.edge_sample(m, n_major, n_minor, &mut f);
        }
        // Interior: 0 < r < n_minor - 1, so truncation is floor and both neighbours exist
        // (the `min` only guards against rounding, never changes a valid index).
        let last = n_minor.saturating_sub(2);
        for m in ilo..ihi {
            let r = self.a0 + m as f32 * self.slope;
            let i0 = (r as usize).min(last);
            let frac = r - i0 as f32;
            let idx = i0 * n_major + m;
            f(idx, self.weight * (1.0 - frac));
            f(idx + n_major, self.weight * frac);
        }
    }

    /// One sample near the grid's edge, with bounds checks.
    #[inline(always)]
    fn edge_sample(
        &self,
        m: usize,
        n_major: usize,
        n_minor: usize,
        f: &mut impl FnMut(usize, f32),
    ) {
        let nm = n_minor as isize;
        let r = self.a0 + m as f32 * self.slope;
        let rf = r.floor();
        let frac = r - rf;
        let i0 = rf as isize;
        if i0 >= 0 && i0 < nm {
            f(i0 as usize * n_major + m, self.weight * (1.0 - frac));
        }
        let i1 = i0 + 1;
        if i1 >= 0 && i1 < nm {
            f(i1 as usize * n_major + m, self.weight * frac);
        }
    }
}

/// The CT projector `A`: image `(1, H, W)` -> sinogram `(views, detectors)`, line integrals
/// by Joseph's method (see the module docs), with its exact adjoint (matched
/// back-projection).
#[derive(Clone, Debug)]
pub struct CtProjector {
    geometry: Geometry,
    traces: Vec<Trace>,
    domain: [usize; 3],
    range: [usize; 2],
}

impl CtProjector {
    /// The projector for `geometry` (rays are prepared once here).
    pub fn new(geometry: Geometry) -> Result<Self> {
        let (h, w) = (geometry.height(), geometry.width());
        let (nv, nd) = (geometry.views(), geometry.detectors());
        if h as u64 * w as u64 > u32::MAX as u64 || nv as u64 * nd as u64 > u32::MAX as u64 {
            return Err(Error::param(
                "ct",
                "image",
                "is too large: the image and the sinogram must each have fewer than 2^32 entries",
            ));
        }
        let traces = (0..nv * nd)
            .into_par_iter()
            .map(|i| Trace::new(&geometry.ray(i / nd, i % nd), h, w, geometry.pixel()))
            .collect();
        Ok(CtProjector {
            traces,
            domain: [1, h, w],
            range: [nv, nd],
            geometry,
        })
    }

    /// The scan geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Row-major image and its transpose, the two buffers the traces index.
    fn buffers(&self, x: ArrayViewD<f32>) -> (Vec<f32>, Vec<f32>) {
        let (h, w) = (self.domain[1], self.domain[2]);
        let x = x
            .into_dimensionality::<Ix3>()
            .expect("ct: input must be (1, H, W)");
        let img = x.index_axis(Axis(0), 0);
        let direct: Vec<f32> = img.iter().copied().collect();
        let transposed: Vec<f32> = img.t().iter().copied().collect();
        debug_assert_eq!(direct.len(), h * w);
        (direct, transposed)
    }
}

impl LinearOperator for CtProjector {
    fn name(&self) -> String {
        format!("ct({})", self.geometry.describe())
    }
    fn domain_shape(&self) -> &[usize] {
        &self.domain
    }
    fn range_shape(&self) -> &[usize] {
        &self.range
    }

    fn apply(&self, x: ArrayViewD<f32>, mut y: ArrayViewMutD<f32>) {
        let (h, w) = (self.domain[1], self.domain[2]);
        let nd = self.range[1];
        let (direct, transposed) = self.buffers(x);
        let mut out = vec![0.0f32; self.range[0] * nd];
        out.par_chunks_mut(nd).enumerate().for_each(|(v, row)| {
            for (k, o) in row.iter_mut().enumerate() {
                let t = &self.traces[v * nd + k];
                let (buf, n_major, n_minor) = if t.cols {
                    (&direct, w, h)
                } else {
                    (&transposed, h, w)
                };
                let mut s = 0.0f32;
                t.visit(n_major, n_minor, |i, wt| s += wt * buf[i]);
                *o = s;
            }
        });
        let out = ArrayView2::from_shape((self.range[0], nd), &out).expect("sinogram shape");
        y.assign(&out.into_dyn());
    }

    fn adjoint(&self, y: ArrayViewD<f32>, x: ArrayViewMutD<f32>) {
        let (h, w) = (self.domain[1], self.domain[2]);
        let nd = self.range[1];
        let y = y
            .into_dimensionality::<Ix2>()
            .expect("ct: sinogram must be (views, detectors)");
        let (direct, transposed) = (0..self.range[0])
            .into_par_iter()
            .fold(
                || (vec![0.0f32; h * w], vec![0.0f32; h * w]),
                |(mut direct, mut transposed), v| {
                    for k in 0..nd {
                        let val = y[[v, k]];
                        if val == 0.0 {
                            continue;
                        }
                        let t = &self.traces[v * nd + k];
                        let (buf, n_major, n_minor) = if t.cols {
                            (&mut direct, w, h)
                        } else {
                            (&mut transposed, h, w)
                        };
                        t.visit(n_major, n_minor, |i, wt| buf[i] += wt * val);
                    }
                    (direct, transposed)
                },
            )
            .reduce(
                || (vec![0.0f32; h * w], vec![0.0f32; h * w]),
                |(mut a, mut at), (b, bt)| {
                    a.iter_mut().zip(&b).for_each(|(p, q)| *p += q);
                    at.iter_mut().zip(&bt).for_each(|(p, q)| *p += q);
                    (a, at)
                },
            );
        let mut x3 = x
            .into_dimensionality::<Ix3>()
            .expect("ct: image must be (1, H, W)");
        let mut img = x3.index_axis_mut(Axis(0), 0);
        for ((i, j), p) in img.indexed_iter_mut() {
            *p = direct[i * w + j] + transposed[j * h + i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ct::geometry::{FanDetector, GeometryParams};
    use crate::linear::{adjoint_test, LinearOperatorExt};
    use ndarray::{Array3, ArrayD};

    fn all_kinds() -> Vec<(&'static str, GeometryParams)> {
        vec![
            ("parallel", GeometryParams::parallel()),
            ("fan-arc", GeometryParams::fan(FanDetector::Arc)),
            ("fan-flat", GeometryParams::fan(FanDetector::Flat)),
        ]
    }

    #[test]
    fn adjoint_is_exact() {
        // Odd and even shapes, non-square, default, sparse and limited-angle scans, and a
        // start angle that puts views exactly on the 45 degree diagonals.
        let shapes = [(16, 16), (17, 23), (24, 9), (1, 5)];
        for (name, base) in all_kinds() {
            for &(h, w) in &shapes {
                for (label, p) in [
                    ("default", base.clone().views(36)),
                    ("sparse", base.clone().views(7)),
                    ("limited", base.clone().views(20).arc(90.0)),
                    ("odd-detectors", base.clone().views(12).detectors(15)),
                    (
                        "diagonals",
                        GeometryParams {
                            start_degrees: 45.0,
                            ..base.clone().views(8)
                        },
                    ),
                ] {
                    let g = Geometry::new(h, w, &p).unwrap();
                    let op = CtProjector::new(g).unwrap();
                    let tag = format!("{name} {label} {h}x{w}");
                    adjoint_test(&op, 7).verdict(&tag, 1e-5).unwrap();
                }
            }
        }
    }

    /// An independent, slow Joseph projector: for each ray, walks the dominant axis with
    /// explicit geometry in f64 and reads the image with bounds-checked bilinear
    /// interpolation along the minor axis.
    fn naive_project(g: &Geometry, img: &Array3<f32>) -> ArrayD<f32> {
        let (h, w) = (g.height(), g.width());
        let p = g.pixel();
        let at = |i: i64, j: i64| -> f64 {
            if i < 0 || j < 0 || i >= h as i64 || j >= w as i64 {
                0.0
            } else {
                img[[0, i as usize, j as usize]] as f64
            }
        };
        let mut out = ArrayD::zeros(vec![g.views(), g.detectors()]);
        for v in 0..g.views() {
            for k in 0..g.detectors() {
                let r = g.ray(v, k);
                let (ox, oy) = (r.origin[0], r.origin[1]);
                let (dx, dy) = (r.direction[0], r.direction[1]);
                let mut s = 0.0;
                if dx.abs() >= dy.abs() {
                    for j in 0..w {
                        let x = (j as f64 - (w as f64 - 1.0) / 2.0) * p;
                        let y = oy + (x - ox) / dx * dy;
                        let row = (h as f64 - 1.0) / 2.0 - y / p;
                        let i0 = row.floor();
                        let f = row - i0;
                        s += (1.0 - f) * at(i0 as i64, j as i64) + f * at(i0 as i64 + 1, j as i64);
                    }
                    s *= p / dx.abs();
                } else {
                    for i in 0..h {
                        let y = ((h as f64 - 1.0) / 2.0 - i as f64) * p;
                        let x = ox + (y - oy) / dy * dx;
                        let col = x / p + (w as f64 - 1.0) / 2.0;
                        let j0 = col.floor();
                        let f = col - j0;
                        s += (1.0 - f) * at(i as i64, j0 as i64) + f * at(i as i64, j0 as i64 + 1);
                    }
                    s *= p / dy.abs();
                }
                out[[v, k]] = s as f32;
            }
        }
        out
    }

    #[test]
    fn matches_naive_joseph() {
        for (name, base) in all_kinds() {
            for &(h, w) in &[(15, 15), (12, 19)] {
                let g = Geometry::new(h, w, &base.clone().views(13).pixel(0.7)).unwrap();
                let img = crate::linear::random_array(&[1, h, w], 3, "img")
                    .into_dimensionality::<Ix3>()
                    .unwrap();
                let op = CtProjector::new(g.clone()).unwrap();
                let fast = op.apply_to(img.view().into_dyn()).unwrap();
                let slow = naive_project(&g, &img);
                // Same weights, different arithmetic (f32 with a precomputed slope vs f64
                // from the geometry): the interpolation fractions differ by ~1e-6 of a
                // pixel, so entries agree to ~1e-5 of the row sum of |x|.
                let scale = img.iter().map(|v| v.abs()).sum::<f32>() / h.min(w) as f32;
                let err = (&fast - &slow).iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert!(err <= 1e-4 * scale, "{name} {h}x{w}: max error {err}");
            }
        }
    }

    #[test]
    fn constant_image_gives_chord_lengths() {
        // A parallel ray at 0 degrees through the centre of a W-wide image of ones crosses
        // W pixels: line integral W * pixel.
        let g = Geometry::new(
            10,
            14,
            &GeometryParams::parallel().views(4).detectors(1).pixel(0.5),
        )
        .unwrap();
        let op = CtProjector::new(g).unwrap();
        let y = op
            .apply_to(ndarray::ArrayD::ones(vec![1, 10, 14]).view())
            .unwrap();
        // View 0: theta = 0, rays go along +y through the column centre x = 0 (between
        // columns 6 and 7): 10 rows * 0.5.
        assert!((y[[0, 0]] - 5.0).abs() < 1e-5, "{}", y[[0, 0]]);
        // View 2: theta = 90 degrees, rays along -x: 14 columns * 0.5.
        assert!((y[[2, 0]] - 7.0).abs() < 1e-5, "{}", y[[2, 0]]);
    }

    /// Timing only (never asserted): `cargo test --release -p posterior-operators --lib
    /// ct::projector::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, not a check: cargo test --release -p posterior-operators --lib ct::projector::tests::timing -- --ignored --nocapture"]
    fn timing() {
        let g = Geometry::new(512, 512, &GeometryParams::parallel().views(180)).unwrap();
        let t0 = std::time::Instant::now();
        let op = CtProjector::new(g).unwrap();
        let build = t0.elapsed();
        let x = crate::linear::random_array(&[1, 512, 512], 1, "x");
        let y = op.apply_to(x.view()).unwrap();
        let t0 = std::time::Instant::now();
        let reps = 5;
        for _ in 0..reps {
            std::hint::black_box(op.apply_to(x.view()).unwrap());
        }
        let fwd = t0.elapsed() / reps;
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            std::hint::black_box(op.adjoint_to(y.view()).unwrap());
        }
        let adj = t0.elapsed() / reps;
        eprintln!(
            "512x512, 180 views, {} detectors, {} threads: build {build:?}, forward {fwd:?}, adjoint {adj:?}",
            op.range_shape()[1],
            rayon::current_num_threads()
        );
    }
}
