//! Gradient descent with backtracking on the data term of any forward model.

use ndarray::{ArrayD, ArrayViewD, IxDyn, Zip};
use posterior_operators::linear::dot;
use posterior_operators::{LinearOperator, Operator};

use super::objective::{DataObjective, Likelihood};
use super::IterCallback;
use crate::error::{Error, Result};

/// `argmin_x 1/2 ||A(x) - y||^2` by gradient descent from `x0` (zeros when `None`), the
/// gradient `J_A(x)^T (A(x) - y)` coming from the operator's VJP, with an Armijo
/// backtracking line search (the step grows by 2 after a success, halves on failure).
/// Works for linear and nonlinear models; `nonnegative` projects onto `x >= 0`.
pub fn gradient_descent(
    op: &Operator,
    y: ArrayViewD<f32>,
    x0: Option<ArrayD<f32>>,
    iters: usize,
    nonnegative: bool,
    on_iter: IterCallback,
) -> Result<ArrayD<f32>> {
    let obj = DataObjective::new(op, y, Likelihood::Gaussian)?;
    let x0 = x0.unwrap_or_else(|| ArrayD::zeros(IxDyn(op.domain_shape())));
    Ok(gradient_descent_objective(&obj, x0, iters, nonnegative, on_iter)?.0)
}

/// [`gradient_descent`] for a linear operator borrowed as such.
pub fn gradient_descent_linear(
    op: &dyn LinearOperator,
    y: ArrayViewD<f32>,
    x0: Option<ArrayD<f32>>,
    iters: usize,
    nonnegative: bool,
    on_iter: IterCallback,
) -> Result<ArrayD<f32>> {
    let obj = DataObjective::linear(op, y, Likelihood::Gaussian)?;
    let x0 = x0.unwrap_or_else(|| ArrayD::zeros(IxDyn(op.domain_shape())));
    Ok(gradient_descent_objective(&obj, x0, iters, nonnegative, on_iter)?.0)
}

/// What a gradient-descent run did.
#[derive(Clone, Debug, PartialEq)]
pub struct DescentReport {
    /// The objective at the returned point.
    pub value: f64,
    /// Operator applications (forward passes of the trial points plus the VJPs).
    pub applications: usize,
    /// Iterations taken.
    pub iterations: usize,
}

/// Gradient descent with Armijo backtracking (see [`gradient_descent`]) on any
/// [`DataObjective`] (Gaussian or Poisson), from `x0`, for at most `iters` iterations;
/// `on_iter(iteration, value)` after each. Stops early when the gradient vanishes or no
/// step decreases the objective.
pub fn gradient_descent_objective(
    obj: &DataObjective,
    x0: ArrayD<f32>,
    iters: usize,
    nonnegative: bool,
    on_iter: IterCallback,
) -> Result<(ArrayD<f32>, DescentReport)> {
    let mut x = x0;
    if x.shape() != obj.domain_shape() {
        return Err(Error::Shape(format!(
            "gradient descent: the start has shape {:?}, the model's domain is {:?}",
            x.shape(),
            obj.domain_shape()
        )));
    }
    let (mut f, mut g) = obj.value_grad(x.view())?;
    let mut step = 1.0f32;
    let mut taken = 0;
    for it in 1..=iters {
        let gg = dot(g.view(), g.view());
        if gg == 0.0 || !gg.is_finite() {
            break;
        }
        let mut accepted = None;
        for _ in 0..40 {
            let mut cand = x.clone();
            Zip::from(&mut cand).and(&g).for_each(|c, &g| {
                *c -= step * g;
                if nonnegative && *c < 0.0 {
                    *c = 0.0;
                }
            });
            let fc = obj.value(cand.view())?;
            let decrease = dot((&x - &cand).view(), g.view());
            if fc <= f - 0.5 * decrease && fc.is_finite() {
                accepted = Some(cand);
                step *= 2.0;
                break;
            }
            step *= 0.5;
        }
        let Some(cand) = accepted else {
            on_iter(it, f);
            break;
        };
        x = cand;
        (f, g) = obj.value_grad(x.view())?;
        taken = it;
        on_iter(it, f);
    }
    Ok((
        x,
        DescentReport {
            value: f,
            applications: obj.applications(),
            iterations: taken,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_operators::{Identity, Scaled};

    #[test]
    fn a_measurement_of_the_wrong_shape_is_an_error_not_a_panic() {
        let op = Operator::Linear(Box::new(Identity::new(&[4])));
        let y = ndarray::arr1(&[1.0f32, 2.0, 3.0]).into_dyn();
        let e = gradient_descent(&op, y.view(), None, 10, false, &mut |_, _| {}).unwrap_err();
        assert_eq!(e.kind(), "shape", "{e}");
        assert!(
            e.to_string().contains("[3]") && e.to_string().contains("[4]"),
            "{e}"
        );
    }

    #[test]
    fn recovers_the_solution_of_a_scaled_identity() {
        let op = Operator::Linear(Box::new(
            Scaled::new(Box::new(Identity::new(&[4])), 3.0).unwrap(),
        ));
        let y = ndarray::arr1(&[3.0f32, -6.0, 9.0, 1.5]).into_dyn();
        let x = gradient_descent(&op, y.view(), None, 100, false, &mut |_, _| {}).unwrap();
        for (a, b) in x.iter().zip([1.0, -2.0, 3.0, 0.5]) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
