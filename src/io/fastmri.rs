//! fastMRI's HDF5 files (and ISMRMRD-converted files in the same layout), read by a
//! pure-Rust HDF5 reader (`hdf5-reader`: no system libhdf5).
//!
//! # Layout
//! - `kspace`: complex64 (an HDF5 compound `{r, i}` of f32, as h5py writes `np.complex64`;
//!   complex128 is accepted too), shape `(slices, coils, H, W)` for multi-coil files or
//!   `(slices, H, W)` for single-coil ones. `H` is the readout (fastMRI oversamples it 2x:
//!   640 for a 320 x 320 image), `W` the phase-encode direction: a sampled line is a column,
//!   as in [`posterior_operators::mri`].
//! - `mask` (optional, challenge files): the sampled phase-encode columns, shape `(W,)`,
//!   bool / integer / float, non-zero = sampled.
//! - `reconstruction_rss` (multi-coil) or `reconstruction_esc` (single-coil), optional:
//!   `(slices, h, w)` float32, the reference magnitude images (root-sum-of-squares of the
//!   fully sampled coil images, orthonormal inverse FFT, centre-cropped to `h x w`).
//! - `ismrmrd_header`, optional: the ISMRMRD XML string; its
//!   `<reconSpace><matrixSize>` gives the reconstruction size.
//!
//! [`read`] reads one slice (only that slice's chunks are decompressed), checks every claimed
//! size against [`crate::limits`] before allocating, and hands ndarray 0.16 arrays on (the
//! reader's own ndarray 0.17 types stay inside this module).

use std::path::Path;

use hdf5_reader::{ByteOrder, Datatype, H5Type, SliceInfo, SliceInfoElem};
use ndarray::{Array2, Array3};
use num_complex::Complex32;

use super::check_exists;
use crate::error::{Error, Result};
use crate::limits::check_elements;

/// One slice of a fastMRI file.
#[derive(Clone, Debug)]
pub struct FastMriSlice {
    /// `(coils, H, W)`; a single-coil file gives one coil.
    pub kspace: Array3<Complex32>,
    /// `(H, W)` in {0, 1}, from the file's `mask` dataset (`None` when absent: detect it
    /// from the zeros, [`posterior_operators::mri::detect_mask`]).
    pub mask: Option<Array2<f32>>,
    /// The reference magnitude `(h, w)` of this slice (`reconstruction_rss` or
    /// `reconstruction_esc`), when present.
    pub reference: Option<Array2<f32>>,
    /// The reconstruction matrix `(rows, cols)` from the ISMRMRD header, when present.
    pub recon_size: Option<(usize, usize)>,
    /// The slice read and the number of slices in the file.
    pub slice: usize,
    pub slices: usize,
}

/// The number of slices of the file's `kspace` and its per-slice shape `(coils, H, W)`.
pub fn shape(path: &Path) -> Result<(usize, [usize; 3])> {
    let file = open(path)?;
    let ds = dataset(&file, path, "kspace")?;
    kspace_shape(path, ds.shape())
}

/// Reads slice `slice` (`None`: the middle one) of a fastMRI file.
///
/// Fails, naming the file and what was expected, when it is not HDF5, truncated or corrupt,
/// has no `kspace`, a `kspace` that is not complex or of the wrong rank, a slice out of
/// range, a `mask` whose length is not `W`, or a claimed size over the caps.
pub fn read(path: &Path, slice: Option<usize>) -> Result<FastMriSlice> {
    let file = open(path)?;
    let ds = dataset(&file, path, "kspace")?;
    let (slices, [coils, h, w]) = kspace_shape(path, ds.shape())?;
    check_complex(path, "kspace", ds.dtype())?;
    let s = slice.unwrap_or(slices / 2);
    if s >= slices {
        return Err(Error::file(
            path,
            format!("--slice {s} is out of range: `kspace` has {slices} slice(s) (0..{slices})"),
        ));
    }
    check_elements(
        &format!("{}: one kspace slice", path.display()),
        &[coils, h, w],
    )?;
    let mut sel = vec![SliceInfoElem::Index(s as u64)];
    sel.extend(std::iter::repeat_n(all(), ds.ndim() - 1));
    let raw = ds
        .read_slice::<H5Complex>(&SliceInfo { selections: sel })
        .map_err(|e| Error::file(path, format!("cannot read `kspace` slice {s}: {e}")))?;
    let values: Vec<Complex32> = raw.iter().map(|v| v.0).collect();
    let kspace = Array3::from_shape_vec((coils, h, w), values).map_err(|e| {
        Error::file(
            path,
            format!("`kspace` slice {s} does not hold {coils} x {h} x {w} values: {e}"),
        )
    })?;
    let mask = match file.dataset("mask") {
        Ok(m) => Some(read_mask(path, &m, h, w)?),
        Err(_) => None,
    };
    let reference = ["reconstruction_rss", "reconstruction_esc"]
        .iter()
        .find_map(|name| file.dataset(name).ok())
        .map(|r| read_reference(path, &r, s, slices))
        .transpose()?;
    let recon_size = file
        .dataset("ismrmrd_header")
        .ok()
        .and_then(|d| d.read_string().ok())
        .and_then(|xml| recon_matrix(&xml));
    Ok(FastMriSlice {
        kspace,
        mask,
        reference,
        recon_size,
        slice: s,
        slices,
    })
}

