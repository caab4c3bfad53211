//! `LatteModel` as a Python class, with its forward graph for the torch face.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::config::PyLatteConfig;
use super::convert::{dict_to_json, shared_numpy, state_dict_from_py, state_dict_to_py, to_numpy, to_tensor};
use super::hub::Location;
use super::{run_model, IntoPy};
use crate::model::{device_name, dtype_name, parse_device, parse_dtype, Condition, Denoiser, Graph, LatteModel};

/// The latents, timesteps and class condition of a model call.
fn model_inputs(
    x: &Bound<'_, PyAny>,
    t: &Bound<'_, PyAny>,
    y: Option<&Bound<'_, PyAny>>,
    y_image: Option<&Bound<'_, PyAny>>,
) -> PyResult<(candle_core::Tensor, candle_core::Tensor, Condition)> {
    let y = y.map(|v| to_tensor(v, "y")).transpose()?;
    let y_image = y_image.map(|v| to_tensor(v, "y_image")).transpose()?;
    let cond = Condition::from_labels(y.as_ref(), y_image.as_ref()).py()?;
    Ok((to_tensor(x, "x")?, to_tensor(t, "t")?, cond))
}

/// A Latte model on a device, with its parameters.
#[pyclass(name = "LatteModel", module = "latte_rs", frozen)]
pub struct PyLatteModel {
    pub inner: LatteModel,
}

#[pymethods]
impl PyLatteModel {
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

    #[new]
    #[pyo3(signature = (config, device = "cpu", seed = 0, dtype = "float32"))]
    fn new(
        py: Python<'_>,
        config: &PyLatteConfig,
        device: &str,
        #[pyo3(from_py_with = crate::python::convert::u64_arg)] seed: u64,
        dtype: &str,
    ) -> PyResult<Self> {
        crate::python::guard(move || {
            let device = parse_device(device).py()?;
            let dtype = parse_dtype(dtype).py()?;
            let cfg = config.inner.clone();
            let inner = py.detach(|| LatteModel::new(&cfg, &device, dtype, seed)).py()?;
            Ok(Self { inner })
        })
    }

    /// Predicted noise (and variance values with learn_sigma): (B, F, C_out, H, W).
    #[pyo3(signature = (x, t, y = None, y_image = None))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        t: &Bound<'py, PyAny>,
        y: Option<&Bound<'py, PyAny>>,
        y_image: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let (x, t, cond) = model_inputs(x, t, y, y_image)?;
            let model = &self.inner;
            let out = run_model(py, model.device(), || model.forward(&x, &t, &cond)).py()?;
            to_numpy(py, &out)
        })
    }

    /// Same as calling the model.
    #[pyo3(signature = (x, t, y = None, y_image = None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        t: &Bound<'py, PyAny>,
        y: Option<&Bound<'py, PyAny>>,
        y_image: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || self.__call__(py, x, t, y, y_image))
    }

    /// Classifier-free guidance exactly as the official `forward_with_cfg`.
    #[pyo3(signature = (x, t, y, cfg_scale))]
    fn forward_with_cfg<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        t: &Bound<'py, PyAny>,
        y: Option<&Bound<'py, PyAny>>,
        cfg_scale: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let x = to_tensor(x, "x")?;
            let t = to_tensor(t, "t")?;
            let y = y.map(|v| to_tensor(v, "y")).transpose()?;
            let model = &self.inner;
            let out = run_model(py, model.device(), || {
                model.forward_with_cfg(&x, &t, y.as_ref(), cfg_scale)
            })
            .py()?;
            to_numpy(py, &out)
        })
    }

    #[pyo3(signature = (trainable_only = true))]
    fn num_parameters(&self, trainable_only: bool) -> usize {
        self.inner.num_parameters(trainable_only)
    }

    /// The forward pass keeping its graph, for an autograd engine outside latte-rs (`latte_rs.torch`): returns
    /// (output, graph); `graph.backward(grad_output)` gives the gradients. Class labels are used as given (no
    /// dropout: the caller drops them).
    #[pyo3(signature = (x, t, y = None, y_image = None, *, input_grad = false))]
    fn forward_graph<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        t: &Bound<'py, PyAny>,
        y: Option<&Bound<'py, PyAny>>,
        y_image: Option<&Bound<'py, PyAny>>,
        input_grad: bool,
    ) -> PyResult<(Bound<'py, PyAny>, PyForwardGraph)> {
        crate::python::guard(move || {
            let (x, t, cond) = model_inputs(x, t, y, y_image)?;
            let model = &self.inner;
            let graph = run_model(py, model.device(), || Graph::forward(model, &x, &t, &cond, input_grad)).py()?;
            let out = to_numpy(py, &graph.output())?;
            Ok((out, PyForwardGraph::new(graph)))
        })
    }

    /// Every parameter by its official name as a NumPy array over the model's own memory (no copy; writes go
    /// into the model). float32/float64 models only.
    fn shared_parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || {
            let d = PyDict::new(py);
            for (name, var) in self.inner.store().vars(|_| true) {
                d.set_item(&name, shared_numpy(py, var.as_tensor(), &name)?)?;
            }
            Ok(d)
        })
    }

    /// The names of the trainable parameters (without the fixed sin-cos tables), sorted: the order of
    /// `forward_graph`'s gradients.
    #[getter]
    fn trainable_parameter_names(&self) -> Vec<String> {
        self.inner.trainable_vars().into_iter().map(|(n, _)| n).collect()
    }

    /// Every parameter by its official name, as NumPy arrays (copies).
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || state_dict_to_py(py, &self.inner.state_dict()))
    }

    /// Loads parameters by name; returns (missing_keys, unexpected_keys). Raises ValueError listing missing,
    /// unexpected and mis-shaped keys (missing/unexpected only when `strict`).
    #[pyo3(signature = (state_dict, strict = true))]
    fn load_state_dict(
        &self,
        py: Python<'_>,
        state_dict: &Bound<'_, PyDict>,
        strict: bool,
    ) -> PyResult<(Vec<String>, Vec<String>)> {
        crate::python::guard(move || {
            let map = state_dict_from_py(state_dict, "state_dict")?;
            let report = py.detach(|| self.inner.load_state_dict(&map, strict)).py()?;
            Ok((report.missing, report.unexpected))
        })
    }

    /// Writes parameters and config to one safetensors file, atomically.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        crate::python::guard(move || py.detach(|| self.inner.save(&path)).py())
    }

    /// Loads an official Latte checkpoint (`.pt`, read without running pickled code), a safetensors file or a
    /// latte-rs checkpoint folder, with EMA weights when present and `use_ema`; the options come from the file
    /// or the tensor shapes, and keyword arguments (LatteConfig fields, e.g. `num_heads`) override them. `path`
    /// may be a Hugging Face Hub id (`org/name`, with `subfolder`, `revision` and `filename`; see `latte_rs.hub`).
    #[staticmethod]
    #[pyo3(signature = (
        path, preset = None, use_ema = true, device = "cpu", *, subfolder = None, revision = None, filename = None,
        **overrides
    ))]
    #[allow(clippy::too_many_arguments)]
    fn from_checkpoint(
        py: Python<'_>,
        path: PathBuf,
        preset: Option<String>,
        use_ema: bool,
        device: &str,
        subfolder: Option<&str>,
        revision: Option<&str>,
        filename: Option<&str>,
        overrides: Option<&Bound<'_, PyDict>>,
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
            let overrides: serde_json::Map<String, serde_json::Value> = dict_to_json(overrides, "overrides")?;
            let (inner, _) = py
                .detach(|| LatteModel::from_checkpoint(&path, preset.as_deref(), use_ema, &overrides, &device))
                .py()?;
            Ok(Self { inner })
        })
    }

    /// Reads a file written by `save` (or a Hugging Face Hub id, see `from_checkpoint`).
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu", *, subfolder = None, revision = None, filename = None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
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
            let inner = py.detach(|| LatteModel::load(&path, &device)).py()?;
            Ok(Self { inner })
        })
    }

    #[getter]
    fn config(&self) -> PyLatteConfig {
        PyLatteConfig {
            inner: self.inner.config().clone(),
        }
    }

    #[getter]
    fn device(&self) -> String {
        device_name(self.inner.device())
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        dtype_name(self.inner.dtype())
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "LatteModel(depth={}, hidden_size={}, variant={}, params={}, device={:?}, dtype={})",
            c.depth,
            c.hidden_size,
            u8::from(c.variant),
            self.inner.num_parameters(true),
            self.device(),
            self.dtype()
        )
    }
}

