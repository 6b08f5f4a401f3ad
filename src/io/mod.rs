//! Reading and writing images, volumes and arrays.
//!
//! # Working units
//!
//! [`read_image`] returns a (C, H, W) `f32` image in *working units* together with the
//! [`Intensity`] map back to the file's units (`file_value = data * scale + offset`):
//!
//! | file | C | working units | `scale`, `offset`, `unit` |
//! |---|---|---|---|
//! | 8-bit PNG / JPEG / TIFF | 1 (gray) or 3 (colour; alpha dropped) | [0, 1] | 255, 0, `"8-bit"` |
//! | 16-bit PNG / TIFF | 1 or 3 | [0, 1] | 65535, 0, `"16-bit"` |
//! | 32-bit float TIFF | 1 or 3 | as stored | 1, 0, `"float"` |
//! | `.npy` (H, W) or (C, H, W), f32/f64 | as stored | as stored | 1, 0, `"npy"` |
//! | NIfTI (`.nii`, `.nii.gz`), one slice | 1 | value / max(slice) | max, 0, `"nifti"` |
//! | DICOM CT (Modality CT or Rescale Type HU) | 1 | HU / 1000 + 1, clipped at 0 | 1000, -1000, `"HU"` |
//! | other DICOM, monochrome | 1 | value / max(frame) | max, 0, `"dicom"` |
//! | other DICOM, RGB | 3 | value / (2^bits stored - 1) | that, 0, `"dicom"` |
//!
//! CT in working units is the attenuation relative to water (water = 1, air = 0); values
//! below -1000 HU (air, or the padding outside the scanner's field of view, often -2000
//! or -3024) are raised to -1000 HU, recorded as `clip_min = Some(-1000.0)`.
//!
//! # Slices of volumes
//!
//! NIfTI volumes are resampled to nothing: voxels are only permuted and flipped, using the
//! header's sform (if `sform_code > 0`), else its qform (if `qform_code > 0`), else the
//! voxel axes taken as (x, y, z) = (i, j, k). Each voxel axis is matched to the world axis
//! (RAS+: x to the patient's right, y anterior, z superior) it is most nearly parallel to.
//! Slices are then shown as radiology viewers show them:
//! - axial (fixed z, slice 0 = most inferior): anterior at the top, the patient's right on
//!   the image's left;
//! - coronal (fixed y, slice 0 = most posterior): superior at the top, patient's right on
//!   the left;
//! - sagittal (fixed x, slice 0 = the patient's leftmost): superior at the top, anterior on
//!   the left.
//!
//! [`read_volume`] returns the stack of axial slices, (D, H, W), inferior to superior,
//! each oriented as above, in the file's values (scl_slope/scl_inter applied, no
//! normalisation).
//!
//! # Writing
//!
//! Every writer is atomic ([`write_atomic`]): the data goes to a temporary file in the
//! destination's directory which is renamed over the destination only once complete, so
//! a failed or interrupted write never leaves a partial file under the final name.

mod cfl;
mod dicom;
pub mod fastmri;
pub mod kspace;
mod nii;
mod npy;
mod raster;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{Array2, Array3, ArrayD, ArrayView3, Axis, Ix2, Ix3};
use num_complex::Complex32;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use cfl::{read_cfl, write_cfl};
pub use nii::write_volume as write_nifti_volume;
pub use npy::{read_npy, read_npy_complex, write_npy, write_npy_complex};

/// The extensions [`read_image`] understands (DICOM files are also recognised by their
/// `DICM` preamble whatever their name).
pub const IMAGE_EXTENSIONS: &str = "png, jpg, jpeg, tif, tiff, npy, nii, nii.gz, dcm";

/// How working units map back to the file's values: `file_value = data * scale + offset`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Intensity {
    /// Multiplier from working units to file units.
    pub scale: f32,
    /// Added after scaling.
    pub offset: f32,
    /// The file's unit: `"8-bit"`, `"16-bit"`, `"float"`, `"npy"`, `"nifti"`, `"HU"`,
    /// `"dicom"`.
    pub unit: String,
    /// `Some(v)`: file values below `v` (in file units) were raised to `v` on reading, so
    /// they cannot be recovered; `None`: nothing was clipped.
    pub clip_min: Option<f32>,
}

impl Intensity {
    /// `scale` and unit, no offset, no clipping.
    pub fn scaled(scale: f32, unit: &str) -> Self {
        Intensity {
            scale,
            offset: 0.0,
            unit: unit.to_string(),
            clip_min: None,
        }
    }

    /// Converts a working-unit value to file units.
    pub fn to_file(&self, v: f32) -> f32 {
        v * self.scale + self.offset
    }
}

/// An image as read: (C, H, W) in working units, and how to get back to file units.
#[derive(Clone, Debug)]
pub struct LoadedImage {
    /// (C, H, W), working units (see the module docs).
    pub data: Array3<f32>,
    /// `file_value = data * scale + offset`.
    pub intensity: Intensity,
    /// Where it came from: the path, plus the slice for volumes (`brain.nii.gz[axial 31]`).
    pub source: String,
}

