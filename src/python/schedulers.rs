//! The native generator and scheduler classes; `latte_rs.schedulers` wraps the scheduler in diffusers' API.

use std::sync::{Mutex, PoisonError};

use candle_core::{DType, Device, Tensor};
use numpy::PyArray1;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::convert::{float_tensor, to_numpy, to_tensor};
use super::IntoPy;
use crate::diffusion::schedulers::{by_kind, Churn, Noise, NoiseSource, Scheduler, SchedulerConfig, StepOptions};
use crate::error::{LatteError, Result};
use crate::rng::Generator;

/// A seeded random generator (ChaCha8): the same seed gives the same numbers on every platform.
///
/// >>> g = Generator(0)
/// >>> g.randn((2, 3)).shape
/// (2, 3)
#[pyclass(name = "Generator", module = "latte_rs")]
pub struct PyGenerator {
    pub(crate) inner: Mutex<Generator>,
    seed: u64,
}

impl PyGenerator {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Generator> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[pymethods]
impl PyGenerator {
    #[new]
    #[pyo3(signature = (seed = 0))]
    fn new(#[pyo3(from_py_with = crate::python::convert::u64_arg)] seed: u64) -> Self {
        Self {
            inner: Mutex::new(Generator::new(seed)),
            seed,
        }
    }

    /// Restarts the stream from `seed` (torch's name); returns the generator.
    fn manual_seed(
        mut slf: PyRefMut<'_, Self>,
        #[pyo3(from_py_with = crate::python::convert::u64_arg)] seed: u64,
    ) -> PyRefMut<'_, Self> {
        slf.inner = Mutex::new(Generator::new(seed));
        slf.seed = seed;
        slf
    }

    #[getter]
    fn initial_seed(&self) -> u64 {
        self.seed
    }

    /// Standard normal float32 draws of the given shape.
    fn randn<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = crate::python::convert::shape_arg)] shape: Vec<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            // Drawn as f64, cast to f32, copied into NumPy: 16 bytes per value at the peak. (The generator checks
            // its part too, but its error type is candle's: this makes the refusal a MemoryError.)
            crate::limits::ensure_tensor_fits("shape", &shape, 16).py()?;
            let t = self.lock().randn(&shape, DType::F32, &Device::Cpu).py()?;
            to_numpy(py, &t)
        })
    }
}

/// Any Python object with a `randn(shape)` method (e.g. a recorded stream in a test) as a noise source.
struct PyNoise<'a, 'py>(&'a Bound<'py, PyAny>);

impl NoiseSource for PyNoise<'_, '_> {
    fn randn(&mut self, dims: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let drawn = self
            .0
            .call_method1("randn", (dims.to_vec(),))
            .and_then(|z| float_tensor(&z, "generator.randn(...)"))
            .map_err(|e| LatteError::Value(format!("generator: {e}")))?;
        Ok(drawn.to_dtype(dtype)?.to_device(device)?)
    }
}

/// The noise of a step from diffusers' `generator` / `variance_noise` arguments.
fn run_step<R>(
    generator: Option<&Bound<'_, PyAny>>,
    variance_noise: Option<&Tensor>,
    body: impl FnOnce(Noise) -> Result<R>,
) -> PyResult<R> {
    if let Some(z) = variance_noise {
        if generator.is_some() {
            return Err(PyValueError::new_err(
                "step: pass either generator or variance_noise, not both",
            ));
        }
        return body(Noise::Given(z)).py();
    }
    match generator {
        None => body(Noise::None).py(),
        Some(g) => match g.extract::<PyRef<PyGenerator>>() {
            Ok(native) => body(Noise::Source(&mut *native.lock())).py(),
            Err(_) if g.hasattr("randn")? => body(Noise::Source(&mut PyNoise(g))).py(),
            Err(_) => Err(PyTypeError::new_err(format!(
                "generator: expected a latte_rs.Generator (or an object with randn(shape)), got {}",
                g.get_type()
            ))),
        },
    }
}

/// The Rust core of every diffusers-style scheduler (use `latte_rs.DDPMScheduler`, `DDIMScheduler`,
/// `EulerDiscreteScheduler`, `DPMSolverMultistepScheduler`).
#[pyclass(name = "Scheduler", module = "latte_rs._native")]
pub struct PyScheduler {
    pub(crate) inner: Box<dyn Scheduler>,
}

impl PyScheduler {
    fn config(&self) -> PyResult<&SchedulerConfig> {
        self.inner
            .config()
            .ok_or_else(|| PyValueError::new_err("this scheduler has no diffusers config"))
    }
}

