//! `posterior.reconstruct` and `posterior.bench`.

use std::sync::Arc;
use std::time::Duration;

use posterior::prior::default_prior_for;
use posterior::recon::{Method, ReconOptions};
use posterior::reconstruction::{Reconstructed, Reconstruction, SamplerChoice};
use posterior::sample::posterior::Prior as PosteriorPrior;
use posterior::sample::settings::{SettingValue, SettingValues};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::{array_in, array_out, OrPy};
use crate::operator::{noise_in, Operator};
use crate::prior::{open_network, Interruptible, Pending, Prior};

/// A reconstruction: the image and, for samplers, the ensemble and the counts.
#[pyclass(module = "posterior", name = "Result", frozen, get_all)]
pub struct Result_ {
    /// The estimate `(C, H, W)` in the measurement's image units (for MRI the magnitude,
    /// unless `keep_complex`): the posterior mean for samplers.
    pub image: Py<PyAny>,
    /// The pixelwise posterior standard deviation `(C, H, W)` (SMC ensembles, or two or
    /// more samples), else None.
    pub std: Option<Py<PyAny>>,
    /// Every draw `(M, C, H, W)`: the SMC particles, else the samples; None for classical
    /// methods.
    pub particles: Option<Py<PyAny>>,
    /// Denoiser evaluations (batched calls).
    pub nfe: usize,
    /// Vector-Jacobian products through the denoiser.
    pub vjps: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// The method's or sampler's description.
    pub label: String,
    /// The image range mapped onto the prior's range, `(lo, hi)`.
    pub image_range: (f32, f32),
    /// Whether a time limit stopped the sampler early.
    pub stopped_early: bool,
}

#[pymethods]
impl Result_ {
    fn __repr__(&self) -> String {
        format!(
            "Result({}, nfe={}, vjps={}, seconds={:.2})",
            self.label, self.nfe, self.vjps, self.seconds
        )
    }
}

fn result_out(py: Python<'_>, r: Reconstructed) -> Result_ {
    Result_ {
        image: array_out(py, r.image),
        std: r.std.map(|s| array_out(py, s)),
        particles: r.particles.map(|p| array_out(py, p)),
        nfe: r.nfe,
        vjps: r.vjps,
        seconds: r.seconds,
        label: r.label,
        image_range: r.image_range,
        stopped_early: r.stopped_early,
    }
}

/// Sampler settings from a dict of numbers and booleans.
fn settings_in(settings: Option<&Bound<'_, PyDict>>) -> PyResult<SettingValues> {
    let mut out = SettingValues::new();
    let Some(d) = settings else {
        return Ok(out);
    };
    for (k, v) in d.iter() {
        let key: String = k.extract()?;
        let value = if let Ok(b) = v.extract::<bool>() {
            SettingValue::Flag(b)
        } else if let Ok(x) = v.extract::<f64>() {
            SettingValue::Number(x)
        } else {
            return Err(PyValueError::new_err(format!(
                "settings[{key:?}]: expected a number or a bool"
            )));
        };
        out.insert(key, value);
    }
    Ok(out)
}

/// The prior argument: a `Prior` (or `CallablePrior`), a name or directory, or None (the
/// operator family's shipped prior).
fn prior_in(
    py: Python<'_>,
    prior: Option<&Bound<'_, PyAny>>,
    family: &str,
    device: &str,
) -> PyResult<(Arc<dyn PosteriorPrior>, Arc<Pending>, bool)> {
    match prior {
        Some(p) => {
            if let Ok(p) = p.cast::<Prior>() {
                let p = p.borrow();
                return Ok((p.inner.clone(), p.pending.clone(), p.has_vjp));
            }
            if let Ok(name) = p.extract::<String>() {
                let net = py.detach(|| open_network(&name, device)).or_py()?;
                return Ok((Arc::new(net), Arc::default(), true));
            }
            if p.is_callable() {
                return Err(PyValueError::new_err(
                    "prior: a bare callable does not say its shape, path and range: wrap it, CallablePrior(f, shape=(C, H, W), schedule=\"linear\", range=(-1.0, 1.0))",
                ));
            }
            Err(PyValueError::new_err(
                "prior: expected a Prior, a CallablePrior, a prior name (\"brain-mri\") or a prior directory",
            ))
        }
        None => {
            let name = default_prior_for(family);
            let net = py.detach(|| open_network(name, device)).or_py()?;
            Ok((Arc::new(net), Arc::default(), true))
        }
    }
}

