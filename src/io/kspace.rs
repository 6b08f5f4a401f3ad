//! Raw multi-coil k-space from other tools: fastMRI HDF5, BART `.cfl`, NumPy `.npy`.
//!
//! Every format comes back as [`KSpace`]: complex `(coils, H, W)` on the centred grid of
//! [`posterior_operators::mri`] (DC at `(H/2, W/2)`, readout along `H`, phase-encode lines
//! as columns), with the sampling mask from the file or from the zero pattern.
//!
//! | file | layout read | axes |
//! |---|---|---|
//! | `.h5`, `.hdf5` | fastMRI: `kspace` (slices, coils, H, W) complex64 | [`super::fastmri`] |
//! | `.cfl` / `.hdr` | BART `[H, W, slices, coils]` (`[H, W, 1, coils]` for one slice) | BART dim 0 = H (readout), dim 1 = W |
//! | `.npy` float | `(coils, 2, H, W)` (re, im pairs) or `(2, H, W)` for one coil | as stored |
//! | `.npy` complex | `(coils, H, W)` or `(H, W)` | as stored |
//!
//! Unsampled entries must be exactly zero (how scanners, BART and fastMRI store them).

use std::path::Path;

use ndarray::{Array2, Array3, ArrayD, Axis, IxDyn};
use num_complex::Complex32;
use posterior_operators::fft::Fft2;
use posterior_operators::mri::detect_mask;

use super::{extension, fastmri, read_cfl, read_npy, read_npy_complex};
use crate::error::{Error, Result};

/// The extensions [`read`] understands.
pub const KSPACE_EXTENSIONS: &str = "h5, hdf5 (fastMRI), cfl/hdr (BART), npy";

/// Whether `path` names a file [`read`] takes as raw k-space by its extension alone (`.npy`
/// may hold an image as well, so it is not counted).
pub fn is_kspace_file(path: &Path) -> bool {
    matches!(extension(path).as_str(), "h5" | "hdf5" | "cfl" | "hdr")
}

/// Measured k-space, one slice.
#[derive(Clone, Debug)]
pub struct KSpace {
    /// `(coils, H, W)`.
    pub data: Array3<Complex32>,
    /// `(H, W)` in {0, 1}: the file's mask, else where any coil is non-zero.
    pub mask: Array2<f32>,
    /// Whether the mask came from the file (otherwise from the zero pattern).
    pub mask_from_file: bool,
    /// The file's reference magnitude image of this slice (fastMRI `reconstruction_rss`).
    pub reference: Option<Array2<f32>>,
    /// The reconstruction size `(rows, cols)` the file states (ISMRMRD header), if any.
    pub recon_size: Option<(usize, usize)>,
    /// The slice read and the number of slices in the file.
    pub slice: usize,
    pub slices: usize,
}

impl KSpace {
    /// Wraps `(coils, H, W)` data with its mask detected from the zeros.
    pub fn from_data(data: Array3<Complex32>) -> KSpace {
        let mask = detect_mask(data.view());
        KSpace {
            data,
            mask,
            mask_from_file: false,
            reference: None,
            recon_size: None,
            slice: 0,
            slices: 1,
        }
    }

    /// Wraps a simulated measurement `(coils, 2, H, W)` (or `(2, H, W)`), unsampled entries
    /// exactly zero (as [`posterior_operators::LinearOperator::restrict_to_measured`] leaves
    /// them), the mask detected from the zeros.
    pub fn from_measurement(y: ndarray::ArrayViewD<f32>) -> Result<KSpace> {
        let y4 = match y.ndim() {
            4 if y.shape()[1] == 2 => y,
            3 if y.shape()[0] == 2 => y.insert_axis(Axis(0)),
            _ => {
                return Err(Error::Shape(format!(
                    "k-space measurement of shape {:?}; expected (coils, 2, H, W) or (2, H, W)",
                    y.shape()
                )))
            }
        };
        let (c, h, w) = (y4.shape()[0], y4.shape()[2], y4.shape()[3]);
        Ok(KSpace::from_data(Array3::from_shape_fn(
            (c, h, w),
            |(ci, i, j)| Complex32::new(y4[[ci, 0, i, j]], y4[[ci, 1, i, j]]),
        )))
    }

    /// The number of coils.
    pub fn coils(&self) -> usize {
        self.data.dim().0
    }

    /// The measurement array the MRI operator built for it takes: `(coils, 2, H, W)` (one
    /// coil included); entries outside the mask set to zero.
    pub fn measurement(&self) -> ArrayD<f32> {
        let (c, h, w) = self.data.dim();
        let mut y = ArrayD::<f32>::zeros(IxDyn(&[c, 2, h, w]));
        for ((ci, i, j), v) in self.data.indexed_iter() {
            let m = self.mask[[i, j]];
            y[[ci, 0, i, j]] = v.re * m;
            y[[ci, 1, i, j]] = v.im * m;
        }
        y
    }

