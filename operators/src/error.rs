//! The error type of the operators crate.

/// What went wrong when building or applying an operator.
///
/// Every message names what was wrong and what was expected, so that the CLI can print it
/// as it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A parameter is outside its allowed range or inconsistent with the others.
    #[error("{operator}: parameter `{key}` {message}")]
    Parameter {
        operator: String,
        key: String,
        message: String,
    },
    /// An array does not have the shape the operator works on.
    #[error("{operator}: {what} has shape {found:?}, expected {expected:?}")]
    Shape {
        operator: String,
        what: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// An array contains NaN or infinite values.
    #[error("{what} contains {count} non-finite value(s) (NaN or infinity)")]
    NonFinite { what: String, count: usize },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A parameter error: `message` completes the sentence "parameter `key` ...".
    pub fn param(operator: &str, key: &str, message: impl Into<String>) -> Self {
        Error::Parameter {
            operator: operator.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A shape error for an input called `what`.
    pub fn shape(operator: &str, what: &str, expected: &[usize], found: &[usize]) -> Self {
        Error::Shape {
            operator: operator.to_string(),
            what: what.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        }
    }
}

/// Checks `found` against `expected`, naming the operator and the input in the error.
pub fn check_shape(operator: &str, what: &str, expected: &[usize], found: &[usize]) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::shape(operator, what, expected, found))
    }
}

/// Rejects arrays with NaN or infinite entries.
pub fn check_finite<'a>(what: &str, values: impl IntoIterator<Item = &'a f32>) -> Result<()> {
    let count = values.into_iter().filter(|v| !v.is_finite()).count();
    if count == 0 {
        Ok(())
    } else {
        Err(Error::NonFinite {
            what: what.to_string(),
            count,
        })
    }
}

/// Parameter validation helpers shared by the operator constructors.
pub(crate) mod validate {
    use super::{Error, Result};

    /// `value` must be finite and strictly positive.
    pub fn positive(operator: &str, key: &str, value: f64) -> Result<()> {
        if value.is_finite() && value > 0.0 {
            Ok(())
        } else {
            Err(Error::param(
                operator,
                key,
                format!("must be a positive finite number, got {value}"),
            ))
        }
    }

    /// `shape` must be an image shape `(C, H, W)` with positive sizes.
    pub fn image_shape(operator: &str, shape: &[usize]) -> Result<(usize, usize, usize)> {
        match *shape {
            [c, h, w] if c > 0 && h > 0 && w > 0 => Ok((c, h, w)),
            _ => Err(Error::param(
                operator,
                "shape",
                format!("must be an image shape (C, H, W) with positive sizes, got {shape:?}"),
            )),
        }
    }

    /// `value` must lie in the closed interval [lo, hi].
    pub fn in_range(operator: &str, key: &str, value: f64, lo: f64, hi: f64) -> Result<()> {
        if value.is_finite() && value >= lo && value <= hi {
            Ok(())
        } else {
            Err(Error::param(
                operator,
                key,
                format!("must lie in [{lo}, {hi}], got {value}"),
            ))
        }
    }
}
