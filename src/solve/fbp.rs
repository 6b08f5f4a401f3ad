//! Filtered back-projection (FBP) for CT: the classical analytic reconstruction.
//!
//! The method (pre-weighting, apodised ramp filter on a zero-padded detector row,
//! pixel-driven back-projection with distance weights for fan beam) and its scaling are
//! documented in [`posterior_operators::ct::fbp()`], where it is implemented next to the
//! geometry. In short: parallel beam and fan beam (arc and flat detectors, no rebinning);
//! filters `ramp` (Ram-Lak), `shepp-logan`, `cosine`, `hann`; the FBP of the projection of
//! a phantom recovers the phantom's values. Fan short scans (180 degrees plus the fan angle
//! up to 360) get Parker weights.
//!
//! [`fbp_spec`] runs it on a measurement described by a `ct:` spec, undoing the
//! Beer-Lambert model first (`-ln(max(y, 0.5) / i0)`) when the spec uses it.

use ndarray::{ArrayD, ArrayViewD, Ix2};
use posterior_operators::ct::Geometry;

pub use posterior_operators::ct::Filter;

use crate::error::{Error, Result};
use crate::spec::{self, BuildContext, Spec};

/// FBP of a line-integral `sinogram` `(views, detectors)` measured with `geometry`: the
/// image `(1, H, W)`.
pub fn fbp(geometry: &Geometry, sinogram: ArrayViewD<f32>, filter: Filter) -> Result<ArrayD<f32>> {
    let shape = sinogram.shape().to_vec();
    let sino = sinogram.into_dimensionality::<Ix2>().map_err(|_| {
        Error::Invalid(format!(
            "fbp: the sinogram must be 2-D (views, detectors) = {:?}; got shape {:?}",
            geometry.sinogram_shape(),
            shape
        ))
    })?;
    Ok(posterior_operators::ct::fbp(geometry, sino, filter)?.into_dyn())
}

/// FBP of a measurement `y` of the `ct:` spec `spec` (the geometry rebuilt from the spec
/// for the image of `ctx`; Beer-Lambert counts are linearised first). Unknown keys in the
/// spec are errors, as when building the operator.
pub fn fbp_spec(
    spec_text: &str,
    ctx: &BuildContext,
    y: ArrayViewD<f32>,
    filter: Filter,
) -> Result<ArrayD<f32>> {
    let parsed = Spec::parse(spec_text)?;
    if parsed.family != "ct" {
        return Err(Error::Invalid(format!(
            "fbp applies to CT measurements (a `ct:` spec); got `{spec_text}`"
        )));
    }
    let geometry = spec::ct::geometry(&parsed, ctx)?;
    let sino = spec::ct::line_integrals(&parsed, &geometry, y)?;
    parsed.finish(spec::ct::INFO.params)?;
    fbp(&geometry, sino.into_dyn().view(), filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_operators::ct::shepp_logan_image;

    fn ctx(n: usize) -> BuildContext {
        BuildContext::new(&[1, n, n], 0, ".")
    }

    fn rel_l2(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
        let num: f64 = a
            .iter()
            .zip(b.iter())
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum();
        let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    #[test]
    fn fbp_of_spec_measurements() {
        // Shepp-Logan 96x96 through the spec builder, ramp filter: measured relative L2
        // errors 0.194 (parallel), 0.180 (fan), 0.194 (Beer-Lambert without noise: the
        // linearisation is exact to f32 rounding). The error is the band-limited blur of
        // the thin skull (see the operator crate's tests); bound 0.23. A missing
        // linearisation or a geometry mismatch gives O(1).
        let n = 96;
        let x = shepp_logan_image(n, n).unwrap().into_dyn();
        for s in [
            "ct:views=180",
            "ct:geometry=fan,views=240",
            "ct:model=beer-lambert,i0=1e5,views=180",
        ] {
            let p = spec::build(s, &ctx(n)).unwrap();
            let y = p.operator.forward(x.view()).unwrap();
            let rec = fbp_spec(s, &ctx(n), y.view(), Filter::RamLak).unwrap();
            let err = rel_l2(&rec, &x);
            assert!(err < 0.23, "{s}: relative L2 {err}");
        }
    }

    #[test]
    fn errors_are_clear() {
        let x = ArrayD::zeros(vec![10, 3]);
        let e = fbp_spec("ct:views=10", &ctx(16), x.view(), Filter::Hann).unwrap_err();
        assert!(e.to_string().contains("shape"), "{e}");
        let e = fbp_spec("blur", &ctx(16), x.view(), Filter::Hann).unwrap_err();
        assert!(e.to_string().contains("ct:"), "{e}");
        let e = fbp_spec("ct:views=10,foo=1", &ctx(16), x.view(), Filter::Hann).unwrap_err();
        assert!(
            e.to_string().contains("foo") || e.to_string().contains("shape"),
            "{e}"
        );
        assert!(Filter::parse("ramp").is_ok() && Filter::parse("box").is_err());
    }

    /// Writes a figure (never run by default): `CT_FIGURE=/tmp/ct.png cargo test --release
    /// -p posterior --lib solve::fbp::tests::figure -- --ignored`. Left to right: Shepp-Logan
    /// 256x256, FBP (ramp) of 180 parallel views, of 18 views (sparse), of 90 views over 90
    /// degrees (limited angle), of 360 fan views (arc detector), of a Beer-Lambert scan with
    /// i0 = 1e4 and Poisson photon noise (hann); display window [0.1, 0.4].
    #[test]
    #[ignore = "writes a figure: CT_FIGURE=out.png cargo test --release -p posterior --lib solve::fbp::tests::figure -- --ignored"]
    fn figure() {
        use rand_distr::{Distribution, Poisson};
        let path = std::env::var("CT_FIGURE").unwrap_or_else(|_| "/tmp/ct-fbp.png".into());
        let n = 256;
        let x = shepp_logan_image(n, n).unwrap().into_dyn();
        let mut panels = vec![x.clone()];
        for (s, filter) in [
            ("ct:views=180", Filter::RamLak),
            ("ct:views=18", Filter::RamLak),
            ("ct:views=90,arc=90", Filter::RamLak),
            ("ct:geometry=fan,views=360", Filter::RamLak),
            ("ct:model=beer-lambert,i0=1e4,views=180", Filter::Hann),
        ] {
            let p = spec::build(s, &ctx(n)).unwrap();
            let mut y = p.operator.forward(x.view()).unwrap();
            if s.contains("beer") {
                let mut r = posterior_operators::rng::seeded(1, "figure-noise");
                y.mapv_inplace(|c| {
                    Poisson::new(c as f64)
                        .map(|d| d.sample(&mut r) as f32)
                        .unwrap_or(0.0)
                });
            }
            panels.push(fbp_spec(s, &ctx(n), y.view(), filter).unwrap());
        }
        let views: Vec<_> = panels.iter().map(|p| p.view()).collect();
        let montage = ndarray::concatenate(ndarray::Axis(2), &views).unwrap();
        let montage = montage.into_dimensionality::<ndarray::Ix3>().unwrap();
        crate::io::write_image(std::path::Path::new(&path), montage.view(), (0.1, 0.4)).unwrap();
    }
}
