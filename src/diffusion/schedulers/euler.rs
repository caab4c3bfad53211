//! Euler sampling (Karras et al., Algorithm 2), as diffusers' `EulerDiscreteScheduler`: σ interpolated at the
//! chosen timesteps ("linear" or "log_linear", optionally Karras-spaced), inputs scaled by 1/√(σ²+1), optional
//! churn.

use candle_core::Tensor;
use serde::Deserialize;

use super::config::{check_num_inference_steps, extra_options, one_of};
use super::spacing::{alphas_cumprod, interp_on_index, karras_sigmas, linspace_f32, sigma_to_t, trailing_timesteps};
use super::{mix, Churn, Scheduler, SchedulerConfig, StepOptions, StepOutput};
use crate::error::{value_error, LatteError, Result};

/// Options only the Euler scheduler reads; they live in the config's extra keys (so DDPM/DDIM configs keep
/// exactly the keys they had).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
struct EulerOptions {
    interpolation_type: String,
    use_karras_sigmas: Option<bool>,
    use_exponential_sigmas: Option<bool>,
    use_beta_sigmas: Option<bool>,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    timestep_type: String,
    final_sigmas_type: String,
}

impl Default for EulerOptions {
    fn default() -> Self {
        Self {
            interpolation_type: "linear".into(),
            use_karras_sigmas: Some(false),
            use_exponential_sigmas: Some(false),
            use_beta_sigmas: Some(false),
            sigma_min: None,
            sigma_max: None,
            timestep_type: "discrete".into(),
            final_sigmas_type: "zero".into(),
        }
    }
}

/// The Euler (Karras et al. Algorithm 2) scheduler with diffusers' `EulerDiscreteScheduler` semantics: sigmas
/// interpolated at the chosen timesteps (optionally Karras-spaced), inputs scaled by 1/√(σ²+1).
#[derive(Clone, Debug)]
pub struct EulerDiscreteScheduler {
    pub config: SchedulerConfig,
    opts: EulerOptions,
    alphas_cumprod: Vec<f32>,
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    step_index: Option<usize>,
    num_inference_steps: Option<usize>,
}

