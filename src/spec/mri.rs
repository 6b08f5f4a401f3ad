//! The `mri` operator family: Cartesian k-space undersampling, single-coil or multi-coil
//! SENSE, `mri:coils=8,accel=4,mask=uniform1d,acs=0.08`, or measured k-space with coil maps
//! estimated from it, `mri:maps=espirit`.
//!
//! # Images
//! The operator's domain is the complex image `(2, H, W)` (re, im). The image it is built
//! for decides how images enter:
//! - `(2, H, W)`: the complex image itself ([`Embedding::Complex`]; reconstructions come
//!   back as the magnitude, or the pair with `--complex`);
//! - `(1, H, W)`: a real image with zero phase ([`Embedding::RealToComplex`]), as
//!   `degrade` simulates from magnitude images. For measured k-space (which comes from a
//!   complex image) the phase is first estimated from the calibration region: the
//!   low-resolution SENSE image `x_acs = sum_c conj(S_c) F^H (ACS k-space)_c`, and its
//!   phase `e^{i phi}` folded into the maps (`S_c e^{i phi}`), so a magnitude image (a
//!   magnitude prior's) predicts the data. Where the true phase varies faster than the
//!   calibration region resolves, this costs accuracy; a 2-channel (re, im) prior needs no
//!   phase estimate.
//!
//! The measurement is centred k-space `(2, H, W)` (one simulated coil) or
//! `(coils, 2, H, W)`. Conventions (centred orthonormal FFT, DC at `(H/2, W/2)`,
//! phase-encode lines are columns) are in [`posterior_operators::mri`].
//!
//! # Coil maps (`maps=`)
//! - absent: synthetic smooth maps for `coils=N > 1` ([`posterior_operators::mri::coils`],
//!   `sum_c |S_c|^2 = 1`), none for one coil (simulation only);
//! - `espirit`: ESPIRiT from the data's calibration region, BART `ecalib -m1` settings
//!   (kernel 6, region up to 24 x 24, threshold 0.001, crop 0.8; `ecal_kernel`,
//!   `ecal_region`, `ecal_threshold`, `ecal_crop` change them); the default for measured
//!   k-space. It needs a fully sampled centre larger than the kernel (24 ACS lines usual);
//! - `walsh`: Walsh's adaptive combine from the calibration region's low-resolution images;
//! - `PATH`: a file, `.npy` complex64/complex128 `(coils, H, W)` (or `(H, W)` for one
//!   coil), or BART `.cfl`/`.hdr` `[H, W, 1, coils]` mapped to `(coils, H = d0, W = d1)`:
//!   `S[c, i, j] = bart[i, j, 0, c]`. Used as given (not normalised). `sens=PATH` is the
//!   older spelling of `maps=PATH`.
//!
//! # Measured k-space
//! With k-space in the build context ([`BuildContext::with_kspace`]: `reconstruct` of a
//! `.h5`, `.cfl` or k-space `.npy` without a sidecar), the coils, the size and the sampling
//! mask come from the data (the mask in the file, else its zero pattern): `accel`, `mask`
//! and `acs` do not apply and are errors, `coils` must agree with the data, and the maps
//! default to `espirit`.

use std::sync::Arc;

use ndarray::{Array2, Array3, ArrayD, Ix3};
use num_complex::Complex32;
use posterior_operators::fft::Fft2;
use posterior_operators::mri::{
    calibration_region, check_sensitivities, espirit, make_mask, walsh, CoilMaps, EspiritSettings,
    MaskKind, MultiCoilMri, SingleCoilMri, WalshSettings,
};
use posterior_operators::Operator;

use super::{BuildContext, Embedding, FamilyInfo, ParamInfo, Spec};
use crate::error::{Error, Result};
use crate::io::kspace::KSpace;

pub static INFO: FamilyInfo = FamilyInfo {
    name: "mri",
    summary: "Cartesian MRI: undersampled centred k-space of a complex image, single-coil or multi-coil SENSE; measured k-space with ESPIRiT/Walsh maps",
    params: &[
        ParamInfo {
            key: "coils",
            default: "1",
            help: "number of coils: 1 = single coil, >1 = synthetic smooth SENSE maps (sum |S|^2 = 1); measured k-space: must match the data",
        },
        ParamInfo {
            key: "accel",
            default: "4",
            help: "acceleration factor >= 1: about 1/accel of k-space is sampled, ACS included (simulation only)",
        },
        ParamInfo {
            key: "mask",
            default: "uniform1d",
            help: "sampling pattern: uniform1d | random1d (phase-encode columns) | gaussian2d | poisson (2-D variable density) (simulation only)",
        },
        ParamInfo {
            key: "acs",
            default: "0.08",
            help: "fully sampled centre as a fraction of the lines (per axis for 2-D masks), < 1/accel; estimated maps need >= 24 lines (simulation only)",
        },
        ParamInfo {
            key: "maps",
            default: "",
            help: "coil maps: espirit (default for measured k-space) | walsh | PATH (.npy (coils, H, W) complex, or BART .cfl [H, W, 1, coils]); `sens` is an alias",
        },
        ParamInfo {
            key: "ecal_kernel",
            default: "6",
            help: "ESPIRiT kernel side (BART ecalib -k); the calibration region must be larger",
        },
        ParamInfo {
            key: "ecal_region",
            default: "24",
            help: "ESPIRiT / Walsh: largest calibration region side (BART ecalib -r)",
        },
        ParamInfo {
            key: "ecal_threshold",
            default: "0.001",
            help: "ESPIRiT: singular values kept, s_i / s_0 > sqrt(threshold) (BART ecalib -t)",
        },
        ParamInfo {
            key: "ecal_crop",
            default: "0.8",
            help: "ESPIRiT: maps set to 0 where the eigenvalue is below this (BART ecalib -c)",
        },
    ],
    examples: &[
        "mri:accel=4",
        "mri:coils=8,accel=4,mask=uniform1d,acs=0.08",
        "mri:coils=8,accel=8,mask=poisson,acs=0.04",
        "mri:maps=maps.cfl,accel=6,mask=random1d",
    ],
    grayscale_only: true,
};

