//! Videos of any length from any Latte model: the one place that decides how a sampling run makes its frames.
//! Within the trained length a run is [`crate::sampling::sample_with_report`], bit for bit. Beyond it, two methods:
//!
//! - **Windows** ([`LongVideo::Windows`], the default): every step runs the whole network on sliding windows of the
//!   trained length and fuses their outputs ([`crate::model::TemporalWindows`]); the starting noise is rescheduled
//!   as FreeNoise does ([`crate::model::windows::reschedule_noise`]).
//! - **FIFO** ([`LongVideo::Fifo`], FIFO-Diffusion's diagonal denoising, Kim et al. 2024): a queue of frames at
//!   increasing noise levels, one level per slot. Each iteration runs the model on windows of the queue with one
//!   timestep per frame ([`Denoiser::frames_per_timestep`]), steps every frame one level down, lets the head frame
//!   (now clean) leave and a frame of fresh noise enter at the tail. The model runs one window at a time: memory
//!   is one window's activations and the queue's latents, whatever the length of the video.

use candle_core::Tensor;

use crate::diffusion::schedulers::{Noise, Scheduler, StepOptions};
use crate::error::{value_error, LatteError, Result};
use crate::model::windows::{frame_axis, reschedule_noise, trained_frames};
use crate::model::{Condition, Denoiser, TemporalWindows};
use crate::rng::Generator;
use crate::sampling::{self, state_dtype, Guide, Sampled, SamplingOptions};

/// How frames beyond a model's trained length are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongVideo {
    /// Sliding windows of the trained length, `stride` frames apart (None: half a window), outputs fused, the
    /// starting noise rescheduled FreeNoise-style.
    Windows { stride: Option<usize> },
    /// FIFO-Diffusion's diagonal denoising; with `lookahead`, its lookahead denoising (windows half a window apart,
    /// each frame updated by the window in whose later half it sits, so every frame sees the frames ahead of it).
    Fifo { lookahead: bool },
}

impl Default for LongVideo {
    fn default() -> Self {
        Self::Windows { stride: None }
    }
}

impl LongVideo {
    /// From the names the faces use: `method` "windows" (default) or "fifo"; `window_stride` for windows only;
    /// `lookahead` (default true) for FIFO only.
    pub fn from_names(method: Option<&str>, window_stride: Option<usize>, lookahead: Option<bool>) -> Result<Self> {
        match method.unwrap_or("windows") {
            "windows" => {
                if lookahead.is_some() {
                    return Err(LatteError::Value(
                        "lookahead_denoising: FIFO's option; it has no meaning with long_video=\"windows\"".into(),
                    ));
                }
                Ok(Self::Windows { stride: window_stride })
            }
            "fifo" => {
                if let Some(s) = window_stride {
                    return Err(value_error(
                        "window_stride",
                        "nothing with long_video=\"fifo\" (its windows follow the queue)",
                        s,
                    ));
                }
                Ok(Self::Fifo {
                    lookahead: lookahead.unwrap_or(true),
                })
            }
            other => Err(value_error(
                "long_video",
                "\"windows\" or \"fifo\"",
                format!("{other:?}"),
            )),
        }
    }
}

/// What a video sampling run starts from: given noise, or the shape to draw it in.
#[derive(Clone, Debug)]
pub struct VideoRequest {
    /// The starting noise x_T (its frames are the video's); None: drawn from the run's generator.
    pub noise: Option<Tensor>,
    /// The latents' shape when the noise is drawn, the batch first (its frame count is replaced by
    /// `num_frames` when that is given).
    pub latent_shape: Vec<usize>,
    /// Frames to make; None: the noise's, else `latent_shape`'s.
    pub num_frames: Option<usize>,
    /// How frames beyond the trained length are made.
    pub method: LongVideo,
}

