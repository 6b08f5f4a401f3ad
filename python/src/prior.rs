//! Priors from Python: a shipped or imported network (`Prior.open`), or a Python denoiser
//! (`CallablePrior`) that every sampler calls through the [`Denoiser`] interface.

use std::sync::{Arc, Mutex};

use ndarray::{ArrayD, ArrayViewD, Axis};
use posterior::prior::{check_batch, Denoiser, NetworkPrior, PriorInfo, Pullback, Schedule};
use posterior::sample::posterior::{Prior as PosteriorPrior, ResidentRun};
use posterior::sample::{CalibrationTable, Outcome, Problem};
use posterior::{Error, Result};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::convert::{array_in, array_out, as_batch, OrPy};

/// The first Python exception a callback raised during a reconstruction, kept so that it
/// reaches the caller as it was raised (type, message, traceback).
#[derive(Default)]
pub struct Pending(Mutex<Option<PyErr>>);

impl Pending {
    /// Keeps `e` (the first one only) and returns the library error standing for it.
    pub fn keep(&self, e: PyErr, what: &str) -> Error {
        let msg = format!("{what}: {e}");
        let interrupted =
            Python::attach(|py| e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py));
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(e);
        }
        if interrupted {
            Error::Interrupted(msg)
        } else {
            Error::Invalid(msg)
        }
    }
    /// The kept exception, if any (taking it).
    pub fn take(&self) -> Option<PyErr> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

/// A Python callable `f(x_t, t) -> x0_hat` (and optionally `vjp(x_t, t, v)`) as a denoiser.
pub struct PyDenoiser {
    f: Py<PyAny>,
    vjp: Option<Py<PyAny>>,
    schedule: Schedule,
    info: PriorInfo,
    pub pending: Arc<Pending>,
}

impl PyDenoiser {
    /// `f(x, t)` on a batch with one time; `v` adds the cotangent (the VJP callable).
    fn call<'py>(
        &self,
        py: Python<'py>,
        func: &Py<PyAny>,
        x: ArrayViewD<f32>,
        t: f32,
        v: Option<ArrayViewD<f32>>,
        what: &str,
    ) -> Result<Bound<'py, PyAny>> {
        let xs = array_out(py, x.to_owned());
        let out = match v {
            None => func.call1(py, (xs, t as f64)),
            Some(v) => func.call1(py, (xs, t as f64, array_out(py, v.to_owned()))),
        };
        out.map(|o| o.into_bound(py))
            .map_err(|e| self.pending.keep(e, what))
    }

    /// An array returned by a callback, checked against the batch's shape.
    fn returned(&self, obj: &Bound<'_, PyAny>, shape: &[usize], what: &str) -> Result<ArrayD<f32>> {
        let a = array_in(obj, what).map_err(|e| self.pending.keep(e, what))?;
        if a.shape() != shape {
            return Err(Error::Shape(format!(
                "{}: {what} returned shape {:?}, expected {shape:?} (the shape of x_t)",
                self.info.name,
                a.shape()
            )));
        }
        Ok(a)
    }

    /// Runs `each(x_group, t)` over groups of samples sharing a time (samplers give one
    /// time per batch: one call), and reassembles the batch.
    fn by_time(
        &self,
        x_t: ArrayViewD<f32>,
        t: &[f32],
        mut each: impl FnMut(ArrayViewD<f32>, f32, std::ops::Range<usize>) -> Result<Vec<ArrayD<f32>>>,
    ) -> Result<Vec<ArrayD<f32>>> {
        if t.iter().all(|v| *v == t[0]) {
            return each(x_t, t[0], 0..t.len());
        }
        let mut parts: Vec<Vec<ArrayD<f32>>> = Vec::new();
        for (i, &ti) in t.iter().enumerate() {
            let xi = x_t.slice_axis(Axis(0), (i..i + 1).into());
            parts.push(each(xi, ti, i..i + 1)?);
        }
        let k = parts.first().map_or(0, |p| p.len());
        (0..k)
            .map(|j| {
                let views: Vec<_> = parts.iter().map(|p| p[j].view()).collect();
                ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Shape(e.to_string()))
            })
            .collect()
    }
}