/// Which plane a slice of a volume is taken in (see the module docs for orientation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SliceAxis {
    /// Fixed superior-inferior position.
    #[default]
    Axial,
    /// Fixed anterior-posterior position.
    Coronal,
    /// Fixed left-right position.
    Sagittal,
}

impl SliceAxis {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            SliceAxis::Axial => "axial",
            SliceAxis::Coronal => "coronal",
            SliceAxis::Sagittal => "sagittal",
        }
    }
}

/// Options for [`read_image`]: which slice of a volume (NIfTI) or frame (multi-frame
/// DICOM) to take. Ignored for 2-D files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Slice index along `axis`; `None` = the middle slice (`n / 2`).
    pub slice: Option<usize>,
    /// The plane (NIfTI only; DICOM frames are taken as stored).
    pub axis: SliceAxis,
}

/// The kind of file, from its extension or (for DICOM) its preamble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Raster,
    Npy,
    Nifti,
    Dicom,
}

fn kind_of(path: &Path) -> Result<Kind> {
    match extension(path).as_str() {
        "png" | "jpg" | "jpeg" | "tif" | "tiff" => Ok(Kind::Raster),
        "npy" => Ok(Kind::Npy),
        "nii" | "nii.gz" => Ok(Kind::Nifti),
        "dcm" | "dicom" => Ok(Kind::Dicom),
        ext => {
            if has_dicom_preamble(path) {
                return Ok(Kind::Dicom);
            }
            let what = if ext.is_empty() {
                "no file extension".to_string()
            } else {
                format!("unknown file extension `.{ext}`")
            };
            Err(Error::file(
                path,
                format!("{what} (and no DICOM preamble); supported: {IMAGE_EXTENSIONS}"),
            ))
        }
    }
}

/// Whether the file has the DICOM part-10 preamble: 128 bytes, then `DICM`.
fn has_dicom_preamble(path: &Path) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 132];
    match std::fs::File::open(path) {
        Ok(mut f) => f.read_exact(&mut buf).is_ok() && &buf[128..132] == b"DICM",
        Err(_) => false,
    }
}

/// Fails with a clear message when the file does not exist or is not a regular file.
fn check_exists(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::file(path, "is a directory, expected a file")),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::file(path, "no such file"))
        }
        Err(e) => Err(Error::file(path, format!("cannot be read: {e}"))),
    }
}

/// Errors naming the number of non-finite values, if any.
fn check_finite(path: &Path, values: impl IntoIterator<Item = f32>) -> Result<()> {
    let (mut nan, mut inf) = (0usize, 0usize);
    for v in values {
        if v.is_nan() {
            nan += 1;
        } else if v.is_infinite() {
            inf += 1;
        }
    }
    if nan + inf > 0 {
        return Err(Error::file(
            path,
            format!("contains {nan} NaN and {inf} infinite values; expected finite values"),
        ));
    }
    Ok(())
}

/// Reads a 2-D image (or one slice of a volume) as (C, H, W) `f32` in working units.
///
/// Dispatches on the extension (`png`, `jpg`/`jpeg`, `tif`/`tiff`, `npy`, `nii`/`nii.gz`,
/// `dcm`, or any file starting with the DICOM preamble); see the module docs for the
/// units and orientation. Fails, naming the file, when it is missing, of an unknown kind,
/// truncated or malformed, when the slice is out of range, or when it holds NaN or
/// infinite values.
pub fn read_image(path: &Path, opts: &ReadOptions) -> Result<LoadedImage> {
    check_exists(path)?;
    let img = match kind_of(path)? {
        Kind::Raster => raster::read(path)?,
        Kind::Npy => {
            let a = npy::read_npy(path)?;
            let data = match a.ndim() {
                2 => a
                    .into_dimensionality::<Ix2>()
                    .map_err(|e| Error::file(path, e))?
                    .insert_axis(Axis(0)),
                3 => a
                    .into_dimensionality::<Ix3>()
                    .map_err(|e| Error::file(path, e))?,
                n => {
                    return Err(Error::file(
                        path,
                        format!(
                            "array of shape {:?} ({n}-D); expected an image (H, W) or (C, H, W)",
                            a.shape()
                        ),
                    ))
                }
            };
            LoadedImage {
                data,
                intensity: Intensity::scaled(1.0, "npy"),
                source: path.display().to_string(),
            }
        }
        Kind::Nifti => nii::read_slice(path, opts)?,
        Kind::Dicom => dicom::read(path, opts)?,
    };
    let d = img.data.dim();
    if d.0 == 0 || d.1 == 0 || d.2 == 0 {
        return Err(Error::file(
            path,
            format!("empty image of shape {d:?}; expected C, H, W > 0"),
        ));
    }
    check_finite(path, img.data.iter().copied())?;
    Ok(img)
}

