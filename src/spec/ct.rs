//! The `ct` operator family: 2-D computed tomography, parallel or fan beam, as line
//! integrals (`model=linear`) or photon counts (`model=beer-lambert`), e.g.
//! `ct:views=18` (sparse view), `ct:arc=90` (limited angle), `ct:geometry=fan,detector=flat`.
//!
//! The image `(1, H, W)` is the attenuation map on a centred grid of square pixels of side
//! `pixel`; the measurement is the sinogram `(views, detectors)`. Geometry conventions (view
//! angles, detector offsets, fan distances) are in [`posterior_operators::ct::geometry`];
//! the projector (Joseph's method, exact adjoint) in [`posterior_operators::ct::projector`].
//!
//! Sinograms from other tools: `(views, detectors)`, view `v` at angle
//! `start + v * arc / views` degrees, detector `k` at offset `(k - (detectors - 1) / 2) *
//! spacing` from the centre, the image rotating about its geometric centre. For parallel
//! beam this is scikit-image's convention: `skimage.transform.radon(x, theta, circle=True).T`
//! with `theta = arange(views) * 180 / views` equals our sinogram of an odd-sized `x` to
//! interpolation error (0.6% at 63 x 63, `tests/real_data.rs`); for even sizes scikit-image
//! rotates about pixel `N / 2`, half a pixel off our centre. A sinogram read without a
//! sidecar needs `--image-shape` (the image size is not in the data).
//!
//! Units: lengths (`pixel`, `spacing`, `sod`, `sdd`) share one unit. With the linear model
//! the default `pixel=1` gives line integrals in attenuation x pixels. With Beer-Lambert the
//! line integrals enter an exponential, so their size matters: the default pixel
//! `21.15 / max(H, W)` reads image values as attenuation relative to LoDoPaB-CT's
//! `mu_max = 81.35858 / m` over a 26 cm field (image in [0, 1], body-sized objects
//! attenuate the counts by e^-3 to e^-6).

use ndarray::{Array2, ArrayViewD, Ix2};
use posterior_operators::ct::{
    BeamKind, BeerLambert, CtProjector, FanDetector, Geometry, GeometryParams,
};
use posterior_operators::Operator;

use super::{BuildContext, Embedding, FamilyInfo, ParamInfo, Spec};
use crate::error::{Error, Result};

/// `mu_max * field of view` of LoDoPaB-CT (81.35858 / m * 0.26 m): the default image width
/// in attenuation lengths for the Beer-Lambert model.
const LODOPAB_WIDTH: f64 = 81.35858 * 0.26;

pub static INFO: FamilyInfo = FamilyInfo {
    name: "ct",
    summary: "2-D CT: sinogram (views, detectors) of line integrals or photon counts, parallel or fan beam",
    params: &[
        ParamInfo {
            key: "geometry",
            default: "parallel",
            help: "beam: parallel | fan (point source, see detector, sod, sdd)",
        },
        ParamInfo {
            key: "views",
            default: "180",
            help: "number of views, evenly spaced over the arc (sparse view: e.g. 18 to 60)",
        },
        ParamInfo {
            key: "arc",
            default: "180|360",
            help: "angular range of the views in degrees, (0, 360]: 180 parallel, 360 fan (limited angle: e.g. 90)",
        },
        ParamInfo {
            key: "start",
            default: "0",
            help: "angle of the first view in degrees",
        },
        ParamInfo {
            key: "detectors",
            default: "auto",
            help: "number of detector elements; the default covers the image's circumscribed circle",
        },
        ParamInfo {
            key: "spacing",
            default: "auto",
            help: "detector spacing (length; arc length on an arc detector); auto = one pixel at the centre: pixel (parallel), pixel*sdd/sod (fan)",
        },
        ParamInfo {
            key: "detector",
            default: "arc",
            help: "fan beam only: arc (equiangular, clinical) | flat (equispaced, flat panel)",
        },
        ParamInfo {
            key: "sod",
            default: "diagonal",
            help: "fan beam only: source-to-centre distance (length), > the circumscribed radius; default the image diagonal",
        },
        ParamInfo {
            key: "sdd",
            default: "2*sod",
            help: "fan beam only: source-to-detector distance (length), > sod",
        },
        ParamInfo {
            key: "pixel",
            default: "1|auto",
            help: "pixel side, the length unit of line integrals: 1 (linear); beer-lambert auto = 21.15/max(H,W), [0,1] images on LoDoPaB's mu scale",
        },
        ParamInfo {
            key: "model",
            default: "linear",
            help: "linear: line integrals A x | beer-lambert: counts i0*exp(-A x); use --noise poisson:scale=1 for photon noise",
        },
        ParamInfo {
            key: "i0",
            default: "1e4",
            help: "beer-lambert only: incident photons per detector element (>= 1); fewer = low dose",
        },
    ],
    examples: &[
        "ct:views=18",
        "ct:arc=90,views=90",
        "ct:geometry=fan,detector=flat,views=360",
        "ct:model=beer-lambert,i0=1e4,views=180",
    ],
    grayscale_only: true,
};

