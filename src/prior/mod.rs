//! Priors: noising paths ([`schedule`]), the [`Denoiser`] interface every sampler talks to
//! ([`denoiser`]), and an exact Gaussian-mixture prior with closed-form posteriors ([`gmm`])
//! that serves as ground truth for testing samplers.

pub mod card;
pub mod denoiser;
pub mod dense;
pub mod gmm;
pub mod import;
pub mod network;
pub mod schedule;

pub use card::{Architecture, ModelCard, Output, ScheduleCard, ScheduleKind};
pub use denoiser::{check_batch, Clipped, Denoiser, OnPath, PriorInfo, Pullback};
pub use dense::{dense_matrix, DenseOperator};
pub use gmm::{Covariance, Gmm};
pub use network::{default_prior_for, prior_roots, resolve_prior, shipped_priors, NetworkPrior};
pub use schedule::{Knot, Param, PathKind, Schedule};
