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
    /// candle's error; one that carries a [`LatteError::Memory`] (see [`memory_in_candle`]) converts to that.
    #[error(transparent)]
    Candle(candle_core::Error),
    #[error("safetensors: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
}

/// Result with [`LatteError`].
pub type Result<T> = std::result::Result<T, LatteError>;

impl From<candle_core::Error> for LatteError {
    fn from(e: candle_core::Error) -> Self {
        match carried_memory_error(&e) {
            Some(msg) => LatteError::Memory(msg),
            None => LatteError::Candle(e),
        }
    }
}

/// `e` (a [`LatteError::Memory`]) as candle's error, for code whose error type is candle's (a kernel's custom op):
/// it converts back to the memory error at the crate's boundary, so that Python sees a `MemoryError`.
pub(crate) fn memory_in_candle(e: LatteError) -> candle_core::Error {
    candle_core::Error::WrappedContext {
        wrapped: Box::new(e),
        context: String::new(),
    }
}

/// The message of a memory error carried by [`memory_in_candle`], through the context candle adds on the way.
fn carried_memory_error(e: &candle_core::Error) -> Option<String> {
    use candle_core::Error as E;
    match e {
        E::WrappedContext { wrapped, .. } => match wrapped.downcast_ref::<LatteError>() {
            Some(LatteError::Memory(msg)) => Some(msg.clone()),
            _ => None,
        },
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            carried_memory_error(inner)
        }
        _ => None,
    }
}

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

/// [`parse_json`] of a config, which must be a JSON object: a config whose fields all have defaults would read
/// an array (`[]`, as a sequence of no fields) or another value as "nothing set", e.g. a model of the full
/// default size instead of the one meant. The error says what the JSON is instead.
pub(crate) fn parse_json_object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    let value: serde_json::Value = parse_json(bytes)?;
    let got = match &value {
        serde_json::Value::Object(_) => return from_json_value(value),
        serde_json::Value::Array(a) => format!("an array of {} values", a.len()),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::String(_) => "a string".into(),
        serde_json::Value::Bool(b) => format!("{b}"),
        serde_json::Value::Null => "null".into(),
    };
    Err(format!("expected a JSON object of config keys, got {got}"))
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
