//! THE sampling loop: any [`Denoiser`] with any [`Scheduler`], with classifier-free guidance, all steps in Rust.

use candle_core::{DType, Tensor};

use crate::cache::{CachePolicy, CacheReport, CacheState, StepInfo};
use crate::diffusion::schedulers::{Noise, Scheduler, StepOptions};
use crate::error::{value_error, LatteError, Result};
use crate::model::{apply_guidance, Condition, Denoiser};
use crate::rng::Generator;
use crate::runtime::on_cpu_pool;

/// How a sampling run goes besides the model, the scheduler and the condition.
#[derive(Clone, Debug)]
pub struct SamplingOptions {
    /// Steps to set on the scheduler; None keeps its current schedule (a respaced diffusion's own steps).
    pub num_inference_steps: Option<usize>,
    /// Classifier-free guidance scale; guidance runs above 1.
    pub guidance_scale: f64,
    /// The unconditional branch of guidance; None: the model's null condition (a class model's null label).
    pub uncond: Option<Condition>,
    /// DDIM's stochasticity (refused for schedulers that have none).
    pub eta: f64,
    /// Work to skip across steps (see [`crate::cache`]); None runs every block at every step.
    pub cache: Option<CachePolicy>,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            num_inference_steps: None,
            guidance_scale: 1.0,
            uncond: None,
            eta: 0.0,
            cache: None,
        }
    }
}

