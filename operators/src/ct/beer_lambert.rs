//! The Beer-Lambert transmission model: expected photon counts `I0 exp(-A x)`.
//!
//! `x` is the attenuation image `(1, H, W)` and `A` the [`CtProjector`], so `A x` holds
//! dimensionless line integrals (attenuation per unit length times the pixel size; pick
//! the pixel size so that they are O(1), e.g. a few units through a body). The measurement
//! is the expected count per detector `(views, detectors)`; photon noise is Poisson on the
//! counts (the `poisson` noise model with scale 1).
//!
//! The model linearises exactly: `-ln(y / I0) = A x`. Measured counts can be 0 (photon
//! starvation), whose log is infinite, so [`BeerLambert::linearize`] first clips counts
//! below [`BeerLambert::MIN_COUNT`] (half a photon) up to it: those rays read as a line
//! integral of at most `ln(2 I0)`.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, IxDyn};

use super::geometry::Geometry;
use super::projector::CtProjector;
use crate::error::{Error, Result};
use crate::forward::ForwardOperator;
use crate::linear::LinearOperator;

/// `y = I0 exp(-A x)`, with its vector-Jacobian product and its exact linearisation.
#[derive(Clone, Debug)]
pub struct BeerLambert {
    projector: CtProjector,
    i0: f32,
}

impl BeerLambert {
    /// Counts below this (in photons) are clipped up to it before the log in
    /// [`BeerLambert::linearize`].
    pub const MIN_COUNT: f32 = 0.5;

    /// The model for `geometry` with `i0` incident photons per detector element (unattenuated
    /// count); `i0` must be finite and at least 1.
    pub fn new(geometry: Geometry, i0: f64) -> Result<Self> {
        if !(i0.is_finite() && i0 >= 1.0 && i0 <= f32::MAX as f64) {
            return Err(Error::param(
                "ct",
                "i0",
                format!("(incident photons per detector) must be a finite number >= 1, got {i0}"),
            ));
        }
        Ok(BeerLambert {
            projector: CtProjector::new(geometry)?,
            i0: i0 as f32,
        })
    }

    /// The projector `A`.
    pub fn projector(&self) -> &CtProjector {
        &self.projector
    }

    /// The incident photon count `I0`.
    pub fn i0(&self) -> f32 {
        self.i0
    }

    /// `-ln(max(y, MIN_COUNT) / I0)`: the line integrals that counts `y` imply.
    pub fn linearize(&self, y: ArrayViewD<f32>) -> ArrayD<f32> {
        let ln_i0 = self.i0.ln();
        y.mapv(|v| ln_i0 - v.max(Self::MIN_COUNT).ln())
    }

    fn counts(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        let mut y = ArrayD::zeros(IxDyn(self.projector.range_shape()));
        self.projector.apply(x, y.view_mut());
        y.mapv_inplace(|p| self.i0 * (-p).exp());
        y
    }
}

impl ForwardOperator for BeerLambert {
    fn name(&self) -> String {
        format!(
            "ct-beer-lambert(i0={}, {})",
            self.i0,
            self.projector.geometry().describe()
        )
    }
    fn domain_shape(&self) -> &[usize] {
        self.projector.domain_shape()
    }
    fn range_shape(&self) -> &[usize] {
        self.projector.range_shape()
    }
    fn forward(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        self.counts(x)
    }
    /// `-A^T (I0 exp(-A x) * v)`.
    fn vjp(&self, x: ArrayViewD<f32>, cotangent: ArrayViewD<f32>) -> ArrayD<f32> {
        let mut w = self.counts(x);
        w.zip_mut_with(&cotangent, |c, &v| *c *= -v);
        let mut g = ArrayD::zeros(IxDyn(self.projector.domain_shape()));
        self.projector.adjoint(w.view(), g.view_mut());
        g
    }
    /// The projector and `-ln(max(y, 0.5) / I0)` (see [`BeerLambert::linearize`]).
    fn linearize_measurement(
        &self,
        y: ArrayViewD<f32>,
    ) -> Option<(&dyn LinearOperator, ArrayD<f32>)> {
        Some((&self.projector, self.linearize(y)))
    }
    fn restrict_to_measured(&self, _y: ArrayViewMutD<f32>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ct::geometry::{FanDetector, GeometryParams};
    use crate::ct::phantom::Phantom;
    use crate::forward::vjp_mismatch;
    use crate::linear::LinearOperatorExt;

    fn model(p: GeometryParams, i0: f64) -> (BeerLambert, ArrayD<f32>) {
        // Shepp-Logan on 24x20 with pixel 0.1: line integrals up to ~0.5.
        let g = Geometry::new(24, 20, &p.views(15).pixel(0.1)).unwrap();
        let x = Phantom::shepp_logan(1.0)
            .rasterize(24, 20, 0.1, 2)
            .unwrap()
            .into_dyn();
        (BeerLambert::new(g, i0).unwrap(), x)
    }

    #[test]
    fn vjp_matches_finite_differences() {
        // Central differences of a smooth map in f32: truncation O(h^2) ~1e-6 and rounding
        // ~1e-7 * |y| / h ~1e-5 relative; 1e-3 leaves a wide margin while a missing sign or
        // a missing exp factor gives O(1).
        for p in [
            GeometryParams::parallel(),
            GeometryParams::fan(FanDetector::Flat),
        ] {
            let (op, x) = model(p, 1e3);
            let x = x.mapv(|v| v + 0.3);
            let m = vjp_mismatch(&op, x.view(), 1e-2, 11);
            assert!(m < 1e-3, "vjp mismatch {m}");
        }
    }

    #[test]
    fn linearization_inverts_the_model() {
        let (op, x) = model(GeometryParams::fan(FanDetector::Arc), 1e4);
        let x = x * 5.0;
        let y = op.forward(x.view());
        let (a, lin) = op.linearize_measurement(y.view()).unwrap();
        let ax = a.apply_to(x.view()).unwrap();
        let max_ax = ax.iter().fold(0.0f32, |m, v| m.max(*v));
        assert!(
            max_ax > 1.0,
            "test needs sizeable line integrals, got {max_ax}"
        );
        // f32 exp then ln: ~1e-6 absolute on values of order 1.
        let err = (&lin - &ax).iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(err < 1e-5, "max error {err}");
        // Zero counts are clipped to half a photon.
        let zeros = ArrayD::zeros(IxDyn(op.range_shape()));
        let lin0 = op.linearize(zeros.view());
        let expect = (1e4f32 / 0.5).ln();
        assert!(lin0.iter().all(|v| (v - expect).abs() < 1e-5));
    }

    #[test]
    fn rejects_bad_i0() {
        let g = Geometry::new(8, 8, &GeometryParams::parallel()).unwrap();
        for i0 in [0.0, 0.5, -3.0, f64::NAN, f64::INFINITY] {
            assert!(BeerLambert::new(g.clone(), i0).is_err());
        }
    }
}
