//! Reading and writing images, volumes and arrays.
//!
//! (Initial version: the signatures below are relied on by the operator spec builders;
//! the full I/O layer is being written.)

use std::path::Path;

use ndarray::{Array2, ArrayD, Ix2};
use num_complex::Complex32;

use crate::error::{Error, Result};

/// Reads a 2-D array for a blur kernel or an inpainting mask: an image file (PNG, JPEG,
/// TIFF) as grayscale in [0, 1], or a 2-D `.npy` (f32 or f64).
pub fn read_gray(path: &Path) -> Result<Array2<f32>> {
    let ext = extension(path);
    if ext == "npy" {
        let a: ArrayD<f32> = ndarray_npy::read_npy(path)
            .or_else(|_| {
                ndarray_npy::read_npy::<_, ArrayD<f64>>(path).map(|a| a.mapv(|v| v as f32))
            })
            .map_err(|e| Error::file(path, format!("not a readable f32/f64 .npy array: {e}")))?;
        return a
            .into_dimensionality::<Ix2>()
            .map_err(|_| Error::file(path, "expected a 2-D array (H, W)"));
    }
    let img = image::open(path)
        .map_err(|e| Error::file(path, e))?
        .into_luma16();
    let (w, h) = img.dimensions();
    Array2::from_shape_vec(
        (h as usize, w as usize),
        img.pixels().map(|p| p.0[0] as f32 / 65535.0).collect(),
    )
    .map_err(|e| Error::file(path, e))
}

/// Reads a complex array: `.npy` complex64/complex128, in the stored axis order.
pub fn read_complex(path: &Path) -> Result<ArrayD<Complex32>> {
    ndarray_npy::read_npy::<_, ArrayD<Complex32>>(path)
        .map_err(|e| Error::file(path, format!("not a readable complex64 .npy array: {e}")))
}

/// The lower-cased file extension (`nii.gz` for gzipped NIfTI).
pub fn extension(path: &Path) -> String {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_lowercase();
    if name.ends_with(".nii.gz") {
        return "nii.gz".into();
    }
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_lowercase()
}
