//! `Trainer` as a Python class.

use std::collections::HashMap;
use std::path::PathBuf;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{to_numpy, to_tensor};
use super::diffusion::PyGaussianDiffusion;
use super::model::PyLatteModel;
use super::IntoPy;
use crate::model::parse_device;
use crate::train::optim::AdamWConfig;
use crate::train::{StepStats, Trainer, TrainerOptions};

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

/// Trains a `LatteModel` with a `GaussianDiffusion`: the official Latte recipe (AdamW, EMA, gradient clipping
/// after a start step) plus warm-up, gradient accumulation, activation checkpointing, mixed precision with f32
/// master weights, and exactly resumable checkpoints.
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
    ))]
    #[allow(clippy::too_many_arguments)] // the Python keyword arguments, one by one
    fn new(
        py: Python<'_>,
        model: PyRef<'_, PyLatteModel>,
        diffusion: PyRef<'_, PyGaussianDiffusion>,
        lr: f64,
        betas: (f64, f64),
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
    ) -> PyResult<Self> {
        crate::python::guard(move || {
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
            };
            let (m, d) = (&model.inner, &diffusion.inner);
            let inner = py.detach(|| Trainer::new(m, d, opts)).py()?;
            Ok(Self { inner })
        })
    }

    /// One optimiser step on clean latents (B, F, C, H, W); returns the step's statistics.
    #[pyo3(signature = (latents, labels = None, image_labels = None))]
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        latents: &Bound<'py, PyAny>,
        labels: Option<&Bound<'py, PyAny>>,
        image_labels: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || {
            let x = to_tensor(latents, "latents")?;
            let y = labels.map(|l| to_tensor(l, "labels")).transpose()?;
            let yi = image_labels.map(|l| to_tensor(l, "image_labels")).transpose()?;
            let inner = &mut self.inner;
            let stats = py.detach(|| inner.step(&x, y.as_ref(), yi.as_ref())).py()?;
            stats_dict(py, &stats)
        })
    }

    /// One optimiser step from gradients computed elsewhere, by parameter name.
    fn apply_gradients<'py>(&mut self, py: Python<'py>, grads: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || {
            let mut map = HashMap::new();
            for (k, v) in grads.iter() {
                let name: String = k
                    .extract()
                    .map_err(|_| PyTypeError::new_err("grads: keys must be parameter names (str)"))?;
                let t = to_tensor(&v, &format!("grads[{name:?}]"))?;
                map.insert(name, t);
            }
            let inner = &mut self.inner;
            let stats = py.detach(|| inner.apply_gradients(&map)).py()?;
            stats_dict(py, &stats)
        })
    }

    /// Writes a resumable checkpoint directory atomically.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        crate::python::guard(move || {
            let inner = &self.inner;
            py.detach(|| inner.save(&path)).py()
        })
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

    /// The EMA weights as a new model (f32, or f64 for an f64 model).
    fn ema_model(&self, py: Python<'_>) -> PyResult<PyLatteModel> {
        crate::python::guard(move || {
            let inner = &self.inner;
            Ok(PyLatteModel {
                inner: py.detach(|| inner.ema_model()).py()?,
            })
        })
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

    /// The model being trained (shares its weights with the trainer).
    #[getter]
    fn model(&self) -> PyLatteModel {
        PyLatteModel {
            inner: self.inner.model().clone(),
        }
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
