//! The `sr` operator family: downsampling by an integer factor (super-resolution).

use posterior_operators::sr::{Downsample, Method};
use posterior_operators::Operator;

use super::{BuildContext, Embedding, FamilyInfo, ParamInfo, Spec};
use crate::error::Result;

pub static INFO: FamilyInfo = FamilyInfo {
    name: "sr",
    summary: "super-resolution: downsampling (C, H, W) -> (C, H/f, W/f) by bicubic (as Pillow / DPS) \
              or block averaging",
    params: &[
        ParamInfo {
            key: "factor",
            default: "4",
            help: "integer downsampling factor that divides the image's height and width (2, 4, 8 ...)",
        },
        ParamInfo {
            key: "method",
            default: "bicubic",
            help: "bicubic (anti-aliased Keys a=-0.5, Pillow's BICUBIC resize, edge taps renormalised) \
                   | avgpool (mean of each f x f block)",
        },
    ],
    examples: &["sr:factor=4", "sr:factor=2,method=avgpool", "sr:factor=8,method=bicubic"],
    grayscale_only: false,
};

pub fn build(spec: &Spec, ctx: &BuildContext) -> Result<(Operator, Embedding)> {
    let (c, h, w) = ctx.chw()?;
    let factor: usize = spec.get("factor", 4)?;
    let method = match spec
        .choice("method", &["bicubic", "avgpool"], "bicubic")?
        .as_str()
    {
        "avgpool" => Method::AvgPool,
        _ => Method::Bicubic,
    };
    let op = Downsample::new(&[c, h, w], factor, method)?;
    Ok((Operator::Linear(Box::new(op)), Embedding::Identity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::build as build_spec;
    use posterior_operators::adjoint_test;

    fn ctx(shape: &[usize]) -> BuildContext {
        BuildContext::new(shape, 0, std::env::temp_dir())
    }

    #[test]
    fn examples_build_for_gray_and_colour_images() {
        for shape in [[1, 64, 64], [3, 64, 64]] {
            for ex in INFO.examples {
                let p = build_spec(ex, &ctx(&shape)).unwrap_or_else(|e| panic!("{ex}: {e}"));
                let op = p.operator.as_linear().unwrap();
                let f = op.domain_shape()[1] / op.range_shape()[1];
                assert_eq!(op.domain_shape(), &shape);
                assert_eq!(op.range_shape(), &[shape[0], 64 / f, 64 / f]);
                adjoint_test(op, 3).verdict(ex, 1e-5).unwrap();
            }
        }
        let p = build_spec("sr", &ctx(&[3, 64, 64])).unwrap();
        assert_eq!(p.operator.name(), "sr(bicubic, x4)");
    }

    #[test]
    fn bad_keys_and_values_name_the_key() {
        for (spec, key) in [
            ("sr:factor=3", "factor"),
            ("sr:factor=0", "factor"),
            ("sr:factor=two", "factor"),
            ("sr:method=lanczos", "method"),
            ("sr:scale=4", "scale"),
        ] {
            let e = build_spec(spec, &ctx(&[1, 64, 64]))
                .err()
                .unwrap_or_else(|| panic!("{spec} built"));
            assert!(e.to_string().contains(key), "{spec}: {e}");
        }
    }
}
