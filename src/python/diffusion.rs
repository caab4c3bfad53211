//! `GaussianDiffusion` as a Python class (the process Latte trains with, as DiT's `create_diffusion`), and `sample`,
//! the sampling entry that takes it or any latte-rs scheduler.

use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::cache::cache_arg;
use super::convert::{float_tensor, int_tensor, to_numpy};
use super::sampling::{condition, denoiser, run, SampleInputs};
use super::schedulers::PyScheduler;
use super::IntoPy;
use crate::diffusion::{DiffusionOptions, DiffusionSampler, GaussianDiffusion, SamplerKind, Scheduler};
use crate::long_video::LongVideo;
use crate::sampling::SamplingOptions;

fn timesteps(obj: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let t = int_tensor(obj, "t", "integer step indices")?;
    if t.rank() != 1 {
        return Err(PyValueError::new_err(format!(
            "t: expected shape (B,), got {:?}",
            t.dims()
        )));
    }
    let v = t.to_vec1::<i64>().py()?;
    v.iter()
        .map(|&i| usize::try_from(i).map_err(|_| PyValueError::new_err(format!("t: expected steps >= 0, got {i}"))))
        .collect()
}

/// The Gaussian diffusion of IDDPM / DiT / Latte, optionally respaced, with f64 tables.
///
/// >>> d = GaussianDiffusion(timestep_respacing="250")
/// >>> d.num_timesteps, int(d.timestep_map[1])
/// (250, 4)
#[pyclass(name = "GaussianDiffusion", module = "latte_rs", frozen)]
pub struct PyGaussianDiffusion {
    pub(crate) inner: GaussianDiffusion,
}

/// A float array argument in the dtype of `first`: the arrays of one call are computed in the dtype of its first
/// (float64 noise from NumPy's default generator with float32 latents is converted, not refused).
fn float_like(obj: &Bound<'_, PyAny>, arg: &str, first: &candle_core::Tensor) -> PyResult<candle_core::Tensor> {
    float_tensor(obj, arg)?.to_dtype(first.dtype()).py()
}

