//! Non-finite values, checked once where they enter (a model's inputs) and where they would leave (a model's or
//! the VAE's output): NaN or infinity is refused with a message naming the argument, never passed on silently.

use candle_core::{DType, Device, Tensor};

use crate::error::{LatteError, Result};

/// Whether every value of `t` is finite: `t · 0` is 0 for a finite value and NaN for NaN or ±∞, so its sum is NaN
/// exactly when one is not (no overflow, whatever the magnitudes).
pub fn all_finite(t: &Tensor) -> Result<bool> {
    if !t.dtype().is_float() {
        return Ok(true);
    }
    let probe = (t * 0.0)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(probe == 0.0)
}

/// `x` (named `arg`) in `dtype` on `device`, refused when a value is NaN or infinite after the conversion (a
/// float64 1e300 is infinite in float32).
pub fn to_model_finite(x: &Tensor, arg: &str, dtype: DType, device: &Device) -> Result<Tensor> {
    let converted = x.to_dtype(dtype)?.to_device(device)?;
    if !all_finite(&converted)? {
        let why = if all_finite(x)? {
            format!(" (values beyond the range of {dtype:?})")
        } else {
            String::new()
        };
        return Err(LatteError::Value(format!(
            "{arg}: expected finite values, got NaN or infinity{why}"
        )));
    }
    Ok(converted)
}

/// Refuses a model output with NaN or infinity (from finite, checked inputs: the activations overflowed).
pub fn check_output(out: &Tensor) -> Result<()> {
    if !all_finite(out)? {
        return Err(LatteError::Value(format!(
            "the model's output has NaN or infinity although its inputs are finite: its activations overflowed \
             {:?}; inputs of this magnitude (or these weights) are out of the model's range",
            out.dtype()
        )));
    }
    Ok(())
}
