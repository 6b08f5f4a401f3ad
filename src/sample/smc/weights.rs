//! Particle weights: normalisation by log-sum-exp, the effective sample size, systematic
//! resampling, and the per-step record of what the weights did ([`StepTrace`]).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Normalised weights from log-weights by log-sum-exp. A log-weight that is NaN or `+inf`
/// (a particle whose arithmetic went non-finite) counts as `-inf`: that particle gets weight
/// 0 and is dropped at the next resampling. An error when no particle has a finite
/// log-weight.
pub fn normalise_log_weights(logw: &[f64]) -> Result<Vec<f64>> {
    let clean = |l: f64| if l.is_finite() { l } else { f64::NEG_INFINITY };
    let mx = logw
        .iter()
        .map(|&l| clean(l))
        .fold(f64::NEG_INFINITY, f64::max);
    if !mx.is_finite() {
        return Err(Error::NonFinite(format!(
            "smc: every particle has zero or non-finite weight ({} particles); \
             the measurement may be inconsistent with the prior or sigma_y too small",
            logw.len()
        )));
    }
    let e: Vec<f64> = logw.iter().map(|&l| (clean(l) - mx).exp()).collect();
    let s: f64 = e.iter().sum();
    Ok(e.into_iter().map(|v| v / s).collect())
}

/// The effective sample size `1 / sum w^2` of normalised weights, in `[1, K]`.
pub fn ess(w: &[f64]) -> f64 {
    1.0 / w.iter().map(|v| v * v).sum::<f64>().max(f64::MIN_POSITIVE)
}

/// Systematic resampling: `m` indices into `w` (normalised) at positions `(u + j) / m`,
/// `u` in `[0, 1)`. Index `i` appears `floor(m w_i)` or `ceil(m w_i)` times.
pub fn systematic(w: &[f64], m: usize, u: f64) -> Vec<usize> {
    let mut out = Vec::with_capacity(m);
    let mut cum = 0.0;
    let mut i = 0;
    let last = w.len().saturating_sub(1);
    for j in 0..m {
        let p = (u + j as f64) / m as f64;
        while i < last && cum + w[i] <= p {
            cum += w[i];
            i += 1;
        }
        out.push(i);
    }
    out
}

/// What the weights did at one step of a run (over the run's posterior samples), recorded
/// for diagnosis: a healthy run keeps `ess_mean` well above 1 and no non-finite particle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepTrace {
    /// The step (0-based) and its time on the denoiser's path.
    pub step: usize,
    pub t: f64,
    /// The effective sample size before resampling: mean and smallest over samples.
    pub ess_mean: f64,
    pub ess_min: f64,
    /// The largest spread `max - min` of a sample's finite log-weights (nats): how far
    /// apart the particles' weights are before normalisation.
    pub logw_spread: f64,
    /// Samples whose particles were resampled at this step.
    pub resampled: usize,
    /// Particles whose state or weight was non-finite (dropped by weight 0).
    pub nonfinite: usize,
}

impl StepTrace {
    /// An empty record of step `step` at time `t` with `nonfinite` lost particles.
    pub fn new(step: usize, t: f64, nonfinite: usize) -> StepTrace {
        StepTrace {
            step,
            t,
            ess_mean: 0.0,
            ess_min: f64::INFINITY,
            logw_spread: 0.0,
            resampled: 0,
            nonfinite,
        }
    }

    /// Adds one of `n` samples' ESS to the mean and the minimum.
    pub fn add_ess(&mut self, e: f64, n: usize) {
        self.ess_mean += e / n as f64;
        self.ess_min = self.ess_min.min(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systematic_resampling_keeps_floor_or_ceil_copies() {
        let w = [0.05, 0.4, 0.0, 0.3, 0.25];
        for (m, u) in [(10, 0.0), (10, 0.99), (7, 0.5), (100, 0.123)] {
            let idx = systematic(&w, m, u);
            assert_eq!(idx.len(), m);
            for (i, wi) in w.iter().enumerate() {
                let c = idx.iter().filter(|&&j| j == i).count() as f64;
                let e = m as f64 * wi;
                assert!(
                    c >= e.floor() - 1e-9 && c <= e.ceil() + 1e-9,
                    "{i}: {c} vs {e}"
                );
            }
            assert!(idx.windows(2).all(|p| p[0] <= p[1]));
        }
        // Zero-weight particles are never picked; one particle takes everything.
        assert!(systematic(&[0.0, 1.0, 0.0], 5, 0.7).iter().all(|&j| j == 1));
    }

    #[test]
    fn log_weights_normalise_without_overflow_and_non_finite_ones_get_zero() {
        let w = normalise_log_weights(&[-1e4, -1e4 + 2f64.ln(), f64::NEG_INFINITY]).unwrap();
        assert!((w[0] - 1.0 / 3.0).abs() < 1e-12 && (w[1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(w[2], 0.0);
        assert!((ess(&[0.25; 4]) - 4.0).abs() < 1e-12 && (ess(&[1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(normalise_log_weights(&[f64::NEG_INFINITY; 3]).is_err());
        // A NaN or +inf log-weight (a diverged particle) is dropped, not spread to the rest.
        assert_eq!(
            normalise_log_weights(&[f64::NAN, 0.0, f64::INFINITY]).unwrap(),
            vec![0.0, 1.0, 0.0]
        );
        let e = normalise_log_weights(&[f64::NAN, f64::NAN]).unwrap_err();
        assert!(matches!(e, Error::NonFinite(_)), "{e}");
    }
}
