//! The sampling loops: DDPM ancestral sampling and DDIM over the steps of a (respaced) process, all steps in Rust.

use candle_core::Tensor;

use super::GaussianDiffusion;
use crate::error::Result;
use crate::rng::Generator;

/// How each step moves from x_t to x_{t−1}.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// Ancestral sampling from p(x_{t−1} | x_t).
    Ddpm,
    /// DDIM with stochasticity `eta` (0 is deterministic).
    Ddim { eta: f64 },
}

impl GaussianDiffusion {
    /// Runs every step from `noise` (x_T) down to x₀, as the reference's `p_sample_loop` / `ddim_sample_loop`.
    /// `model(x, timesteps)` returns the model output for the original (un-respaced) timesteps; the per-step
    /// noise comes from `rng`, drawn every step (also when DDIM with eta = 0 ignores it, so a run's draws do not
    /// depend on the sampler). `progress(done, total)` is called after each step; an error from it stops the loop.
    pub fn sample_loop(
        &self,
        mut model: impl FnMut(&Tensor, &[usize]) -> Result<Tensor>,
        noise: Tensor,
        sampler: Sampler,
        clip_denoised: bool,
        rng: &mut Generator,
        mut progress: impl FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor> {
        let total = self.num_timesteps();
        let batch = noise.dim(0)?;
        let mut x = noise;
        for (done, step) in (0..total).rev().enumerate() {
            let t = vec![step; batch];
            let out = model(&x, &self.model_timesteps(&t))?;
            let z = rng.randn(x.dims(), x.dtype(), x.device())?;
            x = match sampler {
                Sampler::Ddpm => self.p_sample(&out, &x, &t, &z, clip_denoised)?.0,
                Sampler::Ddim { eta } => self.ddim_sample(&out, &x, &t, &z, eta, clip_denoised)?.0,
            };
            progress(done + 1, total)?;
        }
        Ok(x)
    }
}