/// The dtype a sampling run keeps its latents in: f32, or f64 for an f64 model (half-precision models only
/// compute in half precision; the scheduler's arithmetic stays exact).
pub fn state_dtype(model: &dyn Denoiser) -> DType {
    if model.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Standard normal starting noise of shape `dims` (the batch first) from `rng`, on the model's device.
pub fn draw_noise(model: &dyn Denoiser, dims: &[usize], rng: &mut Generator) -> Result<Tensor> {
    if dims.first().is_none_or(|&b| b == 0) {
        return Err(value_error("num_samples", "at least 1", 0));
    }
    // Checked here too so that the refusal is a memory error, not the generator's message.
    crate::limits::ensure_tensor_fits("latent_shape", dims, 8 + state_dtype(model).size_in_bytes())?;
    model.check_memory(dims, false)?;
    Ok(rng.randn(dims, state_dtype(model), model.device())?)
}

/// What a sampling run returns: the latents, and what its cache computed and skipped.
#[derive(Clone, Debug)]
pub struct Sampled {
    pub latents: Tensor,
    /// None without a cache policy.
    pub cache_report: Option<CacheReport>,
}

/// [`sample_with_report`]'s latents.
pub fn sample(
    model: &dyn Denoiser,
    scheduler: &mut dyn Scheduler,
    noise: &Tensor,
    cond: &Condition,
    opts: &SamplingOptions,
    rng: &mut Generator,
    progress: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Tensor> {
    Ok(sample_with_report(model, scheduler, noise, cond, opts, rng, progress)?.latents)
}

/// Denoises `noise` (x_T) with `model` and `scheduler`: x = init_noise_sigma · noise, then per timestep the
/// scaled input, the model's output (guided when `opts.guidance_scale` > 1: the batch runs as [cond | uncond]
/// and the model's [`crate::model::GuidanceRule`] mixes the halves), reduced to the prediction channels unless the
/// scheduler reads the variance, and a scheduler step whose noise comes from `rng`. With `opts.cache`, the
/// model's output comes through the cache policy, which decides per step whether the block stack runs (one
/// decision for the whole guided batch). `progress(done, total)` runs after each step; an error from it stops
/// the loop. Inputs are checked once, before the first step.
pub fn sample_with_report(
    model: &dyn Denoiser,
    scheduler: &mut dyn Scheduler,
    noise: &Tensor,
    cond: &Condition,
    opts: &SamplingOptions,
    rng: &mut Generator,
    progress: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Sampled> {
    check_guidance_scale(opts.guidance_scale)?;
    if !(opts.eta.is_finite() && opts.eta >= 0.0) {
        return Err(value_error("eta", "a finite number >= 0", opts.eta));
    }
    if opts.eta != 0.0 && !scheduler.uses_eta() {
        return Err(LatteError::Value(format!(
            "eta: {} has no eta (only DDIM does); leave eta at 0",
            scheduler.name()
        )));
    }
    model.check_latents(noise)?;
    let device = model.device().clone();
    let mut x = noise.to_dtype(state_dtype(model))?.to_device(&device)?;
    let guide = Guide::new(model, cond, opts, x.dims())?;
    let (guided, model_batch) = (guide.guided, guide.rows(x.dim(0)?));
    if let Some(n) = opts.num_inference_steps {
        scheduler.set_timesteps(n)?;
    }
    let timesteps = scheduler.timesteps();
    let as_f32: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
    model.check_timesteps(&Tensor::new(as_f32.as_slice(), &device)?, timesteps.len())?;

    let mut cache = opts
        .cache
        .as_ref()
        .map(|policy| CacheState::new(policy, model, timesteps.len()))
        .transpose()?;
    x = (x * scheduler.init_noise_sigma())?;
    for (done, &t) in timesteps.iter().enumerate() {
        // The step's kernels on rayon's pool (see `on_cpu_pool`); the progress callback stays on this thread.
        x = on_cpu_pool(&device, || -> Result<Tensor> {
            let input = guide.batch(&scheduler.scale_model_input(&x, t)?)?;
            let t_batch = Tensor::full(t as f32, model_batch, &device)?;
            let input = input.to_dtype(model.dtype())?;
            let out = match cache.as_mut() {
                Some(cache) => {
                    let step = StepInfo {
                        index: done,
                        timestep: t,
                        guided,
                    };
                    cache.denoise(model, &input, &t_batch, &guide.cond, step)?
                }
                None => model.denoise(&input, &t_batch, &guide.cond, false)?,
            };
            let out = guide.output(&out, x.dtype(), scheduler)?;
            let mut step = StepOptions {
                eta: opts.eta,
                ..StepOptions::new(Noise::Source(&mut *rng))
            };
            Ok(scheduler.step(&out, t, &x, &mut step)?.prev_sample.detach())
        })?;
        progress(done + 1, timesteps.len())?;
    }
    check_sampled(&x)?;
    Ok(Sampled {
        latents: x,
        cache_report: cache.map(CacheState::finish),
    })
}

/// Refuses a guidance scale below 1 or not finite.
fn check_guidance_scale(scale: f64) -> Result<()> {
    if !(scale.is_finite() && scale >= 1.0) {
        return Err(value_error("guidance_scale (cfg_scale)", "a number >= 1", scale));
    }
    Ok(())
}

/// Refuses sampled latents with NaN or infinity (from finite noise and condition: an overflow).
pub(crate) fn check_sampled(x: &Tensor) -> Result<()> {
    if !crate::finite::all_finite(x)? {
        return Err(LatteError::Value(
            "the sampled latents have NaN or infinity although the noise and the condition are finite: the model's \
             activations or the scheduler's steps overflowed (check the weights, guidance_scale and the schedule)"
                .into(),
        ));
    }
    Ok(())
}

/// Classifier-free guidance of one sampling run: the condition the model sees (with guidance `[cond | uncond]`,
/// checked once for latents of the run's shape) and how the model's output becomes what a scheduler steps on.
pub(crate) struct Guide<'a> {
    model: &'a dyn Denoiser,
    /// The checked condition of the model's batch.
    pub(crate) cond: Condition,
    scale: f64,
    /// Guidance runs (a scale above 1): the model's batch is twice the latents'.
    pub(crate) guided: bool,
}

impl<'a> Guide<'a> {
    /// Checks `opts.guidance_scale`, builds the unconditional branch (`opts.uncond`, else the model's null
    /// condition) and checks memory and condition for latents of shape `dims` (batch first).
    pub(crate) fn new(
        model: &'a dyn Denoiser,
        cond: &Condition,
        opts: &SamplingOptions,
        dims: &[usize],
    ) -> Result<Self> {
        let scale = opts.guidance_scale;
        check_guidance_scale(scale)?;
        let guided = scale > 1.0;
        let cond = if guided {
            let uncond = match &opts.uncond {
                Some(u) => u.clone(),
                None => model.null_condition(cond)?,
            };
            cond.concat(&uncond)?
        } else {
            cond.clone()
        };
        let mut model_dims = dims.to_vec();
        if let Some(b) = model_dims.first_mut() {
            *b *= if guided { 2 } else { 1 };
        }
        model.check_memory(&model_dims, false)?;
        let cond = model.check_condition(&cond, &model_dims)?;
        Ok(Self {
            model,
            cond,
            scale,
            guided,
        })
    }

    /// The model's batch for `batch` latents.
    pub(crate) fn rows(&self, batch: usize) -> usize {
        if self.guided {
            2 * batch
        } else {
            batch
        }
    }

    /// The model's input for `input`: twice over with guidance.
    pub(crate) fn batch(&self, input: &Tensor) -> Result<Tensor> {
        Ok(if self.guided {
            Tensor::cat(&[input, input], 0)?
        } else {
            input.clone()
        })
    }

    /// The model's output `out` (its batch) as `scheduler` steps on it, in `dtype`: detached, guided, and reduced
    /// to the prediction channels unless the scheduler reads the variance.
    pub(crate) fn output(&self, out: &Tensor, dtype: DType, scheduler: &dyn Scheduler) -> Result<Tensor> {
        let spec = self.model.spec();
        let (channels, axis) = (spec.latent_channels, spec.layout.channel_axis());
        // Detached: the parameters are variables, so without it every step's output would keep its forward
        // pass's graph (and the activations it references) alive through the chain of samples.
        let out = out.detach().to_dtype(dtype)?;
        let out = if self.guided {
            apply_guidance(&out, self.scale, spec.guidance_rule, axis, channels)?
        } else {
            out
        };
        Ok(if scheduler.uses_variance() || out.dim(axis)? == channels {
            out
        } else {
            out.narrow(axis, 0, channels)?
        })
    }
}