impl Denoiser for PyDenoiser {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn info(&self) -> &PriorInfo {
        &self.info
    }
    fn x0(&self, x_t: ArrayViewD<f32>, t: &[f32]) -> Result<ArrayD<f32>> {
        check_batch(&self.info, &x_t, t, "x_t")?;
        let mut out = self.by_time(x_t, t, |x, ti, _| {
            Python::attach(|py| {
                let r = self.call(py, &self.f, x.view(), ti, None, "the denoiser f(x_t, t)")?;
                Ok(vec![self.returned(
                    &r,
                    x.shape(),
                    "the denoiser f(x_t, t)",
                )?])
            })
        })?;
        Ok(out.remove(0))
    }
    fn x0_vjp(
        &self,
        x_t: ArrayViewD<f32>,
        t: &[f32],
        v: ArrayViewD<f32>,
    ) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
        check_batch(&self.info, &x_t, t, "x_t")?;
        let Some(vjp) = &self.vjp else {
            return Err(Error::Unsupported(format!(
                "{}: this sampler differentiates through the denoiser; give CallablePrior(..., vjp=...)",
                self.info.name
            )));
        };
        let mut out = self.by_time(x_t, t, |x, ti, rows| {
            let vi = v.slice_axis(Axis(0), rows.into());
            Python::attach(|py| {
                let what = "the VJP vjp(x_t, t, v)";
                let r = self.call(py, vjp, x.view(), ti, Some(vi), what)?;
                // `vjp` returns the product, or the pair (x0_hat, product).
                if let Ok(pair) = r.cast::<PyTuple>() {
                    if pair.len() == 2 {
                        let x0 = self.returned(
                            &pair.get_item(0).map_err(|e| self.pending.keep(e, what))?,
                            x.shape(),
                            what,
                        )?;
                        let g = self.returned(
                            &pair.get_item(1).map_err(|e| self.pending.keep(e, what))?,
                            x.shape(),
                            what,
                        )?;
                        return Ok(vec![x0, g]);
                    }
                }
                let g = self.returned(&r, x.shape(), what)?;
                let r0 = self.call(py, &self.f, x.view(), ti, None, "the denoiser f(x_t, t)")?;
                let x0 = self.returned(&r0, x.shape(), "the denoiser f(x_t, t)")?;
                Ok(vec![x0, g])
            })
        })?;
        let g = out.remove(1);
        Ok((out.remove(0), g))
    }
}

impl PosteriorPrior for PyDenoiser {}

/// A prior with Ctrl-C: before every denoiser evaluation, Python's signal handlers run
/// (`KeyboardInterrupt` stops the reconstruction with [`Error::Interrupted`]).
pub struct Interruptible {
    pub inner: Arc<dyn PosteriorPrior>,
    pub pending: Arc<Pending>,
}

impl Interruptible {
    fn check(&self) -> Result<()> {
        Python::attach(|py| py.check_signals()).map_err(|e| self.pending.keep(e, "interrupted"))
    }
}

impl Denoiser for Interruptible {
    fn schedule(&self) -> &Schedule {
        self.inner.schedule()
    }
    fn info(&self) -> &PriorInfo {
        self.inner.info()
    }
    fn x0(&self, x_t: ArrayViewD<f32>, t: &[f32]) -> Result<ArrayD<f32>> {
        self.check()?;
        self.inner.x0(x_t, t)
    }
    fn x0_vjp(
        &self,
        x_t: ArrayViewD<f32>,
        t: &[f32],
        v: ArrayViewD<f32>,
    ) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
        self.check()?;
        self.inner.x0_vjp(x_t, t, v)
    }
    fn x0_pullback<'a>(
        &'a self,
        x_t: ArrayViewD<f32>,
        t: &[f32],
    ) -> Result<(ArrayD<f32>, Pullback<'a>)> {
        self.check()?;
        self.inner.x0_pullback(x_t, t)
    }
}

impl PosteriorPrior for Interruptible {
    fn calibration(&self) -> Result<Option<CalibrationTable>> {
        self.inner.calibration()
    }
    fn resident(&self, problem: &Problem, run: &ResidentRun) -> Result<Option<Outcome>> {
        self.inner.resident(problem, run)
    }
}

/// What a prior is: its name, intensity range, sample shape and noising path.
#[pyclass(module = "posterior", name = "PriorInfo", frozen, get_all)]
pub struct Info {
    /// A short description.
    pub name: String,
    /// The intensity range the prior works in, `(lo, hi)` (usually `(-1.0, 1.0)`).
    pub range: (f32, f32),
    /// The shape of one sample, `(C, H, W)`.
    pub shape: Vec<usize>,
    /// The noising path its times refer to (`vp`, `cosine`, `ve`, `flow`).
    pub schedule: String,
}

