//! Conjugate gradients, written once.
//!
//! [`conjugate_gradient`] solves `M x = b` for a symmetric positive semidefinite `M` given
//! as a closure, from a warm start, with a relative-residual tolerance. [`least_squares`]
//! uses it on the normal equations `(A^T A + lambda I) x = A^T y`, through the operator's
//! `normal` (closed-form where the operator has one). In exact arithmetic this is CGLS;
//! for the well-conditioned problems here the f64 accumulation keeps it as accurate.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, IxDyn, Zip};
use posterior_operators::linear::dot;
use posterior_operators::{LinearOperator, LinearOperatorExt};

use super::IterCallback;
use crate::error::Result;

/// How a conjugate-gradient run ended.
#[derive(Clone, Debug)]
pub struct CgReport {
    /// Iterations run.
    pub iterations: usize,
    /// `||b - M x|| / ||b||` at the end.
    pub relative_residual: f64,
}

/// Solves `M x = b` by conjugate gradients from the initial `x` (warm start), for at most
/// `max_iters` iterations or until `||b - M x|| <= tol ||b||`. `apply_m(v, out)` writes
/// `M v` into `out`; `M` must be symmetric positive semidefinite.
pub fn conjugate_gradient(
    apply_m: &dyn Fn(ArrayViewD<f32>, ArrayViewMutD<f32>),
    b: ArrayViewD<f32>,
    x: &mut ArrayD<f32>,
    max_iters: usize,
    tol: f64,
    on_iter: IterCallback,
) -> CgReport {
    let shape = IxDyn(b.shape());
    let mut mx = ArrayD::<f32>::zeros(shape.clone());
    apply_m(x.view(), mx.view_mut());
    let mut r = &b - &mx;
    let mut p = r.clone();
    let mut mp = ArrayD::<f32>::zeros(shape);
    let b_norm = dot(b.view(), b.view()).sqrt().max(f64::MIN_POSITIVE);
    let mut rr = dot(r.view(), r.view());
    let mut iterations = 0;
    // The largest Rayleigh quotient <p, M p> / <p, p> seen: a scale for M's spectrum.
    let mut rayleigh_max = 0.0f64;
    while iterations < max_iters && rr.sqrt() > tol * b_norm {
        apply_m(p.view(), mp.view_mut());
        let pmp = dot(p.view(), mp.view());
        let rayleigh = pmp / dot(p.view(), p.view()).max(f64::MIN_POSITIVE);
        rayleigh_max = rayleigh_max.max(rayleigh);
        // Stop when the direction lies (numerically) in M's null space: for a singular M
        // (super-resolution, undersampled k-space) f32 rounding feeds null-space components
        // into p once the residual is at rounding level, and a step along them would
        // blow x up without reducing the residual.
        if rayleigh.is_nan() || rayleigh <= 1e-6 * rayleigh_max {
            break;
        }
        let alpha = (rr / pmp) as f32;
        Zip::from(&mut *x).and(&p).for_each(|x, &p| *x += alpha * p);
        Zip::from(&mut r)
            .and(&mp)
            .for_each(|r, &mp| *r -= alpha * mp);
        let rr_new = dot(r.view(), r.view());
        let beta = (rr_new / rr) as f32;
        Zip::from(&mut p)
            .and(&r)
            .for_each(|p, &r| *p = r + beta * *p);
        rr = rr_new;
        iterations += 1;
        on_iter(iterations, rr.sqrt() / b_norm);
    }
    CgReport {
        iterations,
        relative_residual: rr.sqrt() / b_norm,
    }
}

