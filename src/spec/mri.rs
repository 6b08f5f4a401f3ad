//! The `mri` operator family: Cartesian k-space undersampling, single-coil or multi-coil
//! SENSE, `mri:coils=8,accel=4,mask=uniform1d,acs=0.08`.
//!
//! The image `(1, H, W)` enters as a complex image with zero imaginary part
//! ([`Embedding::RealToComplex`]); the measurement is centred k-space `(2, H, W)` (one
//! coil) or `(coils, 2, H, W)`. Conventions (centred orthonormal FFT, DC at `(H/2, W/2)`,
//! phase-encode lines are columns) are in [`posterior_operators::mri`].
//!
//! Coil maps given with `sens=PATH`:
//! - `.npy` complex64/complex128 of shape `(coils, H, W)` (or `(H, W)` for one coil);
//! - BART `.cfl`/`.hdr` with BART's dimensions `[d0, d1, d2 = 1, coils]`, mapped to
//!   `(coils, H = d0, W = d1)`: `S[c, i, j] = bart[i, j, 0, c]`.
//!
//! Given maps are used as they are (not normalised); synthetic ones satisfy
//! `sum_c |S_c|^2 = 1` (see [`posterior_operators::mri::coils`]).

use ndarray::{Array3, ArrayD, Ix3};
use num_complex::Complex32;
use posterior_operators::mri::{
    check_sensitivities, make_mask, MaskKind, MultiCoilMri, SingleCoilMri,
};
use posterior_operators::Operator;

use super::{BuildContext, Embedding, FamilyInfo, ParamInfo, Spec};
use crate::error::{Error, Result};

pub static INFO: FamilyInfo = FamilyInfo {
    name: "mri",
    summary: "Cartesian MRI: undersampled centred k-space of a complex image, single-coil or multi-coil SENSE",
    params: &[
        ParamInfo {
            key: "coils",
            default: "1",
            help: "number of coils: 1 = single coil, >1 = synthetic smooth SENSE maps (sum |S|^2 = 1)",
        },
        ParamInfo {
            key: "accel",
            default: "4",
            help: "acceleration factor >= 1: about 1/accel of k-space is sampled, ACS included",
        },
        ParamInfo {
            key: "mask",
            default: "uniform1d",
            help: "sampling pattern: uniform1d | random1d (phase-encode columns) | gaussian2d | poisson (2-D variable density)",
        },
        ParamInfo {
            key: "acs",
            default: "0.08",
            help: "fully sampled centre as a fraction of the lines (per axis for 2-D masks), < 1/accel",
        },
        ParamInfo {
            key: "sens",
            default: "",
            help: "coil maps file: .npy (coils, H, W) complex, or BART .cfl [H, W, 1, coils]; overrides coils",
        },
    ],
    examples: &[
        "mri:accel=4",
        "mri:coils=8,accel=4,mask=uniform1d,acs=0.08",
        "mri:coils=8,accel=8,mask=poisson,acs=0.04",
        "mri:sens=maps.cfl,accel=6,mask=random1d",
    ],
    grayscale_only: true,
};

const MASKS: [&str; 4] = ["uniform1d", "random1d", "gaussian2d", "poisson"];

pub fn build(spec: &Spec, ctx: &BuildContext) -> Result<(Operator, Embedding)> {
    let (c, h, w) = ctx.chw()?;
    let coils: Option<usize> = spec.opt("coils")?;
    let accel: f64 = spec.get("accel", 4.0)?;
    let mask_name = spec.choice("mask", &MASKS, "uniform1d")?;
    let acs: f64 = spec.get("acs", 0.08)?;
    let sens_path: Option<String> = spec.opt("sens")?;
    if c != 1 {
        return Err(Error::Invalid(format!(
            "mri: acts on single-channel (grayscale) images (1, H, W); got {c} channels in {:?}: \
             convert the image to grayscale first",
            ctx.image_shape
        )));
    }
    if coils == Some(0) {
        return Err(Error::Spec(
            "mri: `coils=0` is not allowed: expected at least 1 coil".into(),
        ));
    }
    if let Some(n) = coils {
        crate::limits::check_elements(
            &format!("mri: the k-space of `coils={n}` (coils, 2, H, W)"),
            &[n, 2, h, w],
        )?;
    }
    let kind = MaskKind::parse(&mask_name)?;
    let mask = make_mask(kind, h, w, accel, acs, ctx.seed)?;
    let op: Operator = match sens_path {
        Some(p) => {
            let path = ctx.resolve(&p);
            let raw = crate::io::read_complex(&path)?;
            let sens = sens_to_chw(raw, &crate::io::extension(&path))
                .map_err(|m| Error::file(&path, m))?;
            check_sensitivities(&sens, h, w).map_err(|e| Error::file(&path, e))?;
            check_coil_maps(&path, &sens)?;
            let found = sens.dim().0;
            if let Some(n) = coils {
                if n != found {
                    return Err(Error::Spec(format!(
                        "mri: `coils={n}` disagrees with the {found} coil maps in `sens={p}`; \
                         leave `coils` out when giving maps"
                    )));
                }
            }
            Operator::Linear(Box::new(MultiCoilMri::new(sens, mask)?))
        }
        None => match coils.unwrap_or(1) {
            1 => Operator::Linear(Box::new(SingleCoilMri::new(mask)?)),
            n => Operator::Linear(Box::new(MultiCoilMri::synthetic(n, mask)?)),
        },
    };
    Ok((op, Embedding::RealToComplex))
}

