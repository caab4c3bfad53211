//! Schedulers with diffusers' semantics behind one trait, [`Scheduler`]: DDPM ([`ddpm`]), DDIM ([`ddim`]), Euler
//! ([`euler`]), DPM-Solver(++) multistep ([`dpm_solver`]), and the respaced Gaussian diffusion of the official
//! sampler ([`crate::diffusion::DiffusionSampler`]). The same config keys (`scheduler_config.json`), the same
//! `set_timesteps` spacings, the same step arithmetic in f32, so diffusers code swaps them in unchanged.
//!
//! Every step has one signature: the model output, the timestep, the sample and a [`StepOptions`] (eta, churn,
//! and where stochastic steps take their noise from). Each scheduler decides itself whether a step draws noise,
//! exactly when diffusers' does; draws come from a seeded [`NoiseSource`].
//!
//! The per-timestep tables are built as torch builds them (f32 `linspace`, a cumulative product accumulated in
//! f64 and stored in f32), which keeps full denoising loops within f32 rounding of diffusers'.

mod alphas;
pub mod config;
pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;
pub mod euler;
mod spacing;

use candle_core::{DType, Device, Tensor};

use crate::error::{value_error, Result};
use crate::rng::Generator;

pub use config::SchedulerConfig;
pub use ddim::DdimScheduler;
pub use ddpm::DdpmScheduler;
pub use dpm_solver::DpmSolverMultistepScheduler;
pub use euler::EulerDiscreteScheduler;

/// One step's result, with diffusers' field names.
#[derive(Clone, Debug)]
pub struct StepOutput {
    pub prev_sample: Tensor,
    /// The step's x₀ estimate (for DPM-Solver, the converted model output: x₀ for DPM-Solver++, ε otherwise).
    pub pred_original_sample: Tensor,
}

/// Where a stochastic step's standard normal noise comes from.
pub trait NoiseSource {
    fn randn(&mut self, dims: &[usize], dtype: DType, device: &Device) -> Result<Tensor>;
}

impl NoiseSource for Generator {
    fn randn(&mut self, dims: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Ok(Generator::randn(self, dims, dtype, device)?)
    }
}

/// The noise of a step: given (diffusers' `variance_noise`), drawn from a source (`generator`), or none (the
/// step must be deterministic).
pub enum Noise<'a> {
    None,
    Given(&'a Tensor),
    Source(&'a mut dyn NoiseSource),
}

impl Noise<'_> {
    /// The noise of a step that needs it, shaped like `like`.
    pub(crate) fn take(&mut self, like: &Tensor, why: &str) -> Result<Tensor> {
        match self {
            Noise::Given(z) => {
                if z.dims() != like.dims() {
                    return Err(value_error(
                        "noise",
                        format!("shape {:?}", like.dims()),
                        format!("shape {:?}", z.dims()),
                    ));
                }
                Ok(z.to_dtype(like.dtype())?.to_device(like.device())?)
            }
            Noise::Source(source) => source.randn(like.dims(), like.dtype(), like.device()),
            Noise::None => Err(crate::LatteError::Value(format!(
                "noise: required for {why} (pass a generator or noise)"
            ))),
        }
    }
}

/// Euler's "churn" (Karras et al.'s stochastic sampling): diffusers' `s_churn`, `s_tmin`, `s_tmax`, `s_noise`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Churn {
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Self {
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        }
    }
}

impl Churn {
    /// Refuses values that give a silent wrong step: a NaN `s_churn` would be read as the largest churn (the
    /// `min` with √2 − 1 drops it), a negative one shrinks σ̂ below σ (to zero or below: a division by zero), a
    /// non-finite `s_noise` scales the noise to NaN, and a NaN bound makes the range test always false.
    pub fn validate(&self) -> Result<()> {
        if !(self.s_churn.is_finite() && self.s_churn >= 0.0) {
            return Err(value_error("s_churn", "a finite number >= 0", self.s_churn));
        }
        if !self.s_noise.is_finite() {
            return Err(value_error("s_noise", "a finite number", self.s_noise));
        }
        for (name, v) in [("s_tmin", self.s_tmin), ("s_tmax", self.s_tmax)] {
            if v.is_nan() {
                return Err(value_error(name, "a number (infinity allowed)", v));
            }
        }
        Ok(())
    }
}

/// The options of one step, for every scheduler (each reads the ones it has, as diffusers' `step` keywords).
pub struct StepOptions<'a> {
    /// DDIM's stochasticity (0: deterministic); also the respaced DDIM sampler's.
    pub eta: f64,
    /// DDIM: recompute ε from the clipped x₀.
    pub use_clipped_model_output: bool,
    pub churn: Churn,
    pub noise: Noise<'a>,
}

impl<'a> StepOptions<'a> {
    /// Deterministic defaults with noise from `noise`.
    pub fn new(noise: Noise<'a>) -> Self {
        Self {
            eta: 0.0,
            use_clipped_model_output: false,
            churn: Churn::default(),
            noise,
        }
    }
}

