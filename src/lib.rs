//! `posterior`: reconstruct images from degraded or incomplete measurements.
//!
//! The forward operators live in the `posterior-operators` crate (re-exported as
//! [`operators`]); this crate adds file I/O, operator specs, classical reconstruction,
//! metrics and the command-line interface.

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
pub mod prior;
pub mod recon;
pub mod sample;
pub mod solve;
pub mod spec;

pub use error::{Error, Result};
pub use posterior_operators as operators;
