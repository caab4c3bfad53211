//! `LatteT2VTransformer` as a Python class: diffusers' `LatteTransformer3DModel` (Latte-1) in Rust.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::config::{t2v_config_arg, PyLatteT2VConfig};
use super::convert::{
    float_tensor, int_tensor, load_folder, shared_numpy, state_dict_from_py, state_dict_to_py, to_numpy, to_tensor,
};
use super::hub::Location;
use super::model::PyForwardGraph;
use super::{run_model, IntoPy};
use crate::model::{
    device_name, dtype_name, parse_device, parse_dtype, Condition, Denoiser, Graph, LatteT2VModel, T5EncoderModel,
};

/// The latents, timesteps and caption features of a transformer call.
fn t2v_inputs(
    hidden_states: &Bound<'_, PyAny>,
    timestep: &Bound<'_, PyAny>,
    encoder_hidden_states: &Bound<'_, PyAny>,
) -> PyResult<(candle_core::Tensor, candle_core::Tensor, Condition)> {
    let x = float_tensor(hidden_states, "hidden_states")?;
    let t = to_tensor(timestep, "timestep")?;
    let text = Condition::Text {
        embeddings: float_tensor(encoder_hidden_states, "encoder_hidden_states")?,
        mask: None,
    };
    Ok((x, t, text))
}

/// The text-to-video Latte transformer (Latte-1), with diffusers' parameter names and config keys.
///
/// >>> import numpy as np
/// >>> cfg = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
/// ...            cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=12, video_length=3)
/// >>> model = LatteT2VTransformer(cfg, seed=0)
/// >>> x = np.zeros((1, 4, 3, 8, 8), np.float32)           # (B, C, F, H, W) latents
/// >>> text = np.zeros((1, 5, 12), np.float32)            # (B, tokens, caption_channels) T5 features
/// >>> model(x, np.array([500]), text).shape
/// (1, 8, 3, 8, 8)
#[pyclass(name = "LatteT2VTransformer", module = "latte_rs", frozen)]
pub struct PyLatteT2V {
    pub(crate) inner: LatteT2VModel,
}

#[pymethods]
impl PyLatteT2V {
    /// The TeaCache rescaling coefficients fitted for this model (read from its `teacache.json` when loaded;
    /// `TeaCache()` without coefficients uses them), or None. Shared with the model's clones. Setting them
    /// clears the input range.
    #[getter]
    fn teacache_coefficients(&self) -> Option<Vec<f64>> {
        self.inner.teacache_fit().map(|f| f.coefficients)
    }

    #[setter]
    fn set_teacache_coefficients(&self, coefficients: Option<Vec<f64>>) -> PyResult<()> {
        self.inner
            .set_teacache_fit(super::cache::coefficients_fit(coefficients)?);
        Ok(())
    }

    /// The range of input changes the fitted coefficients hold for, `[low, high]` (None: unbounded or no fit).
    #[getter]
    fn teacache_input_range(&self) -> Option<[f64; 2]> {
        self.inner.teacache_fit().and_then(|f| f.input_range)
    }

