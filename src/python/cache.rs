//! Caching policies as Python objects: `TeaCache(threshold, coefficients)`, `PyramidAttentionBroadcast(...)` and
//! `FasterCache(...)` (diffusers' setting names), passed as `cache=` to the sampling calls; the settings are
//! checked by the core, and the report of the last run it served is kept on it.

use std::sync::{Mutex, PoisonError};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use super::IntoPy;
use crate::cache::{CachePolicy, CacheReport, FasterCacheConfig, PabConfig, TeaCacheConfig, LATTE1_COEFFICIENTS};
use crate::error::value_error;

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

/// A skip range argument: None, or an integer >= 1 (checked here, so that a negative one is a `ValueError`
/// naming it rather than an overflow).
fn skip_range(n: Option<i64>, arg: &str) -> PyResult<Option<usize>> {
    match n {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(n as usize)),
        Some(n) => Err(value_error(arg, "None or an integer >= 1 (1 skips nothing)", n)).py(),
    }
}

/// Pyramid Attention Broadcast: attention outputs computed every few steps and reused in between (see
/// `latte_rs.PyramidAttentionBroadcast`).
#[pyclass(name = "PyramidAttentionBroadcast", module = "latte_rs", frozen, subclass)]
pub struct PyPab {
    config: PabConfig,
    last_report: Mutex<Option<CacheReport>>,
}

#[pymethods]
impl PyPab {
    /// diffusers' `PyramidAttentionBroadcastConfig` settings and defaults (its fallback of spatial 2 when no
    /// range is set made the default): per kind, compute every `n`-th step inside the kind's timestep range
    /// `(low, high)` (both excluded), reuse the last output in between; None never reuses.
    #[new]
    #[pyo3(signature = (
        spatial_attention_block_skip_range = Some(2),
        temporal_attention_block_skip_range = None,
        cross_attention_block_skip_range = None,
        spatial_attention_timestep_skip_range = (100.0, 800.0),
        temporal_attention_timestep_skip_range = (100.0, 800.0),
        cross_attention_timestep_skip_range = (100.0, 800.0),
    ))]
    fn new(
        spatial_attention_block_skip_range: Option<i64>,
        temporal_attention_block_skip_range: Option<i64>,
        cross_attention_block_skip_range: Option<i64>,
        spatial_attention_timestep_skip_range: (f64, f64),
        temporal_attention_timestep_skip_range: (f64, f64),
        cross_attention_timestep_skip_range: (f64, f64),
    ) -> PyResult<Self> {
        crate::python::guard(move || {
            let skips = [
                skip_range(spatial_attention_block_skip_range, "spatial_attention_block_skip_range")?,
                skip_range(
                    temporal_attention_block_skip_range,
                    "temporal_attention_block_skip_range",
                )?,
                skip_range(cross_attention_block_skip_range, "cross_attention_block_skip_range")?,
            ];
            let ranges = [
                spatial_attention_timestep_skip_range,
                temporal_attention_timestep_skip_range,
                cross_attention_timestep_skip_range,
            ];
            Ok(Self {
                config: PabConfig::new(skips, ranges).py()?,
                last_report: Mutex::new(None),
            })
        })
    }

    #[getter]
    fn spatial_attention_block_skip_range(&self) -> Option<usize> {
        self.config.spatial_attention_block_skip_range
    }
    #[getter]
    fn temporal_attention_block_skip_range(&self) -> Option<usize> {
        self.config.temporal_attention_block_skip_range
    }
    #[getter]
    fn cross_attention_block_skip_range(&self) -> Option<usize> {
        self.config.cross_attention_block_skip_range
    }
    #[getter]
    fn spatial_attention_timestep_skip_range(&self) -> (f64, f64) {
        self.config.spatial_attention_timestep_skip_range
    }
    #[getter]
    fn temporal_attention_timestep_skip_range(&self) -> (f64, f64) {
        self.config.temporal_attention_timestep_skip_range
    }
    #[getter]
    fn cross_attention_timestep_skip_range(&self) -> (f64, f64) {
        self.config.cross_attention_timestep_skip_range
    }

    /// The report of the last sampling run this cache served, as a dict (None before any).
    #[getter]
    fn last_report<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let report = self.last_report.lock().unwrap_or_else(PoisonError::into_inner).clone();
        report.map(|r| report_to_py(py, &r)).transpose()
    }

    fn __repr__(&self) -> String {
        let c = &self.config;
        format!(
            "PyramidAttentionBroadcast(spatial_attention_block_skip_range={}, temporal_attention_block_skip_range={}, \
             cross_attention_block_skip_range={}, spatial_attention_timestep_skip_range={:?}, \
             temporal_attention_timestep_skip_range={:?}, cross_attention_timestep_skip_range={:?})",
            py_opt(c.spatial_attention_block_skip_range),
            py_opt(c.temporal_attention_block_skip_range),
            py_opt(c.cross_attention_block_skip_range),
            c.spatial_attention_timestep_skip_range,
            c.temporal_attention_timestep_skip_range,
            c.cross_attention_timestep_skip_range,
        )
    }
}

