//! Caps on claimed sizes, checked *before* anything is allocated.
//!
//! A small file can claim a huge array (a 128-byte `.npy` header with a 1e9 x 1e9 shape, a
//! spec with `coils=100000`, a card with a huge resolution). Every reader and every spec
//! checks the size it is about to allocate against these caps first, and where the format
//! allows, against the bytes actually present in the file.
//!
//! | cap | default | raised by |
//! |---|---|---|
//! | elements of one array | 2^28 (268 M f32 values, 1 GiB) | `POSTERIOR_MAX_ELEMENTS` |
//! | steps / iterations of one run | 100,000 | `POSTERIOR_MAX_STEPS` |
//! | magnitude of an input value | 1e15 | (fixed) |
//!
//! The magnitude cap keeps f32 arithmetic finite: a square of 1e15 is 1e30, and a sum of
//! 2^28 such squares (the largest array allowed by default) is 2.7e38, still below f32's
//! largest value 3.4e38. Inputs beyond it (values near 3e38, a sidecar scale of 1e39, a
//! spec distance of 1e30) are refused with a message instead of turning into NaN later.
//!
//! The environment variables take a plain integer; an unreadable value is ignored with the
//! default kept (and said in the error message of any check that then fails).

use crate::error::{Error, Result};

/// Default cap on the number of elements of one array (2^28: 1 GiB of f32).
pub const DEFAULT_MAX_ELEMENTS: u64 = 1 << 28;
/// The longest text file read (a sidecar, a card, a suite, a header): 64 MiB.
pub const MAX_TEXT_BYTES: u64 = 64 << 20;

/// The longest binary file read whole (weights, DICOM, PNG/JPEG/TIFF, BART data): room for
/// the element cap at 16 bytes an element (complex128) plus 1 MiB of headers.
pub fn max_file_bytes() -> u64 {
    max_elements().saturating_mul(16).saturating_add(1 << 20)
}

/// Default cap on steps or iterations of one run.
pub const DEFAULT_MAX_STEPS: u64 = 100_000;
/// The largest magnitude accepted for an input value (image, measurement, header number,
/// spec parameter): see the module docs for why 1e15.
pub const MAX_MAGNITUDE: f64 = 1e15;

