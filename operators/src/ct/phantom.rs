//! Analytic phantoms: sums of uniform ellipses, rasterised with supersampling or projected
//! exactly (analytic line integrals), the modified Shepp-Logan phantom, and the random
//! ellipse phantoms of the standard synthetic CT training set.
//!
//! Ellipses live in the image coordinates of [`super::geometry`]: `x` right, `y` up,
//! origin at the image centre, lengths in the units of the pixel size. Overlapping
//! ellipses add up.

use std::f64::consts::PI;

use ndarray::{Array2, Array3};
use rand::Rng;
use rand_distr::{Distribution, Exp1, Poisson};

use super::geometry::{Geometry, Ray};
use crate::error::{validate, Error, Result};
use crate::rng;

const OP: &str = "phantom";

/// A uniform ellipse: `value` inside, 0 outside.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ellipse {
    /// Centre `(x, y)`.
    pub center: [f64; 2],
    /// Semi-axes `(a, b)`: `a` along the ellipse's own x axis, `b` along its y axis.
    pub axes: [f64; 2],
    /// Rotation of the ellipse's x axis from the image x axis, radians, counter-clockwise.
    pub angle: f64,
    /// The value (attenuation) inside.
    pub value: f64,
}

impl Ellipse {
    /// Checks that the semi-axes are positive and everything is finite.
    pub fn new(center: [f64; 2], axes: [f64; 2], angle: f64, value: f64) -> Result<Self> {
        validate::positive(OP, "semi-axis a", axes[0])?;
        validate::positive(OP, "semi-axis b", axes[1])?;
        for (key, v) in [
            ("centre x", center[0]),
            ("centre y", center[1]),
            ("angle", angle),
            ("value", value),
        ] {
            if !v.is_finite() {
                return Err(Error::param(OP, key, format!("must be finite, got {v}")));
            }
        }
        Ok(Ellipse {
            center,
            axes,
            angle,
            value,
        })
    }

    /// `p` expressed in the ellipse's frame and scaled by its semi-axes: inside when the
    /// result has norm <= 1.
    #[inline]
    fn in_unit_frame(&self, p: [f64; 2]) -> [f64; 2] {
        let (s, c) = self.angle.sin_cos();
        let (dx, dy) = (p[0] - self.center[0], p[1] - self.center[1]);
        [
            (c * dx + s * dy) / self.axes[0],
            (-s * dx + c * dy) / self.axes[1],
        ]
    }

    /// Whether `(x, y)` lies inside (boundary included).
    pub fn contains(&self, x: f64, y: f64) -> bool {
        let q = self.in_unit_frame([x, y]);
        q[0] * q[0] + q[1] * q[1] <= 1.0
    }

    /// The exact line integral of the ellipse along the line through `ray.origin` with
    /// direction `ray.direction` (which need not be unit: it is normalised here): `value`
    /// times the chord length.
    pub fn line_integral(&self, ray: &Ray) -> f64 {
        let d = ray.direction;
        let n = d[0].hypot(d[1]);
        if n == 0.0 {
            return 0.0;
        }
        let (s, c) = self.angle.sin_cos();
        let q = self.in_unit_frame(ray.origin);
        let e = [
            (c * d[0] + s * d[1]) / (n * self.axes[0]),
            (-s * d[0] + c * d[1]) / (n * self.axes[1]),
        ];
        // |q + t e|^2 = 1: A t^2 + B t + C = 0; the chord is sqrt(B^2 - 4AC) / A long.
        let a = e[0] * e[0] + e[1] * e[1];
        let b = 2.0 * (q[0] * e[0] + q[1] * e[1]);
        let cc = q[0] * q[0] + q[1] * q[1] - 1.0;
        let disc = b * b - 4.0 * a * cc;
        if disc <= 0.0 {
            0.0
        } else {
            self.value * disc.sqrt() / a
        }
    }

    /// Half-widths of the axis-aligned bounding box.
    fn half_extent(&self) -> [f64; 2] {
        let (s, c) = self.angle.sin_cos();
        let [a, b] = self.axes;
        [
            ((a * c).powi(2) + (b * s).powi(2)).sqrt(),
            ((a * s).powi(2) + (b * c).powi(2)).sqrt(),
        ]
    }
}

/// A sum of ellipses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Phantom {
    pub ellipses: Vec<Ellipse>,
}

