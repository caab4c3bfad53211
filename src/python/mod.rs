//! The pyo3 layer: converts arrays, maps errors to Python exception types, and delegates to the core.
//! Nothing here computes; every numerical decision lives in the core crate.

mod cache;
mod config;
mod convert;
mod diffusion;
mod hub;
mod i3d;
mod model;
mod open;
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
        LatteError::Memory(_) => PyMemoryError::new_err(msg),
        LatteError::NotFound(_) => PyFileNotFoundError::new_err(msg),
        LatteError::Io(_) => PyOSError::new_err(msg),
        // NotImplementedError is a RuntimeError: a capability this build lacks.
        LatteError::Unsupported(_) => PyNotImplementedError::new_err(msg),
        LatteError::Candle(_) => PyRuntimeError::new_err(msg),
    }
}

/// Runs a binding's body and turns a panic that escapes it into a `RuntimeError` that says it is a bug, instead
/// of pyo3's `PanicException` (a `BaseException`, which `except Exception` does not catch). Every method that
/// returns a `PyResult` runs in one; the core is meant never to panic on any input, so this is the last line.
pub(crate) fn guard<T>(body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                "latte-rs internal error (a bug; please report it with the call that caused it): {msg}"
            )))
        }
    }
}

/// Runs model work without the GIL and, for a model on the CPU, on rayon's pool (`runtime::on_cpu_pool`): the one
/// way a Python call runs a whole model.
pub(crate) fn run_model<T: Send>(py: Python<'_>, device: &candle_core::Device, f: impl FnOnce() -> T + Send) -> T {
    py.detach(|| crate::runtime::on_cpu_pool(device, f))
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

/// Sets the process-wide kernel path ("auto": the fused CPU kernels where they apply; "generic": the
/// device-generic tensor ops everywhere, the code CUDA runs) and returns the previous one.
#[pyfunction]
fn set_kernel_path(path: &str) -> PyResult<&'static str> {
    use crate::nn::kernels::{default_path, set_default, KernelPath};
    let Some(new) = KernelPath::parse(path) else {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "kernel path: expected 'auto' or 'generic', got {path:?}"
        )));
    };
    let name = |p: KernelPath| match p {
        KernelPath::Auto => "auto",
        KernelPath::Generic => "generic",
    };
    let previous = name(default_path());
    set_default(new);
    Ok(previous)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    crate::runtime::configure_runtime();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CUDA_AVAILABLE", cfg!(feature = "cuda"))?;
    m.add("FLASH_ATTN_AVAILABLE", cfg!(feature = "flash-attn"))?;
    m.add_class::<config::PyLatteConfig>()?;
    m.add_class::<config::PyLatteT2VConfig>()?;
    m.add_class::<model::PyLatteModel>()?;
    m.add_class::<model::PyForwardGraph>()?;
    m.add_class::<convert::SharedStorage>()?;
    m.add_class::<diffusion::PyGaussianDiffusion>()?;
    m.add_class::<schedulers::PyGenerator>()?;
    m.add_class::<schedulers::PyScheduler>()?;
    m.add_class::<train::PyTrainer>()?;
    m.add_class::<vae::PyVideoVae>()?;
    m.add_class::<i3d::PyI3d>()?;
    m.add_class::<t2v::PyLatteT2V>()?;
    m.add_class::<t2v::PyT5>()?;
    m.add("BF16_AUTOCAST_SUPPORTED", crate::nn::autocast::bf16_supported())?;
    m.add_class::<open::PyOpenedModel>()?;
    m.add_class::<cache::PyTeaCache>()?;
    m.add_class::<cache::PyPab>()?;
    m.add_class::<cache::PyFasterCache>()?;
    m.add_function(wrap_pyfunction!(open::open_model, m)?)?;
    m.add_function(wrap_pyfunction!(diffusion::sample, m)?)?;
    m.add_function(wrap_pyfunction!(set_autocast, m)?)?;
    m.add_function(wrap_pyfunction!(set_kernel_path, m)?)?;
    Ok(())
}
