//! The pyo3 layer: converts arrays, maps errors to Python exception types, and delegates to the core.
//! Nothing here computes; every numerical decision lives in the core crate.

mod convert;
mod diffusion;
mod i3d;
mod model;
mod sampling;
mod schedulers;
mod t2v;
mod train;
mod vae;

use pyo3::prelude::*;

use crate::error::LatteError;

/// Maps the crate's error to the Python exception a user expects.
pub(crate) fn to_py_err(e: LatteError) -> PyErr {
    use pyo3::exceptions::*;
    let msg = e.to_string();
    match e {
        LatteError::Config(_) | LatteError::Value(_) | LatteError::StateDict(_) | LatteError::Json(_) => {
            PyValueError::new_err(msg)
        }
        LatteError::SafeTensors(_) => PyValueError::new_err(msg),
        LatteError::Type(_) => PyTypeError::new_err(msg),
        LatteError::NotFound(_) => PyFileNotFoundError::new_err(msg),
        LatteError::Io(_) => PyOSError::new_err(msg),
        LatteError::Unsupported(_) | LatteError::Candle(_) => PyRuntimeError::new_err(msg),
    }
}

/// Extension trait: `result.py()?` converts a core result into a Python one.
pub(crate) trait IntoPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T, E: Into<LatteError>> IntoPy<T> for std::result::Result<T, E> {
    fn py(self) -> PyResult<T> {
        self.map_err(|e| to_py_err(e.into()))
    }
}

/// Turns CPU bf16 autocast on (`"bfloat16"`) or off (`None`) for the calling thread; returns the previous
/// setting. `latte_rs.autocast` is the public face.
#[pyfunction]
fn set_autocast(dtype: Option<&str>) -> PyResult<Option<&'static str>> {
    let enable = match dtype {
        None => false,
        Some("bfloat16" | "bf16") => true,
        Some(other) => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "autocast dtype: expected 'bfloat16' or None, got {other:?}"
            )))
        }
    };
    Ok(crate::nn::autocast::set_bf16(enable).then_some("bfloat16"))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    crate::configure_runtime();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CUDA_AVAILABLE", cfg!(feature = "cuda"))?;
    m.add("FLASH_ATTN_AVAILABLE", cfg!(feature = "flash-attn"))?;
    m.add_class::<model::PyLatteConfig>()?;
    m.add_class::<model::PyLatteModel>()?;
    m.add_class::<diffusion::PyGaussianDiffusion>()?;
    m.add_class::<schedulers::PyGenerator>()?;
    m.add_class::<schedulers::PyScheduler>()?;
    m.add_class::<train::PyTrainer>()?;
    m.add_class::<vae::PyVideoVae>()?;
    m.add_class::<i3d::PyI3d>()?;
    m.add_class::<t2v::PyLatteT2V>()?;
    m.add_class::<t2v::PyT5>()?;
    m.add("BF16_AUTOCAST_SUPPORTED", crate::nn::autocast::bf16_supported())?;
    m.add_function(wrap_pyfunction!(sampling::sample, m)?)?;
    m.add_function(wrap_pyfunction!(set_autocast, m)?)?;
    Ok(())
}
