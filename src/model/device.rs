//! Devices and dtypes by the names users type: `"cpu"`, `"cuda"`, `"cuda:N"`; `"float32"`, `"bfloat16"`, ...

use candle_core::{DType, Device};

use crate::error::{value_error, LatteError, Result};

/// Parses "cpu", "cuda", "cuda:N"; CUDA needs the `cuda` feature.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec {
        "cuda" => Some(0),
        s => s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()),
    };
    match ordinal {
        None => Err(value_error(
            "device",
            "\"cpu\", \"cuda\" or \"cuda:N\"",
            format!("{spec:?}"),
        )),
        Some(n) => new_cuda(n),
    }
}

/// CUDA device `ordinal`, or an error naming what is missing. The CUDA build loads the driver and the CUDA
/// libraries when a GPU is first asked for (cudarc's dynamic loading, see vendor/README.md), and cudarc panics when
/// one cannot be found: ask it first, and catch a panic from a driver that loads but fails.
#[cfg(feature = "cuda")]
fn new_cuda(ordinal: usize) -> Result<Device> {
    // SAFETY: each call only tries to open a shared library (dlopen) and reports whether it could.
    let present = unsafe {
        [
            (
                "the NVIDIA driver (libcuda.so.1)",
                cudarc::driver::sys::is_culib_present(),
            ),
            ("cuBLAS (libcublas)", cudarc::cublas::sys::is_culib_present()),
            ("cuBLASLt (libcublasLt)", cudarc::cublaslt::sys::is_culib_present()),
            ("cuRAND (libcurand)", cudarc::curand::sys::is_culib_present()),
            ("NVRTC (libnvrtc)", cudarc::nvrtc::sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = present.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name).collect();
    if !missing.is_empty() {
        return Err(LatteError::Unsupported(format!(
            "device: cuda:{ordinal} cannot start, not found: {}; it needs the NVIDIA driver and the CUDA libraries of \
             the version latte-rs was built with (e.g. `pip install nvidia-cublas nvidia-curand nvidia-cuda-nvrtc` \
             for CUDA 13), their lib folders on LD_LIBRARY_PATH",
            missing.join(", ")
        )));
    }
    match std::panic::catch_unwind(|| Device::new_cuda(ordinal)) {
        Ok(device) => Ok(device?),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown reason");
            Err(LatteError::Unsupported(format!(
                "device: cuda:{ordinal} could not be started: {why}"
            )))
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn new_cuda(_ordinal: usize) -> Result<Device> {
    Err(LatteError::Unsupported(
        "device: latte-rs was built without CUDA support; rebuild with `maturin develop --release --features python,cuda` \
         (or `pip install . --config-settings=build-args='--features python,cuda'`)"
            .into(),
    ))
}

/// The name of a device as [`parse_device`] reads it.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}"),
    }
}

/// Parses a float dtype by its NumPy/PyTorch name ("float32", "bfloat16", ...) or short name ("f32", "bf16").
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "float32" | "f32" => Ok(DType::F32),
        "float64" | "f64" => Ok(DType::F64),
        "bfloat16" | "bf16" => Ok(DType::BF16),
        "float16" | "f16" => Ok(DType::F16),
        _ => Err(value_error(
            "dtype",
            "\"float32\", \"float64\", \"bfloat16\" or \"float16\"",
            format!("{name:?}"),
        )),
    }
}

/// The NumPy/PyTorch name of a float dtype.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F64 => "float64",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}