/// Reads a NIfTI volume (`.nii`, `.nii.gz`) as the stack of its axial slices, (D, H, W),
/// inferior to superior, each oriented as in [`read_image`], in the file's values
/// (scl_slope/scl_inter applied; no normalisation).
pub fn read_volume(path: &Path) -> Result<Array3<f32>> {
    check_exists(path)?;
    match extension(path).as_str() {
        "nii" | "nii.gz" => {
            let v = nii::read_volume(path)?;
            check_finite(path, v.iter().copied())?;
            Ok(v)
        }
        ext => Err(Error::file(
            path,
            format!("cannot read `.{ext}` as a volume; supported: nii, nii.gz"),
        )),
    }
}

/// Reads a 2-D array for a blur kernel or an inpainting mask: an image file (PNG, JPEG,
/// TIFF) as grayscale in [0, 1] (colour is converted to luma), or a 2-D `.npy` (f32 or
/// f64) as stored.
pub fn read_gray(path: &Path) -> Result<Array2<f32>> {
    check_exists(path)?;
    match extension(path).as_str() {
        "npy" => {
            let a = npy::read_npy(path)?;
            check_finite(path, a.iter().copied())?;
            let shape = a.shape().to_vec();
            a.into_dimensionality::<Ix2>().map_err(|_| {
                Error::file(
                    path,
                    format!("array of shape {shape:?}; expected a 2-D array (H, W)"),
                )
            })
        }
        "png" | "jpg" | "jpeg" | "tif" | "tiff" => raster::read_luma(path),
        ext => Err(Error::file(
            path,
            format!("unknown extension `.{ext}` for a 2-D array; supported: png, jpg, jpeg, tif, tiff, npy"),
        )),
    }
}

/// Reads a complex array: `.npy` complex64/complex128 in the stored axis order, or a BART
/// `.cfl`/`.hdr` pair (see [`read_cfl`] for its axis order).
pub fn read_complex(path: &Path) -> Result<ArrayD<Complex32>> {
    match extension(path).as_str() {
        "npy" => {
            check_exists(path)?;
            npy::read_npy_complex(path)
        }
        "cfl" | "hdr" => read_cfl(path),
        ext => Err(Error::file(
            path,
            format!("unknown extension `.{ext}` for a complex array; supported: npy, cfl (with its .hdr)"),
        )),
    }
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

/// Writes a (C, H, W) image, atomically, by extension:
/// - `.png`: 8-bit, values mapped linearly from `display = (lo, hi)` to 0..255 and
///   clipped; C = 1 gray, C = 3 RGB;
/// - `.tif`/`.tiff`: 16-bit, mapped from `display` to 0..65535 and clipped; C = 1 or 3;
/// - `.npy`: f32 as is (`display` unused), shape (C, H, W).
///
/// Reading a PNG/TIFF written with `display = (0, 1)` gives back the image to within the
/// quantisation step. Fails (writing nothing) on NaN values, `hi <= lo`, or C not 1 or 3.
pub fn write_image(path: &Path, image: ArrayView3<f32>, display: (f32, f32)) -> Result<()> {
    let ext = extension(path);
    match ext.as_str() {
        "png" | "tif" | "tiff" => {
            let (lo, hi) = display;
            if !(lo.is_finite() && hi.is_finite() && hi > lo) {
                return Err(Error::file(
                    path,
                    format!("display range ({lo}, {hi}) is invalid; expected finite lo < hi"),
                ));
            }
            check_finite(path, image.iter().copied())?;
            raster::write(path, image, lo, hi, ext == "png")
        }
        "npy" => write_npy(path, image.into_dyn()),
        _ => Err(Error::file(
            path,
            format!("cannot write images as `.{ext}`; supported: png, tif, tiff, npy"),
        )),
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary file unless the write was committed (also on panic).
struct TmpGuard {
    path: PathBuf,
    committed: bool,
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `path` atomically: `write` is called with a temporary path in the same
/// directory (`.<name>.tmp-<pid>-<n>`), and the result is renamed to `path` only when
/// `write` succeeds. On failure (or panic) the temporary file is removed and `path` is
/// left as it was.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::file(path, "expected a path naming a file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::file(
            path,
            format!("directory {} does not exist", dir.display()),
        ));
    }
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut guard = TmpGuard {
        path: dir.join(format!(".{name}.tmp-{}-{n}", std::process::id())),
        committed: false,
    };
    write(&guard.path)?;
    std::fs::rename(&guard.path, path).map_err(|e| {
        Error::file(
            path,
            format!("could not move the finished file into place: {e}"),
        )
    })?;
    guard.committed = true;
    Ok(())
}

/// Writes `value` as pretty-printed JSON, atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::file(path, format!("could not serialise to JSON: {e}")))?;
    write_atomic(path, |tmp| {
        std::fs::write(tmp, text.as_bytes() as &[u8])
            .map_err(|e| Error::file(path, format!("could not write: {e}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_handles_nii_gz_and_case() {
        assert_eq!(extension(Path::new("a/B.NII.GZ")), "nii.gz");
        assert_eq!(extension(Path::new("x.Png")), "png");
        assert_eq!(extension(Path::new("noext")), "");
    }

    #[test]
    fn atomic_write_failure_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let r = write_atomic(&target, |tmp| {
            std::fs::write(tmp, b"partial").unwrap();
            Err(Error::Invalid("writer failed".into()))
        });
        assert!(r.is_err());
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