/// `Some(n)` as `n`, None as `None` (Python's spelling).
fn py_opt(n: Option<usize>) -> String {
    n.map_or_else(|| "None".into(), |n| n.to_string())
}

/// FasterCache: attention outputs extrapolated from the last two at most steps, and the unconditional branch of
/// guidance approximated from the conditional one (see `latte_rs.FasterCache`).
#[pyclass(name = "FasterCache", module = "latte_rs", frozen, subclass)]
pub struct PyFasterCache {
    config: FasterCacheConfig,
    last_report: Mutex<Option<CacheReport>>,
}

#[pymethods]
impl PyFasterCache {
    /// diffusers' `FasterCacheConfig` settings and defaults; `attention_weight` is its default
    /// `attention_weight_callback`'s constant.
    #[new]
    #[pyo3(signature = (
        spatial_attention_block_skip_range = Some(2),
        temporal_attention_block_skip_range = None,
        spatial_attention_timestep_skip_range = (-1.0, 681.0),
        temporal_attention_timestep_skip_range = (-1.0, 681.0),
        low_frequency_weight_update_timestep_range = (99.0, 901.0),
        high_frequency_weight_update_timestep_range = (-1.0, 301.0),
        alpha_low_frequency = 1.1,
        alpha_high_frequency = 1.1,
        unconditional_batch_skip_range = Some(5),
        unconditional_batch_timestep_skip_range = (-1.0, 641.0),
        attention_weight = 0.5,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        spatial_attention_block_skip_range: Option<i64>,
        temporal_attention_block_skip_range: Option<i64>,
        spatial_attention_timestep_skip_range: (f64, f64),
        temporal_attention_timestep_skip_range: (f64, f64),
        low_frequency_weight_update_timestep_range: (f64, f64),
        high_frequency_weight_update_timestep_range: (f64, f64),
        alpha_low_frequency: f64,
        alpha_high_frequency: f64,
        unconditional_batch_skip_range: Option<i64>,
        unconditional_batch_timestep_skip_range: (f64, f64),
        attention_weight: f64,
    ) -> PyResult<Self> {
        crate::python::guard(move || {
            let config = FasterCacheConfig {
                spatial_attention_block_skip_range: skip_range(
                    spatial_attention_block_skip_range,
                    "spatial_attention_block_skip_range",
                )?,
                temporal_attention_block_skip_range: skip_range(
                    temporal_attention_block_skip_range,
                    "temporal_attention_block_skip_range",
                )?,
                spatial_attention_timestep_skip_range,
                temporal_attention_timestep_skip_range,
                low_frequency_weight_update_timestep_range,
                high_frequency_weight_update_timestep_range,
                alpha_low_frequency,
                alpha_high_frequency,
                unconditional_batch_skip_range: skip_range(
                    unconditional_batch_skip_range,
                    "unconditional_batch_skip_range",
                )?,
                unconditional_batch_timestep_skip_range,
                attention_weight,
            };
            Ok(Self {
                config: config.checked().py()?,
                last_report: Mutex::new(None),
            })
        })
    }

    #[getter]
    fn spatial_attention_block_skip_range(&self) -> Option<usize> {
        self.config.spatial_attention_block_skip_range
    }
    #[getter]
    fn temporal_attention_block_skip_range(&self) -> Option<usize> {
        self.config.temporal_attention_block_skip_range
    }
    #[getter]
    fn spatial_attention_timestep_skip_range(&self) -> (f64, f64) {
        self.config.spatial_attention_timestep_skip_range
    }
    #[getter]
    fn temporal_attention_timestep_skip_range(&self) -> (f64, f64) {
        self.config.temporal_attention_timestep_skip_range
    }
    #[getter]
    fn low_frequency_weight_update_timestep_range(&self) -> (f64, f64) {
        self.config.low_frequency_weight_update_timestep_range
    }
    #[getter]
    fn high_frequency_weight_update_timestep_range(&self) -> (f64, f64) {
        self.config.high_frequency_weight_update_timestep_range
    }
    #[getter]
    fn alpha_low_frequency(&self) -> f64 {
        self.config.alpha_low_frequency
    }
    #[getter]
    fn alpha_high_frequency(&self) -> f64 {
        self.config.alpha_high_frequency
    }
    #[getter]
    fn unconditional_batch_skip_range(&self) -> Option<usize> {
        self.config.unconditional_batch_skip_range
    }
    #[getter]
    fn unconditional_batch_timestep_skip_range(&self) -> (f64, f64) {
        self.config.unconditional_batch_timestep_skip_range
    }
    #[getter]
    fn attention_weight(&self) -> f64 {
        self.config.attention_weight
    }

    /// The report of the last sampling run this cache served, as a dict (None before any).
    #[getter]
    fn last_report<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let report = self.last_report.lock().unwrap_or_else(PoisonError::into_inner).clone();
        report.map(|r| report_to_py(py, &r)).transpose()
    }

    fn __repr__(&self) -> String {
        let c = &self.config;
        format!(
            "FasterCache(spatial_attention_block_skip_range={}, temporal_attention_block_skip_range={}, \
             unconditional_batch_skip_range={}, attention_weight={}, alpha_low_frequency={}, \
             alpha_high_frequency={})",
            py_opt(c.spatial_attention_block_skip_range),
            py_opt(c.temporal_attention_block_skip_range),
            py_opt(c.unconditional_batch_skip_range),
            c.attention_weight,
            c.alpha_low_frequency,
            c.alpha_high_frequency,
        )
    }
}