#[pymethods]
impl Info {
    fn __repr__(&self) -> String {
        format!(
            "PriorInfo(name={:?}, range={:?}, shape={:?}, schedule={:?})",
            self.name, self.range, self.shape, self.schedule
        )
    }
}

/// A diffusion prior: a denoiser on a noising path with its intensity range and sample
/// shape. `Prior.open("brain-mri")` loads a shipped or imported network;
/// `CallablePrior(f, ...)` wraps your own denoiser.
#[pyclass(module = "posterior", subclass)]
pub struct Prior {
    pub inner: Arc<dyn PosteriorPrior>,
    /// The callbacks' exception slot, for a Python prior.
    pub pending: Arc<Pending>,
    /// Whether the prior calls Python (`CallablePrior`): it then holds the GIL itself.
    pub calls_python: bool,
    /// The VJP is available (native networks always; a Python prior with `vjp=`).
    pub has_vjp: bool,
}

/// Opens a network prior by name or directory on `device` (`auto`, `cpu`, `cuda`).
pub fn open_network(name: &str, device: &str) -> posterior::Result<NetworkPrior> {
    let backend = posterior::gpu::select(device.parse()?)
        .map_err(|e| Error::Device(format!("device={device}: no GPU backend available: {e}")))?;
    let mut prior = NetworkPrior::open(name)?;
    match prior.use_backend(&backend) {
        // `auto` keeps a prior the GPU path does not compute on the CPU.
        Err(Error::Unsupported(_)) if device == "auto" => {}
        other => other?,
    }
    Ok(prior)
}

#[pymethods]
impl Prior {
    /// Opens a shipped prior by name (`brain-mri`, `ct-ellipses`, `fmnist-32`) or a prior
    /// directory (a `model.json` card with weights, or a diffusers UNet directory), on
    /// `device` `"cpu"` (default), `"cuda"` or `"auto"`.
    #[staticmethod]
    #[pyo3(signature = (name, device = "cpu"))]
    fn open(py: Python<'_>, name: &str, device: &str) -> PyResult<Prior> {
        let p = py.detach(|| open_network(name, device)).or_py()?;
        Ok(Prior {
            inner: Arc::new(p),
            pending: Arc::default(),
            calls_python: false,
            has_vjp: true,
        })
    }

    /// Name, intensity range, sample shape `(C, H, W)` and noising path.
    #[getter]
    fn info(&self) -> Info {
        let i = self.inner.info();
        Info {
            name: i.name.clone(),
            range: i.range,
            shape: i.sample_shape.clone(),
            schedule: self.inner.schedule().name().to_string(),
        }
    }

    /// Tweedie's estimate `x0_hat = E[x0 | x_t]` of a batch `x_t` `(N, C, H, W)` (or one
    /// sample `(C, H, W)`) at time `t` in [0, 1] on the prior's path, in the prior's
    /// intensity range.
    fn denoise(&self, py: Python<'_>, x_t: &Bound<'_, PyAny>, t: f32) -> PyResult<Py<PyAny>> {
        let x = array_in(x_t, "x_t")?;
        let sample_ndim = self.inner.info().sample_shape.len();
        let (x, single) = as_batch(x, sample_ndim);
        let ts = vec![t; x.shape()[0]];
        let r = self.run(py, |d| d.x0(x.view(), &ts))?;
        Ok(array_out(py, unbatch(r, single)))
    }

    /// The vector-Jacobian product `v^T d x0_hat / d x_t` at `(x_t, t)` (`v` shaped like
    /// `x_t`): what DPS and the twisted SMC samplers differentiate through.
    fn vjp(
        &self,
        py: Python<'_>,
        x_t: &Bound<'_, PyAny>,
        t: f32,
        v: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let sample_ndim = self.inner.info().sample_shape.len();
        let (x, single) = as_batch(array_in(x_t, "x_t")?, sample_ndim);
        let (v, _) = as_batch(array_in(v, "v")?, sample_ndim);
        if v.shape() != x.shape() {
            return Err(PyValueError::new_err(format!(
                "v has shape {:?}, expected the shape of x_t {:?}",
                v.shape(),
                x.shape()
            )));
        }
        let ts = vec![t; x.shape()[0]];
        let (_, g) = self.run(py, |d| d.x0_vjp(x.view(), &ts, v.view()))?;
        Ok(array_out(py, unbatch(g, single)))
    }