#[pymethods]
impl PyGaussianDiffusion {
    #[new]
    #[pyo3(signature = (
        timestep_respacing = "",
        noise_schedule = "linear",
        learn_sigma = true,
        sigma_small = false,
        prediction_type = "epsilon",
        rescale_learned_sigmas = false,
        use_kl = false,
        diffusion_steps = 1000,
        beta_start = 0.00085,
        beta_end = 0.012,
    ))]
    #[allow(clippy::too_many_arguments)] // the Python keyword arguments, one by one
    fn new(
        timestep_respacing: &str,
        noise_schedule: &str,
        learn_sigma: bool,
        sigma_small: bool,
        prediction_type: &str,
        rescale_learned_sigmas: bool,
        use_kl: bool,
        #[pyo3(from_py_with = crate::python::convert::usize_arg)] diffusion_steps: usize,
        beta_start: f64,
        beta_end: f64,
    ) -> PyResult<Self> {
        crate::python::guard(move || {
            let opts = DiffusionOptions {
                timestep_respacing: timestep_respacing.into(),
                noise_schedule: noise_schedule.into(),
                learn_sigma,
                sigma_small,
                prediction_type: prediction_type.into(),
                rescale_learned_sigmas,
                use_kl,
                diffusion_steps,
                beta_start,
                beta_end,
            };
            let inner = GaussianDiffusion::create(&opts).py()?;
            Ok(Self { inner })
        })
    }

    /// The process of a trainer checkpoint (its folder, or its `diffusion.json`), checked as a resume checks it.
    #[staticmethod]
    fn load(path: std::path::PathBuf) -> PyResult<Self> {
        crate::python::guard(move || {
            let file = if path.is_dir() {
                path.join(crate::weights::format::DIFFUSION_FILE)
            } else {
                path
            };
            let bytes = crate::io::read(&file).py()?;
            let inner = GaussianDiffusion::from_json(&bytes).map_err(|e| {
                PyValueError::new_err(format!("path: {}: not a diffusion process ({e})", file.display()))
            })?;
            Ok(Self { inner })
        })
    }

    /// What the model's output predicts, in diffusers' words ("epsilon", "sample" or "v_prediction"): what a
    /// sampler must be told.
    #[getter]
    fn prediction_type(&self) -> &'static str {
        self.inner.mean_type.prediction_type()
    }

    /// How the variance of each step is chosen: "fixed_small", "fixed_large", "learned" or "learned_range" (the
    /// model's second half of channels interpolates between the two fixed ones, as Latte's).
    #[getter]
    fn variance_type(&self) -> &'static str {
        self.inner.var_type.name()
    }

    /// The training objective: "mse" (with the variational-bound term for a learned variance: the hybrid loss),
    /// "rescaled_mse", "kl" or "rescaled_kl".
    #[getter]
    fn loss_type(&self) -> &'static str {
        self.inner.loss_type.name()
    }

    #[getter]
    fn num_timesteps(&self) -> usize {
        self.inner.num_timesteps()
    }

    /// The original timestep of each step (what the model is conditioned on).
    #[getter]
    fn timestep_map<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_vec(py, self.inner.timestep_map.iter().map(|&t| t as i64).collect())
    }

    /// The per-timestep tables as float64 arrays, by the reference's names.
    fn tables<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || {
            let d = PyDict::new(py);
            let g = &self.inner;
            for (name, v) in [
                ("betas", &g.betas),
                ("alphas_cumprod", &g.alphas_cumprod),
                ("alphas_cumprod_prev", &g.alphas_cumprod_prev),
                ("alphas_cumprod_next", &g.alphas_cumprod_next),
                ("sqrt_alphas_cumprod", &g.sqrt_alphas_cumprod),
                ("sqrt_one_minus_alphas_cumprod", &g.sqrt_one_minus_alphas_cumprod),
                ("log_one_minus_alphas_cumprod", &g.log_one_minus_alphas_cumprod),
                ("sqrt_recip_alphas_cumprod", &g.sqrt_recip_alphas_cumprod),
                ("sqrt_recipm1_alphas_cumprod", &g.sqrt_recipm1_alphas_cumprod),
                ("posterior_variance", &g.posterior_variance),
                ("posterior_log_variance_clipped", &g.posterior_log_variance_clipped),
                ("posterior_mean_coef1", &g.posterior_mean_coef1),
                ("posterior_mean_coef2", &g.posterior_mean_coef2),
            ] {
                d.set_item(name, PyArray1::from_vec(py, v.clone()).reshape([v.len()])?)?;
            }
            Ok(d)
        })
    }

    /// x_t = √ᾱ_t x₀ + √(1−ᾱ_t) noise.
    fn q_sample<'py>(
        &self,
        py: Python<'py>,
        x_start: &Bound<'py, PyAny>,
        t: &Bound<'py, PyAny>,
        noise: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let x = float_tensor(x_start, "x_start")?;
            let (t, n) = (timesteps(t)?, float_like(noise, "noise", &x)?);
            let out = py.detach(|| self.inner.q_sample(&x, &t, &n)).py()?;
            to_numpy(py, &out)
        })
    }

    /// (mean, variance, clipped log-variance) of q(x_{t−1} | x_t, x₀).
    fn q_posterior_mean_variance<'py>(
        &self,
        py: Python<'py>,
        x_start: &Bound<'py, PyAny>,
        x_t: &Bound<'py, PyAny>,
        t: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        crate::python::guard(move || {
            let x0 = float_tensor(x_start, "x_start")?;
            let (xt, t) = (float_like(x_t, "x_t", &x0)?, timesteps(t)?);
            let (m, v, l) = py.detach(|| self.inner.q_posterior_mean_variance(&x0, &xt, &t)).py()?;
            Ok((to_numpy(py, &m)?, to_numpy(py, &v)?, to_numpy(py, &l)?))
        })
    }

    /// p(x_{t−1} | x_t) from a model output: dict with mean, variance, log_variance, pred_xstart.
    #[pyo3(signature = (model_output, x, t, clip_denoised = true))]
    fn p_mean_variance<'py>(
        &self,
        py: Python<'py>,
        model_output: &Bound<'py, PyAny>,
        x: &Bound<'py, PyAny>,
        t: &Bound<'py, PyAny>,
        clip_denoised: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || {
            let o = float_tensor(model_output, "model_output")?;
            let (x, t) = (float_like(x, "x", &o)?, timesteps(t)?);
            let out = py
                .detach(|| self.inner.p_mean_variance(&o, &x, &t, clip_denoised))
                .py()?;
            let d = PyDict::new(py);
            d.set_item("mean", to_numpy(py, &out.mean)?)?;
            d.set_item("variance", to_numpy(py, &out.variance)?)?;
            d.set_item("log_variance", to_numpy(py, &out.log_variance)?)?;
            d.set_item("pred_xstart", to_numpy(py, &out.pred_xstart)?)?;
            Ok(d)
        })
    }

    /// Per-sample training losses for a model output at x_t = q_sample(x_start, t, noise): dict with `loss`,
    /// and `mse` / `vb` where the loss type has them.
    fn training_losses<'py>(
        &self,
        py: Python<'py>,
        model_output: &Bound<'py, PyAny>,
        x_start: &Bound<'py, PyAny>,
        t: &Bound<'py, PyAny>,
        noise: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        crate::python::guard(move || {
            let o = float_tensor(model_output, "model_output")?;
            let (x0, t) = (float_like(x_start, "x_start", &o)?, timesteps(t)?);
            let n = float_like(noise, "noise", &o)?;
            let out = py.detach(|| self.inner.training_losses(&o, &x0, &t, &n)).py()?;
            let d = PyDict::new(py);
            d.set_item("loss", to_numpy(py, &out.loss)?)?;
            if let Some(mse) = &out.mse {
                d.set_item("mse", to_numpy(py, mse)?)?;
            }
            if let Some(vb) = &out.vb {
                d.set_item("vb", to_numpy(py, vb)?)?;
            }
            Ok(d)
        })
    }

    /// One ancestral step with the given noise: (x_{t−1}, pred_xstart).
    #[pyo3(signature = (model_output, x, t, noise, clip_denoised = true))]
    fn p_sample<'py>(
        &self,
        py: Python<'py>,
        model_output: &Bound<'py, PyAny>,
        x: &Bound<'py, PyAny>,
        t: &Bound<'py, PyAny>,
        noise: &Bound<'py, PyAny>,
        clip_denoised: bool,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        crate::python::guard(move || {
            let o = float_tensor(model_output, "model_output")?;
            let (x, t, n) = (float_like(x, "x", &o)?, timesteps(t)?, float_like(noise, "noise", &o)?);
            let (s, p) = py.detach(|| self.inner.p_sample(&o, &x, &t, &n, clip_denoised)).py()?;
            Ok((to_numpy(py, &s)?, to_numpy(py, &p)?))
        })
    }

    /// One DDIM step with the given noise and `eta`: (x_{t−1}, pred_xstart).
    #[pyo3(signature = (model_output, x, t, noise, eta = 0.0, clip_denoised = true))]
    #[allow(clippy::too_many_arguments)] // the Python keyword arguments, one by one
    fn ddim_sample<'py>(
        &self,
        py: Python<'py>,
        model_output: &Bound<'py, PyAny>,
        x: &Bound<'py, PyAny>,
        t: &Bound<'py, PyAny>,
        noise: &Bound<'py, PyAny>,
        eta: f64,
        clip_denoised: bool,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        crate::python::guard(move || {
            let o = float_tensor(model_output, "model_output")?;
            let (x, t, n) = (float_like(x, "x", &o)?, timesteps(t)?, float_like(noise, "noise", &o)?);
            let (s, p) = py
                .detach(|| self.inner.ddim_sample(&o, &x, &t, &n, eta, clip_denoised))
                .py()?;
            Ok((to_numpy(py, &s)?, to_numpy(py, &p)?))
        })
    }

    /// Generates latents with `model`, running every step in Rust. See `latte_rs.sample` for the arguments.
    #[pyo3(signature = (
        model, num_samples = 1, noise = None, y = None, cfg_scale = 1.0, sampler = "ddpm", eta = 0.0, seed = 0,
        clip_denoised = false, callback = None,
    ))]
    #[allow(clippy::too_many_arguments)] // the official sampler's keywords, one by one
    fn sample<'py>(
        &self,
        py: Python<'py>,
        model: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = crate::python::convert::usize_arg)] num_samples: usize,
        noise: Option<&Bound<'py, PyAny>>,
        y: Option<&Bound<'py, PyAny>>,
        cfg_scale: f64,
        sampler: &str,
        eta: f64,
        #[pyo3(from_py_with = crate::python::convert::u64_arg)] seed: u64,
        clip_denoised: bool,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let kind = SamplerKind::parse(sampler).py()?;
            let scheduler = Box::new(DiffusionSampler::new(self.inner.clone(), kind, clip_denoised));
            let inputs = SampleInputs {
                noise: noise.map(|n| float_tensor(n, "noise")).transpose()?,
                num_samples,
                latent_shape: None,
                cond: condition(y, None, None, None)?,
                opts: SamplingOptions {
                    guidance_scale: cfg_scale,
                    eta,
                    ..SamplingOptions::default()
                },
                seed,
                num_frames: None,
                long_video: LongVideo::default(),
            };
            run(py, denoiser(model)?, scheduler, inputs, callback, None)
        })
    }

    fn __repr__(&self) -> String {
        let g = &self.inner;
        format!(
            "GaussianDiffusion(steps={} of {}, prediction_type={:?}, variance_type={:?}, loss_type={:?})",
            g.num_timesteps(),
            g.original_num_steps,
            g.mean_type.prediction_type(),
            g.var_type.name(),
            g.loss_type.name()
        )
    }
}