/// A `cache=` argument: one of the policy objects.
pub(crate) enum CacheArg {
    TeaCache(Py<PyTeaCache>),
    Pab(Py<PyPab>),
    FasterCache(Py<PyFasterCache>),
}

impl CacheArg {
    pub(crate) fn policy(&self) -> CachePolicy {
        match self {
            Self::TeaCache(c) => c.get().policy(),
            Self::Pab(c) => CachePolicy::PyramidAttentionBroadcast(c.get().config.clone()),
            Self::FasterCache(c) => CachePolicy::FasterCache(c.get().config.clone()),
        }
    }

    pub(crate) fn set_report(&self, report: Option<CacheReport>) {
        let slot = match self {
            Self::TeaCache(c) => &c.get().last_report,
            Self::Pab(c) => &c.get().last_report,
            Self::FasterCache(c) => &c.get().last_report,
        };
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = report;
    }
}

/// The `cache` argument: None, a `TeaCache`, a `PyramidAttentionBroadcast` or a `FasterCache`.
pub(crate) fn cache_arg(cache: Option<&Bound<'_, PyAny>>) -> PyResult<Option<CacheArg>> {
    let Some(obj) = cache.filter(|obj| !obj.is_none()) else {
        return Ok(None);
    };
    if let Ok(c) = obj.cast::<PyTeaCache>() {
        return Ok(Some(CacheArg::TeaCache(c.clone().unbind())));
    }
    if let Ok(c) = obj.cast::<PyPab>() {
        return Ok(Some(CacheArg::Pab(c.clone().unbind())));
    }
    if let Ok(c) = obj.cast::<PyFasterCache>() {
        return Ok(Some(CacheArg::FasterCache(c.clone().unbind())));
    }
    Err(PyTypeError::new_err(format!(
        "cache: expected a latte_rs.TeaCache, latte_rs.PyramidAttentionBroadcast, latte_rs.FasterCache or None, \
         got {}",
        obj.get_type()
    )))
}

/// A model's `teacache_coefficients` setter argument as the fit it carries (no input range), checked by name; the
/// class and the text-to-video models share it.
pub(crate) fn coefficients_fit(coefficients: Option<Vec<f64>>) -> PyResult<Option<crate::cache::TeaCacheFit>> {
    coefficients
        .map(|c| crate::cache::TeaCacheFit::new(c, None, "teacache_coefficients"))
        .transpose()
        .py()
}
