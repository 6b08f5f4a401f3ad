//! The library's error type: every message says what was wrong and what was expected.

use std::path::PathBuf;

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
    /// The request is well-formed but cannot be carried out as asked (a method that does
    /// not apply to the operator, inconsistent options).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A file error naming the file and the problem.
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
