//! The model interface every Latte denoiser implements ([`crate::LatteModel`], [`crate::LatteT2VModel`], and any
//! future one): a forward pass over noisy latents, timesteps and a [`Condition`], which output channels are the
//! prediction and which the variance, the null condition of classifier-free guidance, and the loss-and-gradients
//! call the trainer drives. The sampling loop ([`crate::diffusion::sample`]) and the trainer see models only
//! through it.

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{value_error, LatteError, Result};
use crate::weights::ParamStore;

/// What a denoiser is conditioned on.
#[derive(Clone, Debug)]
pub enum Condition {
    /// Nothing: an unconditional model.
    Unconditional,
    /// Class labels `(B,)` and, for image-video joint clips, the image frames' labels `(B, use_image_num)`.
    Classes {
        labels: Tensor,
        image_labels: Option<Tensor>,
    },
    /// Caption features `(B, S, caption_channels)` from the text encoder, with their 0/1 padding mask `(B, S)`.
    Text { embeddings: Tensor, mask: Option<Tensor> },
}

impl Condition {
    /// What the condition is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unconditional => "no condition",
            Self::Classes { .. } => "class labels",
            Self::Text { .. } => "text embeddings",
        }
    }

    /// Clips `start..start + len` of a batch's condition (a micro-batch's).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Condition> {
        let cut = |t: &Tensor| t.narrow(0, start, len);
        Ok(match self {
            Self::Unconditional => Self::Unconditional,
            Self::Classes { labels, image_labels } => Self::Classes {
                labels: cut(labels)?,
                image_labels: image_labels.as_ref().map(cut).transpose()?,
            },
            Self::Text { embeddings, mask } => Self::Text {
                embeddings: cut(embeddings)?,
                mask: mask.as_ref().map(cut).transpose()?,
            },
        })
    }

    /// The condition of a guided pass: this batch's, then `other`'s (the unconditional branch).
    pub fn concat(&self, other: &Condition) -> Result<Condition> {
        let cat = |a: &Tensor, b: &Tensor, arg: &str| -> Result<Tensor> {
            if a.dims()[1..] != b.dims()[1..] {
                return Err(value_error(
                    arg,
                    format!("the same shape per sample as the conditional branch's {:?}", a.dims()),
                    format!("{:?}", b.dims()),
                ));
            }
            Ok(Tensor::cat(&[a, &b.to_dtype(a.dtype())?.to_device(a.device())?], 0)?)
        };
        let both = |a: &Option<Tensor>, b: &Option<Tensor>, arg: &str| -> Result<Option<Tensor>> {
            match (a, b) {
                (Some(a), Some(b)) => Ok(Some(cat(a, b, arg)?)),
                (None, None) => Ok(None),
                (Some(a), None) | (None, Some(a)) => Err(LatteError::Value(format!(
                    "{arg}: given for one branch of classifier-free guidance only (shape {:?})",
                    a.dims()
                ))),
            }
        };
        match (self, other) {
            (Self::Unconditional, Self::Unconditional) => Ok(Self::Unconditional),
            (
                Self::Classes { labels, image_labels },
                Self::Classes {
                    labels: l2,
                    image_labels: i2,
                },
            ) => Ok(Self::Classes {
                labels: cat(labels, l2, "labels")?,
                image_labels: both(image_labels, i2, "image_labels")?,
            }),
            (
                Self::Text { embeddings, mask },
                Self::Text {
                    embeddings: e2,
                    mask: m2,
                },
            ) => Ok(Self::Text {
                embeddings: cat(embeddings, e2, "negative_prompt_embeds")?,
                mask: both(mask, m2, "encoder_attention_mask")?,
            }),
            (a, b) => Err(LatteError::Value(format!(
                "guidance: the unconditional branch has {}, the conditional one {}",
                b.kind(),
                a.kind()
            ))),
        }
    }
}

/// Where frames and channels sit in a model's latents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatentLayout {
    /// `(B, F, C, H, W)`: Latte's datasets, checkpoints and official code.
    FramesFirst,
    /// `(B, C, F, H, W)`: diffusers' video models (Latte-1).
    ChannelsFirst,
}

impl LatentLayout {
    /// The channel axis.
    pub fn channel_axis(self) -> usize {
        match self {
            Self::FramesFirst => 2,
            Self::ChannelsFirst => 1,
        }
    }
}

