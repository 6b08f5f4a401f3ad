//! Restating a measurement made in image units as a [`Problem`] in a prior's units.
//!
//! `posterior degrade` measures an image in its working units (`[0, 1]` for PNGs, scaled
//! data units for NIfTI / DICOM) through an operator whose domain may embed the image (a
//! real `(1, H, W)` image enters an MRI operator as the complex `(2, H, W)` pair
//! `(x, 0)`). A prior works in its own intensity range (usually `[-1, 1]`). With the
//! affine map `x_img = scale x_prior + offset` ([`PriorUnits`]) sending the prior's range
//! onto the image's, the measurement `y = A(E(x_img)) + n` becomes
//! - for a linear `A`: `y - A(E(offset 1)) = scale A E x_prior + n`, i.e. the linear operator
//!   `scale (A o E)` and a shifted measurement, so closed-form solves and CG stay available;
//! - for a nonlinear `A`: the forward map `x_prior -> A(E(scale x_prior + offset))` with VJP
//!   `scale E^T J_A^T v`.
//!
//! The noise keeps its units (those of `y`), so `sigma_y` is unchanged.
//!
//! # Where the image range comes from
//! The image range is read off the measurement, never off the truth ([`measured_range`]):
//! - MRI: `[0, p99.5]` of the magnitude of the zero-filled reconstruction (the adjoint,
//!   scaled by the least-squares fit of `c A^T y` to `y`), the rule the shipped `brain-mri`
//!   prior's card scales its training slices by (99.5th percentile to 1);
//! - CT: `[0, p99.5]` of the filtered back-projection (ramp filter);
//! - photos and other image-like measurements: the file's bit depth (`[0, 1]` in working
//!   units for 8/16-bit files), chosen by the caller, as is `--image-range LO,HI`.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, IxDyn};
use posterior_operators::forward::{ForwardOperator, Operator};
use posterior_operators::linear::{Composed, LinearOperator, Scaled};

use super::Problem;
use crate::error::{Error, Result};
use crate::spec::{Embedding, Physics};

/// The `q`-quantile (`q` in [0, 1], linear interpolation) of finite `values`; 0 when empty.
pub fn quantile(values: impl IntoIterator<Item = f32>, q: f64) -> f32 {
    let mut v: Vec<f32> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let t = (pos - lo as f64) as f32;
    v[lo] * (1.0 - t) + v[hi] * t
}

/// The percentile of the zero-filled or FBP magnitude that sets the top of the image range.
pub const RANGE_PERCENTILE: f64 = 0.995;

/// The image range `(lo, hi)` implied by a measurement of `physics` (see the module docs), for
/// the families whose units the measurement determines (`mri`, `ct`); `None` for the others,
/// whose range is the file's bit depth.
pub fn measured_range(physics: &Physics, y: ArrayViewD<f32>) -> Result<Option<(f32, f32)>> {
    let image = match physics.family.name {
        "mri" => {
            let op = physics.operator.as_linear().ok_or_else(|| {
                Error::Unsupported("mri measurements are linear; got a nonlinear model".into())
            })?;
            let x = crate::solve::scaled_adjoint(op, y)?;
            physics.extract(x.view(), false)
        }
        "ct" => crate::solve::fbp::fbp_spec(
            &physics.spec,
            &physics.context,
            y,
            crate::solve::fbp::Filter::parse("ramp")?,
        )?,
        _ => return Ok(None),
    };
    let hi = quantile(image.iter().map(|v| v.abs()), RANGE_PERCENTILE);
    if !(hi.is_finite() && hi > 0.0) {
        return Err(Error::NonFinite(format!(
            "the {} measurement's {} image is zero or not finite: cannot set an intensity range              from it; give --image-range LO,HI",
            physics.family.name,
            if physics.family.name == "ct" { "filtered back-projection" } else { "zero-filled" }
        )));
    }
    Ok(Some((0.0, hi)))
}

/// `x_img = scale x_prior + offset`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PriorUnits {
    pub scale: f32,
    pub offset: f32,
}

impl PriorUnits {
    /// The map sending `prior_range` onto `image_range` (both `(lo, hi)`, `lo < hi`).
    pub fn new(image_range: (f32, f32), prior_range: (f32, f32)) -> Result<PriorUnits> {
        let ok = |(lo, hi): (f32, f32)| lo.is_finite() && hi.is_finite() && lo < hi;
        if !ok(image_range) || !ok(prior_range) {
            return Err(Error::Invalid(format!(
                "intensity ranges must be finite intervals lo < hi; got image {image_range:?}, prior {prior_range:?}"
            )));
        }
        let scale = (image_range.1 - image_range.0) / (prior_range.1 - prior_range.0);
        Ok(PriorUnits {
            scale,
            offset: image_range.0 - scale * prior_range.0,
        })
    }
    /// Prior units to image units.
    pub fn to_image(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        x.mapv(|v| self.scale * v + self.offset)
    }
    /// Image units to prior units.
    pub fn to_prior(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        x.mapv(|v| (v - self.offset) / self.scale)
    }
}

