//! Noising paths `x_t = a(t) x0 + s(t) eps`, `eps ~ N(0, I)`, on a continuous time
//! `t` in `[0, 1]` (`t = 0` clean, `t = 1` the noisiest point), and the conversions between
//! paths and between parameterisations.
//!
//! Paths ([`Schedule`]):
//! - **VP, linear betas** (DDPM/ADM): `a = sqrt(abar)`, `s = sqrt(1 - abar)` with
//!   `abar_k = prod_{i<k} (1 - beta_i)`, `beta_i` linear from `1e-4` to `0.02` over `T = 1000`
//!   steps (`beta_i = beta_start + (beta_end - beta_start) i / (T - 1)`, as `torch.linspace`).
//!   The discrete step `k` (1-based: `x_k` has had `k` betas applied) sits at `t = k / T`;
//!   in the 0-based indexing of the official code, timestep `n` is `t = (n + 1) / T`. Between
//!   the knots `log abar` is interpolated linearly, so the path is defined (and monotone) for
//!   every `t` and exact at the discrete steps.
//! - **VP, cosine** (improved DDPM): `abar(t) = f(t) / f(0)`, `f(t) = cos^2((t + 0.008) / 1.008 * pi/2)`,
//!   in its continuous form (the official code's clipping of betas at 0.999 is not applied).
//! - **VE** (NCSN++ / score SDE): `a = 1`, `s = sigma_min (sigma_max / sigma_min)^t`; defaults
//!   `sigma_min = 0.01`, `sigma_max = 50`. At `t = 0` the VE path still has noise
//!   `sigma_min`; samplers finish with a denoising step to the clean point (see [`Knot`]).
//! - **Rectified flow** (flow matching): `a = 1 - t`, `s = t`, velocity target `u = eps - x0`.
//!
//! Signal-to-noise matching: two paths carry the same information at times with the same
//! `a / s`; [`Schedule::t_on_other_path`] finds that time and the factor that rescales `x`.
//!
//! Parameterisations ([`Param`]): a network may predict `eps`, `x0`, the score
//! `grad log p_t(x_t) = -eps / s`, or the velocity `v = dx_t/dt = a'(t) x0 + s'(t) eps` (for
//! rectified flow `v = eps - x0`). [`Schedule::convert`] maps any to any through `x0`.

use ndarray::{ArrayD, ArrayViewD, Zip};

use crate::error::{Error, Result};

/// Which noising path a [`Schedule`] follows, with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum PathKind {
    /// Variance preserving, discrete linear betas (DDPM); with `scaled`, the square roots
    /// of the betas are linear instead (diffusers' `scaled_linear`).
    VpLinear {
        beta_start: f64,
        beta_end: f64,
        steps: usize,
        scaled: bool,
    },
    /// Variance preserving, cosine `abar` (improved DDPM), with its offset (0.008).
    VpCosine { offset: f64 },
    /// Variance exploding, geometric `sigma`.
    Ve { sigma_min: f64, sigma_max: f64 },
    /// Rectified flow: `a = 1 - t`, `s = t`.
    RectifiedFlow,
}

/// A prediction's parameterisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// The noise `eps`.
    Eps,
    /// The clean signal `x0` (Tweedie's estimate).
    X0,
    /// The score `grad_x log p_t(x)` = `-eps / s`.
    Score,
    /// The path velocity `dx_t/dt = a' x0 + s' eps`.
    Velocity,
}

/// A point on a sampling grid: a time and its coefficients. The last knot of every grid is
/// the clean point `a = 1`, `s = 0` (`t = 0`), which for VE lies just past the path's end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Knot {
    pub t: f64,
    pub a: f64,
    pub s: f64,
}

impl Knot {
    /// Whether this is the clean endpoint (`s = 0`).
    pub fn is_clean(&self) -> bool {
        self.s == 0.0
    }
    /// `ln(a / s)`: `+inf` at the clean point, `-inf` where `a = 0`.
    pub fn log_snr(&self) -> f64 {
        self.a.ln() - self.s.ln()
    }
}

/// A noising path `x_t = a(t) x0 + s(t) eps`, `t` in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    kind: PathKind,
    /// VP linear only: `log abar_k` for `k = 0..=T` (`log abar_0 = 0`).
    log_abar: Vec<f64>,
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

