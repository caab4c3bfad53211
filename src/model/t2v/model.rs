//! [`LatteT2VModel`]: the text-to-video transformer with its parameters, loaded from diffusers folders.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use candle_core::{DType, Device, Tensor, Var};

use super::config::LatteT2VConfig;
use super::inputs;
use super::network::LatteT2V;
use crate::error::{LatteError, Result};
use crate::model::backprop::{backprop, loss_and_grads_by, param_tensors};
use crate::model::denoiser::LockedPass;
use crate::model::open::wrong_kind;
use crate::model::teacache_fit::TeaCacheFit;
use crate::model::{open_model, AnyModel, ModelKind, OpenOptions};
use crate::model::{Condition, Denoiser, DenoiserSpec, GuidanceRule, LatentLayout, LossFn, StagedPass};
use crate::nn::attention::{score_elements, AttentionKernel, AttentionShape};
use crate::weights::diffusers::{read_folder, DIFFUSERS_WEIGHTS};
use crate::weights::{LoadPolicy, ParamStore};

/// A text-to-video Latte transformer with its parameters. Clones share them.
#[derive(Clone)]
pub struct LatteT2VModel {
    cfg: LatteT2VConfig,
    store: ParamStore,
    network: Arc<LatteT2V>,
    /// Whether the temporal blocks run (diffusers' `enable_temporal_attentions`).
    temporal_attention: bool,
    /// TeaCache coefficients fitted for this model (its `teacache.json`), if any; shared by clones, as the
    /// parameters are.
    teacache: Arc<RwLock<Option<TeaCacheFit>>>,
}

impl LatteT2VModel {
    /// The model with every parameter zero (to be loaded into).
    pub fn uninitialised(cfg: &LatteT2VConfig, device: &Device, dtype: DType) -> Result<Self> {
        crate::runtime::configure_runtime();
        cfg.validate()?;
        let store = ParamStore::new(device, dtype)?;
        let network = store.build(false, |vb| LatteT2V::new(cfg, vb))?;
        Ok(Self {
            cfg: cfg.clone(),
            store,
            network: Arc::new(network),
            temporal_attention: true,
            teacache: Arc::default(),
        })
    }

    /// A randomly initialised model: every parameter N(0, 0.02²) from `seed` (for tests and demos; not a
    /// training recipe).
    pub fn new(cfg: &LatteT2VConfig, device: &Device, dtype: DType, seed: u64) -> Result<Self> {
        let me = Self::uninitialised(cfg, device, dtype)?;
        let mut rng = crate::rng::Generator::new(seed);
        me.store
            .initialise(|_, var| Ok((rng.randn(var.dims(), var.dtype(), &Device::Cpu)? * 0.02)?))?;
        Ok(me)
    }

    /// A model initialised for training from scratch, PixArt-α's recipe ([`crate::nn::init::init_t2v_weights`]:
    /// xavier linears, silent cross-attention outputs and output projection).
    pub fn for_training(cfg: &LatteT2VConfig, device: &Device, dtype: DType, seed: u64) -> Result<Self> {
        let me = Self::uninitialised(cfg, device, dtype)?;
        crate::nn::init::init_t2v_weights(&me.store, seed)?;
        Ok(me)
    }

    /// Loads a diffusers `transformer/` folder: `config.json` and `diffusion_pytorch_model.safetensors`, or its
    /// shards listed in `diffusion_pytorch_model.safetensors.index.json`. `dtype` None keeps the file's.
    pub fn from_pretrained(dir: &Path, device: &Device, dtype: Option<DType>) -> Result<Self> {
        let folder = read_folder::<LatteT2VConfig>(dir, "a diffusers transformer/ folder", DIFFUSERS_WEIGHTS)?;
        folder
            .config
            .validate()
            .map_err(|e| LatteError::Config(format!("{}: {e}", dir.join("config.json").display())))?;
        let dtype = dtype.unwrap_or_else(|| folder.tensors.values().next().map_or(DType::F32, |t| t.dtype()));
        let model = Self::uninitialised(&folder.config, device, dtype)?;
        model.load_state_dict(&folder.tensors, Some(&folder.source))?;
        model.set_teacache_fit(crate::model::teacache_fit::read_fit_beside(dir)?);
        Ok(model)
    }

