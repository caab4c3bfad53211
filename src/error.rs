//! The one error type of the crate. The Python layer maps each variant to a Python exception type.

/// Everything that can go wrong in latte-rs.
#[derive(Debug, thiserror::Error)]
pub enum LatteError {
    /// A configuration value or combination that cannot work.
    #[error("invalid config: {0}")]
    Config(String),
    /// An input whose shape or value does not fit; the message names the argument.
    #[error("{0}")]
    Value(String),
    /// An input of the wrong dtype; the message names the argument.
    #[error("{0}")]
    Type(String),
    /// A state dict that does not match the model.
    #[error("{0}")]
    StateDict(String),
    /// A capability that needs a cargo feature this build lacks.
    #[error("{0}")]
    Unsupported(String),
    /// A file that does not exist.
    #[error("file not found: {0}")]
    NotFound(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("safetensors: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
}

/// Result with [`LatteError`].
pub type Result<T> = std::result::Result<T, LatteError>;

/// Shorthand for a [`LatteError::Value`] that names the argument, the expectation and what was received.
pub(crate) fn value_error(arg: &str, expected: impl std::fmt::Display, got: impl std::fmt::Display) -> LatteError {
    LatteError::Value(format!("{arg}: expected {expected}, got {got}"))
}
