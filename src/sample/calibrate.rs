//! Time-dependent calibration of a prior for the FLAIR-style sampler ([`super::flair`]):
//! the velocity error `MSE_v(t)` of the prior on held-out samples, and the regulariser
//! weights `lambda(t)` derived from it.
//!
//! Conventions and decisions:
//! - Times are on the rectified-flow path `x_t = (1 - t) x0 + t eps` (the path FLAIR runs on).
//!   The denoiser must present itself on that path: a VP network is wrapped in
//!   [`crate::prior::OnPath`] with [`crate::prior::Schedule::rectified_flow`] first;
//!   [`calibrate`] refuses other paths with an error saying so.
//! - The velocity target is `u = eps - x0` and the prior's velocity is computed from its
//!   Tweedie estimate, `v = (x_t - x0_hat) / t`, so `v - u = (x0_hat - x0) / t` and
//!   `MSE_v(t) = mean over samples and values of (x0_hat - x0)^2 / t^2` (per value, i.e.
//!   divided by the sample size `D`, so that tables of priors of different resolutions are
//!   comparable). `t = 0` is excluded (the velocity is undefined there): times must lie in
//!   `(0, 1]`.
//! - `lambda(t) ∝ 1 / MSE_v(t)`, normalised so that the weights' mean over the table is 1.
//!   The FLAIR sampler multiplies them by its own scale (official 0.5); the uncalibrated
//!   default is the uniform table (every weight 1).
//! - One batched denoiser call per time; the noise is drawn from `seed` (stream
//!   `"calibrate"`), the same for every time, so that the table's shape is not blurred by
//!   independent noise per time.
//! - JSON format (`format` tag `"posterior-calibration/1"`): `{"format", "prior", "ts",
//!   "weights", "mse_v"}`; `mse_v` may be absent (a hand-written table). Loading checks the
//!   tag, strictly increasing times in `(0, 1]`, finite positive weights (and MSEs), equal
//!   lengths, at least one entry.

use ndarray::{ArrayD, ArrayViewD};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::prior::{Denoiser, PathKind};

/// The format tag of calibration files.
pub const CALIBRATION_FORMAT: &str = "posterior-calibration/1";

/// `lambda(t)` at a set of times, with the measured velocity errors it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationTable {
    /// Always [`CALIBRATION_FORMAT`].
    pub format: String,
    /// The prior the table was measured on (informational).
    #[serde(default)]
    pub prior: String,
    /// Strictly increasing times in `(0, 1]` on the rectified-flow path.
    pub ts: Vec<f64>,
    /// `lambda(t_i)`, positive, mean 1 for measured tables.
    pub weights: Vec<f64>,
    /// The measured `MSE_v(t_i)` per value, when the table was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mse_v: Option<Vec<f64>>,
}

impl CalibrationTable {
    /// A table from times and weights (and optionally the MSEs), validated.
    pub fn new(ts: Vec<f64>, weights: Vec<f64>, mse_v: Option<Vec<f64>>) -> Result<Self> {
        let t = CalibrationTable {
            format: CALIBRATION_FORMAT.into(),
            prior: String::new(),
            ts,
            weights,
            mse_v,
        };
        t.validate()?;
        Ok(t)
    }

    /// The uncalibrated default: weight 1 on all of `(0, 1]`.
    pub fn uniform() -> Self {
        CalibrationTable {
            format: CALIBRATION_FORMAT.into(),
            prior: String::new(),
            ts: vec![1.0],
            weights: vec![1.0],
            mse_v: None,
        }
    }

    /// Checks the invariants listed in the module docs.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("calibration table: {m}")));
        if self.format != CALIBRATION_FORMAT {
            return bad(format!(
                "format tag is {:?}, expected {CALIBRATION_FORMAT:?}",
                self.format
            ));
        }
        if self.ts.is_empty() || self.ts.len() != self.weights.len() {
            return bad(format!(
                "{} times and {} weights; expected the same number, at least one",
                self.ts.len(),
                self.weights.len()
            ));
        }
        if let Some(t) = self
            .ts
            .iter()
            .find(|t| !(t.is_finite() && **t > 0.0 && **t <= 1.0))
        {
            return bad(format!("time {t} is outside (0, 1]"));
        }
        if let Some(i) = (1..self.ts.len()).find(|&i| self.ts[i] <= self.ts[i - 1]) {
            return bad(format!(
                "times must increase strictly, but t[{}] = {} follows {}",
                i,
                self.ts[i],
                self.ts[i - 1]
            ));
        }
        if let Some(w) = self.weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
            return bad(format!("weight {w} is not finite and positive"));
        }
        if let Some(m) = &self.mse_v {
            if m.len() != self.ts.len() {
                return bad(format!(
                    "{} MSE values for {} times",
                    m.len(),
                    self.ts.len()
                ));
            }
            if let Some(v) = m.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return bad(format!("MSE {v} is not finite and positive"));
            }
        }
        Ok(())
    }

    /// `lambda(t)` by linear interpolation in `t`, constant beyond the table's ends.
    pub fn weight(&self, t: f64) -> f64 {
        interpolate(&self.ts, &self.weights, t)
    }

    /// The measured `MSE_v(t)` (interpolated like [`CalibrationTable::weight`]), when the
    /// table holds measurements.
    pub fn mse_v_at(&self, t: f64) -> Option<f64> {
        self.mse_v.as_ref().map(|m| interpolate(&self.ts, m, t))
    }

    /// The table as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| Error::Invalid(format!("calibration table: cannot serialise: {e}")))
    }

    /// A table from JSON, validated.
    pub fn from_json(text: &str) -> Result<Self> {
        let t: CalibrationTable = serde_json::from_str(text).map_err(|e| {
            Error::Invalid(format!(
                "calibration table: not a {CALIBRATION_FORMAT} JSON document: {e}"
            ))
        })?;
        t.validate()?;
        Ok(t)
    }
}

