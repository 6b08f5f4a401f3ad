//! Scan geometries: where the views and the detector elements are, as rays through the image.
//!
//! Coordinates (shared by the projector, the phantoms and filtered back-projection):
//! - The image `(1, H, W)` lies on a grid of square pixels of side `pixel` (a length; the
//!   default 1 makes line integrals come out in "attenuation x pixels"), centred at the
//!   origin. Pixel `(i, j)` (row `i` from the top, column `j` from the left) has its centre
//!   at `x = (j - (W - 1) / 2) * pixel`, `y = ((H - 1) / 2 - i) * pixel`: `x` to the right,
//!   `y` up, as an image is displayed.
//! - Views are at angles `theta_v = start + v * arc / views`, `v = 0..views` (radians inside,
//!   degrees in the parameters): evenly spaced over the arc, the end point excluded.
//! - Detector elements `k = 0..detectors` sit at offsets `t_k = (k - (detectors - 1) / 2) *
//!   spacing` from the detector centre (a length; for the arc detector, the arc length
//!   along the arc).
//! - Parallel beam, view angle `theta`: element `k` measures the line `{ t_k e + s u }` with
//!   `e = (cos theta, sin theta)` (the detector axis) and `u = (-sin theta, cos theta)` (the
//!   ray direction), i.e. the Radon transform `p(theta, t) = int f(t e + s u) ds`.
//! - Fan beam, view angle `beta`: the source is at `S = -sod * u`, the detector centre at
//!   `S + sdd * u` (`sod` source-to-centre, `sdd` source-to-detector distance). An arc
//!   (equiangular) detector is centred on the source: element `k` is at fan angle
//!   `gamma_k = t_k / sdd` and its ray has direction `cos gamma_k u + sin gamma_k e`. A flat
//!   detector is perpendicular to `u`: element `k` is at `S + sdd u + t_k e`.
//!
//! Every ray is traced as the full line through the image, so the source and the detector
//! are taken to lie outside the image (the source must lie outside its circumscribed
//! circle; that is checked).

use std::f64::consts::PI;

use crate::error::{validate, Error, Result};

const OP: &str = "ct";

/// The detector shape of a fan-beam scanner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanDetector {
    /// Equiangular: a circular arc centred on the source (most clinical scanners).
    Arc,
    /// Equispaced on a straight line perpendicular to the central ray (flat panels).
    Flat,
}

/// The beam: parallel, or a fan from a point source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Beam {
    Parallel,
    Fan {
        /// Source-to-centre (isocentre) distance, a length in the units of `pixel`.
        source_distance: f64,
        /// Source-to-detector distance, a length in the units of `pixel`.
        detector_distance: f64,
        detector: FanDetector,
    },
}

/// Which beam [`GeometryParams`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeamKind {
    Parallel,
    Fan(FanDetector),
}

/// The parameters of a [`Geometry`]; `None` entries take the defaults documented on each.
#[derive(Clone, Debug)]
pub struct GeometryParams {
    pub beam: BeamKind,
    /// Number of views (>= 1). Default 180.
    pub views: usize,
    /// The angular range covered by the views, in degrees, in (0, 360]. Default 180 for
    /// parallel beam (a complete parallel scan), 360 for fan beam.
    pub arc_degrees: Option<f64>,
    /// The angle of the first view, in degrees. Default 0.
    pub start_degrees: f64,
    /// Number of detector elements. Default: enough to cover the image's circumscribed
    /// circle at the default spacing, plus one.
    pub detectors: Option<usize>,
    /// Detector spacing, a length (arc length for the arc detector). Default: one pixel
    /// (parallel), one pixel magnified to the detector, `pixel * sdd / sod` (fan).
    pub spacing: Option<f64>,
    /// Pixel side, a length. Default 1.
    pub pixel: f64,
    /// Fan beam: source-to-centre distance. Default: the image diagonal, twice the radius
    /// of its circumscribed circle (a 60 degree fan covers the image).
    pub source_distance: Option<f64>,
    /// Fan beam: source-to-detector distance. Default: twice `source_distance`
    /// (magnification 2, as in clinical scanners).
    pub detector_distance: Option<f64>,
}

