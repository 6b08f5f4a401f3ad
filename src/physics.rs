//! Forward models from typed values: the operators of the spec strings
//! (`mri:coils=8,accel=4`, see [`crate::spec`]) without a string, arrays the specs cannot
//! hold (coil maps, sampling masks, blur kernels, inpainting masks), and a user's own
//! operator.
//!
//! ```no_run
//! use posterior::prelude::*;
//! # fn main() -> posterior::Result<()> {
//! let mri = Mri::coils(8).accel(4.0).seed(3).build(&[1, 64, 64])?; // = mri:coils=8,accel=4 at seed 3
//! let ct = Ct::fan(60).build(&[1, 128, 128])?;                       // = ct:geometry=fan,views=60
//! let blur = Blur::gaussian(2.0).boundary(Boundary::Reflect).build(&[3, 256, 256])?;
//! # Ok(()) }
//! ```
//!
//! Each value builds the same operator as the spec that [`Mri::spec`] (and its siblings)
//! prints, through the same code, so a typed model and its spec cannot drift apart; models
//! holding arrays build their operator directly from the arrays. `build(image_shape)` takes
//! the image `(C, H, W)` that will be measured; for MRI, `C = 1` is a real image entering
//! with zero phase (the real-to-complex embedding) and `C = 2` a complex image (re, im).
//! Everything random in an operator (masks, motion kernels, synthetic coil maps) comes from
//! `seed` (default 0), as with `posterior degrade --seed`.

use std::fmt::Display;

use ndarray::{Array2, Array3};
use num_complex::Complex32;
use posterior_operators::mri::{MultiCoilMri, SingleCoilMri};
use posterior_operators::{ForwardOperator, LinearOperator, Operator, SharedOperator};

use crate::error::{Error, Result};
use crate::spec::{self, BuildContext, Embedding, FamilyInfo, Physics};

pub use posterior_operators::blur::Boundary;
pub use posterior_operators::mri::MaskKind;

/// The family of a user's own operator ([`Physics::linear`], [`Physics::nonlinear`]).
pub static CUSTOM: FamilyInfo = FamilyInfo {
    name: "custom",
    summary: "a user's own operator",
    params: &[],
    examples: &[],
    grayscale_only: false,
};

/// The `key=value` pairs of a spec under construction.
#[derive(Clone, Debug)]
struct Keys {
    family: &'static str,
    pairs: Vec<(&'static str, String)>,
    seed: u64,
}

impl Keys {
    fn new(family: &'static str) -> Keys {
        Keys {
            family,
            pairs: Vec::new(),
            seed: 0,
        }
    }
    fn set(mut self, key: &'static str, value: impl Display) -> Keys {
        let value = value.to_string();
        match self.pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(pair) => pair.1 = value,
            None => self.pairs.push((key, value)),
        }
        self
    }
    fn spec(&self) -> String {
        if self.pairs.is_empty() {
            return self.family.to_string();
        }
        let pairs: Vec<String> = self.pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}:{}", self.family, pairs.join(","))
    }
    fn context(&self, image_shape: &[usize]) -> BuildContext {
        BuildContext::new(image_shape, self.seed, ".")
    }
    fn build(&self, image_shape: &[usize]) -> Result<Physics> {
        spec::build(&self.spec(), &self.context(image_shape))
    }
    /// A model built from arrays: the family's physics with a description instead of a
    /// spec (it names the arrays; it is not a spec and does not parse as one).
    fn physics(
        &self,
        operator: Operator,
        embedding: Embedding,
        image_shape: &[usize],
        what: &str,
    ) -> Result<Physics> {
        Ok(Physics {
            operator,
            embedding,
            family: spec::family(self.family)?,
            spec: format!("{} ({what})", self.spec()),
            context: self.context(image_shape),
        })
    }
}

/// The seed, spec and build methods every typed model shares.
macro_rules! common {
    ($t:ty) => {
        impl $t {
            /// The seed of the operator's randomness (masks, kernels, coil maps); 0 by default.
            pub fn seed(mut self, seed: u64) -> Self {
                self.keys.seed = seed;
                self
            }
            /// The equivalent spec string (`posterior degrade --op`).
            pub fn spec(&self) -> String {
                self.keys.spec()
            }
        }
    };
}