/// Regularised least squares `argmin_x ||A x - y||^2 + lambda ||x||^2` by conjugate
/// gradients on `(A^T A + lambda I) x = A^T y`, from `x0` (zeros when `None`).
pub fn least_squares(
    op: &dyn LinearOperator,
    y: ArrayViewD<f32>,
    x0: Option<ArrayD<f32>>,
    lambda: f32,
    max_iters: usize,
    on_iter: IterCallback,
) -> Result<(ArrayD<f32>, CgReport)> {
    let rhs = op.adjoint_to(y)?;
    let mut x = match x0 {
        Some(x0) => {
            posterior_operators::error::check_shape(
                &op.name(),
                "initial estimate",
                op.domain_shape(),
                x0.shape(),
            )?;
            x0
        }
        None => ArrayD::zeros(IxDyn(op.domain_shape())),
    };
    let apply = |v: ArrayViewD<f32>, mut out: ArrayViewMutD<f32>| {
        op.normal(v.view(), out.view_mut());
        if lambda != 0.0 {
            Zip::from(&mut out)
                .and(&v)
                .for_each(|o, &v| *o += lambda * v);
        }
    };
    let report = conjugate_gradient(&apply, rhs.view(), &mut x, max_iters, 1e-6, on_iter);
    Ok((x, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, ArrayViewD, ArrayViewMutD};

    /// A dense matrix as an operator, for tests against a direct solve.
    struct Dense {
        a: Array2<f32>,
        dom: Vec<usize>,
        ran: Vec<usize>,
    }
    impl LinearOperator for Dense {
        fn name(&self) -> String {
            "dense".into()
        }
        fn domain_shape(&self) -> &[usize] {
            &self.dom
        }
        fn range_shape(&self) -> &[usize] {
            &self.ran
        }
        fn apply(&self, x: ArrayViewD<f32>, mut y: ArrayViewMutD<f32>) {
            let x1 = x.into_dimensionality::<ndarray::Ix1>().unwrap();
            y.assign(&self.a.dot(&x1).into_dyn());
        }
        fn adjoint(&self, y: ArrayViewD<f32>, mut x: ArrayViewMutD<f32>) {
            let y1 = y.into_dimensionality::<ndarray::Ix1>().unwrap();
            x.assign(&self.a.t().dot(&y1).into_dyn());
        }
    }

    #[test]
    fn least_squares_matches_the_normal_equations_solved_directly() {
        // A 6x4 full-rank matrix: the least-squares solution is unique. Reference: the
        // 4x4 normal equations solved by Gaussian elimination in f64.
        let a = Array2::from_shape_fn((6, 4), |(i, j)| {
            ((i * 7 + j * 3) % 5) as f32 - 1.5 + (i == j) as u8 as f32
        });
        let y = ndarray::Array1::from_shape_fn(6, |i| (i as f32 * 0.7).sin()).into_dyn();
        let op = Dense {
            a: a.clone(),
            dom: vec![4],
            ran: vec![6],
        };
        for &lambda in &[0.0f32, 0.5] {
            let (x, rep) = least_squares(&op, y.view(), None, lambda, 50, &mut |_, _| {}).unwrap();
            assert!(rep.relative_residual < 1e-6, "{rep:?}");
            // Direct solve.
            let a64 = a.mapv(|v| v as f64);
            let mut m = a64.t().dot(&a64) + Array2::<f64>::eye(4) * lambda as f64;
            let mut b = a64.t().dot(
                &y.view()
                    .into_dimensionality::<ndarray::Ix1>()
                    .unwrap()
                    .mapv(|v| v as f64),
            );
            for k in 0..4 {
                let piv = m[[k, k]];
                for i in (k + 1)..4 {
                    let f = m[[i, k]] / piv;
                    for j in k..4 {
                        m[[i, j]] -= f * m[[k, j]];
                    }
                    b[i] -= f * b[k];
                }
            }
            let mut sol = [0.0f64; 4];
            for k in (0..4).rev() {
                let s: f64 = ((k + 1)..4).map(|j| m[[k, j]] * sol[j]).sum();
                sol[k] = (b[k] - s) / m[[k, k]];
            }
            for (xi, si) in x.iter().zip(sol) {
                // f32 iterates on a system with condition number ~10: 1e-4 relative.
                assert!(
                    (*xi as f64 - si).abs() < 1e-4 * (1.0 + si.abs()),
                    "{xi} vs {si}"
                );
            }
        }
    }

    #[test]
    fn warm_start_at_the_solution_stops_at_once() {
        let op = posterior_operators::Identity::new(&[5]);
        let y = ndarray::Array1::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0]).into_dyn();
        let (_, rep) =
            least_squares(&op, y.view(), Some(y.clone()), 0.0, 10, &mut |_, _| {}).unwrap();
        assert_eq!(rep.iterations, 0);
    }
}