/// A boxed copy of any scheduler (implemented for every `Clone` one).
pub trait CloneScheduler {
    fn clone_box(&self) -> Box<dyn Scheduler>;
}

impl<T: Scheduler + Clone + 'static> CloneScheduler for T {
    fn clone_box(&self) -> Box<dyn Scheduler> {
        Box::new(self.clone())
    }
}

/// What a sampling loop needs of any scheduler.
pub trait Scheduler: Send + Sync + CloneScheduler {
    /// Chooses `n` inference steps.
    fn set_timesteps(&mut self, n: usize) -> Result<()>;
    /// The schedule's timesteps as the model sees them, in order (fractional for Euler with Karras sigmas).
    fn timesteps(&self) -> Vec<f64>;
    fn init_noise_sigma(&self) -> f64;
    /// The model's input at timestep `t` (the sample scaled, for σ-parameterised schedulers).
    fn scale_model_input(&mut self, sample: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(sample.clone())
    }
    /// One reverse step from `sample` at timestep `t`.
    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor, opts: &mut StepOptions) -> Result<StepOutput>;
    /// q(x_t | x₀): `original` noised to `timesteps`, one per sample or one for the whole batch.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &[f64]) -> Result<Tensor>;
    /// Whether `step` reads the model's variance channels (a learned variance); otherwise a sampling loop hands it
    /// the prediction channels only, as diffusers' pipelines do.
    fn uses_variance(&self) -> bool {
        false
    }
    /// Whether `step` reads `eta` (DDIM); a sampling loop refuses `eta` for the others rather than ignore it.
    fn uses_eta(&self) -> bool {
        false
    }
    /// The scheduler's name, for messages.
    fn name(&self) -> &'static str;
    /// The diffusers config (None for the respaced Gaussian diffusion, which has none).
    fn config(&self) -> Option<&SchedulerConfig> {
        None
    }
    /// The number of inference steps, once `set_timesteps` has run.
    fn num_inference_steps(&self) -> Option<usize> {
        None
    }
    /// The ᾱ table of the schedulers parameterised by it (DDPM, DDIM).
    fn alphas_cumprod(&self) -> Option<&[f32]> {
        None
    }
    /// The noise levels of the schedulers parameterised by σ (Euler, DPM-Solver).
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }
}

impl Clone for Box<dyn Scheduler> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// The (n, 1, …, 1) shape per-sample coefficients take to broadcast over `original`, for `n` timesteps: one per
/// sample, or one for the whole batch (diffusers broadcasts a single timestep). Checks `noise` against `original`.
pub(crate) fn coefficient_shape(original: &Tensor, noise: &Tensor, n: usize) -> Result<Vec<usize>> {
    if noise.dims() != original.dims() {
        return Err(value_error(
            "noise",
            format!("shape {:?}", original.dims()),
            format!("shape {:?}", noise.dims()),
        ));
    }
    let b = original.dims().first().copied().unwrap_or(0);
    if n != b && n != 1 {
        return Err(value_error(
            "timesteps",
            format!("{b} values (one per sample) or one for the batch"),
            n,
        ));
    }
    let mut shape = vec![1usize; original.rank().max(1)];
    shape[0] = n;
    Ok(shape)
}

/// `a · original + b · noise` with per-timestep coefficients (f32, as diffusers computes them).
pub(crate) fn mix(original: &Tensor, noise: &Tensor, a: Vec<f32>, b: Vec<f32>) -> Result<Tensor> {
    let shape = coefficient_shape(original, noise, a.len())?;
    let dev = original.device();
    let a = Tensor::from_vec(a, shape.clone(), dev)?.to_dtype(original.dtype())?;
    let b = Tensor::from_vec(b, shape, dev)?.to_dtype(original.dtype())?;
    Ok((original.broadcast_mul(&a)? + noise.broadcast_mul(&b)?)?)
}

/// A timestep that must be an integer in [0, total), as the alpha-table schedulers index it.
pub(crate) fn integer_timestep(t: f64, total: usize) -> Result<usize> {
    if t.fract() != 0.0 || !(0.0..total as f64).contains(&t) {
        return Err(value_error("timestep", format!("an integer in [0, {total})"), t));
    }
    Ok(t as usize)
}

/// A diffusers-style scheduler by kind: "ddpm", "ddim", "euler" or "dpmsolver".
pub fn by_kind(kind: &str, config: SchedulerConfig) -> Result<Box<dyn Scheduler>> {
    Ok(match kind {
        "ddpm" => Box::new(DdpmScheduler::new(config)?),
        "ddim" => Box::new(DdimScheduler::new(config)?),
        "euler" => Box::new(EulerDiscreteScheduler::new(config)?),
        "dpmsolver" => Box::new(DpmSolverMultistepScheduler::new(config)?),
        other => {
            return Err(value_error(
                "kind",
                "\"ddpm\", \"ddim\", \"euler\" or \"dpmsolver\"",
                format!("{other:?}"),
            ))
        }
    })
}
