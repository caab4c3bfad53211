//! `I3D` as a Python class: the FVD feature network.

use std::path::PathBuf;

use pyo3::prelude::*;

use super::convert::{to_numpy, to_tensor_keep_u8};
use super::IntoPy;
use crate::metrics::{prepare, I3d};

/// The declared value range, or (0, 255) for uint8 clips.
fn value_range_for(x: &candle_core::Tensor, value_range: Option<(f64, f64)>) -> PyResult<(f64, f64)> {
    match (value_range, x.dtype()) {
        (Some(r), _) => Ok(r),
        (None, candle_core::DType::U8) => Ok((0.0, 255.0)),
        (None, d) => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "value_range: required for {d:?} clips (e.g. (0, 255) or (-1, 1)); only uint8 implies (0, 255)"
        ))),
    }
}

/// The Kinetics-400 I3D network of FVD (TF-Hub `i3d-kinetics-400`), on the CPU.
///
/// Load it with `latte_rs.evaluation.load_i3d()`, which fetches and converts the weights on first use.
///
/// >>> import numpy as np
/// >>> from latte_rs.evaluation import load_i3d   # doctest: +SKIP
/// >>> i3d = load_i3d()                            # doctest: +SKIP
/// >>> clips = np.zeros((2, 16, 256, 256, 3), np.uint8)
/// >>> i3d.features(clips).shape                   # doctest: +SKIP
/// (2, 400)
#[pyclass(name = "I3D", module = "latte_rs", frozen)]
pub struct PyI3d {
    inner: I3d,
}

#[pymethods]
impl PyI3d {
    /// Loads converted weights (the safetensors file `latte_rs.evaluation.i3d_weights()` returns).
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        crate::python::guard(move || {
            let inner = py.detach(|| I3d::load(&path)).py()?;
            Ok(Self { inner })
        })
    }

    /// The FVD features (400-d logits averaged over time) of clips `(N, T, H, W, 3)`, channels last, RGB,
    /// `T >= 9`: uint8 in [0, 255], or float with `value_range` given. Frames are resized to 224×224 (bilinear,
    /// as PyTorch's `interpolate(align_corners=False)`) and mapped to [-1, 1] first.
    #[pyo3(signature = (clips, value_range = None))]
    fn features<'py>(
        &self,
        py: Python<'py>,
        clips: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = crate::python::convert::opt_pair_arg)] value_range: Option<(f64, f64)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let x = to_tensor_keep_u8(clips, "clips")?;
            let range = value_range_for(&x, value_range)?;
            let out = py.detach(|| self.inner.logits(&prepare(&x, range)?)).py()?;
            to_numpy(py, &out)
        })
    }

    /// The network's input made from clips (what `features` feeds it): `(N, T, 224, 224, 3)` float32 in [-1, 1].
    #[staticmethod]
    #[pyo3(signature = (clips, value_range = None))]
    fn preprocess<'py>(
        py: Python<'py>,
        clips: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = crate::python::convert::opt_pair_arg)] value_range: Option<(f64, f64)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let x = to_tensor_keep_u8(clips, "clips")?;
            let range = value_range_for(&x, value_range)?;
            let out = py.detach(|| prepare(&x, range)).py()?;
            to_numpy(py, &out)
        })
    }

    /// The raw network: logits of clips already at 224×224 in [-1, 1], float32 `(N, T, 224, 224, 3)`.
    fn logits<'py>(&self, py: Python<'py>, clips: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let x = to_tensor_keep_u8(clips, "clips")?;
            let out = py.detach(|| self.inner.logits(&x)).py()?;
            to_numpy(py, &out)
        })
    }

    fn __repr__(&self) -> String {
        "I3D(kinetics-400, 400 features)".into()
    }
}
