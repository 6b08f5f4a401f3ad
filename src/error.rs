//! The library's error type: every message says what was wrong and what was expected.
//!
//! Each variant is a *kind* a caller can match on (the Python bindings map them to
//! exceptions: [`Error::File`] to `OSError`, [`Error::Interrupted`] to `KeyboardInterrupt`,
//! [`Error::Device`] to `RuntimeError`, the rest to `ValueError`). New code picks the most
//! specific kind; [`Error::Invalid`] is for what fits no other.

use std::path::PathBuf;

/// What went wrong, by kind; the message says what was wrong and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operator could not be built or applied (bad parameter, wrong shape, NaN input).
    #[error(transparent)]
    Operator(#[from] posterior_operators::Error),
    /// A spec string (`blur:kernel=gaussian,sigma=3`) is malformed or names unknown keys.
    #[error("{0}")]
    Spec(String),
    /// A file could not be read or written, or its contents are not what was expected.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// An array has the wrong number of dimensions or the wrong extent along one.
    #[error("{0}")]
    Shape(String),
    /// Well-formed, but outside what this toolkit supports (a format feature, a method that
    /// does not apply to the operator, an architecture or schedule it does not know).
    #[error("{0}")]
    Unsupported(String),
    /// A claimed size (file header, spec, setting) exceeds a documented cap; the message
    /// names the cap and how to raise it.
    #[error("{0}")]
    TooLarge(String),
    /// Input or output values are NaN or infinite, or would overflow f32 arithmetic.
    #[error("{0}")]
    NonFinite(String),
    /// The GPU or one of its libraries is missing or failed.
    #[error("{0}")]
    Device(String),
    /// The work was interrupted (Ctrl-C in the Python bindings, a cancelled observer).
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// The request is well-formed but cannot be carried out as asked (inconsistent options,
    /// a setting out of range).
    #[error("{0}")]
    Invalid(String),
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A file error naming the file and the problem.
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// The kind's name in lower case (`file`, `shape`, ...), for messages and bindings.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Operator(posterior_operators::Error::Shape { .. }) => "shape",
            Error::Operator(posterior_operators::Error::NonFinite { .. }) => "non-finite",
            Error::Operator(_) => "invalid",
            Error::Spec(_) => "spec",
            Error::File { .. } => "file",
            Error::Shape(_) => "shape",
            Error::Unsupported(_) => "unsupported",
            Error::TooLarge(_) => "too-large",
            Error::NonFinite(_) => "non-finite",
            Error::Device(_) => "device",
            Error::Interrupted(_) => "interrupted",
            Error::Invalid(_) => "invalid",
        }
    }
}