fn open(path: &Path) -> Result<hdf5_reader::Hdf5File> {
    check_exists(path)?;
    hdf5_reader::Hdf5File::open(path).map_err(|e| {
        Error::file(
            path,
            format!(
                "cannot be read as HDF5 ({e}): expected a fastMRI .h5 file (truncated or corrupt?)"
            ),
        )
    })
}

fn dataset(file: &hdf5_reader::Hdf5File, path: &Path, name: &str) -> Result<hdf5_reader::Dataset> {
    file.dataset(name).map_err(|e| {
        Error::file(
            path,
            format!("has no dataset `{name}` ({e}): expected fastMRI's layout (`kspace` of shape (slices, coils, H, W))"),
        )
    })
}

fn all() -> SliceInfoElem {
    SliceInfoElem::Slice {
        start: 0,
        end: u64::MAX,
        step: 1,
    }
}

/// `(slices, [coils, H, W])` from `kspace`'s shape, rank 4 (multi-coil) or 3 (single-coil).
fn kspace_shape(path: &Path, shape: &[u64]) -> Result<(usize, [usize; 3])> {
    let dims: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
        .collect();
    let (slices, chw) = match dims[..] {
        [s, c, h, w] => (s, [c, h, w]),
        [s, h, w] => (s, [1, h, w]),
        _ => {
            return Err(Error::file(
                path,
                format!(
                    "`kspace` has shape {dims:?}; expected (slices, coils, H, W) or (slices, H, W)"
                ),
            ))
        }
    };
    if slices == 0 || chw.contains(&0) {
        return Err(Error::file(
            path,
            format!("`kspace` of shape {dims:?} is empty"),
        ));
    }
    check_elements(&format!("{}: kspace", path.display()), &dims)?;
    Ok((slices, chw))
}

/// The (re, im) float fields of a complex compound type, or `None`.
fn complex_fields(dtype: &Datatype) -> Option<[(usize, u8, ByteOrder); 2]> {
    let Datatype::Compound { fields, .. } = dtype else {
        return None;
    };
    if fields.len() != 2 {
        return None;
    }
    let field = |f: &hdf5_reader::CompoundField| match f.datatype {
        Datatype::FloatingPoint { size, byte_order } if size == 4 || size == 8 => {
            Some((f.byte_offset as usize, size, byte_order))
        }
        _ => None,
    };
    Some([field(&fields[0])?, field(&fields[1])?])
}

fn check_complex(path: &Path, name: &str, dtype: &Datatype) -> Result<()> {
    if complex_fields(dtype).is_none() {
        return Err(Error::file(
            path,
            format!(
                "`{name}` has datatype {dtype:?}; expected complex64 (a compound {{r, i}} of float32, as h5py writes np.complex64) or complex128"
            ),
        ));
    }
    Ok(())
}

/// A complex value read from a `{r, i}` compound of f32 or f64 (any byte order).
#[derive(Clone, Copy, Debug)]
struct H5Complex(Complex32);

impl H5Type for H5Complex {
    fn hdf5_type() -> Datatype {
        let float = Datatype::FloatingPoint {
            size: 4,
            byte_order: ByteOrder::LittleEndian,
        };
        Datatype::Compound {
            size: 8,
            fields: vec![
                hdf5_reader::CompoundField {
                    name: "r".into(),
                    byte_offset: 0,
                    datatype: float.clone(),
                },
                hdf5_reader::CompoundField {
                    name: "i".into(),
                    byte_offset: 4,
                    datatype: float,
                },
            ],
        }
    }