impl EulerDiscreteScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        config.validate()?;
        let opts: EulerOptions = extra_options(&config)?;
        one_of(
            "interpolation_type",
            &opts.interpolation_type,
            &["linear", "log_linear"],
        )?;
        one_of("final_sigmas_type", &opts.final_sigmas_type, &["zero", "sigma_min"])?;
        one_of("timestep_type", &opts.timestep_type, &["discrete"])?;
        if opts.use_exponential_sigmas == Some(true) || opts.use_beta_sigmas == Some(true) {
            return Err(LatteError::Unsupported(
                "use_exponential_sigmas / use_beta_sigmas are not supported by latte-rs's Euler scheduler yet".into(),
            ));
        }
        let alphas_cumprod = alphas_cumprod(&config);
        let n = config.num_train_timesteps;
        let mut sigmas: Vec<f32> = alphas_cumprod.iter().rev().map(|a| ((1.0 - a) / a).sqrt()).collect();
        sigmas.push(0.0);
        let timesteps = linspace_f32(0.0, (n - 1) as f32, n).into_iter().rev().collect();
        Ok(Self {
            config,
            opts,
            alphas_cumprod,
            sigmas,
            timesteps,
            step_index: None,
            num_inference_steps: None,
        })
    }

    fn max_sigma_init(&self) -> f64 {
        let max = self.sigmas.iter().fold(0f32, |m, &s| m.max(s)) as f64;
        if self.config.timestep_spacing == "leading" {
            (max * max + 1.0).sqrt()
        } else {
            max
        }
    }

    fn choose_timesteps(&mut self, n: usize) -> Result<()> {
        let total = self.config.num_train_timesteps;
        check_num_inference_steps(n, total)?;
        let mut timesteps: Vec<f64> = match self.config.timestep_spacing.as_str() {
            "leading" => {
                let ratio = total / n;
                (0..n)
                    .rev()
                    .map(|i| ((i * ratio) as f32 + self.config.steps_offset as f32) as f64)
                    .collect()
            }
            "trailing" => trailing_timesteps(total, n).into_iter().map(|t| t as f64).collect(),
            _ => linspace_f32(0.0, (total - 1) as f32, n)
                .into_iter()
                .rev()
                .map(|v| v as f64)
                .collect(),
        };
        let base: Vec<f64> = self
            .alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt() as f64)
            .collect();
        let log_sigmas: Vec<f64> = base.iter().map(|s| s.ln()).collect();
        let mut sigmas: Vec<f64> = match self.opts.interpolation_type.as_str() {
            "log_linear" => linspace_f32(base[total - 1].ln() as f32, base[0].ln() as f32, n + 1)
                .into_iter()
                .map(|v| (v.exp()) as f64)
                .collect(),
            _ => timesteps.iter().map(|&t| interp_on_index(t, &base)).collect(),
        };
        if self.opts.use_karras_sigmas == Some(true) {
            let sigma_min = self.opts.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let sigma_max = self.opts.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(sigma_min, sigma_max, n);
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
        }
        let last = if self.opts.final_sigmas_type == "sigma_min" {
            base[0]
        } else {
            0.0
        };
        sigmas.push(last);
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        self.timesteps = timesteps.into_iter().map(|t| t as f32).collect();
        self.step_index = None;
        self.num_inference_steps = Some(n);
        Ok(())
    }

    /// The step index of `timestep` (the second match if it appears twice, as diffusers).
    fn index_for_timestep(&self, timestep: f32) -> Result<usize> {
        let hits: Vec<usize> = self
            .timesteps
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == timestep)
            .map(|(i, _)| i)
            .collect();
        match hits.len() {
            0 => Err(value_error(
                "timestep",
                "one of the scheduler's timesteps (see .timesteps)",
                timestep,
            )),
            1 => Ok(hits[0]),
            _ => Ok(hits[1]),
        }
    }

    fn current_index(&mut self, timestep: f32) -> Result<usize> {
        match self.step_index {
            Some(i) if i + 1 < self.sigmas.len() => Ok(i),
            Some(_) => Err(LatteError::Value(
                "step: the schedule is finished; call set_timesteps again".into(),
            )),
            None => {
                let i = self.index_for_timestep(timestep)?;
                self.step_index = Some(i);
                Ok(i)
            }
        }
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.choose_timesteps(n)
    }

    fn timesteps(&self) -> Vec<f64> {
        self.timesteps.iter().map(|&t| t as f64).collect()
    }

    fn init_noise_sigma(&self) -> f64 {
        self.max_sigma_init()
    }

    /// sample / √(σ² + 1) for the current step.
    fn scale_model_input(&mut self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        let i = self.current_index(timestep as f32)?;
        let sigma = self.sigmas[i];
        Ok((sample / ((sigma * sigma + 1.0).sqrt() as f64))?)
    }

    /// One Euler step; with churn at this σ (`opts.churn`), noise from `opts.noise`.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        opts: &mut StepOptions,
    ) -> Result<StepOutput> {
        if model_output.dims() != sample.dims() {
            return Err(value_error(
                "model_output",
                format!("the sample's shape {:?}", sample.dims()),
                format!("shape {:?}", model_output.dims()),
            ));
        }
        opts.churn.validate()?;
        let Churn {
            s_churn,
            s_tmin,
            s_tmax,
            s_noise,
        } = opts.churn;
        let i = self.current_index(timestep as f32)?;
        let sigma = self.sigmas[i];
        let steps = (self.sigmas.len() - 1) as f64;
        let in_range = s_tmin <= sigma as f64 && sigma as f64 <= s_tmax;
        let gamma = if in_range {
            (s_churn / steps).min(2f64.sqrt() - 1.0) as f32
        } else {
            0.0
        };
        let sigma_hat = sigma * (gamma + 1.0);
        let mut sample = sample.clone();
        if gamma > 0.0 {
            let z = opts.noise.take(model_output, "Euler steps with s_churn > 0")?;
            sample = (sample + (z * s_noise)? * ((sigma_hat * sigma_hat - sigma * sigma).sqrt() as f64))?;
        }
        let x0 = match self.config.prediction_type.as_str() {
            "sample" => model_output.clone(),
            "epsilon" => (&sample - (model_output * sigma_hat as f64)?)?,
            _ => {
                let s2 = sigma * sigma + 1.0;
                ((model_output * (-sigma / s2.sqrt()) as f64)? + (&sample / s2 as f64)?)?
            }
        };
        let derivative = ((&sample - &x0)? / sigma_hat as f64)?;
        let dt = self.sigmas[i + 1] - sigma_hat;
        let prev_sample = (&sample + (derivative * dt as f64)?)?;
        self.step_index = Some(i + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }

    /// x₀ + σ noise, with σ at each timestep's place in the schedule.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &[f64]) -> Result<Tensor> {
        let sigmas = timesteps
            .iter()
            .map(|&t| Ok(self.sigmas[self.index_for_timestep(t as f32)?]))
            .collect::<Result<Vec<f32>>>()?;
        let ones = vec![1.0; sigmas.len()];
        mix(original, noise, ones, sigmas)
    }

    fn name(&self) -> &'static str {
        "EulerDiscreteScheduler"
    }

    fn config(&self) -> Option<&SchedulerConfig> {
        Some(&self.config)
    }

    fn num_inference_steps(&self) -> Option<usize> {
        self.num_inference_steps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
}