/// Samples a video of any length: within `model`'s trained length the ordinary loop, bit for bit; beyond it
/// the request's method. Drawn noise comes from `rng` first, then the loop's noise.
pub fn sample_video(
    model: &dyn Denoiser,
    scheduler: &mut dyn Scheduler,
    request: VideoRequest,
    cond: &Condition,
    opts: &SamplingOptions,
    rng: &mut Generator,
    progress: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Sampled> {
    let axis = frame_axis(model.spec().layout);
    let trained = trained_frames(model);
    let mut dims = request.latent_shape.clone();
    if let (Some(f), Some(d)) = (request.num_frames, dims.get_mut(axis)) {
        *d = f;
    }
    let frames = match &request.noise {
        Some(n) if n.rank() > axis => n.dim(axis)?,
        Some(_) => trained, // the model's check names the wrong rank
        None => dims.get(axis).copied().unwrap_or(trained),
    };
    if let (Some(_), Some(f)) = (&request.noise, request.num_frames) {
        if frames != f {
            return Err(LatteError::Value(format!(
                "num_frames: {f} asked for, but the noise has {frames} frames on axis {axis}"
            )));
        }
    }
    // Within the trained length nothing changes (fewer frames are the model's to refuse, naming the shape it
    // expects).
    if frames <= trained {
        let noise = match request.noise {
            Some(n) => n,
            None => sampling::draw_noise(model, &dims, rng)?,
        };
        return sampling::sample_with_report(model, scheduler, &noise, cond, opts, rng, progress);
    }
    match request.method {
        LongVideo::Windows { stride } => {
            let windows = TemporalWindows::new(model, frames, stride)?;
            let noise = match request.noise {
                Some(n) => n,
                None => {
                    let noise = sampling::draw_noise(&windows, &dims, rng)?;
                    reschedule_noise(&noise, axis, windows.window(), windows.stride(), rng)?
                }
            };
            sampling::sample_with_report(&windows, scheduler, &noise, cond, opts, rng, progress)
        }
        LongVideo::Fifo { lookahead } => {
            let noise = match request.noise {
                Some(n) => n,
                None => {
                    if dims.first().is_none_or(|&b| b == 0) {
                        return Err(value_error("num_samples", "at least 1", 0));
                    }
                    crate::limits::ensure_tensor_fits("latent_shape", &dims, 8 + state_dtype(model).size_in_bytes())?;
                    rng.randn(&dims, state_dtype(model), model.device())?
                }
            };
            let fifo = Fifo::new(model, frames, lookahead)?;
            fifo.sample(scheduler, &noise, cond, opts, rng, progress)
        }
    }
}

/// The geometry of FIFO denoising for one model: slots (the frames that share a timestep), the window (the
/// trained length) in slots, the queue in slots, and which windows update which slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FifoPlan {
    /// Frames per queue slot: 1, or a tubelet's frames.
    pub slot_frames: usize,
    /// Slots per window (the trained frames / slot_frames).
    pub window: usize,
    /// Slots in the queue: one per denoising step.
    pub queue: usize,
    /// Context slots before the head (the frames that left last, at the lowest level): half a window with
    /// lookahead, else none.
    pub context: usize,
    /// Slots between windows (and the slots each window updates: its last `stride`).
    pub stride: usize,
    /// Video slots to make.
    pub video: usize,
}

impl FifoPlan {
    /// The plan for `steps` denoising steps (at least a window's: the queue holds one slot per step) and a video
    /// of `video` slots.
    pub fn new(slot_frames: usize, window: usize, steps: usize, video: usize, lookahead: bool) -> Result<Self> {
        if window == 0 || slot_frames == 0 {
            return Err(LatteError::Value(
                "long_video=\"fifo\": the model has no frames to window".into(),
            ));
        }
        let lookahead = lookahead && window >= 2 && window % 2 == 0;
        let stride = if lookahead { window / 2 } else { window };
        Ok(Self {
            slot_frames,
            window,
            queue: steps.max(window),
            context: window - stride,
            stride,
            video,
        })
    }

    /// Windows per iteration: window `m` updates the queue's slots `m·stride ..` (its last `stride`, the last
    /// window the rest).
    pub fn windows(&self) -> usize {
        self.queue.div_ceil(self.stride)
    }

    /// The first slot of window `m` in [context | queue] coordinates (the last window ends at the queue's tail).
    pub fn window_start(&self, m: usize) -> usize {
        (m * self.stride).min(self.context + self.queue - self.window)
    }

    /// The queue's slots window `m` updates.
    pub fn updates(&self, m: usize) -> std::ops::Range<usize> {
        m * self.stride..((m + 1) * self.stride).min(self.queue)
    }

    /// Where the queue's slot `j` sits in window `m`.
    pub fn position(&self, m: usize, j: usize) -> usize {
        j + self.context - self.window_start(m)
    }

    /// Iterations: one per video slot (the queue starts with the video's first `queue` slots, see
    /// [`FifoPlan::initial_slot`]).
    pub fn iterations(&self) -> usize {
        self.video
    }

    /// The video slot that leaves the queue at iteration `k`.
    pub fn leaving(&self, k: usize) -> usize {
        k
    }

    /// The video slot whose noise enters the queue's tail at the end of iteration `k` (it leaves at iteration
    /// `k + queue`).
    pub fn entering(&self, k: usize) -> usize {
        k + self.queue
    }