const MASKS: [&str; 4] = ["uniform1d", "random1d", "gaussian2d", "poisson"];

/// Where coil maps come from.
#[derive(Clone, Debug, PartialEq)]
pub enum MapSource {
    Espirit(EspiritSettings),
    Walsh(WalshSettings),
    File(String),
}

impl MapSource {
    /// `espirit`, `walsh` or a path.
    pub fn parse(text: &str, settings: EspiritSettings) -> MapSource {
        match text {
            "espirit" => MapSource::Espirit(settings),
            "walsh" => MapSource::Walsh(WalshSettings {
                region: settings.region,
                ..WalshSettings::default()
            }),
            path => MapSource::File(path.to_string()),
        }
    }
}

/// The `maps=` (or `sens=`) key with the `ecal_*` settings, `None` when absent.
fn map_source(spec: &Spec) -> Result<Option<MapSource>> {
    let d = EspiritSettings::default();
    let settings = EspiritSettings {
        kernel: spec.get("ecal_kernel", d.kernel)?,
        region: spec.get("ecal_region", d.region)?,
        threshold: spec.get("ecal_threshold", d.threshold)?,
        crop: spec.get("ecal_crop", d.crop)?,
    };
    settings.check()?;
    let maps: Option<String> = spec.opt("maps")?;
    let sens: Option<String> = spec.opt("sens")?;
    let text = match (maps, sens) {
        (Some(_), Some(_)) => {
            return Err(Error::Spec(
                "mri: give the coil maps once: `maps=` (`sens=` is its older name)".into(),
            ))
        }
        (a, b) => a.or(b),
    };
    Ok(text.map(|t| MapSource::parse(&t, settings)))
}

/// Estimates or reads coil maps `(coils, H, W)` for measured k-space.
pub fn coil_maps(kspace: &KSpace, source: &MapSource, ctx: &BuildContext) -> Result<CoilMaps> {
    match source {
        MapSource::Espirit(s) => Ok(espirit(kspace.data.view(), s)?),
        MapSource::Walsh(s) => Ok(walsh(kspace.data.view(), s)?),
        MapSource::File(p) => {
            let (coils, h, w) = kspace.data.dim();
            let path = ctx.resolve(p);
            let maps = read_maps(&path, h, w)?;
            if maps.dim().0 != coils {
                return Err(Error::file(
                    &path,
                    format!(
                        "holds maps for {} coil(s) but the k-space has {coils} coils: expected ({coils}, {h}, {w})",
                        maps.dim().0
                    ),
                ));
            }
            let region = calibration_region(&kspace.mask, usize::MAX)?;
            Ok(CoilMaps {
                maps,
                eigenvalues: Array2::ones((h, w)),
                region,
                kernels: 0,
            })
        }
    }
}

/// Reads coil maps from a file and checks them against an `h x w` image.
fn read_maps(path: &std::path::Path, h: usize, w: usize) -> Result<Array3<Complex32>> {
    let raw = crate::io::read_complex(path)?;
    let sens = sens_to_chw(raw, &crate::io::extension(path)).map_err(|m| Error::file(path, m))?;
    check_sensitivities(&sens, h, w).map_err(|e| Error::file(path, e))?;
    check_coil_maps(path, &sens)?;
    Ok(sens)
}

