//! Classical reconstruction of a measurement through a built forward model: the one entry
//! point that the CLI's `reconstruct`, the demo and the benchmarks share.

use std::fmt;
use std::str::FromStr;

use ndarray::{ArrayD, ArrayViewD};
use posterior_operators::{LinearOperator, Operator};

use crate::error::{Error, Result};
use crate::solve::{self, IterCallback, TvOptions};
use crate::spec::Physics;

/// A classical reconstruction method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `c A^T y` (zero-filling for MRI, back-projection for CT), `c` fitted to `y`.
    Adjoint,
    /// Least squares by conjugate gradients on the normal equations (Tikhonov `lambda`).
    Cg,
    /// Total-variation regularised least squares (PDHG).
    Tv,
    /// Filtered back-projection (CT only).
    Fbp,
    /// Gradient descent on the data term through the VJP (any model, nonlinear included).
    Gd,
    /// Fienup's hybrid input-output, then error reduction (phase retrieval only).
    Hio,
    /// L-BFGS (argmin) on the data objective through the VJP (any model, nonlinear
    /// included), on the same objective as `gd`.
    Lbfgs,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::Adjoint,
        Method::Cg,
        Method::Tv,
        Method::Fbp,
        Method::Gd,
        Method::Hio,
        Method::Lbfgs,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Method::Adjoint => "adjoint",
            Method::Cg => "cg",
            Method::Tv => "tv",
            Method::Fbp => "fbp",
            Method::Gd => "gd",
            Method::Hio => "hio",
            Method::Lbfgs => "lbfgs",
        }
    }
    /// Iterations run when the user gives none.
    pub fn default_iters(self) -> usize {
        match self {
            Method::Adjoint | Method::Fbp => 0,
            Method::Cg => 30,
            Method::Tv => 300,
            Method::Gd => 200,
            Method::Hio => 1000,
            Method::Lbfgs => 100,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
                Error::Invalid(format!(
                    "unknown method `{s}`: expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// Settings of a reconstruction.
#[derive(Clone, Debug)]
pub struct ReconOptions {
    pub method: Method,
    /// Iterations; the method's default when `None`.
    pub iters: Option<usize>,
    /// Regularisation weight: Tikhonov for `cg` (default 0), relative TV weight for `tv`
    /// (default 1e-3, see [`solve::tv`]).
    pub lambda: Option<f32>,
    /// The FBP filter: ramp, shepp-logan, cosine or hann.
    pub filter: String,
    /// Constrain to `x >= 0` where the method supports it (tv, gd).
    pub nonnegative: bool,
    /// Seed for methods with a random start (hio).
    pub seed: u64,
    /// The data objective of `gd` and `lbfgs`: least squares (Gaussian) or the Poisson
    /// negative log-likelihood of counts (Beer-Lambert CT). With Poisson, both run on the
    /// nonlinear model itself instead of its linearisation.
    pub likelihood: solve::Likelihood,
    /// Return a result holding NaN or infinite values instead of failing (for debugging a
    /// method; `--allow-nonfinite`).
    pub allow_nonfinite: bool,
}

impl ReconOptions {
    pub fn new(method: Method) -> Self {
        ReconOptions {
            method,
            iters: None,
            lambda: None,
            filter: "ramp".into(),
            nonnegative: false,
            seed: 0,
            likelihood: solve::Likelihood::Gaussian,
            allow_nonfinite: false,
        }
    }
    pub fn iters(&self) -> usize {
        self.iters.unwrap_or(self.method.default_iters())
    }

    /// Checks the settings the same way for every method: iterations at least 1 and within
    /// the step cap for the iterative methods (and not given to the direct ones), `lambda`
    /// a finite nonnegative number for the methods that take one (cg, tv) and not given to
    /// the others.
    pub fn validate(&self) -> Result<()> {
        let m = self.method;
        if let Some(n) = self.iters {
            if m.default_iters() == 0 {
                return Err(Error::Invalid(format!(
                    "method `{m}` is direct: --iters applies to cg, tv, gd and hio"
                )));
            }
            if n == 0 {
                return Err(Error::Invalid(format!(
                    "--iters 0: method `{m}` needs at least 1 iteration (default {})",
                    m.default_iters()
                )));
            }
            crate::limits::check_steps("--iters", n)?;
        }
        if let Some(l) = self.lambda {
            if !matches!(m, Method::Cg | Method::Tv) {
                return Err(Error::Invalid(format!(
                    "method `{m}` has no regularisation weight: --lambda applies to cg and tv"
                )));
            }
            if !(l.is_finite() && l >= 0.0) {
                return Err(Error::Invalid(format!(
                    "--lambda {l}: the {} weight must be a finite nonnegative number",
                    if m == Method::Cg { "Tikhonov" } else { "TV" }
                )));
            }
            crate::limits::check_number("--lambda", l as f64)?;
        }
        Ok(())
    }
}

/// Refuses a reconstruction holding NaN or infinite values, naming the method that made it
/// (one pass over the result, made once at the end of a run; `allow` keeps the result for
/// debugging and only warns).
pub fn check_output(method: &str, x: ArrayViewD<f32>, allow: bool) -> Result<()> {
    let (nan, inf) = x.iter().fold((0usize, 0usize), |(n, i), v| {
        (n + v.is_nan() as usize, i + v.is_infinite() as usize)
    });
    if nan + inf == 0 {
        return Ok(());
    }
    let what = format!(
        "{method} produced {nan} NaN and {inf} infinite value(s) out of {}",
        x.len()
    );
    if allow {
        eprintln!("warning: {what} (kept: --allow-nonfinite)");
        return Ok(());
    }
    Err(Error::NonFinite(format!(
        "{what}: the run diverged or its input overflowed f32; nothing written \
         (--allow-nonfinite keeps such a result for debugging)"
    )))
}

/// Reconstructs the operator's domain array from `y` with a classical method.
///
/// A nonlinear model that linearises (Beer-Lambert CT) is first linearised, so every linear
/// method applies to it; phase retrieval takes `hio` or `gd`.
pub fn reconstruct(
    physics: &Physics,
    y: ArrayViewD<f32>,
    opts: &ReconOptions,
    on_iter: IterCallback,
) -> Result<ArrayD<f32>> {
    opts.validate()?;
    let range = physics.operator.range_shape();
    if y.shape() != range {
        return Err(Error::Shape(format!(
            "the measurement has shape {:?}, but {} gives measurements of shape {range:?} \
             (does the sidecar's image_shape match the image that was measured?)",
            y.shape(),
            physics.operator.name()
        )));
    }
    let x = run_method(physics, y, opts, on_iter)?;
    check_output(opts.method.name(), x.view(), opts.allow_nonfinite)?;
    Ok(x)
}

fn run_method(
    physics: &Physics,
    y: ArrayViewD<f32>,
    opts: &ReconOptions,
    on_iter: IterCallback,
) -> Result<ArrayD<f32>> {
    let linearised;
    let (linear, y_lin): (Option<&dyn LinearOperator>, ArrayViewD<f32>) = match &physics.operator {
        Operator::Linear(op) => (Some(op.as_ref()), y.view()),
        Operator::Nonlinear(op) => match op.linearize_measurement(y.view()) {
            Some((lin, y2)) => {
                linearised = y2;
                (Some(lin), linearised.view())
            }
            None => (None, y.view()),
        },
    };
    let needs_linear = |name: &str| {
        Error::Invalid(format!(
            "method `{name}` needs a linear forward model; {} is nonlinear: use --method gd{}",
            physics.operator.name(),
            if physics.family.name == "phase" {
                " or hio"
            } else {
                ""
            }
        ))
    };
    let iters = opts.iters();
    match opts.method {
        Method::Adjoint => {
            let op = linear.ok_or_else(|| needs_linear("adjoint"))?;
            solve::scaled_adjoint(op, y_lin)
        }
        Method::Cg => {
            let op = linear.ok_or_else(|| needs_linear("cg"))?;
            let lambda = opts.lambda.unwrap_or(0.0);
            Ok(solve::least_squares(op, y_lin, None, lambda, iters, on_iter)?.0)
        }
        Method::Tv => {
            let op = linear.ok_or_else(|| needs_linear("tv"))?;
            let mut tv = TvOptions {
                iters,
                nonnegative: opts.nonnegative,
                ..TvOptions::default()
            };
            if let Some(l) = opts.lambda {
                tv.lambda = l;
            }
            solve::tv_least_squares(op, y_lin, &tv, on_iter)
        }
        Method::Fbp => {
            if physics.family.name != "ct" {
                return Err(Error::Invalid(format!(
                    "method `fbp` is filtered back-projection for CT; this measurement is `{}`",
                    physics.spec
                )));
            }
            // fbp_spec rebuilds the geometry from the spec and linearises Beer-Lambert
            // counts itself, so it takes the raw measurement.
            let filter = crate::solve::fbp::Filter::parse(&opts.filter)?;
            crate::solve::fbp::fbp_spec(&physics.spec, &physics.context, y, filter)
        }
        Method::Gd | Method::Lbfgs => descend(physics, linear, y.view(), y_lin, opts, on_iter),
        Method::Hio => {
            if physics.family.name != "phase" {
                return Err(Error::Invalid(format!(
                    "method `hio` is for phase retrieval; this measurement is `{}`",
                    physics.spec
                )));
            }
            crate::spec::phase::hio(physics, y, iters, opts.seed)
        }
    }
}

/// `gd` and `lbfgs`: on the linearised model with least squares where the model
/// linearises and the likelihood is Gaussian (as before), otherwise on the model itself
/// from [`random_start`] (phase retrieval) or zero (Beer-Lambert: `x = 0` is the
/// unattenuated start).
fn descend(
    physics: &Physics,
    linear: Option<&dyn LinearOperator>,
    y: ArrayViewD<f32>,
    y_lin: ArrayViewD<f32>,
    opts: &ReconOptions,
    on_iter: IterCallback,
) -> Result<ArrayD<f32>> {
    let iters = opts.iters();
    let lbfgs = opts.method == Method::Lbfgs;
    if lbfgs && opts.nonnegative {
        return Err(Error::Unsupported(
            "lbfgs is unconstrained: --nonneg applies to gd and tv".into(),
        ));
    }
    let run = |obj: &solve::DataObjective, x0: ArrayD<f32>, cb: IterCallback| {
        if lbfgs {
            Ok(solve::lbfgs(obj, x0, iters, None, cb)?.0)
        } else {
            Ok(solve::gradient_descent_objective(obj, x0, iters, opts.nonnegative, cb)?.0)
        }
    };
    let linearised = matches!(physics.operator, Operator::Nonlinear(_));
    match linear {
        Some(op) if linearised && opts.likelihood == solve::Likelihood::Gaussian => {
            let obj = solve::DataObjective::linear(op, y_lin, solve::Likelihood::Gaussian)?;
            run(
                &obj,
                ArrayD::zeros(ndarray::IxDyn(op.domain_shape())),
                on_iter,
            )
        }
        _ => {
            let obj = solve::DataObjective::new(&physics.operator, y.view(), opts.likelihood)?;
            let x0 = if physics.family.name == "phase" {
                random_start(&physics.operator, y.view(), opts.seed)?
            } else {
                ArrayD::zeros(ndarray::IxDyn(physics.operator.domain_shape()))
            };
            run(&obj, x0, on_iter)
        }
    }
}

/// PSNR, SSIM and NRMSE of a reconstruction against the truth.
#[derive(Clone, Copy, Debug)]
pub struct Quality {
    pub psnr: f64,
    pub ssim: f64,
    pub nrmse: f64,
}

impl Quality {
    /// Compares `x` with `truth` (same shape, `(C, H, W)` or `(H, W)`) for a data range.
    pub fn compare(
        x: ndarray::ArrayView3<f32>,
        truth: ndarray::ArrayView3<f32>,
        data_range: f64,
    ) -> Result<Quality> {
        let (x, t) = (x.into_dyn(), truth.into_dyn());
        Ok(Quality {
            psnr: crate::metrics::psnr(x.view(), t.view(), data_range)?,
            ssim: crate::metrics::ssim(x.view(), t.view(), data_range)?,
            nrmse: crate::metrics::nrmse(x.view(), t.view())?,
        })
    }
}

/// The start of gradient descent on a nonlinear model: a seeded uniform [0, 1) image scaled
/// so that `||A(x0)|| = ||y||` (exact for a positively homogeneous model such as `|F x|`).
/// Zero would be a poor start: it is a stationary point of `|F x|`.
fn random_start(op: &Operator, y: ArrayViewD<f32>, seed: u64) -> Result<ArrayD<f32>> {
    use rand::Rng;
    let mut rng = posterior_operators::rng::seeded(seed, "gd-start");
    let x0 =
        ArrayD::from_shape_simple_fn(ndarray::IxDyn(op.domain_shape()), || rng.random::<f32>());
    let ax = op.forward(x0.view())?;
    let (na, ny) = (
        posterior_operators::linear::norm(ax.view()),
        posterior_operators::linear::norm(y),
    );
    Ok(if na > 0.0 && ny > 0.0 {
        x0.mapv(|v| v * (ny / na) as f32)
    } else {
        x0
    })
}