    /// A trained text-to-video model (see [`crate::model::open_model`]): a latte-rs trainer checkpoint folder (its
    /// EMA weights when `use_ema`, each file verified against the manifest), a model file a trainer wrote, or a
    /// diffusers `transformer/` folder (or the pipeline folder above it).
    pub fn from_checkpoint(path: &Path, use_ema: bool, device: &Device) -> Result<Self> {
        let opts = OpenOptions {
            use_ema,
            kind: Some(ModelKind::Text),
            device: device.clone(),
            ..OpenOptions::default()
        };
        match open_model(path, &opts)?.model {
            AnyModel::Text(m) => Ok(m),
            other => Err(wrong_kind(path, ModelKind::Text, other.kind())),
        }
    }

    /// The same model (sharing its parameters) with the temporal blocks on or off.
    pub fn with_temporal_attention(&self, enabled: bool) -> Self {
        Self {
            temporal_attention: enabled,
            ..self.clone()
        }
    }

    pub fn config(&self) -> &LatteT2VConfig {
        &self.cfg
    }

    /// Sets (or clears) the TeaCache polynomial this model carries (see [`crate::cache`]).
    pub fn set_teacache_fit(&self, fit: Option<TeaCacheFit>) {
        *self.teacache.write().unwrap_or_else(PoisonError::into_inner) = fit;
    }

    pub fn num_parameters(&self) -> usize {
        self.store.num_values(|_| true)
    }

    /// Every parameter by its diffusers name.
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.store.state_dict()
    }

    /// Loads parameters by name, strictly: every missing, unexpected or mis-shaped key is listed; `source`
    /// names the file in the message.
    pub fn load_state_dict(&self, state: &HashMap<String, Tensor>, source: Option<&str>) -> Result<()> {
        self.store
            .load(state, LoadPolicy::STRICT, source, "LatteTransformer3DModel config")
            .map(|_| ())
    }
}

impl LatteT2VModel {
    /// The attention scores of `groups` sequences of `queries` attending to `keys` in every head (see
    /// [`crate::nn::attention::score_elements`]).
    fn score_elements(&self, groups: usize, queries: usize, keys: usize, grad: bool) -> u128 {
        let shape = AttentionShape {
            groups,
            heads: self.cfg.num_attention_heads,
            queries,
            keys,
            head_dim: self.cfg.attention_head_dim,
        };
        score_elements(AttentionKernel::Auto, self.device(), self.dtype(), shape, grad)
    }

    /// Refuses, as [`LatteError::Memory`], a pass whose caption (`caption_dims`, checked: (B, S, C) or (B, n,
    /// S, C)) makes it larger than the memory available: the projected caption is repeated for every frame and
    /// projected to keys and values in every layer, and the cross-attention scores are L × S per (frame, head);
    /// on top of the latents' own activations (without gradients: a lower bound for training too).
    pub(crate) fn check_caption_memory(&self, x_dims: &[usize], caption_dims: &[usize]) -> Result<()> {
        let (&[batch, _, frames, height, width], Some(&len)) = (x_dims, caption_dims.iter().rev().nth(1)) else {
            return Ok(());
        };
        let c = &self.cfg;
        let patches = (height / c.patch_size).saturating_mul(width / c.patch_size);
        let groups = batch.saturating_mul(frames);
        let captions = (groups as u128)
            .saturating_mul(len as u128)
            .saturating_mul(c.inner_dim() as u128)
            .saturating_mul(3);
        let total = self
            .activation_elements(x_dims, false)
            .saturating_add(captions)
            .saturating_add(self.score_elements(groups, patches, len, false));
        crate::limits::ensure_fits(
            total.saturating_mul(self.dtype().size_in_bytes().max(4) as u128),
            &format!(
                "a forward pass with encoder_hidden_states of shape {caption_dims:?} on latents of shape {x_dims:?}"
            ),
        )
    }
}

impl Denoiser for LatteT2VModel {
    fn spec(&self) -> DenoiserSpec {
        DenoiserSpec {
            layout: LatentLayout::ChannelsFirst,
            latent_channels: self.cfg.in_channels,
            output_channels: self.cfg.out_channels(),
            guidance_rule: GuidanceRule::AllChannels,
        }
    }

    fn store(&self) -> &ParamStore {
        &self.store
    }

    fn latent_shape(&self, batch: usize) -> Vec<usize> {
        let c = &self.cfg;
        vec![batch, c.in_channels, c.video_length, c.sample_size, c.sample_size]
    }