    fn from_bytes(bytes: &[u8], dtype: &Datatype) -> hdf5_reader::error::Result<Self> {
        let fields =
            complex_fields(dtype).ok_or_else(|| hdf5_reader::error::Error::TypeMismatch {
                expected: "complex compound {r, i}".into(),
                actual: format!("{dtype:?}"),
            })?;
        let part = |(offset, size, byte_order): (usize, u8, ByteOrder)| -> hdf5_reader::error::Result<f32> {
            let b = bytes.get(offset..offset + size as usize).ok_or_else(|| {
                hdf5_reader::error::Error::InvalidData("complex element shorter than its fields".into())
            })?;
            let dt = Datatype::FloatingPoint { size, byte_order };
            Ok(if size == 4 {
                f32::from_bytes(b, &dt)?
            } else {
                f64::from_bytes(b, &dt)? as f32
            })
        };
        Ok(H5Complex(Complex32::new(
            part(fields[0])?,
            part(fields[1])?,
        )))
    }

    fn element_size(dtype: &Datatype) -> usize {
        match dtype {
            Datatype::Compound { size, .. } => *size as usize,
            _ => 8,
        }
    }
}

/// The `(W,)` mask broadcast over the `H` readout rows.
fn read_mask(path: &Path, ds: &hdf5_reader::Dataset, h: usize, w: usize) -> Result<Array2<f32>> {
    let n: usize = ds.shape().iter().map(|&d| d as usize).product();
    if ds.ndim() != 1 || n != w {
        return Err(Error::file(
            path,
            format!(
                "`mask` has shape {:?}; expected ({w},), one entry per phase-encode column of `kspace`",
                ds.shape()
            ),
        ));
    }
    let bytes = ds
        .read_native_bytes()
        .map_err(|e| Error::file(path, format!("cannot read `mask`: {e}")))?;
    let size = bytes.len() / w.max(1);
    let on: Vec<bool> = match (ds.dtype(), size) {
        (Datatype::FloatingPoint { .. }, 4) => bytes
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]) != 0.0)
            .collect(),
        (Datatype::FloatingPoint { .. }, 8) => bytes
            .chunks_exact(8)
            .map(|c| f64::from_ne_bytes(c.try_into().unwrap_or([0; 8])) != 0.0)
            .collect(),
        (Datatype::FixedPoint { .. } | Datatype::Enum { .. }, s) if s >= 1 => bytes
            .chunks_exact(s)
            .map(|c| c.iter().any(|&b| b != 0))
            .collect(),
        (dt, _) => {
            return Err(Error::file(
                path,
                format!("`mask` has datatype {dt:?}; expected bool, integer or float"),
            ))
        }
    };
    Ok(Array2::from_shape_fn((h, w), |(_, j)| {
        f32::from(u8::from(on[j]))
    }))
}

fn read_reference(
    path: &Path,
    ds: &hdf5_reader::Dataset,
    s: usize,
    slices: usize,
) -> Result<Array2<f32>> {
    let shape: Vec<usize> = ds.shape().iter().map(|&d| d as usize).collect();
    let [n, h, w] = shape[..] else {
        return Err(Error::file(
            path,
            format!(
                "`{}` has shape {shape:?}; expected (slices, h, w)",
                ds.name()
            ),
        ));
    };
    if n != slices {
        return Err(Error::file(
            path,
            format!("`{}` has {n} slices but `kspace` has {slices}", ds.name()),
        ));
    }
    check_elements(&format!("{}: {}", path.display(), ds.name()), &[h, w])?;
    let sel = SliceInfo {
        selections: vec![SliceInfoElem::Index(s as u64), all(), all()],
    };
    let raw = ds.read_slice::<f32>(&sel).map_err(|e| {
        Error::file(
            path,
            format!("cannot read `{}` slice {s} as float32: {e}", ds.name()),
        )
    })?;
    Array2::from_shape_vec((h, w), raw.iter().copied().collect())
        .map_err(|e| Error::file(path, format!("`{}` slice {s}: {e}", ds.name())))
}

/// `(x, y)` of `<reconSpace><matrixSize>` in an ISMRMRD header: the reconstruction's rows
/// (readout) and columns.
fn recon_matrix(xml: &str) -> Option<(usize, usize)> {
    let recon = &xml[xml.find("<reconSpace>")?..];
    let size = &recon[recon.find("<matrixSize>")?..];
    let tag = |t: &str| -> Option<usize> {
        let open = format!("<{t}>");
        let start = size.find(&open)? + open.len();
        let end = start + size[start..].find('<')?;
        size[start..end].trim().parse().ok()
    };
    Some((tag("x")?, tag("y")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recon_matrix_is_read_from_the_recon_space() {
        let xml = "<ismrmrdHeader><encoding><encodedSpace><matrixSize><x>640</x><y>368</y>\
                   <z>1</z></matrixSize></encodedSpace><reconSpace><matrixSize><x>320</x>\
                   <y>320</y><z>1</z></matrixSize></reconSpace></encoding></ismrmrdHeader>";
        assert_eq!(recon_matrix(xml), Some((320, 320)));
        assert_eq!(recon_matrix("<x>3</x>"), None);
    }
}