/// How classifier-free guidance mixes the two branches' outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuidanceRule {
    /// The official Latte `forward_with_cfg`: the prediction channels are guided, the variance values come
    /// from the conditional branch.
    PredictionChannels,
    /// diffusers' pipelines: every output channel is guided.
    AllChannels,
}

/// Classifier-free guidance of `out`, the model's output over a batch of [conditional | unconditional]
/// halves: `uncond + scale · (cond − uncond)` on the channels `rule` names. Returns one half.
pub fn apply_guidance(
    out: &Tensor,
    scale: f64,
    rule: GuidanceRule,
    layout: LatentLayout,
    latent_channels: usize,
) -> Result<Tensor> {
    let half = out.dim(0)? / 2;
    let (cond, uncond) = (out.narrow(0, 0, half)?, out.narrow(0, half, half)?);
    let mix = |c: &Tensor, u: &Tensor| -> candle_core::Result<Tensor> { u + ((c - u)? * scale)? };
    let axis = layout.channel_axis();
    let channels = out.dim(axis)?;
    Ok(match rule {
        GuidanceRule::AllChannels => mix(&cond, &uncond)?,
        GuidanceRule::PredictionChannels if channels == latent_channels => mix(&cond, &uncond)?,
        GuidanceRule::PredictionChannels => {
            let c = latent_channels;
            let guided = mix(&cond.narrow(axis, 0, c)?, &uncond.narrow(axis, 0, c)?)?;
            Tensor::cat(&[&guided, &cond.narrow(axis, c, channels - c)?], axis)?
        }
    })
}

/// The loss a training step minimises, as a function of the model's output (the trainer's diffusion loss).
pub type LossFn<'a> = dyn FnMut(&Tensor) -> Result<Tensor> + 'a;

/// What an architecture fixes about a model's latents and output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenoiserSpec {
    pub layout: LatentLayout,
    /// Channels of the latents; the first this many output channels are the prediction (noise, x₀ or v).
    pub latent_channels: usize,
    /// Output channels: the prediction, then a learned variance's values.
    pub output_channels: usize,
    pub guidance_rule: GuidanceRule,
}

/// Whether every value of `t` is finite: `t · 0` is 0 for a finite value and NaN for NaN or ±∞, so its sum is NaN
/// exactly when one is not (no overflow, whatever the magnitudes).
pub fn all_finite(t: &Tensor) -> Result<bool> {
    if !t.dtype().is_float() {
        return Ok(true);
    }
    let probe = (t * 0.0)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(probe == 0.0)
}

/// `x` (named `arg`) in `dtype` on `device`, refused when a value is NaN or infinite after the conversion (a
/// float64 1e300 is infinite in float32).
pub fn to_model_finite(x: &Tensor, arg: &str, dtype: DType, device: &Device) -> Result<Tensor> {
    let converted = x.to_dtype(dtype)?.to_device(device)?;
    if !all_finite(&converted)? {
        let why = if all_finite(x)? {
            format!(" (values beyond the range of {dtype:?})")
        } else {
            String::new()
        };
        return Err(LatteError::Value(format!(
            "{arg}: expected finite values, got NaN or infinity{why}"
        )));
    }
    Ok(converted)
}

/// Refuses a model output with NaN or infinity (from finite, checked inputs: the activations overflowed).
pub fn check_output(out: &Tensor) -> Result<()> {
    if !all_finite(out)? {
        return Err(LatteError::Value(format!(
            "the model's output has NaN or infinity although its inputs are finite: its activations overflowed \
             {:?}; inputs of this magnitude (or these weights) are out of the model's range",
            out.dtype()
        )));
    }
    Ok(())
}