    /// Removes readout oversampling: keeps the central `rows` image rows (fastMRI
    /// reconstructs 640 readout samples and keeps the middle 320) by an inverse FFT, a crop
    /// and a forward FFT. Only for masks that sample whole columns (1-D Cartesian), whose
    /// pattern the crop keeps exactly (the mask is re-applied); a 2-D mask is an error.
    pub fn crop_readout(&mut self, rows: usize) -> Result<()> {
        let (c, h, w) = self.data.dim();
        if rows >= h {
            return Ok(());
        }
        let columns: Vec<f32> = (0..w).map(|j| self.mask[[0, j]]).collect();
        if self
            .mask
            .outer_iter()
            .any(|r| r.iter().zip(&columns).any(|(a, b)| a != b))
        {
            return Err(Error::Unsupported(
                "the readout crop needs whole sampled phase-encode columns (a 1-D Cartesian mask); \
                 this mask varies along the readout"
                    .into(),
            ));
        }
        let (big, small) = (Fft2::new(h, w), Fft2::new(rows, w));
        let r0 = (h - rows) / 2;
        let mut out = Array3::<Complex32>::zeros((c, rows, w));
        for ci in 0..c {
            let mut buf: Vec<Complex32> =
                self.data.index_axis(Axis(0), ci).iter().copied().collect();
            big.inverse_centered(&mut buf);
            let mut cropped: Vec<Complex32> = buf[r0 * w..(r0 + rows) * w].to_vec();
            small.forward_centered(&mut cropped);
            for (p, v) in cropped.into_iter().enumerate() {
                out[[ci, p / w, p % w]] = v * columns[p % w];
            }
        }
        self.data = out;
        self.mask = Array2::from_shape_fn((rows, w), |(_, j)| columns[j]);
        Ok(())
    }
}

/// Reads one slice of raw k-space (`slice`: `None` = the middle one for multi-slice files).
pub fn read(path: &Path, slice: Option<usize>) -> Result<KSpace> {
    match extension(path).as_str() {
        "h5" | "hdf5" => {
            let f = fastmri::read(path, slice)?;
            let mut k = KSpace::from_data(f.kspace);
            if let Some(m) = f.mask {
                k.mask = m;
                k.mask_from_file = true;
            }
            k.reference = f.reference;
            k.recon_size = f.recon_size;
            k.slice = f.slice;
            k.slices = f.slices;
            Ok(k)
        }
        "cfl" | "hdr" => {
            let a = read_cfl(path)?;
            let shape = a.shape().to_vec();
            if shape.len() > 4 {
                return Err(Error::file(
                    path,
                    format!(
                        "BART k-space has dimensions {shape:?}; expected [H, W, slices, coils] \
                         (dimensions beyond the coil dimension must be 1)"
                    ),
                ));
            }
            let (h, w, d, c) = (shape[0], shape[1], shape[2], shape[3]);
            let s = slice.unwrap_or(d / 2);
            if s >= d {
                return Err(Error::file(
                    path,
                    format!("--slice {s} is out of range: BART dimension 2 has {d} slice(s)"),
                ));
            }
            let data = Array3::from_shape_fn((c, h, w), |(ci, i, j)| a[[i, j, s, ci]]);
            let mut k = KSpace::from_data(data);
            k.slice = s;
            k.slices = d;
            Ok(k)
        }
        "npy" => read_npy_kspace(path, slice),
        ext => Err(Error::file(
            path,
            format!("cannot read `.{ext}` as k-space; supported: {KSPACE_EXTENSIONS}"),
        )),
    }
}

fn read_npy_kspace(path: &Path, slice: Option<usize>) -> Result<KSpace> {
    if slice.is_some_and(|s| s > 0) {
        return Err(Error::file(
            path,
            "a .npy k-space holds one slice: leave out --slice",
        ));
    }
    let data = match read_npy(path) {
        Ok(y) => {
            let shape = y.shape().to_vec();
            let y4 = match shape[..] {
                [_, 2, _, _] => y,
                [2, h, w] => y.into_shape_with_order(IxDyn(&[1, 2, h, w])).map_err(|e| Error::file(path, e))?,
                _ => {
                    return Err(Error::file(
                        path,
                        format!(
                            "float k-space of shape {shape:?}; expected (coils, 2, H, W) or (2, H, W) (re, im pairs)"
                        ),
                    ))
                }
            };
            let (c, h, w) = (y4.shape()[0], y4.shape()[2], y4.shape()[3]);
            Array3::from_shape_fn((c, h, w), |(ci, i, j)| {
                Complex32::new(y4[[ci, 0, i, j]], y4[[ci, 1, i, j]])
            })
        }
        Err(_) => {
            let z = read_npy_complex(path)?;
            let shape = z.shape().to_vec();
            match shape[..] {
                [c, h, w] => Array3::from_shape_fn((c, h, w), |(ci, i, j)| z[[ci, i, j]]),
                [h, w] => Array3::from_shape_fn((1, h, w), |(_, i, j)| z[[i, j]]),
                _ => {
                    return Err(Error::file(
                        path,
                        format!(
                            "complex k-space of shape {shape:?}; expected (coils, H, W) or (H, W)"
                        ),
                    ))
                }
            }
        }
    };
    if data.iter().any(|v| !(v.re.is_finite() && v.im.is_finite())) {
        return Err(Error::file(path, "k-space contains NaN or infinite values"));
    }
    Ok(KSpace::from_data(data))
}

/// The centred `rows x cols` crop of an `(.., H, W)` image array (the last two axes); sizes
/// larger than the image keep it whole.
pub fn center_crop(image: &ArrayD<f32>, rows: usize, cols: usize) -> ArrayD<f32> {
    let n = image.ndim();
    let (h, w) = (image.shape()[n - 2], image.shape()[n - 1]);
    let (rows, cols) = (rows.min(h), cols.min(w));
    let (r0, c0) = ((h - rows) / 2, (w - cols) / 2);
    let mut v = image.view();
    v.slice_axis_inplace(Axis(n - 2), (r0..r0 + rows).into());
    v.slice_axis_inplace(Axis(n - 1), (c0..c0 + cols).into());
    v.to_owned()
}