/// `key` parsed as `T`, with `auto` (or absence) meaning the default.
fn opt_auto<T: std::str::FromStr>(spec: &Spec, key: &str) -> Result<Option<T>> {
    if spec.raw(key) == Some("auto") {
        Ok(None)
    } else {
        spec.opt(key)
    }
}

/// Reads the model key (`linear` or `beer-lambert`).
fn model(spec: &Spec) -> Result<bool> {
    Ok(spec.choice("model", &["linear", "beer-lambert"], "linear")? == "beer-lambert")
}

/// The scan geometry a `ct:` spec describes for the image of `ctx` (reads every geometry
/// key, and `model` for the default pixel size). The CLI uses it to rebuild the geometry of
/// a measurement for filtered back-projection.
pub fn geometry(spec: &Spec, ctx: &BuildContext) -> Result<Geometry> {
    let (c, h, w) = ctx.chw()?;
    if c != 1 {
        return Err(Error::Invalid(format!(
            "ct: acts on single-channel (grayscale) attenuation images (1, H, W); got {c} \
             channels in {:?}: convert the image to grayscale first",
            ctx.image_shape
        )));
    }
    let beer = model(spec)?;
    let fan = spec.choice("geometry", &["parallel", "fan"], "parallel")? == "fan";
    let detector = spec.raw("detector").map(str::to_string);
    let beam =
        match (fan, detector.as_deref()) {
            (false, None) => BeamKind::Parallel,
            (false, Some(_)) => return Err(Error::Spec(
                "ct: `detector` applies to geometry=fan only (parallel beam has a flat detector)"
                    .into(),
            )),
            (true, None | Some("arc")) => BeamKind::Fan(FanDetector::Arc),
            (true, Some("flat")) => BeamKind::Fan(FanDetector::Flat),
            (true, Some(other)) => {
                return Err(Error::Spec(format!(
                    "ct: `detector={other}` is not allowed: expected one of arc, flat"
                )))
            }
        };
    let default_pixel = if beer {
        LODOPAB_WIDTH / h.max(w) as f64
    } else {
        1.0
    };
    let params = GeometryParams {
        beam,
        views: spec.get("views", 180usize)?,
        arc_degrees: opt_auto(spec, "arc")?,
        start_degrees: spec.get("start", 0.0)?,
        detectors: opt_auto(spec, "detectors")?,
        spacing: opt_auto(spec, "spacing")?,
        pixel: opt_auto(spec, "pixel")?.unwrap_or(default_pixel),
        source_distance: opt_auto(spec, "sod")?,
        detector_distance: opt_auto(spec, "sdd")?,
    };
    Ok(Geometry::new(h, w, &params)?)
}

/// The incident photon count of a Beer-Lambert spec, `None` for the linear model (where
/// giving `i0` is an error).
pub fn incident_photons(spec: &Spec) -> Result<Option<f64>> {
    let i0: Option<f64> = spec.opt("i0")?;
    if model(spec)? {
        Ok(Some(i0.unwrap_or(1e4)))
    } else if i0.is_some() {
        Err(Error::Spec(
            "ct: `i0` applies to model=beer-lambert only (the linear model measures line integrals)"
                .into(),
        ))
    } else {
        Ok(None)
    }
}

pub fn build(spec: &Spec, ctx: &BuildContext) -> Result<(Operator, Embedding)> {
    let geometry = geometry(spec, ctx)?;
    let op = match incident_photons(spec)? {
        None => Operator::Linear(Box::new(CtProjector::new(geometry)?)),
        Some(i0) => Operator::Nonlinear(Box::new(BeerLambert::new(geometry, i0)?)),
    };
    Ok((op, Embedding::Identity))
}

