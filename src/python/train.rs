//! `Trainer` as a Python class.

use std::collections::HashMap;
use std::path::PathBuf;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use candle_core::{DType, Tensor};

use super::convert::{float_tensor, to_numpy, to_tensor};
use super::diffusion::PyGaussianDiffusion;
use super::model::PyLatteModel;
use super::t2v::PyLatteT2V;
use super::{run_model, IntoPy};
use crate::model::AnyModel;
use crate::model::{parse_device, Condition};
use crate::rng::GeneratorState;
use crate::train::optim::AdamWConfig;
use crate::train::{Draws, StepStats, Trainer, TrainerOptions};

fn stats_dict<'py>(py: Python<'py>, s: &StepStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("loss", s.loss)?;
    d.set_item("mse", s.mse)?;
    d.set_item("vb", s.vb)?;
    d.set_item("grad_norm", s.grad_norm)?;
    d.set_item("lr", s.lr)?;
    d.set_item("step", s.step)?;
    d.set_item("skipped", s.skipped)?;
    d.set_item("skipped_steps", s.skipped_steps)?;
    d.set_item("loss_scale", s.loss_scale)?;
    Ok(d)
}

type BatchArgs = (Tensor, Condition, Draws);

/// The condition of a step: caption features (with their mask) for a text model, else the class labels.
struct CondArgs<'a, 'py> {
    labels: Option<&'a Bound<'py, PyAny>>,
    image_labels: Option<&'a Bound<'py, PyAny>>,
    encoder_hidden_states: Option<&'a Bound<'py, PyAny>>,
    encoder_attention_mask: Option<&'a Bound<'py, PyAny>>,
}

impl CondArgs<'_, '_> {
    fn condition(&self, text_model: bool) -> PyResult<Condition> {
        let has_labels = self.labels.is_some() || self.image_labels.is_some();
        if text_model {
            if has_labels {
                return Err(PyValueError::new_err(
                    "labels: a text-to-video model takes encoder_hidden_states (caption features), not class labels",
                ));
            }
            let Some(e) = self.encoder_hidden_states else {
                return Err(PyValueError::new_err(
                    "encoder_hidden_states: required for a text-to-video model (the captions' T5 features, (B, S, C) \
                     or (B, 1 + use_image_num, S, C))",
                ));
            };
            let embeddings = float_tensor(e, "encoder_hidden_states")?;
            let mask = self
                .encoder_attention_mask
                .map(|m| to_tensor(m, "encoder_attention_mask"))
                .transpose()?;
            return Ok(Condition::Text { embeddings, mask });
        }
        if self.encoder_hidden_states.is_some() || self.encoder_attention_mask.is_some() {
            return Err(PyValueError::new_err(
                "encoder_hidden_states: this Latte model takes class labels (or nothing), not caption features",
            ));
        }
        let y = self.labels.map(|l| to_tensor(l, "labels")).transpose()?;
        let yi = self.image_labels.map(|l| to_tensor(l, "image_labels")).transpose()?;
        Condition::from_labels(y.as_ref(), yi.as_ref()).py()
    }
}

fn batch_args(
    latents: &Bound<'_, PyAny>,
    cond: CondArgs<'_, '_>,
    text_model: bool,
    timesteps: Option<&Bound<'_, PyAny>>,
    noise: Option<&Bound<'_, PyAny>>,
) -> PyResult<BatchArgs> {
    let x = to_tensor(latents, "latents")?;
    let cond = cond.condition(text_model)?;
    let timesteps = match timesteps {
        None => None,
        Some(t) => {
            let t = to_tensor(t, "timesteps")?;
            if t.dtype().is_float() || t.rank() != 1 {
                return Err(PyTypeError::new_err(format!(
                    "timesteps: expected a 1-D integer array, got {:?} of shape {:?}",
                    t.dtype(),
                    t.dims()
                )));
            }
            let v = t.to_vec1::<i64>().py()?;
            if let Some(bad) = v.iter().find(|&&i| i < 0) {
                return Err(PyValueError::new_err(format!(
                    "timesteps: expected indices >= 0, got {bad}"
                )));
            }
            Some(v.into_iter().map(|i| i as usize).collect())
        }
    };
    let noise = noise.map(|n| float_tensor(n, "noise")).transpose()?;
    Ok((x, cond, Draws { timesteps, noise }))
}