impl GeometryParams {
    /// Parallel beam with every default: 180 views over [0, 180) degrees.
    pub fn parallel() -> Self {
        GeometryParams {
            beam: BeamKind::Parallel,
            views: 180,
            arc_degrees: None,
            start_degrees: 0.0,
            detectors: None,
            spacing: None,
            pixel: 1.0,
            source_distance: None,
            detector_distance: None,
        }
    }
    /// Fan beam with every default: 180 views over [0, 360) degrees.
    pub fn fan(detector: FanDetector) -> Self {
        GeometryParams {
            beam: BeamKind::Fan(detector),
            ..GeometryParams::parallel()
        }
    }
    /// Sets the number of views.
    pub fn views(mut self, views: usize) -> Self {
        self.views = views;
        self
    }
    /// Sets the arc in degrees.
    pub fn arc(mut self, degrees: f64) -> Self {
        self.arc_degrees = Some(degrees);
        self
    }
    /// Sets the number of detector elements.
    pub fn detectors(mut self, n: usize) -> Self {
        self.detectors = Some(n);
        self
    }
    /// Sets the pixel size.
    pub fn pixel(mut self, pixel: f64) -> Self {
        self.pixel = pixel;
        self
    }
}

/// A line through the image: a point on it and its unit direction, in the image
/// coordinates of the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ray {
    pub origin: [f64; 2],
    pub direction: [f64; 2],
}

/// A 2-D CT scan geometry: the image grid, the views and the detector.
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    height: usize,
    width: usize,
    pixel: f64,
    arc: f64,
    angles: Vec<f64>,
    detectors: usize,
    spacing: f64,
    beam: Beam,
}

impl Geometry {
    /// Builds the geometry for an `height x width` image, validating every parameter.
    pub fn new(height: usize, width: usize, p: &GeometryParams) -> Result<Geometry> {
        if height == 0 || width == 0 {
            return Err(Error::param(
                OP,
                "image",
                format!("must have at least one pixel, got {height}x{width}"),
            ));
        }
        if p.views == 0 {
            return Err(Error::param(OP, "views", "must be at least 1, got 0"));
        }
        validate::positive(OP, "pixel", p.pixel)?;
        let default_arc = match p.beam {
            BeamKind::Parallel => 180.0,
            BeamKind::Fan(_) => 360.0,
        };
        let arc_deg = p.arc_degrees.unwrap_or(default_arc);
        if !(arc_deg.is_finite() && arc_deg > 0.0 && arc_deg <= 360.0) {
            return Err(Error::param(
                OP,
                "arc",
                format!("must lie in (0, 360] degrees, got {arc_deg}"),
            ));
        }
        if !p.start_degrees.is_finite() {
            return Err(Error::param(
                OP,
                "start",
                format!("must be a finite angle in degrees, got {}", p.start_degrees),
            ));
        }
        let radius = p.pixel * ((height * height + width * width) as f64).sqrt() / 2.0;
        let (beam, default_spacing, half_extent) = match p.beam {
            BeamKind::Parallel => {
                for (key, v) in [("sod", p.source_distance), ("sdd", p.detector_distance)] {
                    if v.is_some() {
                        return Err(Error::param(
                            OP,
                            key,
                            "applies to fan beam only (geometry=fan)",
                        ));
                    }
                }
                (Beam::Parallel, p.pixel, radius)
            }
            BeamKind::Fan(detector) => {
                let sod = p.source_distance.unwrap_or(2.0 * radius);
                validate::positive(OP, "sod", sod)?;
                if sod <= radius {
                    return Err(Error::param(
                        OP,
                        "sod",
                        format!(
                            "must exceed the radius of the image's circumscribed circle \
                             ({radius:.4}), so that the source lies outside the image; got {sod}"
                        ),
                    ));
                }
                let sdd = p.detector_distance.unwrap_or(2.0 * sod);
                validate::positive(OP, "sdd", sdd)?;
                if sdd <= sod {
                    return Err(Error::param(
                        OP,
                        "sdd",
                        format!("must exceed the source-to-centre distance sod={sod}, got {sdd}"),
                    ));
                }
                let gamma_max = (radius / sod).asin();
                let half = match detector {
                    FanDetector::Arc => sdd * gamma_max,
                    FanDetector::Flat => sdd * gamma_max.tan(),
                };
                (
                    Beam::Fan {
                        source_distance: sod,
                        detector_distance: sdd,
                        detector,
                    },
                    p.pixel * sdd / sod,
                    half,
                )
            }
        };
        let spacing = p.spacing.unwrap_or(default_spacing);
        validate::positive(OP, "spacing", spacing)?;
        let detectors = match p.detectors {
            Some(0) => return Err(Error::param(OP, "detectors", "must be at least 1, got 0")),
            Some(n) => n,
            None => ((2.0 * half_extent / spacing).ceil() as usize).saturating_add(1),
        };
        if let Beam::Fan {
            detector: FanDetector::Arc,
            detector_distance,
            ..
        } = beam
        {
            let half = spacing * (detectors as f64 - 1.0) / 2.0;
            if half / detector_distance >= PI / 2.0 {
                return Err(Error::param(
                    OP,
                    "detectors",
                    format!(
                        "the arc detector spans {:.1} degrees of fan; it must stay below 180 \
                         (fewer detectors or a smaller spacing)",
                        2.0 * (half / detector_distance).to_degrees()
                    ),
                ));
            }
        }
        // Keep the sinogram (and the projector's per-ray tables) to a sane size.
        const MAX_ENTRIES: u128 = 1 << 25;
        if p.views as u128 * detectors as u128 > MAX_ENTRIES {
            return Err(Error::param(
                OP,
                "views",
                format!(
                    "x detectors = {} x {detectors} is too large a sinogram: at most {MAX_ENTRIES} \
                     entries (check `views`, `detectors` and `spacing`)",
                    p.views
                ),
            ));
        }
        let arc = arc_deg.to_radians();
        let start = p.start_degrees.to_radians();
        let angles = (0..p.views)
            .map(|v| start + v as f64 * arc / p.views as f64)
            .collect();
        Ok(Geometry {
            height,
            width,
            pixel: p.pixel,
            arc,
            angles,
            detectors,
            spacing,
            beam,
        })
    }

