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
//!
//! The environment variables take a plain integer; an unreadable value is ignored with the
//! default kept (and said in the error message of any check that then fails).

use crate::error::{Error, Result};

/// Default cap on the number of elements of one array (2^28: 1 GiB of f32).
pub const DEFAULT_MAX_ELEMENTS: u64 = 1 << 28;
/// Default cap on steps or iterations of one run.
pub const DEFAULT_MAX_STEPS: u64 = 100_000;

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
    fn step_cap() {
        assert!(check_steps("--steps", 1_000_000_000).is_err());
        assert!(check_steps("--steps", 1000).is_ok());
    }
}
