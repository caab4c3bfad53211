//! DDIM (Song et al.): the non-Markovian sampler with stochasticity `eta`, as diffusers' `DDIMScheduler`.

use candle_core::Tensor;

use super::alphas::AlphaSchedule;
use super::{Scheduler, SchedulerConfig, StepOptions, StepOutput};
use crate::error::{LatteError, Result};

/// diffusers' `DDIMScheduler`.
#[derive(Clone, Debug)]
pub struct DdimScheduler {
    pub schedule: AlphaSchedule,
    /// ᾱ before the first step: 1 with `set_alpha_to_one`, else ᾱ₀.
    final_alpha_cumprod: f32,
}

impl DdimScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        let schedule = AlphaSchedule::new(config)?;
        let final_alpha_cumprod = if schedule.config.set_alpha_to_one {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(Self {
            schedule,
            final_alpha_cumprod,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.schedule.config
    }
}

impl Scheduler for DdimScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.schedule.set_timesteps(n)
    }

    fn timesteps(&self) -> Vec<f64> {
        self.schedule.timesteps.iter().map(|&t| t as f64).collect()
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// One DDIM step; with `opts.eta` > 0 it takes noise from `opts.noise`.
    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor, opts: &mut StepOptions) -> Result<StepOutput> {
        let s = &self.schedule;
        let t = s.check_timestep(t)?;
        let n = s.num_inference_steps.ok_or_else(|| {
            LatteError::Value("DDIMScheduler.step: call set_timesteps(num_inference_steps) first".into())
        })?;
        let prev = t as i64 - (s.config.num_train_timesteps / n) as i64;
        let (out, _) = s.split_learned(model_output, sample)?;
        let a = s.alphas_cumprod[t];
        let a_prev = if prev >= 0 {
            s.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha_cumprod
        };
        let (x0, eps) = s.predictions(&out, sample, a)?;
        let x0 = s.clip(x0)?;
        let b = 1.0 - a;
        let variance = (1.0 - a_prev) / b * (1.0 - a / a_prev);
        let std = opts.eta as f32 * variance.sqrt();
        let eps = if opts.use_clipped_model_output {
            ((sample - (&x0 * a.sqrt() as f64)?)? / b.sqrt() as f64)?
        } else {
            eps
        };
        let direction = (eps * ((1.0 - a_prev - std * std) as f64).sqrt())?;
        let mut prev_sample = ((&x0 * a_prev.sqrt() as f64)? + direction)?;
        if opts.eta > 0.0 {
            let z = opts.noise.take(&x0, "DDIM steps with eta > 0")?;
            prev_sample = (prev_sample + (z * std as f64)?)?;
        }
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &[f64]) -> Result<Tensor> {
        self.schedule.add_noise(original, noise, timesteps)
    }

    fn uses_eta(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "DDIMScheduler"
    }

    fn config(&self) -> Option<&SchedulerConfig> {
        Some(&self.schedule.config)
    }

    fn num_inference_steps(&self) -> Option<usize> {
        self.schedule.num_inference_steps
    }

    fn alphas_cumprod(&self) -> Option<&[f32]> {
        Some(&self.schedule.alphas_cumprod)
    }
}