    /// The queue's start: slot `j` holds video slot `j`, made of the first clip's slot `min(j, window - 1)` (the
    /// clip at the head, its last slot standing in for the frames after it, which sit at the higher levels where
    /// little of it is left) noised to the slot's level with video slot `j`'s noise.
    ///
    /// FIFO-Diffusion puts the clip at the tail instead, behind copies of its first frame, and drops the frames
    /// that leave before the clip: on the built-in models that start makes a still video (the copies are every
    /// frame's context), this one a video that opens with the first clip's motion (see the docs' table).
    pub fn initial_slot(&self, j: usize) -> usize {
        j.min(self.window - 1)
    }
}

/// FIFO denoising of one model over `frames` frames.
struct Fifo<'a> {
    model: &'a dyn Denoiser,
    axis: usize,
    frames: usize,
    lookahead: bool,
}

impl<'a> Fifo<'a> {
    fn new(model: &'a dyn Denoiser, frames: usize, lookahead: bool) -> Result<Self> {
        let slot = model.frames_per_timestep()?;
        if frames % slot != 0 {
            return Err(value_error(
                "num_frames",
                format!("a multiple of {slot} (the model's tubelet: FIFO moves a tubelet at a time)"),
                frames,
            ));
        }
        Ok(Self {
            model,
            axis: frame_axis(model.spec().layout),
            frames,
            lookahead,
        })
    }

