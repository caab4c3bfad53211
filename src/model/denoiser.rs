//! The model interface every Latte denoiser implements ([`crate::LatteModel`], [`crate::LatteT2VModel`], and any
//! future one): a forward pass over noisy latents, timesteps and a [`Condition`], which output channels are the
//! prediction and which the variance, the null condition of classifier-free guidance, and the loss-and-gradients
//! call the trainer drives. The sampling loop ([`crate::sampling::sample`]) and the trainer see models only
//! through it.

use candle_core::{DType, Device, Tensor, Var};

use super::attention_hook::AttentionHook;
use super::condition::Condition;
use super::guidance::GuidanceRule;
use crate::error::Result;
use crate::finite::check_output;
use crate::weights::ParamStore;

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

/// One forward pass split at the places caching policies look into ([`crate::cache`]): the embeddings (the
/// block stack's input and the first block's modulated input), the block stack (its attention layers through an
/// optional [`AttentionHook`]), and the final layer. Running `head(blocks(hidden(), None).0)` is the model's
/// forward pass, bit for bit; so is any hook that always computes.
pub trait StagedPass {
    /// The block stack's input: the embedded tokens.
    fn hidden(&self) -> &Tensor;
    /// The first block's modulated input, `modulate(norm1(hidden), shift, scale)` (the normalised tokens with
    /// token injection): what TeaCache watches.
    fn first_block_input(&self) -> Result<Tensor>;
    /// Blocks in the stack (what one pass of [`StagedPass::blocks`] runs).
    fn num_blocks(&self) -> usize;
    /// Attention layers of each kind in one pass of the stack, indexed by [`super::AttentionKind::index`].
    fn attention_sites(&self) -> [usize; 3];
    /// The block stack on `hidden`, each attention's output through `hook` when given: the stack's output and the
    /// number of blocks that ran.
    fn blocks(&self, hidden: &Tensor, hook: Option<&dyn AttentionHook>) -> Result<(Tensor, usize)>;
    /// The final layer on the stack's output: the model's output.
    fn head(&self, hidden: &Tensor) -> Result<Tensor>;
}

/// A model's staged pass holding its parameters' read lock while it lives (so that a load in another thread
/// cannot swap the weights between the stages of one pass).
pub(crate) struct LockedPass<'a, P> {
    pub(crate) _reading: std::sync::RwLockReadGuard<'a, ()>,
    pub(crate) pass: P,
}

impl<P: StagedPass> StagedPass for LockedPass<'_, P> {
    fn hidden(&self) -> &Tensor {
        self.pass.hidden()
    }
    fn first_block_input(&self) -> Result<Tensor> {
        self.pass.first_block_input()
    }
    fn num_blocks(&self) -> usize {
        self.pass.num_blocks()
    }
    fn attention_sites(&self) -> [usize; 3] {
        self.pass.attention_sites()
    }
    fn blocks(&self, hidden: &Tensor, hook: Option<&dyn AttentionHook>) -> Result<(Tensor, usize)> {
        self.pass.blocks(hidden, hook)
    }
    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.pass.head(hidden)
    }
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
        let bytes = self.activation_elements(dims, grad).saturating_mul(4);
        let what = if grad { "a training pass" } else { "a forward pass" };
        crate::limits::ensure_fits(bytes, &format!("{what} on latents of shape {dims:?}"))
    }
    /// Checks timesteps for `batch` latents and returns them as f32 on the device: (B,), one per clip, or, where
    /// [`Denoiser::frames_per_timestep`] allows, (B, frames / frames_per_timestep), one per frame.
    fn check_timesteps(&self, t: &Tensor, batch: usize) -> Result<Tensor>;
    /// Frames that share one timestep when a pass takes one timestep per frame (diagonal denoising, FIFO): 1, or a
    /// tubelet's frames; an error saying why when the model takes one timestep per clip only.
    fn frames_per_timestep(&self) -> Result<usize> {
        Err(crate::error::LatteError::Value(
            "this model takes one timestep per clip, not one per frame".into(),
        ))
    }
    /// Checks `cond` for latents of shape `x_dims` and returns it on the device.
    fn check_condition(&self, cond: &Condition, x_dims: &[usize]) -> Result<Condition>;
    /// The network on checked inputs; with `grad`, the pass keeps its autograd graph.
    fn denoise(&self, x: &Tensor, t: &Tensor, cond: &Condition, grad: bool) -> Result<Tensor>;
    /// The forward pass without gradients on checked inputs, split into stages (see [`StagedPass`]).
    fn staged<'a>(&'a self, x: &Tensor, t: &Tensor, cond: &Condition) -> Result<Box<dyn StagedPass + 'a>>;
    /// The TeaCache rescaling polynomial fitted for this model (its `teacache.json`), if it carries one.
    fn teacache_fit(&self) -> Option<crate::model::teacache_fit::TeaCacheFit> {
        None
    }
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
