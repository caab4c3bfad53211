//! Sampling from Python: the model, condition and noise arguments converted, and the core's sampling loop run
//! without the GIL while progress (and Ctrl-C) go through a Python callback. Every decision is the core's.

use std::sync::{Mutex, PoisonError};

use candle_core::Tensor;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::cache::CacheArg;
use super::convert::{float_tensor, int_tensor, to_numpy, to_tensor};
use super::model::PyLatteModel;
use super::t2v::PyLatteT2V;
use super::IntoPy;
use crate::diffusion::Scheduler;
use crate::error::{LatteError, Result};
use crate::long_video::{sample_video, LongVideo, VideoRequest};
use crate::model::{Condition, Denoiser};
use crate::rng::Generator;
use crate::sampling::SamplingOptions;

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
    /// Frames to generate (None: the noise's, else `latent_shape`'s, else the model's); beyond the trained length
    /// `long_video` says how ([`crate::long_video`]).
    pub num_frames: Option<usize>,
    pub long_video: LongVideo,
}

/// Runs the core's loop on converted inputs and returns the latents as a NumPy array; with `cache`, the run uses
/// its policy and leaves its report on it.
pub(crate) fn run<'py>(
    py: Python<'py>,
    model: Box<dyn Denoiser>,
    mut scheduler: Box<dyn Scheduler>,
    mut inputs: SampleInputs,
    callback: Option<Py<PyAny>>,
    cache: Option<CacheArg>,
) -> PyResult<Bound<'py, PyAny>> {
    inputs.opts.cache = cache.as_ref().map(CacheArg::policy);
    let out = run_with_progress(py, callback, |progress| {
        let mut rng = Generator::new(inputs.seed);
        let mut latent_shape = inputs
            .latent_shape
            .clone()
            .unwrap_or_else(|| model.latent_shape(inputs.num_samples));
        if let Some(b) = latent_shape.first_mut() {
            *b = inputs.num_samples;
        }
        let request = VideoRequest {
            noise: inputs.noise,
            latent_shape,
            num_frames: inputs.num_frames,
            method: inputs.long_video,
        };
        sample_video(
            model.as_ref(),
            scheduler.as_mut(),
            request,
            &inputs.cond,
            &inputs.opts,
            &mut rng,
            progress,
        )
    })?;
    if let Some(cache) = cache {
        cache.set_report(out.cache_report);
    }
    to_numpy(py, &out.latents)
}
