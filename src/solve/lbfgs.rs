//! L-BFGS (argmin's `LBFGS` with a More-Thuente line search) on a [`DataObjective`]: the
//! quasi-Newton baseline for nonlinear forward models (phase retrieval, Beer-Lambert CT
//! with the Poisson likelihood), beside gradient descent on the same objective.
//!
//! The iterate is flattened to an f64 vector for argmin (its L-BFGS two-loop recursion and
//! line search run in f64); the forward model and its VJP run in f32. argmin asks for the
//! cost and the gradient separately, often at the same point: the last evaluation is cached
//! so that a point costs one forward pass and one VJP.

use std::cell::RefCell;

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use ndarray::{Array1, ArrayD, IxDyn};

use super::objective::DataObjective;
use super::IterCallback;
use crate::error::{Error, Result};

/// What an L-BFGS run did.
#[derive(Clone, Debug, PartialEq)]
pub struct LbfgsReport {
    /// The objective at the returned point.
    pub value: f64,
    /// Operator applications (forward passes plus VJPs; argmin's cost and gradient at one
    /// point share one of each).
    pub applications: usize,
    /// L-BFGS iterations.
    pub iterations: u64,
}

/// The history length `m` (argmin's recommendation is 3-20; 7 is common).
pub const HISTORY: usize = 7;

/// The last evaluation: point, value, gradient.
type Evaluation = (Array1<f64>, f64, Array1<f64>);

struct Problem<'a, 'o, 'y, 'b> {
    obj: &'a DataObjective<'o, 'y>,
    shape: Vec<usize>,
    cache: RefCell<Option<Evaluation>>,
    on_iter: RefCell<IterCallback<'b>>,
    error: RefCell<Option<Error>>,
}

impl Problem<'_, '_, '_, '_> {
    fn eval(
        &self,
        p: &Array1<f64>,
    ) -> std::result::Result<(f64, Array1<f64>), argmin::core::Error> {
        if let Some((q, f, g)) = self.cache.borrow().as_ref() {
            if q == p {
                return Ok((*f, g.clone()));
            }
        }
        let x = ArrayD::from_shape_vec(IxDyn(&self.shape), p.iter().map(|&v| v as f32).collect())
            .map_err(|e| argmin::core::Error::msg(e.to_string()))?;
        let (f, g) = match self.obj.value_grad(x.view()) {
            Ok(v) => v,
            Err(e) => {
                let msg = e.to_string();
                *self.error.borrow_mut() = Some(e);
                return Err(argmin::core::Error::msg(msg));
            }
        };
        let g: Array1<f64> = g.iter().map(|&v| v as f64).collect();
        (self.on_iter.borrow_mut())(self.obj.applications(), f);
        *self.cache.borrow_mut() = Some((p.clone(), f, g.clone()));
        Ok((f, g))
    }
}

impl CostFunction for Problem<'_, '_, '_, '_> {
    type Param = Array1<f64>;
    type Output = f64;
    fn cost(&self, p: &Self::Param) -> std::result::Result<f64, argmin::core::Error> {
        // A non-finite cost makes the line search back off instead of accepting the point.
        Ok(self.eval(p)?.0)
    }
}

impl Gradient for Problem<'_, '_, '_, '_> {
    type Param = Array1<f64>;
    type Gradient = Array1<f64>;
    fn gradient(&self, p: &Self::Param) -> std::result::Result<Array1<f64>, argmin::core::Error> {
        Ok(self.eval(p)?.1)
    }
}

