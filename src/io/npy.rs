//! NumPy `.npy` arrays.

use std::path::Path;

use ndarray::{ArrayD, ArrayViewD, Axis};
use ndarray_npy::ReadNpyError;
use num_complex::{Complex32, Complex64};

use super::{check_exists, write_atomic};
use crate::error::{Error, Result};

fn npy_error(path: &Path, e: ReadNpyError) -> Error {
    let what = match &e {
        ReadNpyError::MissingData => {
            "truncated: the file holds less data than its header declares".to_string()
        }
        ReadNpyError::ExtraBytes(n) => {
            format!("malformed: {n} bytes after the data its header declares")
        }
        ReadNpyError::ParseHeader(h) => format!("not a valid .npy file (bad header: {h})"),
        ReadNpyError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated or not a .npy file (ends inside the header)".to_string()
        }
        other => format!("not a readable .npy array: {other}"),
    };
    Error::file(path, what)
}

fn is_wrong_type(e: &ReadNpyError) -> bool {
    matches!(e, ReadNpyError::WrongDescriptor(_))
}

/// Reads a `.npy` array as `f32`: f32 or f64 files as stored; complex64/complex128 files
/// as a LEADING (re, im) channel pair, i.e. shape (2, ...) with `[0, ...]` the real part.
pub fn read_npy(path: &Path) -> Result<ArrayD<f32>> {
    check_exists(path)?;
    match ndarray_npy::read_npy::<_, ArrayD<f32>>(path) {
        Ok(a) => return Ok(a),
        Err(e) if !is_wrong_type(&e) => return Err(npy_error(path, e)),
        Err(_) => {}
    }
    match ndarray_npy::read_npy::<_, ArrayD<f64>>(path) {
        Ok(a) => return Ok(a.mapv(|v| v as f32)),
        Err(e) if !is_wrong_type(&e) => return Err(npy_error(path, e)),
        Err(_) => {}
    }
    let c = read_npy_complex(path)?;
    let re = c.mapv(|v| v.re).insert_axis(Axis(0));
    let im = c.mapv(|v| v.im).insert_axis(Axis(0));
    ndarray::concatenate(Axis(0), &[re.view(), im.view()]).map_err(|e| Error::file(path, e))
}

/// Reads a complex64 or complex128 `.npy` array as `Complex32`, in the stored axis order.
pub fn read_npy_complex(path: &Path) -> Result<ArrayD<Complex32>> {
    check_exists(path)?;
    match ndarray_npy::read_npy::<_, ArrayD<Complex32>>(path) {
        Ok(a) => return Ok(a),
        Err(e) if !is_wrong_type(&e) => return Err(npy_error(path, e)),
        Err(_) => {}
    }
    match ndarray_npy::read_npy::<_, ArrayD<Complex64>>(path) {
        Ok(a) => Ok(a.mapv(|v| Complex32::new(v.re as f32, v.im as f32))),
        Err(ReadNpyError::WrongDescriptor(d)) => Err(Error::file(
            path,
            format!("element type {d} is not supported; expected float32, float64, complex64 or complex128"),
        )),
        Err(e) => Err(npy_error(path, e)),
    }
}

/// Writes an `f32` array as a C-order `.npy` file, atomically.
pub fn write_npy(path: &Path, array: ArrayViewD<f32>) -> Result<()> {
    let owned = array.as_standard_layout();
    write_atomic(path, |tmp| {
        ndarray_npy::write_npy(tmp, &owned)
            .map_err(|e| Error::file(path, format!("could not write .npy: {e}")))
    })
}

/// Writes a complex64 array as a C-order `.npy` file, atomically.
pub fn write_npy_complex(path: &Path, array: ndarray::ArrayViewD<Complex32>) -> Result<()> {
    let owned = array.as_standard_layout();
    write_atomic(path, |tmp| {
        ndarray_npy::write_npy(tmp, &owned)
            .map_err(|e| Error::file(path, format!("could not write .npy: {e}")))
    })
}