    /// Tokens × width for the live activations, plus the scores of the larger of the spatial self-attention
    /// (the L = H/p × W/p patches of each frame: L² per head, however unequal H and W) and the temporal one (the
    /// video's frames at each patch: frames² per head). The caption's share is checked with the caption (see
    /// [`LatteT2VModel::check_caption_memory`]).
    fn activation_elements(&self, dims: &[usize], grad: bool) -> u128 {
        let c = &self.cfg;
        let numel = dims.iter().fold(1u128, |a, &d| a.saturating_mul(d as u128));
        let tokens = numel / (c.in_channels.max(1) * c.patch_size * c.patch_size) as u128;
        let live = if grad { 2 * 2 * c.num_layers as u128 + 6 } else { 6 };
        let activations = tokens.saturating_mul(c.inner_dim() as u128).saturating_mul(live);
        let &[batch, _, frames, height, width] = dims else {
            return activations;
        };
        let patches = (height / c.patch_size).saturating_mul(width / c.patch_size);
        let spatial = self.score_elements(batch.saturating_mul(frames), patches, patches, grad);
        // Image frames after the video's (joint clips) are left out of the temporal blocks.
        let video = if frames == 1 { 1 } else { frames.min(c.video_length) };
        let temporal = if self.temporal_attention {
            self.score_elements(batch.saturating_mul(patches), video, video, grad)
        } else {
            0
        };
        activations.saturating_add(spatial.max(temporal))
    }

    fn null_condition(&self, cond: &Condition) -> Result<Condition> {
        Err(match cond {
            Condition::Text { .. } => LatteError::Value(
                "negative_prompt_embeds: a text model's unconditional branch is the negative prompt's T5 features; \
                 pass them (the pipeline encodes the negative prompt, \"\" by default)"
                    .into(),
            ),
            other => self.refuse(other),
        })
    }

    fn check_latents(&self, x: &Tensor) -> Result<Tensor> {
        inputs::check_latents(&self.cfg, x, self.dtype(), self.device())
    }

    fn check_timesteps(&self, t: &Tensor, batch: usize) -> Result<Tensor> {
        inputs::check_timesteps(&self.cfg, t, batch, self.device())
    }

    fn frames_per_timestep(&self) -> Result<usize> {
        Ok(1)
    }

    fn check_condition(&self, cond: &Condition, x_dims: &[usize]) -> Result<Condition> {
        let Condition::Text { embeddings, mask } = cond else {
            return Err(self.refuse(cond));
        };
        let checked = inputs::check_caption(
            &self.cfg,
            embeddings,
            mask.as_ref(),
            x_dims,
            self.dtype(),
            self.device(),
        )?;
        self.check_caption_memory(x_dims, embeddings.dims())?;
        Ok(checked)
    }

    fn denoise(&self, x: &Tensor, t: &Tensor, cond: &Condition, grad: bool) -> Result<Tensor> {
        let _reading = self.store.read_access();
        let caption = caption_of(cond)?;
        let out = self.network.forward(x, t, caption, self.temporal_attention, grad)?;
        // Without a graph to keep, the output must not hold the activations its ops reference.
        Ok(if grad { out } else { out.detach() })
    }

    fn staged<'a>(&'a self, x: &Tensor, t: &Tensor, cond: &Condition) -> Result<Box<dyn StagedPass + 'a>> {
        let _reading = self.store.read_access();
        let caption = caption_of(cond)?;
        let pass = self.network.staged(x, t, caption, self.temporal_attention)?;
        Ok(Box::new(LockedPass { _reading, pass }))
    }

    fn teacache_fit(&self) -> Option<TeaCacheFit> {
        self.teacache.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.store.vars(|_| true)
    }

    fn loss_and_grads(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Condition,
        checkpoint: bool,
        loss_fn: &mut LossFn<'_>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let caption = caption_of(cond)?;
        let params = param_tensors(&self.trainable_vars());
        if checkpoint {
            return loss_and_grads_by(&params, loss_fn, |loss_fn| {
                self.network
                    .loss_and_grads_checkpointed(x, t, caption, self.temporal_attention, &params, loss_fn)
            });
        }
        backprop(&params, loss_fn, || {
            self.network.forward(x, t, caption, self.temporal_attention, true)
        })
    }
}

impl LatteT2VModel {
    fn refuse(&self, cond: &Condition) -> LatteError {
        LatteError::Value(format!(
            "encoder_hidden_states: the text-to-video transformer is conditioned on a prompt's T5 features, got {}",
            cond.kind()
        ))
    }
}

fn caption_of(cond: &Condition) -> Result<&Tensor> {
    match cond {
        Condition::Text { embeddings, .. } => Ok(embeddings),
        other => Err(LatteError::Value(format!(
            "the text-to-video transformer takes text embeddings, got {}",
            other.kind()
        ))),
    }
}
