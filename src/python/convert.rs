//! NumPy / DLPack arrays in, NumPy arrays out.

use candle_core::{DType, Device, Tensor};
use numpy::{PyArray1, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use super::IntoPy;

/// Any array-like as a C-contiguous NumPy array: NumPy arrays as they are, objects with `__dlpack__` (torch, jax,
/// cupy on CPU) through `numpy.from_dlpack` without a copy, anything else through `numpy.asarray`.
fn as_ndarray<'py>(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<Bound<'py, PyUntypedArray>> {
    let py = obj.py();
    let np = py.import("numpy")?;
    let arr = if obj.is_instance_of::<PyUntypedArray>() {
        obj.clone()
    } else if obj.hasattr("__dlpack__")? {
        // torch refuses to export tensors that require grad; the values are what we need.
        let src = if obj.hasattr("detach")? {
            obj.call_method0("detach")?
        } else {
            obj.clone()
        };
        np.call_method1("from_dlpack", (src,)).map_err(|e| {
            PyTypeError::new_err(format!(
                "{arg}: could not read the array through DLPack ({e}); pass a CPU tensor or a NumPy array"
            ))
        })?
    } else {
        np.call_method1("asarray", (obj,))
            .map_err(|e| PyTypeError::new_err(format!("{arg}: expected an array, got {} ({e})", obj.get_type())))?
    };
    let arr = np.call_method1("ascontiguousarray", (arr,))?;
    Ok(arr.cast_into::<PyUntypedArray>()?)
}

fn slice_of<'py, T: numpy::Element + Copy>(arr: &Bound<'py, PyUntypedArray>) -> PyResult<Vec<T>> {
    let typed: PyReadonlyArrayDyn<'py, T> = arr.extract()?;
    Ok(typed
        .as_slice()
        .map(|s| s.to_vec())
        .unwrap_or_else(|_| typed.as_array().iter().copied().collect()))
}

/// Converts an array-like to a tensor: floats keep f32/f64 (f16 becomes f32), integers become i64. Booleans,
/// strings and objects raise `TypeError` naming `arg`.
pub fn to_tensor(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<Tensor> {
    let arr = as_ndarray(obj, arg)?;
    let shape = arr.shape().to_vec();
    let dtype = arr.dtype();
    let (kind, size) = (dtype.kind(), dtype.itemsize());
    let t = match (kind, size) {
        (b'f', 8) => Tensor::from_vec(slice_of::<f64>(&arr)?, shape, &Device::Cpu),
        (b'f', 4) => Tensor::from_vec(slice_of::<f32>(&arr)?, shape, &Device::Cpu),
        (b'f', _) => {
            let a = arr
                .call_method1("astype", ("float32",))?
                .cast_into::<PyUntypedArray>()?;
            Tensor::from_vec(slice_of::<f32>(&a)?, shape, &Device::Cpu)
        }
        (b'i' | b'u', _) => {
            let a = arr.call_method1("astype", ("int64",))?.cast_into::<PyUntypedArray>()?;
            Tensor::from_vec(slice_of::<i64>(&a)?, shape, &Device::Cpu)
        }
        _ => {
            return Err(PyTypeError::new_err(format!(
                "{arg}: expected a numeric array (float for videos, int for labels), got dtype {}",
                dtype.str()?
            )))
        }
    };
    t.py()
}

/// Like [`to_tensor`], but uint8 arrays (video frames) stay uint8 instead of widening to int64.
pub fn to_tensor_keep_u8(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<Tensor> {
    let arr = as_ndarray(obj, arg)?;
    let dtype = arr.dtype();
    if dtype.kind() == b'u' && dtype.itemsize() == 1 {
        let shape = arr.shape().to_vec();
        return Tensor::from_vec(slice_of::<u8>(&arr)?, shape, &Device::Cpu).py();
    }
    to_tensor(&arr, arg)
}

/// A tensor as a new NumPy array (f64 stays f64, every other float becomes f32), owned by Python: torch's
/// `from_numpy` / `from_dlpack` take it without a copy.
pub fn to_numpy<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    let dims = t.dims().to_vec();
    let flat = t.flatten_all().py()?;
    let arr = if t.dtype() == DType::F64 {
        PyArray1::from_vec(py, flat.to_vec1::<f64>().py()?)
            .reshape(dims)?
            .into_any()
    } else {
        PyArray1::from_vec(py, flat.to_dtype(DType::F32).py()?.to_vec1::<f32>().py()?)
            .reshape(dims)?
            .into_any()
    };
    Ok(arr)
}