fn env_cap(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// The cap on elements of one array (`POSTERIOR_MAX_ELEMENTS`, default 2^28).
pub fn max_elements() -> u64 {
    env_cap("POSTERIOR_MAX_ELEMENTS", DEFAULT_MAX_ELEMENTS)
}

/// The cap on steps or iterations (`POSTERIOR_MAX_STEPS`, default 100,000).
pub fn max_steps() -> u64 {
    env_cap("POSTERIOR_MAX_STEPS", DEFAULT_MAX_STEPS)
}

/// The number of elements of `shape`, or `None` when the product overflows `u64`.
pub fn element_count(shape: &[usize]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
}

/// Checks that an array of `shape`, called `what` in the message, may be allocated.
pub fn check_elements(what: &str, shape: &[usize]) -> Result<u64> {
    let cap = max_elements();
    match element_count(shape) {
        Some(n) if n <= cap => Ok(n),
        found => Err(Error::TooLarge(format!(
            "{what} of shape {shape:?} has {} elements, over the cap of {cap} \
             (raise it with POSTERIOR_MAX_ELEMENTS if you really have data this large)",
            found.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
        ))),
    }
}

/// Checks that `steps`, called `what` in the message, is within the step cap.
pub fn check_steps(what: &str, steps: usize) -> Result<()> {
    let cap = max_steps();
    if steps as u64 <= cap {
        Ok(())
    } else {
        Err(Error::TooLarge(format!(
            "{what} = {steps} is over the cap of {cap} (raise it with POSTERIOR_MAX_STEPS)"
        )))
    }
}

/// Checks that a file claiming `shape` of `bytes_per_element`-byte values holds at least
/// that many bytes after its header (`available`), so a truncated file is refused before
/// the allocation rather than after a short read.
pub fn check_payload(
    what: &str,
    shape: &[usize],
    bytes_per_element: u64,
    available: u64,
) -> Result<()> {
    let n = check_elements(what, shape)?;
    let needed = n.saturating_mul(bytes_per_element);
    if available >= needed {
        Ok(())
    } else {
        Err(Error::Shape(format!(
            "{what} claims shape {shape:?} ({needed} bytes of data) but only {available} \
             bytes follow the header: the file is truncated or its header is wrong"
        )))
    }
}

/// Checks that every value is finite and at most [`MAX_MAGNITUDE`] in magnitude; the
/// error ([`Error::NonFinite`]) names `what`, the count of bad values and the largest one.
pub fn check_magnitude<I>(what: &str, values: I) -> Result<()>
where
    I: IntoIterator,
    I::Item: Into<f64>,
{
    let (mut nan, mut inf, mut huge, mut largest) = (0usize, 0usize, 0usize, 0f64);
    for v in values {
        let v: f64 = v.into();
        if v.is_nan() {
            nan += 1;
        } else if v.is_infinite() {
            inf += 1;
        } else if v.abs() > MAX_MAGNITUDE {
            huge += 1;
            largest = largest.max(v.abs());
        }
    }
    if nan + inf > 0 {
        return Err(Error::NonFinite(format!(
            "{what} contains {nan} NaN and {inf} infinite value(s); expected finite values"
        )));
    }
    if huge > 0 {
        return Err(Error::NonFinite(format!(
            "{what} holds {huge} value(s) of magnitude up to {largest:e}, beyond {MAX_MAGNITUDE:e}: \
             f32 arithmetic on them would overflow; rescale the data (e.g. to [0, 1])"
        )));
    }
    Ok(())
}

/// Checks one number (a header field, a spec parameter) like [`check_magnitude`].
pub fn check_number(what: &str, value: f64) -> Result<()> {
    if !value.is_finite() {
        Err(Error::NonFinite(format!(
            "{what}: {value} is not a finite number"
        )))
    } else if value.abs() > MAX_MAGNITUDE {
        Err(Error::NonFinite(format!(
            "{what}: {value:e} is beyond {MAX_MAGNITUDE:e}: f32 arithmetic on it would overflow"
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_and_oversized_shapes_are_refused_before_allocation() {
        assert!(check_elements("x", &[usize::MAX, 2]).is_err());
        assert!(check_elements("x", &[1_000_000_000, 1_000_000_000]).is_err());
        assert_eq!(check_elements("x", &[3, 64, 64]).unwrap(), 3 * 64 * 64);
        assert_eq!(check_elements("x", &[]).unwrap(), 1);
        let msg = check_elements("kernel", &[1 << 20, 1 << 20])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("kernel") && msg.contains("POSTERIOR_MAX_ELEMENTS"),
            "{msg}"
        );
    }

    #[test]
    fn short_payloads_are_refused() {
        assert!(check_payload("y", &[4, 4], 4, 63).is_err());
        assert!(check_payload("y", &[4, 4], 4, 64).is_ok());
    }

    #[test]
    fn magnitudes_that_would_overflow_f32_are_refused() {
        assert!(check_magnitude("x", [1.0f32, -2.0, 1e15]).is_ok());
        let e = check_magnitude("x", [1.0f32, 3e38]).unwrap_err();
        assert_eq!(e.kind(), "non-finite");
        assert!(e.to_string().contains("e38"), "{e}");
        assert!(check_magnitude("x", [f32::NAN]).is_err());
        assert!(check_number("sod", 1e30).is_err());
        assert!(check_number("sod", f64::INFINITY).is_err());
        // The cap's premise: squares of 2^28 values at the cap sum to a finite f32.
        let sum = (MAX_MAGNITUDE * MAX_MAGNITUDE) * DEFAULT_MAX_ELEMENTS as f64;
        assert!(sum < f32::MAX as f64, "{sum}");
    }

    #[test]
    fn step_cap() {
        assert!(check_steps("--steps", 1_000_000_000).is_err());
        assert!(check_steps("--steps", 1000).is_ok());
    }
}