/// Reconstructs the measurement `y` of operator `A`.
///
/// Classical: `method` = `"adjoint"`, `"cg"`, `"tv"`, `"fbp"`, `"gd"`, `"hio"`, `"lbfgs"`
/// (`iters`, `lambda_`, `filter`, `nonnegative`). Posterior sampling: `sampler` = `"dps"`,
/// `"reddiff"`, `"flair"`, `"dds"`, `"smc"`, `"tds"`, `"fps"` with `prior` (a `Prior`, a
/// `CallablePrior`, a name such as `"brain-mri"` or a directory; default: the operator
/// family's shipped prior), `steps`, `samples`, `particles`, `settings` (`{"zeta": 0.5}`),
/// `seed`, `time_limit` (seconds) and `device` (`"auto"`, `"cpu"`, `"cuda"`, for a prior
/// opened by name). `noise`: None, a Gaussian sigma per real entry, or a spec
/// (`"complex-gaussian:sigma=0.005"`); samplers take their noise level from it.
/// `image_range`: the image intensity range `(lo, hi)` mapped onto the prior's (default:
/// from the measurement: MRI and CT from their zero-filled / FBP image, others
/// `[min(0, y), max(1, y)]`). The same request gives the same numbers as
/// `posterior reconstruct` with the same seed. Ctrl-C stops it (KeyboardInterrupt).
#[pyfunction]
#[pyo3(signature = (y, A, *, method = None, sampler = None, prior = None, steps = None,
    seed = 0, noise = None, image_range = None, samples = 1, particles = None, settings = None,
    iters = None, lambda_ = None, filter = "ramp", nonnegative = false, device = "auto",
    keep_complex = false, time_limit = None))]
