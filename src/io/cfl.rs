//! BART's `.cfl` / `.hdr` complex arrays.
//!
//! A BART array `name` is two files: `name.hdr`, text with a `# Dimensions` line followed
//! by a line of (usually 16) sizes, and `name.cfl`, the complex64 elements (little-endian
//! `f32` re, im pairs) in column-major order: element `[d0, d1, ...]` lies at offset
//! `d0 + n0 * (d1 + n1 * (d2 + ...))`.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD, IxDyn, ShapeBuilder};
use num_complex::Complex32;

use super::{check_exists, extension, write_atomic};
use crate::error::{Error, Result};

/// BART's own number of dimensions (`DIMS`).
const BART_DIMS: usize = 16;

/// The longest `.hdr` accepted (BART writes a few dozen bytes).
const MAX_HDR_BYTES: u64 = 1 << 16;

/// The `.cfl` and `.hdr` paths for a BART array named by `name`, `name.cfl` or `name.hdr`.
fn pair(path: &Path) -> (PathBuf, PathBuf) {
    let base = match extension(path).as_str() {
        "cfl" | "hdr" => path.with_extension(""),
        _ => path.to_path_buf(),
    };
    let mut cfl = base.clone().into_os_string();
    cfl.push(".cfl");
    let mut hdr = base.into_os_string();
    hdr.push(".hdr");
    (PathBuf::from(cfl), PathBuf::from(hdr))
}

fn parse_hdr(hdr: &Path, text: &str) -> Result<Vec<usize>> {
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with('#') && line[1..].trim() == "Dimensions" {
            let dims_line = lines.find(|l| !l.is_empty()).ok_or_else(|| {
                Error::file(hdr, "malformed BART header: nothing after `# Dimensions`")
            })?;
            let dims = dims_line
                .split_whitespace()
                .map(|t| t.parse::<usize>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| {
                    Error::file(
                        hdr,
                        format!("malformed BART header: dimensions `{dims_line}` are not non-negative integers"),
                    )
                })?;
            if dims.is_empty() {
                return Err(Error::file(hdr, "malformed BART header: no dimensions"));
            }
            return Ok(dims);
        }
    }
    Err(Error::file(
        hdr,
        "malformed BART header: no `# Dimensions` line",
    ))
}

/// Reads a BART array (`path` may name the `.cfl`, the `.hdr`, or their common stem).
///
/// The result has BART's dimension order: `arr[[d0, d1, ...]]` is BART's element
/// `(d0, d1, ...)` (the array is returned in standard row-major memory layout). The first
/// four dimensions (BART's read, phase 1, phase 2, coil) are always kept; singleton
/// dimensions after the last non-singleton one beyond the fourth are dropped, so a 2-D
/// 8-coil k-space `256 256 1 8 1 ... 1` gives shape `[256, 256, 1, 8]`.
pub fn read_cfl(path: &Path) -> Result<ArrayD<Complex32>> {
    let (cfl, hdr) = pair(path);
    check_exists(&hdr)?;
    check_exists(&cfl)?;
    let hdr_len = std::fs::metadata(&hdr).map(|m| m.len()).unwrap_or(0);
    if hdr_len > MAX_HDR_BYTES {
        return Err(Error::file(
            &hdr,
            format!("a BART header of {hdr_len} bytes; expected a short text file (at most {MAX_HDR_BYTES} bytes)"),
        ));
    }
    let text = super::read_text(&hdr)?;
    let mut dims = parse_hdr(&hdr, &text)?;
    let n = crate::limits::check_elements(&format!("{} (BART array)", hdr.display()), &dims)?;
    let bytes = n.saturating_mul(8);
    let len = std::fs::metadata(&cfl)
        .map_err(|e| Error::file(&cfl, format!("cannot read: {e}")))?
        .len();
    if len != bytes {
        return Err(Error::file(
            &cfl,
            format!(
                "holds {len} bytes but its header {} declares dimensions {dims:?} = {n} complex64 values = {bytes} bytes",
                hdr.display()
            ),
        ));
    }
    let raw = super::read_bytes(&cfl, bytes)?;
    if raw.len() as u64 != bytes {
        return Err(Error::file(&cfl, "changed size while being read"));
    }
    let data: Vec<Complex32> = raw
        .chunks_exact(8)
        .map(|c| {
            Complex32::new(
                f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                f32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect();
    while dims.len() > 4 && dims.last() == Some(&1) {
        dims.pop();
    }
    while dims.len() < 4 {
        dims.push(1);
    }
    let a = ArrayD::from_shape_vec(IxDyn(&dims).f(), data)
        .map_err(|e| Error::file(&cfl, format!("cannot shape data as {dims:?}: {e}")))?;
    Ok(a.as_standard_layout().into_owned())
}

/// Writes a BART array (`path` may name the `.cfl`, the `.hdr`, or their stem): the
/// `.hdr` lists `array`'s shape padded with ones to 16 dimensions, the `.cfl` its elements
/// in column-major order, so that [`read_cfl`] (and BART) give back the same indexing.
/// Each file is written atomically (the `.cfl` first).
pub fn write_cfl(path: &Path, array: ArrayViewD<Complex32>) -> Result<()> {
    let (cfl, hdr) = pair(path);
    if array.ndim() > BART_DIMS {
        return Err(Error::file(
            &cfl,
            format!(
                "array has {} dimensions; BART allows at most {BART_DIMS}",
                array.ndim()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(array.len() * 8);
    // Column-major order = row-major order of the reversed axes.
    for v in array.view().reversed_axes().iter() {
        bytes.extend_from_slice(&v.re.to_le_bytes());
        bytes.extend_from_slice(&v.im.to_le_bytes());
    }
    let mut dims: Vec<String> = array.shape().iter().map(|d| d.to_string()).collect();
    dims.resize(BART_DIMS, "1".to_string());
    let header = format!("# Dimensions\n{}\n", dims.join(" "));
    write_atomic(&cfl, |tmp| {
        std::fs::write(tmp, &bytes).map_err(|e| Error::file(&cfl, format!("could not write: {e}")))
    })?;
    write_atomic(&hdr, |tmp| {
        std::fs::write(tmp, header.as_bytes())
            .map_err(|e| Error::file(&hdr, format!("could not write: {e}")))
    })
}