/// `(C, H, W)` of an image shape, or a shape error naming the model.
fn chw(image_shape: &[usize], what: &str) -> Result<(usize, usize, usize)> {
    match *image_shape {
        [c, h, w] if c > 0 && h > 0 && w > 0 => Ok((c, h, w)),
        _ => Err(Error::Shape(format!(
            "{what}: the image shape must be (C, H, W) with positive sizes; got {image_shape:?}"
        ))),
    }
}

/// How an MRI image of `c` channels enters the complex operator domain.
fn mri_embedding(c: usize, image_shape: &[usize]) -> Result<Embedding> {
    match c {
        1 => Ok(Embedding::RealToComplex),
        2 => Ok(Embedding::Complex),
        _ => Err(Error::Shape(format!(
            "mri: the image is (1, H, W) (real, zero phase) or (2, H, W) (complex re, im); got {image_shape:?}"
        ))),
    }
}

/// Cartesian MRI: centred, orthonormal k-space of a complex image, undersampled by a mask,
/// single-coil or multi-coil SENSE (the `mri` spec family; conventions in
/// [`posterior_operators::mri`]).
#[derive(Clone, Debug)]
pub struct Mri {
    keys: Keys,
    maps: Option<Array3<Complex32>>,
    mask: Option<Array2<f32>>,
}
common!(Mri);

impl Mri {
    /// One coil (`mri`).
    pub fn single_coil() -> Mri {
        Mri {
            keys: Keys::new("mri"),
            maps: None,
            mask: None,
        }
    }
    /// `n` coils with synthetic smooth maps, `sum_c |S_c|^2 = 1` (`mri:coils=N`).
    pub fn coils(n: usize) -> Mri {
        let m = Mri::single_coil();
        Mri {
            keys: m.keys.set("coils", n),
            ..m
        }
    }
    /// Your coil maps `(coils, H, W)` (used as given) and sampling mask `(H, W)` in {0, 1}.
    pub fn multicoil(maps: Array3<Complex32>, mask: Array2<f32>) -> Mri {
        Mri {
            keys: Keys::new("mri"),
            maps: Some(maps),
            mask: Some(mask),
        }
    }
    /// One coil with your sampling mask `(H, W)` in {0, 1}.
    pub fn single_coil_mask(mask: Array2<f32>) -> Mri {
        Mri {
            keys: Keys::new("mri"),
            maps: None,
            mask: Some(mask),
        }
    }
    /// Acceleration: about `1/r` of k-space is sampled, the calibration region included
    /// (default 4; generated masks only).
    pub fn accel(self, r: f64) -> Mri {
        Mri {
            keys: self.keys.set("accel", r),
            ..self
        }
    }
    /// The sampling pattern (default [`MaskKind::Uniform1d`]; generated masks only).
    pub fn mask(self, kind: MaskKind) -> Mri {
        let name = match kind {
            MaskKind::Uniform1d => "uniform1d",
            MaskKind::Random1d => "random1d",
            MaskKind::Gaussian2d => "gaussian2d",
            MaskKind::Poisson => "poisson",
        };
        Mri {
            keys: self.keys.set("mask", name),
            ..self
        }
    }
    /// The fully sampled centre as a fraction of the lines (default 0.08; generated masks
    /// only).
    pub fn acs(self, fraction: f64) -> Mri {
        Mri {
            keys: self.keys.set("acs", fraction),
            ..self
        }
    }
    /// The forward model for an image of `image_shape`: `(1, H, W)` real (zero phase) or
    /// `(2, H, W)` complex.
    pub fn build(self, image_shape: &[usize]) -> Result<Physics> {
        let (c, h, w) = chw(image_shape, "mri")?;
        let embedding = mri_embedding(c, image_shape)?;
        let Some(mask) = self.mask else {
            return self.keys.build(image_shape);
        };
        if !self.keys.pairs.is_empty() {
            return Err(Error::Invalid(format!(
                "mri: a given mask fixes the sampling; `{}` applies to generated masks only",
                self.keys.spec()
            )));
        }
        if mask.dim() != (h, w) {
            return Err(Error::Shape(format!(
                "mri: the mask is {:?} but the image is {h} x {w}: expected ({h}, {w})",
                mask.dim()
            )));
        }
        let (operator, what): (Box<dyn LinearOperator>, String) = match self.maps {
            Some(maps) => {
                let coils = maps.dim().0;
                (
                    Box::new(MultiCoilMri::new(maps, mask)?),
                    format!("{coils} coil maps and a mask given"),
                )
            }
            None => (Box::new(SingleCoilMri::new(mask)?), "a mask given".into()),
        };
        self.keys
            .physics(Operator::Linear(operator), embedding, image_shape, &what)
    }
}

