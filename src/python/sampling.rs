//! What every sampling entry point shares: the starting noise, labels and guidance batch, the model call, and
//! running the loop without the GIL while reporting progress (and honouring Ctrl-C) through a Python callback.

use std::sync::{Mutex, PoisonError};

use candle_core::{DType, Tensor};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::convert::{to_numpy, to_tensor};
use super::model::PyLatteModel;
use super::schedulers::{PyDpmSolverScheduler, PyEulerScheduler, PyScheduler};
use super::IntoPy;
use crate::diffusion::{sample_with_scheduler as run_scheduler, NoiseScheduler};
use crate::error::{LatteError, Result};
use crate::model::LatteModel;
use crate::rng::Generator;

/// The inputs of a sampling run, with guidance's doubled batch already made.
pub(crate) struct Prepared {
    pub noise: Tensor,
    pub labels: Option<Tensor>,
    pub guided: bool,
    /// Clips asked for (the first half of a guided batch).
    pub batch: usize,
    pub rng: Generator,
}

pub(crate) fn prepare(
    net: &LatteModel,
    num_samples: usize,
    noise: Option<&Bound<'_, PyAny>>,
    y: Option<&Bound<'_, PyAny>>,
    cfg_scale: f64,
    seed: u64,
) -> PyResult<Prepared> {
    let cfg = net.config();
    if !(cfg_scale.is_finite() && cfg_scale >= 1.0) {
        return Err(PyValueError::new_err(format!(
            "cfg_scale: expected a number >= 1, got {cfg_scale}"
        )));
    }
    let guided = cfg_scale > 1.0;
    if guided && cfg.label_table_rows() <= cfg.num_classes {
        return Err(PyValueError::new_err(
            "cfg_scale > 1 needs a class-conditional model with a null class (num_classes > 0, class_dropout_prob > 0)",
        ));
    }
    let mut rng = Generator::new(seed);
    let noise = match noise {
        Some(n) => {
            let t = to_tensor(n, "noise")?;
            if !t.dtype().is_float() {
                return Err(PyTypeError::new_err(format!(
                    "noise: expected a floating-point array, got {:?}",
                    t.dtype()
                )));
            }
            t.to_dtype(net.dtype()).py()?
        }
        None => {
            if num_samples == 0 {
                return Err(PyValueError::new_err("num_samples: expected at least 1, got 0"));
            }
            let dims = [
                num_samples,
                cfg.num_frames,
                cfg.in_channels,
                cfg.input_size,
                cfg.input_size,
            ];
            rng.randn(&dims, net.dtype(), net.device()).py()?
        }
    };
    let batch = noise.dims().first().copied().unwrap_or(0);
    let labels = y.map(|y| to_tensor(y, "y")).transpose()?;
    // Guidance runs the batch twice, the second half with the null class (as the official sampler).
    let (noise, labels) = if guided {
        let y = labels.ok_or_else(|| PyValueError::new_err("y: labels are required for guidance"))?;
        let null = Tensor::full(cfg.num_classes as i64, batch, y.device()).py()?;
        let y2 = Tensor::cat(&[&y.to_dtype(DType::I64).py()?, &null], 0).py()?;
        (Tensor::cat(&[&noise, &noise], 0).py()?, Some(y2))
    } else {
        (noise, labels)
    };
    Ok(Prepared {
        noise,
        labels,
        guided,
        batch,
        rng,
    })
}

/// The model's output at `x` for timesteps `t` (one per clip), guided when the run is.
pub(crate) fn predict(
    net: &LatteModel,
    p_labels: Option<&Tensor>,
    guided: bool,
    cfg_scale: f64,
    x: &Tensor,
    t: Tensor,
) -> Result<Tensor> {
    if guided {
        net.forward_with_cfg(x, &t, p_labels, cfg_scale)
    } else {
        net.forward(x, &t, p_labels, None)
    }
}

/// Runs `body` without the GIL, handing it a progress function that calls `callback(done, total)` and checks
/// for Ctrl-C; a Python exception from either stops the run and is raised as it was.
pub(crate) fn run_with_progress<T: Send>(
    py: Python<'_>,
    callback: Option<Py<PyAny>>,
    body: impl FnOnce(&mut dyn FnMut(usize, usize) -> Result<()>) -> Result<T> + Send,
) -> PyResult<T> {
    let stored: Mutex<Option<PyErr>> = Mutex::new(None);
    let result = py.detach(|| {
        let mut progress = |done: usize, total: usize| -> Result<()> {
            Python::attach(|py| {
                let outcome = py.check_signals().and_then(|()| match &callback {
                    Some(cb) => cb.call1(py, (done, total)).map(|_| ()),
                    None => Ok(()),
                });
                outcome.map_err(|e| {
                    *stored.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                    LatteError::Value("sampling interrupted".into())
                })
            })
        };
        body(&mut progress)
    });
    if let Some(e) = stored.into_inner().unwrap_or_else(PoisonError::into_inner) {
        return Err(e);
    }
    result.py()
}

/// Samples with a diffusers-style scheduler (`scheduler` is the `_native` core of one), every step in Rust.
/// The model's prediction channels (the first `in_channels`; a learned variance is dropped, as LattePipeline
/// does) drive the scheduler. See `latte_rs.sample`.
#[pyfunction]
#[pyo3(signature = (model, scheduler, num_inference_steps, num_samples = 1, noise = None, y = None, cfg_scale = 1.0, seed = 0, callback = None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn sample_with_scheduler<'py>(
    py: Python<'py>,
    model: &PyLatteModel,
    scheduler: &Bound<'py, PyAny>,
    num_inference_steps: usize,
    num_samples: usize,
    noise: Option<&Bound<'py, PyAny>>,
    y: Option<&Bound<'py, PyAny>>,
    cfg_scale: f64,
    seed: u64,
    callback: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    // A copy of the scheduler runs the loop, so the caller's object keeps its state.
    let mut sched: Box<dyn NoiseScheduler + Send> = if let Ok(s) = scheduler.extract::<PyRef<PyScheduler>>() {
        Box::new(s.inner.clone())
    } else if let Ok(s) = scheduler.extract::<PyRef<PyEulerScheduler>>() {
        Box::new(s.inner.clone())
    } else if let Ok(s) = scheduler.extract::<PyRef<PyDpmSolverScheduler>>() {
        Box::new(s.inner.clone())
    } else {
        return Err(PyTypeError::new_err(format!(
            "scheduler: expected a latte-rs scheduler (DDPM, DDIM, Euler, DPM-Solver), got {}",
            scheduler.get_type()
        )));
    };
    let net = &model.inner;
    let channels = net.config().in_channels;
    let mut p = prepare(net, num_samples, noise, y, cfg_scale, seed)?;
    let (labels, guided) = (p.labels.clone(), p.guided);
    let noise = p.noise.clone();
    let out = run_with_progress(py, callback, |progress| {
        let model_fn = |x: &Tensor, t: f64| -> Result<Tensor> {
            let ts = Tensor::full(t as f32, x.dim(0)?, x.device())?;
            let out = predict(net, labels.as_ref(), guided, cfg_scale, x, ts)?;
            Ok(out.narrow(2, 0, channels)?)
        };
        run_scheduler(
            sched.as_mut(),
            num_inference_steps,
            noise,
            model_fn,
            &mut p.rng,
            progress,
        )
    })?;
    let out = if guided { out.narrow(0, 0, p.batch).py()? } else { out };
    to_numpy(py, &out)
}