impl Schedule {
    /// The DDPM/ADM path: linear betas 1e-4..0.02 over T = 1000 steps.
    pub fn vp_linear() -> Schedule {
        Self::vp_table(1e-4, 0.02, 1000, false)
    }

    /// A VP path with linear betas from `beta_start` to `beta_end` over `steps` steps.
    /// Needs `0 < beta_start <= beta_end < 1` and `steps >= 2`.
    pub fn vp_linear_with(beta_start: f64, beta_end: f64, steps: usize) -> Result<Schedule> {
        Self::vp_checked(beta_start, beta_end, steps, false)
    }

    /// diffusers' `scaled_linear` VP path: `beta_i = (sqrt(beta_start) + (sqrt(beta_end) -
    /// sqrt(beta_start)) i / (T - 1))^2`. Same constraints as [`Schedule::vp_linear_with`].
    pub fn vp_scaled_linear(beta_start: f64, beta_end: f64, steps: usize) -> Result<Schedule> {
        Self::vp_checked(beta_start, beta_end, steps, true)
    }

    fn vp_checked(beta_start: f64, beta_end: f64, steps: usize, scaled: bool) -> Result<Schedule> {
        if !(beta_start.is_finite() && beta_start > 0.0 && beta_end >= beta_start && beta_end < 1.0)
        {
            return Err(invalid(format!(
                "schedule vp: betas must satisfy 0 < beta_start <= beta_end < 1, got {beta_start}..{beta_end}"
            )));
        }
        if steps < 2 {
            return Err(invalid(format!(
                "schedule vp: the number of diffusion steps must be at least 2, got {steps}"
            )));
        }
        crate::limits::check_steps("diffusion steps", steps)?;
        Ok(Self::vp_table(beta_start, beta_end, steps, scaled))
    }

    /// The table of `log abar_k` for validated parameters.
    fn vp_table(beta_start: f64, beta_end: f64, steps: usize, scaled: bool) -> Schedule {
        let mut log_abar = Vec::with_capacity(steps + 1);
        let mut acc = 0.0f64;
        log_abar.push(0.0);
        let (b0, b1) = if scaled {
            (beta_start.sqrt(), beta_end.sqrt())
        } else {
            (beta_start, beta_end)
        };
        for i in 0..steps {
            let b = b0 + (b1 - b0) * i as f64 / (steps - 1) as f64;
            let beta = if scaled { b * b } else { b };
            acc += (-beta).ln_1p();
            log_abar.push(acc);
        }
        Schedule {
            kind: PathKind::VpLinear {
                beta_start,
                beta_end,
                steps,
                scaled,
            },
            log_abar,
        }
    }

    /// The cosine VP path of improved DDPM (offset 0.008).
    pub fn vp_cosine() -> Schedule {
        Schedule {
            kind: PathKind::VpCosine { offset: 0.008 },
            log_abar: Vec::new(),
        }
    }

    /// The VE path with the score-SDE defaults `sigma_min = 0.01`, `sigma_max = 50`.
    pub fn ve_default() -> Schedule {
        Schedule {
            kind: PathKind::Ve {
                sigma_min: 0.01,
                sigma_max: 50.0,
            },
            log_abar: Vec::new(),
        }
    }

    /// A VE path with geometric sigma; needs `0 < sigma_min < sigma_max`.
    pub fn ve(sigma_min: f64, sigma_max: f64) -> Result<Schedule> {
        if !(sigma_min.is_finite()
            && sigma_max.is_finite()
            && sigma_min > 0.0
            && sigma_max > sigma_min)
        {
            return Err(invalid(format!(
                "schedule ve: needs 0 < sigma_min < sigma_max, got sigma_min = {sigma_min}, sigma_max = {sigma_max}"
            )));
        }
        Ok(Schedule {
            kind: PathKind::Ve {
                sigma_min,
                sigma_max,
            },
            log_abar: Vec::new(),
        })
    }

    /// The rectified-flow path `a = 1 - t`, `s = t`.
    pub fn rectified_flow() -> Schedule {
        Schedule {
            kind: PathKind::RectifiedFlow,
            log_abar: Vec::new(),
        }
    }