/// Gradients as one flat NumPy array (f64 stays f64, every other float becomes f32), one copy.
fn flatten_gradients<'py>(py: Python<'py>, grads: &[Tensor]) -> PyResult<Bound<'py, PyAny>> {
    fn gather<'py, T: crate::float::Float + numpy::Element>(
        py: Python<'py>,
        grads: &[Tensor],
    ) -> PyResult<Bound<'py, PyAny>> {
        let total = grads.iter().map(|g| g.elem_count()).sum();
        let mut flat: Vec<T> = Vec::with_capacity(total);
        for g in grads {
            let g = g.to_dtype(T::DTYPE).py()?;
            let (storage, layout) = g.storage_and_layout();
            match (&*storage, layout.contiguous_offsets()) {
                (candle_core::Storage::Cpu(cpu), Some((a, b))) => {
                    flat.extend_from_slice(&cpu.as_slice::<T>().py()?[a..b])
                }
                _ => {
                    drop(storage);
                    flat.extend(g.flatten_all().and_then(|f| f.to_vec1::<T>()).py()?)
                }
            }
        }
        Ok(numpy::PyArray1::from_vec(py, flat).into_any())
    }
    if grads.first().is_some_and(|g| g.dtype() == DType::F64) {
        gather::<f64>(py, grads)
    } else {
        gather::<f32>(py, grads)
    }
}

/// The model a Python object is: a `LatteModel` or a `LatteT2VTransformer`.
fn trained_model(model: &Bound<'_, PyAny>) -> PyResult<AnyModel> {
    if let Ok(m) = model.cast::<PyLatteModel>() {
        return Ok(AnyModel::Latte(m.borrow().inner.clone()));
    }
    if let Ok(m) = model.cast::<PyLatteT2V>() {
        return Ok(AnyModel::Text(m.get().inner.clone()));
    }
    Err(PyTypeError::new_err(format!(
        "model: expected a LatteModel or a LatteT2VTransformer, got {}",
        model.get_type().name()?
    )))
}

