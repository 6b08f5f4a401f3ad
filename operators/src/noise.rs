//! Measurement noise models: `y_noisy = noise(A(x))`.
//!
//! A [`NoiseModel`] perturbs a clean measurement in place, drawing from
//! [`rng::seeded`]`(seed, "noise")`, so the same seed gives the same noise on every machine
//! and the noise is independent of anything else drawn from the same user seed (masks,
//! coil maps).
//!
//! Models:
//! - [`NoiseModel::None`]: leaves `y` as it is.
//! - [`NoiseModel::Gaussian`]: `y + sigma * n`, `n ~ N(0, 1)` independent per entry, in the
//!   measurement's own units.
//! - [`NoiseModel::Poisson`]: `Poisson(scale * max(y, 0)) / scale`. `scale` is the number
//!   of photons (counts) per unit of `y`: the result has mean `max(y, 0)` and variance
//!   `max(y, 0) / scale`, so a larger scale means less noise. With `scale = 1` the result is
//!   the raw integer counts, as the Beer-Lambert CT model (`y = I0 exp(-A x)` in photons)
//!   needs. Negative entries (which a physical intensity never has) are clamped to zero
//!   before sampling.
//! - [`NoiseModel::ComplexGaussian`]: circularly-symmetric complex Gaussian noise for complex
//!   data stored as a leading channel pair (re, im), i.e. k-space `(2, H, W)` or multi-coil
//!   k-space `(coils, 2, H, W)`: `E|n|^2 = sigma^2`, so each of the real and imaginary
//!   components is `N(0, sigma^2 / 2)`. The draw is per entry and independent, so the values
//!   do not depend on the layout; [`NoiseModel::check_layout`] tells whether a shape is a
//!   channel-pair layout at all.
//!
//! The caller applies the noise to the full range-shaped array and then calls the
//! operator's `restrict_to_measured` (`LinearOperator::restrict_to_measured` or
//! `Operator::restrict_to_measured`), so that entries the operator never measures
//! (unsampled k-space, masked pixels) stay exactly zero.

use ndarray::ArrayD;
use rand_distr::{Distribution, Poisson, StandardNormal};

use crate::error::{validate, Error, Result};
use crate::rng;

/// A measurement noise model. Build with the validating constructors
/// ([`NoiseModel::gaussian`], [`NoiseModel::poisson`], [`NoiseModel::complex_gaussian`]);
/// the variants are public so that samplers can read the parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NoiseModel {
    /// No noise.
    None,
    /// Additive white Gaussian noise of standard deviation `sigma` per entry.
    Gaussian { sigma: f32 },
    /// Poisson (shot) noise with `scale` counts per unit: `Poisson(scale * y) / scale`.
    Poisson { scale: f32 },
    /// Circular complex Gaussian noise with `E|n|^2 = sigma^2` (each component
    /// `N(0, sigma^2 / 2)`), for data stored as (re, im) channel pairs.
    ComplexGaussian { sigma: f32 },
}

impl NoiseModel {
    /// Additive Gaussian noise; `sigma` must be finite and `>= 0` (0 gives no noise).
    pub fn gaussian(sigma: f32) -> Result<Self> {
        non_negative("gaussian", "sigma", sigma)?;
        Ok(NoiseModel::Gaussian { sigma })
    }

    /// Poisson noise with `scale` counts per unit of the measurement; `scale` must be a
    /// positive finite number.
    pub fn poisson(scale: f32) -> Result<Self> {
        validate::positive("poisson", "scale", scale as f64)?;
        Ok(NoiseModel::Poisson { scale })
    }

    /// Complex Gaussian noise with `E|n|^2 = sigma^2`; `sigma` must be finite and `>= 0`.
    pub fn complex_gaussian(sigma: f32) -> Result<Self> {
        non_negative("complex-gaussian", "sigma", sigma)?;
        Ok(NoiseModel::ComplexGaussian { sigma })
    }