/// The modified Shepp-Logan phantom (Toft's higher-contrast values), on [-1, 1]^2:
/// `(value, a, b, x0, y0, angle in degrees)`.
const SHEPP_LOGAN: [[f64; 6]; 10] = [
    [1.0, 0.69, 0.92, 0.0, 0.0, 0.0],
    [-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0],
    [-0.2, 0.11, 0.31, 0.22, 0.0, -18.0],
    [-0.2, 0.16, 0.41, -0.22, 0.0, 18.0],
    [0.1, 0.21, 0.25, 0.0, 0.35, 0.0],
    [0.1, 0.046, 0.046, 0.0, 0.1, 0.0],
    [0.1, 0.046, 0.046, 0.0, -0.1, 0.0],
    [0.1, 0.046, 0.023, -0.08, -0.605, 0.0],
    [0.1, 0.023, 0.023, 0.0, -0.606, 0.0],
    [0.1, 0.023, 0.046, 0.06, -0.605, 0.0],
];

impl Phantom {
    /// The modified Shepp-Logan phantom scaled so that its reference square [-1, 1]^2
    /// becomes [-radius, radius]^2 (values: 1 in the skull, 0.2 in the brain, 0 to 0.3 in
    /// the features).
    pub fn shepp_logan(radius: f64) -> Phantom {
        Phantom {
            ellipses: SHEPP_LOGAN
                .iter()
                .map(|&[v, a, b, x, y, deg]| Ellipse {
                    center: [x * radius, y * radius],
                    axes: [a * radius, b * radius],
                    angle: deg.to_radians(),
                    value: v,
                })
                .collect(),
        }
    }

    /// A random ellipse phantom, the distribution of the "ellipses" synthetic CT data set
    /// (as in dival / LoDoPaB pre-training), drawn from `seed`, on [-radius, radius]^2:
    /// `min(Poisson(40), 70)` ellipses with values uniform in [-0.4, 1), semi-axes
    /// `0.2 * Exp(1)` each, centres uniform in [-0.9, 0.9]^2 and uniform rotations (all
    /// lengths times `radius`). Values add where ellipses overlap and may be negative;
    /// [`random_ellipses_image`] rasterises and normalises it to nonnegative attenuation.
    pub fn random_ellipses(seed: u64, radius: f64) -> Phantom {
        const MAX: usize = 70;
        let mut r = rng::seeded(seed, "ct-random-ellipses");
        let count = Poisson::new(40.0)
            .map(|p| p.sample(&mut r) as usize)
            .unwrap_or(40)
            .min(MAX);
        let ellipses = (0..count)
            .map(|_| {
                let value = r.random_range(-0.4..1.0);
                let a: f64 = Exp1.sample(&mut r);
                let b: f64 = Exp1.sample(&mut r);
                let x = r.random_range(-0.9..0.9);
                let y = r.random_range(-0.9..0.9);
                let angle = r.random_range(0.0..2.0 * PI);
                Ellipse {
                    center: [x * radius, y * radius],
                    axes: [(0.2 * a * radius).max(1e-9), (0.2 * b * radius).max(1e-9)],
                    angle,
                    value,
                }
            })
            .collect();
        Phantom { ellipses }
    }

    /// The exact line integral of the phantom along `ray`.
    pub fn line_integral(&self, ray: &Ray) -> f64 {
        self.ellipses.iter().map(|e| e.line_integral(ray)).sum()
    }

    /// The exact (analytic) sinogram `(views, detectors)` of the phantom for `geometry`:
    /// the line integral along each detector's ray. Free of discretisation error, so data
    /// made this way avoid the "inverse crime" of simulating with the reconstruction's own
    /// projector.
    pub fn sinogram(&self, geometry: &Geometry) -> Array2<f32> {
        let (nv, nd) = (geometry.views(), geometry.detectors());
        Array2::from_shape_fn((nv, nd), |(v, k)| {
            self.line_integral(&geometry.ray(v, k)) as f32
        })
    }