/// A Latte denoiser: what the sampling loop and the trainer need of a model.
///
/// Inputs are checked once by the `check_*` methods (which also move them to the model's device and dtype);
/// [`Denoiser::denoise`] then runs the network on them without checking again, so a sampling loop validates its
/// condition once, not at every step. [`Denoiser::forward`] does both.
pub trait Denoiser: Send + Sync {
    fn spec(&self) -> DenoiserSpec;
    /// The model's parameters.
    fn store(&self) -> &ParamStore;
    fn device(&self) -> &Device {
        self.store().device()
    }
    /// The parameters' dtype.
    fn dtype(&self) -> DType {
        self.store().dtype()
    }
    /// The shape of `batch` latents at the model's native size (the starting noise of a sampling run).
    fn latent_shape(&self, batch: usize) -> Vec<usize>;
    /// The condition classifier-free guidance contrasts `cond` with: the null class of a class-conditional model.
    /// A text model has none of its own (the caller encodes the negative prompt).
    fn null_condition(&self, cond: &Condition) -> Result<Condition>;
    /// Checks latents (shape, dtype, finite values) and returns them on the device in the model's dtype.
    fn check_latents(&self, x: &Tensor) -> Result<Tensor>;
    /// A lower bound of the values one pass over latents of shape `dims` holds at its peak (with `grad`, the
    /// activations a backward pass keeps): tokens × width for a few live tensors, times the blocks when
    /// training. Used only to refuse a workload that cannot fit before it starts; never an upper bound.
    fn activation_elements(&self, dims: &[usize], grad: bool) -> u128;
    /// Refuses, as [`LatteError::Memory`] with the estimate, a pass over latents of shape `dims` whose
    /// [`Denoiser::activation_elements`] are more than the memory available.
    fn check_memory(&self, dims: &[usize], grad: bool) -> Result<()> {
        let bytes = self.activation_elements(dims, grad) * 4;
        let what = if grad { "a training pass" } else { "a forward pass" };
        crate::limits::ensure_fits(bytes, &format!("{what} on latents of shape {dims:?}"))
    }
    /// Checks timesteps for `batch` latents and returns them as f32 on the device.
    fn check_timesteps(&self, t: &Tensor, batch: usize) -> Result<Tensor>;
    /// Checks `cond` for latents of shape `x_dims` and returns it on the device.
    fn check_condition(&self, cond: &Condition, x_dims: &[usize]) -> Result<Condition>;
    /// The network on checked inputs; with `grad`, the pass keeps its autograd graph.
    fn denoise(&self, x: &Tensor, t: &Tensor, cond: &Condition, grad: bool) -> Result<Tensor>;
    /// The trainable parameters, sorted by name.
    fn trainable_vars(&self) -> Vec<(String, Var)>;
    /// The scalar `loss_fn(model(x, t, cond))` and the gradient of every trainable parameter, in the order of
    /// [`Denoiser::trainable_vars`] (zero for a parameter the loss does not reach), on checked inputs. With
    /// `checkpoint`, activations are recomputed in the backward pass instead of stored.
    fn loss_and_grads(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Condition,
        checkpoint: bool,
        loss_fn: &mut LossFn<'_>,
    ) -> Result<(Tensor, Vec<Tensor>)>;

    /// Every input check of one pass (with `grad`, of a training pass): latents, memory, timesteps, condition.
    fn check_inputs(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Condition,
        grad: bool,
    ) -> Result<(Tensor, Tensor, Condition)> {
        let x = self.check_latents(x)?;
        self.check_memory(x.dims(), grad)?;
        let t = self.check_timesteps(t, x.dim(0)?)?;
        let cond = self.check_condition(cond, x.dims())?;
        Ok((x, t, cond))
    }

    /// Checked forward pass without gradients.
    fn forward(&self, x: &Tensor, t: &Tensor, cond: &Condition) -> Result<Tensor> {
        let (x, t, cond) = self.check_inputs(x, t, cond, false)?;
        let out = self.denoise(&x, &t, &cond, false)?;
        check_output(&out)?;
        Ok(out)
    }

    /// Checked forward pass that keeps the autograd graph (for gradient checks and custom losses).
    fn forward_train(&self, x: &Tensor, t: &Tensor, cond: &Condition) -> Result<Tensor> {
        let (x, t, cond) = self.check_inputs(x, t, cond, true)?;
        self.denoise(&x, &t, &cond, true)
    }
}

/// A loss function as candle code calls it, inside a forward/backward written with candle's error type.
pub(crate) type CandleLossFn<'a> = dyn FnMut(&Tensor) -> candle_core::Result<Tensor> + 'a;

