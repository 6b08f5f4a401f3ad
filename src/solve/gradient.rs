//! Gradient descent with backtracking on the data term of any forward model.

use ndarray::{ArrayD, ArrayViewD, IxDyn, Zip};
use posterior_operators::linear::dot;
use posterior_operators::{LinearOperator, LinearOperatorExt, Operator};

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
    let model = Model {
        domain_shape: op.domain_shape(),
        forward: &|x| op.forward(x).map_err(Into::into),
        vjp: &|x, v| op.vjp(x, v).map_err(Into::into),
    };
    descend(&model, y, x0, iters, nonnegative, on_iter)
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
    let model = Model {
        domain_shape: op.domain_shape(),
        forward: &|x| op.apply_to(x).map_err(Into::into),
        vjp: &|_, v| op.adjoint_to(v).map_err(Into::into),
    };
    descend(&model, y, x0, iters, nonnegative, on_iter)
}

type ForwardFn<'a> = &'a dyn Fn(ArrayViewD<f32>) -> Result<ArrayD<f32>>;
type VjpFn<'a> = &'a dyn Fn(ArrayViewD<f32>, ArrayViewD<f32>) -> Result<ArrayD<f32>>;

/// A differentiable model as the descent sees it.
struct Model<'a> {
    domain_shape: &'a [usize],
    forward: ForwardFn<'a>,
    vjp: VjpFn<'a>,
}

fn descend(
    op: &Model,
    y: ArrayViewD<f32>,
    x0: Option<ArrayD<f32>>,
    iters: usize,
    nonnegative: bool,
    on_iter: IterCallback,
) -> Result<ArrayD<f32>> {
    let mut x = x0.unwrap_or_else(|| ArrayD::zeros(IxDyn(op.domain_shape)));
    if x.shape() != op.domain_shape {
        return Err(Error::Shape(format!(
            "gradient descent: the start has shape {:?}, the model's domain is {:?}",
            x.shape(),
            op.domain_shape
        )));
    }
    let loss = |x: &ArrayD<f32>| -> Result<(f64, ArrayD<f32>)> {
        let fx = (op.forward)(x.view())?;
        if fx.shape() != y.shape() {
            return Err(Error::Shape(format!(
                "gradient descent: the model gives measurements of shape {:?}, but the \
                 measurement has shape {:?}",
                fx.shape(),
                y.shape()
            )));
        }
        let r = fx - &y;
        Ok((0.5 * dot(r.view(), r.view()), r))
    };
    let (mut f, mut r) = loss(&x)?;
    let mut step = 1.0f32;
    for it in 1..=iters {
        let g = (op.vjp)(x.view(), r.view())?;
        let gg = dot(g.view(), g.view());
        if gg == 0.0 {
            break;
        }
        let mut accepted = false;
        for _ in 0..40 {
            let mut cand = x.clone();
            Zip::from(&mut cand).and(&g).for_each(|c, &g| {
                *c -= step * g;
                if nonnegative && *c < 0.0 {
                    *c = 0.0;
                }
            });
            let (fc, rc) = loss(&cand)?;
            let decrease = dot((&x - &cand).view(), g.view());
            if fc <= f - 0.5 * decrease && fc.is_finite() {
                x = cand;
                f = fc;
                r = rc;
                step *= 2.0;
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        on_iter(it, f);
        if !accepted {
            break;
        }
    }
    Ok(x)
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
