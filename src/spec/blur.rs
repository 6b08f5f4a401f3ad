//! The `blur` operator family: convolution of every channel with one normalised kernel
//! (Gaussian, uniform, random camera shake, or a kernel file), with a periodic (`circular`,
//! the default), `reflect` or `valid` boundary ([`posterior_operators::blur::Boundary`]).
//!
//! A photo blurred by a camera is not periodic: `boundary=reflect` models the scene as
//! continuing symmetrically past the border, `boundary=valid` reconstructs a scene larger
//! than the photo by the kernel size minus one (the recorded pixels are those whose whole
//! footprint lies in the scene).

use ndarray::Array2;
use posterior_operators::blur::{self, Boundary};
use posterior_operators::Operator;

use super::{BuildContext, Embedding, FamilyInfo, ParamInfo, Spec};
use crate::error::{Error, Result};

pub static INFO: FamilyInfo = FamilyInfo {
    name: "blur",
    summary: "blur: circular convolution of every channel with one kernel normalised to sum 1 \
              (periodic boundary, kernel centred on its middle pixel)",
    params: &[
        ParamInfo {
            key: "kernel",
            default: "gaussian",
            help: "gaussian | uniform (box) | motion (seeded random camera shake, as DPS) | file",
        },
        ParamInfo {
            key: "sigma",
            default: "3.0",
            help: "gaussian: standard deviation in pixels (DPS uses 3.0)",
        },
        ParamInfo {
            key: "size",
            default: "auto",
            help: "kernel side in pixels, odd, at most the image: gaussian 61 (DPS), uniform 9, \
                   motion 61 at 256 px scaled with the image; defaults shrink to fit the image",
        },
        ParamInfo {
            key: "intensity",
            default: "0.5",
            help: "motion: shake intensity in [0, 1], longer and more tangled paths when larger (DPS uses 0.5)",
        },
        ParamInfo {
            key: "path",
            default: "",
            help: "file: kernel image (png/jpg/tif, gray) or 2-D .npy; non-negative, normalised, centred on pixel (kh/2, kw/2)",
        },
        ParamInfo {
            key: "boundary",
            default: "circular",
            help: "circular (periodic, FFT) | reflect (symmetric extension, same size) | valid (measurement smaller by kernel - 1)",
        },
    ],
    examples: &[
        "blur:kernel=gaussian,sigma=3",
        "blur:kernel=motion,intensity=0.5",
        "blur:kernel=uniform,size=9",
        "blur:kernel=file,path=kernel.png",
        "blur:kernel=gaussian,sigma=2,boundary=reflect",
        "blur:kernel=uniform,size=5,boundary=valid",
    ],
    grayscale_only: false,
};

const KERNELS: [&str; 4] = ["gaussian", "uniform", "motion", "file"];

/// The largest odd number <= n (n >= 1).
fn largest_odd_at_most(n: usize) -> usize {
    if n % 2 == 1 {
        n
    } else {
        n.saturating_sub(1).max(1)
    }
}

/// Rejects a key given for a kernel it does not apply to.
fn reject(spec: &Spec, key: &str, kernel: &str) -> Result<()> {
    if spec.raw(key).is_some() {
        return Err(Error::Spec(format!(
            "blur: key `{key}` does not apply to kernel={kernel}"
        )));
    }
    Ok(())
}

pub fn build(spec: &Spec, ctx: &BuildContext) -> Result<(Operator, Embedding)> {
    let (c, h, w) = ctx.chw()?;
    let boundary = Boundary::parse(&spec.choice(
        "boundary",
        &["circular", "reflect", "valid"],
        "circular",
    )?)?;
    let (k, label, path) = kernel(spec, ctx)?;
    let op = blur::with_boundary(&[c, h, w], k, &label, boundary).map_err(|e| match path {
        Some(p) => Error::file(p, format!("not a usable blur kernel: {e}")),
        None => e.into(),
    })?;
    Ok((Operator::Linear(op), Embedding::Identity))
}

/// The image shape `(C, H, W)` whose blur has `measured` shape `(C, h, w)`: the same for
/// circular and reflect boundaries, larger by the kernel size minus one for `valid`.
pub fn image_shape(spec: &Spec, measured: &[usize], ctx: &BuildContext) -> Result<Vec<usize>> {
    let boundary = Boundary::parse(&spec.choice(
        "boundary",
        &["circular", "reflect", "valid"],
        "circular",
    )?)?;
    if boundary != Boundary::Valid {
        return Ok(measured.to_vec());
    }
    // Default kernel sizes depend on the image size: size the kernel for the measurement,
    // then once more for the image that gives.
    let mut shape = measured.to_vec();
    for _ in 0..2 {
        let ctx = BuildContext::new(&shape, ctx.seed, ctx.base_dir.clone());
        let (k, _, _) = kernel(spec, &ctx)?;
        shape = boundary.image_shape(measured, k.dim());
    }
    Ok(shape)
}

