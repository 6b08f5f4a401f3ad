//! The `phase` operator family: Fourier phase retrieval `y = |F P x|` (nonlinear), and the
//! entry point of its classical solver (HIO) for a built [`Physics`].

use ndarray::{ArrayD, ArrayViewD};
use posterior_operators::phase::{self as pr, FourierPhaseRetrieval};
use posterior_operators::Operator;

use super::{BuildContext, Embedding, FamilyInfo, ParamInfo, Physics, Spec};
use crate::error::{Error, Result};

pub static INFO: FamilyInfo = FamilyInfo {
    name: "phase",
    summary: "Fourier phase retrieval (nonlinear): magnitudes |F P x| of the orthonormal, centred \
              2-D DFT of the image zero-padded (centred) into an oversampled grid; \
              (1, H, W) -> (1, round(s H), round(s W))",
    params: &[ParamInfo {
        key: "oversampling",
        default: "2",
        help: "padded grid / image size per axis, in [1, 16]: 2 pads H/2 per side (2H x 2W, \
               unique up to trivial ambiguities); 1.5 is DPS's 64-pixel padding of 256 images",
    }],
    examples: &["phase", "phase:oversampling=2", "phase:oversampling=1.5"],
    grayscale_only: true,
};

pub fn build(spec: &Spec, ctx: &BuildContext) -> Result<(Operator, Embedding)> {
    let (c, h, w) = ctx.chw()?;
    let oversampling: f32 = spec.get("oversampling", 2.0)?;
    if c != 1 {
        return Err(Error::Invalid(format!(
            "phase: needs a single-channel image (1, H, W); got {c} channels (convert to \
             grayscale first)"
        )));
    }
    if oversampling.is_finite() && oversampling > 0.0 {
        let padded = |n: usize| (n as f64 * oversampling as f64).ceil() as usize;
        crate::limits::check_elements(
            &format!("phase: the oversampled grid (oversampling={oversampling})"),
            &[1, padded(h), padded(w)],
        )?;
    }
    let op = FourierPhaseRetrieval::new(&[1, h, w], oversampling)?;
    Ok((Operator::Nonlinear(Box::new(op)), Embedding::Identity))
}

/// The phase-retrieval operator behind a built `phase` [`Physics`], rebuilt from its
/// domain and range shapes (an error for any other family).
pub fn operator_of(physics: &Physics) -> Result<FourierPhaseRetrieval> {
    if physics.family.name != INFO.name {
        return Err(Error::Invalid(format!(
            "HIO applies to phase retrieval only; the operator is {}",
            physics.operator.name()
        )));
    }
    let (d, r) = (
        physics.operator.domain_shape(),
        physics.operator.range_shape(),
    );
    match r {
        [1, ho, wo] => Ok(FourierPhaseRetrieval::with_padded_shape(d, *ho, *wo)?),
        _ => Err(Error::Invalid(format!(
            "phase: measurement shape {r:?} is not (1, Ho, Wo)"
        ))),
    }
}

/// Fienup's HIO + error reduction ([`pr::hio`]: support and nonnegativity, beta 0.9,
/// `iters` HIO iterations, 50 ER, up to 4 random starts) on a `phase` problem.
pub fn hio(physics: &Physics, y: ArrayViewD<f32>, iters: usize, seed: u64) -> Result<ArrayD<f32>> {
    let op = operator_of(physics)?;
    Ok(pr::hio(&op, y, iters, seed)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::build as build_spec;
    use ndarray::IxDyn;

    fn ctx(shape: &[usize]) -> BuildContext {
        BuildContext::new(shape, 0, std::env::temp_dir())
    }

    #[test]
    fn examples_build_and_shapes_follow_oversampling() {
        for (ex, range) in [
            ("phase", [1, 64, 48]),
            ("phase:oversampling=2", [1, 64, 48]),
            ("phase:oversampling=1.5", [1, 48, 36]),
        ] {
            assert!(INFO.examples.contains(&ex));
            let p = build_spec(ex, &ctx(&[1, 32, 24])).unwrap_or_else(|e| panic!("{ex}: {e}"));
            assert!(p.operator.as_linear().is_none());
            assert_eq!(p.operator.domain_shape(), &[1, 32, 24]);
            assert_eq!(p.operator.range_shape(), &range);
            assert_eq!(p.embedding, Embedding::Identity);
            let x = ArrayD::from_elem(IxDyn(&[1, 32, 24]), 1.0f32);
            let y = p.operator.forward(x.view()).unwrap();
            // Parseval: ||y|| = ||x||.
            let ny: f64 = y.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            assert!((ny - (32.0f64 * 24.0).sqrt()).abs() < 1e-3);
        }
        assert!(INFO.grayscale_only);
    }

    #[test]
    fn bad_specs_name_the_problem() {
        for (spec, key) in [
            ("phase:oversampling=0.5", "oversampling"),
            ("phase:oversampling=two", "oversampling"),
            ("phase:oversampling=20", "oversampling"),
            ("phase:pad=3", "pad"),
        ] {
            let e = build_spec(spec, &ctx(&[1, 16, 16]))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(key), "{spec}: {e}");
        }
        let e = build_spec("phase", &ctx(&[3, 16, 16]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("single-channel"), "{e}");
    }

    #[test]
    fn hio_runs_on_a_built_problem_and_rejects_other_families() {
        let p = build_spec("phase:oversampling=1.5", &ctx(&[1, 11, 13])).unwrap();
        let truth = ArrayD::from_shape_fn(IxDyn(&[1, 11, 13]), |ix| {
            let (i, j) = (ix[1] as f32 / 11.0, ix[2] as f32 / 13.0);
            if i + j < 1.0 {
                0.5 + i
            } else {
                0.0
            }
        });
        let y = p.operator.forward(truth.view()).unwrap();
        let est = hio(&p, y.view(), 300, 1).unwrap();
        assert_eq!(est.shape(), &[1, 11, 13]);
        let op = operator_of(&p).unwrap();
        assert_eq!(op.padded_shape(), (17, 20));
        // Residual small means HIO ran on the right operator (same grid and placement).
        assert!(pr::residual(&op, est.view(), y.view()).unwrap() < 1e-2);
        let wrong = ArrayD::zeros(IxDyn(&[1, 5, 5]));
        assert!(hio(&p, wrong.view(), 10, 0).is_err());
        if let Ok(other) = build_spec("sr:factor=2", &ctx(&[1, 16, 16])) {
            let e = hio(&other, y.view(), 10, 0).err().unwrap().to_string();
            assert!(e.contains("phase retrieval only"), "{e}");
        }
    }
}