/// The real-to-complex embedding `x -> (x, 0)` as a linear operator `(1, H, W) -> (2, H, W)`.
struct RealToComplex {
    domain: Vec<usize>,
    range: Vec<usize>,
}

impl LinearOperator for RealToComplex {
    fn name(&self) -> String {
        "real-to-complex".into()
    }
    fn domain_shape(&self) -> &[usize] {
        &self.domain
    }
    fn range_shape(&self) -> &[usize] {
        &self.range
    }
    fn apply(&self, x: ArrayViewD<f32>, mut y: ArrayViewMutD<f32>) {
        y.fill(0.0);
        y.index_axis_mut(Axis(0), 0)
            .assign(&x.index_axis(Axis(0), 0));
    }
    fn adjoint(&self, y: ArrayViewD<f32>, mut x: ArrayViewMutD<f32>) {
        x.index_axis_mut(Axis(0), 0)
            .assign(&y.index_axis(Axis(0), 0));
    }
    fn normal(&self, x: ArrayViewD<f32>, mut out: ArrayViewMutD<f32>) {
        out.assign(&x);
    }
    fn solve_regularized(&self, gamma: f32, rhs: ArrayViewD<f32>) -> Option<ArrayD<f32>> {
        Some(rhs.mapv(|v| v / (1.0 + gamma)))
    }
}

fn embedding_op(embedding: Embedding, domain: &[usize]) -> Result<Option<RealToComplex>> {
    match embedding {
        Embedding::Identity | Embedding::Complex => Ok(None),
        Embedding::RealToComplex => {
            if domain.len() != 3 || domain[0] != 2 {
                return Err(Error::Invalid(format!(
                    "a real-to-complex embedding needs a (2, H, W) operator domain, found {domain:?}"
                )));
            }
            Ok(Some(RealToComplex {
                domain: vec![1, domain[1], domain[2]],
                range: domain.to_vec(),
            }))
        }
    }
}

/// `x -> A(E(scale x + offset))` for a nonlinear `A`.
struct AffineInput {
    inner: Box<dyn ForwardOperator>,
    embed: Option<RealToComplex>,
    units: PriorUnits,
    domain: Vec<usize>,
}

impl AffineInput {
    fn inner_input(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        let xi = self.units.to_image(x);
        match &self.embed {
            None => xi,
            Some(e) => {
                let mut out = ArrayD::zeros(IxDyn(e.range_shape()));
                e.apply(xi.view(), out.view_mut());
                out
            }
        }
    }
}

impl ForwardOperator for AffineInput {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn domain_shape(&self) -> &[usize] {
        &self.domain
    }
    fn range_shape(&self) -> &[usize] {
        self.inner.range_shape()
    }
    fn forward(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        self.inner.forward(self.inner_input(x).view())
    }
    fn vjp(&self, x: ArrayViewD<f32>, cotangent: ArrayViewD<f32>) -> ArrayD<f32> {
        let g = self.inner.vjp(self.inner_input(x).view(), cotangent);
        let mut g = match &self.embed {
            None => g,
            Some(e) => {
                let mut out = ArrayD::zeros(IxDyn(&self.domain));
                e.adjoint(g.view(), out.view_mut());
                out
            }
        };
        g.mapv_inplace(|v| v * self.units.scale);
        g
    }
    fn restrict_to_measured(&self, y: ArrayViewMutD<f32>) {
        self.inner.restrict_to_measured(y)
    }
}