/// Parallel- or fan-beam CT: line integrals through the image (the `ct` spec family;
/// conventions in [`crate::spec::ct`]). Filtered back-projection and the measurement-derived
/// intensity range work on it as on the spec.
#[derive(Clone, Debug)]
pub struct Ct {
    keys: Keys,
}
common!(Ct);

impl Ct {
    /// Parallel beam, `views` angles over 180 degrees (`ct:views=N`).
    pub fn parallel(views: usize) -> Ct {
        Ct {
            keys: Keys::new("ct").set("views", views),
        }
    }
    /// Fan beam with an arc detector, `views` angles over 360 degrees
    /// (`ct:geometry=fan,views=N`).
    pub fn fan(views: usize) -> Ct {
        Ct {
            keys: Keys::new("ct").set("geometry", "fan").set("views", views),
        }
    }
    /// The angular range in degrees (limited-angle CT).
    pub fn arc(self, degrees: f64) -> Ct {
        Ct {
            keys: self.keys.set("arc", degrees),
        }
    }
    /// The first view's angle in degrees.
    pub fn start(self, degrees: f64) -> Ct {
        Ct {
            keys: self.keys.set("start", degrees),
        }
    }
    /// The number of detector elements.
    pub fn detectors(self, n: usize) -> Ct {
        Ct {
            keys: self.keys.set("detectors", n),
        }
    }
    /// A flat detector (fan beam only).
    pub fn flat_detector(self) -> Ct {
        Ct {
            keys: self.keys.set("detector", "flat"),
        }
    }
    /// Source-to-centre and source-to-detector distances in pixels (fan beam only).
    pub fn distances(self, source: f64, detector: f64) -> Ct {
        Ct {
            keys: self.keys.set("sod", source).set("sdd", detector),
        }
    }
    /// The Beer-Lambert model: photon counts `i0 exp(-A x)` (nonlinear) instead of line
    /// integrals.
    pub fn beer_lambert(self, i0: f64) -> Ct {
        Ct {
            keys: self.keys.set("model", "beer-lambert").set("i0", i0),
        }
    }
    /// The forward model for an attenuation image `(1, H, W)`.
    pub fn build(self, image_shape: &[usize]) -> Result<Physics> {
        self.keys.build(image_shape)
    }
}

/// Blur by a kernel (the `blur` spec family): Gaussian, uniform, seeded camera-shake
/// motion, or your kernel; periodic, reflect or valid boundary.
#[derive(Clone, Debug)]
pub struct Blur {
    keys: Keys,
    kernel: Option<Array2<f32>>,
    boundary: Boundary,
}
common!(Blur);

