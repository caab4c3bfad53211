//! [`Trainer`]: the train step over any [`AnyModel`] (timesteps, noise, condition dropout, the diffusion loss,
//! backward, accumulation, clipping, AdamW, EMA), mixed precision with f32 master weights and dynamic loss
//! scaling, and the optimiser state on the host or on the parameters' device.
//!
//! One call of [`Trainer::step`] is one optimiser step. With `grad_accumulation = k` the batch is cut into `k`
//! micro-batches that run forward and backward one after the other (bounding activation memory by one
//! micro-batch); their gradients are summed with weights so that the result is the gradient of the whole batch's
//! mean loss. Every random draw of the step (timesteps, noise, label dropout) is taken for the whole batch first,
//! so the numbers do not depend on `k`. A checkpoint therefore never holds half-accumulated gradients. A step is
//! [`Trainer::forward_backward`] then [`Trainer::apply_gradient_list`]; a data-parallel run all-reduces between
//! the two.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::device_state;
use super::dropout::{drop_condition, Dropout};
use super::host_state::{new_buffers, Buffers};
use super::optim::{Pending, Skip};
use super::options::TrainerOptions;
use crate::diffusion::GaussianDiffusion;
use crate::error::{value_error, LatteError, Result};
use crate::model::{AnyModel, Condition, Denoiser, LatentLayout};
use crate::rng::{Generator, GeneratorState};

/// What one step did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Mean loss over the batch.
    pub loss: f64,
    /// Its MSE and variational-bound parts (None when the loss has no such split).
    pub mse: Option<f64>,
    pub vb: Option<f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used (of the step just taken, or that would have been taken when skipped).
    pub lr: f64,
    /// Optimiser steps taken so far.
    pub step: u64,
    /// Whether this step was skipped (non-finite loss or gradient, or an f16 overflow).
    pub skipped: bool,
    pub skipped_steps: u64,
    /// The dynamic loss scale (f16 models only).
    pub loss_scale: Option<f64>,
}

/// Random draws of a step given by the caller instead of taken from the trainer's stream: the timesteps (indices
/// into the diffusion's steps, one per clip) and the noise (the latents' shape). Label dropout is still drawn.
#[derive(Clone, Debug, Default)]
pub struct Draws {
    pub timesteps: Option<Vec<usize>>,
    pub noise: Option<Tensor>,
}

/// The outcome of [`Trainer::forward_backward`]: one gradient per trainable parameter and the batch's mean losses.
#[derive(Clone, Debug)]
pub struct BatchGradients {
    pub grads: Vec<Tensor>,
    pub loss: f64,
    pub mse: Option<f64>,
    pub vb: Option<f64>,
    /// The loss scale the gradients carry (1 once [`Trainer::forward_backward`] has unscaled them).
    pub loss_scale: f64,
}

/// Dynamic loss scaling for f16 models (as torch's `GradScaler`): scale the loss so small gradients survive f16,
/// halve the scale and skip the step on overflow, double it after `GROWTH_INTERVAL` clean steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f64,
    pub clean_steps: u64,
}

pub(super) const GROWTH_INTERVAL: u64 = 2000;

/// The optimiser's state: host buffers updated by the CPU kernels in place, or flat tensors on the parameters'
/// device (see [`device_state`]); [`crate::nn::kernels`] decides which.
#[derive(Clone, Debug)]
pub(crate) enum State {
    F32(Buffers<f32>),
    F64(Buffers<f64>),
    Device(device_state::DeviceBuffers),
}

/// Trains a [`AnyModel`] (a [`LatteModel`] or the text-to-video transformer) with a [`GaussianDiffusion`];
/// see the module docs.
pub struct Trainer {
    pub(super) model: AnyModel,
    pub(super) diffusion: GaussianDiffusion,
    pub(super) opts: TrainerOptions,
    pub(super) names: Vec<String>,
    pub(super) vars: Vec<Var>,
    pub(super) state: State,
    pub(super) rng: Generator,
    pub(super) step: u64,
    pub(super) skipped_steps: u64,
    pub(super) loss_scale: Option<LossScale>,
    /// The random streams of every process of the data-parallel run a checkpoint was saved from.
    pub(super) rank_rngs: Vec<GeneratorState>,
    /// Text models: the null caption `(1, S, caption_channels)` (padding zeroed) that caption dropout puts in.
    pub(super) null_caption: Option<Tensor>,
}