/// The line-integral sinogram `(views, detectors)` behind a measurement `y` of this spec:
/// `y` itself for the linear model, `-ln(max(y, 0.5) / i0)` for Beer-Lambert (zero counts
/// clipped to half a photon). Checks the shape.
pub fn line_integrals(spec: &Spec, geometry: &Geometry, y: ArrayViewD<f32>) -> Result<Array2<f32>> {
    let expected = geometry.sinogram_shape();
    if y.shape() != expected {
        return Err(Error::Invalid(format!(
            "ct: the measurement has shape {:?}, but the spec's geometry ({}) gives sinograms \
             of shape {:?}",
            y.shape(),
            geometry.describe(),
            expected
        )));
    }
    let y = match incident_photons(spec)? {
        None => y.to_owned(),
        Some(i0) => BeerLambert::new(geometry.clone(), i0)?.linearize(y),
    };
    y.into_dimensionality::<Ix2>()
        .map_err(|e| Error::Invalid(format!("ct: sinogram is not 2-D: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;
    use posterior_operators::linear::adjoint_test;
    use posterior_operators::LinearOperatorExt;

    fn ctx(shape: &[usize]) -> BuildContext {
        BuildContext::new(shape, 0, ".")
    }

    #[test]
    fn examples_build() {
        for ex in INFO.examples {
            let p = spec::build(ex, &ctx(&[1, 32, 30])).unwrap();
            assert_eq!(p.embedding, Embedding::Identity);
            assert_eq!(p.operator.domain_shape(), &[1, 32, 30]);
        }
    }

    #[test]
    fn keys_reach_the_geometry() {
        let s = Spec::parse(
            "ct:geometry=fan,detector=flat,views=18,arc=200,start=10,detectors=51,spacing=1.5,sod=80,sdd=150,pixel=0.5",
        )
        .unwrap();
        let g = geometry(&s, &ctx(&[1, 40, 40])).unwrap();
        s.finish(INFO.params).unwrap();
        assert_eq!(g.sinogram_shape(), [18, 51]);
        assert!((g.arc().to_degrees() - 200.0).abs() < 1e-9);
        assert!((g.angles()[0].to_degrees() - 10.0).abs() < 1e-9);
        assert_eq!(g.spacing(), 1.5);
        assert_eq!(g.pixel(), 0.5);
        assert_eq!(
            g.beam(),
            posterior_operators::ct::Beam::Fan {
                source_distance: 80.0,
                detector_distance: 150.0,
                detector: FanDetector::Flat
            }
        );
        // Defaults: parallel, 180 views over 180 degrees, pixel 1; beer-lambert pixel.
        let s = Spec::parse("ct").unwrap();
        let g = geometry(&s, &ctx(&[1, 64, 64])).unwrap();
        assert_eq!(g.views(), 180);
        assert_eq!(g.pixel(), 1.0);
        let s = Spec::parse("ct:model=beer-lambert,pixel=auto,detectors=auto").unwrap();
        let g = geometry(&s, &ctx(&[1, 64, 64])).unwrap();
        assert!((g.pixel() - LODOPAB_WIDTH / 64.0).abs() < 1e-12);
    }

    #[test]
    fn linear_operator_is_adjoint() {
        let p = spec::build("ct:views=12,geometry=fan", &ctx(&[1, 17, 16])).unwrap();
        let op = p.operator.as_linear().unwrap();
        adjoint_test(op, 1).verdict("ct spec", 1e-5).unwrap();
    }

    #[test]
    fn rejects_bad_specs() {
        for (s, shape) in [
            ("ct", vec![3, 16, 16]),
            ("ct:detector=flat", vec![1, 16, 16]),
            ("ct:geometry=fan,detector=curved", vec![1, 16, 16]),
            ("ct:i0=100", vec![1, 16, 16]),
            ("ct:model=beer-lambert,i0=0", vec![1, 16, 16]),
            ("ct:views=0", vec![1, 16, 16]),
            ("ct:arc=720", vec![1, 16, 16]),
            ("ct:sod=100", vec![1, 16, 16]),
            ("ct:geometry=fan,sod=2", vec![1, 16, 16]),
            ("ct:geometry=helical", vec![1, 16, 16]),
            ("ct:view=10", vec![1, 16, 16]),
        ] {
            let err = spec::build(s, &ctx(&shape));
            assert!(err.is_err(), "{s} accepted");
        }
    }

    #[test]
    fn line_integrals_undo_beer_lambert() {
        let c = ctx(&[1, 16, 16]);
        let s = Spec::parse("ct:model=beer-lambert,i0=1000,views=10").unwrap();
        let p = spec::build("ct:model=beer-lambert,i0=1000,views=10", &c).unwrap();
        let g = geometry(&s, &c).unwrap();
        let x = ndarray::ArrayD::from_elem(vec![1, 16, 16], 0.1f32);
        let y = p.operator.forward(x.view()).unwrap();
        let lin = line_integrals(&s, &g, y.view()).unwrap();
        let ax = CtProjector::new(g.clone())
            .unwrap()
            .apply_to(x.view())
            .unwrap();
        let err = (&lin.into_dyn() - &ax)
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
        assert!(err < 1e-4, "{err}");
        // A wrong shape is an error.
        let bad = ndarray::ArrayD::zeros(vec![9, g.detectors()]);
        assert!(line_integrals(&s, &g, bad.view()).is_err());
    }
}
