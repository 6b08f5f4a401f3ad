//! The `inpaint` operator family: a pixel mask `y = m ⊙ x`, the same for every channel.

use posterior_operators::inpaint::{self, Mask};
use posterior_operators::Operator;

use super::{BuildContext, Embedding, FamilyInfo, ParamInfo, Spec};
use crate::error::{Error, Result};

pub static INFO: FamilyInfo = FamilyInfo {
    name: "inpaint",
    summary: "inpainting: keeps the observed pixels and zeroes the missing ones (same mask for every channel)",
    params: &[
        ParamInfo {
            key: "mask",
            default: "box",
            help: "box (centred square hole, as DPS) | boxes (random square holes) | random (random pixels) \
                   | strokes (free-form brush strokes) | file",
        },
        ParamInfo {
            key: "size",
            default: "auto",
            help: "box: hole side in pixels, default half the smaller image side (128 at 256, DPS); \
                   boxes: side of each hole, default a quarter of it",
        },
        ParamInfo {
            key: "count",
            default: "4",
            help: "boxes: number of square holes (they may overlap)",
        },
        ParamInfo {
            key: "fraction",
            default: "0.7",
            help: "random: fraction of pixels MISSING, in [0, 1] (0.7 as DPS / RED-diff)",
        },
        ParamInfo {
            key: "coverage",
            default: "0.3",
            help: "strokes: fraction of pixels covered by strokes (missing), in [0, 0.9]",
        },
        ParamInfo {
            key: "path",
            default: "",
            help: "file: mask image (png/jpg/tif) or 2-D .npy of the image's size; nonzero (white) = observed, 0 (black) = missing",
        },
    ],
    examples: &[
        "inpaint:mask=box",
        "inpaint:mask=random,fraction=0.7",
        "inpaint:mask=boxes,count=5,size=12",
        "inpaint:mask=strokes,coverage=0.25",
        "inpaint:mask=file,path=mask.png",
    ],
    grayscale_only: false,
};

const MASKS: [&str; 5] = ["box", "boxes", "random", "strokes", "file"];