    /// The path called `name`: `vp` (linear betas), `cosine`, `ve` or `flow` (with their
    /// defaults).
    pub fn from_name(name: &str) -> Result<Schedule> {
        match name {
            "vp" | "vp-linear" | "ddpm" => Ok(Self::vp_linear()),
            "cosine" | "vp-cosine" => Ok(Self::vp_cosine()),
            "ve" => Ok(Self::ve_default()),
            "flow" | "rf" | "rectified-flow" => Ok(Self::rectified_flow()),
            other => Err(invalid(format!(
                "unknown noising path `{other}`: expected one of vp, cosine, ve, flow"
            ))),
        }
    }

    /// The path's parameters.
    pub fn kind(&self) -> &PathKind {
        &self.kind
    }

    /// A short name: `vp`, `cosine`, `ve`, `flow`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            PathKind::VpLinear { .. } => "vp",
            PathKind::VpCosine { .. } => "cosine",
            PathKind::Ve { .. } => "ve",
            PathKind::RectifiedFlow => "flow",
        }
    }

    fn vp_log_abar(&self, t: f64) -> (f64, f64) {
        // (log abar, d log abar / dt), piecewise linear in t between the knots k / T.
        let n = self.log_abar.len() - 1;
        let u = t.clamp(0.0, 1.0) * n as f64;
        let k = (u.floor() as usize).min(n - 1);
        let slope = self.log_abar[k + 1] - self.log_abar[k];
        (self.log_abar[k] + (u - k as f64) * slope, slope * n as f64)
    }

    fn cosine_angle(offset: f64, t: f64) -> f64 {
        (t + offset) / (1.0 + offset) * std::f64::consts::FRAC_PI_2
    }

    /// `(a(t), s(t))`; `t` is clamped to `[0, 1]`.
    pub fn coeffs(&self, t: f64) -> (f64, f64) {
        let t = t.clamp(0.0, 1.0);
        match self.kind {
            PathKind::VpLinear { .. } => {
                let (l, _) = self.vp_log_abar(t);
                ((0.5 * l).exp(), (-l.exp_m1()).max(0.0).sqrt())
            }
            PathKind::VpCosine { offset } => {
                let a = (Self::cosine_angle(offset, t).cos()
                    / Self::cosine_angle(offset, 0.0).cos())
                .clamp(0.0, 1.0);
                (a, (1.0 - a * a).max(0.0).sqrt())
            }
            PathKind::Ve {
                sigma_min,
                sigma_max,
            } => (1.0, sigma_min * (sigma_max / sigma_min).powf(t)),
            PathKind::RectifiedFlow => (1.0 - t, t),
        }
    }

    /// `a(t)`.
    pub fn alpha(&self, t: f64) -> f64 {
        self.coeffs(t).0
    }

    /// `s(t)`.
    pub fn sigma(&self, t: f64) -> f64 {
        self.coeffs(t).1
    }

    /// `(a'(t), s'(t))`, the time derivatives (infinite `s'` where `s = 0` on VP paths).
    pub fn derivs(&self, t: f64) -> (f64, f64) {
        let t = t.clamp(0.0, 1.0);
        match self.kind {
            PathKind::VpLinear { .. } => {
                let (_, dl) = self.vp_log_abar(t);
                let (a, s) = self.coeffs(t);
                let da = 0.5 * a * dl;
                (da, -a * da / s)
            }
            PathKind::VpCosine { offset } => {
                let (a, s) = self.coeffs(t);
                let th = Self::cosine_angle(offset, t);
                let da = -th.sin() * std::f64::consts::FRAC_PI_2
                    / (1.0 + offset)
                    / Self::cosine_angle(offset, 0.0).cos();
                (da, -a * da / s)
            }
            PathKind::Ve {
                sigma_min,
                sigma_max,
            } => {
                let r = (sigma_max / sigma_min).ln();
                (0.0, self.sigma(t) * r)
            }
            PathKind::RectifiedFlow => (-1.0, 1.0),
        }
    }

    /// `ln(a(t) / s(t))`, decreasing in `t`.
    pub fn log_snr(&self, t: f64) -> f64 {
        let (a, s) = self.coeffs(t);
        a.ln() - s.ln()
    }

    /// The time at which `ln(a / s) = lambda`, clamped to `[0, 1]` when the path does not
    /// reach that ratio (`lambda = +inf` gives `t = 0`, `-inf` gives `t = 1`).
    pub fn t_for_log_snr(&self, lambda: f64) -> f64 {
        if lambda.is_nan() {
            return 1.0;
        }
        let t = match self.kind {
            PathKind::VpLinear { .. } => {
                // abar / (1 - abar) = exp(2 lambda)  =>  log abar = -softplus(-2 lambda).
                let target = -softplus(-2.0 * lambda);
                // log_abar is decreasing in k: binary search for the segment.
                let l = &self.log_abar;
                let n = l.len() - 1;
                if target >= 0.0 {
                    0.0
                } else if target <= l[n] {
                    1.0
                } else {
                    let (mut lo, mut hi) = (0usize, n);
                    while hi - lo > 1 {
                        let mid = (lo + hi) / 2;
                        if l[mid] >= target {
                            lo = mid;
                        } else {
                            hi = mid;
                        }
                    }
                    let frac = (target - l[lo]) / (l[hi] - l[lo]);
                    (lo as f64 + frac) / n as f64
                }
            }
            PathKind::VpCosine { offset } => {
                let abar = (-softplus(-2.0 * lambda)).exp();
                let c0 = Self::cosine_angle(offset, 0.0).cos();
                let th = (abar.sqrt() * c0).clamp(-1.0, 1.0).acos();
                th / std::f64::consts::FRAC_PI_2 * (1.0 + offset) - offset
            }
            PathKind::Ve {
                sigma_min,
                sigma_max,
            } => ((-lambda) - sigma_min.ln()) / (sigma_max / sigma_min).ln(),
            PathKind::RectifiedFlow => 1.0 / (1.0 + lambda.exp()),
        };
        if t.is_nan() {
            1.0
        } else {
            t.clamp(0.0, 1.0)
        }
    }

    /// Signal-to-noise matching: the time `t'` on `other` whose `a/s` equals this path's at
    /// `t`, and the factor `c` with `x_other = c * x_self` (`c = a'/a`, or `s'/s` where the
    /// noise dominates, which is the same number when the ratios match and stays finite
    /// where `a = 0`). Where `other` does not reach this ratio, `t'` is clamped to its end
    /// and the factor is taken from the dominant term.
    pub fn t_on_other_path(&self, t: f64, other: &Schedule) -> (f64, f64) {
        let (a, s) = self.coeffs(t);
        let t2 = other.t_for_log_snr(a.ln() - s.ln());
        let (a2, s2) = other.coeffs(t2);
        let c = if a >= s { a2 / a } else { s2 / s };
        (t2, c)
    }

    /// The noisiest time samplers start from: 1 on every path.
    pub fn t_max(&self) -> f64 {
        1.0
    }

    /// The least noisy time a sampler visits before its final denoising step: `1/T` for the
    /// discrete VP path (its first step), `1e-3` for cosine, `0` for VE (sigma_min) and
    /// `1/steps` for rectified flow (the uniform grid's last noisy point).
    pub fn t_min(&self, steps: usize) -> f64 {
        match self.kind {
            PathKind::VpLinear { steps: n, .. } => 1.0 / n as f64,
            PathKind::VpCosine { .. } => 1e-3,
            PathKind::Ve { .. } => 0.0,
            PathKind::RectifiedFlow => 1.0 / steps.max(1) as f64,
        }
    }

    /// The sampling grid for `steps` denoiser evaluations: `steps` noisy knots uniform in
    /// `t` from `t_max` down to `t_min` (for discrete VP with `steps = T` exactly the DDPM
    /// steps; for VE uniform in `log sigma`), then the clean knot `(t = 0, a = 1, s = 0)`.
    /// `steps = 0` is treated as 1.
    pub fn knots(&self, steps: usize) -> Vec<Knot> {
        let steps = steps.max(1);
        let (hi, lo) = (self.t_max(), self.t_min(steps));
        let mut out: Vec<Knot> = (0..steps)
            .map(|i| {
                let t = if steps == 1 {
                    hi
                } else {
                    hi + (lo - hi) * i as f64 / (steps - 1) as f64
                };
                let (a, s) = self.coeffs(t);
                Knot { t, a, s }
            })
            .collect();
        out.push(Knot {
            t: 0.0,
            a: 1.0,
            s: 0.0,
        });
        out
    }

    /// A grid with the same ends as [`Schedule::knots`] but noisy knots uniform in
    /// `lambda = log(a/s)` (DPM-Solver's "logSNR" spacing): from `lambda(t_max)`, floored at
    /// -6 where the path starts at `a = 0` or nearly so (then the first knot stays at
    /// `t_max` and the rest are uniform from -6), up to `lambda(t_min)`; then the clean knot.
    pub fn knots_log_snr(&self, steps: usize) -> Vec<Knot> {
        let steps = steps.max(1);
        let (hi_t, lo_t) = (self.t_max(), self.t_min(steps));
        let l_end = self.log_snr(lo_t);
        let l_start = self.log_snr(hi_t);
        let mut out = vec![self.knot(hi_t)];
        if steps > 1 {
            let (first, l0) = if l_start >= -6.0 {
                (1, l_start)
            } else {
                (1, -6.0f64.min(l_end))
            };
            let count = steps - 1;
            for i in first..=count {
                // Above -6: knots 1..steps-1 of a uniform grid that starts at knot 0; below:
                // knots 1..steps-1 uniform from -6 (inclusive) to the end.
                let l = if l_start >= -6.0 {
                    l0 + (l_end - l0) * i as f64 / count as f64
                } else if count == 1 {
                    l_end
                } else {
                    l0 + (l_end - l0) * (i - 1) as f64 / (count - 1) as f64
                };
                out.push(self.knot(self.t_for_log_snr(l)));
            }
        }
        out.push(Knot {
            t: 0.0,
            a: 1.0,
            s: 0.0,
        });
        out
    }

    /// The knot at time `t` on this path.
    pub fn knot(&self, t: f64) -> Knot {
        let (a, s) = self.coeffs(t);
        Knot { t, a, s }
    }

    /// Converts a prediction `pred` of `x_t` at time `t` from parameterisation `from` to
    /// `to` (elementwise, through `x0`). Needs `a(t) > 0` when converting from `eps` or
    /// `score` (x0 is then `(x - s eps) / a`) and `s(t) > 0` when converting to them.
    pub fn convert(
        &self,
        t: f64,
        x_t: ArrayViewD<f32>,
        pred: ArrayViewD<f32>,
        from: Param,
        to: Param,
    ) -> Result<ArrayD<f32>> {
        if x_t.shape() != pred.shape() {
            return Err(invalid(format!(
                "convert: prediction has shape {:?}, expected the shape of x_t {:?}",
                pred.shape(),
                x_t.shape()
            )));
        }
        if from == to {
            return Ok(pred.to_owned());
        }
        let (a, s) = self.coeffs(t);
        let (da, ds) = self.derivs(t);
        // x0 = p * pred + q * x
        let (p, q) = match from {
            Param::X0 => (1.0, 0.0),
            Param::Eps => (-s / a, 1.0 / a),
            Param::Score => (s * s / a, 1.0 / a),
            // v = a' x0 + s' (x - a x0)/s  =>  x0 = (s v - s' x) / (s a' - s' a)
            Param::Velocity => {
                let d = s * da - ds * a;
                (s / d, -ds / d)
            }
        };
        // out = u * x0 + w * x
        let (u, w) = match to {
            Param::X0 => (1.0, 0.0),
            Param::Eps => (-a / s, 1.0 / s),
            Param::Score => (a / (s * s), -1.0 / (s * s)),
            Param::Velocity => (da - ds * a / s, ds / s),
        };
        let (cp, cq) = (u * p, u * q + w);
        if !(cp.is_finite() && cq.is_finite()) {
            return Err(invalid(format!(
                "convert {from:?} -> {to:?} is undefined at t = {t} on the {} path (a = {a}, s = {s})",
                self.name()
            )));
        }
        Ok(Zip::from(&pred)
            .and(&x_t)
            .map_collect(|&pr, &x| (cp * pr as f64 + cq * x as f64) as f32))
    }
}

