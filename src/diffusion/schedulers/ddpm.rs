//! DDPM (Ho et al.): ancestral sampling from p(x_{t−1} | x_t), as diffusers' `DDPMScheduler`, with every variance
//! type (fixed small/large, their logs, learned, learned range).

use candle_core::Tensor;

use super::alphas::AlphaSchedule;
use super::{Scheduler, SchedulerConfig, StepOptions, StepOutput};
use crate::error::{value_error, LatteError, Result};

/// diffusers' `DDPMScheduler`.
#[derive(Clone, Debug)]
pub struct DdpmScheduler {
    pub schedule: AlphaSchedule,
}

impl DdpmScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        Ok(Self {
            schedule: AlphaSchedule::new(config)?,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.schedule.config
    }

    /// The timestep after `t` in the schedule (−1 after the last), as diffusers' `previous_timestep`.
    fn previous_timestep(&self, t: i64) -> Result<i64> {
        let s = &self.schedule;
        if s.num_inference_steps.is_none() {
            return Ok(t - 1);
        }
        let i = s
            .timesteps
            .iter()
            .position(|&x| x == t)
            .ok_or_else(|| value_error("timestep", "one of the scheduler's timesteps (see .timesteps)", t))?;
        Ok(s.timesteps.get(i + 1).copied().unwrap_or(-1))
    }
}

impl Scheduler for DdpmScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.schedule.set_timesteps(n)
    }

    fn timesteps(&self) -> Vec<f64> {
        self.schedule.timesteps.iter().map(|&t| t as f64).collect()
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// One ancestral step; a step at t > 0 takes noise from `opts.noise`.
    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor, opts: &mut StepOptions) -> Result<StepOutput> {
        let s = &self.schedule;
        let t = s.check_timestep(t)?;
        let prev = self.previous_timestep(t as i64)?;
        let (out, predicted_variance) = s.split_learned(model_output, sample)?;
        let a = s.alphas_cumprod[t];
        let a_prev = if prev >= 0 {
            s.alphas_cumprod[prev as usize]
        } else {
            1.0
        };
        let (x0, _) = s.predictions(&out, sample, a)?;
        let x0 = s.clip(x0)?;
        let (b, b_prev) = (1.0 - a, 1.0 - a_prev);
        let current_alpha = a / a_prev;
        let current_beta = 1.0 - current_alpha;
        let x0_coeff = (a_prev.sqrt() * current_beta / b) as f64;
        let sample_coeff = (current_alpha.sqrt() * b_prev / b) as f64;
        let mean = ((&x0 * x0_coeff)? + (sample * sample_coeff)?)?;
        if t == 0 {
            return Ok(StepOutput {
                prev_sample: mean,
                pred_original_sample: x0,
            });
        }
        let variance = (b_prev / b * current_beta).max(1e-20);
        let variance_type = s.config.variance_type.as_str();
        if variance_type == "fixed_large_log" {
            // diffusers takes the square root of log β here, which is NaN; refuse instead.
            return Err(LatteError::Value(
                "variance_type: \"fixed_large_log\" cannot sample (diffusers gives NaN); use \"fixed_large\"".into(),
            ));
        }
        if s.is_learned() && predicted_variance.is_none() {
            return Err(LatteError::Value(format!(
                "model_output: variance_type {variance_type:?} needs twice the sample's channels"
            )));
        }
        let z = opts.noise.take(&x0, "DDPM steps with t > 0")?;
        let scaled = match (variance_type, predicted_variance) {
            ("fixed_small_log", _) => (z * (0.5 * variance.ln()).exp() as f64)?,
            ("fixed_large", _) => (z * current_beta.sqrt() as f64)?,
            ("learned", Some(v)) => z.mul(&v.sqrt()?)?,
            ("learned_range", Some(v)) => {
                let (min_log, max_log) = (variance.ln() as f64, current_beta.ln() as f64);
                let frac = ((v + 1.0)? / 2.0)?;
                let log_var = ((&frac * max_log)? + ((1.0 - &frac)? * min_log)?)?;
                z.mul(&(log_var * 0.5)?.exp()?)?
            }
            _ => (z * variance.sqrt() as f64)?,
        };
        Ok(StepOutput {
            prev_sample: (mean + scaled)?,
            pred_original_sample: x0,
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &[f64]) -> Result<Tensor> {
        self.schedule.add_noise(original, noise, timesteps)
    }

    fn uses_variance(&self) -> bool {
        self.schedule.is_learned()
    }

    fn name(&self) -> &'static str {
        "DDPMScheduler"
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
