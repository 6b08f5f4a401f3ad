//! `posterior`: reconstruct images from degraded or incomplete measurements.
//!
//! Research code starts from [`prelude`]: a forward model ([`physics`]: `Mri`, `Ct`,
//! `Blur`, ... or your own operator), a prior ([`prior::NetworkPrior`] or your own
//! [`prior::Denoiser`]), and a [`reconstruction::Reconstruction`]:
//!
//! ```no_run
//! use posterior::prelude::*;
//! # fn main() -> posterior::Result<()> {
//! # let y = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[8, 2, 64, 64]));
//! let physics = Mri::coils(8).accel(4.0).build(&[1, 64, 64])?;
//! let r = Reconstruction::new(physics, y)
//!     .noise(NoiseModel::ComplexGaussian { sigma: 0.005 })
//!     .sampler(Dds::default())
//!     .prior(NetworkPrior::open("brain-mri")?)
//!     .run()?;
//! # Ok(()) }
//! ```
//!
//! The forward operators live in the `posterior-operators` crate (re-exported as
//! [`operators`]); this crate adds priors, samplers, classical reconstruction, file I/O,
//! operator specs, metrics and the command-line interface.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod error;
pub mod figure;
pub mod gpu;
pub mod io;
pub mod limits;
pub mod measurement;
pub mod metrics;
pub mod nn;
pub mod physics;
pub mod prelude;
pub mod prior;
pub mod recon;
pub mod reconstruction;
pub mod sample;
pub mod solve;
pub mod spec;

pub use error::{Error, Result};
pub use posterior_operators as operators;
