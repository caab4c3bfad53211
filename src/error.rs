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
    /// A workload larger than the memory this process can get; the message gives the estimate.
    #[error("{0}")]
    Memory(String),
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

/// Parses JSON into `T`; the error names the field it failed at (`mlp_ratio: invalid type: null, expected f64
/// at line 1 column 18`) so that a message about a config or a file says which key is wrong.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| describe_json_error(&e))?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// [`parse_json`] of an already parsed value.
pub(crate) fn from_json_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> std::result::Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| describe_json_error(&e))
}

fn describe_json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    if path == "." || path.is_empty() {
        e.inner().to_string()
    } else {
        format!("{path}: {}", e.inner())
    }
}
