//! numpy arrays in and out, and errors across the boundary.
//!
//! Arrays in: anything `numpy.asarray` takes, C-contiguous (a non-contiguous array is
//! refused: `numpy.ascontiguousarray(x)` makes a copy explicitly), of dtype float32 (used
//! as it is), float64 (converted to float32), or complex64 / complex128 (split into a
//! leading (re, im) pair before the last two axes: a complex `(H, W)` image becomes
//! `(2, H, W)`, complex k-space `(coils, H, W)` becomes `(coils, 2, H, W)`). Other dtypes,
//! and NaN or infinite values, are refused with a `ValueError` naming the argument.
//! Arrays out: float32, C-contiguous, owned by Python.
//!
//! Errors out: `posterior::Error` by kind ([`posterior::Error::kind`]): files to `OSError`,
//! interruptions to `KeyboardInterrupt`, the GPU to `RuntimeError`, everything else (bad
//! shapes, values, specs, settings) to `ValueError`, each with the library's message.

use ndarray::{ArrayD, Axis, Dimension, IxDyn};
use num_complex::{Complex32, Complex64};
use numpy::{
    Element, PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// A library error as the Python exception of its kind, with its message.
pub fn py_err(e: posterior::Error) -> PyErr {
    let msg = e.to_string();
    match e.kind() {
        "file" => PyOSError::new_err(msg),
        "interrupted" => PyKeyboardInterrupt::new_err(msg),
        "device" => PyRuntimeError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

/// `Result<T, posterior::Error>` to `PyResult<T>`.
pub trait OrPy<T> {
    fn or_py(self) -> PyResult<T>;
}

impl<T> OrPy<T> for posterior::Result<T> {
    fn or_py(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}

impl<T> OrPy<T> for posterior_operators::Result<T> {
    fn or_py(self) -> PyResult<T> {
        self.map_err(|e| py_err(e.into()))
    }
}

/// A copy of a C-contiguous numpy array. numpy's own ndarray version may differ from the
/// library's, so the data crosses as a flat vector and its shape.
fn owned<T: Element + Copy>(a: &Bound<'_, PyUntypedArray>) -> PyResult<ArrayD<T>> {
    let typed = a.cast::<PyArrayDyn<T>>()?;
    let shape = typed.shape().to_vec();
    let data = typed
        .to_vec()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The leading (re, im) pair of a complex array `(..., H, W)`: `(..., 2, H, W)`.
fn split_complex<C: Copy>(z: ArrayD<C>, part: impl Fn(C) -> (f32, f32)) -> ArrayD<f32> {
    let sh = z.shape().to_vec();
    let n = sh.len();
    let mut out_shape = sh.clone();
    let at = n.saturating_sub(2);
    out_shape.insert(at, 2);
    ArrayD::from_shape_fn(IxDyn(&out_shape), |idx| {
        let mut i = idx.slice().to_vec();
        let which = i.remove(at);
        let (re, im) = part(z[IxDyn(&i)]);
        if which == 0 {
            re
        } else {
            im
        }
    })
}

/// An f32 array from a Python object (see the module docs); `what` names the argument in
/// errors.
pub fn array_in(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<ArrayD<f32>> {
    let py = obj.py();
    let arr = py.import("numpy")?.getattr("asarray")?.call1((obj,))?;
    let a = arr
        .cast::<PyUntypedArray>()
        .map_err(|_| PyValueError::new_err(format!("{what}: expected a numpy array")))?;
    if a.ndim() == 0 {
        return Err(PyValueError::new_err(format!(
            "{what}: expected an array, got a scalar"
        )));
    }
    if !a.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what}: the array is not C-contiguous (a slice or transpose of another array, shape {:?}): pass numpy.ascontiguousarray({what})",
            a.shape()
        )));
    }
    let dt = a.dtype();
    let x: ArrayD<f32> = if dt.is_equiv_to(&numpy::dtype::<f32>(py)) {
        owned::<f32>(a)?
    } else if dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
        owned::<f64>(a)?.mapv(|v| v as f32)
    } else if dt.is_equiv_to(&numpy::dtype::<Complex32>(py)) {
        split_complex(owned::<Complex32>(a)?, |z| (z.re, z.im))
    } else if dt.is_equiv_to(&numpy::dtype::<Complex64>(py)) {
        split_complex(owned::<Complex64>(a)?, |z| (z.re as f32, z.im as f32))
    } else {
        return Err(PyValueError::new_err(format!(
            "{what}: dtype {} is not supported: expected float32 (float64 is converted; complex64/complex128 become a leading (re, im) pair)",
            dt.str()?
        )));
    };
    if let Some(bad) = x.iter().position(|v| !v.is_finite()) {
        let count = x.iter().filter(|v| !v.is_finite()).count();
        return Err(PyValueError::new_err(format!(
            "{what}: {count} value(s) are NaN or infinite (the first at flat index {bad})"
        )));
    }
    Ok(x)
}