impl Blur {
    fn of(keys: Keys, kernel: Option<Array2<f32>>) -> Blur {
        Blur {
            keys,
            kernel,
            boundary: Boundary::Circular,
        }
    }
    /// A Gaussian kernel of standard deviation `sigma` pixels (`blur:kernel=gaussian,sigma=S`).
    pub fn gaussian(sigma: f64) -> Blur {
        Blur::of(
            Keys::new("blur")
                .set("kernel", "gaussian")
                .set("sigma", sigma),
            None,
        )
    }
    /// A uniform `size x size` box (odd `size`).
    pub fn uniform(size: usize) -> Blur {
        Blur::of(
            Keys::new("blur").set("kernel", "uniform").set("size", size),
            None,
        )
    }
    /// A seeded camera-shake kernel of `intensity` in (0, 1].
    pub fn motion(intensity: f64) -> Blur {
        Blur::of(
            Keys::new("blur")
                .set("kernel", "motion")
                .set("intensity", intensity),
            None,
        )
    }
    /// Your kernel `(h, w)` (used as given, not normalised).
    pub fn kernel(kernel: Array2<f32>) -> Blur {
        Blur::of(Keys::new("blur"), Some(kernel))
    }
    /// The kernel side for the Gaussian and motion kernels (odd).
    pub fn size(self, size: usize) -> Blur {
        Blur {
            keys: self.keys.set("size", size),
            ..self
        }
    }
    /// What happens at the image border (default [`Boundary::Circular`]).
    pub fn boundary(self, boundary: Boundary) -> Blur {
        let name = match boundary {
            Boundary::Circular => "circular",
            Boundary::Reflect => "reflect",
            Boundary::Valid => "valid",
        };
        Blur {
            keys: self.keys.set("boundary", name),
            boundary,
            ..self
        }
    }
    /// The forward model for an image of `image_shape` `(C, H, W)`.
    pub fn build(self, image_shape: &[usize]) -> Result<Physics> {
        let Some(kernel) = self.kernel else {
            return self.keys.build(image_shape);
        };
        chw(image_shape, "blur")?;
        let op = posterior_operators::blur::with_boundary(
            image_shape,
            kernel,
            "kernel given",
            self.boundary,
        )?;
        self.keys.physics(
            Operator::Linear(op),
            Embedding::Identity,
            image_shape,
            "a kernel given",
        )
    }
}

/// Inpainting: the measured pixels of the image (the `inpaint` spec family).
#[derive(Clone, Debug)]
pub struct Inpaint {
    keys: Keys,
    mask: Option<Array2<bool>>,
}
common!(Inpaint);

impl Inpaint {
    /// Your mask `(H, W)`: `true` where the pixel is measured.
    pub fn mask(mask: Array2<bool>) -> Inpaint {
        Inpaint {
            keys: Keys::new("inpaint"),
            mask: Some(mask),
        }
    }
    /// A centred square hole of side `size` (`inpaint:mask=box,size=N`).
    pub fn center_box(size: usize) -> Inpaint {
        Inpaint {
            keys: Keys::new("inpaint").set("mask", "box").set("size", size),
            mask: None,
        }
    }
    /// `count` seeded square holes of side `size`.
    pub fn boxes(count: usize, size: usize) -> Inpaint {
        Inpaint {
            keys: Keys::new("inpaint")
                .set("mask", "boxes")
                .set("count", count)
                .set("size", size),
            mask: None,
        }
    }
    /// A seeded `fraction` of the pixels missing.
    pub fn random(fraction: f64) -> Inpaint {
        Inpaint {
            keys: Keys::new("inpaint")
                .set("mask", "random")
                .set("fraction", fraction),
            mask: None,
        }
    }
    /// Seeded free-form strokes covering about `coverage` of the image.
    pub fn strokes(coverage: f64) -> Inpaint {
        Inpaint {
            keys: Keys::new("inpaint")
                .set("mask", "strokes")
                .set("coverage", coverage),
            mask: None,
        }
    }
    /// The forward model for an image of `image_shape` `(C, H, W)`.
    pub fn build(self, image_shape: &[usize]) -> Result<Physics> {
        let Some(mask) = self.mask else {
            return self.keys.build(image_shape);
        };
        chw(image_shape, "inpaint")?;
        let op = posterior_operators::inpaint::Mask::new(image_shape, mask, "mask given")?;
        self.keys.physics(
            Operator::Linear(Box::new(op)),
            Embedding::Identity,
            image_shape,
            "a mask given",
        )
    }
}

/// Super-resolution: downsampling by an integer factor (the `sr` spec family).
#[derive(Clone, Debug)]
pub struct Sr {
    keys: Keys,
}
common!(Sr);

impl Sr {
    /// Anti-aliased bicubic downsampling by `factor` (`sr:factor=F`).
    pub fn new(factor: usize) -> Sr {
        Sr {
            keys: Keys::new("sr").set("factor", factor),
        }
    }
    /// Average pooling of `factor x factor` blocks instead of bicubic.
    pub fn avgpool(self) -> Sr {
        Sr {
            keys: self.keys.set("method", "avgpool"),
        }
    }
    /// The forward model for an image of `image_shape` `(C, H, W)`.
    pub fn build(self, image_shape: &[usize]) -> Result<Physics> {
        self.keys.build(image_shape)
    }
}

