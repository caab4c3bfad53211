//! The native scheduler and generator classes; `latte_rs.schedulers` wraps them in diffusers' API.

use std::sync::Mutex;

use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::convert::{to_numpy, to_tensor};
use super::IntoPy;
use crate::diffusion::{DpmSolverScheduler, EulerScheduler, NoiseScheduler, Scheduler, SchedulerConfig, SchedulerKind};
use crate::rng::Generator;

/// A seeded random generator (ChaCha8): the same seed gives the same numbers on every platform.
///
/// >>> g = Generator(0)
/// >>> g.randn((2, 3)).shape
/// (2, 3)
#[pyclass(name = "Generator", module = "latte_rs")]
pub struct PyGenerator {
    inner: Mutex<Generator>,
    seed: u64,
}

#[pymethods]
impl PyGenerator {
    #[new]
    #[pyo3(signature = (seed = 0))]
    fn new(seed: u64) -> Self {
        Self {
            inner: Mutex::new(Generator::new(seed)),
            seed,
        }
    }

    /// Restarts the stream from `seed` (torch's name); returns the generator.
    fn manual_seed(mut slf: PyRefMut<'_, Self>, seed: u64) -> PyRefMut<'_, Self> {
        slf.inner = Mutex::new(Generator::new(seed));
        slf.seed = seed;
        slf
    }

    #[getter]
    fn initial_seed(&self) -> u64 {
        self.seed
    }

    /// Standard normal float32 draws of the given shape.
    fn randn<'py>(&self, py: Python<'py>, shape: Vec<usize>) -> PyResult<Bound<'py, PyAny>> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = {
            let mut g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            g.normal(n, 0.0, 1.0).into_iter().map(|v| v as f32).collect()
        };
        Ok(PyArray1::from_vec(py, values).reshape(shape)?.into_any())
    }
}

/// A diffusers scheduler config from the JSON the Python wrappers pass.
fn parse_config(config_json: &str) -> PyResult<SchedulerConfig> {
    serde_json::from_str(config_json).map_err(|e| PyValueError::new_err(format!("scheduler config: {e}")))
}

fn config_to_json(config: &SchedulerConfig) -> PyResult<String> {
    serde_json::to_string(config).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A DDPM or DDIM scheduler core (use `latte_rs.DDPMScheduler` / `latte_rs.DDIMScheduler`).
#[pyclass(name = "Scheduler", module = "latte_rs._native")]
pub struct PyScheduler {
    pub(crate) inner: Scheduler,
}

#[pymethods]
impl PyScheduler {
    #[new]
    fn new(kind: &str, config_json: &str) -> PyResult<Self> {
        let kind = match kind {
            "ddpm" => SchedulerKind::Ddpm,
            "ddim" => SchedulerKind::Ddim,
            other => {
                return Err(PyValueError::new_err(format!(
                    "kind: expected \"ddpm\" or \"ddim\", got {other:?}"
                )))
            }
        };
        Ok(Self {
            inner: Scheduler::new(kind, parse_config(config_json)?).py()?,
        })
    }

    /// The full config (with keys this crate does not use) as JSON.
    fn config_json(&self) -> PyResult<String> {
        config_to_json(&self.inner.config)
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> PyResult<()> {
        self.inner.set_timesteps(num_inference_steps).py()
    }

    #[getter]
    fn timesteps<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_vec(py, self.inner.timesteps().to_vec())
    }

    #[getter]
    fn num_inference_steps(&self) -> Option<usize> {
        self.inner.num_inference_steps()
    }

    #[getter]
    fn alphas_cumprod<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        PyArray1::from_vec(py, self.inner.alphas_cumprod().to_vec())
    }

    #[getter]
    fn init_noise_sigma(&self) -> f64 {
        self.inner.init_noise_sigma()
    }

    /// Whether `step` at `timestep` with `eta` draws noise.
    fn needs_noise(&self, timestep: i64, eta: f64) -> bool {
        match self.inner.kind {
            SchedulerKind::Ddpm => timestep > 0,
            SchedulerKind::Ddim => eta > 0.0,
        }
    }

    /// One step: (prev_sample, pred_original_sample).
    #[pyo3(signature = (model_output, timestep, sample, noise = None, eta = 0.0, use_clipped_model_output = false))]
    #[allow(clippy::too_many_arguments)]
    fn step<'py>(
        &self,
        py: Python<'py>,
        model_output: &Bound<'py, PyAny>,
        timestep: i64,
        sample: &Bound<'py, PyAny>,
        noise: Option<&Bound<'py, PyAny>>,
        eta: f64,
        use_clipped_model_output: bool,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let out = to_tensor(model_output, "model_output")?;
        let sample = to_tensor(sample, "sample")?;
        let noise = noise.map(|n| to_tensor(n, "noise")).transpose()?;
        let r = py
            .detach(|| {
                self.inner
                    .step(&out, timestep, &sample, noise.as_ref(), eta, use_clipped_model_output)
            })
            .py()?;
        Ok((to_numpy(py, &r.prev_sample)?, to_numpy(py, &r.pred_original_sample)?))
    }

    fn add_noise<'py>(
        &self,
        py: Python<'py>,
        original_samples: &Bound<'py, PyAny>,
        noise: &Bound<'py, PyAny>,
        timesteps: Vec<i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let x = to_tensor(original_samples, "original_samples")?;
        let n = to_tensor(noise, "noise")?;
        let out = py.detach(|| self.inner.add_noise(&x, &n, &timesteps)).py()?;
        to_numpy(py, &out)
    }
}