    /// A short description, e.g. `gaussian(sigma=0.05)`.
    pub fn name(&self) -> String {
        match self {
            NoiseModel::None => "none".into(),
            NoiseModel::Gaussian { sigma } => format!("gaussian(sigma={sigma})"),
            NoiseModel::Poisson { scale } => format!("poisson(scale={scale})"),
            NoiseModel::ComplexGaussian { sigma } => format!("complex-gaussian(sigma={sigma})"),
        }
    }

    /// Checks that a measurement of `shape` suits the model: complex Gaussian noise needs a
    /// channel-pair layout `(2, H, W)` or `(coils, 2, H, W)` (a size-2 axis third from the
    /// end); the other models take any shape.
    pub fn check_layout(&self, shape: &[usize]) -> Result<()> {
        if let NoiseModel::ComplexGaussian { .. } = self {
            let n = shape.len();
            if n < 3 || shape[n - 3] != 2 {
                return Err(Error::param(
                    "complex-gaussian",
                    "measurement",
                    format!(
                        "must be complex data stored as a (re, im) channel pair, shape \
                         (2, H, W) or (coils, 2, H, W); got shape {shape:?} (use gaussian \
                         noise for real measurements)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Adds the noise to `y` in place, seeded by `seed` (stream `"noise"`). Afterwards the
    /// caller should call the operator's `restrict_to_measured` on `y`.
    pub fn apply(&self, y: &mut ArrayD<f32>, seed: u64) {
        let mut r = rng::seeded(seed, "noise");
        match *self {
            NoiseModel::None => {}
            NoiseModel::Gaussian { sigma } => {
                if sigma > 0.0 {
                    y.iter_mut().for_each(|v| {
                        let n: f32 = StandardNormal.sample(&mut r);
                        *v += sigma * n;
                    });
                }
            }
            NoiseModel::ComplexGaussian { sigma } => {
                if sigma > 0.0 {
                    let s = sigma * std::f32::consts::FRAC_1_SQRT_2;
                    y.iter_mut().for_each(|v| {
                        let n: f32 = StandardNormal.sample(&mut r);
                        *v += s * n;
                    });
                }
            }
            NoiseModel::Poisson { scale } => {
                let scale = scale as f64;
                y.iter_mut().for_each(|v| {
                    let rate = scale * (*v as f64).max(0.0);
                    *v = (poisson_sample(rate, &mut r) / scale) as f32;
                });
            }
        }
    }

    /// The standard deviation of the noise on one real entry, where it does not depend on
    /// the signal: `sigma` (Gaussian), `sigma / sqrt 2` (complex Gaussian, per component),
    /// 0 (none); `None` for Poisson, whose variance [`NoiseModel::variance`] depends on `y`.
    pub fn sigma_equivalent(&self) -> Option<f32> {
        match *self {
            NoiseModel::None => Some(0.0),
            NoiseModel::Gaussian { sigma } => Some(sigma),
            NoiseModel::ComplexGaussian { sigma } => Some(sigma * std::f32::consts::FRAC_1_SQRT_2),
            NoiseModel::Poisson { .. } => None,
        }
    }

    /// The variance of the noise on one real entry whose clean value is `y`:
    /// `max(y, 0) / scale` for Poisson, `sigma_equivalent^2` otherwise.
    pub fn variance(&self, y: f32) -> f32 {
        match *self {
            NoiseModel::Poisson { scale } => y.max(0.0) / scale,
            _ => self.sigma_equivalent().map_or(0.0, |s| s * s),
        }
    }
}

impl std::fmt::Display for NoiseModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

fn non_negative(op: &str, key: &str, v: f32) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::param(
            op,
            key,
            format!("must be a finite number >= 0, got {v}"),
        ))
    }
}

/// One Poisson draw of the given rate (>= 0). rand_distr's sampler (Knuth's method for small
/// rates, a rejection method for large ones, O(1) expected time either way) covers rates up
/// to `Poisson::MAX_LAMBDA` (~1.8e19); beyond it the normal approximation is exact to far
/// below f32 resolution.
fn poisson_sample(rate: f64, r: &mut rng::Rng) -> f64 {
    if rate.is_nan() {
        return f64::NAN;
    }
    if rate <= 0.0 {
        return 0.0;
    }
    match Poisson::new(rate) {
        Ok(p) => p.sample(r),
        Err(_) => {
            let n: f64 = StandardNormal.sample(r);
            (rate + rate.sqrt() * n).round().max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    /// Sample mean and (unbiased) variance of `a - base`, in f64.
    fn moments(a: &ArrayD<f32>, base: f32) -> (f64, f64) {
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| (v - base) as f64).sum::<f64>() / n;
        let var = a
            .iter()
            .map(|&v| ((v - base) as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        (mean, var)
    }

    // Tolerances: with n independent draws of variance s2, the sample mean has standard
    // error sqrt(s2 / n) and the sample variance sqrt(2 s4 / (n - 1)) for Gaussian data
    // (for Poisson, sqrt((mu4 - s4) / n) with mu4 = s2 (1 + 3 s2 lambda) / lambda in
    // scaled units, bounded below by 2x the Gaussian value for the rates here). The checks
    // allow 5 standard errors: a false failure has probability ~1e-6, while the errors they
    // target (a wrong sigma or sigma^2/2 vs sigma^2) are hundreds of standard errors away.
    const N: usize = 200_000;

    #[test]
    fn gaussian_mean_and_variance() {
        let sigma = 0.3f32;
        let mut y = ArrayD::from_elem(IxDyn(&[2, 100, 1000]), 1.5f32);
        NoiseModel::gaussian(sigma).unwrap().apply(&mut y, 7);
        let (m, v) = moments(&y, 1.5);
        let s2 = (sigma * sigma) as f64;
        let n = y.len() as f64;
        assert!(m.abs() < 5.0 * (s2 / n).sqrt(), "mean {m}");
        assert!(
            (v - s2).abs() < 5.0 * (2.0 * s2 * s2 / (n - 1.0)).sqrt(),
            "var {v} vs {s2}"
        );
    }

    #[test]
    fn complex_gaussian_has_half_the_variance_per_component() {
        let sigma = 0.2f32;
        let model = NoiseModel::complex_gaussian(sigma).unwrap();
        let mut y = ArrayD::<f32>::zeros(IxDyn(&[4, 2, 50, 250]));
        model.apply(&mut y, 3);
        let s2 = (sigma * sigma) as f64 / 2.0;
        // Each component separately: re = index 0 of axis 1, im = index 1.
        for c in 0..2 {
            let comp = y.index_axis(ndarray::Axis(1), c).to_owned();
            let (m, v) = moments(&comp, 0.0);
            let n = comp.len() as f64;
            assert!(m.abs() < 5.0 * (s2 / n).sqrt(), "component {c}: mean {m}");
            assert!(
                (v - s2).abs() < 5.0 * (2.0 * s2 * s2 / (n - 1.0)).sqrt(),
                "component {c}: var {v} vs sigma^2/2 = {s2}"
            );
        }
        // E|n|^2 = sigma^2 over the pairs: |n|^2 is exponential with mean sigma^2 and sd
        // sigma^2, so the mean over `pairs` draws has standard error sigma^2 / sqrt(pairs).
        let pairs = (y.len() / 2) as f64;
        let e: f64 = y.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / pairs;
        let s2full = (sigma * sigma) as f64;
        assert!(
            (e - s2full).abs() < 5.0 * s2full / pairs.sqrt(),
            "E|n|^2 {e}"
        );
        assert_eq!(model.sigma_equivalent(), Some(sigma / 2f32.sqrt()));
        assert!(model.check_layout(&[4, 2, 50, 250]).is_ok());
        assert!(model.check_layout(&[2, 50, 250]).is_ok());
        assert!(model.check_layout(&[1, 50, 250]).is_err());
        assert!(model.check_layout(&[50, 250]).is_err());
        assert!(NoiseModel::gaussian(0.1)
            .unwrap()
            .check_layout(&[1, 5, 5])
            .is_ok());
    }

    #[test]
    fn poisson_mean_and_variance_scale_with_photons() {
        // Clean value 0.5 at 40 photons per unit: counts ~ Poisson(20), mean 0.5, variance
        // 0.5 / 40. Poisson's 4th central moment is lambda (1 + 3 lambda), so the sample
        // variance of counts has standard error sqrt((lambda + 2 lambda^2) / n).
        let (clean, scale) = (0.5f32, 40.0f32);
        let mut y = ArrayD::from_elem(IxDyn(&[N]), clean);
        let model = NoiseModel::poisson(scale).unwrap();
        model.apply(&mut y, 11);
        let (m, v) = moments(&y, 0.0);
        let lambda = (clean * scale) as f64;
        let n = N as f64;
        let s = scale as f64;
        let var = lambda / (s * s);
        assert!(
            (m - clean as f64).abs() < 5.0 * (var / n).sqrt(),
            "mean {m}"
        );
        let se_var = ((lambda + 2.0 * lambda * lambda) / n).sqrt() / (s * s);
        assert!((v - var).abs() < 5.0 * se_var, "var {v} vs {var}");
        assert_eq!(model.variance(clean), clean / scale);
    }

    #[test]
    fn poisson_with_unit_scale_gives_integer_counts_and_handles_large_rates() {
        let mut y = ArrayD::from_shape_fn(IxDyn(&[3, 40, 40]), |ix| {
            (ix[0] as f32 * 1e4 + ix[1] as f32 * 0.7 - ix[2] as f32 * 0.3).max(-2.0)
        });
        let clean = y.clone();
        NoiseModel::poisson(1.0).unwrap().apply(&mut y, 5);
        assert!(y.iter().all(|v| v.fract() == 0.0 && *v >= 0.0));
        // Negative clean values are clamped to zero rate: exactly zero counts.
        for (c, n) in clean.iter().zip(y.iter()) {
            if *c <= 0.0 {
                assert_eq!(*n, 0.0);
            }
        }
        // Large rates (1e4 .. 2e4 photons) stay within 6 sd of the rate.
        for (c, n) in clean.iter().zip(y.iter()) {
            if *c > 1e3 {
                assert!((n - c).abs() < 6.0 * c.sqrt(), "{n} vs rate {c}");
            }
        }
        // Rates beyond rand_distr's limit fall back to the normal approximation.
        let mut huge = ArrayD::from_elem(IxDyn(&[4]), 1e20f32);
        NoiseModel::poisson(1.0).unwrap().apply(&mut huge, 1);
        assert!(huge.iter().all(|v| (v / 1e20 - 1.0).abs() < 1e-6));
    }

    #[test]
    fn seeding_is_reproducible_and_seeds_differ() {
        for model in [
            NoiseModel::gaussian(0.1).unwrap(),
            NoiseModel::poisson(10.0).unwrap(),
            NoiseModel::complex_gaussian(0.1).unwrap(),
        ] {
            let base = ArrayD::from_elem(IxDyn(&[2, 8, 8]), 1.0f32);
            let (mut a, mut b, mut c) = (base.clone(), base.clone(), base.clone());
            model.apply(&mut a, 42);
            model.apply(&mut b, 42);
            model.apply(&mut c, 43);
            assert_eq!(a, b, "{model}: same seed, different noise");
            assert_ne!(a, c, "{model}: different seeds, same noise");
            assert_ne!(a, base, "{model}: no noise added");
        }
        let mut y = ArrayD::from_elem(IxDyn(&[5]), 2.0f32);
        NoiseModel::None.apply(&mut y, 1);
        assert!(y.iter().all(|&v| v == 2.0));
        NoiseModel::gaussian(0.0).unwrap().apply(&mut y, 1);
        assert!(y.iter().all(|&v| v == 2.0));
    }

    #[test]
    fn constructors_reject_bad_parameters() {
        for bad in [-0.1f32, f32::NAN, f32::INFINITY] {
            let e = NoiseModel::gaussian(bad).unwrap_err().to_string();
            assert!(e.contains("sigma"), "{e}");
            let e = NoiseModel::complex_gaussian(bad).unwrap_err().to_string();
            assert!(e.contains("sigma"), "{e}");
            let e = NoiseModel::poisson(bad).unwrap_err().to_string();
            assert!(e.contains("scale"), "{e}");
        }
        assert!(NoiseModel::poisson(0.0).is_err());
        assert!(NoiseModel::gaussian(0.0).is_ok());
    }
}