/// The measurement `y` of `operator` (through `embedding`) as a problem on prior-unit images.
pub fn problem_in_prior_units(
    operator: Operator,
    embedding: Embedding,
    y: ArrayD<f32>,
    sigma_y: f64,
    units: PriorUnits,
) -> Result<Problem> {
    let embed = embedding_op(embedding, operator.domain_shape())?;
    let domain = match &embed {
        Some(e) => e.domain_shape().to_vec(),
        None => operator.domain_shape().to_vec(),
    };
    match operator {
        Operator::Linear(a) => {
            let ae: Box<dyn LinearOperator> = match embed {
                Some(e) => Box::new(Composed::new(a, Box::new(e))?),
                None => a,
            };
            let mut shift = ArrayD::zeros(IxDyn(ae.range_shape()));
            let ones = ArrayD::from_elem(IxDyn(&domain), units.offset);
            ae.apply(ones.view(), shift.view_mut());
            let y = y - &shift;
            let op = Scaled::new(ae, units.scale)?;
            Problem::new(Operator::Linear(Box::new(op)), y, sigma_y)
        }
        Operator::Nonlinear(inner) => Problem::new(
            Operator::Nonlinear(Box::new(AffineInput {
                inner,
                embed,
                units,
                domain,
            })),
            y,
            sigma_y,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_operators::linear::{adjoint_test, LinearOperatorExt};

    #[test]
    fn units_map_ranges_onto_each_other() {
        let u = PriorUnits::new((0.0, 1.0), (-1.0, 1.0)).unwrap();
        assert_eq!((u.scale, u.offset), (0.5, 0.5));
        let x = ndarray::arr1(&[-1.0f32, 0.0, 1.0]).into_dyn();
        assert_eq!(u.to_image(x.view()).as_slice().unwrap(), &[0.0, 0.5, 1.0]);
        assert_eq!(u.to_prior(u.to_image(x.view()).view()), x);
        assert!(PriorUnits::new((1.0, 1.0), (-1.0, 1.0)).is_err());
    }

    #[test]
    fn restated_problems_predict_the_measurement_of_the_same_image() {
        // An MRI measurement of a real image in [0, 1]; the restated problem applied to the
        // same image in prior units [-1, 1] must reproduce y exactly (up to f32 rounding),
        // for the linear operator and for the same operator wrapped as nonlinear.
        let ctx = crate::spec::BuildContext::new(&[1, 16, 16], 3, ".");
        let build = || crate::spec::build("mri:coils=4,accel=2", &ctx).unwrap();
        let physics = build();
        let img = ArrayD::from_shape_fn(IxDyn(&[1, 16, 16]), |i| {
            ((i[1] * 3 + i[2]) as f32 * 0.1).sin() * 0.5 + 0.5
        });
        let noise = posterior_operators::noise::NoiseModel::None;
        let y = physics.measure(img.view(), &noise, 0).unwrap();
        let units = PriorUnits::new((0.0, 1.0), (-1.0, 1.0)).unwrap();
        let xp = units.to_prior(img.view());
        let p = problem_in_prior_units(physics.operator, physics.embedding, y.clone(), 0.0, units)
            .unwrap();
        let lin = p.linear().unwrap();
        assert_eq!(lin.domain_shape(), &[1, 16, 16]);
        let err = (lin.apply_to(xp.view()).unwrap() - p.y()).mapv(f32::abs);
        assert!(
            err.iter().all(|e| *e < 1e-5),
            "{}",
            err.iter().fold(0f32, |m, v| m.max(*v))
        );
        adjoint_test(lin, 1).verdict("restated mri", 1e-5).unwrap();
        // Nonlinear route: a linear operator seen through its VJP.
        struct AsNonlinear(Box<dyn LinearOperator>);
        impl ForwardOperator for AsNonlinear {
            fn name(&self) -> String {
                self.0.name()
            }
            fn domain_shape(&self) -> &[usize] {
                self.0.domain_shape()
            }
            fn range_shape(&self) -> &[usize] {
                self.0.range_shape()
            }
            fn forward(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
                self.0.apply_to(x).unwrap()
            }
            fn vjp(&self, _x: ArrayViewD<f32>, v: ArrayViewD<f32>) -> ArrayD<f32> {
                self.0.adjoint_to(v).unwrap()
            }
        }
        let physics = build();
        let Operator::Linear(a) = physics.operator else {
            panic!("mri is linear")
        };
        let q = problem_in_prior_units(
            Operator::Nonlinear(Box::new(AsNonlinear(a))),
            physics.embedding,
            y,
            0.0,
            units,
        )
        .unwrap();
        let f = q.operator().forward(xp.view()).unwrap();
        assert!((f - q.y()).iter().all(|e| e.abs() < 1e-5));
        // VJPs agree: scale E^T A^T v on both routes.
        let v = posterior_operators::linear::random_array(q.operator().range_shape(), 2, "v");
        let g1 = q.operator().vjp(xp.view(), v.view()).unwrap();
        let g2 = lin.adjoint_to(v.view()).unwrap();
        assert!((g1 - g2).iter().all(|e| e.abs() < 1e-5));
    }
}