/// A mask from a Python object: a bool array (true = 1), or numbers as [`array_in`] takes
/// them; `what` names the argument.
pub fn mask_in(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<ArrayD<f32>> {
    let py = obj.py();
    let arr = py.import("numpy")?.getattr("asarray")?.call1((obj,))?;
    let is_bool = arr
        .cast::<PyUntypedArray>()
        .is_ok_and(|a| a.dtype().is_equiv_to(&numpy::dtype::<bool>(py)));
    if is_bool {
        let f = arr.call_method1("astype", ("float32",))?;
        array_in(&f, what)
    } else {
        array_in(&arr, what)
    }
}

/// A complex array from a Python object (coil maps): complex64 / complex128, or a real
/// float array taken as real values; `what` names the argument.
pub fn complex_in(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<ArrayD<Complex32>> {
    let py = obj.py();
    let arr = py.import("numpy")?.getattr("asarray")?.call1((obj,))?;
    let a = arr
        .cast::<PyUntypedArray>()
        .map_err(|_| PyValueError::new_err(format!("{what}: expected a numpy array")))?;
    if !a.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what}: the array is not C-contiguous: pass numpy.ascontiguousarray({what})"
        )));
    }
    let dt = a.dtype();
    let z: ArrayD<Complex32> = if dt.is_equiv_to(&numpy::dtype::<Complex32>(py)) {
        owned::<Complex32>(a)?
    } else if dt.is_equiv_to(&numpy::dtype::<Complex64>(py)) {
        owned::<Complex64>(a)?.mapv(|z| Complex32::new(z.re as f32, z.im as f32))
    } else if dt.is_equiv_to(&numpy::dtype::<f32>(py)) || dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
        array_in(&arr, what)?.mapv(|v| Complex32::new(v, 0.0))
    } else {
        return Err(PyValueError::new_err(format!(
            "{what}: dtype {} is not supported: expected complex64 or complex128",
            dt.str()?
        )));
    };
    if z.iter().any(|v| !(v.re.is_finite() && v.im.is_finite())) {
        return Err(PyValueError::new_err(format!(
            "{what}: some values are NaN or infinite"
        )));
    }
    Ok(z)
}

/// An f32 array out to Python.
pub fn array_out(py: Python<'_>, x: ArrayD<f32>) -> Py<PyAny> {
    let shape = x.shape().to_vec();
    let flat = PyArray1::from_vec(py, x.iter().copied().collect());
    match flat.reshape(shape.as_slice()) {
        Ok(a) => a.into_any().unbind(),
        // Unreachable: the element count is the shape's product.
        Err(_) => flat.into_any().unbind(),
    }
}

/// Adds a leading batch axis of 1 when `x` is one sample (`ndim` one less than a batch).
pub fn as_batch(x: ArrayD<f32>, sample_ndim: usize) -> (ArrayD<f32>, bool) {
    if x.ndim() == sample_ndim {
        (x.insert_axis(Axis(0)), true)
    } else {
        (x, false)
    }
}