/// Refuses coil maps with non-finite or huge values, and maps that are zero everywhere
/// (every k-space sample would be zero and nothing could be reconstructed).
fn check_coil_maps(path: &std::path::Path, sens: &Array3<Complex32>) -> Result<()> {
    crate::limits::check_magnitude(
        &format!("coil maps {}", path.display()),
        sens.iter().flat_map(|c| [c.re, c.im]),
    )?;
    if sens.iter().all(|c| c.re == 0.0 && c.im == 0.0) {
        return Err(Error::file(
            path,
            "the coil maps are zero everywhere: expected coil sensitivities (e.g. from ESPIRiT or `bart ecalib`)",
        ));
    }
    Ok(())
}

/// Brings coil maps read from a file to `(coils, H, W)`: `.cfl` arrays come in BART's order
/// `[H, W, 1, coils]`; `.npy` arrays are `(coils, H, W)`, or `(H, W)` for one coil.
fn sens_to_chw(
    raw: ArrayD<Complex32>,
    ext: &str,
) -> std::result::Result<Array3<Complex32>, String> {
    let shape = raw.shape().to_vec();
    if ext == "cfl" || ext == "hdr" {
        if shape.len() != 4 || shape[2] != 1 {
            return Err(format!(
                "coil maps in BART order must have dimensions [H, W, 1, coils]; got {shape:?}"
            ));
        }
        let (h, w, n) = (shape[0], shape[1], shape[3]);
        return Ok(Array3::from_shape_fn((n, h, w), |(c, i, j)| {
            raw[[i, j, 0, c]]
        }));
    }
    match shape.len() {
        2 => Ok(raw
            .insert_axis(ndarray::Axis(0))
            .into_dimensionality::<Ix3>()
            .map_err(|e| e.to_string())?),
        3 => raw.into_dimensionality::<Ix3>().map_err(|e| e.to_string()),
        _ => Err(format!(
            "coil maps must be a complex array of shape (coils, H, W); got {shape:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::build as build_spec;
    use posterior_operators::mri::synthetic_sensitivities;
    use posterior_operators::{adjoint_test, LinearOperatorExt};

    fn ctx(shape: &[usize], dir: &std::path::Path) -> BuildContext {
        BuildContext::new(shape, 5, dir)
    }

    #[test]
    fn examples_build_for_a_64x64_image() {
        let dir = tempfile::tempdir().unwrap();
        // The `sens=maps.cfl` example needs the file.
        let maps = synthetic_sensitivities(4, 64, 64).unwrap();
        let bart = ndarray::Array4::from_shape_fn((64, 64, 1, 4), |(i, j, _, c)| maps[[c, i, j]]);
        crate::io::write_cfl(&dir.path().join("maps.cfl"), bart.into_dyn().view()).unwrap();
        let c = ctx(&[1, 64, 64], dir.path());
        for ex in INFO.examples {
            let phys = build_spec(ex, &c).unwrap_or_else(|e| panic!("{ex}: {e}"));
            assert_eq!(phys.embedding, Embedding::RealToComplex);
            assert_eq!(phys.operator.domain_shape(), &[2, 64, 64]);
            let op = phys.operator.as_linear().unwrap();
            adjoint_test(op, 1).verdict(ex, 1e-5).unwrap();
        }
        let phys = build_spec("mri", &c).unwrap();
        assert_eq!(phys.operator.range_shape(), &[2, 64, 64]);
        let phys = build_spec("mri:coils=8,accel=4,mask=uniform1d,acs=0.08", &c).unwrap();
        assert_eq!(phys.operator.range_shape(), &[8, 2, 64, 64]);
        let phys = build_spec("mri:sens=maps.cfl", &c).unwrap();
        assert_eq!(phys.operator.range_shape(), &[4, 2, 64, 64]);
    }

    #[test]
    fn cfl_maps_are_read_in_bart_order() {
        // A map that is 1 at one pixel of one coil: check where it lands.
        let dir = tempfile::tempdir().unwrap();
        let (h, w, n) = (6, 5, 2);
        let mut bart = ndarray::Array4::<Complex32>::zeros((h, w, 1, n));
        bart[[4, 1, 0, 1]] = Complex32::new(1.0, 0.0);
        let raw = bart.into_dyn();
        let s = sens_to_chw(raw.clone(), "cfl").unwrap();
        assert_eq!(s.dim(), (n, h, w));
        assert_eq!(s[[1, 4, 1]], Complex32::new(1.0, 0.0));
        assert_eq!(s.iter().filter(|v| v.norm() > 0.0).count(), 1);
        crate::io::write_cfl(&dir.path().join("m.cfl"), raw.view()).unwrap();
        let phys = build_spec("mri:sens=m.cfl,accel=1", &ctx(&[1, h, w], dir.path())).unwrap();
        // Only pixel (4, 1) is seen, by coil 1: A^T A x is x there and 0 elsewhere.
        let x = ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[2, h, w]));
        let n = phys
            .operator
            .as_linear()
            .unwrap()
            .normal_to(x.view())
            .unwrap();
        assert!((n[[0, 4, 1]] - 1.0).abs() < 1e-5);
        assert!((n.iter().map(|v| v.abs()).sum::<f32>() - 2.0).abs() < 1e-4);
    }

    #[test]
    fn npy_maps_of_the_wrong_shape_are_errors_naming_both_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let maps = synthetic_sensitivities(3, 32, 48).unwrap();
        ndarray_npy::write_npy(dir.path().join("s.npy"), &maps).unwrap();
        let ok = build_spec("mri:sens=s.npy", &ctx(&[1, 32, 48], dir.path())).unwrap();
        assert_eq!(ok.operator.range_shape(), &[3, 2, 32, 48]);
        let e = build_spec("mri:sens=s.npy", &ctx(&[1, 64, 64], dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("(3, 32, 48)") && e.contains("64 x 64"), "{e}");
        let e = build_spec("mri:sens=s.npy,coils=4", &ctx(&[1, 32, 48], dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("coils"), "{e}");
        let e = build_spec("mri:sens=missing.npy", &ctx(&[1, 32, 48], dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing.npy"), "{e}");
    }

    #[test]
    fn bad_keys_and_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(&[1, 64, 64], dir.path());
        let cases = [
            ("mri:accel=0.5", "accel"),
            ("mri:accel=fast", "accel"),
            ("mri:mask=spiral", "mask"),
            ("mri:acs=1.5", "acs"),
            ("mri:acs=0.5,accel=8", "acs"),
            ("mri:coils=0", "coils"),
            ("mri:coils=-2", "coils"),
            ("mri:colis=8", "colis"),
        ];
        for (spec, key) in cases {
            let e = build_spec(spec, &c).err().map(|e| e.to_string());
            let e = e.unwrap_or_else(|| panic!("{spec} should fail"));
            assert!(e.contains(key), "{spec}: `{e}` does not name `{key}`");
        }
        let e = build_spec("mri", &ctx(&[3, 64, 64], dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("grayscale") && e.contains("3 channels"), "{e}");
    }

    #[test]
    fn same_seed_same_operator() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(&[1, 32, 32], dir.path());
        let x = ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[2, 32, 32]));
        let a = build_spec("mri:mask=poisson", &c).unwrap();
        let b = build_spec("mri:mask=poisson", &c).unwrap();
        let ya = a.operator.as_linear().unwrap().apply_to(x.view()).unwrap();
        let yb = b.operator.as_linear().unwrap().apply_to(x.view()).unwrap();
        assert_eq!(ya, yb);
    }
}