/// The loss and the gradient of each of `params` (in order, zeros where the loss does not reach), computed by
/// `body` from the loss function. The loss function's own error (e.g. a bad label) comes out as it was instead of
/// the candle error autograd wraps it in; the loss must be a scalar.
pub(crate) fn loss_and_grads_by(
    params: &[Tensor],
    loss_fn: &mut LossFn<'_>,
    body: impl FnOnce(&mut CandleLossFn<'_>) -> candle_core::Result<(Tensor, Vec<Option<Tensor>>)>,
) -> Result<(Tensor, Vec<Tensor>)> {
    // Gradients flow through the f32 layers only: bf16 autocast is an inference setting.
    let _f32 = crate::nn::autocast::suspend();
    let (loss, grads) = with_loss_fn(loss_fn, body)?;
    Ok((loss, complete_grads(grads, params)?))
}

/// The tensors of named variables (a model's parameters, to take gradients of).
pub(crate) fn param_tensors(vars: &[(String, Var)]) -> Vec<Tensor> {
    vars.iter().map(|(_, v)| v.as_tensor().clone()).collect()
}

/// [`loss_and_grads_by`] with one plain backward pass through `forward`'s output.
pub(crate) fn backprop(
    params: &[Tensor],
    loss_fn: &mut LossFn<'_>,
    forward: impl FnOnce() -> candle_core::Result<Tensor>,
) -> Result<(Tensor, Vec<Tensor>)> {
    loss_and_grads_by(params, loss_fn, |loss_fn| {
        let loss = loss_fn(&forward()?)?;
        let store = loss.backward()?;
        Ok((loss.detach(), params.iter().map(|p| store.get(p).cloned()).collect()))
    })
}

fn with_loss_fn<T>(
    loss_fn: &mut LossFn<'_>,
    body: impl FnOnce(&mut CandleLossFn<'_>) -> candle_core::Result<T>,
) -> Result<T> {
    let mut failure = None;
    let result = body(&mut |out: &Tensor| {
        let loss = loss_fn(out).map_err(|e| {
            let msg = e.to_string();
            failure = Some(e);
            candle_core::Error::Msg(msg)
        })?;
        loss.dims0()
            .map_err(|_| candle_core::Error::Msg("loss_fn: expected a scalar loss".into()))?;
        Ok(loss)
    });
    match (result, failure) {
        (Ok(r), _) => Ok(r),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(e.into()),
    }
}

/// Gradients in the order of `params`, zeros for those the loss did not reach.
fn complete_grads(grads: Vec<Option<Tensor>>, params: &[Tensor]) -> Result<Vec<Tensor>> {
    Ok(grads
        .into_iter()
        .zip(params)
        .map(|(g, p)| match g {
            Some(g) => Ok(g),
            None => p.zeros_like(),
        })
        .collect::<candle_core::Result<_>>()?)
}

/// A forward pass that keeps its autograd graph for one backward pass with a given output gradient (a
/// vector-Jacobian product): what an autograd engine outside the crate (torch's) calls in its forward and backward.
pub struct Graph {
    out: Tensor,
    input: Option<Var>,
    params: Vec<Tensor>,
}

impl Graph {
    /// The network on checked inputs, keeping the graph; with `input_grad`, also towards the latents `x`. The
    /// gradients are those of the trainable parameters, in the order of [`Denoiser::trainable_vars`].
    pub fn forward(model: &dyn Denoiser, x: &Tensor, t: &Tensor, cond: &Condition, input_grad: bool) -> Result<Self> {
        // Gradients flow through the f32 layers only, as in the trainer.
        let _f32 = crate::nn::autocast::suspend();
        let (x, t, cond) = model.check_inputs(x, t, cond, true)?;
        let input = if input_grad { Some(Var::from_tensor(&x)?) } else { None };
        let x = input.as_ref().map_or(x, |v| v.as_tensor().clone());
        let out = model.denoise(&x, &t, &cond, true)?;
        check_output(&out)?;
        Ok(Self {
            out,
            input,
            params: param_tensors(&model.trainable_vars()),
        })
    }

    /// The output (no graph attached).
    pub fn output(&self) -> Tensor {
        self.out.detach()
    }

    /// The gradients of `sum(output · grad_output)`: towards the latents (when asked for) and every trainable
    /// parameter (zeros where the output does not depend on one). The graph stays (for another backward pass)
    /// until it is dropped.
    pub fn backward(&self, grad_output: &Tensor) -> Result<(Option<Tensor>, Vec<Tensor>)> {
        if grad_output.dims() != self.out.dims() {
            return Err(value_error(
                "grad_output",
                format!("shape {:?} (the output's)", self.out.dims()),
                format!("shape {:?}", grad_output.dims()),
            ));
        }
        let g = to_model_finite(grad_output, "grad_output", self.out.dtype(), self.out.device())?;
        let store = (&self.out * &g)?.sum_all()?.backward()?;
        let input = match &self.input {
            Some(v) => Some(match store.get(v.as_tensor()) {
                Some(g) => g.clone(),
                None => v.as_tensor().zeros_like()?,
            }),
            None => None,
        };
        let grads = complete_grads(
            self.params.iter().map(|p| store.get(p).cloned()).collect(),
            &self.params,
        )?;
        Ok((input, grads))
    }
}
