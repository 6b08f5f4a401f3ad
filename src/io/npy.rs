//! NumPy `.npy` arrays.
//!
//! The header is read and its claimed shape checked against the size cap and against the
//! bytes the file actually holds ([`crate::limits`]) before `ndarray-npy` allocates: a
//! 128-byte file claiming a 1e9 x 1e9 array is refused, not attempted.

use std::io::Read;
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

/// The longest header accepted (numpy's own reader refuses headers over 10,000 bytes by
/// default; this leaves room for hand-written ones).
const MAX_HEADER_BYTES: usize = 1 << 16;

/// What a `.npy` header claims: the shape and the size of one element in bytes.
#[derive(Debug, PartialEq)]
struct Claim {
    shape: Vec<usize>,
    element_bytes: u64,
    /// Bytes after the header.
    payload: u64,
}

/// The value that follows `'key':` in a header dict (both quote styles accepted).
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    Some(rest.trim_start().strip_prefix(':')?.trim_start())
}

/// Parses the shape tuple `(a, b, )` at the start of `text`.
fn parse_shape(text: &str) -> Option<Vec<usize>> {
    let inner = text.strip_prefix('(')?;
    let inner = &inner[..inner.find(')')?];
    inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_end_matches(['L', 'l']).parse::<usize>().ok())
        .collect()
}

/// Reads and checks the header of `path` without reading the data.
fn read_claim(path: &Path) -> Result<Claim> {
    let bad = |what: &str| Error::file(path, format!("not a valid .npy file ({what})"));
    let mut f =
        std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let file_len = f
        .metadata()
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?
        .len();
    let mut pre = [0u8; 10];
    f.read_exact(&mut pre)
        .map_err(|_| bad("shorter than the 10-byte preamble"))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(bad("no \\x93NUMPY magic"));
    }
    let (header_len, preamble) = match pre[6] {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as usize, 10u64),
        2 | 3 => {
            let mut more = [0u8; 2];
            f.read_exact(&mut more)
                .map_err(|_| bad("truncated inside the preamble"))?;
            (
                u32::from_le_bytes([pre[8], pre[9], more[0], more[1]]) as usize,
                12u64,
            )
        }
        v => return Err(bad(&format!("format version {v} is not 1, 2 or 3"))),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(&format!(
            "a header of {header_len} bytes, over the {MAX_HEADER_BYTES} accepted"
        )));
    }
    let mut header = vec![0u8; header_len];
    f.read_exact(&mut header).map_err(|_| {
        Error::file(
            path,
            "truncated or not a .npy file (ends inside the header)",
        )
    })?;
    let header = String::from_utf8_lossy(&header);
    let shape = header_value(&header, "shape")
        .and_then(parse_shape)
        .ok_or_else(|| {
            bad(&format!(
                "no readable `shape` in the header {}",
                header.trim()
            ))
        })?;
    let descr = header_value(&header, "descr")
        .and_then(|v| v.get(1..))
        .and_then(|v| v.split(['\'', '"']).next())
        .ok_or_else(|| {
            bad(&format!(
                "no readable `descr` in the header {}",
                header.trim()
            ))
        })?;
    let digits: String = descr.chars().filter(char::is_ascii_digit).collect();
    let element_bytes = digits.parse::<u64>().unwrap_or(1).max(1);
    let payload = file_len.saturating_sub(preamble + header_len as u64);
    Ok(Claim {
        shape,
        element_bytes,
        payload,
    })
}

/// Checks the header's claim against the caps and the file's length.
fn check_claim(path: &Path) -> Result<()> {
    let c = read_claim(path)?;
    crate::limits::check_payload(
        &format!("{} (.npy)", path.display()),
        &c.shape,
        c.element_bytes,
        c.payload,
    )
    .map_err(|e| match e {
        Error::Shape(m) => Error::file(path, m),
        other => other,
    })
}

fn is_wrong_type(e: &ReadNpyError) -> bool {
    matches!(e, ReadNpyError::WrongDescriptor(_))
}

/// Reads a `.npy` array as `f32`: f32 or f64 files as stored; complex64/complex128 files
/// as a LEADING (re, im) channel pair, i.e. shape (2, ...) with `[0, ...]` the real part.
pub fn read_npy(path: &Path) -> Result<ArrayD<f32>> {
    check_exists(path)?;
    check_claim(path)?;
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
    check_claim(path)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_with_header(dir: &Path, name: &str, header: &str, data: &[u8]) -> std::path::PathBuf {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(data);
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_small_file_claiming_a_huge_array_is_refused_before_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let p = npy_with_header(
            dir.path(),
            "huge.npy",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1000000000), }",
            &[],
        );
        let e = read_npy(&p).unwrap_err();
        assert_eq!(e.kind(), "too-large", "{e}");
        assert!(e.to_string().contains("POSTERIOR_MAX_ELEMENTS"), "{e}");
        assert!(read_npy_complex(&p).is_err());
    }

    #[test]
    fn a_header_claiming_more_data_than_the_file_holds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = npy_with_header(
            dir.path(),
            "short.npy",
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 4), }",
            &[0u8; 8 * 15],
        );
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // The same header with its 16 values reads.
        let p = npy_with_header(
            dir.path(),
            "ok.npy",
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 4), }",
            &[0u8; 8 * 16],
        );
        assert_eq!(read_npy(&p).unwrap().shape(), &[4, 4]);
    }

    #[test]
    fn shapes_parse_in_every_spelling_numpy_writes() {
        assert_eq!(parse_shape("(3,), }"), Some(vec![3]));
        assert_eq!(parse_shape("(), }"), Some(vec![]));
        assert_eq!(parse_shape("(2, 3, 4), }"), Some(vec![2, 3, 4]));
        assert_eq!(parse_shape("(2L, 3L), }"), Some(vec![2, 3]));
        assert_eq!(parse_shape("(2, -3)"), None);
        assert_eq!(parse_shape("[2, 3]"), None);
    }
}