/// The Rust core of `latte_rs.EulerDiscreteScheduler`.
#[pyclass(name = "EulerScheduler", module = "latte_rs._native")]
pub struct PyEulerScheduler {
    pub(crate) inner: EulerScheduler,
}

#[pymethods]
impl PyEulerScheduler {
    #[new]
    fn new(config_json: &str) -> PyResult<Self> {
        Ok(Self {
            inner: EulerScheduler::new(parse_config(config_json)?).py()?,
        })
    }

    fn config_json(&self) -> PyResult<String> {
        config_to_json(&self.inner.config)
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> PyResult<()> {
        self.inner.set_timesteps(num_inference_steps).py()
    }

    #[getter]
    fn timesteps<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        PyArray1::from_vec(py, self.inner.timesteps().to_vec())
    }

    #[getter]
    fn sigmas<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        PyArray1::from_vec(py, self.inner.sigmas().to_vec())
    }

    #[getter]
    fn num_inference_steps(&self) -> Option<usize> {
        self.inner.num_inference_steps()
    }

    #[getter]
    fn init_noise_sigma(&self) -> f64 {
        self.inner.init_noise_sigma()
    }

    fn scale_model_input<'py>(
        &mut self,
        py: Python<'py>,
        sample: &Bound<'py, PyAny>,
        timestep: f32,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sample = to_tensor(sample, "sample")?;
        let out = self.inner.scale_model_input(&sample, timestep).py()?;
        to_numpy(py, &out)
    }

    #[pyo3(signature = (model_output, timestep, sample, s_churn, s_tmin, s_tmax, s_noise, noise = None))]
    #[allow(clippy::too_many_arguments)]
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        model_output: &Bound<'py, PyAny>,
        timestep: f32,
        sample: &Bound<'py, PyAny>,
        s_churn: f64,
        s_tmin: f64,
        s_tmax: f64,
        s_noise: f64,
        noise: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let out = to_tensor(model_output, "model_output")?;
        let sample = to_tensor(sample, "sample")?;
        let noise = noise.map(|n| to_tensor(n, "noise")).transpose()?;
        let r = self
            .inner
            .step(
                &out,
                timestep,
                &sample,
                s_churn,
                s_tmin,
                s_tmax,
                s_noise,
                noise.as_ref(),
            )
            .py()?;
        Ok((to_numpy(py, &r.prev_sample)?, to_numpy(py, &r.pred_original_sample)?))
    }

    fn add_noise<'py>(
        &self,
        py: Python<'py>,
        original_samples: &Bound<'py, PyAny>,
        noise: &Bound<'py, PyAny>,
        timesteps: Vec<f32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let x = to_tensor(original_samples, "original_samples")?;
        let n = to_tensor(noise, "noise")?;
        let out = self.inner.add_noise(&x, &n, &timesteps).py()?;
        to_numpy(py, &out)
    }
}

/// The Rust core of `latte_rs.DPMSolverMultistepScheduler`.
#[pyclass(name = "DpmSolverScheduler", module = "latte_rs._native")]
pub struct PyDpmSolverScheduler {
    pub(crate) inner: DpmSolverScheduler,
}

#[pymethods]
impl PyDpmSolverScheduler {
    #[new]
    fn new(config_json: &str) -> PyResult<Self> {
        Ok(Self {
            inner: DpmSolverScheduler::new(parse_config(config_json)?).py()?,
        })
    }

    fn config_json(&self) -> PyResult<String> {
        config_to_json(&self.inner.config)
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> PyResult<()> {
        self.inner.set_timesteps(num_inference_steps).py()
    }

    #[getter]
    fn timesteps<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_vec(py, self.inner.timesteps().to_vec())
    }

    #[getter]
    fn sigmas<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        PyArray1::from_vec(py, self.inner.sigmas().to_vec())
    }

    #[getter]
    fn num_inference_steps(&self) -> Option<usize> {
        self.inner.num_inference_steps()
    }

    #[getter]
    fn init_noise_sigma(&self) -> f64 {
        NoiseScheduler::init_noise_sigma(&self.inner)
    }

    fn step<'py>(
        &mut self,
        py: Python<'py>,
        model_output: &Bound<'py, PyAny>,
        timestep: i64,
        sample: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let out = to_tensor(model_output, "model_output")?;
        let sample = to_tensor(sample, "sample")?;
        let r = self.inner.step(&out, timestep, &sample).py()?;
        Ok((to_numpy(py, &r.prev_sample)?, to_numpy(py, &r.pred_original_sample)?))
    }
}
