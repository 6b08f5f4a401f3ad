//! Nonlinear forward maps, and [`Operator`], the one type that samplers and solvers take.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD};

use crate::error::{check_shape, Result};
use crate::linear::{dot, random_array, LinearOperator, LinearOperatorExt};

/// A differentiable forward map `x -> A(x)` between real f32 arrays, given with its
/// vector-Jacobian product instead of an adjoint (phase retrieval, Beer-Lambert CT).
pub trait ForwardOperator: Send + Sync {
    /// A short description used in messages.
    fn name(&self) -> String;
    fn domain_shape(&self) -> &[usize];
    fn range_shape(&self) -> &[usize];
    /// `A(x)` for an `x` of `domain_shape`.
    fn forward(&self, x: ArrayViewD<f32>) -> ArrayD<f32>;
    /// `J_A(x)^T v`, the vector-Jacobian product at `x` with a `range_shape` cotangent `v`.
    fn vjp(&self, x: ArrayViewD<f32>, cotangent: ArrayViewD<f32>) -> ArrayD<f32>;
    /// For models that become linear after a fixed transform of the measurement
    /// (Beer-Lambert CT: `-ln(y / I0)`), that linear operator and the transformed measurement.
    fn linearize_measurement(
        &self,
        _y: ArrayViewD<f32>,
    ) -> Option<(&dyn LinearOperator, ArrayD<f32>)> {
        None
    }
    /// As [`LinearOperator::restrict_to_measured`].
    fn restrict_to_measured(&self, _y: ArrayViewMutD<f32>) {}
}

/// A shared forward map is the map it shares (see the [`LinearOperator`] impl for `Arc`).
impl<T: ForwardOperator + ?Sized> ForwardOperator for std::sync::Arc<T> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn domain_shape(&self) -> &[usize] {
        (**self).domain_shape()
    }
    fn range_shape(&self) -> &[usize] {
        (**self).range_shape()
    }
    fn forward(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        (**self).forward(x)
    }
    fn vjp(&self, x: ArrayViewD<f32>, cotangent: ArrayViewD<f32>) -> ArrayD<f32> {
        (**self).vjp(x, cotangent)
    }
    fn linearize_measurement(
        &self,
        y: ArrayViewD<f32>,
    ) -> Option<(&dyn LinearOperator, ArrayD<f32>)> {
        (**self).linearize_measurement(y)
    }
    fn restrict_to_measured(&self, y: ArrayViewMutD<f32>) {
        (**self).restrict_to_measured(y)
    }
}

/// A forward model, linear or not: what a `Problem` holds and what samplers talk to.
pub enum Operator {
    Linear(Box<dyn LinearOperator>),
    Nonlinear(Box<dyn ForwardOperator>),
}

impl Operator {
    pub fn name(&self) -> String {
        match self {
            Operator::Linear(op) => op.name(),
            Operator::Nonlinear(op) => op.name(),
        }
    }
    pub fn domain_shape(&self) -> &[usize] {
        match self {
            Operator::Linear(op) => op.domain_shape(),
            Operator::Nonlinear(op) => op.domain_shape(),
        }
    }
    pub fn range_shape(&self) -> &[usize] {
        match self {
            Operator::Linear(op) => op.range_shape(),
            Operator::Nonlinear(op) => op.range_shape(),
        }
    }
    /// The linear operator, if this model is linear.
    pub fn as_linear(&self) -> Option<&dyn LinearOperator> {
        match self {
            Operator::Linear(op) => Some(op.as_ref()),
            Operator::Nonlinear(_) => None,
        }
    }
    /// `A(x)`, with the input's shape checked.
    pub fn forward(&self, x: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
        match self {
            Operator::Linear(op) => op.apply_to(x),
            Operator::Nonlinear(op) => {
                check_shape(&op.name(), "input", op.domain_shape(), x.shape())?;
                Ok(op.forward(x))
            }
        }
    }
    /// `J_A(x)^T v` (for a linear model, `A^T v` whatever `x`), shapes checked.
    pub fn vjp(&self, x: ArrayViewD<f32>, cotangent: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
        check_shape(&self.name(), "input", self.domain_shape(), x.shape())?;
        match self {
            Operator::Linear(op) => op.adjoint_to(cotangent),
            Operator::Nonlinear(op) => {
                check_shape(&op.name(), "cotangent", op.range_shape(), cotangent.shape())?;
                Ok(op.vjp(x, cotangent))
            }
        }
    }
    /// Zeroes unmeasured entries of a range-shaped array.
    pub fn restrict_to_measured(&self, y: ArrayViewMutD<f32>) {
        match self {
            Operator::Linear(op) => op.restrict_to_measured(y),
            Operator::Nonlinear(op) => op.restrict_to_measured(y),
        }
    }
}

/// An [`Operator`] held behind reference counts: [`SharedOperator::operator`] hands out as
/// many [`Operator`]s as needed, all computing with the one built operator (a problem takes
/// its operator by value; this lets one operator serve many problems without a rebuild).
#[derive(Clone)]
pub enum SharedOperator {
    Linear(std::sync::Arc<dyn LinearOperator>),
    Nonlinear(std::sync::Arc<dyn ForwardOperator>),
}

impl From<Operator> for SharedOperator {
    fn from(op: Operator) -> Self {
        match op {
            Operator::Linear(a) => SharedOperator::Linear(a.into()),
            Operator::Nonlinear(a) => SharedOperator::Nonlinear(a.into()),
        }
    }
}

impl SharedOperator {
    /// A handle on the shared operator.
    pub fn operator(&self) -> Operator {
        match self {
            SharedOperator::Linear(a) => Operator::Linear(Box::new(a.clone())),
            SharedOperator::Nonlinear(a) => Operator::Nonlinear(Box::new(a.clone())),
        }
    }
}

/// Checks a VJP against central finite differences of the forward map along a seeded random
/// direction `d`: returns `|<vjp(x, v), d> - <(A(x + h d) - A(x - h d)) / 2h, v>|` relative
/// to the larger of the two. Use a smooth point `x` (phase retrieval is not differentiable
/// where `|F x| = 0`).
pub fn vjp_mismatch(op: &dyn ForwardOperator, x: ArrayViewD<f32>, h: f32, seed: u64) -> f64 {
    let d = random_array(op.domain_shape(), seed, "vjp-direction");
    let v = random_array(op.range_shape(), seed, "vjp-cotangent");
    let g = op.vjp(x.view(), v.view());
    let analytic = dot(g.view(), d.view());
    let plus = op.forward((&x + &(&d * h)).view());
    let minus = op.forward((&x - &(&d * h)).view());
    let numeric = dot((&plus - &minus).view(), v.view()) / (2.0 * h as f64);
    (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1e-12)
}