fn interpolate(ts: &[f64], vs: &[f64], t: f64) -> f64 {
    let n = ts.len();
    if n == 0 {
        return 1.0;
    }
    if t <= ts[0] {
        return vs[0];
    }
    if t >= ts[n - 1] {
        return vs[n - 1];
    }
    let i = ts.partition_point(|&x| x <= t).clamp(1, n - 1);
    let f = (t - ts[i - 1]) / (ts[i] - ts[i - 1]);
    vs[i - 1] + f * (vs[i] - vs[i - 1])
}

/// Measures `MSE_v(t)` of `denoiser` (on the rectified-flow path) on the held-out batch
/// `held_out` `(N, ...sample_shape)` at the times `ts` (strictly increasing, in `(0, 1]`),
/// and returns the normalised table (see the module docs).
pub fn calibrate(
    denoiser: &dyn Denoiser,
    held_out: ArrayViewD<f32>,
    ts: &[f64],
    seed: u64,
) -> Result<CalibrationTable> {
    if !matches!(denoiser.schedule().kind(), PathKind::RectifiedFlow) {
        return Err(Error::Invalid(format!(
            "calibrate: the prior {} runs on the {} path; calibration measures velocities on the \
             rectified-flow path: wrap it in OnPath::new(prior, Schedule::rectified_flow())",
            denoiser.info().name,
            denoiser.schedule().name()
        )));
    }
    let info = denoiser.info();
    let n = held_out.shape().first().copied().unwrap_or(0);
    if held_out.shape().len() < 2 || held_out.shape()[1..] != info.sample_shape[..] || n == 0 {
        return Err(Error::Invalid(format!(
            "calibrate: the held-out batch has shape {:?}, expected (N >= 1, {:?}) for the prior {}",
            held_out.shape(),
            info.sample_shape,
            info.name
        )));
    }
    posterior_operators::error::check_finite("held-out batch", held_out.iter())?;
    // Validate the times through the table's own checks (weights are placeholders).
    CalibrationTable::new(ts.to_vec(), vec![1.0; ts.len()], None)?;
    let mut rng = posterior_operators::rng::seeded(seed, "calibrate");
    let eps: ArrayD<f32> = ArrayD::from_shape_simple_fn(held_out.raw_dim(), || {
        let v: f32 = rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng);
        v
    });
    let count = held_out.len() as f64;
    let mut mse = Vec::with_capacity(ts.len());
    for &t in ts {
        let (a, s) = (1.0 - t as f32, t as f32);
        let mut x = held_out.mapv(|v| a * v);
        x.zip_mut_with(&eps, |x, &e| *x += s * e);
        let x0 = denoiser.x0(x.view(), &vec![t as f32; n])?;
        let sq: f64 = x0
            .iter()
            .zip(held_out.iter())
            .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
            .sum();
        let m = sq / count / (t * t);
        if !(m.is_finite() && m > 0.0) {
            return Err(Error::Invalid(format!(
                "calibrate: the velocity error at t = {t} is {m}; expected finite and positive"
            )));
        }
        mse.push(m);
    }
    let inv: Vec<f64> = mse.iter().map(|m| 1.0 / m).collect();
    let mean = inv.iter().sum::<f64>() / inv.len() as f64;
    let mut table = CalibrationTable::new(
        ts.to_vec(),
        inv.iter().map(|v| v / mean).collect(),
        Some(mse),
    )?;
    table.prior = info.name.clone();
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prior::{Covariance, Gmm, OnPath, Schedule};
    use posterior_operators::rng::seeded;
    use std::sync::Arc;

    /// `N(m, v I)` in 4 dimensions.
    fn gaussian(v: f64) -> Gmm {
        Gmm::new(
            vec![1.0],
            vec![vec![0.3, -0.2, 0.1, 0.5]],
            vec![Covariance::Isotropic(v)],
        )
        .unwrap()
    }

    /// For `x0 ~ N(m, v I)` on the flow path the Tweedie error per value has variance
    /// `v t^2 / ((1 - t)^2 v + t^2)`, so `MSE_v(t) = v / ((1 - t)^2 v + t^2)`.
    fn exact_mse_v(v: f64, t: f64) -> f64 {
        v / ((1.0 - t).powi(2) * v + t * t)
    }

    #[test]
    fn the_measured_table_matches_the_closed_form_for_a_gaussian_prior() {
        // 2000 held-out samples x 4 values: the squared errors are i.i.d. scaled chi-square(1)
        // variables, so the mean has relative standard error sqrt(2 / 8000) = 1.6%; the
        // tolerance is 5 standard errors (8%). The prior is VP-trained and presented on the
        // flow path (the way a shipped network is calibrated).
        let v = 0.4;
        let prior = gaussian(v);
        let (held, _) = prior.sample(2000, &mut seeded(1, "held-out"));
        let flow = OnPath::new(Arc::new(prior), Schedule::rectified_flow());
        let ts = [0.05, 0.2, 0.4, 0.6, 0.8, 1.0];
        let table = calibrate(&flow, held.view(), &ts, 3).unwrap();
        let mse = table.mse_v.clone().unwrap();
        for (t, m) in ts.iter().zip(&mse) {
            let e = exact_mse_v(v, *t);
            assert!((m / e - 1.0).abs() < 0.08, "t = {t}: {m} vs exact {e}");
        }
        let mean_w = table.weights.iter().sum::<f64>() / ts.len() as f64;
        assert!((mean_w - 1.0).abs() < 1e-12);
        // Weights are 1/MSE normalised: their ratios follow the closed form.
        let r = table.weights[0] / table.weights[5];
        let e = exact_mse_v(v, 1.0) / exact_mse_v(v, 0.05);
        assert!((r / e - 1.0).abs() < 0.16, "{r} vs {e}");
        // A prior with the wrong variance (1.0 instead of 0.4) measured on the same data
        // misses the closed form by more than twice the tolerance somewhere on the grid.
        let wrong = OnPath::new(Arc::new(gaussian(1.0)), Schedule::rectified_flow());
        let bad = calibrate(&wrong, held.view(), &ts, 3)
            .unwrap()
            .mse_v
            .unwrap();
        let worst = ts
            .iter()
            .zip(&bad)
            .map(|(t, m)| (m / exact_mse_v(v, *t) - 1.0).abs())
            .fold(0.0, f64::max);
        assert!(worst > 0.16, "{bad:?}");
    }

    #[test]
    fn tables_round_trip_through_json_and_bad_tables_are_errors() {
        let t = CalibrationTable::new(vec![0.1, 0.5, 1.0], vec![2.0, 1.0, 0.5], None).unwrap();
        let json = t.to_json().unwrap();
        assert!(json.contains(CALIBRATION_FORMAT));
        assert_eq!(CalibrationTable::from_json(&json).unwrap(), t);
        assert!((t.weight(0.3) - 1.5).abs() < 1e-12);
        assert_eq!((t.weight(0.0), t.weight(1.0)), (2.0, 0.5));
        assert_eq!(CalibrationTable::uniform().weight(0.42), 1.0);
        let cases = [
            (r#"{"format":"other/1","ts":[0.5],"weights":[1]}"#, "format"),
            (
                r#"{"format":"posterior-calibration/1","ts":[0.5,0.4],"weights":[1,1]}"#,
                "increase",
            ),
            (
                r#"{"format":"posterior-calibration/1","ts":[0.0],"weights":[1]}"#,
                "outside",
            ),
            (
                r#"{"format":"posterior-calibration/1","ts":[0.5],"weights":[-1]}"#,
                "positive",
            ),
            (
                r#"{"format":"posterior-calibration/1","ts":[0.5],"weights":[1,2]}"#,
                "same number",
            ),
            (r#"{"format":"posterior-calibration/1","ts":[]"#, "JSON"),
        ];
        for (text, needle) in cases {
            let msg = CalibrationTable::from_json(text).unwrap_err().to_string();
            assert!(msg.contains(needle), "{text}: {msg}");
        }
        // A VP prior not wrapped on the flow path, and a held-out batch of the wrong shape.
        let prior = gaussian(0.5);
        let held = ArrayD::zeros(ndarray::IxDyn(&[3, 4]));
        let msg = calibrate(&prior, held.view(), &[0.5], 0)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("OnPath"), "{msg}");
        let flow = prior.clone().with_schedule(Schedule::rectified_flow());
        let held3 = ArrayD::zeros(ndarray::IxDyn(&[3, 3]));
        assert!(calibrate(&flow, held3.view(), &[0.5], 0).is_err());
        assert!(calibrate(&flow, held.view(), &[0.5, 0.5], 0).is_err());
    }
}