/// Fourier phase retrieval `|F x|` with oversampling (the `phase` spec family; nonlinear).
#[derive(Clone, Debug)]
pub struct Phase {
    keys: Keys,
}
common!(Phase);

impl Phase {
    /// Magnitudes of the `oversampling`-times zero-padded Fourier transform.
    pub fn new(oversampling: f64) -> Phase {
        Phase {
            keys: Keys::new("phase").set("oversampling", oversampling),
        }
    }
    /// The forward model for an image of `image_shape` `(C, H, W)`.
    pub fn build(self, image_shape: &[usize]) -> Result<Physics> {
        self.keys.build(image_shape)
    }
}

impl Physics {
    /// Your own linear operator as a forward model; the image is its domain (see
    /// [`Physics::real_to_complex`] for a complex domain measured from real images).
    pub fn linear(operator: impl LinearOperator + 'static) -> Physics {
        Physics::custom(Operator::Linear(Box::new(operator)))
    }

    /// Your own nonlinear forward map (with its VJP) as a forward model.
    pub fn nonlinear(operator: impl ForwardOperator + 'static) -> Physics {
        Physics::custom(Operator::Nonlinear(Box::new(operator)))
    }

    /// Any built operator as a forward model on its own domain.
    pub fn custom(operator: Operator) -> Physics {
        let image_shape = operator.domain_shape().to_vec();
        Physics {
            spec: format!("custom ({})", operator.name()),
            operator,
            embedding: Embedding::Identity,
            family: &CUSTOM,
            context: BuildContext::new(&image_shape, 0, "."),
        }
    }

    /// The same model measuring real images `(1, H, W)` with zero imaginary part, for an
    /// operator on complex images `(2, H, W)` (re, im): reconstructions come back as the
    /// real image `(1, H, W)` (samplers) or the magnitude (classical methods).
    pub fn real_to_complex(mut self) -> Result<Physics> {
        let domain = self.operator.domain_shape().to_vec();
        if domain.len() != 3 || domain[0] != 2 {
            return Err(Error::Shape(format!(
                "{}: the real-to-complex embedding needs a complex (2, H, W) domain; the operator's is {domain:?}",
                self.operator.name()
            )));
        }
        self.embedding = Embedding::RealToComplex;
        self.context.image_shape = vec![1, domain[1], domain[2]];
        Ok(self)
    }

    /// A second handle on this model that shares its operator (nothing is rebuilt: coil
    /// maps, masks and projection tables stay as they are), for several reconstructions of
    /// one measurement; both handles compute the same numbers.
    pub fn share(&mut self) -> Physics {
        let placeholder = Operator::Linear(Box::new(posterior_operators::Identity::new(&[0])));
        let shared = SharedOperator::from(std::mem::replace(&mut self.operator, placeholder));
        self.operator = shared.operator();
        Physics {
            operator: shared.operator(),
            embedding: self.embedding,
            family: self.family,
            spec: self.spec.clone(),
            context: self.context.clone(),
        }
    }

    /// The shape `(C, H, W)` of the images this model measures.
    pub fn image_shape(&self) -> &[usize] {
        &self.context.image_shape
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};
    use posterior_operators::linear::random_array;

    /// The typed model and its spec build the same operator: equal outputs on a seeded
    /// random input (bit for bit: the same code runs).
    fn same_as_spec(physics: Physics, spec_text: &str, shape: &[usize], seed: u64) {
        assert_eq!(physics.spec, spec_text);
        let from_spec = spec::build(spec_text, &BuildContext::new(shape, seed, ".")).unwrap();
        let x = random_array(physics.operator.domain_shape(), 4, "x");
        assert_eq!(
            physics.operator.forward(x.view()).unwrap(),
            from_spec.operator.forward(x.view()).unwrap(),
            "{spec_text}"
        );
        assert_eq!(physics.embedding, from_spec.embedding);
    }