fn model_to_py(py: Python<'_>, model: AnyModel) -> PyResult<Bound<'_, PyAny>> {
    Ok(match model {
        AnyModel::Latte(inner) => Bound::new(py, PyLatteModel { inner })?.into_any(),
        AnyModel::Text(inner) => Bound::new(py, PyLatteT2V { inner })?.into_any(),
    })
}

fn parse_rng_state(s: &str, arg: &str) -> PyResult<GeneratorState> {
    let state: GeneratorState = crate::error::parse_json(s.as_bytes())
        .map_err(|e| PyValueError::new_err(format!("{arg}: not a generator state ({e})")))?;
    crate::rng::Generator::from_state(&state).map_err(|e| PyValueError::new_err(format!("{arg}: {e}")))?;
    Ok(state)
}

/// Trains a `LatteModel` or a text-to-video `LatteT2VTransformer` with a `GaussianDiffusion`: the official Latte
/// recipe (AdamW, EMA, gradient clipping after a start step) plus warm-up, gradient accumulation, activation
/// checkpointing, mixed precision with f32 master weights, and exactly resumable checkpoints. A text model is
/// trained on caption features with caption dropout (`caption_dropout_prob`) to `null_caption`, the empty
/// prompt's features (`T5TextEncoder.empty_prompt(max_length)`).
#[pyclass(name = "Trainer", module = "latte_rs")]
pub struct PyTrainer {
    inner: Trainer,
}

#[pymethods]
impl PyTrainer {
    #[new]
    #[pyo3(signature = (
        model,
        diffusion,
        *,
        lr = 1e-4,
        betas = (0.9, 0.999),
        eps = 1e-8,
        weight_decay = 0.0,
        warmup_steps = 0,
        ema_decay = 0.9999,
        grad_clip = None,
        clip_start_step = 0,
        grad_accumulation = 1,
        gradient_checkpointing = false,
        skip_nonfinite = false,
        seed = 3407,
        caption_dropout_prob = 0.1,
        null_caption = None,
        null_caption_mask = None,
    ))]
    #[allow(clippy::too_many_arguments)] // the Python keyword arguments, one by one
    fn new(
        py: Python<'_>,
        model: &Bound<'_, PyAny>,
        diffusion: PyRef<'_, PyGaussianDiffusion>,
        lr: f64,
        #[pyo3(from_py_with = crate::python::convert::pair_arg)] betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
        #[pyo3(from_py_with = crate::python::convert::u64_arg)] warmup_steps: u64,
        ema_decay: f64,
        grad_clip: Option<f64>,
        #[pyo3(from_py_with = crate::python::convert::u64_arg)] clip_start_step: u64,
        #[pyo3(from_py_with = crate::python::convert::usize_arg)] grad_accumulation: usize,
        gradient_checkpointing: bool,
        skip_nonfinite: bool,
        #[pyo3(from_py_with = crate::python::convert::u64_arg)] seed: u64,
        caption_dropout_prob: f64,
        null_caption: Option<&Bound<'_, PyAny>>,
        null_caption_mask: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        crate::python::guard(move || {
            let model = trained_model(model)?;
            let opts = TrainerOptions {
                optimizer: AdamWConfig {
                    lr,
                    beta1: betas.0,
                    beta2: betas.1,
                    eps,
                    weight_decay,
                },
                warmup_steps,
                ema_decay,
                grad_clip,
                clip_start_step,
                grad_accumulation,
                gradient_checkpointing,
                skip_nonfinite,
                seed,
                caption_dropout_prob,
            };
            let d = &diffusion.inner;
            let mut inner = py.detach(|| Trainer::new(model, d, opts)).py()?;
            if let Some(null) = null_caption {
                let features = float_tensor(null, "null_caption")?;
                let mask = null_caption_mask
                    .map(|m| to_tensor(m, "null_caption_mask"))
                    .transpose()?;
                inner.set_null_caption(&features, mask.as_ref()).py()?;
            } else if null_caption_mask.is_some() {
                return Err(PyValueError::new_err("null_caption_mask: given without null_caption"));
            }
            Ok(Self { inner })
        })
    }

    /// One optimiser step on clean latents (B, F, C, H, W); returns the step's statistics. `timesteps` (B,)
    /// (indices into the diffusion's steps) and `noise` (the latents' shape) replace the trainer's own draws.
    /// A text model takes `encoder_hidden_states` (B, S, C) (or (B, 1 + n, S, C) for image-video joint clips:
    /// the video's caption, then one per image frame) with their 0/1 `encoder_attention_mask` (padding zeroed)
    /// instead of labels.
    #[pyo3(signature = (
        latents, labels = None, image_labels = None, *, encoder_hidden_states = None,
        encoder_attention_mask = None, timesteps = None, noise = None
    ))]
    #[allow(clippy::too_many_arguments)] // the Python keyword arguments, one by one
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        latents: &Bound<'py, PyAny>,
        labels: Option<&Bound<'py, PyAny>>,
        image_labels: Option<&Bound<'py, PyAny>>,
        encoder_hidden_states: Option<&Bound<'py, PyAny>>,
        encoder_attention_mask: Option<&Bound<'py, PyAny>>,
        timesteps: Option<&Bound<'py, PyAny>>,
        noise: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || {
            let cond = CondArgs {
                labels,
                image_labels,
                encoder_hidden_states,
                encoder_attention_mask,
            };
            let (x, cond, draws) = batch_args(latents, cond, self.inner.model().is_text(), timesteps, noise)?;
            let inner = &mut self.inner;
            let device = inner.model().device().clone();
            let stats = run_model(py, &device, || inner.step_with(&x, &cond, &draws)).py()?;
            stats_dict(py, &stats)
        })
    }

    /// The first half of `step` for data-parallel training: returns (gradient, losses) without changing the
    /// weights. The gradient is one flat array (float32; float64 for a float64 model) of every trainable
    /// parameter in `parameter_names` order, unscaled; the losses are a dict (loss, mse, vb). Averaging both
    /// over processes (e.g. `torch.distributed.all_reduce` on `torch.from_numpy(gradient)`, which shares its
    /// memory) and passing them to `apply_gradients` is one step on the joint batch.
    #[pyo3(signature = (
        latents, labels = None, image_labels = None, *, encoder_hidden_states = None,
        encoder_attention_mask = None, timesteps = None, noise = None
    ))]
    #[allow(clippy::too_many_arguments)] // the Python keyword arguments, one by one
    fn forward_backward<'py>(
        &mut self,
        py: Python<'py>,
        latents: &Bound<'py, PyAny>,
        labels: Option<&Bound<'py, PyAny>>,
        image_labels: Option<&Bound<'py, PyAny>>,
        encoder_hidden_states: Option<&Bound<'py, PyAny>>,
        encoder_attention_mask: Option<&Bound<'py, PyAny>>,
        timesteps: Option<&Bound<'py, PyAny>>,
        noise: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
        crate::python::guard(move || {
            let cond = CondArgs {
                labels,
                image_labels,
                encoder_hidden_states,
                encoder_attention_mask,
            };
            let (x, cond, draws) = batch_args(latents, cond, self.inner.model().is_text(), timesteps, noise)?;
            let inner = &mut self.inner;
            let device = inner.model().device().clone();
            let g = run_model(py, &device, || inner.forward_backward(&x, &cond, &draws)).py()?;
            let flat = flatten_gradients(py, &g.grads)?;
            let d = PyDict::new(py);
            d.set_item("loss", g.loss)?;
            d.set_item("mse", g.mse)?;
            d.set_item("vb", g.vb)?;
            Ok((flat, d))
        })
    }

    /// One optimiser step from gradients computed elsewhere: a dict by parameter name, or the flat array of
    /// `forward_backward` (averaged over processes). `loss`, `mse` and `vb` (the losses the gradient comes
    /// from) go into the statistics and the non-finite check.
    #[pyo3(signature = (grads, *, loss = None, mse = None, vb = None))]
    fn apply_gradients<'py>(
        &mut self,
        py: Python<'py>,
        grads: &Bound<'py, PyAny>,
        loss: Option<f64>,
        mse: Option<f64>,
        vb: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || {
            let inner = &mut self.inner;
            if let Ok(grads) = grads.cast::<PyDict>() {
                if loss.is_some() || mse.is_some() || vb.is_some() {
                    return Err(PyValueError::new_err(
                        "loss, mse, vb: only with the flat gradient of forward_backward",
                    ));
                }
                let mut map = HashMap::new();
                for (k, v) in grads.iter() {
                    let name: String = k
                        .extract()
                        .map_err(|_| PyTypeError::new_err("grads: keys must be parameter names (str)"))?;
                    let t = to_tensor(&v, &format!("grads[{name:?}]"))?;
                    map.insert(name, t);
                }
                let stats = py.detach(|| inner.apply_gradients(&map)).py()?;
                return stats_dict(py, &stats);
            }
            let flat = to_tensor(grads, "grads")?;
            let shapes = inner.parameter_shapes();
            let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
            if flat.dims() != [total] || !flat.dtype().is_float() {
                return Err(PyValueError::new_err(format!(
                    "grads: expected a dict by parameter name or a flat float array of {total} values (the \
                     gradient of forward_backward), got {:?} of shape {:?}",
                    flat.dtype(),
                    flat.dims()
                )));
            }
            let mut list = Vec::with_capacity(shapes.len());
            let mut offset = 0;
            for shape in shapes {
                let n: usize = shape.iter().product();
                list.push(flat.narrow(0, offset, n).and_then(|t| t.reshape(shape)).py()?);
                offset += n;
            }
            let stats = py.detach(|| inner.apply_gradient_list(&list, loss, mse, vb)).py()?;
            stats_dict(py, &stats)
        })
    }

    /// Writes a resumable checkpoint directory atomically. `rank_rng_states` (the `rng_state` of every process
    /// of a data-parallel run, by rank) lets a resume with as many processes continue each stream exactly. Only
    /// a latte-rs checkpoint or an empty folder at `path` is replaced (see `train::checkpoint`).
    #[pyo3(signature = (path, *, rank_rng_states = None))]
    fn save(&self, py: Python<'_>, path: PathBuf, rank_rng_states: Option<Vec<String>>) -> PyResult<()> {
        crate::python::guard(move || {
            let states = rank_rng_states
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, s)| parse_rng_state(s, &format!("rank_rng_states[{i}]")))
                .collect::<PyResult<Vec<_>>>()?;
            let inner = &self.inner;
            py.detach(|| inner.save_with_ranks(&path, &states)).py()
        })
    }

    /// The position of the trainer's random stream (timesteps, noise, label dropout), as JSON.
    #[getter]
    fn rng_state(&self) -> PyResult<String> {
        crate::python::guard(move || serde_json::to_string(&self.inner.rng_state()).py())
    }

    /// Moves the random stream to a position from `rng_state`.
    fn set_rng_state(&mut self, state: &str) -> PyResult<()> {
        crate::python::guard(move || {
            let state = parse_rng_state(state, "state")?;
            self.inner.set_rng_state(&state).py()
        })
    }

    /// Restarts the random stream from `seed`.
    fn reseed(&mut self, #[pyo3(from_py_with = crate::python::convert::u64_arg)] seed: u64) -> PyResult<()> {
        crate::python::guard(move || {
            self.inner.reseed(seed);
            Ok(())
        })
    }

    /// The random streams of every process of the data-parallel run this trainer was resumed from (by rank;
    /// empty for a single-process checkpoint).
    #[getter]
    fn rank_rng_states(&self) -> PyResult<Vec<String>> {
        crate::python::guard(move || {
            self.inner
                .rank_rng_states()
                .iter()
                .map(|s| serde_json::to_string(s).py())
                .collect()
        })
    }

    /// The trainable parameters' names, in the order of `forward_backward`'s flat gradient.
    #[getter]
    fn parameter_names(&self) -> Vec<String> {
        self.inner.parameter_names().to_vec()
    }

    /// The trainable parameters' shapes, in the same order.
    #[getter]
    fn parameter_shapes(&self) -> Vec<Vec<usize>> {
        self.inner.parameter_shapes()
    }

    /// The trainer saved in `path`, continuing exactly where it stopped.
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu"))]
    fn resume(py: Python<'_>, path: PathBuf, device: &str) -> PyResult<Self> {
        crate::python::guard(move || {
            let device = parse_device(device).py()?;
            let inner = py.detach(|| Trainer::resume(&path, &device)).py()?;
            Ok(Self { inner })
        })
    }

    /// The EMA weights as a new model (f32, or f64 for an f64 model): a `LatteModel` or a `LatteT2VTransformer`.
    fn ema_model<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let inner = &self.inner;
            model_to_py(py, py.detach(|| inner.ema_model()).py()?)
        })
    }

    /// The null caption of caption dropout (1, S, C), padding zeroed, or None.
    #[getter]
    fn null_caption<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        crate::python::guard(move || self.inner.null_caption().map(|t| to_numpy(py, t)).transpose())
    }

    /// The EMA weights by parameter name.
    fn ema_state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || {
            let d = PyDict::new(py);
            for (name, t) in self.inner.ema_state_dict().py()? {
                d.set_item(name, to_numpy(py, &t)?)?;
            }
            Ok(d)
        })
    }

    /// The model being trained (shares its weights with the trainer): a `LatteModel` or a `LatteT2VTransformer`.
    #[getter]
    fn model<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        model_to_py(py, self.inner.model().clone())
    }

    #[getter]
    fn diffusion(&self) -> PyGaussianDiffusion {
        PyGaussianDiffusion {
            inner: self.inner.diffusion().clone(),
        }
    }

    /// Optimiser steps taken.
    #[getter]
    fn step_count(&self) -> u64 {
        self.inner.step_count()
    }

    #[getter]
    fn skipped_steps(&self) -> u64 {
        self.inner.skipped_steps()
    }

    /// The options as a dict (the constructor's keyword arguments).
    #[getter]
    fn options<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || {
            let o = self.inner.options();
            let d = PyDict::new(py);
            d.set_item("lr", o.optimizer.lr)?;
            d.set_item("betas", (o.optimizer.beta1, o.optimizer.beta2))?;
            d.set_item("eps", o.optimizer.eps)?;
            d.set_item("weight_decay", o.optimizer.weight_decay)?;
            d.set_item("warmup_steps", o.warmup_steps)?;
            d.set_item("ema_decay", o.ema_decay)?;
            d.set_item("grad_clip", o.grad_clip)?;
            d.set_item("clip_start_step", o.clip_start_step)?;
            d.set_item("grad_accumulation", o.grad_accumulation)?;
            d.set_item("gradient_checkpointing", o.gradient_checkpointing)?;
            d.set_item("skip_nonfinite", o.skip_nonfinite)?;
            d.set_item("seed", o.seed)?;
            d.set_item("caption_dropout_prob", o.caption_dropout_prob)?;
            Ok(d)
        })
    }

    /// The learning rate of the 1-based optimiser step `step` (warm-up, then constant).
    fn lr_at(&self, #[pyo3(from_py_with = crate::python::convert::u64_arg)] step: u64) -> PyResult<f64> {
        crate::python::guard(move || {
            if step == 0 {
                return Err(PyValueError::new_err("step: expected a 1-based step >= 1, got 0"));
            }
            Ok(self.inner.options().lr_at(step))
        })
    }

    fn __repr__(&self) -> String {
        let o = self.inner.options();
        format!(
            "Trainer(step={}, lr={}, ema_decay={}, grad_clip={:?}, grad_accumulation={}, gradient_checkpointing={})",
            self.inner.step_count(),
            o.optimizer.lr,
            o.ema_decay,
            o.grad_clip,
            o.grad_accumulation,
            o.gradient_checkpointing
        )
    }
}
