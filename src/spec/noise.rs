//! Noise specs: `none`, `gaussian:sigma=0.05`, `poisson:scale=100`,
//! `complex-gaussian:sigma=0.01`, parsed into a [`NoiseModel`].
//!
//! The noise is added to the clean measurement `A(x)` in the measurement's own units; the
//! caller then calls the operator's `restrict_to_measured` so that unmeasured entries stay
//! zero (see [`posterior_operators::noise`]).

use posterior_operators::noise::NoiseModel;

use super::{ParamInfo, Spec};
use crate::error::{Error, Result};

/// A noise model as `posterior ops` lists it.
#[derive(Debug)]
pub struct NoiseInfo {
    pub name: &'static str,
    pub summary: &'static str,
    pub params: &'static [ParamInfo],
    /// Example specs.
    pub examples: &'static [&'static str],
}

/// Every noise model, in the order `posterior ops` lists them.
pub static NOISE_MODELS: &[NoiseInfo] = &[
    NoiseInfo {
        name: "none",
        summary: "no noise: the measurement is A(x) exactly",
        params: &[],
        examples: &["none"],
    },
    NoiseInfo {
        name: "gaussian",
        summary: "additive white Gaussian noise y = A(x) + sigma n, n ~ N(0, 1) per entry",
        params: &[ParamInfo {
            key: "sigma",
            default: "0.05",
            help: "standard deviation per entry, in the measurement's units (>= 0; DPS uses \
                   0.05 on images in [-1, 1])",
        }],
        examples: &["gaussian:sigma=0.05", "gaussian:sigma=0.01"],
    },
    NoiseInfo {
        name: "poisson",
        summary: "shot noise y = Poisson(scale * max(A(x), 0)) / scale: mean A(x), variance \
                  A(x) / scale",
        params: &[ParamInfo {
            key: "scale",
            default: "100",
            help: "photons (counts) per unit of the measurement (> 0): larger is less noisy; \
                   1 gives raw integer counts, as for Beer-Lambert CT in photons",
        }],
        examples: &["poisson:scale=100", "poisson:scale=1"],
    },
    NoiseInfo {
        name: "complex-gaussian",
        summary: "circular complex Gaussian noise for (re, im) channel-pair data (k-space): \
                  E|n|^2 = sigma^2, each component N(0, sigma^2 / 2)",
        params: &[ParamInfo {
            key: "sigma",
            default: "0.01",
            help: "complex standard deviation sqrt(E|n|^2) per k-space sample (>= 0)",
        }],
        examples: &["complex-gaussian:sigma=0.01"],
    },
];

/// The noise model described by `text` (`NAME[:key=value]`, see [`NOISE_MODELS`]).
/// Unknown names and unknown keys are errors that list what is allowed.
pub fn parse_noise(text: &str) -> Result<NoiseModel> {
    let spec = Spec::parse(text)?;
    let info = NOISE_MODELS
        .iter()
        .find(|n| n.name == spec.family)
        .ok_or_else(|| {
            let names: Vec<_> = NOISE_MODELS.iter().map(|n| n.name).collect();
            Error::Spec(format!(
                "unknown noise model `{}`: expected one of {}",
                spec.family,
                names.join(", ")
            ))
        })?;
    let model = match info.name {
        "gaussian" => NoiseModel::gaussian(spec.get("sigma", 0.05f32)?)?,
        "poisson" => NoiseModel::poisson(spec.get("scale", 100.0f32)?)?,
        "complex-gaussian" => NoiseModel::complex_gaussian(spec.get("sigma", 0.01f32)?)?,
        _ => NoiseModel::None,
    };
    spec.finish(info.params)?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_and_defaults_parse() {
        for info in NOISE_MODELS {
            for ex in info.examples {
                let m = parse_noise(ex).unwrap_or_else(|e| panic!("{ex}: {e}"));
                assert!(m.name().starts_with(info.name), "{ex} -> {m}");
            }
        }
        assert_eq!(parse_noise("none").unwrap(), NoiseModel::None);
        assert_eq!(
            parse_noise("gaussian").unwrap(),
            NoiseModel::Gaussian { sigma: 0.05 }
        );
        assert_eq!(
            parse_noise(" gaussian: sigma = 0.2 ").unwrap(),
            NoiseModel::Gaussian { sigma: 0.2 }
        );
        assert_eq!(
            parse_noise("poisson:scale=1").unwrap(),
            NoiseModel::Poisson { scale: 1.0 }
        );
        assert_eq!(
            parse_noise("complex-gaussian:sigma=0.03").unwrap(),
            NoiseModel::ComplexGaussian { sigma: 0.03 }
        );
    }

    #[test]
    fn errors_name_the_key_or_model() {
        for (text, needle) in [
            ("gaussian:sigma=-1", "sigma"),
            ("gaussian:sigma=abc", "sigma"),
            ("gaussian:scale=3", "scale"),
            ("poisson:scale=0", "scale"),
            ("poisson:sigma=0.1", "sigma"),
            ("complex-gaussian:sigma=nan", "sigma"),
            ("none:sigma=1", "sigma"),
            ("laplace:b=1", "laplace"),
            ("gaussian:sigma", "sigma"),
        ] {
            let e = parse_noise(text).err().unwrap().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        // Unknown keys list the model's keys.
        let e = parse_noise("poisson:sigma=0.1").err().unwrap().to_string();
        assert!(e.contains("expected one of scale"), "{e}");
    }
}
