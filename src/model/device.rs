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
        None => Err(value_error("device", "\"cpu\", \"cuda\" or \"cuda:N\"", format!("{spec:?}"))),
        Some(_) if !cfg!(feature = "cuda") => Err(LatteError::Unsupported(
            "device: latte-rs was built without CUDA support; rebuild with `maturin develop --release --features cuda` \
             (or `pip install . --config-settings=build-args='--features cuda'`)"
                .into(),
        )),
        Some(n) => Ok(Device::new_cuda(n)?),
    }
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