    /// A randomly initialised model from a `LatteT2VConfig` or a dict of diffusers config keys (missing keys:
    /// Latte-1's values). `init`:
    /// "normal" (every weight N(0, 0.02²), for tests) or "pixart" (PixArt-α's recipe, for training from scratch).
    #[new]
    #[pyo3(signature = (config = None, seed = 0, device = "cpu", dtype = "float32", init = "normal"))]
    fn new(
        py: Python<'_>,
        config: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = crate::python::convert::u64_arg)] seed: u64,
        device: &str,
        dtype: &str,
        init: &str,
    ) -> PyResult<Self> {
        crate::python::guard(move || {
            let cfg = t2v_config_arg(config)?;
            let device = parse_device(device).py()?;
            let dtype = parse_dtype(dtype).py()?;
            let make = match init {
                "normal" => LatteT2VModel::new,
                "pixart" => LatteT2VModel::for_training,
                other => {
                    return Err(pyo3::exceptions::PyValueError::new_err(format!(
                        "init: expected \"normal\" or \"pixart\", got {other:?}"
                    )))
                }
            };
            let inner = py.detach(|| make(&cfg, &device, dtype, seed)).py()?;
            Ok(Self { inner })
        })
    }

    /// Loads a diffusers `transformer/` folder (`config.json` + safetensors, sharded or not). `dtype` None keeps
    /// the file's. `path` may be a Hugging Face Hub id (`org/name`, with `subfolder` and `revision`; see
    /// `latte_rs.hub`).
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu", dtype = None, *, subfolder = None, revision = None))]
    fn from_pretrained(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        dtype: Option<&str>,
        subfolder: Option<&str>,
        revision: Option<&str>,
    ) -> PyResult<Self> {
        crate::python::guard(move || {
            let path = Location::folder(path, subfolder, revision).resolve(py, "path")?;
            let inner = load_folder(py, &path, device, dtype, LatteT2VModel::from_pretrained)?;
            Ok(Self { inner })
        })
    }

    /// A trained model: a latte-rs trainer checkpoint folder (its EMA weights when `use_ema`), a model file a
    /// trainer wrote, or a diffusers `transformer/` folder; local or a Hugging Face Hub id (`org/name`, with
    /// `subfolder`, `revision` and `filename`).
    #[staticmethod]
    #[pyo3(signature = (path, use_ema = true, device = "cpu", *, subfolder = None, revision = None, filename = None))]
    #[allow(clippy::too_many_arguments)]
    fn from_checkpoint(
        py: Python<'_>,
        path: PathBuf,
        use_ema: bool,
        device: &str,
        subfolder: Option<&str>,
        revision: Option<&str>,
        filename: Option<&str>,
    ) -> PyResult<Self> {
        crate::python::guard(move || {
            let path = Location {
                path,
                subfolder,
                revision,
                filename,
            }
            .resolve(py, "path")?;
            let device = parse_device(device).py()?;
            let inner = py
                .detach(|| LatteT2VModel::from_checkpoint(&path, use_ema, &device))
                .py()?;
            Ok(Self { inner })
        })
    }

    /// The denoiser's output `(B, out_channels, F, H, W)` for latents `(B, in_channels, F, H, W)` (F =
    /// video_length, or 1 for images), timesteps `(B,)` or a scalar, and T5 features `(B, S, caption_channels)`.
    #[pyo3(signature = (hidden_states, timestep, encoder_hidden_states, enable_temporal_attentions = true))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        hidden_states: &Bound<'py, PyAny>,
        timestep: &Bound<'py, PyAny>,
        encoder_hidden_states: &Bound<'py, PyAny>,
        enable_temporal_attentions: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let (x, t, text) = t2v_inputs(hidden_states, timestep, encoder_hidden_states)?;
            let model = self.inner.with_temporal_attention(enable_temporal_attentions);
            let out = run_model(py, model.device(), || model.forward(&x, &t, &text)).py()?;
            to_numpy(py, &out)
        })
    }

    /// The forward pass keeping its graph, for an autograd engine outside latte-rs (`latte_rs.torch`): returns
    /// (output, graph); `graph.backward(grad_output)` gives the gradients towards the latents (with
    /// `input_grad`) and every parameter in `trainable_parameter_names` order.
    #[pyo3(signature = (hidden_states, timestep, encoder_hidden_states, *, enable_temporal_attentions = true,
                        input_grad = false))]
    fn forward_graph<'py>(
        &self,
        py: Python<'py>,
        hidden_states: &Bound<'py, PyAny>,
        timestep: &Bound<'py, PyAny>,
        encoder_hidden_states: &Bound<'py, PyAny>,
        enable_temporal_attentions: bool,
        input_grad: bool,
    ) -> PyResult<(Bound<'py, PyAny>, PyForwardGraph)> {
        crate::python::guard(move || {
            let (x, t, text) = t2v_inputs(hidden_states, timestep, encoder_hidden_states)?;
            let model = self.inner.with_temporal_attention(enable_temporal_attentions);
            let graph = run_model(py, model.device(), || Graph::forward(&model, &x, &t, &text, input_grad)).py()?;
            let out = to_numpy(py, &graph.output())?;
            Ok((out, PyForwardGraph::new(graph)))
        })
    }

    /// Every parameter by its diffusers name as a NumPy array over the model's own memory (no copy; writes go
    /// into the model). float32/float64 models on the CPU.
    fn shared_parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || {
            let d = PyDict::new(py);
            for (name, var) in self.inner.store().vars(|_| true) {
                d.set_item(&name, shared_numpy(py, var.as_tensor(), &name)?)?;
            }
            Ok(d)
        })
    }

    /// The names of the trainable parameters (all of them), sorted: the order of `forward_graph`'s gradients.
    #[getter]
    fn trainable_parameter_names(&self) -> Vec<String> {
        self.inner.trainable_vars().into_iter().map(|(n, _)| n).collect()
    }

    #[getter]
    fn device(&self) -> String {
        device_name(self.inner.device())
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        dtype_name(self.inner.dtype())
    }

    /// The same transformer (sharing its parameters) with the temporal blocks on or off, as diffusers'
    /// `enable_temporal_attentions`.
    fn with_temporal_attentions(&self, enabled: bool) -> Self {
        Self {
            inner: self.inner.with_temporal_attention(enabled),
        }
    }

    /// Every parameter by its diffusers name.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || state_dict_to_py(py, &self.inner.state_dict()))
    }

    /// Loads parameters by name, strictly (missing, unexpected and mis-shaped keys are listed in a ValueError).
    fn load_state_dict(&self, state_dict: &Bound<'_, PyDict>) -> PyResult<()> {
        crate::python::guard(move || {
            let map = state_dict_from_py(state_dict, "state_dict")?;
            self.inner.load_state_dict(&map, None).py()
        })
    }

    /// The config (diffusers' `config.json` keys; reads as attributes or as a mapping).
    #[getter]
    fn config(&self) -> PyLatteT2VConfig {
        PyLatteT2VConfig {
            inner: self.inner.config().clone(),
        }
    }

    fn num_parameters(&self) -> usize {
        self.inner.num_parameters()
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "LatteT2VTransformer(num_layers={}, inner_dim={}, video_length={}, params={})",
            c.num_layers,
            c.inner_dim(),
            c.video_length,
            self.inner.num_parameters()
        )
    }
}

