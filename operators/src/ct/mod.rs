//! Computed tomography: scan geometries (parallel and fan beam), the ray-driven projector
//! with its exact adjoint, the Beer-Lambert transmission model, analytic phantoms and
//! filtered back-projection.
//!
//! ```
//! use posterior_operators::ct::{fbp, shepp_logan_image, CtProjector, Filter, Geometry, GeometryParams};
//! use posterior_operators::LinearOperatorExt;
//!
//! let x = shepp_logan_image(64, 64).unwrap();
//! let geometry = Geometry::new(64, 64, &GeometryParams::parallel().views(90)).unwrap();
//! let a = CtProjector::new(geometry.clone()).unwrap();
//! let sinogram = a.apply_to(x.view().into_dyn()).unwrap(); // (90, detectors)
//! let sinogram = sinogram.into_dimensionality::<ndarray::Ix2>().unwrap();
//! let rec = fbp(&geometry, sinogram.view(), Filter::Hann).unwrap(); // (1, 64, 64)
//! assert_eq!(rec.shape(), &[1, 64, 64]);
//! ```
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