    fn sample(
        &self,
        scheduler: &mut dyn Scheduler,
        noise: &Tensor,
        cond: &Condition,
        opts: &SamplingOptions,
        rng: &mut Generator,
        progress: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Sampled> {
        let model = self.model;
        let axis = self.axis;
        if opts.cache.is_some() {
            return Err(LatteError::Value(
                "cache: not with long_video=\"fifo\" (its windows change at every iteration, so there is no step \
                 to reuse); use long_video=\"windows\" with a cache"
                    .into(),
            ));
        }
        if noise.rank() <= axis || noise.dim(axis)? != self.frames {
            return Err(LatteError::Value(format!(
                "latents: expected {} frames on axis {axis}, got shape {:?}",
                self.frames,
                noise.dims()
            )));
        }
        let trained = trained_frames(model);
        let slot = model.frames_per_timestep()?;
        let steps = match opts.num_inference_steps {
            Some(n) => n,
            None => scheduler.num_inference_steps().unwrap_or(trained / slot),
        };
        let plan = FifoPlan::new(slot, trained / slot, steps, self.frames / slot, self.lookahead)?;
        // The first clip: an ordinary run of the queue's steps from the video's first window of noise.
        let first_noise = noise.narrow(axis, 0, trained)?;
        model.check_latents(&first_noise)?;
        scheduler.set_timesteps(plan.queue)?;
        let total = plan.queue + plan.iterations();
        let mut clip_progress = |done: usize, _: usize| progress(done, total);
        let first_opts = SamplingOptions {
            num_inference_steps: None,
            ..opts.clone()
        };
        let first = sampling::sample_with_report(
            model,
            &mut *scheduler.clone_box(),
            &first_noise,
            cond,
            &first_opts,
            rng,
            &mut clip_progress,
        )?
        .latents;

        let device = model.device().clone();
        let dtype = state_dtype(model);
        let noise = noise.to_dtype(dtype)?.to_device(&device)?;
        // Levels, lowest first: slot j is denoised at levels[j], then moves to slot j - 1.
        let mut levels = scheduler.timesteps();
        levels.reverse();
        let slot_of = |x: &Tensor, j: usize| x.narrow(axis, j * slot, slot);
        // The queue's start: the video's first slots, the first clip's noised diagonally to each slot's level.
        let mut queue = Vec::with_capacity(plan.queue);
        let mut schedulers: Vec<Box<dyn Scheduler>> = Vec::with_capacity(plan.queue);
        for (j, &level) in levels.iter().enumerate() {
            let clean = slot_of(&first, plan.initial_slot(j))?;
            let eps = if j < plan.video {
                slot_of(&noise, j)?
            } else {
                rng.randn(clean.dims(), dtype, &device)?
            };
            queue.push(scheduler.add_noise(&clean, &eps, &[level])?);
            schedulers.push(scheduler.clone_box());
        }
        let mut context: Vec<Tensor> = vec![slot_of(&first, 0)?; plan.context];

        // The model runs one window at a time (its clips, and their unconditional twins): memory of one window,
        // as the windows method; the condition is checked once.
        let windows = plan.windows();
        let guide = Guide::new(model, cond, opts, first_noise.dims())?;
        let mut video: Vec<Tensor> = Vec::with_capacity(plan.video);

        for k in 0..plan.iterations() {
            // [context | queue] scaled for the model, each slot at its level (the context at the lowest).
            let mut inputs = Vec::with_capacity(plan.context + plan.queue);
            let mut slot_levels = Vec::with_capacity(plan.context + plan.queue);
            for c in &context {
                inputs.push(scheduler.clone_box().scale_model_input(c, levels[0])?);
                slot_levels.push(levels[0]);
            }
            for (j, (x, s)) in queue.iter().zip(schedulers.iter_mut()).enumerate() {
                inputs.push(s.scale_model_input(x, levels[j])?);
                slot_levels.push(levels[j]);
            }
            for m in 0..windows {
                let s = plan.window_start(m);
                let parts: Vec<&Tensor> = inputs[s..s + plan.window].iter().collect();
                let input = guide.batch(&Tensor::cat(&parts, axis)?)?;
                let levels_row: Vec<f32> = slot_levels[s..s + plan.window].iter().map(|&t| t as f32).collect();
                let rows = input.dim(0)?;
                let t = Tensor::new(levels_row.as_slice(), &device)?
                    .unsqueeze(0)?
                    .broadcast_as((rows, plan.window))?
                    .contiguous()?;
                let out = model.denoise(&input.to_dtype(model.dtype())?, &t, &guide.cond, false)?;
                // Each window's outputs are computed from the queue before this iteration's steps: a window reads
                // `inputs`, scaled before any slot moved.
                for j in plan.updates(m) {
                    let raw = out.narrow(axis, plan.position(m, j) * slot, slot)?;
                    let o = guide.output(&raw, dtype, schedulers[j].as_ref())?;
                    let mut step = StepOptions {
                        eta: opts.eta,
                        ..StepOptions::new(Noise::Source(rng))
                    };
                    queue[j] = schedulers[j]
                        .step(&o, levels[j], &queue[j], &mut step)?
                        .prev_sample
                        .detach();
                }
            }
            // The head is clean: it leaves into the video and becomes context.
            let head = queue.remove(0);
            schedulers.remove(0);
            video.push(head.clone());
            if plan.context > 0 {
                context.remove(0);
                context.push(head);
            }
            let entering = plan.entering(k);
            let fresh = if entering < plan.video {
                slot_of(&noise, entering)?
            } else {
                let dims = slot_of(&noise, 0)?.dims().to_vec();
                rng.randn(&dims, dtype, &device)?
            };
            queue.push((fresh * scheduler.init_noise_sigma())?);
            schedulers.push(scheduler.clone_box());
            progress(plan.queue + k + 1, total)?;
            if video.len() == plan.video {
                break;
            }
        }
        let parts: Vec<&Tensor> = video.iter().collect();
        let latents = Tensor::cat(&parts, axis)?;
        sampling::check_sampled(&latents)?;
        Ok(Sampled {
            latents,
            cache_report: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every queue slot is updated by exactly one window per iteration, from the window's later part, the windows
    /// stay inside [context | queue], and the slots leave in video order.
    #[test]
    fn the_plan_updates_every_slot_once_and_emits_the_video_in_order() {
        for (window, steps, lookahead) in [
            (8, 32, true),
            (8, 32, false),
            (8, 50, true),
            (8, 50, false),
            (4, 10, false),
            (1, 5, true),
            (8, 3, true),
        ] {
            let plan = FifoPlan::new(1, window, steps, 20, lookahead).unwrap();
            assert_eq!(plan.queue, steps.max(window));
            let mut updated = vec![0; plan.queue];
            for m in 0..plan.windows() {
                assert!(plan.window_start(m) + plan.window <= plan.context + plan.queue);
                for j in plan.updates(m) {
                    let p = plan.position(m, j);
                    assert!(
                        p >= plan.window - plan.stride && p < plan.window,
                        "{window} {steps}: {m} {j} at {p}"
                    );
                    updated[j] += 1;
                }
            }
            assert!(
                updated.iter().all(|&u| u == 1),
                "{window} {steps} {lookahead}: {updated:?}"
            );
            let emitted: Vec<usize> = (0..plan.iterations()).map(|k| plan.leaving(k)).collect();
            assert_eq!(emitted, (0..20).collect::<Vec<_>>());
            // A slot entering at k leaves at k + queue as the video slot it was drawn for.
            for k in 0..plan.iterations() {
                assert_eq!(plan.leaving(k + plan.queue), plan.entering(k));
            }
            // The start holds the video's first slots, the clip's then its last.
            assert_eq!(plan.initial_slot(0), 0);
            assert_eq!(plan.initial_slot(plan.queue - 1), window - 1);
        }
    }
}