pub fn build(spec: &Spec, ctx: &BuildContext) -> Result<(Operator, Embedding)> {
    let (c, h, w) = ctx.chw()?;
    let embedding = match c {
        1 => Embedding::RealToComplex,
        2 => Embedding::Complex,
        _ => {
            return Err(Error::Invalid(format!(
                "mri: acts on single-channel (grayscale) images (1, H, W) or complex images (2, H, W) (re, im); got {c} channels in {:?}: convert the image to grayscale first",
                ctx.image_shape
            )))
        }
    };
    let coils: Option<usize> = spec.opt("coils")?;
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
    let source = map_source(spec)?;
    if let Some(kspace) = &ctx.kspace {
        return build_measured(spec, ctx, kspace, coils, source, embedding);
    }
    let accel: f64 = spec.get("accel", 4.0)?;
    let mask_name = spec.choice("mask", &MASKS, "uniform1d")?;
    let acs: f64 = spec.get("acs", 0.08)?;
    let kind = MaskKind::parse(&mask_name)?;
    let mask = make_mask(kind, h, w, accel, acs, ctx.seed)?;
    let op: Operator = match source {
        Some(MapSource::File(p)) => {
            let path = ctx.resolve(&p);
            let sens = read_maps(&path, h, w)?;
            let found = sens.dim().0;
            if let Some(n) = coils {
                if n != found {
                    return Err(Error::Spec(format!(
                        "mri: `coils={n}` disagrees with the {found} coil maps in `maps={p}`;                          leave `coils` out when giving maps"
                    )));
                }
            }
            Operator::Linear(Box::new(MultiCoilMri::new(sens, mask)?))
        }
        Some(_) => {
            return Err(Error::Spec(
                "mri: `maps=espirit` and `maps=walsh` estimate coil maps from measured k-space:                  give the k-space file (.h5, .cfl, .npy) to `posterior reconstruct`; to simulate,                  use `coils=N` (synthetic maps) or `maps=FILE`"
                    .into(),
            ))
        }
        None => match coils.unwrap_or(1) {
            1 => Operator::Linear(Box::new(SingleCoilMri::new(mask)?)),
            n => Operator::Linear(Box::new(MultiCoilMri::synthetic(n, mask)?)),
        },
    };
    Ok((op, embedding))
}

/// The operator for measured k-space: its mask, its coils, maps from `source` (ESPIRiT by
/// default); for a real `(1, H, W)` image the calibration phase folded into the maps.
fn build_measured(
    spec: &Spec,
    ctx: &BuildContext,
    kspace: &Arc<KSpace>,
    coils: Option<usize>,
    source: Option<MapSource>,
    embedding: Embedding,
) -> Result<(Operator, Embedding)> {
    let (_, h, w) = ctx.chw()?;
    for key in ["accel", "mask", "acs"] {
        if spec.raw(key).is_some() {
            return Err(Error::Spec(format!(
                "mri: `{key}` does not apply to measured k-space: the sampling mask comes from                  the data (its `mask` dataset, else its zero entries); leave `{key}` out"
            )));
        }
    }
    let (n, kh, kw) = kspace.data.dim();
    if (kh, kw) != (h, w) {
        return Err(Error::Shape(format!(
            "mri: the k-space is {kh} x {kw} but the image is {h} x {w}: expected equal sizes              (leave --image-shape out, or crop the k-space's centre first)"
        )));
    }
    if let Some(c) = coils {
        if c != n {
            return Err(Error::Spec(format!(
                "mri: `coils={c}` disagrees with the measured k-space's {n} coil(s); leave `coils` out"
            )));
        }
    }
    let source = source.unwrap_or(MapSource::Espirit(EspiritSettings::default()));
    let mut maps = coil_maps(kspace, &source, ctx)?.maps;
    let embedding = match embedding {
        Embedding::RealToComplex => {
            let phase = calibration_phase(kspace, &maps)?;
            for mut coil in maps.outer_iter_mut() {
                coil.zip_mut_with(&phase, |s, p| *s *= p);
            }
            Embedding::RealToComplex
        }
        e => e,
    };
    Ok((
        Operator::Linear(Box::new(MultiCoilMri::new(maps, kspace.mask.clone())?)),
        embedding,
    ))
}

/// `e^{i phi}` of the low-resolution SENSE image of the calibration region,
/// `sum_c conj(S_c) F^H (ACS k-space)_c` (1 where that image is zero).
pub fn calibration_phase(kspace: &KSpace, maps: &Array3<Complex32>) -> Result<Array2<Complex32>> {
    let (coils, h, w) = kspace.data.dim();
    let region = calibration_region(&kspace.mask, usize::MAX)?;
    let fft = Fft2::new(h, w);
    let mut acc = vec![Complex32::default(); h * w];
    for c in 0..coils {
        let mut buf: Vec<Complex32> = (0..h * w)
            .map(|p| {
                let (i, j) = (p / w, p % w);
                if region.contains(i, j) {
                    kspace.data[[c, i, j]]
                } else {
                    Complex32::default()
                }
            })
            .collect();
        fft.inverse_centered(&mut buf);
        for (p, (a, v)) in acc.iter_mut().zip(buf).enumerate() {
            *a += maps[[c, p / w, p % w]].conj() * v;
        }
    }
    Ok(Array2::from_shape_fn((h, w), |(i, j)| {
        let v = acc[i * w + j];
        let n = v.norm();
        if n > 0.0 {
            v / n
        } else {
            Complex32::new(1.0, 0.0)
        }
    }))
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
