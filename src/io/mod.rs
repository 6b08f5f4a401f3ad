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
mod guard;
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

/// Fails with a clear message when the file does not exist or is not a regular file (a
/// directory, or a device such as `/dev/zero`, which would be read forever).
fn check_exists(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::file(path, "is a directory, expected a file")),
        Ok(m) if !m.is_file() => Err(Error::file(
            path,
            "is not a regular file (a device, pipe or socket); expected a file",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::file(path, "cannot read: no such file"))
        }
        Err(e) => Err(Error::file(path, format!("cannot be read: {e}"))),
    }
}

/// Reads a whole file after checking that it is a regular file of at most `limit` bytes
/// (see [`crate::limits::max_file_bytes`] and [`crate::limits::MAX_TEXT_BYTES`]), so neither
/// a device such as `/dev/zero` nor a file grown huge is read into memory.
pub fn read_bytes(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    check_exists(path)?;
    let f =
        std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > limit {
        return Err(Error::TooLarge(format!(
            "{}: {len} bytes, over the {limit} this reader takes (raise POSTERIOR_MAX_ELEMENTS \
             for larger data)",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len as usize)
        .map_err(|_| Error::TooLarge(format!("{}: cannot allocate {len} bytes", path.display())))?;
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(Error::TooLarge(format!(
            "{}: grew past {limit} bytes while being read",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Reads a UTF-8 text file (a sidecar, a card, a suite, a header) of at most
/// [`crate::limits::MAX_TEXT_BYTES`], checked as [`read_bytes`] does.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = read_bytes(path, crate::limits::MAX_TEXT_BYTES)?;
    String::from_utf8(bytes).map_err(|_| Error::file(path, "is not UTF-8 text"))
}

/// Errors naming the file and the number of non-finite values, if any, or of values too
/// large for f32 arithmetic ([`crate::limits::check_magnitude`]).
fn check_finite(path: &Path, values: impl IntoIterator<Item = f32>) -> Result<()> {
    crate::limits::check_magnitude(&path.display().to_string(), values)
}

/// Reads a 2-D image (or one slice of a volume) as (C, H, W) `f32` in working units.
///
/// Dispatches on the extension (`png`, `jpg`/`jpeg`, `tif`/`tiff`, `npy`, `nii`/`nii.gz`,
/// `dcm`, or any file starting with the DICOM preamble); see the module docs for the
/// units and orientation. Fails, naming the file, when it is missing, of an unknown kind,
/// truncated or malformed, when the slice is out of range, when it claims more elements
/// than [`crate::limits`] allows, or when it holds NaN, infinite or huge (beyond
/// [`crate::limits::MAX_MAGNITUDE`]) values.
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
            let bad = image.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                return Err(Error::NonFinite(format!(
                    "{}: the image holds {bad} NaN or infinite value(s); nothing written",
                    path.display()
                )));
            }
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
    target: PathBuf,
    committed: bool,
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl TmpGuard {
    /// Renames the temporary file over its target.
    fn commit(&mut self) -> Result<()> {
        std::fs::rename(&self.path, &self.target).map_err(|e| {
            Error::file(
                &self.target,
                format!("could not move the finished file into place: {e}"),
            )
        })?;
        self.committed = true;
        Ok(())
    }
}

thread_local! {
    /// The temporaries written inside [`write_together`] on this thread, renamed at its end.
    static STAGED: std::cell::RefCell<Option<Vec<TmpGuard>>> = const { std::cell::RefCell::new(None) };
}

/// Writes `path` atomically: `write` is called with a temporary path in the same
/// directory (`.<name>.tmp-<pid>-<n>`), and the result is renamed to `path` only when
/// `write` succeeds. On failure (or panic) the temporary file is removed and `path` is
/// left as it was. Temporaries of `path` left by a process that is gone (killed in the
/// middle of a write) are removed first. Inside [`write_together`], the rename waits for
/// the other outputs.
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
    if path.is_dir() {
        return Err(Error::file(
            path,
            "is a directory, expected a file to write",
        ));
    }
    remove_stale_temps(&dir, name);
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let guard = TmpGuard {
        path: dir.join(format!(".{name}.tmp-{}-{n}", std::process::id())),
        target: path.to_path_buf(),
        committed: false,
    };
    write(&guard.path)?;
    let staged = STAGED.with(|s| match s.borrow_mut().as_mut() {
        Some(list) => {
            list.push(guard);
            None
        }
        None => Some(guard),
    });
    match staged {
        Some(mut guard) => guard.commit(),
        None => Ok(()),
    }
}

/// Writes outputs that belong together (a measurement and its sidecar, a reconstruction
/// and its uncertainty map): every [`write_atomic`] inside `writes` (on this thread) writes
/// its temporary file, and only when all of them succeed are they renamed into place, one
/// after the other. If any write fails, no output is touched and every temporary is
/// removed.
pub fn write_together(writes: impl FnOnce() -> Result<()>) -> Result<()> {
    let outer = STAGED.with(|s| s.borrow_mut().replace(Vec::new()));
    let result = writes();
    let staged = STAGED.with(|s| std::mem::replace(&mut *s.borrow_mut(), outer));
    let mut staged = staged.unwrap_or_default();
    result?;
    // What could still make a rename fail (a directory put in place meanwhile) is checked
    // for all targets before the first rename.
    if let Some(g) = staged.iter().find(|g| g.target.is_dir()) {
        return Err(Error::file(
            &g.target,
            "is a directory, expected a file to write",
        ));
    }
    for guard in &mut staged {
        guard.commit()?;
    }
    Ok(())
}

/// Removes `.<name>.tmp-<pid>-<n>` files in `dir` whose process is gone: what a killed
/// write left behind. Files of live processes (including this one) are kept.
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest
            .split_once('-')
            .and_then(|(pid, n)| n.parse::<u64>().ok().and(pid.parse::<i32>().ok()))
        else {
            continue;
        };
        if pid > 0 && pid as u32 != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether a process with this id exists (signal 0 probes without sending anything).
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
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
    fn stale_temps_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.npy");
        // A pid that cannot exist (above the kernel's pid_max of 2^22) and our own.
        let dead = dir.path().join(".out.npy.tmp-2147483600-0");
        let ours = dir
            .path()
            .join(format!(".out.npy.tmp-{}-999", std::process::id()));
        let other = dir.path().join(".other.npy.tmp-2147483600-0");
        for p in [&dead, &ours, &other] {
            std::fs::write(p, b"partial").unwrap();
        }
        write_atomic(&target, |tmp| {
            std::fs::write(tmp, b"done").map_err(|e| Error::file(tmp, e))
        })
        .unwrap();
        assert!(!dead.exists(), "a dead writer's temp is removed");
        assert!(ours.exists(), "a live writer's temp is kept");
        assert!(other.exists(), "another file's temp is not ours to touch");
        assert_eq!(std::fs::read(&target).unwrap(), b"done");
    }

    #[test]
    fn outputs_written_together_are_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("x.json"), dir.path().join("s.json"));
        write_json(&a, &"old x").unwrap();
        // The second write fails: the first output keeps its old contents.
        let r = write_together(|| {
            write_json(&a, &"new x")?;
            Err(Error::Invalid("the second output failed".into()))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "\"old x\"");
        assert!(!b.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temps left"
        );
        // Both succeed: both are in place.
        write_together(|| {
            write_json(&a, &"new x")?;
            write_json(&b, &"new s")
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "\"new x\"");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "\"new s\"");
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