fn softplus(x: f64) -> f64 {
    if x > 30.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn all() -> Vec<Schedule> {
        vec![
            Schedule::vp_linear(),
            Schedule::vp_cosine(),
            Schedule::ve_default(),
            Schedule::rectified_flow(),
        ]
    }

    #[test]
    fn vp_linear_matches_the_discrete_products() {
        let sch = Schedule::vp_linear();
        // abar_k computed naively as a product of (1 - beta_i), beta linear 1e-4..0.02.
        let mut abar = 1.0f64;
        for k in 1..=1000usize {
            let beta = 1e-4 + (0.02 - 1e-4) * (k - 1) as f64 / 999.0;
            abar *= 1.0 - beta;
            let (a, s) = sch.coeffs(k as f64 / 1000.0);
            assert!((a * a - abar).abs() < 1e-12 * abar.max(1e-3), "k = {k}");
            assert!((s * s - (1.0 - abar)).abs() < 1e-12, "k = {k}");
        }
        // The published value abar_T ~ 4.04e-5 for this schedule.
        assert!((sch.alpha(1.0).powi(2) - 4.036e-5).abs() < 2e-7);
        assert_eq!(sch.coeffs(0.0), (1.0, 0.0));
    }

    #[test]
    fn coefficients_at_the_ends_and_monotone_snr() {
        for sch in all() {
            let mut prev = f64::INFINITY;
            for i in 1..200 {
                let t = i as f64 / 200.0;
                let l = sch.log_snr(t);
                assert!(
                    l < prev,
                    "{}: log snr not decreasing at t = {t}",
                    sch.name()
                );
                prev = l;
            }
        }
        let f = Schedule::rectified_flow();
        assert_eq!(f.coeffs(0.25), (0.75, 0.25));
        let ve = Schedule::ve_default();
        assert!((ve.sigma(0.0) - 0.01).abs() < 1e-15 && (ve.sigma(1.0) - 50.0).abs() < 1e-12);
        let c = Schedule::vp_cosine();
        assert!((c.alpha(0.0) - 1.0).abs() < 1e-15 && c.alpha(1.0) < 1e-9);
    }

    #[test]
    fn derivatives_match_finite_differences() {
        for sch in all() {
            for &t in &[0.1234, 0.5071, 0.8765] {
                let h = 1e-7;
                let (a1, s1) = sch.coeffs(t - h);
                let (a2, s2) = sch.coeffs(t + h);
                let (da, ds) = sch.derivs(t);
                let fa = (a2 - a1) / (2.0 * h);
                let fs = (s2 - s1) / (2.0 * h);
                // central differences in f64: error ~ h^2 |a'''| + eps/h ~ 1e-8 relative
                assert!(
                    (fa - da).abs() <= 1e-5 * (1.0 + da.abs()),
                    "{} a' at {t}: {fa} vs {da}",
                    sch.name()
                );
                assert!(
                    (fs - ds).abs() <= 1e-5 * (1.0 + ds.abs()),
                    "{} s' at {t}: {fs} vs {ds}",
                    sch.name()
                );
            }
        }
    }

    #[test]
    fn log_snr_inverse_round_trips() {
        for sch in all() {
            for i in 1..100 {
                let t = i as f64 / 100.0;
                let back = sch.t_for_log_snr(sch.log_snr(t));
                assert!(
                    (back - t).abs() < 1e-9,
                    "{}: t = {t} came back as {back}",
                    sch.name()
                );
            }
            assert_eq!(sch.t_for_log_snr(f64::INFINITY), 0.0);
            assert_eq!(sch.t_for_log_snr(f64::NEG_INFINITY), 1.0);
        }
    }

    #[test]
    fn snr_matching_between_paths() {
        let vp = Schedule::vp_linear();
        let flow = Schedule::rectified_flow();
        let ve = Schedule::ve_default();
        for &t in &[0.05, 0.3, 0.6, 0.9] {
            let (t2, c) = flow.t_on_other_path(t, &vp);
            let (a, s) = flow.coeffs(t);
            let (a2, s2) = vp.coeffs(t2);
            assert!(
                ((a / s) - (a2 / s2)).abs() < 1e-9 * (a / s),
                "ratio at t = {t}"
            );
            // x_vp = c x_flow means a2 = c a and s2 = c s.
            assert!((a2 - c * a).abs() < 1e-9 && (s2 - c * s).abs() < 1e-9);
            // and back
            let (t3, c3) = vp.t_on_other_path(t2, &flow);
            assert!((t3 - t).abs() < 1e-9 && (c3 * c - 1.0).abs() < 1e-9);
            // VE sees x / a at sigma = s / a
            let (t4, c4) = flow.t_on_other_path(t, &ve);
            assert!((ve.sigma(t4) - s / a).abs() < 1e-9 * (s / a) && (c4 - 1.0 / a).abs() < 1e-9);
        }
        // Beyond the VP path's noisiest point (flow t = 1, a = 0) the time clamps to 1.
        let (t2, c) = flow.t_on_other_path(1.0, &vp);
        assert_eq!(t2, 1.0);
        assert!((c - vp.sigma(1.0)).abs() < 1e-12);
    }

    #[test]
    fn parameterisations_agree_and_round_trip() {
        let x0 = ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| {
            (i[0] as f32 - 1.0) * 0.7 + i[1] as f32 * 0.3
        });
        let eps = ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| ((i[0] * 4 + i[1]) as f32 * 1.3).sin());
        let params = [Param::Eps, Param::X0, Param::Score, Param::Velocity];
        for sch in all() {
            for &t in &[0.2, 0.55, 0.9] {
                let (a, s) = sch.coeffs(t);
                let (da, ds) = sch.derivs(t);
                let x = Zip::from(&x0)
                    .and(&eps)
                    .map_collect(|&u, &e| (a * u as f64 + s * e as f64) as f32);
                // Each parameterisation written out from its definition.
                let truth = |p: Param| -> ArrayD<f32> {
                    Zip::from(&x0).and(&eps).map_collect(|&u, &e| {
                        let (u, e) = (u as f64, e as f64);
                        (match p {
                            Param::Eps => e,
                            Param::X0 => u,
                            Param::Score => -e / s,
                            Param::Velocity => da * u + ds * e,
                        }) as f32
                    })
                };
                for &from in &params {
                    for &to in &params {
                        let got = sch
                            .convert(t, x.view(), truth(from).view(), from, to)
                            .unwrap();
                        let want = truth(to);
                        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                        let err = (&got - &want).iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        // f32 data; the conversion coefficients reach ~1/s^2 ~ 30 at the
                        // smallest s here, so allow a few hundred ulps of the largest value.
                        assert!(
                            err <= 2e-4 * scale,
                            "{} t={t} {from:?}->{to:?}: err {err}",
                            sch.name()
                        );
                    }
                }
            }
        }
        // Rectified flow: velocity is eps - x0.
        let f = Schedule::rectified_flow();
        let x = Zip::from(&x0)
            .and(&eps)
            .map_collect(|&u, &e| 0.6 * u + 0.4 * e);
        let v = f
            .convert(0.4, x.view(), x0.view(), Param::X0, Param::Velocity)
            .unwrap();
        let want = &eps - &x0;
        assert!((&v - &want).iter().all(|d| d.abs() < 1e-5));
    }

    #[test]
    fn grids_and_validation() {
        let vp = Schedule::vp_linear();
        let k = vp.knots(1000);
        assert_eq!(k.len(), 1001);
        assert!(
            (k[0].t - 1.0).abs() < 1e-12 && (k[999].t - 1e-3).abs() < 1e-12 && k[1000].is_clean()
        );
        let f = Schedule::rectified_flow().knots(4);
        let ts: Vec<f64> = f.iter().map(|k| k.t).collect();
        assert_eq!(ts, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        assert_eq!(Schedule::ve_default().knots(1).len(), 2);
        // logSNR grid: starts at t = 1, ends clean, equal steps in lambda (past the first
        // knot where the path starts at a = 0).
        for sch in [
            Schedule::vp_linear(),
            Schedule::rectified_flow(),
            Schedule::vp_cosine(),
        ] {
            let k = sch.knots_log_snr(12);
            assert_eq!(k.len(), 13);
            assert!(k[0].t == 1.0 && k[12].is_clean());
            assert!(k.windows(2).all(|w| w[1].t < w[0].t), "{}", sch.name());
            let l: Vec<f64> = k[1..12].iter().map(|k| k.log_snr()).collect();
            let d0 = l[1] - l[0];
            assert!(
                l.windows(2)
                    .all(|w| ((w[1] - w[0]) - d0).abs() < 1e-6 * d0.abs()),
                "{}: {l:?}",
                sch.name()
            );
        }
        assert_eq!(Schedule::vp_linear().knots_log_snr(1).len(), 2);
        assert!(Schedule::ve(1.0, 0.5).is_err());
        assert!(Schedule::vp_linear_with(0.0, 0.02, 1000).is_err());
        assert!(Schedule::vp_linear_with(1e-4, 0.02, 1).is_err());
        assert!(Schedule::from_name("nope").is_err());
        assert_eq!(Schedule::from_name("flow").unwrap().name(), "flow");
    }
}
