//! The conversions every binding shares: NumPy / DLPack arrays in, NumPy arrays out; state dicts both ways;
//! Python values as JSON and back (one converter); the float and integer checks of array arguments.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use numpy::{PyArray1, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyList, PyString, PyTuple};
use serde_json::Value;

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
    let mut arr = np.call_method1("ascontiguousarray", (arr,))?;
    // Non-native byte order (a big-endian file read on a little-endian machine): the same values, native.
    let dtype = arr.getattr("dtype")?;
    if !dtype.getattr("isnative")?.extract::<bool>()? {
        arr = arr.call_method1("astype", (dtype.call_method1("newbyteorder", ("=",))?,))?;
    }
    arr.cast_into::<PyUntypedArray>()
        .map_err(|_| PyTypeError::new_err(format!("{arg}: expected a numeric array, got {}", obj.get_type())))
}

/// The values of `arr` (named `arg`) as a new vector: a large copy is checked against the memory limits first (a
/// `MemoryError` naming the size and the limit; small ones skip the reads of /proc and /sys), and every copy is
/// allocated fallibly, so one that cannot fit never aborts.
fn slice_of<'py, T: numpy::Element + Copy>(arr: &Bound<'py, PyUntypedArray>, arg: &str) -> PyResult<Vec<T>> {
    const CHECKED_BYTES: usize = 16 << 20;
    if arr.len().saturating_mul(std::mem::size_of::<T>()) >= CHECKED_BYTES {
        crate::limits::ensure_tensor_fits(arg, arr.shape(), std::mem::size_of::<T>()).py()?;
    }
    let typed: PyReadonlyArrayDyn<'py, T> = arr.extract()?;
    let mut out: Vec<T> = crate::limits::try_with_capacity(typed.len(), arg)
        .map_err(crate::error::LatteError::from)
        .py()?;
    match typed.as_slice() {
        Ok(s) => out.extend_from_slice(s),
        Err(_) => out.extend(typed.as_array().iter().copied()),
    }
    Ok(out)
}

/// Converts an array-like to a tensor: floats keep f32/f64 (f16 becomes f32), integers become i64. Booleans,
/// strings and objects raise `TypeError` naming `arg`.
pub fn to_tensor(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<Tensor> {
    let arr = as_ndarray(obj, arg)?;
    let shape = arr.shape().to_vec();
    let dtype = arr.dtype();
    let (kind, size) = (dtype.kind(), dtype.itemsize());
    let t = match (kind, size) {
        (b'f', 8) => Tensor::from_vec(slice_of::<f64>(&arr, arg)?, shape, &Device::Cpu),
        (b'f', 4) => Tensor::from_vec(slice_of::<f32>(&arr, arg)?, shape, &Device::Cpu),
        (b'f', _) => {
            let a = arr
                .call_method1("astype", ("float32",))?
                .cast_into::<PyUntypedArray>()?;
            Tensor::from_vec(slice_of::<f32>(&a, arg)?, shape, &Device::Cpu)
        }
        (b'i' | b'u', _) => {
            let a = arr.call_method1("astype", ("int64",))?.cast_into::<PyUntypedArray>()?;
            Tensor::from_vec(slice_of::<i64>(&a, arg)?, shape, &Device::Cpu)
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
        return Tensor::from_vec(slice_of::<u8>(&arr, arg)?, shape, &Device::Cpu).py();
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

/// A floating-point array argument; integers and booleans raise `TypeError` naming `arg`.
pub fn float_tensor(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<Tensor> {
    let t = to_tensor(obj, arg)?;
    if !t.dtype().is_float() {
        return Err(PyTypeError::new_err(format!(
            "{arg}: expected a floating-point array, got {:?}",
            t.dtype()
        )));
    }
    Ok(t)
}

/// An integer array argument (labels, token ids, step indices); floats raise `TypeError` naming `arg`.
pub fn int_tensor(obj: &Bound<'_, PyAny>, arg: &str, what: &str) -> PyResult<Tensor> {
    let t = to_tensor(obj, arg)?;
    if t.dtype().is_float() {
        return Err(PyTypeError::new_err(format!(
            "{arg}: expected {what}, got {:?}",
            t.dtype()
        )));
    }
    Ok(t)
}

/// A state dict as a Python dict of NumPy arrays (copies).
pub fn state_dict_to_py<'py>(py: Python<'py>, state: &BTreeMap<String, Tensor>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, t) in state {
        d.set_item(name, to_numpy(py, t)?)?;
    }
    Ok(d)
}

/// A Python dict of arrays (NumPy, torch, ...) by name as tensors; `arg` names the argument in errors, and
/// every value must be a float array.
pub fn state_dict_from_py(dict: &Bound<'_, PyDict>, arg: &str) -> PyResult<HashMap<String, Tensor>> {
    let mut map = HashMap::new();
    for (k, v) in dict.iter() {
        let name: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("{arg}: keys must be parameter names (str)")))?;
        let t = float_tensor(&v, &format!("{arg}[{name:?}]"))?;
        map.insert(name, t);
    }
    Ok(map)
}

/// A Python value as JSON: bools, integers (anything with `__index__`, so NumPy integers too), floats (and
/// anything with `__float__`), strings, None, lists and tuples, dicts with string keys. `key` names the argument
/// in errors. The one conversion of Python values into the core's JSON configs.
pub fn to_json(obj: &Bound<'_, PyAny>, key: &str) -> PyResult<Value> {
    if obj.is_none() {
        Ok(Value::Null)
    } else if obj.is_instance_of::<PyBool>() {
        Ok(Value::Bool(obj.extract()?))
    } else if obj.is_instance_of::<PyString>() {
        Ok(Value::String(obj.extract()?))
    } else if obj.is_instance_of::<PyFloat>() {
        let x: f64 = obj.extract()?;
        serde_json::Number::from_f64(x)
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err(format!("{key}: expected a finite number, got {x}")))
    } else if obj.hasattr("__index__")? {
        match obj.call_method0("__index__")?.extract::<i64>() {
            Ok(i) => Ok(Value::from(i)),
            Err(_) => Err(PyValueError::new_err(format!(
                "{key}: expected an integer that fits in 64 bits, got {}",
                obj.str()?
            ))),
        }
    } else if let Ok(d) = obj.cast::<PyDict>() {
        Ok(Value::Object(dict_to_json(Some(d), key)?))
    } else if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let items: Vec<Bound<'_, PyAny>> = obj.extract()?;
        Ok(Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{key}[{i}]")))
                .collect::<PyResult<_>>()?,
        ))
    } else if obj.hasattr("__float__")? {
        to_json(&obj.call_method0("__float__")?, key)
    } else {
        Err(PyTypeError::new_err(format!(
            "{key}: expected a bool, int, float, str, None, list or dict, got {}",
            obj.get_type()
        )))
    }
}