#[allow(non_snake_case, clippy::too_many_arguments)]
pub fn reconstruct(
    py: Python<'_>,
    y: &Bound<'_, PyAny>,
    A: &Operator,
    method: Option<&str>,
    sampler: Option<&str>,
    prior: Option<&Bound<'_, PyAny>>,
    steps: Option<usize>,
    seed: u64,
    noise: Option<&Bound<'_, PyAny>>,
    image_range: Option<(f32, f32)>,
    samples: usize,
    particles: Option<usize>,
    settings: Option<&Bound<'_, PyDict>>,
    iters: Option<usize>,
    lambda_: Option<f32>,
    filter: &str,
    nonnegative: bool,
    device: &str,
    keep_complex: bool,
    time_limit: Option<f64>,
) -> PyResult<Result_> {
    let y = array_in(y, "y")?;
    let noise = noise_in(noise)?;
    let physics = A.physics();
    let family = physics.family.name;
    let mut r = Reconstruction::new(physics, y).noise(noise).seed(seed);
    if let Some((lo, hi)) = image_range {
        r = r.image_range(lo, hi);
    }
    if keep_complex {
        r = r.keep_complex();
    }
    let pending = match (method, sampler) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(PyValueError::new_err(
                "give either method= (a classical method: \"tv\", \"cg\", ...) or sampler= (\"dds\", \"dps\", ...)",
            ))
        }
        (Some(m), None) => {
            let sampler_only = [
                (prior.is_some(), "prior"),
                (steps.is_some(), "steps"),
                (particles.is_some(), "particles"),
                (settings.is_some(), "settings"),
                (samples != 1, "samples"),
                (time_limit.is_some(), "time_limit"),
            ];
            if let Some((_, name)) = sampler_only.iter().find(|(given, _)| *given) {
                return Err(PyValueError::new_err(format!(
                    "{name}= applies to posterior sampling (sampler=...), not to method={m:?}"
                )));
            }
            let method: Method = posterior::Result::<Method>::or_py(m.parse())?;
            r = r.method(ReconOptions {
                iters,
                lambda: lambda_,
                filter: filter.to_string(),
                nonnegative,
                seed,
                ..ReconOptions::new(method)
            });
            None
        }
        (None, Some(s)) => {
            if iters.is_some() || lambda_.is_some() || nonnegative {
                return Err(PyValueError::new_err(
                    "iters=, lambda_= and nonnegative= apply to the classical methods (method=...), not to sampler=",
                ));
            }
            let mut choice = SamplerChoice::named(s);
            if let Some(n) = steps {
                choice = choice.steps(n);
            }
            if let Some(k) = particles {
                choice = choice.particles(k);
            }
            for (k, v) in settings_in(settings)? {
                choice = match v {
                    SettingValue::Number(x) => choice.set(&k, x),
                    SettingValue::Flag(b) => choice.flag(&k, b),
                };
            }
            let (inner, pending, has_vjp) = prior_in(py, prior, family, device)?;
            if choice.needs_vjp() && !has_vjp {
                return Err(PyValueError::new_err(format!(
                    "sampler {s:?} differentiates through the denoiser: give CallablePrior(..., vjp=...), or use a sampler without a VJP (dds, reddiff, flair, fps)"
                )));
            }
            let prior = Interruptible {
                inner,
                pending: pending.clone(),
            };
            r = r.sampler(choice).prior(prior).samples(samples);
            if let Some(limit) = time_limit {
                if !(limit.is_finite() && limit > 0.0) {
                    return Err(PyValueError::new_err(format!(
                        "time_limit: expected a positive number of seconds, got {limit}"
                    )));
                }
                r = r.time_limit(Duration::from_secs_f64(limit));
            }
            Some(pending)
        }
    };
    let out = py.detach(|| r.run());
    match (out, pending.and_then(|p| p.take())) {
        (Err(_), Some(e)) => Err(e),
        (out, _) => Ok(result_out(py, out.or_py()?)),
    }
}

/// Runs a benchmark suite (`problems/NAME.toml`) into the directory `out` (a rerun resumes)
/// and returns its records (one dict per image, task, seed and method: PSNR, SSIM, NRMSE,
/// NFE, seconds, ...), as `posterior bench SUITE --out OUT` writes them to
/// `results.jsonl`. `methods` selects methods by name, `limit` the first images.
#[pyfunction]
#[pyo3(signature = (suite, out, methods = None, limit = None))]
pub fn bench(
    py: Python<'_>,
    suite: std::path::PathBuf,
    out: std::path::PathBuf,
    methods: Option<Vec<String>>,
    limit: Option<usize>,
) -> PyResult<Vec<Py<PyAny>>> {
    let opts = posterior::bench::RunOptions {
        methods,
        limit,
        shard: None,
    };
    let records = py
        .detach(|| -> posterior::Result<Vec<String>> {
            let plan =
                posterior::bench::Plan::new(posterior::bench::SuiteFile::read(&suite)?, &opts)?;
            let summary = posterior::bench::run(&plan, &out, &mut |_| {})?;
            summary
                .records
                .iter()
                .map(|r| {
                    serde_json::to_string(r)
                        .map_err(|e| posterior::Error::Invalid(format!("a record: {e}")))
                })
                .collect()
        })
        .or_py()?;
    let loads = py.import("json")?.getattr("loads")?;
    records
        .into_iter()
        .map(|r| Ok(loads.call1((r,))?.unbind()))
        .collect()
}