    #[test]
    fn typed_models_equal_their_specs() {
        let s = [1, 32, 32];
        let mri = Mri::coils(4).accel(2.0).mask(MaskKind::Poisson).seed(3);
        same_as_spec(
            mri.build(&s).unwrap(),
            "mri:coils=4,accel=2,mask=poisson",
            &s,
            3,
        );
        same_as_spec(
            Ct::fan(20).arc(200.0).build(&s).unwrap(),
            "ct:geometry=fan,views=20,arc=200",
            &s,
            0,
        );
        same_as_spec(
            Blur::gaussian(1.5)
                .boundary(Boundary::Reflect)
                .build(&[3, 32, 32])
                .unwrap(),
            "blur:kernel=gaussian,sigma=1.5,boundary=reflect",
            &[3, 32, 32],
            0,
        );
        same_as_spec(
            Inpaint::random(0.5).seed(9).build(&s).unwrap(),
            "inpaint:mask=random,fraction=0.5",
            &s,
            9,
        );
        same_as_spec(
            Sr::new(2).avgpool().build(&s).unwrap(),
            "sr:factor=2,method=avgpool",
            &s,
            0,
        );
        same_as_spec(
            Phase::new(2.0).build(&s).unwrap(),
            "phase:oversampling=2",
            &s,
            0,
        );
    }

    #[test]
    fn array_models_use_the_arrays_and_check_their_shapes() {
        // Coil maps that are 1 on coil 0 and 0 on coil 1: coil 1 measures nothing.
        let (h, w) = (8, 6);
        let mut maps = Array3::<Complex32>::zeros((2, h, w));
        maps.index_axis_mut(ndarray::Axis(0), 0)
            .fill(Complex32::new(1.0, 0.0));
        let mask = Array2::<f32>::ones((h, w));
        let p = Mri::multicoil(maps.clone(), mask.clone())
            .build(&[1, h, w])
            .unwrap();
        assert_eq!(p.embedding, Embedding::RealToComplex);
        assert_eq!(p.operator.range_shape(), &[2, 2, h, w]);
        let x = random_array(&[2, h, w], 1, "x");
        let y = p.operator.forward(x.view()).unwrap();
        assert!(y.index_axis(ndarray::Axis(0), 1).iter().all(|v| *v == 0.0));
        // A fully sampled single coil with unit maps is the orthonormal FFT: norms agree.
        let n = |a: &ArrayD<f32>| a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
        assert!((n(&y) - n(&x)).abs() < 1e-4 * n(&x));
        let e = Mri::multicoil(maps, Array2::ones((h + 1, w)))
            .build(&[1, h, w])
            .err()
            .unwrap();
        assert_eq!(e.kind(), "shape");
        let e = Mri::single_coil_mask(mask.clone())
            .accel(4.0)
            .build(&[1, h, w])
            .err()
            .unwrap();
        assert!(e.to_string().contains("accel"), "{e}");
        let e = Mri::single_coil().build(&[3, h, w]).err().unwrap();
        assert_eq!(e.kind(), "shape");
        // An inpainting mask keeps exactly the measured pixels.
        let keep = Array2::from_shape_fn((h, w), |(i, j)| (i + j) % 3 == 0);
        let p = Inpaint::mask(keep.clone()).build(&[1, h, w]).unwrap();
        let ones = ArrayD::from_elem(IxDyn(&[1, h, w]), 1.0f32);
        let y = p.operator.forward(ones.view()).unwrap();
        let kept = y.iter().filter(|v| **v == 1.0).count();
        assert_eq!(kept, keep.iter().filter(|k| **k).count());
        // A delta kernel is the identity.
        let mut delta = Array2::zeros((3, 3));
        delta[[1, 1]] = 1.0;
        let p = Blur::kernel(delta).build(&[1, h, w]).unwrap();
        let x = random_array(&[1, h, w], 2, "x");
        let y = p.operator.forward(x.view()).unwrap();
        assert!(y.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn custom_operators_and_the_real_to_complex_embedding() {
        let id = posterior_operators::Identity::new(&[2, 4, 4]);
        let p = Physics::linear(id).real_to_complex().unwrap();
        assert_eq!(p.image_shape(), &[1, 4, 4]);
        let img = random_array(&[1, 4, 4], 3, "img");
        let x = p.embed(img.view()).unwrap();
        assert_eq!(x.shape(), &[2, 4, 4]);
        assert!(x.index_axis(ndarray::Axis(0), 1).iter().all(|v| *v == 0.0));
        let e = Physics::linear(posterior_operators::Identity::new(&[1, 4, 4]))
            .real_to_complex()
            .err()
            .unwrap();
        assert_eq!(e.kind(), "shape");
    }
}
