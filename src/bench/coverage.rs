//! Is an ensemble's uncertainty map calibrated? Figures computed per item from the truth,
//! the ensemble's mean and its pixelwise standard deviation.
//!
//! - `coverage90`: the fraction of pixels whose truth lies in the ensemble's central 90%
//!   interval, taken as `mean ± 1.645 std` (the Gaussian interval: with the 4-20 members a
//!   CPU run affords, empirical 5% and 95% quantiles would be the smallest and largest
//!   member and say more about `K` than about calibration). Calibrated: 0.90.
//! - `std_error_corr`: Pearson's correlation between the std map and the absolute error
//!   `|mean - truth|` over pixels: does the map point at the errors?
//! - `mean_std`: the std map's mean, image units (0 for a collapsed ensemble).

use ndarray::ArrayView3;
use serde::{Deserialize, Serialize};

/// `z` of the central 90% interval of a normal distribution.
pub const Z90: f64 = 1.6448536269514722;

/// Calibration figures of one reconstruction, with the SMC weight diagnostics where the
/// method is SMC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnsembleStats {
    /// Posterior samples (or SMC particles per sample) behind the std map.
    pub members: usize,
    pub coverage90: f64,
    /// `None` where either map is constant (a collapsed ensemble).
    pub std_error_corr: Option<f64>,
    pub mean_std: f64,
    /// SMC: the mean ESS per step before resampling (last entry: the final weights).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ess_per_step: Vec<f64>,
    /// SMC: resamplings over the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resamples: Option<usize>,
    /// SMC: particles lost to non-finite values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonfinite: Option<usize>,
}

impl EnsembleStats {
    /// The figures for `mean` and `std` against `truth` (all `(C, H, W)`, image units).
    pub fn new(
        members: usize,
        mean: ArrayView3<f32>,
        std: ArrayView3<f32>,
        truth: ArrayView3<f32>,
    ) -> EnsembleStats {
        let n = truth.len().max(1) as f64;
        let mut inside = 0usize;
        let (mut se, mut ee, mut s2, mut e2, mut es) = (0.0f64, 0.0f64, 0.0, 0.0, 0.0);
        for ((&m, &s), &t) in mean.iter().zip(std.iter()).zip(truth.iter()) {
            let (m, s, t) = (m as f64, s as f64, t as f64);
            let err = (m - t).abs();
            if err <= Z90 * s {
                inside += 1;
            }
            se += s;
            ee += err;
            s2 += s * s;
            e2 += err * err;
            es += err * s;
        }
        let (ms, me) = (se / n, ee / n);
        let (vs, ve) = (s2 / n - ms * ms, e2 / n - me * me);
        let cov = es / n - ms * me;
        let corr = (vs > 1e-20 && ve > 1e-20).then(|| (cov / (vs * ve).sqrt()).clamp(-1.0, 1.0));
        EnsembleStats {
            members,
            coverage90: inside as f64 / n,
            std_error_corr: corr,
            mean_std: ms,
            ess_per_step: Vec::new(),
            resamples: None,
            nonfinite: None,
        }
    }

    /// The smallest ESS over steps (`None` for a non-SMC ensemble).
    pub fn ess_min(&self) -> Option<f64> {
        self.ess_per_step.iter().cloned().reduce(f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn a_calibrated_gaussian_ensemble_covers_ninety_percent_and_a_collapsed_one_nothing() {
        // Truth = mean + sd * z with z ~ N(0, 1) and the std map equal to sd: coverage is
        // Binomial(4096, 0.9)/4096, sd 0.0047, so 0.90 +- 0.02 is a 4-sigma band.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let sd =
            Array3::from_shape_fn((1, 64, 64), |(_, i, j)| 0.01 + 0.001 * ((i + j) % 7) as f32);
        let mean = Array3::<f32>::zeros((1, 64, 64));
        let normal = Normal::new(0.0f32, 1.0).unwrap();
        let truth = sd.mapv(|s| s * normal.sample(&mut rng));
        let c = EnsembleStats::new(8, mean.view(), sd.view(), truth.view());
        assert!((c.coverage90 - 0.90).abs() < 0.02, "{c:?}");
        // |error| grows with sd, so the two maps correlate positively.
        assert!(c.std_error_corr.unwrap() > 0.1, "{c:?}");
        // Half the width: coverage of a 1.645/2 interval, 0.59.
        let half = sd.mapv(|s| s / 2.0);
        let h = EnsembleStats::new(8, mean.view(), half.view(), truth.view());
        assert!((h.coverage90 - 0.59).abs() < 0.03, "{h:?}");
        // A collapsed ensemble covers only exact pixels and has no correlation.
        let zero = Array3::<f32>::zeros((1, 64, 64));
        let z = EnsembleStats::new(4, mean.view(), zero.view(), truth.view());
        assert_eq!(
            (z.coverage90, z.std_error_corr, z.mean_std),
            (0.0, None, 0.0)
        );
    }
}