/// A dict of keyword arguments as a JSON object (None: empty); `what` names it in errors.
pub fn dict_to_json(dict: Option<&Bound<'_, PyDict>>, what: &str) -> PyResult<serde_json::Map<String, Value>> {
    let mut map = serde_json::Map::new();
    for (k, v) in dict.into_iter().flat_map(|d| d.iter()) {
        let key: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("{what}: expected string keys, got {}", k.get_type())))?;
        let value = to_json(&v, &key)?;
        map.insert(key, value);
    }
    Ok(map)
}

/// JSON as a Python value (dicts, lists, ints, floats, strings, None): the inverse of [`to_json`].
pub fn from_json<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.into_pyobject(py)?.into_any(),
            None => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => PyList::new(
            py,
            items.iter().map(|i| from_json(py, i)).collect::<PyResult<Vec<_>>>()?,
        )?
        .into_any(),
        Value::Object(map) => {
            let d = PyDict::new(py);
            for (k, v) in map {
                d.set_item(k, from_json(py, v)?)?;
            }
            d.into_any()
        }
    })
}

/// A model read by `load(path, device, dtype)` without the GIL, the device and dtype parsed from their names
/// (`dtype` None: the file's).
pub fn load_folder<T: Send>(
    py: Python<'_>,
    path: &std::path::Path,
    device: &str,
    dtype: Option<&str>,
    load: impl FnOnce(&std::path::Path, &Device, Option<DType>) -> crate::Result<T> + Send,
) -> PyResult<T> {
    let device = crate::model::parse_device(device).py()?;
    let dtype = dtype.map(crate::model::parse_dtype).transpose().py()?;
    py.detach(|| load(path, &device, dtype)).py()
}

/// An integer argument of an unsigned type (a count, a size, a seed). pyo3 reports a negative or too large
/// Python int as an `OverflowError` ("can't convert negative int to unsigned"); this raises `ValueError` with the
/// range and the value (and `TypeError` for a non-integer), and pyo3 adds the note "while processing
/// 'diffusion_steps'" that names the argument.
fn unsigned<T: TryFrom<u64>>(obj: &Bound<'_, PyAny>, bits: u32) -> PyResult<T> {
    let range = || {
        format!(
            "expected an integer in [0, 2^{bits}), got {}",
            obj.str().map(|s| s.to_string()).unwrap_or_default()
        )
    };
    if !obj.is_instance_of::<pyo3::types::PyInt>() {
        if let Ok(index) = obj.call_method0("__index__") {
            return unsigned(&index, bits);
        }
        return Err(PyTypeError::new_err(format!(
            "expected an integer, got {}",
            obj.get_type().name()?
        )));
    }
    obj.extract::<u64>()
        .ok()
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| pyo3::exceptions::PyValueError::new_err(range()))
}

