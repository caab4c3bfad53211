//! The official sampler as a [`Scheduler`]: ancestral DDPM (`p_sample_loop`) or DDIM (`ddim_sample_loop`) over
//! the steps of a (respaced) [`GaussianDiffusion`], with the model's learned variance.

use candle_core::Tensor;

use super::schedulers::{Scheduler, StepOptions, StepOutput};
use super::GaussianDiffusion;
use crate::error::{value_error, Result};

/// How each step moves from x_t to x_{t−1}.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    /// Ancestral sampling from p(x_{t−1} | x_t).
    Ddpm,
    /// DDIM, with the stochasticity `eta` of the step options (0 is deterministic).
    Ddim,
}

impl SamplerKind {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "ddpm" => Ok(Self::Ddpm),
            "ddim" => Ok(Self::Ddim),
            other => Err(value_error("sampler", "\"ddpm\" or \"ddim\"", format!("{other:?}"))),
        }
    }
}

/// A [`GaussianDiffusion`] sampled step by step, as the reference's `p_sample_loop` / `ddim_sample_loop`.
///
/// Every step draws its noise (also DDIM with eta = 0, which ignores it), so a run's draws do not depend on
/// the sampler.
#[derive(Clone, Debug)]
pub struct DiffusionSampler {
    pub diffusion: GaussianDiffusion,
    pub kind: SamplerKind,
    /// Clip each x₀ estimate to [−1, 1] (the official sampler does not).
    pub clip_denoised: bool,
}

impl DiffusionSampler {
    pub fn new(diffusion: GaussianDiffusion, kind: SamplerKind, clip_denoised: bool) -> Self {
        Self {
            diffusion,
            kind,
            clip_denoised,
        }
    }

    /// The step of the (respaced) process that conditions the model on timestep `t`.
    fn step_of(&self, t: f64) -> Result<usize> {
        let map = &self.diffusion.timestep_map;
        map.iter()
            .position(|&m| m as f64 == t)
            .ok_or_else(|| value_error("timestep", "one of the process's timesteps (its timestep_map)", t))
    }
}

impl Scheduler for DiffusionSampler {
    /// The steps are the process's own (its `timestep_respacing`): `n` must be their number.
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let steps = self.diffusion.num_timesteps();
        if n != steps {
            return Err(value_error(
                "num_inference_steps",
                format!(
                    "{steps}, the steps of this GaussianDiffusion (set by its timestep_respacing; for {n} steps make \
                     GaussianDiffusion(timestep_respacing=\"{n}\"), or leave num_inference_steps unset)"
                ),
                n,
            ));
        }
        Ok(())
    }

    fn timesteps(&self) -> Vec<f64> {
        self.diffusion.timestep_map.iter().rev().map(|&t| t as f64).collect()
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor, opts: &mut StepOptions) -> Result<StepOutput> {
        let step = vec![self.step_of(t)?; sample.dim(0)?];
        let z = opts.noise.take(sample, "sampling")?;
        let d = &self.diffusion;
        let (prev_sample, pred_original_sample) = match self.kind {
            SamplerKind::Ddpm => d.p_sample(model_output, sample, &step, &z, self.clip_denoised)?,
            SamplerKind::Ddim => d.ddim_sample(model_output, sample, &step, &z, opts.eta, self.clip_denoised)?,
        };
        Ok(StepOutput {
            prev_sample,
            pred_original_sample,
        })
    }

    /// q(x_t | x₀) at the process's timesteps (one per sample, or one for the batch).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &[f64]) -> Result<Tensor> {
        let b = original.dims().first().copied().unwrap_or(0);
        let steps = timesteps
            .iter()
            .map(|&t| self.step_of(t))
            .collect::<Result<Vec<usize>>>()?;
        let steps = match steps.as_slice() {
            [one] => vec![*one; b],
            _ => steps,
        };
        self.diffusion.q_sample(original, &steps, noise)
    }

    fn uses_variance(&self) -> bool {
        self.diffusion.var_type.is_learned()
    }

    fn uses_eta(&self) -> bool {
        self.kind == SamplerKind::Ddim
    }

    fn name(&self) -> &'static str {
        match self.kind {
            SamplerKind::Ddpm => "GaussianDiffusion (ddpm)",
            SamplerKind::Ddim => "GaussianDiffusion (ddim)",
        }
    }
}
