//! Forward operators from Python: built from a spec (the same operator `posterior degrade`
//! builds with that seed) or from arrays (coil maps, masks, kernels).

use ndarray::{Array2, Array3, Ix2, Ix3};
use num_complex::Complex32;
use posterior::physics::{Blur, Boundary, Inpaint, Mri};
use posterior::spec::{self, BuildContext, Embedding, FamilyInfo, Physics};
use posterior_operators::noise::NoiseModel;
use posterior_operators::{adjoint_test, LinearOperatorExt, SharedOperator};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::convert::{array_in, array_out, complex_in, mask_in, OrPy};

/// A forward model `y = A(x)` between float32 arrays: linear with its exact adjoint (blur,
/// inpainting, super-resolution, MRI, CT) or nonlinear with a VJP (phase retrieval,
/// Beer-Lambert CT). `apply` acts on the operator's domain (`domain_shape`: for MRI the
/// complex image `(2, H, W)` (re, im)); `measure` takes an image (`image_shape`, e.g. a real
/// `(1, H, W)` image entering MRI with zero phase).
#[pyclass(module = "posterior", frozen)]
pub struct Operator {
    operator: SharedOperator,
    embedding: Embedding,
    family: &'static FamilyInfo,
    spec: String,
    context: BuildContext,
}

impl Operator {
    /// Keeps a built model; every [`Operator::physics`] shares its operator.
    pub fn from_physics(p: Physics) -> Operator {
        Operator {
            operator: p.operator.into(),
            embedding: p.embedding,
            family: p.family,
            spec: p.spec,
            context: p.context,
        }
    }
    /// The model, for a reconstruction (the operator is shared, not rebuilt).
    pub fn physics(&self) -> Physics {
        Physics {
            operator: self.operator.operator(),
            embedding: self.embedding,
            family: self.family,
            spec: self.spec.clone(),
            context: self.context.clone(),
        }
    }
    fn linear(&self, what: &str) -> PyResult<&dyn posterior_operators::LinearOperator> {
        match &self.operator {
            SharedOperator::Linear(a) => Ok(a.as_ref()),
            SharedOperator::Nonlinear(a) => Err(PyValueError::new_err(format!(
                "{}: {what} needs a linear operator; this one is nonlinear (use vjp)",
                a.name()
            ))),
        }
    }
}

fn shape3(shape: &[usize], what: &str) -> PyResult<Vec<usize>> {
    if shape.len() != 3 || shape.contains(&0) {
        return Err(PyValueError::new_err(format!(
            "{what}: image_shape is (C, H, W) with positive sizes; got {shape:?}"
        )));
    }
    Ok(shape.to_vec())
}

/// A noise model from Python: `None` (no noise), a number (Gaussian sigma per real entry),
/// or a spec (`"complex-gaussian:sigma=0.005"`, `"poisson:scale=1000"`).
pub fn noise_in(noise: Option<&Bound<'_, PyAny>>) -> PyResult<NoiseModel> {
    let Some(n) = noise else {
        return Ok(NoiseModel::None);
    };
    if let Ok(sigma) = n.extract::<f64>() {
        return NoiseModel::gaussian(sigma as f32).or_py();
    }
    let text: String = n.extract().map_err(|_| {
        PyValueError::new_err(
            "noise: expected None, a number (Gaussian sigma) or a spec such as \"complex-gaussian:sigma=0.005\"",
        )
    })?;
    posterior::measurement::parse_noise_option(&text).or_py()
}

#[pymethods]
impl Operator {
    /// Coil maps `(coils, H, W)` (complex) and a sampling mask `(H, W)` (bool, or 0/1) as a SENSE
    /// MRI operator; the image is real `(1, H, W)` (zero phase) unless `complex_image`.
    #[staticmethod]
    #[pyo3(signature = (maps, mask, complex_image = false))]
    fn mri(
        maps: &Bound<'_, PyAny>,
        mask: &Bound<'_, PyAny>,
        complex_image: bool,
    ) -> PyResult<Operator> {
        let maps = complex_in(maps, "maps")?;
        let maps: Array3<Complex32> = maps.into_dimensionality::<Ix3>().map_err(|_| {
            PyValueError::new_err("maps: expected complex coil maps of shape (coils, H, W)")
        })?;
        let mask: Array2<f32> = mask_in(mask, "mask")?
            .into_dimensionality::<Ix2>()
            .map_err(|_| PyValueError::new_err("mask: expected a sampling mask of shape (H, W)"))?;
        let (_, h, w) = maps.dim();
        let c = if complex_image { 2 } else { 1 };
        let p = Mri::multicoil(maps, mask).build(&[c, h, w]).or_py()?;
        Ok(Operator::from_physics(p))
    }

    /// An inpainting operator keeping the pixels where `mask` `(H, W)` is true (non-zero),
    /// for images of `channels` channels.
    #[staticmethod]
    #[pyo3(signature = (mask, channels = 1))]
    fn inpaint(mask: &Bound<'_, PyAny>, channels: usize) -> PyResult<Operator> {
        let m = mask_in(mask, "mask")?
            .into_dimensionality::<Ix2>()
            .map_err(|_| PyValueError::new_err("mask: expected a mask of shape (H, W)"))?;
        let (h, w) = m.dim();
        let p = Inpaint::mask(m.mapv(|v| v != 0.0))
            .build(&[channels, h, w])
            .or_py()?;
        Ok(Operator::from_physics(p))
    }

