//! What DDPM and DDIM share: the ᾱ table, the inference timesteps with diffusers' spacings, the x₀ and ε
//! predictions from any parameterisation, clipping, and `add_noise`.

use candle_core::Tensor;

use super::config::check_num_inference_steps;
use super::spacing::{alphas_cumprod, trailing_timesteps};
use super::{integer_timestep, mix, SchedulerConfig};
use crate::diffusion::respace::round_half_even;
use crate::diffusion::schedule::linspace;
use crate::error::{value_error, Result};

/// The ᾱ table and the chosen timesteps of a DDPM or DDIM scheduler.
#[derive(Clone, Debug)]
pub struct AlphaSchedule {
    pub config: SchedulerConfig,
    pub alphas_cumprod: Vec<f32>,
    /// Descending; every training timestep until `set_timesteps` is called.
    pub timesteps: Vec<i64>,
    pub num_inference_steps: Option<usize>,
}

impl AlphaSchedule {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        config.validate()?;
        let alphas_cumprod = alphas_cumprod(&config);
        let timesteps = (0..config.num_train_timesteps as i64).rev().collect();
        Ok(Self {
            config,
            alphas_cumprod,
            timesteps,
            num_inference_steps: None,
        })
    }

    /// Chooses `n` of the training timesteps with the configured spacing ("leading" adds `steps_offset`).
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let total = self.config.num_train_timesteps;
        check_num_inference_steps(n, total)?;
        let timesteps: Vec<i64> = match self.config.timestep_spacing.as_str() {
            "linspace" => {
                let pts = linspace(0.0, (total - 1) as f64, n);
                pts.iter().rev().map(|v| round_half_even(*v)).collect()
            }
            "trailing" => trailing_timesteps(total, n),
            _ => {
                let ratio = (total / n) as i64;
                (0..n as i64)
                    .rev()
                    .map(|i| i * ratio + self.config.steps_offset as i64)
                    .collect()
            }
        };
        if let Some(bad) = timesteps.iter().find(|&&t| t < 0 || t as usize >= total) {
            return Err(value_error(
                "steps_offset",
                format!("timesteps inside [0, {total}) after the offset"),
                format!("timestep {bad}"),
            ));
        }
        self.timesteps = timesteps;
        self.num_inference_steps = Some(n);
        Ok(())
    }

    pub fn check_timestep(&self, t: f64) -> Result<usize> {
        if !(0.0..self.config.num_train_timesteps as f64).contains(&t) {
            return Err(value_error(
                "timestep",
                format!("a value in [0, {})", self.config.num_train_timesteps),
                t,
            ));
        }
        integer_timestep(t, self.config.num_train_timesteps)
    }

    pub fn is_learned(&self) -> bool {
        matches!(self.config.variance_type.as_str(), "learned" | "learned_range")
    }

    /// The model output's prediction and, for a learned variance, its variance values: a learned variance
    /// doubles the sample's channel axis, diffusers' axis 1 (B, C, …) or latte-rs's axis 2 (B, F, C, H, W).
    pub fn split_learned(&self, model_output: &Tensor, sample: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let (o, s) = (model_output.dims(), sample.dims());
        for axis in [1usize, 2] {
            if self.is_learned() && o.len() == s.len() && o.len() > axis && o[axis] == 2 * s[axis] {
                let c = s[axis];
                return Ok((model_output.narrow(axis, 0, c)?, Some(model_output.narrow(axis, c, c)?)));
            }
        }
        if o != s {
            return Err(value_error(
                "model_output",
                format!("the sample's shape {s:?}"),
                format!("shape {o:?}"),
            ));
        }
        Ok((model_output.clone(), None))
    }

    /// x₀ and ε from the model output at ᾱ = `a`, as f32 scalars applied to tensors.
    pub fn predictions(&self, out: &Tensor, sample: &Tensor, a: f32) -> Result<(Tensor, Tensor)> {
        let b = 1.0 - a;
        let (sa, sb) = (a.sqrt() as f64, b.sqrt() as f64);
        let (x0, eps) = match self.config.prediction_type.as_str() {
            "epsilon" => (((sample - (out * sb)?)? / sa)?, out.clone()),
            "sample" => (out.clone(), ((sample - (out * sa)?)? / sb)?),
            _ => (((sample * sa)? - (out * sb)?)?, ((out * sa)? + (sample * sb)?)?),
        };
        Ok((x0, eps))
    }

    pub fn clip(&self, x0: Tensor) -> Result<Tensor> {
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            Ok(x0.clamp(-r, r)?)
        } else {
            Ok(x0)
        }
    }

    /// q(x_t | x₀): √ᾱ x₀ + √(1−ᾱ) noise, one timestep per sample or one for the batch.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &[f64]) -> Result<Tensor> {
        let mut a = Vec::with_capacity(timesteps.len());
        let mut b = Vec::with_capacity(timesteps.len());
        for &t in timesteps {
            let ab = self.alphas_cumprod[self.check_timestep(t)?];
            a.push(ab.sqrt());
            b.push((1.0 - ab).sqrt());
        }
        mix(original, noise, a, b)
    }
}
