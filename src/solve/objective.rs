//! Data objectives of the classical baselines for any forward model with a VJP: the value
//! and gradient that gradient descent ([`super::gradient`]) and L-BFGS ([`super::lbfgs()`])
//! both minimise, so the two can be compared on the same function.

use std::cell::Cell;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use posterior_operators::{LinearOperator, LinearOperatorExt, Operator};

use crate::error::{Error, Result};

/// The negative log-likelihood a measurement is fitted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Likelihood {
    /// Gaussian noise: `f(x) = 1/2 ||A(x) - y||^2`, gradient `J^T (A(x) - y)`.
    #[default]
    Gaussian,
    /// Poisson counts (`y` the measured counts, `A(x)` their positive mean, e.g.
    /// Beer-Lambert `I0 exp(-A x)`): `f(x) = sum(A(x) - y log A(x))`, gradient
    /// `J^T (1 - y / A(x))`. Means below [`Likelihood::POISSON_FLOOR`] are floored there (a
    /// zero mean with a nonzero count has infinite cost).
    Poisson,
}

impl Likelihood {
    /// The smallest mean count the Poisson objective evaluates (`log` of it stays finite).
    pub const POISSON_FLOOR: f64 = 1e-6;

    /// `gaussian` or `poisson`.
    pub fn name(self) -> &'static str {
        match self {
            Likelihood::Gaussian => "gaussian",
            Likelihood::Poisson => "poisson",
        }
    }
}

/// `f(x)` and `grad f(x)` of a [`Likelihood`] for the forward model `op` and measurement `y`;
/// counts the operator applications it makes (a forward pass or a VJP counts 1): the cost
/// measure on which gradient descent and L-BFGS are compared.
pub struct DataObjective<'a, 'y> {
    op: Model<'a>,
    y: ArrayViewD<'y, f32>,
    likelihood: Likelihood,
    applications: Cell<usize>,
}

/// A forward model: a built [`Operator`] or a borrowed linear operator.
#[derive(Clone, Copy)]
enum Model<'a> {
    Any(&'a Operator),
    Linear(&'a dyn LinearOperator),
}

impl Model<'_> {
    fn name(&self) -> String {
        match self {
            Model::Any(op) => op.name(),
            Model::Linear(op) => op.name(),
        }
    }
    fn domain_shape(&self) -> &[usize] {
        match self {
            Model::Any(op) => op.domain_shape(),
            Model::Linear(op) => op.domain_shape(),
        }
    }
    fn range_shape(&self) -> &[usize] {
        match self {
            Model::Any(op) => op.range_shape(),
            Model::Linear(op) => op.range_shape(),
        }
    }
    fn forward(&self, x: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
        Ok(match self {
            Model::Any(op) => op.forward(x)?,
            Model::Linear(op) => op.apply_to(x)?,
        })
    }
    fn vjp(&self, x: ArrayViewD<f32>, v: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
        Ok(match self {
            Model::Any(op) => op.vjp(x, v)?,
            Model::Linear(op) => op.adjoint_to(v)?,
        })
    }
}

impl<'a, 'y> DataObjective<'a, 'y> {
    /// Checks that `y` has the operator's range shape and, for Poisson, holds finite
    /// nonnegative counts.
    pub fn new(
        op: &'a Operator,
        y: ArrayViewD<'y, f32>,
        likelihood: Likelihood,
    ) -> Result<DataObjective<'a, 'y>> {
        Self::with_model(Model::Any(op), y, likelihood)
    }

    /// [`DataObjective::new`] for a linear operator borrowed as such.
    pub fn linear(
        op: &'a dyn LinearOperator,
        y: ArrayViewD<'y, f32>,
        likelihood: Likelihood,
    ) -> Result<DataObjective<'a, 'y>> {
        Self::with_model(Model::Linear(op), y, likelihood)
    }