    /// Image height (rows).
    pub fn height(&self) -> usize {
        self.height
    }
    /// Image width (columns).
    pub fn width(&self) -> usize {
        self.width
    }
    /// Pixel side, a length.
    pub fn pixel(&self) -> f64 {
        self.pixel
    }
    /// The angular range covered by the views, radians.
    pub fn arc(&self) -> f64 {
        self.arc
    }
    /// View angles, radians.
    pub fn angles(&self) -> &[f64] {
        &self.angles
    }
    /// Number of views.
    pub fn views(&self) -> usize {
        self.angles.len()
    }
    /// Number of detector elements.
    pub fn detectors(&self) -> usize {
        self.detectors
    }
    /// Detector spacing, a length (arc length on the arc detector).
    pub fn spacing(&self) -> f64 {
        self.spacing
    }
    /// The beam.
    pub fn beam(&self) -> Beam {
        self.beam
    }
    /// `(views, detectors)`, the sinogram shape.
    pub fn sinogram_shape(&self) -> [usize; 2] {
        [self.views(), self.detectors]
    }
    /// Radius of the image's circumscribed circle, a length.
    pub fn radius(&self) -> f64 {
        self.pixel * ((self.height.pow(2) + self.width.pow(2)) as f64).sqrt() / 2.0
    }
    /// Offset `t_k` of element `k` from the detector centre (arc length on the arc detector).
    pub fn detector_offset(&self, k: usize) -> f64 {
        (k as f64 - (self.detectors as f64 - 1.0) / 2.0) * self.spacing
    }