#[pymethods]
impl PyScheduler {
    /// `kind`: "ddpm", "ddim", "euler" or "dpmsolver"; `config_json`: diffusers' config keys.
    #[new]
    fn new(kind: &str, config_json: &str) -> PyResult<Self> {
        crate::python::guard(move || {
            let config: SchedulerConfig = crate::error::parse_json_object(config_json.as_bytes())
                .map_err(|e| PyValueError::new_err(format!("scheduler config: {e}")))?;
            Ok(Self {
                inner: by_kind(kind, config).py()?,
            })
        })
    }

    /// The full config (with keys this crate does not use) as JSON.
    fn config_json(&self) -> PyResult<String> {
        crate::python::guard(move || {
            serde_json::to_string(self.config()?).map_err(|e| PyValueError::new_err(e.to_string()))
        })
    }

    fn set_timesteps(
        &mut self,
        #[pyo3(from_py_with = crate::python::convert::usize_arg)] num_inference_steps: usize,
    ) -> PyResult<()> {
        crate::python::guard(move || self.inner.set_timesteps(num_inference_steps).py())
    }

    /// The schedule's timesteps (int64, or float32 for Euler, as diffusers).
    #[getter]
    fn timesteps<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        let t = self.inner.timesteps();
        if self.inner.name() == "EulerDiscreteScheduler" {
            PyArray1::from_vec(py, t.iter().map(|&v| v as f32).collect()).into_any()
        } else {
            PyArray1::from_vec(py, t.iter().map(|&v| v as i64).collect()).into_any()
        }
    }

    #[getter]
    fn num_inference_steps(&self) -> Option<usize> {
        self.inner.num_inference_steps()
    }

    #[getter]
    fn alphas_cumprod<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f32>>> {
        self.inner.alphas_cumprod().map(|a| PyArray1::from_slice(py, a))
    }

    #[getter]
    fn sigmas<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f32>>> {
        self.inner.sigmas().map(|s| PyArray1::from_slice(py, s))
    }

    #[getter]
    fn init_noise_sigma(&self) -> f64 {
        self.inner.init_noise_sigma()
    }

    fn scale_model_input<'py>(
        &mut self,
        py: Python<'py>,
        sample: &Bound<'py, PyAny>,
        timestep: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let sample = float_tensor(sample, "sample")?;
            let out = self.inner.scale_model_input(&sample, timestep).py()?;
            to_numpy(py, &out)
        })
    }

    /// One step: (prev_sample, pred_original_sample). Stochastic steps take their noise from `variance_noise`,
    /// else from `generator` (a `Generator`, or any object with `randn(shape)`).
    #[pyo3(signature = (
        model_output, timestep, sample, *, eta = 0.0, use_clipped_model_output = false, s_churn = 0.0,
        s_tmin = 0.0, s_tmax = f64::INFINITY, s_noise = 1.0, generator = None, variance_noise = None,
    ))]
    #[allow(clippy::too_many_arguments)] // diffusers' step keywords, one by one
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        model_output: &Bound<'py, PyAny>,
        timestep: f64,
        sample: &Bound<'py, PyAny>,
        eta: f64,
        use_clipped_model_output: bool,
        s_churn: f64,
        s_tmin: f64,
        s_tmax: f64,
        s_noise: f64,
        generator: Option<&Bound<'py, PyAny>>,
        variance_noise: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        crate::python::guard(move || {
            let sample = float_tensor(sample, "sample")?;
            let out = float_tensor(model_output, "model_output")?
                .to_dtype(sample.dtype())
                .py()?;
            let variance_noise = variance_noise.map(|n| float_tensor(n, "variance_noise")).transpose()?;
            let churn = Churn {
                s_churn,
                s_tmin,
                s_tmax,
                s_noise,
            };
            let scheduler = &mut self.inner;
            let r = run_step(generator, variance_noise.as_ref(), |noise| {
                let mut opts = StepOptions {
                    eta,
                    use_clipped_model_output,
                    churn,
                    noise,
                };
                scheduler.step(&out, timestep, &sample, &mut opts)
            })?;
            Ok((to_numpy(py, &r.prev_sample)?, to_numpy(py, &r.pred_original_sample)?))
        })
    }

    /// q(x_t | x₀) at `timesteps`: one per sample, or one for the whole batch.
    fn add_noise<'py>(
        &self,
        py: Python<'py>,
        original_samples: &Bound<'py, PyAny>,
        noise: &Bound<'py, PyAny>,
        timesteps: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python::guard(move || {
            let x = float_tensor(original_samples, "original_samples")?;
            let n = float_tensor(noise, "noise")?;
            let t = to_tensor(timesteps, "timesteps")?
                .flatten_all()
                .and_then(|t| t.to_dtype(DType::F64)?.to_vec1::<f64>())
                .py()?;
            let out = py
                .detach(|| self.inner.add_noise(&x, &n.to_dtype(x.dtype())?, &t))
                .py()?;
            to_numpy(py, &out)
        })
    }

    fn __len__(&self) -> PyResult<usize> {
        crate::python::guard(move || Ok(self.config()?.num_train_timesteps))
    }
}
