//! DDIM (Song et al.): the non-Markovian sampler with stochasticity `eta`, as diffusers' `DDIMScheduler`.

use candle_core::Tensor;

use super::alphas::AlphaSchedule;
use super::{Scheduler, SchedulerConfig, StepOptions, StepOutput};
use crate::error::{value_error, LatteError, Result};

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

    /// One DDIM step; with `opts.eta` > 0 it takes noise from `opts.noise`. `eta` must lie in [0, 1], the range
    /// DDIM is defined for: above 1 the noise's variance exceeds 1 − ᾱ_prev and the direction to x_t takes the
    /// square root of a negative number (NaN), below 0 the noise's scale is negative.
    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor, opts: &mut StepOptions) -> Result<StepOutput> {
        if !(0.0..=1.0).contains(&opts.eta) {
            return Err(value_error(
                "eta",
                "a number in [0, 1] (0: deterministic DDIM, 1: as much noise as DDPM)",
                opts.eta,
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::schedulers::{Churn, EulerDiscreteScheduler, Noise};
    use candle_core::{DType, Device};

    /// Issue 30: any eta was taken; above 1 the step's direction is the square root of a negative number (NaN).
    #[test]
    fn eta_outside_zero_to_one_is_refused_by_name() {
        let mut ddim = DdimScheduler::new(SchedulerConfig::default()).unwrap();
        ddim.set_timesteps(10).unwrap();
        let t = ddim.timesteps()[0];
        let x = Tensor::ones((1, 2, 3), DType::F32, &Device::Cpu).unwrap();
        let z = Tensor::zeros((1, 2, 3), DType::F32, &Device::Cpu).unwrap();
        for eta in [1.5, -0.1, f64::NAN, f64::INFINITY] {
            let mut opts = StepOptions {
                eta,
                ..StepOptions::new(Noise::Given(&z))
            };
            let e = ddim.step(&x, t, &x, &mut opts).unwrap_err().to_string();
            assert!(e.starts_with("eta: expected a number in [0, 1]"), "{e}");
        }
        for eta in [0.0, 1.0] {
            let mut opts = StepOptions {
                eta,
                ..StepOptions::new(Noise::Given(&z))
            };
            let out = ddim.step(&x, t, &x, &mut opts).unwrap().prev_sample;
            assert!(crate::finite::all_finite(&out).unwrap());
        }
    }

    /// Euler's churn options: a NaN s_churn was read as the largest churn, a negative one divided by a zero σ̂.
    #[test]
    fn churn_options_that_give_a_wrong_step_are_refused_by_name() {
        let mut euler = EulerDiscreteScheduler::new(SchedulerConfig::default()).unwrap();
        euler.set_timesteps(10).unwrap();
        let t = euler.timesteps()[0];
        let x = Tensor::ones((1, 2, 3), DType::F32, &Device::Cpu).unwrap();
        let z = Tensor::zeros((1, 2, 3), DType::F32, &Device::Cpu).unwrap();
        let inf = f64::INFINITY;
        // (the option named, s_churn, s_noise, s_tmin, s_tmax)
        let bad = [
            ("s_churn", f64::NAN, 1.0, 0.0, inf),
            ("s_churn", -50.0, 1.0, 0.0, inf),
            ("s_noise", 1.0, inf, 0.0, inf),
            ("s_tmin", 1.0, 1.0, f64::NAN, inf),
            ("s_tmax", 1.0, 1.0, 0.0, f64::NAN),
        ];
        for (name, s_churn, s_noise, s_tmin, s_tmax) in bad {
            let mut opts = StepOptions {
                churn: Churn {
                    s_churn,
                    s_tmin,
                    s_tmax,
                    s_noise,
                },
                ..StepOptions::new(Noise::Given(&z))
            };
            let e = euler.step(&x, t, &x, &mut opts).unwrap_err().to_string();
            assert!(e.starts_with(name), "{name}: {e}");
        }
        let wide_range = Churn {
            s_churn: 3.0,
            s_tmin: -inf,
            ..Churn::default()
        };
        assert!(wide_range.validate().is_ok());
    }
}
