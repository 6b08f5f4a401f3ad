//! [`Problem`]: what a posterior sampler is asked to invert, `y = A(x0) + n`, stated in the
//! prior's own space.
//!
//! Conventions: the operator's domain is one sample of the prior (`(C, H, W)` for an image
//! prior, `(D)` for a vector prior), in the prior's intensity units (usually `[-1, 1]`); any
//! change of units (image `[0, 1]` to prior `[-1, 1]`, a complex image to two channels) is
//! folded into the operator and the measurement by the caller, never done silently here.
//! The noise is additive Gaussian with standard deviation `sigma_y` per real entry of `y`
//! (`0` for noiseless data). Batches are `(N, ...sample_shape)`, as everywhere in
//! [`crate::sample`]; the measurement is shared by the whole batch.

use ndarray::{ArrayD, ArrayViewD, Axis};
use posterior_operators::error::check_finite;
use posterior_operators::forward::Operator;
use posterior_operators::linear::{LinearOperator, LinearOperatorExt};

use crate::error::{Error, Result};
use crate::prior::PriorInfo;

/// A measurement `y`, its forward operator and its Gaussian noise level.
pub struct Problem {
    operator: Operator,
    y: ArrayD<f32>,
    sigma_y: f64,
    /// `||A||` of a linear operator, estimated once on first use.
    norm: std::sync::OnceLock<Option<f64>>,
}

impl Problem {
    /// Checks that `y` has the operator's range shape and is finite, and that `sigma_y` is
    /// finite and `>= 0`.
    pub fn new(operator: Operator, y: ArrayD<f32>, sigma_y: f64) -> Result<Problem> {
        if y.shape() != operator.range_shape() {
            return Err(Error::Invalid(format!(
                "the measurement has shape {:?}, but {} produces {:?}",
                y.shape(),
                operator.name(),
                operator.range_shape()
            )));
        }
        check_finite("measurement", y.iter())?;
        if !(sigma_y.is_finite() && sigma_y >= 0.0) {
            return Err(Error::Invalid(format!(
                "the noise level sigma_y must be finite and >= 0, got {sigma_y}"
            )));
        }
        Ok(Problem {
            operator,
            y,
            sigma_y,
            norm: std::sync::OnceLock::new(),
        })
    }

    /// `||A||` (the largest singular value) of a linear operator, by 30 seeded power
    /// iterations on `A^T A` (deterministic), computed once and cached; `None` for a
    /// nonlinear model.
    pub fn operator_norm(&self) -> Option<f64> {
        *self.norm.get_or_init(|| {
            self.linear()
                .map(|op| op.norm_estimate(30, 0))
                .filter(|n| n.is_finite())
        })
    }

    /// The scale guard shared by the samplers whose data steps grow with the operator:
    /// `max(1, ||A||)` for a linear operator, 1 for a nonlinear one. Official step sizes and
    /// twist widths were set for operators of norm at most 1 (masks, blurs, averaging
    /// downsamplers: unchanged by the guard); CT line integrals reach norms of ~100 in prior
    /// units, where the unguarded steps diverge.
    pub fn norm_guard(&self) -> f64 {
        self.operator_norm().map_or(1.0, |n| n.max(1.0))
    }

    /// The forward model.
    pub fn operator(&self) -> &Operator {
        &self.operator
    }
    /// The linear operator, when the model is linear.
    pub fn linear(&self) -> Option<&dyn LinearOperator> {
        self.operator.as_linear()
    }
    /// The measurement.
    pub fn y(&self) -> &ArrayD<f32> {
        &self.y
    }
    /// The noise standard deviation per real entry of `y`.
    pub fn sigma_y(&self) -> f64 {
        self.sigma_y
    }