/// The T5 text encoder (transformers' `T5EncoderModel`: T5 v1.1 gated-GELU or original ReLU), loaded from a
/// `text_encoder/` folder; turns token ids into the caption features Latte-1 is conditioned on.
#[pyclass(name = "T5TextEncoder", module = "latte_rs", frozen)]
pub struct PyT5 {
    inner: T5EncoderModel,
}

#[pymethods]
impl PyT5 {
    /// Reads `config.json` and `model.safetensors` (or its shards with `model.safetensors.index.json`) from a
    /// folder or a Hugging Face Hub id (`org/name`, with `subfolder` and `revision`; see `latte_rs.hub`).
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu", dtype = None, *, subfolder = None, revision = None))]
    fn from_pretrained(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        dtype: Option<&str>,
        subfolder: Option<&str>,
        revision: Option<&str>,
    ) -> PyResult<Self> {
        crate::python::guard(move || {
            let path = Location::folder(path, subfolder, revision).resolve(py, "path")?;
            let inner = load_folder(py, &path, device, dtype, T5EncoderModel::from_pretrained)?;
            Ok(Self { inner })
        })
    }

    /// Hidden states `(B, L, d_model)` of token ids `(B, L)`; `attention_mask` (B, L) of 0/1 marks padding.
    #[pyo3(signature = (input_ids, attention_mask = None))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        input_ids: &Bound<'py, PyAny>,
        attention_mask: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let ids = int_tensor(input_ids, "input_ids", "integer token ids")?;
            let mask = attention_mask.map(|m| to_tensor(m, "attention_mask")).transpose()?;
            let out = py.detach(|| self.inner.encode(&ids, mask.as_ref())).py()?;
            to_numpy(py, &out)
        })
    }

    /// The empty prompt's features `(1, max_length, d_model)` and mask `(1, max_length)` (`</s>` then padding,
    /// as T5's tokenizer makes `""`): the unconditional branch of classifier-free guidance.
    #[pyo3(signature = (max_length = 120))]
    fn empty_prompt<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = crate::python::convert::usize_arg)] max_length: usize,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        crate::python::guard(move || {
            let (features, mask) = py.detach(|| self.inner.empty_prompt(max_length)).py()?;
            Ok((to_numpy(py, &features)?, to_numpy(py, &mask)?))
        })
    }

    #[getter]
    fn d_model(&self) -> usize {
        self.inner.config().d_model
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.config().vocab_size
    }
}