    /// A blur by your `kernel` `(kh, kw)` for images of `image_shape` `(C, H, W)`;
    /// `boundary` `"circular"` (periodic), `"reflect"` or `"valid"`.
    #[staticmethod]
    #[pyo3(signature = (kernel, image_shape, boundary = "circular"))]
    fn blur(
        kernel: &Bound<'_, PyAny>,
        image_shape: Vec<usize>,
        boundary: &str,
    ) -> PyResult<Operator> {
        let k = array_in(kernel, "kernel")?
            .into_dimensionality::<Ix2>()
            .map_err(|_| PyValueError::new_err("kernel: expected a 2-D kernel (kh, kw)"))?;
        let b = match boundary {
            "circular" => Boundary::Circular,
            "reflect" => Boundary::Reflect,
            "valid" => Boundary::Valid,
            other => {
                return Err(PyValueError::new_err(format!(
                    "boundary={other:?}: expected \"circular\", \"reflect\" or \"valid\""
                )))
            }
        };
        let shape = shape3(&image_shape, "blur")?;
        let p = Blur::kernel(k).boundary(b).build(&shape).or_py()?;
        Ok(Operator::from_physics(p))
    }

    /// The operator's description.
    #[getter]
    fn name(&self) -> String {
        self.operator.operator().name()
    }
    /// The spec it was built from (or a description for operators built from arrays).
    #[getter]
    fn spec(&self) -> String {
        self.spec.clone()
    }
    /// The shape of the operator's input.
    #[getter]
    fn domain_shape(&self) -> Vec<usize> {
        self.operator.operator().domain_shape().to_vec()
    }
    /// The shape of a measurement.
    #[getter]
    fn range_shape(&self) -> Vec<usize> {
        self.operator.operator().range_shape().to_vec()
    }
    /// The shape `(C, H, W)` of the images it measures (`measure`).
    #[getter]
    fn image_shape(&self) -> Vec<usize> {
        self.context.image_shape.clone()
    }
    /// Whether the operator is linear (has an adjoint).
    #[getter]
    fn is_linear(&self) -> bool {
        matches!(self.operator, SharedOperator::Linear(_))
    }

    /// `A x` for `x` of `domain_shape`.
    fn apply(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let x = array_in(x, "x")?;
        let op = self.operator.operator();
        let y = py.detach(|| op.forward(x.view())).or_py()?;
        Ok(array_out(py, y))
    }
    /// `A^T y` for `y` of `range_shape` (linear operators).
    fn adjoint(&self, py: Python<'_>, y: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let y = array_in(y, "y")?;
        let op = self.linear("adjoint")?;
        let x = py.detach(|| op.adjoint_to(y.view())).or_py()?;
        Ok(array_out(py, x))
    }
    /// `A^T A x` (linear operators; closed form where the operator has one).
    fn normal(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let x = array_in(x, "x")?;
        let op = self.linear("normal")?;
        let n = py.detach(|| op.normal_to(x.view())).or_py()?;
        Ok(array_out(py, n))
    }
    /// `J_A(x)^T v`, the vector-Jacobian product at `x` (for a linear operator, `A^T v`).
    fn vjp(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let x = array_in(x, "x")?;
        let v = array_in(v, "v")?;
        let op = self.operator.operator();
        let g = py.detach(|| op.vjp(x.view(), v.view())).or_py()?;
        Ok(array_out(py, g))
    }
    /// The adjoint test: `max |<Ax, y> - <x, A^T y>| / (|Ax| |y|)` over seeded random
    /// pairs, ~1e-7 for an exact adjoint in float32 (linear operators).
    #[pyo3(signature = (seed = 0))]
    fn adjoint_test(&self, py: Python<'_>, seed: u64) -> PyResult<f64> {
        let op = self.linear("the adjoint test")?;
        Ok(py.detach(|| adjoint_test(op, seed).mismatch))
    }
    /// An estimate of the operator norm `||A||_2` by `iters` power iterations on `A^T A`
    /// (linear operators).
    #[pyo3(signature = (iters = 30, seed = 0))]
    fn norm(&self, py: Python<'_>, iters: usize, seed: u64) -> PyResult<f64> {
        let op = self.linear("the norm")?;
        Ok(py.detach(|| op.norm_estimate(iters, seed)))
    }
    /// Simulates a measurement of `image` (`image_shape`): `A(image)` plus noise drawn from
    /// `seed` (`noise`: None, a Gaussian sigma, or a spec), as `posterior degrade` does.
    #[pyo3(signature = (image, noise = None, seed = 0))]
    fn measure(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        noise: Option<&Bound<'_, PyAny>>,
        seed: u64,
    ) -> PyResult<Py<PyAny>> {
        let x = array_in(image, "image")?;
        let noise = noise_in(noise)?;
        let p = self.physics();
        let y = py.detach(|| p.measure(x.view(), &noise, seed)).or_py()?;
        Ok(array_out(py, y))
    }

    fn __repr__(&self) -> String {
        format!(
            "Operator({:?}, image_shape={:?}, range_shape={:?})",
            self.spec,
            self.context.image_shape,
            self.operator.operator().range_shape()
        )
    }
}

/// The operator a spec describes for images of `image_shape` `(C, H, W)`, with the
/// randomness of `seed`: the same operator `posterior degrade --op SPEC --seed SEED` builds.
/// Relative paths in the spec (kernel files, masks, coil maps) are taken from `base_dir`.
#[pyfunction]
#[pyo3(signature = (spec, image_shape, seed = 0, base_dir = "."))]
pub fn operator(
    py: Python<'_>,
    spec: &str,
    image_shape: Vec<usize>,
    seed: u64,
    base_dir: &str,
) -> PyResult<Operator> {
    let shape = shape3(&image_shape, spec)?;
    let ctx = BuildContext::new(&shape, seed, base_dir);
    let p = py.detach(|| spec::build(spec, &ctx)).or_py()?;
    Ok(Operator::from_physics(p))
}