    fn with_model(
        op: Model<'a>,
        y: ArrayViewD<'y, f32>,
        likelihood: Likelihood,
    ) -> Result<DataObjective<'a, 'y>> {
        if y.shape() != op.range_shape() {
            return Err(Error::Shape(format!(
                "the measurement has shape {:?}, but {} produces {:?}",
                y.shape(),
                op.name(),
                op.range_shape()
            )));
        }
        if likelihood == Likelihood::Poisson && y.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(Error::Invalid(
                "the Poisson likelihood needs nonnegative counts, but the measurement has negative or non-finite entries".into(),
            ));
        }
        Ok(DataObjective {
            op,
            y,
            likelihood,
            applications: Cell::new(0),
        })
    }

    /// The operator's domain shape (the shape of `x`).
    pub fn domain_shape(&self) -> &[usize] {
        self.op.domain_shape()
    }

    /// The likelihood.
    pub fn likelihood(&self) -> Likelihood {
        self.likelihood
    }

    /// Operator applications so far: forward passes plus VJPs.
    pub fn applications(&self) -> usize {
        self.applications.get()
    }

    /// `f(x)` alone: one forward pass.
    pub fn value(&self, x: ArrayViewD<f32>) -> Result<f64> {
        self.applications.set(self.applications.get() + 1);
        let ax = self.op.forward(x)?;
        Ok(self.value_of(&ax))
    }

    fn value_of(&self, ax: &ArrayD<f32>) -> f64 {
        match self.likelihood {
            Likelihood::Gaussian => {
                0.5 * ax
                    .iter()
                    .zip(self.y.iter())
                    .map(|(&a, &y)| (a as f64 - y as f64).powi(2))
                    .sum::<f64>()
            }
            Likelihood::Poisson => ax
                .iter()
                .zip(self.y.iter())
                .map(|(&a, &y)| {
                    let m = (a as f64).max(Likelihood::POISSON_FLOOR);
                    m - y as f64 * m.ln()
                })
                .sum(),
        }
    }

    /// `(f(x), grad f(x))`: one forward pass and one VJP.
    pub fn value_grad(&self, x: ArrayViewD<f32>) -> Result<(f64, ArrayD<f32>)> {
        self.applications.set(self.applications.get() + 2);
        let ax = self.op.forward(x.view())?;
        let f = self.value_of(&ax);
        let mut cot = ArrayD::zeros(IxDyn(ax.shape()));
        ndarray::Zip::from(&mut cot)
            .and(&ax)
            .and(&self.y)
            .for_each(|c, &a, &y| {
                *c = match self.likelihood {
                    Likelihood::Gaussian => a - y,
                    Likelihood::Poisson => {
                        let m = (a as f64).max(Likelihood::POISSON_FLOOR);
                        (1.0 - y as f64 / m) as f32
                    }
                }
            });
        Ok((f, self.op.vjp(x, cot.view())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central finite differences of `f` along a random direction against `<grad f, d>`.
    fn fd_check(obj: &DataObjective, x: &ArrayD<f32>, seed: u64) -> (f64, f64) {
        use rand::Rng;
        let mut rng = posterior_operators::rng::seeded(seed, "fd");
        let d = ArrayD::from_shape_simple_fn(x.raw_dim(), || rng.random::<f32>() - 0.5);
        let (_, g) = obj.value_grad(x.view()).unwrap();
        let analytic: f64 = g
            .iter()
            .zip(d.iter())
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum();
        let h = 1e-2f32;
        let plus = x + &d.mapv(|v| v * h);
        let minus = x - &d.mapv(|v| v * h);
        let fd =
            (obj.value(plus.view()).unwrap() - obj.value(minus.view()).unwrap()) / (2.0 * h as f64);
        (analytic, fd)
    }

    #[test]
    fn gradients_match_finite_differences_for_both_likelihoods() {
        // Beer-Lambert counts I0 exp(-A x) on a 6x6 image (smooth, so central differences
        // with h = 1e-2 have a truncation error of order 1e-4 relative; f32 rounding of
        // values ~1e4 adds ~1e-3 / h): 1e-2 relative leaves room. The measurement is the
        // mean with a +-10% pattern, so neither residual vanishes.
        let ctx = crate::spec::BuildContext::new(&[1, 6, 6], 0, ".");
        let physics = crate::spec::build("ct:model=beer-lambert,i0=1e3,views=8", &ctx).unwrap();
        let op = &physics.operator;
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 6, 6]), |i| 0.3 + 0.05 * (i[1] + 2 * i[2]) as f32);
        let y = op.forward(x.view()).unwrap().mapv(|v| (v * 1.1).round());
        let x1 = x.mapv(|v| v * 0.8);
        for lik in [Likelihood::Gaussian, Likelihood::Poisson] {
            let obj = DataObjective::new(op, y.view(), lik).unwrap();
            let (a, f) = fd_check(&obj, &x1, 1);
            assert!(
                (a - f).abs() <= 1e-2 * a.abs().max(1e-3),
                "{}: {a} vs {f}",
                lik.name()
            );
            // One value_grad in fd_check, two values: 2 + 1 + 1 applications.
            assert_eq!(obj.applications(), 4);
        }
        // Bad measurements are refused.
        let neg = y.mapv(|v| -v);
        assert!(DataObjective::new(op, neg.view(), Likelihood::Poisson).is_err());
        let short = ArrayD::<f32>::zeros(IxDyn(&[3]));
        assert!(DataObjective::new(op, short.view(), Likelihood::Gaussian).is_err());
    }
}
