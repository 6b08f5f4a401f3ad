//! Computed tomography: scan geometries (parallel and fan beam), the ray-driven projector
//! with its exact adjoint, the Beer-Lambert transmission model, and analytic phantoms.
//!
//! Conventions (details in [`geometry`]): the image is `(1, H, W)` on a centred grid of
//! square pixels of side `pixel` (default 1, so line integrals are in attenuation x
//! pixels); the sinogram is `(views, detectors)`.

pub mod beer_lambert;
pub mod fbp;
pub mod geometry;
pub mod phantom;
pub mod projector;

pub use beer_lambert::BeerLambert;
pub use fbp::{fbp, Filter};
pub use geometry::{Beam, BeamKind, FanDetector, Geometry, GeometryParams, Ray};
pub use phantom::{random_ellipses_image, shepp_logan_image, Ellipse, Phantom};
pub use projector::CtProjector;
