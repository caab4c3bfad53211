//! Helpers shared by the unit tests.

use candle_core::{DType, Tensor};

/// max |t| as f64, for any float tensor.
pub fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .and_then(|t| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>())
        .expect("max_abs of a float tensor")
}

/// max |a − b| as f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap())
}
