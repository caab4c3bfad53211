//! `open_model`: any model file, as the core's one entry opens it ([`crate::model::open_model`]).

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::dict_to_json;
use super::diffusion::PyGaussianDiffusion;
use super::hub::Location;
use super::model::PyLatteModel;
use super::t2v::PyLatteT2V;
use super::IntoPy;
use crate::model::{open_model as open, parse_device, AnyModel, ModelKind, OpenOptions};

/// A model opened from a file, with what the file says about it.
///
/// >>> import latte_rs
/// >>> opened = latte_rs.open_model(latte_rs.demo.TINY_MODEL)
/// >>> opened.kind, opened.prediction_type
/// ('latte', 'epsilon')
#[pyclass(name = "OpenedModel", module = "latte_rs", frozen)]
pub struct PyOpenedModel {
    /// The model: a `LatteModel` or a `LatteT2VTransformer`.
    #[pyo3(get)]
    model: Py<PyAny>,
    /// "latte" (class-conditional or unconditional Latte) or "text" (the text-to-video transformer).
    #[pyo3(get)]
    kind: &'static str,
    /// Which weights of the file were taken ("ema", "model", ...), None for a bare state dict or a folder.
    #[pyo3(get)]
    weights: Option<String>,
    /// The diffusion process the model was trained with, where the checkpoint records it (latte-rs trainer
    /// checkpoints and the model files inside them), else None.
    #[pyo3(get)]
    diffusion: Option<Py<PyGaussianDiffusion>>,
    /// What the model predicts, in diffusers' words ("epsilon", "v_prediction", "sample"): what a sampler must
    /// be told.
    #[pyo3(get)]
    prediction_type: &'static str,
}

#[pymethods]
impl PyOpenedModel {
    fn __repr__(&self) -> String {
        format!(
            "OpenedModel(kind={:?}, weights={:?}, prediction_type={:?})",
            self.kind, self.weights, self.prediction_type
        )
    }
}

/// Opens any model file: an official Latte checkpoint (`.pt`), a safetensors file (latte-rs's, class or
/// text-to-video, or a bare state dict), a latte-rs trainer checkpoint folder or a model file inside one, a
/// diffusers `transformer/` folder or the pipeline folder above it. `kind` ("latte" or "text") refuses the other
/// kind before anything is built; `preset` and keyword overrides (LatteConfig fields) complete a bare state dict.
/// `path` may be a Hugging Face Hub id (`org/name`, with `subfolder`, `revision` and `filename`; see
/// `latte_rs.hub`).
#[pyfunction]
#[pyo3(signature = (
    path, *, use_ema = true, kind = None, preset = None, device = "cpu", subfolder = None, revision = None,
    filename = None, **overrides
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn open_model(
    py: Python<'_>,
    path: PathBuf,
    use_ema: bool,
    kind: Option<&str>,
    preset: Option<String>,
    device: &str,
    subfolder: Option<&str>,
    revision: Option<&str>,
    filename: Option<&str>,
    overrides: Option<&Bound<'_, PyDict>>,
) -> PyResult<PyOpenedModel> {
    crate::python::guard(move || {
        let path = Location {
            path,
            subfolder,
            revision,
            filename,
        }
        .resolve(py, "path")?;
        let kind = kind
            .map(|k| match k {
                "latte" => Ok(ModelKind::Latte),
                "text" => Ok(ModelKind::Text),
                other => Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "kind: expected \"latte\" or \"text\", got {other:?}"
                ))),
            })
            .transpose()?;
        let opts = OpenOptions {
            use_ema,
            preset,
            overrides: dict_to_json(overrides, "overrides")?,
            kind,
            device: parse_device(device).py()?,
        };
        let opened = py.detach(|| open(&path, &opts)).py()?;
        let prediction_type = opened.prediction_type().prediction_type();
        let kind = opened.kind().name();
        let model = match opened.model {
            AnyModel::Latte(inner) => Py::new(py, PyLatteModel { inner })?.into_any(),
            AnyModel::Text(inner) => Py::new(py, PyLatteT2V { inner })?.into_any(),
        };
        let diffusion = opened
            .process
            .map(|inner| Py::new(py, PyGaussianDiffusion { inner }))
            .transpose()?;
        Ok(PyOpenedModel {
            model,
            kind,
            weights: opened.info.key,
            diffusion,
            prediction_type,
        })
    })
}