/// The scheduler argument: the native core of a latte-rs scheduler (copied, so the caller's keeps its state), or
/// a `GaussianDiffusion` sampled as the official code (`sampler` "ddpm" or "ddim").
fn scheduler_arg(obj: &Bound<'_, PyAny>, sampler: &str, clip_denoised: bool) -> PyResult<Box<dyn Scheduler>> {
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

/// Generates latents with any model and any scheduler, every step in Rust (see `latte_rs.sample` and the
/// pipelines). Without `noise`, the starting noise of `num_samples` clips at the model's size (or `latent_shape`)
/// is drawn from `seed`; every step's noise comes from the same generator.
#[pyfunction]
#[pyo3(signature = (
    model, scheduler, *, noise = None, num_samples = 1, latent_shape = None, y = None, y_image = None,
    encoder_hidden_states = None, negative_encoder_hidden_states = None, encoder_attention_mask = None,
    negative_encoder_attention_mask = None, guidance_scale = 1.0, eta = 0.0, num_inference_steps = None,
    sampler = "ddpm", clip_denoised = false, seed = 0, num_frames = None, long_video = None, window_stride = None,
    lookahead_denoising = None, callback = None, cache = None,
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
    #[pyo3(from_py_with = crate::python::convert::opt_usize_arg)] num_frames: Option<usize>,
    long_video: Option<&str>,
    #[pyo3(from_py_with = crate::python::convert::opt_usize_arg)] window_stride: Option<usize>,
    lookahead_denoising: Option<bool>,
    callback: Option<Py<PyAny>>,
    cache: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    crate::python::guard(move || {
        let long_video = LongVideo::from_names(long_video, window_stride, lookahead_denoising).py()?;
        let cache = cache_arg(cache)?;
        let model = denoiser(model)?;
        let scheduler = scheduler_arg(scheduler, sampler, clip_denoised)?;
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
                cache: None,
            },
            seed,
            num_frames,
            long_video,
        };
        run(py, model, scheduler, inputs, callback, cache)
    })
}