/// The gradients towards the input (when asked for) and every trainable parameter.
type GraphGradients<'py> = (Option<Bound<'py, PyAny>>, Vec<Bound<'py, PyAny>>);

/// The graph of one `forward_graph` (of `LatteModel` or `LatteT2VTransformer`): it keeps the forward's activations until it is dropped.
#[pyclass(name = "ForwardGraph", module = "latte_rs", frozen, weakref)]
pub struct PyForwardGraph {
    graph: Graph,
    token: [f32; 1],
}

impl PyForwardGraph {
    /// Hands a forward pass to Python (any denoiser's: the class model's and the text-to-video transformer's).
    pub(crate) fn new(graph: Graph) -> Self {
        Self { graph, token: [0.0] }
    }
}

#[pymethods]
impl PyForwardGraph {
    /// The gradients of sum(output * grad_output): (towards x, or None without `input_grad`; a list with one per
    /// trainable parameter in `trainable_parameter_names` order). The arrays share the gradients' memory (no
    /// copy). The graph can run backward again (as torch's `retain_graph=True`) until it is dropped.
    fn backward<'py>(&self, py: Python<'py>, grad_output: &Bound<'py, PyAny>) -> PyResult<GraphGradients<'py>> {
        crate::python::guard(move || {
            let g = super::convert::float_tensor(grad_output, "grad_output")?;
            let graph = &self.graph;
            let device = graph.output().device().clone();
            let (gx, grads) = run_model(py, &device, || graph.backward(&g)).py()?;
            let gx = gx
                .map(|t| t.contiguous().py().and_then(|t| shared_numpy(py, &t, "grad_x")))
                .transpose()?;
            let grads = grads
                .iter()
                .map(|t| t.contiguous().py().and_then(|t| shared_numpy(py, &t, "grad")))
                .collect::<PyResult<_>>()?;
            Ok((gx, grads))
        })
    }

    /// A one-element array whose base is this graph: whoever holds it (a tensor torch saves for backward) keeps
    /// the graph alive, so the graph is freed exactly when torch frees the node's saved tensors.
    fn token<'py>(slf: Bound<'py, Self>) -> Bound<'py, PyAny> {
        let view = numpy::ndarray::ArrayView1::from(&slf.get().token[..]);
        // SAFETY: the view points into the graph object, which the array keeps alive as its base; frozen pyclass
        // objects do not move.
        unsafe { numpy::PyArray1::borrow_from_array(&view, slf.clone().into_any()).into_any() }
    }
}
