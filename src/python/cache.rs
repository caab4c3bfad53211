//! Caching policies as Python objects: `TeaCache(threshold, coefficients)`, passed as `cache=` to the sampling
//! calls; the settings are checked by the core, and the report of the last run it served is kept on it.

use std::sync::{Mutex, PoisonError};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use super::IntoPy;
use crate::cache::{CachePolicy, CacheReport, TeaCacheConfig, LATTE1_COEFFICIENTS};

/// TeaCache: skip the block stack at steps where the first block's modulated input barely changed (see
/// `latte_rs.TeaCache`, which adds `fit`).
#[pyclass(name = "TeaCache", module = "latte_rs", frozen, subclass)]
pub struct PyTeaCache {
    config: TeaCacheConfig,
    last_report: Mutex<Option<CacheReport>>,
}

impl PyTeaCache {
    pub(crate) fn policy(&self) -> CachePolicy {
        CachePolicy::TeaCache(self.config.clone())
    }

    pub(crate) fn set_report(&self, report: Option<CacheReport>) {
        *self.last_report.lock().unwrap_or_else(PoisonError::into_inner) = report;
    }
}

#[pymethods]
impl PyTeaCache {
    /// `threshold`: the accumulated rescaled change below which a step reuses the cached residual (0 skips
    /// nothing); `coefficients`: the rescaling polynomial, highest power first (None: the model's fitted ones,
    /// else the published Latte-1 ones); `input_range`: `[low, high]` the change is clamped into before the
    /// polynomial (None: the model's fitted range when its coefficients are used, else none).
    #[new]
    #[pyo3(signature = (threshold = 0.1, coefficients = None, input_range = None))]
    fn new(threshold: f64, coefficients: Option<Vec<f64>>, input_range: Option<[f64; 2]>) -> PyResult<Self> {
        crate::python::guard(move || {
            Ok(Self {
                config: TeaCacheConfig::new(threshold, coefficients, input_range).py()?,
                last_report: Mutex::new(None),
            })
        })
    }

    #[getter]
    fn threshold(&self) -> f64 {
        self.config.threshold
    }

    #[getter]
    fn coefficients(&self) -> Option<Vec<f64>> {
        self.config.coefficients.clone()
    }

    #[getter]
    fn input_range(&self) -> Option<[f64; 2]> {
        self.config.input_range
    }

    /// TeaCache's published coefficients for Latte-1 (the default when neither the call nor the model gives any).
    #[classattr]
    #[allow(non_snake_case)]
    fn LATTE1_COEFFICIENTS() -> Vec<f64> {
        LATTE1_COEFFICIENTS.to_vec()
    }

    /// The report of the last sampling run this cache served, as a dict (None before any).
    #[getter]
    fn last_report<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let report = self.last_report.lock().unwrap_or_else(PoisonError::into_inner).clone();
        report.map(|r| report_to_py(py, &r)).transpose()
    }

    fn __repr__(&self) -> String {
        let mut text = format!("TeaCache(threshold={}", self.config.threshold);
        if let Some(c) = &self.config.coefficients {
            text += &format!(", coefficients={c:?}");
        }
        if let Some([low, high]) = self.config.input_range {
            text += &format!(", input_range=[{low}, {high}]");
        }
        text + ")"
    }
}

/// A report as a Python dict (through JSON: every field is a number, a string, a list or None).
fn report_to_py<'py>(py: Python<'py>, report: &CacheReport) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(report).py()?;
    py.import("json")?.call_method1("loads", (text,))
}

/// The `cache` argument: None or a `TeaCache`.
pub(crate) fn cache_arg(cache: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Py<PyTeaCache>>> {
    match cache {
        None => Ok(None),
        Some(obj) if obj.is_none() => Ok(None),
        Some(obj) => obj.cast::<PyTeaCache>().map(|c| Some(c.clone().unbind())).map_err(|_| {
            PyTypeError::new_err(format!(
                "cache: expected a latte_rs.TeaCache or None, got {}",
                obj.get_type()
            ))
        }),
    }
}

/// A model's `teacache_coefficients` setter argument as the fit it carries (no input range), checked by name; the
/// class and the text-to-video models share it.
pub(crate) fn coefficients_fit(coefficients: Option<Vec<f64>>) -> PyResult<Option<crate::cache::TeaCacheFit>> {
    coefficients
        .map(|c| crate::cache::TeaCacheFit::new(c, None, "teacache_coefficients"))
        .transpose()
        .py()
}