    /// The phantom on an `h x w` grid of side `pixel` (the grid of [`Geometry`]): each
    /// pixel holds the mean of the phantom over `supersample^2` evenly spread points inside
    /// it, so edge pixels get their partial-volume value to within `1 / supersample^2`.
    pub fn rasterize(
        &self,
        h: usize,
        w: usize,
        pixel: f64,
        supersample: usize,
    ) -> Result<Array3<f32>> {
        if h == 0 || w == 0 {
            return Err(Error::param(
                OP,
                "shape",
                format!("must have at least one pixel, got {h}x{w}"),
            ));
        }
        validate::positive(OP, "pixel", pixel)?;
        if supersample == 0 {
            return Err(Error::param(OP, "supersample", "must be at least 1, got 0"));
        }
        let s = supersample;
        let inv = 1.0 / (s * s) as f64;
        let mut img = Array2::<f64>::zeros((h, w));
        let xc = |j: f64| (j - (w as f64 - 1.0) / 2.0) * pixel;
        let yc = |i: f64| ((h as f64 - 1.0) / 2.0 - i) * pixel;
        let offsets: Vec<f64> = (0..s)
            .map(|q| ((q as f64 + 0.5) / s as f64 - 0.5) * pixel)
            .collect();
        for e in &self.ellipses {
            let [ex, ey] = e.half_extent();
            // Index ranges of pixels whose square can meet the bounding box.
            let j_lo = ((e.center[0] - ex) / pixel + (w as f64 - 1.0) / 2.0 - 1.0).floor();
            let j_hi = ((e.center[0] + ex) / pixel + (w as f64 - 1.0) / 2.0 + 1.0).ceil();
            let i_lo = ((h as f64 - 1.0) / 2.0 - (e.center[1] + ey) / pixel - 1.0).floor();
            let i_hi = ((h as f64 - 1.0) / 2.0 - (e.center[1] - ey) / pixel + 1.0).ceil();
            let clamp = |v: f64, n: usize| v.max(0.0).min(n as f64) as usize;
            let (j0, j1) = (clamp(j_lo, w), clamp(j_hi + 1.0, w));
            let (i0, i1) = (clamp(i_lo, h), clamp(i_hi + 1.0, h));
            for i in i0..i1 {
                let y = yc(i as f64);
                for j in j0..j1 {
                    let x = xc(j as f64);
                    let mut inside = 0usize;
                    for oy in &offsets {
                        for ox in &offsets {
                            inside += e.contains(x + ox, y + oy) as usize;
                        }
                    }
                    if inside > 0 {
                        img[[i, j]] += e.value * inside as f64 * inv;
                    }
                }
            }
        }
        Ok(img.mapv(|v| v as f32).insert_axis(ndarray::Axis(0)))
    }
}

/// The modified Shepp-Logan phantom as an `(1, h, w)` image (pixel size 1, the reference
/// square fitted to the shorter side), supersampled 4x4 per pixel.
pub fn shepp_logan_image(h: usize, w: usize) -> Result<Array3<f32>> {
    Phantom::shepp_logan(h.min(w) as f64 / 2.0).rasterize(h, w, 1.0, 4)
}