    /// The line measured by detector element `k` in view `view`.
    pub fn ray(&self, view: usize, k: usize) -> Ray {
        let theta = self.angles[view];
        let (s, c) = theta.sin_cos();
        let e = [c, s];
        let u = [-s, c];
        let t = self.detector_offset(k);
        match self.beam {
            Beam::Parallel => Ray {
                origin: [t * e[0], t * e[1]],
                direction: u,
            },
            Beam::Fan {
                source_distance: sod,
                detector_distance: sdd,
                detector,
            } => {
                let src = [-sod * u[0], -sod * u[1]];
                let direction = match detector {
                    FanDetector::Arc => {
                        let (sg, cg) = (t / sdd).sin_cos();
                        [cg * u[0] + sg * e[0], cg * u[1] + sg * e[1]]
                    }
                    FanDetector::Flat => {
                        let d = [sdd * u[0] + t * e[0], sdd * u[1] + t * e[1]];
                        let n = (d[0] * d[0] + d[1] * d[1]).sqrt();
                        [d[0] / n, d[1] / n]
                    }
                };
                Ray {
                    origin: src,
                    direction,
                }
            }
        }
    }

    /// A one-line description, e.g. `parallel, 180 views over 180 deg, 363 detectors`.
    pub fn describe(&self) -> String {
        let beam = match self.beam {
            Beam::Parallel => "parallel".to_string(),
            Beam::Fan {
                source_distance,
                detector_distance,
                detector,
            } => format!(
                "fan ({} detector, sod={source_distance:.4}, sdd={detector_distance:.4})",
                match detector {
                    FanDetector::Arc => "arc",
                    FanDetector::Flat => "flat",
                }
            ),
        };
        format!(
            "{beam}, {} views over {:.4} deg, {} detectors",
            self.views(),
            self.arc.to_degrees(),
            self.detectors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_the_image() {
        let g = Geometry::new(64, 48, &GeometryParams::parallel()).unwrap();
        assert_eq!(g.views(), 180);
        assert!((g.arc() - PI).abs() < 1e-12);
        // Outermost detector offset reaches the circumscribed circle.
        assert!(g.detector_offset(g.detectors() - 1) >= g.radius());
        for det in [FanDetector::Arc, FanDetector::Flat] {
            let g = Geometry::new(64, 48, &GeometryParams::fan(det)).unwrap();
            assert!((g.arc() - 2.0 * PI).abs() < 1e-12);
            // The outermost ray of the fan passes outside the circumscribed circle: its
            // distance from the centre is at least the radius.
            let r = g.ray(0, g.detectors() - 1);
            let dist = (r.origin[0] * r.direction[1] - r.origin[1] * r.direction[0]).abs();
            assert!(dist >= g.radius(), "{det:?}: {dist} < {}", g.radius());
        }
    }

    #[test]
    fn rays_are_unit_and_central_ray_passes_centre() {
        for p in [
            GeometryParams::parallel().detectors(11),
            GeometryParams::fan(FanDetector::Arc).detectors(11),
            GeometryParams::fan(FanDetector::Flat).detectors(11),
        ] {
            let g = Geometry::new(20, 20, &p.views(7)).unwrap();
            for v in 0..7 {
                for k in 0..11 {
                    let r = g.ray(v, k);
                    let n = r.direction[0].hypot(r.direction[1]);
                    assert!((n - 1.0).abs() < 1e-12);
                }
                let r = g.ray(v, 5);
                let dist = r.origin[0] * r.direction[1] - r.origin[1] * r.direction[0];
                assert!(dist.abs() < 1e-9);
            }
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        let bad = [
            GeometryParams::parallel().views(0),
            GeometryParams::parallel().arc(0.0),
            GeometryParams::parallel().arc(400.0),
            GeometryParams::parallel().detectors(0),
            GeometryParams::parallel().pixel(-1.0),
            GeometryParams::parallel().views(1 << 30),
            GeometryParams {
                spacing: Some(1e-12),
                ..GeometryParams::parallel()
            },
            GeometryParams {
                source_distance: Some(100.0),
                ..GeometryParams::parallel()
            },
            GeometryParams {
                source_distance: Some(5.0),
                ..GeometryParams::fan(FanDetector::Arc)
            },
            GeometryParams {
                source_distance: Some(100.0),
                detector_distance: Some(50.0),
                ..GeometryParams::fan(FanDetector::Flat)
            },
        ];
        for p in bad {
            assert!(Geometry::new(16, 16, &p).is_err(), "{p:?} accepted");
        }
        assert!(Geometry::new(0, 16, &GeometryParams::parallel()).is_err());
    }
}