/// Minimises `obj` by L-BFGS from `x0` for at most `iters` iterations (each usually one
/// evaluation, more when the line search backtracks); stops earlier when the gradient norm
/// or the change of the objective vanishes, or when the objective reaches `target`. `on_iter(evaluations, value)` is called after
/// every evaluation (with the applications so far). Returns the best point seen and the
/// report.
pub fn lbfgs(
    obj: &DataObjective,
    x0: ArrayD<f32>,
    iters: usize,
    target: Option<f64>,
    on_iter: IterCallback,
) -> Result<(ArrayD<f32>, LbfgsReport)> {
    if x0.shape() != obj.domain_shape() {
        return Err(Error::Shape(format!(
            "lbfgs: the start has shape {:?}, expected {:?}",
            x0.shape(),
            obj.domain_shape()
        )));
    }
    let shape = x0.shape().to_vec();
    let p0: Array1<f64> = x0.iter().map(|&v| v as f64).collect();
    let problem = Problem {
        obj,
        shape: shape.clone(),
        cache: RefCell::new(None),
        on_iter: RefCell::new(on_iter),
        error: RefCell::new(None),
    };
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), HISTORY)
        .with_tolerance_cost(1e-12)
        .and_then(|s| s.with_tolerance_grad(1e-10))
        .map_err(|e| Error::Invalid(format!("lbfgs: {e}")))?;
    let res = Executor::new(problem, solver)
        .configure(|s| {
            let s = s.param(p0).max_iters(iters as u64);
            match target {
                Some(t) => s.target_cost(t),
                None => s,
            }
        })
        .timer(false)
        .run();
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            return Err(Error::Invalid(format!("lbfgs failed: {e}")));
        }
    };
    let state = res.state();
    let best = state
        .get_best_param()
        .or(state.get_param())
        .ok_or_else(|| Error::Invalid("lbfgs returned no point".into()))?;
    let x = ArrayD::from_shape_vec(IxDyn(&shape), best.iter().map(|&v| v as f32).collect())
        .map_err(|e| Error::Shape(e.to_string()))?;
    let value = state.get_best_cost();
    if !value.is_finite() {
        return Err(Error::NonFinite(format!(
            "lbfgs ended at a point where the objective is {value}"
        )));
    }
    Ok((
        x,
        LbfgsReport {
            value,
            applications: obj.applications(),
            iterations: state.get_iter(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solve::gradient::gradient_descent_objective;
    use crate::solve::objective::Likelihood;
    use posterior_operators::Operator;

    #[test]
    fn solves_a_badly_scaled_quadratic_exactly() {
        // Diagonal scales 1..10 (condition number 100 for the Hessian): L-BFGS converges to
        // the exact solution y / d.
        let d: Vec<f32> = (1..=8).map(|i| i as f32 * 10.0 / 8.0).collect();
        let mut m = vec![0.0f32; 64];
        for (i, di) in d.iter().enumerate() {
            m[i * 8 + i] = *di;
        }
        let op = Operator::Linear(Box::new(crate::prior::DenseOperator::new(8, 8, m).unwrap()));
        let y =
            ArrayD::from_shape_vec(IxDyn(&[8]), (0..8).map(|i| i as f32 - 3.0).collect()).unwrap();
        let obj = DataObjective::new(&op, y.view(), Likelihood::Gaussian).unwrap();
        let (x, rep) = lbfgs(&obj, ArrayD::zeros(IxDyn(&[8])), 100, None, &mut |_, _| {}).unwrap();
        for ((xi, yi), di) in x.iter().zip(y.iter()).zip(&d) {
            assert!((xi - yi / di).abs() < 1e-4, "{xi} vs {}", yi / di);
        }
        assert!(rep.value < 1e-8, "{rep:?}");
        // Gradient descent on the same objective needs many more evaluations to get close.
        let obj2 = DataObjective::new(&op, y.view(), Likelihood::Gaussian).unwrap();
        let (_, gd) = gradient_descent_objective(
            &obj2,
            ArrayD::zeros(IxDyn(&[8])),
            rep.applications,
            false,
            &mut |_, _| {},
        )
        .unwrap();
        assert!(
            gd.value > 1e3 * rep.value.max(1e-12),
            "gd {gd:?} lbfgs {rep:?}"
        );
    }
}
