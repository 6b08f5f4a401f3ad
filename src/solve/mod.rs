//! Classical reconstruction: the baselines every sampler is compared against.
//!
//! - [`adjoint`]: the adjoint (zero-filled MRI, back-projection, masked image), scaled by
//!   the factor that best fits the measurement.
//! - [`krylov`]: conjugate gradients on a symmetric positive (semi)definite system, written
//!   once and used for least squares on the normal equations (CGNR / CGLS in exact
//!   arithmetic) and, later, by the DDS sampler.
//! - [`tv`]: total-variation regularised least squares by the primal-dual hybrid gradient.
//! - [`objective`]: the data objectives (Gaussian least squares, Poisson negative
//!   log-likelihood) of any forward model with a VJP, counting operator applications;
//! - [`gradient`]: gradient descent with backtracking on such an objective;
//! - [`lbfgs()`]: L-BFGS (argmin) on the same objectives, the quasi-Newton baseline for
//!   nonlinear models (phase retrieval, Beer-Lambert CT).
//! - `fbp`: filtered back-projection for CT.

pub mod adjoint;
pub mod fbp;
pub mod gradient;
pub mod krylov;
pub mod lbfgs;
pub mod objective;
pub mod tv;

pub use adjoint::scaled_adjoint;
pub use gradient::{gradient_descent, gradient_descent_linear, gradient_descent_objective};
pub use krylov::{conjugate_gradient, least_squares, CgReport};
pub use lbfgs::{lbfgs, LbfgsReport};
pub use objective::{DataObjective, Likelihood};
pub use tv::{tv_least_squares, TvOptions};

/// Called once per iteration with the iteration number (from 1) and a progress figure
/// (a residual or objective value); the CLI drives a progress bar with it.
pub type IterCallback<'a> = &'a mut dyn FnMut(usize, f64);