/// One image of the random-ellipses training set, `(1, h, w)`: the phantom of
/// [`Phantom::random_ellipses`] for `seed` (its reference square fitted to the shorter
/// side), rasterised with 4x4 supersampling, then normalised as the data set does: the
/// foreground (nonzero pixels) is shifted up by the image minimum when that is negative,
/// and the image is divided by its maximum, so values lie in [0, 1] with background 0.
pub fn random_ellipses_image(seed: u64, h: usize, w: usize) -> Result<Array3<f32>> {
    let mut img = Phantom::random_ellipses(seed, h.min(w) as f64 / 2.0).rasterize(h, w, 1.0, 4)?;
    let min = img.iter().copied().fold(0.0f32, f32::min);
    if min < 0.0 {
        img.mapv_inplace(|v| if v != 0.0 { v - min } else { v });
    }
    let max = img.iter().copied().fold(0.0f32, f32::max);
    if max > 0.0 {
        img.mapv_inplace(|v| v / max);
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ct::geometry::{FanDetector, GeometryParams};
    use crate::ct::projector::CtProjector;
    use crate::linear::LinearOperatorExt;

    #[test]
    fn chord_of_a_disk_and_a_rotated_ellipse() {
        let disk = Ellipse::new([1.0, -2.0], [3.0, 3.0], 0.3, 2.0).unwrap();
        // A horizontal line at distance 1 from the centre: chord 2 sqrt(9 - 1).
        let ray = Ray {
            origin: [-10.0, -1.0],
            direction: [2.0, 0.0],
        };
        assert!((disk.line_integral(&ray) - 2.0 * 2.0 * 8f64.sqrt()).abs() < 1e-12);
        // An ellipse with a = 4, b = 1 rotated by 90 degrees: a vertical line through its
        // centre crosses 2a = 8.
        let e = Ellipse::new([0.5, 0.5], [4.0, 1.0], PI / 2.0, 1.0).unwrap();
        let ray = Ray {
            origin: [0.5, 100.0],
            direction: [0.0, -1.0],
        };
        assert!((e.line_integral(&ray) - 8.0).abs() < 1e-9);
        assert!(e.contains(0.5, 4.4) && !e.contains(1.6, 0.5));
        // A line missing it.
        let ray = Ray {
            origin: [5.0, 0.0],
            direction: [0.0, 1.0],
        };
        assert_eq!(e.line_integral(&ray), 0.0);
        assert!(Ellipse::new([0.0, 0.0], [0.0, 1.0], 0.0, 1.0).is_err());
    }

    #[test]
    fn rasterised_area_matches() {
        // Mass of the rasterised image = sum of value * area, to the partial-volume error
        // of the 8x8 supersampling (perimeter / pixel * 1/64 of a pixel, bounded by 2%).
        let p = Phantom::shepp_logan(30.0);
        let img = p.rasterize(64, 64, 1.0, 8).unwrap();
        let mass: f64 = img.iter().map(|&v| v as f64).sum();
        let exact: f64 = p
            .ellipses
            .iter()
            .map(|e| e.value * PI * e.axes[0] * e.axes[1])
            .sum();
        assert!((mass - exact).abs() < 0.02 * exact, "{mass} vs {exact}");
        // Value at the centre of the brain region: 1 - 0.8 = 0.2; top of the image: 0.
        assert!((img[[0, 32, 32]] - 0.2).abs() < 1e-6);
        assert_eq!(img[[0, 0, 0]], 0.0);
    }

    fn rel_l2(a: &Array2<f32>, b: &ndarray::ArrayD<f32>) -> f64 {
        let num: f64 = a
            .iter()
            .zip(b.iter())
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum();
        let den: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    #[test]
    fn projection_matches_analytic_line_integrals() {
        // The projector sees the rasterised (partial-volume) image and interpolates it
        // linearly, so it differs from the exact line integrals by edge effects that
        // shrink in proportion to the pixel size (first-order convergence, checked in
        // `projection_error_converges`). Measured relative L2 errors at 128x128, 45 views:
        // 0.85% for a smooth 40x22-pixel ellipse and 2.7-3.0% for Shepp-Logan (its skull
        // is under 2 pixels thick); the bounds below leave ~35% headroom. A wrong weight, a
        // flipped axis or a half-pixel grid shift gives 10% or more.
        let (h, w) = (128, 128);
        let pixel = 0.5;
        let sl = Phantom::shepp_logan(h as f64 / 2.0 * pixel);
        let img = sl.rasterize(h, w, pixel, 4).unwrap();
        let disk = Phantom {
            ellipses: vec![Ellipse::new([3.0, -5.0], [20.0, 11.0], 0.4, 1.0).unwrap()],
        };
        let dimg = disk.rasterize(h, w, pixel, 4).unwrap();
        for p in [
            GeometryParams::parallel(),
            GeometryParams::fan(FanDetector::Arc),
            GeometryParams::fan(FanDetector::Flat),
        ] {
            let g = Geometry::new(h, w, &p.views(45).pixel(pixel)).unwrap();
            let op = CtProjector::new(g.clone()).unwrap();
            for (name, ph, im, tol) in [
                ("shepp-logan", &sl, &img, 0.04),
                ("ellipse", &disk, &dimg, 0.012),
            ] {
                let exact = ph.sinogram(&g);
                let y = op.apply_to(im.view().into_dyn()).unwrap();
                let err = rel_l2(&exact, &y);
                assert!(
                    err < tol,
                    "{}: {name}: relative L2 error {err}",
                    g.describe()
                );
            }
        }
    }

    #[test]
    fn random_ellipses_are_seeded_and_normalised() {
        let a = random_ellipses_image(5, 40, 48).unwrap();
        let b = random_ellipses_image(5, 40, 48).unwrap();
        let c = random_ellipses_image(6, 40, 48).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        for img in [&a, &c] {
            let min = img.iter().copied().fold(f32::INFINITY, f32::min);
            let max = img.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!(min >= 0.0 && (max - 1.0).abs() < 1e-6, "{min} {max}");
        }
        let p = Phantom::random_ellipses(5, 1.0);
        assert!(p.ellipses.len() <= 70 && !p.ellipses.is_empty());
        assert!(p
            .ellipses
            .iter()
            .all(|e| e.center[0].abs() <= 0.9 && (-0.4..1.0).contains(&e.value)));
    }

    #[test]
    fn projection_error_converges() {
        // Halving the pixel size must roughly halve the error against the analytic
        // sinogram (measured: 1.70%, 0.85%, 0.46% at 64, 128, 256 pixels) and keep the
        // total mass (sum of the sinogram) within 0.1%: a systematic error (wrong step
        // weight, shifted grid) would not shrink.
        let ellipse = Phantom {
            ellipses: vec![Ellipse::new([3.0, -5.0], [20.0, 11.0], 0.4, 1.0).unwrap()],
        };
        let mut errors = Vec::new();
        for (n, pixel) in [(64usize, 1.0), (128, 0.5)] {
            let img = ellipse.rasterize(n, n, pixel, 8).unwrap();
            let g =
                Geometry::new(n, n, &GeometryParams::parallel().views(30).pixel(pixel)).unwrap();
            let y = CtProjector::new(g.clone())
                .unwrap()
                .apply_to(img.view().into_dyn())
                .unwrap();
            let exact = ellipse.sinogram(&g);
            let mass = y.iter().map(|&v| v as f64).sum::<f64>()
                / exact.iter().map(|&v| v as f64).sum::<f64>();
            assert!((mass - 1.0).abs() < 1e-3, "{n}: mass ratio {mass}");
            errors.push(rel_l2(&exact, &y));
        }
        assert!(errors[0] / errors[1] > 1.6, "errors {errors:?}");
    }
}