/// The kernel a spec describes for the image of `ctx`, its label, and its file if any.
fn kernel(
    spec: &Spec,
    ctx: &BuildContext,
) -> Result<(Array2<f32>, String, Option<std::path::PathBuf>)> {
    let (_, h, w) = ctx.chw()?;
    let kernel = spec.choice("kernel", &KERNELS, "gaussian")?;
    let fit = largest_odd_at_most(h.min(w));
    let size: Option<usize> = match kernel.as_str() {
        "file" => {
            reject(spec, "size", "file")?;
            None
        }
        _ => spec.opt("size")?,
    };
    if let Some(s) = size {
        if s == 0 || s % 2 == 0 {
            return Err(Error::Spec(format!(
                "blur: `size={s}` is not allowed: expected an odd kernel side >= 1"
            )));
        }
        if s > h.min(w) {
            return Err(Error::Spec(format!(
                "blur: `size={s}` is larger than the {h}x{w} image: expected at most {fit}"
            )));
        }
    }
    for key in ["sigma", "intensity", "path"] {
        let applies = matches!(
            (key, kernel.as_str()),
            ("sigma", "gaussian") | ("intensity", "motion") | ("path", "file")
        );
        if !applies {
            reject(spec, key, &kernel)?;
        }
    }
    Ok(match kernel.as_str() {
        "gaussian" => {
            let sigma: f64 = spec.get("sigma", 3.0)?;
            let size = size.unwrap_or(61.min(fit));
            (
                blur::gaussian(sigma, size)?,
                format!("gaussian, sigma={sigma}"),
                None,
            )
        }
        "uniform" => {
            let size = size.unwrap_or(9.min(fit));
            (blur::uniform(size)?, "uniform".to_string(), None)
        }
        "motion" => {
            let intensity: f64 = spec.get("intensity", 0.5)?;
            // 61 pixels at 256 (DPS), scaled with the image, odd, at least 3.
            let scaled = (61.0 * h.min(w) as f64 / 256.0).round() as usize;
            let size = size.unwrap_or(largest_odd_at_most(scaled.max(3)).min(fit));
            (
                blur::motion(size, intensity, ctx.seed)?,
                format!("motion, intensity={intensity}, seed={}", ctx.seed),
                None,
            )
        }
        _ => {
            let p: String = spec.require("path")?;
            let path = ctx.resolve(&p);
            (
                crate::io::read_gray(&path)?,
                format!("file {p}"),
                Some(path),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::build as build_spec;
    use posterior_operators::{adjoint_test, LinearOperatorExt};

    fn ctx(shape: &[usize], dir: &std::path::Path) -> BuildContext {
        BuildContext::new(shape, 3, dir)
    }

    fn write_png(path: &std::path::Path, h: u32, w: u32, f: impl Fn(u32, u32) -> u8) {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(y, x)]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn examples_build_for_gray_and_colour_images() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("kernel.png"), 5, 7, |i, j| {
            (i * 7 + j * 3) as u8 * 4
        });
        for shape in [[1, 64, 64], [3, 64, 64]] {
            for ex in INFO.examples {
                let p = build_spec(ex, &ctx(&shape, dir.path()))
                    .unwrap_or_else(|e| panic!("{ex}: {e}"));
                let op = p.operator.as_linear().unwrap();
                assert_eq!(op.domain_shape(), &shape);
                if ex.contains("valid") {
                    // A 5x5 kernel: the measurement is 4 rows and columns smaller.
                    assert_eq!(op.range_shape(), &[shape[0], 60, 60]);
                } else {
                    assert_eq!(op.range_shape(), &shape);
                }
                adjoint_test(op, 1).verdict(ex, 1e-5).unwrap();
                // A constant image stays constant (normalised kernel).
                let x = ndarray::ArrayD::from_elem(ndarray::IxDyn(&shape), 0.5f32);
                let y = op.apply_to(x.view()).unwrap();
                assert!(y.iter().all(|&v| (v - 0.5).abs() < 1e-5), "{ex}");
            }
        }
    }

    #[test]
    fn defaults_follow_dps_and_fit_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let name = |spec: &str, shape: &[usize]| {
            build_spec(spec, &ctx(shape, dir.path()))
                .unwrap()
                .operator
                .name()
        };
        assert_eq!(
            name("blur", &[3, 256, 256]),
            "blur(gaussian, sigma=3, 61x61)"
        );
        assert_eq!(name("blur", &[1, 32, 40]), "blur(gaussian, sigma=3, 31x31)");
        assert!(name("blur:kernel=motion", &[1, 256, 256]).ends_with("61x61)"));
        assert!(name("blur:kernel=motion", &[1, 64, 64]).ends_with("15x15)"));
        assert!(name("blur:kernel=uniform", &[1, 64, 64]).ends_with("9x9)"));
    }

    #[test]
    fn bad_keys_and_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("black.png"), 3, 3, |_, _| 0);
        let c = ctx(&[1, 64, 64], dir.path());
        for (spec, key) in [
            ("blur:kernel=gaussian,sigma=-1", "sigma"),
            ("blur:kernel=gaussian,sigma=abc", "sigma"),
            ("blur:kernel=gaussian,size=8", "size"),
            ("blur:kernel=gaussian,size=65", "size"),
            ("blur:kernel=motion,intensity=2", "intensity"),
            ("blur:kernel=uniform,sigma=2", "sigma"),
            ("blur:kernel=blurry", "kernel"),
            ("blur:kernel=file", "path"),
            ("blur:kernel=file,path=kernel.png,size=5", "size"),
            ("blur:colour=red", "colour"),
        ] {
            let e = build_spec(spec, &c)
                .err()
                .unwrap_or_else(|| panic!("{spec} built"));
            assert!(e.to_string().contains(key), "{spec}: {e}");
        }
        // A missing file and an all-zero kernel are errors naming the file.
        for f in ["missing.png", "black.png"] {
            let e = build_spec(&format!("blur:kernel=file,path={f}"), &c)
                .err()
                .unwrap();
            assert!(e.to_string().contains(f), "{e}");
        }
    }
}