    /// Checks that the operator acts on the prior's samples: its domain must equal the
    /// prior's sample shape. The message names both and says how to fix it.
    pub fn check_prior(&self, info: &PriorInfo) -> Result<()> {
        let dom = self.operator.domain_shape();
        if dom == info.sample_shape.as_slice() {
            return Ok(());
        }
        let hint = match (dom.len(), info.resolution()) {
            (3, Some((h, w))) if dom[0] == info.sample_shape[0] => format!(
                "; the prior works at {h}x{w}: resample the image to {h}x{w} before degrading it (nothing is cropped or resized silently)"
            ),
            (3, Some(_)) => format!(
                "; the prior has {} channel(s) and the operator expects {}",
                info.sample_shape[0], dom[0]
            ),
            _ => String::new(),
        };
        Err(Error::Invalid(format!(
            "the operator {} acts on images of shape {dom:?}, but the prior {} produces samples of shape {:?}{hint}",
            self.operator.name(),
            info.name,
            info.sample_shape
        )))
    }

    /// `A(x_i)` for every sample of a batch `(N, ...domain)`: `(N, ...range)`.
    pub fn forward_batch(&self, x: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
        let n = self.batch_len(&x)?;
        let mut shape = vec![n];
        shape.extend_from_slice(self.operator.range_shape());
        let mut out = ArrayD::zeros(shape);
        for (xi, mut oi) in x.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
            oi.assign(&self.operator.forward(xi)?);
        }
        Ok(out)
    }

    /// For every sample of a batch: the gradient of `0.5 ||y - A(x_i)||^2` with respect to
    /// `x_i` (`-J^T (y - A(x_i))`, `(N, ...domain)`) and the squared residual norm
    /// `||y - A(x_i)||^2` (f64, one per sample).
    pub fn data_grad_batch(&self, x: ArrayViewD<f32>) -> Result<(ArrayD<f32>, Vec<f64>)> {
        self.batch_len(&x)?;
        let mut grad = ArrayD::zeros(x.raw_dim());
        let mut sq = Vec::with_capacity(x.shape()[0]);
        for (xi, mut gi) in x.axis_iter(Axis(0)).zip(grad.axis_iter_mut(Axis(0))) {
            let mut r = self.operator.forward(xi.view())?;
            r.zip_mut_with(&self.y, |r, &y| *r -= y); // A(x) - y
            sq.push(r.iter().map(|&v| v as f64 * v as f64).sum());
            gi.assign(&self.operator.vjp(xi, r.view())?);
        }
        Ok((grad, sq))
    }

    /// A least-squares starting point `A^+ y` (one sample, the operator's domain shape), for
    /// samplers that start from the data (RED-diff). For a linear operator: the Tikhonov
    /// solution `(A^T A + gamma I)^-1 A^T y` with a small `gamma = 1e-3 ||A||^2` (relative to
    /// the operator's scale, so that directions `A` does not see stay at zero instead of
    /// being amplified from rounding), in closed form where the operator has one
    /// ([`LinearOperator::solve_regularized`]), else by 30 conjugate-gradient iterations on
    /// the normal equations. A nonlinear model has no pseudo-inverse here: the start is
    /// zero, the centre of a `[-1, 1]` prior.
    pub fn pseudo_inverse(&self) -> Result<ArrayD<f32>> {
        let dom = ndarray::IxDyn(self.operator.domain_shape());
        let Some(op) = self.linear() else {
            return Ok(ArrayD::zeros(dom));
        };
        let norm = op.norm_estimate(30, 0);
        if !(norm.is_finite() && norm > 0.0) {
            return Ok(ArrayD::zeros(dom));
        }
        let gamma = (1e-3 * norm * norm) as f32;
        let aty = op.adjoint_to(self.y.view())?;
        if let Some(x) = op.solve_regularized(gamma, aty.view()) {
            return Ok(x);
        }
        let (x, _) = crate::solve::krylov::least_squares(
            op,
            self.y.view(),
            None,
            gamma,
            30,
            &mut |_, _| {},
        )?;
        Ok(x)
    }

    /// `(A^T A + gamma I)^-1 rhs` for one sample (`rhs` of the domain shape, `gamma > 0`):
    /// in closed form where the operator has one ([`LinearOperator::solve_regularized`]),
    /// otherwise by conjugate gradients from zero (at most `cg_iters` iterations, relative
    /// residual `cg_tol`). Shared by the samplers that take Gaussian-conditional or
    /// proximal data steps (FPS, FLAIR). An error for a nonlinear model.
    pub fn solve_regularized(
        &self,
        gamma: f64,
        rhs: ArrayViewD<f32>,
        cg_iters: usize,
        cg_tol: f64,
    ) -> Result<ArrayD<f32>> {
        let op = self.linear().ok_or_else(|| {
            Error::Invalid(format!(
                "a regularised solve needs a linear operator, but {} is nonlinear",
                self.operator.name()
            ))
        })?;
        if rhs.shape() != op.domain_shape() {
            return Err(Error::Invalid(format!(
                "{}: the right-hand side has shape {:?}, expected {:?}",
                op.name(),
                rhs.shape(),
                op.domain_shape()
            )));
        }
        if let Some(u) = op.solve_regularized(gamma as f32, rhs.view()) {
            return Ok(u);
        }
        let g = gamma as f32;
        let apply_m = |v: ArrayViewD<f32>, mut out: ndarray::ArrayViewMutD<f32>| {
            op.normal(v.view(), out.view_mut());
            out.zip_mut_with(&v, |o, &vi| *o += g * vi);
        };
        let mut u = ArrayD::zeros(rhs.raw_dim());
        crate::solve::krylov::conjugate_gradient(
            &apply_m,
            rhs,
            &mut u,
            cg_iters,
            cg_tol,
            &mut |_, _| {},
        );
        Ok(u)
    }

    fn batch_len(&self, x: &ArrayViewD<f32>) -> Result<usize> {
        let sh = x.shape();
        if sh.is_empty() || &sh[1..] != self.operator.domain_shape() {
            return Err(Error::Invalid(format!(
                "{}: a batch has shape {sh:?}, expected (N, {:?})",
                self.operator.name(),
                self.operator.domain_shape()
            )));
        }
        Ok(sh[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;
    use posterior_operators::linear::Identity;

    fn info(shape: &[usize]) -> PriorInfo {
        PriorInfo {
            name: "p".into(),
            range: (-1.0, 1.0),
            sample_shape: shape.to_vec(),
        }
    }

    #[test]
    fn the_data_gradient_is_minus_the_adjoint_of_the_residual() {
        // Identity operator: grad = x - y exactly, squared norm = ||x - y||^2.
        let op = Operator::Linear(Box::new(Identity::new(&[3])));
        let y = ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0, -2.0, 0.5]).unwrap();
        let p = Problem::new(op, y, 0.1).unwrap();
        let x = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap();
        let (g, sq) = p.data_grad_batch(x.view()).unwrap();
        assert_eq!(g.as_slice().unwrap(), &[-1.0, 2.0, -0.5, 0.0, 3.0, 0.5]);
        assert!((sq[0] - 5.25).abs() < 1e-12 && (sq[1] - 9.25).abs() < 1e-12);
        assert_eq!(p.forward_batch(x.view()).unwrap(), x);
    }

    #[test]
    fn mismatches_are_errors_that_name_both_shapes() {
        let op = || Operator::Linear(Box::new(Identity::new(&[1, 8, 8])));
        let y = ArrayD::zeros(IxDyn(&[1, 8, 8]));
        assert!(Problem::new(op(), ArrayD::zeros(IxDyn(&[1, 4, 4])), 0.0).is_err());
        assert!(Problem::new(op(), y.clone(), f64::NAN).is_err());
        let mut bad = y.clone();
        bad[[0, 1, 1]] = f32::NAN;
        assert!(Problem::new(op(), bad, 0.0).is_err());
        let p = Problem::new(op(), y, 0.0).unwrap();
        assert!(p.check_prior(&info(&[1, 8, 8])).is_ok());
        let msg = p.check_prior(&info(&[1, 32, 32])).unwrap_err().to_string();
        assert!(msg.contains("[1, 8, 8]") && msg.contains("32x32"), "{msg}");
        let msg = p.check_prior(&info(&[3, 8, 8])).unwrap_err().to_string();
        assert!(msg.contains("channel"), "{msg}");
        assert!(p
            .forward_batch(ArrayD::zeros(IxDyn(&[2, 8, 8])).view())
            .is_err());
    }
}
