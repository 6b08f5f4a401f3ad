//! Forward operators for imaging inverse problems.
//!
//! Conventions, shared by every operator in the crate:
//! - Element type `f32`; reductions in `f64`.
//! - An image is `(C, H, W)`; complex data are a channel pair `(re, im)` of f32 (a complex
//!   image is `(2, H, W)`, multi-coil k-space `(coils, 2, H, W)`).
//! - Every operator maps real arrays to real arrays, and adjoints are taken in the real
//!   Euclidean inner product; for complex operators stored as channel pairs this equals the
//!   Hermitian adjoint.
//! - Randomness (masks, motion kernels, noise) comes from a seed through [`rng::seeded`].
//! - Constructors validate their parameters and return [`Error`] with a message that names
//!   the operator, the parameter and what was expected.

pub mod blur;
pub mod ct;
pub mod error;
pub mod fft;
pub mod forward;
pub mod inpaint;
pub mod linear;
pub mod mri;
pub mod noise;
pub mod phase;
pub mod rng;
pub mod sr;

pub use error::{Error, Result};
pub use forward::{ForwardOperator, Operator, SharedOperator};
pub use linear::{
    adjoint_mismatch, adjoint_test, normal_mismatch, solve_regularized_residual, AdjointReport,
    Composed, Identity, LinearOperator, LinearOperatorExt, Scaled,
};
