//! `sample`: the core's sampling loop for any model and any scheduler, run without the GIL while progress (and
//! Ctrl-C) go through a Python callback. The arguments are converted here; every decision is the core's.

use std::sync::{Mutex, PoisonError};

use candle_core::Tensor;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::convert::{float_tensor, int_tensor, to_numpy, to_tensor};
use super::diffusion::PyGaussianDiffusion;
use super::model::PyLatteModel;
use super::schedulers::PyScheduler;
use super::t2v::PyLatteT2V;
use super::IntoPy;
use crate::diffusion::{self, DiffusionSampler, SamplerKind, SamplingOptions, Scheduler};
use crate::error::{LatteError, Result};
use crate::model::{Condition, Denoiser};
use crate::rng::Generator;

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

/// The model argument: a `LatteModel` or a `LatteT2VTransformer`.
pub(crate) fn denoiser(model: &Bound<'_, PyAny>) -> PyResult<Box<dyn Denoiser>> {
    if let Ok(m) = model.extract::<PyRef<PyLatteModel>>() {
        return Ok(Box::new(m.inner.clone()));
    }
    if let Ok(m) = model.extract::<PyRef<PyLatteT2V>>() {
        return Ok(Box::new(m.inner.clone()));
    }
    Err(PyTypeError::new_err(format!(
        "model: expected a LatteModel or a LatteT2VTransformer, got {}",
        model.get_type()
    )))
}

/// The scheduler argument: the native core of a latte-rs scheduler (copied, so the caller's keeps its state), or
/// a `GaussianDiffusion` sampled as the official code (`sampler` "ddpm" or "ddim").
fn scheduler(obj: &Bound<'_, PyAny>, sampler: &str, clip_denoised: bool) -> PyResult<Box<dyn Scheduler>> {
    if let Ok(s) = obj.extract::<PyRef<PyScheduler>>() {
        return Ok(s.inner.clone());
    }
    if let Ok(d) = obj.extract::<PyRef<PyGaussianDiffusion>>() {
        let kind = SamplerKind::parse(sampler).py()?;
        return Ok(Box::new(DiffusionSampler::new(d.inner.clone(), kind, clip_denoised)));
    }
    Err(PyTypeError::new_err(format!(
        "scheduler: expected a GaussianDiffusion or a latte-rs scheduler (DDPM, DDIM, Euler, DPM-Solver), got {}",
        obj.get_type()
    )))
}

/// The condition from the keyword arguments: class labels, or text embeddings, or nothing.
pub(crate) fn condition(
    y: Option<&Bound<'_, PyAny>>,
    y_image: Option<&Bound<'_, PyAny>>,
    text: Option<&Bound<'_, PyAny>>,
    mask: Option<&Bound<'_, PyAny>>,
) -> PyResult<Condition> {
    match (y, text) {
        (Some(_), Some(_)) => Err(PyValueError::new_err(
            "y / encoder_hidden_states: pass class labels or a prompt's embeddings, not both",
        )),
        (_, Some(t)) => Ok(Condition::Text {
            embeddings: float_tensor(t, "encoder_hidden_states")?,
            mask: mask.map(|m| to_tensor(m, "encoder_attention_mask")).transpose()?,
        }),
        (y, None) => {
            let y = y.map(|v| int_tensor(v, "y", "integer class labels")).transpose()?;
            let y_image = y_image
                .map(|v| int_tensor(v, "y_image", "integer class labels"))
                .transpose()?;
            Condition::from_labels(y.as_ref(), y_image.as_ref()).py()
        }
    }
}

/// What a sampling run needs besides the model and the scheduler, converted from the Python arguments.
pub(crate) struct SampleInputs {
    pub noise: Option<Tensor>,
    pub num_samples: usize,
    /// The starting noise's shape when it is drawn (its batch is `num_samples`); None: the model's own size.
    pub latent_shape: Option<Vec<usize>>,
    pub cond: Condition,
    pub opts: SamplingOptions,
    pub seed: u64,
}

/// Runs the core's loop on converted inputs and returns the latents as a NumPy array.
pub(crate) fn run<'py>(
    py: Python<'py>,
    model: Box<dyn Denoiser>,
    mut scheduler: Box<dyn Scheduler>,
    inputs: SampleInputs,
    callback: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let out = run_with_progress(py, callback, |progress| {
        let mut rng = Generator::new(inputs.seed);
        let noise = match inputs.noise {
            Some(n) => n,
            None => {
                let mut dims = inputs
                    .latent_shape
                    .unwrap_or_else(|| model.latent_shape(inputs.num_samples));
                if let Some(b) = dims.first_mut() {
                    *b = inputs.num_samples;
                }
                diffusion::draw_noise(model.as_ref(), &dims, &mut rng)?
            }
        };
        diffusion::sample(
            model.as_ref(),
            scheduler.as_mut(),
            &noise,
            &inputs.cond,
            &inputs.opts,
            &mut rng,
            progress,
        )
    })?;
    to_numpy(py, &out)
}

/// Generates latents with any model and any scheduler, every step in Rust (see `latte_rs.sample` and the
/// pipelines). Without `noise`, the starting noise of `num_samples` clips at the model's size (or `latent_shape`)
/// is drawn from `seed`; every step's noise comes from the same generator.
#[pyfunction]
#[pyo3(signature = (
    model, scheduler, *, noise = None, num_samples = 1, latent_shape = None, y = None, y_image = None,
    encoder_hidden_states = None, negative_encoder_hidden_states = None, encoder_attention_mask = None,
    negative_encoder_attention_mask = None, guidance_scale = 1.0, eta = 0.0, num_inference_steps = None,
    sampler = "ddpm", clip_denoised = false, seed = 0, callback = None,
))]
#[allow(clippy::too_many_arguments)] // the Python keywords, one by one
pub(crate) fn sample<'py>(
    py: Python<'py>,
    model: &Bound<'py, PyAny>,
    scheduler: &Bound<'py, PyAny>,
    noise: Option<&Bound<'py, PyAny>>,
    #[pyo3(from_py_with = crate::python::convert::usize_arg)] num_samples: usize,
    latent_shape: Option<Vec<usize>>,
    y: Option<&Bound<'py, PyAny>>,
    y_image: Option<&Bound<'py, PyAny>>,
    encoder_hidden_states: Option<&Bound<'py, PyAny>>,
    negative_encoder_hidden_states: Option<&Bound<'py, PyAny>>,
    encoder_attention_mask: Option<&Bound<'py, PyAny>>,
    negative_encoder_attention_mask: Option<&Bound<'py, PyAny>>,
    guidance_scale: f64,
    eta: f64,
    #[pyo3(from_py_with = crate::python::convert::opt_usize_arg)] num_inference_steps: Option<usize>,
    sampler: &str,
    clip_denoised: bool,
    #[pyo3(from_py_with = crate::python::convert::u64_arg)] seed: u64,
    callback: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    crate::python::guard(move || {
        let model = denoiser(model)?;
        let scheduler = self::scheduler(scheduler, sampler, clip_denoised)?;
        let uncond = negative_encoder_hidden_states
            .map(|t| condition(None, None, Some(t), negative_encoder_attention_mask))
            .transpose()?;
        let inputs = SampleInputs {
            noise: noise.map(|n| float_tensor(n, "noise")).transpose()?,
            num_samples,
            latent_shape,
            cond: condition(y, y_image, encoder_hidden_states, encoder_attention_mask)?,
            opts: SamplingOptions {
                num_inference_steps,
                guidance_scale,
                uncond,
                eta,
            },
            seed,
        };
        run(py, model, scheduler, inputs, callback)
    })
}