/// The precision of the optimiser state and the loss for a model dtype.
fn state_dtype(model: DType) -> DType {
    if model == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

impl Trainer {
    /// A trainer for `model` (whose parameters it updates in place: clones of the model see the new weights).
    pub fn new(model: impl Into<AnyModel>, diffusion: &GaussianDiffusion, opts: TrainerOptions) -> Result<Self> {
        opts.validate()?;
        let model: AnyModel = model.into();
        let (names, vars): (Vec<_>, Vec<_>) = model.denoiser().trainable_vars().into_iter().unzip();
        let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let host = crate::nn::kernels::fused_cpu(&tensors, &[DType::F32, DType::F64, DType::BF16, DType::F16]);
        let state = match state_dtype(model.dtype()) {
            dtype if !host => State::Device(device_state::DeviceBuffers::new(&vars, model.dtype(), dtype)?),
            DType::F64 => State::F64(new_buffers(&vars, model.dtype())?),
            _ => State::F32(new_buffers(&vars, model.dtype())?),
        };
        let loss_scale = (model.dtype() == DType::F16).then_some(LossScale {
            scale: 65536.0,
            clean_steps: 0,
        });
        Ok(Self {
            model,
            diffusion: diffusion.clone(),
            rng: Generator::new(opts.seed),
            opts,
            names,
            vars,
            state,
            step: 0,
            skipped_steps: 0,
            loss_scale,
            rank_rngs: Vec::new(),
            null_caption: None,
        })
    }

    pub fn model(&self) -> &AnyModel {
        &self.model
    }

    /// Sets the null caption of caption dropout: the empty prompt's T5 features `(1, S, caption_channels)` or
    /// `(S, caption_channels)`, with their 0/1 mask (padding zeroed, as every caption of a batch).
    pub fn set_null_caption(&mut self, features: &Tensor, mask: Option<&Tensor>) -> Result<()> {
        let AnyModel::Text(m) = &self.model else {
            return Err(LatteError::Value(
                "null_caption: only a text-to-video model has captions to drop (a class model drops labels)".into(),
            ));
        };
        let features = if features.rank() == 2 {
            features.unsqueeze(0)?
        } else {
            features.clone()
        };
        let mask = match mask {
            Some(m) if m.rank() == 1 => Some(m.unsqueeze(0)?),
            Some(m) => Some(m.clone()),
            None => None,
        };
        let c = m.config().caption_channels;
        if features.rank() != 3 || features.dim(0)? != 1 || features.dim(2)? != c || features.dim(1)? == 0 {
            return Err(value_error(
                "null_caption",
                format!("shape (1, S, {c}) or (S, {c})"),
                format!("shape {:?}", features.dims()),
            ));
        }
        let x_dims = [1, m.config().in_channels, m.config().video_length, 1, 1];
        let checked = m.check_condition(
            &Condition::Text {
                embeddings: features,
                mask,
            },
            &x_dims,
        )?;
        if let Condition::Text { embeddings, .. } = checked {
            self.null_caption = Some(embeddings);
        }
        Ok(())
    }

    /// The null caption of caption dropout (padding zeroed), if set.
    pub fn null_caption(&self) -> Option<&Tensor> {
        self.null_caption.as_ref()
    }

    pub fn diffusion(&self) -> &GaussianDiffusion {
        &self.diffusion
    }

    pub fn options(&self) -> &TrainerOptions {
        &self.opts
    }

    /// Optimiser steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    pub fn skipped_steps(&self) -> u64 {
        self.skipped_steps
    }

    /// One optimiser step on a batch of clean latents `x0` (B, F, C, H, W) (the datasets' layout, whatever the
    /// model's) conditioned on `cond`: class labels (and the image frames' labels of image-video joint batches),
    /// caption features (`(B, S, C)`, or `(B, 1 + n, S, C)` with one caption per image frame), or nothing.
    pub fn step(&mut self, x0: &Tensor, cond: &Condition) -> Result<StepStats> {
        self.step_with(x0, cond, &Draws::default())
    }

    /// [`Trainer::step`] with some of the step's random draws given (`draws`): the same step with the same
    /// draws gives the same numbers however the batch is split over processes.
    pub fn step_with(&mut self, x0: &Tensor, cond: &Condition, draws: &Draws) -> Result<StepStats> {
        let g = self.gradients(x0, cond, draws)?;
        self.finish(&g.grads, Some(g.loss), g.mse, g.vb, g.loss_scale)
    }

    /// The first half of a step, for data-parallel training: the gradient of the batch's mean loss (unscaled, in
    /// the optimiser's precision, in the order of [`Trainer::parameter_names`]) and the losses, without touching
    /// the weights. Averaging it over processes and passing the result to [`Trainer::apply_gradient_list`] is
    /// one optimiser step on the joint batch.
    pub fn forward_backward(&mut self, x0: &Tensor, cond: &Condition, draws: &Draws) -> Result<BatchGradients> {
        let mut g = self.gradients(x0, cond, draws)?;
        if g.loss_scale != 1.0 {
            let inv = 1.0 / g.loss_scale;
            g.grads = g
                .grads
                .iter()
                .map(|t| t.affine(inv, 0.0))
                .collect::<candle_core::Result<_>>()?;
            g.loss_scale = 1.0;
        }
        Ok(g)
    }

    /// The trainable parameters' names, in the order of the gradients of [`Trainer::forward_backward`].
    pub fn parameter_names(&self) -> &[String] {
        &self.names
    }

    /// The trainable parameters' shapes, in the same order.
    pub fn parameter_shapes(&self) -> Vec<Vec<usize>> {
        self.vars.iter().map(|v| v.dims().to_vec()).collect()
    }

    /// The position of the trainer's random stream (timesteps, noise, label dropout).
    pub fn rng_state(&self) -> GeneratorState {
        self.rng.state()
    }

    /// Moves the random stream to a saved position.
    pub fn set_rng_state(&mut self, state: &GeneratorState) -> Result<()> {
        self.rng = Generator::from_state(state)?;
        Ok(())
    }

    /// Restarts the random stream from `seed` (a process of a data-parallel run that cannot continue the saved
    /// streams, e.g. after resuming with a different number of processes).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Generator::new(seed);
    }

    /// The random streams of all processes of the data-parallel run this trainer was resumed from (empty for a
    /// single-process checkpoint); see [`Trainer::save_with_ranks`].
    pub fn rank_rng_states(&self) -> &[GeneratorState] {
        &self.rank_rngs
    }

    fn gradients(&mut self, x0: &Tensor, cond: &Condition, draws: &Draws) -> Result<BatchGradients> {
        let dims = x0.dims().to_vec();
        if dims.len() != 5 {
            return Err(value_error(
                "latents",
                "shape (B, F, C, H, W)",
                format!("shape {dims:?}"),
            ));
        }
        if !x0.dtype().is_float() {
            return Err(LatteError::Type(format!(
                "latents: expected a floating-point array, got {:?}",
                x0.dtype()
            )));
        }
        let b = dims[0];
        let k = self.opts.grad_accumulation;
        if b == 0 || b % k != 0 {
            return Err(value_error(
                "latents",
                format!("a batch size divisible by grad_accumulation = {k}"),
                format!("batch {b}"),
            ));
        }
        if let Condition::Classes { labels, image_labels } = cond {
            let images = dims[1].saturating_sub(self.model.video_frames());
            for (arg, l, want) in [
                ("labels", Some(labels), vec![b]),
                ("image_labels", image_labels.as_ref(), vec![b, images]),
            ] {
                if let Some(l) = l {
                    if l.dims() != want.as_slice() {
                        return Err(value_error(
                            arg,
                            format!("shape {want:?}"),
                            format!("shape {:?}", l.dims()),
                        ));
                    }
                }
            }
        }
        // The model sees its own layout; the diffusion and its loss work in the datasets' (B, F, C, H, W).
        let channels_first = self.model.denoiser().spec().layout == LatentLayout::ChannelsFirst;
        let to_model = |t: &Tensor| -> candle_core::Result<Tensor> {
            if channels_first {
                t.permute((0, 2, 1, 3, 4))
            } else {
                Ok(t.clone())
            }
        };
        // The model's own checks (clip shape against its config, finite values, condition), once per step, on a
        // view in the model's layout.
        let x0_model = to_model(x0)?;
        let model_dims = x0_model.dims().to_vec();
        drop(self.model.denoiser().check_latents(&x0_model)?);
        let mut micro = model_dims.clone();
        micro[0] = micro[0].div_ceil(k.max(1));
        self.model
            .denoiser()
            .check_memory(&micro, !self.opts.gradient_checkpointing)?;
        let cond = self.model.denoiser().check_condition(cond, &model_dims)?;
        let pd = state_dtype(self.model.dtype());
        let device = self.model.device().clone();
        let x0 = x0.to_dtype(pd)?.to_device(&device)?;

        let timesteps = match &draws.timesteps {
            Some(t) => {
                let n = self.diffusion.num_timesteps();
                if t.len() != b || t.iter().any(|&i| i >= n) {
                    return Err(value_error(
                        "timesteps",
                        format!("{b} integers in [0, {n})"),
                        format!("{t:?}"),
                    ));
                }
                t.clone()
            }
            None => self.rng.below(b, self.diffusion.num_timesteps()),
        };
        let noise = match &draws.noise {
            Some(n) => {
                if n.dims() != dims.as_slice() {
                    return Err(value_error(
                        "noise",
                        format!("shape {dims:?} (the latents')"),
                        format!("shape {:?}", n.dims()),
                    ));
                }
                crate::finite::to_model_finite(n, "noise", pd, &device)?
            }
            None => self.rng.randn(&dims, pd, &device)?,
        };
        let dropout = Dropout {
            labels: self.model.label_dropout(),
            caption_prob: self.opts.caption_dropout_prob,
            null_caption: self.null_caption.as_ref(),
        };
        let cond = drop_condition(cond, b, dropout, &mut self.rng)?;

        let scale_factor = self.loss_scale.as_ref().map_or(1.0, |s| s.scale);
        let mb = b / k;
        let mut acc: Option<Vec<Tensor>> = None;
        let (mut loss_sum, mut mse_sum, mut vb_sum) = (0.0f64, None::<f64>, None::<f64>);
        for j in 0..k {
            let narrow = |t: &Tensor| t.narrow(0, j * mb, mb);
            let x0_j = narrow(&x0)?;
            let noise_j = narrow(&noise)?;
            let t_j = &timesteps[j * mb..(j + 1) * mb];
            let x_t = self.diffusion.q_sample(&x0_j, t_j, &noise_j)?;
            let t_model: Vec<f32> = t_j.iter().map(|&i| self.diffusion.timestep_map[i] as f32).collect();
            let t_model = Tensor::from_vec(t_model, mb, &device)?;
            let cond_j = cond.narrow(j * mb, mb)?;
            let weight = mb as f64 / b as f64;
            let mut parts = (None, None);
            let diffusion = &self.diffusion;
            let mut loss_fn = |out: &Tensor| -> Result<Tensor> {
                let out = if channels_first {
                    out.permute((0, 2, 1, 3, 4))?
                } else {
                    out.clone()
                };
                let losses = diffusion.training_losses(&out.to_dtype(pd)?, &x0_j, t_j, &noise_j)?;
                let mean = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?) };
                parts = (
                    losses.mse.as_ref().map(mean).transpose()?,
                    losses.vb.as_ref().map(mean).transpose()?,
                );
                Ok((losses.loss.mean_all()? * (weight * scale_factor))?)
            };
            let (loss, grads) = self.model.denoiser().loss_and_grads(
                &to_model(&x_t.to_dtype(self.model.dtype())?)?.contiguous()?,
                &t_model,
                &cond_j,
                self.opts.gradient_checkpointing,
                &mut loss_fn,
            )?;
            loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? / scale_factor;
            let add = |sum: Option<f64>, v: Option<f64>| v.map(|v| sum.unwrap_or(0.0) + v * weight);
            mse_sum = add(mse_sum, parts.0);
            vb_sum = add(vb_sum, parts.1);
            let grads: Vec<Tensor> = grads
                .iter()
                .map(|g| g.to_dtype(pd))
                .collect::<candle_core::Result<_>>()?;
            acc = Some(match acc {
                None => grads,
                Some(prev) => prev
                    .iter()
                    .zip(&grads)
                    .map(|(a, g)| a + g)
                    .collect::<candle_core::Result<_>>()?,
            });
        }
        Ok(BatchGradients {
            grads: acc.expect("at least one micro-batch"),
            loss: loss_sum,
            mse: mse_sum,
            vb: vb_sum,
            loss_scale: scale_factor,
        })
    }

    /// One optimiser step from the gradients of [`Trainer::forward_backward`] (averaged over processes), in the
    /// order of [`Trainer::parameter_names`], with the losses they come from (for the statistics and the
    /// non-finite check; averaged as well).
    pub fn apply_gradient_list(
        &mut self,
        grads: &[Tensor],
        loss: Option<f64>,
        mse: Option<f64>,
        vb: Option<f64>,
    ) -> Result<StepStats> {
        if grads.len() != self.vars.len() {
            return Err(value_error(
                "grads",
                format!("{} gradients, one per trainable parameter", self.vars.len()),
                grads.len(),
            ));
        }
        for ((name, var), g) in self.names.iter().zip(&self.vars).zip(grads) {
            if g.dims() != var.dims() {
                return Err(value_error(
                    &format!("grads[{name:?}]"),
                    format!("shape {:?}", var.dims()),
                    format!("shape {:?}", g.dims()),
                ));
            }
        }
        self.finish(grads, loss, mse, vb, 1.0)
    }

    /// One optimiser step from gradients computed elsewhere (e.g. a custom loss), by parameter name: the same
    /// clipping, AdamW with the scheduled learning rate, EMA and non-finite handling as [`Trainer::step`].
    pub fn apply_gradients(&mut self, grads: &HashMap<String, Tensor>) -> Result<StepStats> {
        let mut missing = Vec::new();
        let mut ordered = Vec::with_capacity(self.vars.len());
        for (name, var) in self.names.iter().zip(&self.vars) {
            match grads.get(name) {
                None => missing.push(name.clone()),
                Some(g) if g.dims() != var.dims() => {
                    return Err(value_error(
                        &format!("grads[{name:?}]"),
                        format!("shape {:?}", var.dims()),
                        format!("shape {:?}", g.dims()),
                    ))
                }
                Some(g) if !g.dtype().is_float() => {
                    return Err(LatteError::Type(format!(
                        "grads[{name:?}]: expected a floating-point array, got {:?}",
                        g.dtype()
                    )))
                }
                Some(g) => ordered.push(g.clone()),
            }
        }
        let unexpected: Vec<_> = grads.keys().filter(|k| !self.names.contains(k)).cloned().collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(LatteError::Value(format!(
                "grads: expected one gradient per trainable parameter; missing {missing:?}, unexpected {unexpected:?}"
            )));
        }
        self.finish(&ordered, None, None, None, 1.0)
    }

    /// Checks the summed (scaled) gradients and applies the optimiser step when they are finite.
    fn finish(
        &mut self,
        grads: &[Tensor],
        loss: Option<f64>,
        mse: Option<f64>,
        vb: Option<f64>,
        scale_factor: f64,
    ) -> Result<StepStats> {
        let loss_value = loss.unwrap_or(0.0);
        let next = self.step.checked_add(1).ok_or_else(|| {
            LatteError::Value(format!(
                "the step counter is at its maximum ({}); no step can follow",
                self.step
            ))
        })?;
        let lr = self.opts.lr_at(next);
        let clip = self.opts.grad_clip.filter(|_| self.step >= self.opts.clip_start_step);
        let pending = Pending {
            loss: loss_value,
            loss_scale: scale_factor,
            clip,
            step: next,
            lr,
        };
        // Forwards on clones of the model (other threads) see the weights before this step or after it.
        let _writing = self.model.denoiser().store().write_access();
        let (norm, skip) = match &mut self.state {
            State::F32(buf) => buf.apply(&self.vars, &self.opts, grads, pending)?,
            State::F64(buf) => buf.apply(&self.vars, &self.opts, grads, pending)?,
            State::Device(buf) => buf.apply(&self.vars, &self.opts, grads, pending)?,
        };
        let skipped = skip != Skip::No;
        if skipped {
            match &mut self.loss_scale {
                // An f16 overflow with a finite loss: back off and retry at a smaller scale.
                Some(s) if loss_value.is_finite() && skip == Skip::NonFinite => {
                    s.scale /= 2.0;
                    s.clean_steps = 0;
                }
                _ if self.opts.skip_nonfinite => {}
                _ if skip == Skip::Overflow => {
                    return Err(LatteError::Value(format!(
                        "optimiser step {next} would make parameters non-finite (learning rate {lr}, gradient norm \
                         {norm}); the weights are unchanged. Lower lr or weight_decay, or pass skip_nonfinite=True \
                         to skip such steps"
                    )))
                }
                _ => {
                    return Err(LatteError::Value(format!(
                        "non-finite {} at optimiser step {next} (loss {loss_value}, gradient norm {norm}); the \
                         weights are unchanged. Lower the learning rate, check the data, or pass \
                         skip_nonfinite=True to skip such steps",
                        if loss_value.is_finite() { "gradient" } else { "loss" }
                    )))
                }
            }
            self.skipped_steps = self.skipped_steps.saturating_add(1);
        } else {
            self.step = next;
            if let Some(s) = &mut self.loss_scale {
                s.clean_steps += 1;
                if s.clean_steps >= GROWTH_INTERVAL {
                    s.scale *= 2.0;
                    s.clean_steps = 0;
                }
            }
        }
        Ok(StepStats {
            loss: loss.unwrap_or(f64::NAN),
            mse,
            vb,
            grad_norm: norm,
            lr,
            step: self.step,
            skipped,
            skipped_steps: self.skipped_steps,
            loss_scale: self.loss_scale.as_ref().map(|s| s.scale),
        })
    }

    /// The EMA weights as a model (in the optimiser's precision: f32, or f64 for an f64 model).
    pub fn ema_model(&self) -> Result<AnyModel> {
        let state = self.ema_state_dict()?;
        self.model
            .with_state(&state.into_iter().collect(), state_dtype(self.model.dtype()))
    }

    /// The EMA of every trainable parameter plus the model's fixed tables, by name.
    pub fn ema_state_dict(&self) -> Result<std::collections::BTreeMap<String, Tensor>> {
        let mut state = self.model.state_dict();
        let pd = state_dtype(self.model.dtype());
        for (i, (name, var)) in self.names.iter().zip(&self.vars).enumerate() {
            let t = match &self.state {
                State::F32(b) => Tensor::from_slice(&b.ema[i], var.shape(), var.device())?,
                State::F64(b) => Tensor::from_slice(&b.ema[i], var.shape(), var.device())?,
                State::Device(b) => b.part(&b.ema, i, var.dims())?,
            };
            state.insert(name.clone(), t);
        }
        for t in state.values_mut() {
            *t = t.to_dtype(pd)?;
        }
        Ok(state)
    }
}