    fn __repr__(&self) -> String {
        format!("Prior({:?})", self.inner.info().name)
    }
}

impl Prior {
    /// Runs `f` on the denoiser: without the GIL for a native prior; with it for a Python
    /// callable (which calls back into Python). An exception raised inside the callable
    /// comes back as raised.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&dyn PosteriorPrior) -> Result<T> + Send,
    ) -> PyResult<T> {
        let inner = self.inner.clone();
        let r = if self.calls_python {
            f(inner.as_ref())
        } else {
            py.detach(|| f(inner.as_ref()))
        };
        match (r, self.pending.take()) {
            (Err(_), Some(e)) => Err(e),
            (r, _) => r.or_py(),
        }
    }
}

/// One sample back from a batch of one, when the caller passed one sample.
fn unbatch(a: ArrayD<f32>, single: bool) -> ArrayD<f32> {
    if single {
        a.index_axis_move(Axis(0), 0)
    } else {
        a
    }
}

/// The noising path called `name` with `steps` training steps.
fn schedule_named(name: &str, steps: usize) -> PyResult<Schedule> {
    match name {
        "linear" | "vp" => Schedule::vp_linear_with(1e-4, 0.02, steps).or_py(),
        "cosine" => Ok(Schedule::vp_cosine()),
        "ve" => Ok(Schedule::ve_default()),
        "flow" | "rectified-flow" => Ok(Schedule::rectified_flow()),
        other => Err(PyValueError::new_err(format!(
            "schedule={other:?}: expected \"linear\" (VP, betas 1e-4..0.02 over `steps`), \"cosine\", \"ve\" or \"flow\""
        ))),
    }
}

/// Your denoiser as a prior: `f(x_t, t)` takes a float32 batch `(N, C, H, W)` on the noising
/// path `x_t = a(t) x0 + s(t) eps` and the time `t` (a float in [0, 1]), and returns the
/// Tweedie estimate `x0_hat` of the same shape in `range` (a numpy array, or anything
/// `numpy.asarray` takes: a CPU torch tensor). `schedule`: `"linear"` (VP with linear betas
/// 1e-4..0.02 over `steps`, DDPM/ADM's: `t = (n + 1) / steps` is training step `n`),
/// `"cosine"`, `"ve"` or `"flow"` (rectified flow `a = 1 - t`, `s = t`). `vjp(x_t, t, v)`,
/// optional, returns `v^T d x0_hat / d x_t` (or the pair `(x0_hat, product)`); DPS and the
/// twisted SMC samplers (`smc`, `tds`) need it. Every sampler runs with it.
#[pyclass(module = "posterior", extends = Prior)]
pub struct CallablePrior;

#[pymethods]
impl CallablePrior {
    #[new]
    #[pyo3(signature = (f, shape, schedule = "linear", steps = 1000, range = (-1.0, 1.0), vjp = None, name = "callable"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        f: Py<PyAny>,
        shape: Vec<usize>,
        schedule: &str,
        steps: usize,
        range: (f32, f32),
        vjp: Option<Py<PyAny>>,
        name: &str,
        py: Python<'_>,
    ) -> PyResult<PyClassInitializer<CallablePrior>> {
        if !f.bind(py).is_callable() || vjp.as_ref().is_some_and(|v| !v.bind(py).is_callable()) {
            return Err(PyValueError::new_err(
                "CallablePrior: f (and vjp, when given) must be callable",
            ));
        }
        if shape.len() != 3 || shape.contains(&0) {
            return Err(PyValueError::new_err(format!(
                "CallablePrior: shape is one sample's (C, H, W) with positive sizes; got {shape:?}"
            )));
        }
        if !(range.0.is_finite() && range.1.is_finite() && range.0 < range.1) {
            return Err(PyValueError::new_err(format!(
                "CallablePrior: range must be (lo, hi) with lo < hi; got {range:?}"
            )));
        }
        let pending = Arc::new(Pending::default());
        let has_vjp = vjp.is_some();
        let d = PyDenoiser {
            f,
            vjp,
            schedule: schedule_named(schedule, steps)?,
            info: PriorInfo {
                name: name.to_string(),
                range,
                sample_shape: shape,
            },
            pending: pending.clone(),
        };
        Ok(PyClassInitializer::from(Prior {
            inner: Arc::new(d),
            pending,
            calls_python: true,
            has_vjp,
        })
        .add_subclass(CallablePrior))
    }
}
