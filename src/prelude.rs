//! One import for research code: `use posterior::prelude::*;`.
//!
//! The reconstruction builder and its samplers and methods, the typed forward models, the
//! priors, the operator traits, noise models and the error type.

pub use crate::error::{Error, Result};
pub use crate::physics::{Blur, Boundary, Ct, Inpaint, MaskKind, Mri, Phase, Sr};
pub use crate::prior::{Denoiser, Gmm, NetworkPrior, PriorInfo, Schedule};
pub use crate::reconstruction::{
    Adjoint, Cg, Dds, Dps, Fbp, Flair, Fps, Reconstructed, Reconstruction, RedDiff, SamplerChoice,
    Smc, Tds, Tv,
};
pub use crate::sample::posterior::Prior;
pub use crate::sample::{Observer, State};
pub use crate::spec::Physics;
pub use posterior_operators::noise::NoiseModel;
pub use posterior_operators::{
    adjoint_test, ForwardOperator, LinearOperator, LinearOperatorExt, Operator,
};