pub fn build(spec: &Spec, ctx: &BuildContext) -> Result<(Operator, Embedding)> {
    let (c, h, w) = ctx.chw()?;
    let kind = spec.choice("mask", &MASKS, "box")?;
    // Keys that do not apply to the chosen mask are errors, not silently ignored.
    for (key, owners) in [
        ("size", &["box", "boxes"][..]),
        ("count", &["boxes"][..]),
        ("fraction", &["random"][..]),
        ("coverage", &["strokes"][..]),
        ("path", &["file"][..]),
    ] {
        if !owners.contains(&kind.as_str()) && spec.raw(key).is_some() {
            return Err(Error::Spec(format!(
                "inpaint: key `{key}` does not apply to mask={kind} (it is for mask={})",
                owners.join(" or mask=")
            )));
        }
    }
    let side = h.min(w);
    let (mask, label) = match kind.as_str() {
        "box" => {
            let size: usize = spec.get("size", (side / 2).max(1))?;
            (inpaint::box_mask(h, w, size)?, format!("box {size}"))
        }
        "boxes" => {
            let size: usize = spec.get("size", (side / 4).max(1))?;
            let count: usize = spec.get("count", 4)?;
            if count > h * w {
                return Err(Error::Spec(format!(
                    "inpaint: `count={count}` boxes is more than the {h}x{w} image's pixels"
                )));
            }
            (
                inpaint::random_boxes(h, w, count, size, ctx.seed)?,
                format!("{count} boxes {size}, seed={}", ctx.seed),
            )
        }
        "random" => {
            let fraction: f64 = spec.get("fraction", 0.7)?;
            (
                inpaint::random_pixels(h, w, fraction, ctx.seed)?,
                format!("random, {fraction} missing, seed={}", ctx.seed),
            )
        }
        "strokes" => {
            let coverage: f64 = spec.get("coverage", 0.3)?;
            (
                inpaint::strokes(h, w, coverage, ctx.seed)?,
                format!("strokes, coverage={coverage}, seed={}", ctx.seed),
            )
        }
        _ => {
            let p: String = spec.require("path")?;
            let path = ctx.resolve(&p);
            let values = crate::io::read_gray(&path)?;
            if values.dim() != (h, w) {
                return Err(Error::file(
                    &path,
                    format!(
                        "mask is {}x{}, but the image is {h}x{w}: expected a mask of the image's size",
                        values.nrows(),
                        values.ncols()
                    ),
                ));
            }
            (values.mapv(|v| v != 0.0), format!("file {p}"))
        }
    };
    let op = Mask::new(&[c, h, w], mask, &label)?;
    Ok((Operator::Linear(Box::new(op)), Embedding::Identity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::build as build_spec;
    use posterior_operators::{adjoint_test, LinearOperatorExt};

    fn ctx(shape: &[usize], dir: &std::path::Path) -> BuildContext {
        BuildContext::new(shape, 11, dir)
    }

    fn write_mask(path: &std::path::Path, h: u32, w: u32) {
        // Left half observed (white), right half missing (black).
        image::GrayImage::from_fn(w, h, |x, _| image::Luma([if x < w / 2 { 255 } else { 0 }]))
            .save(path)
            .unwrap();
    }

    fn observed(spec: &str, c: &BuildContext) -> f64 {
        let p = build_spec(spec, c).unwrap_or_else(|e| panic!("{spec}: {e}"));
        let op = p.operator.as_linear().unwrap();
        let x = ndarray::ArrayD::from_elem(ndarray::IxDyn(op.domain_shape()), 1.0f32);
        let y = op.apply_to(x.view()).unwrap();
        y.sum() as f64 / y.len() as f64
    }

    #[test]
    fn examples_build_for_gray_and_colour_images() {
        let dir = tempfile::tempdir().unwrap();
        write_mask(&dir.path().join("mask.png"), 64, 64);
        for shape in [[1, 64, 64], [3, 64, 64]] {
            let c = ctx(&shape, dir.path());
            for ex in INFO.examples {
                let p = build_spec(ex, &c).unwrap_or_else(|e| panic!("{ex}: {e}"));
                let op = p.operator.as_linear().unwrap();
                assert_eq!(op.domain_shape(), &shape);
                assert_eq!(op.range_shape(), &shape);
                adjoint_test(op, 2).verdict(ex, 1e-5).unwrap();
            }
            // Defaults: the DPS centre box (a quarter of the pixels missing), 70% missing.
            assert_eq!(observed("inpaint", &c), 0.75);
            assert!((observed("inpaint:mask=random", &c) - 0.3).abs() < 1e-3);
            assert_eq!(observed("inpaint:mask=file,path=mask.png", &c), 0.5);
        }
    }

    #[test]
    fn bad_keys_and_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        write_mask(&dir.path().join("small.png"), 32, 64);
        let c = ctx(&[3, 64, 64], dir.path());
        for (spec, key) in [
            ("inpaint:mask=random,fraction=1.5", "fraction"),
            ("inpaint:mask=random,fraction=lots", "fraction"),
            ("inpaint:mask=box,size=100", "size"),
            ("inpaint:mask=boxes,count=0", "count"),
            ("inpaint:mask=strokes,coverage=0.99", "coverage"),
            ("inpaint:mask=box,fraction=0.5", "fraction"),
            ("inpaint:mask=holes", "mask"),
            ("inpaint:mask=file", "path"),
            ("inpaint:radius=3", "radius"),
        ] {
            let e = build_spec(spec, &c)
                .err()
                .unwrap_or_else(|| panic!("{spec} built"));
            assert!(e.to_string().contains(key), "{spec}: {e}");
        }
        let e = build_spec("inpaint:mask=file,path=small.png", &c)
            .err()
            .unwrap();
        assert!(e.to_string().contains("32x64"), "{e}");
    }
}