/// [`unsigned`] for `usize` parameters (`#[pyo3(from_py_with = crate::python::convert::usize_arg)]`).
pub fn usize_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    unsigned(obj, usize::BITS)
}

/// [`unsigned`] for `u64` parameters (seeds, step counts).
pub fn u64_arg(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    unsigned(obj, 64)
}

/// [`unsigned`] for an optional `usize` (None stays None).
pub fn opt_usize_arg(obj: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    if obj.is_none() {
        return Ok(None);
    }
    usize_arg(obj).map(Some)
}

/// Two numbers given as any sized sequence (a tuple, a list, a NumPy array): `betas`, `value_range`. pyo3 names
/// the argument in the error.
pub fn pair_arg(obj: &Bound<'_, PyAny>) -> PyResult<(f64, f64)> {
    let sized = !obj.is_instance_of::<pyo3::types::PyString>() && obj.len().is_ok();
    if !sized {
        return Err(PyTypeError::new_err(format!(
            "expected a pair of numbers, got {}",
            obj.get_type()
        )));
    }
    let n = obj.len()?;
    if n != 2 {
        return Err(PyValueError::new_err(format!(
            "expected a pair of numbers, got {n} values"
        )));
    }
    let item = |i: usize| -> PyResult<f64> {
        obj.get_item(i)?.extract::<f64>().map_err(|_| {
            PyTypeError::new_err(format!(
                "expected a pair of numbers, got {} at [{i}]",
                obj.get_item(i).map(|v| v.get_type().to_string()).unwrap_or_default()
            ))
        })
    };
    Ok((item(0)?, item(1)?))
}

/// [`pair_arg`] for an optional pair (None stays None).
pub fn opt_pair_arg(obj: &Bound<'_, PyAny>) -> PyResult<Option<(f64, f64)>> {
    if obj.is_none() {
        return Ok(None);
    }
    pair_arg(obj).map(Some)
}

/// A shape: a sequence of [`usize_arg`] values; the message names the entry.
pub fn shape_arg(obj: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    if obj.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyTypeError::new_err("expected a sequence of integers, got str"));
    }
    let mut dims = Vec::new();
    for (i, item) in obj.try_iter()?.enumerate() {
        dims.push(usize_arg(&item?).map_err(|e| {
            let py = obj.py();
            if e.is_instance_of::<PyTypeError>(py) {
                PyTypeError::new_err(format!("[{i}]: {}", e.value(py)))
            } else {
                pyo3::exceptions::PyValueError::new_err(format!("[{i}]: {}", e.value(py)))
            }
        })?);
    }
    Ok(dims)
}

/// Keeps a tensor's storage alive while NumPy arrays (and torch tensors over them) view it.
#[pyclass(name = "_SharedStorage", module = "latte_rs", frozen)]
pub struct SharedStorage {
    _tensor: Tensor,
}

/// A NumPy array over `t`'s own memory, without a copy: writes through it (e.g. a torch optimiser updating a
/// parameter in place) change the tensor. For contiguous float32/float64 CPU tensors; the array keeps the
/// storage alive.
pub fn shared_numpy<'py>(py: Python<'py>, t: &Tensor, arg: &str) -> PyResult<Bound<'py, PyAny>> {
    use numpy::ndarray::{ArrayView, IxDyn};
    use numpy::PyArray;
    let dims = t.dims().to_vec();
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(PyValueError::new_err(format!(
            "{arg}: not contiguous, cannot be shared"
        )));
    };
    let holder = Bound::new(py, SharedStorage { _tensor: t.clone() })?.into_any();
    // SAFETY: the holder owns a handle on the storage, which candle never reallocates (parameters are written in
    // place); NumPy keeps the holder as the array's base, so the memory outlives every view of it.
    let arr = match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => unsafe {
            let view = ArrayView::from_shape_ptr(IxDyn(&dims), v[start..end].as_ptr());
            PyArray::borrow_from_array(&view, holder).into_any()
        },
        candle_core::Storage::Cpu(candle_core::CpuStorage::F64(v)) => unsafe {
            let view = ArrayView::from_shape_ptr(IxDyn(&dims), v[start..end].as_ptr());
            PyArray::borrow_from_array(&view, holder).into_any()
        },
        _ => {
            return Err(PyTypeError::new_err(format!(
                "{arg}: only float32 and float64 tensors on the CPU can be shared with NumPy/torch, got {:?} on {:?}",
                t.dtype(),
                t.device()
            )))
        }
    };
    Ok(arr)
}
