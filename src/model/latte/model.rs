//! [`LatteModel`]: a Latte network with its parameters, the entry point for forward passes, state dicts and files.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use candle_core::{DType, Device, Tensor, Var};

use super::inputs;
use super::network::Latte;
use crate::config::{LatteConfig, Variant};
use crate::error::{value_error, LatteError, Result};
use crate::model::backprop::{backprop, loss_and_grads_by, param_tensors};
use crate::model::denoiser::LockedPass;
use crate::model::open::wrong_kind;
use crate::model::teacache_fit::TeaCacheFit;
use crate::model::{apply_guidance, Condition, Denoiser, DenoiserSpec, GuidanceRule, LatentLayout, LossFn, StagedPass};
use crate::model::{open_model, AnyModel, ModelKind, OpenOptions};
use crate::nn::attention::{score_elements, AttentionKernel, AttentionShape};
use crate::nn::init::{init_weights, is_trainable};
use crate::weights::format::{read_model_file, write_model_file};
use crate::weights::{CheckpointInfo, LoadPolicy, LoadReport, ParamStore};

/// A Latte model with its parameters.
///
/// Clones share their parameters (like two references to one `torch.nn.Module`): a trainer holding a clone
/// updates the weights every other clone sees.
#[derive(Clone)]
pub struct LatteModel {
    cfg: LatteConfig,
    store: ParamStore,
    network: Latte,
    /// TeaCache coefficients fitted for this model (its `teacache.json`), if any; shared by clones, as the
    /// parameters are.
    teacache: Arc<RwLock<Option<TeaCacheFit>>>,
}

impl LatteModel {
    /// A freshly initialised model (the DiT/Latte recipe, from `seed`).
    pub fn new(cfg: &LatteConfig, device: &Device, dtype: DType, seed: u64) -> Result<Self> {
        let me = Self::uninitialised(cfg, device, dtype)?;
        init_weights(&me.store, cfg, seed)?;
        Ok(me)
    }

    /// The model with every parameter zero (to be loaded into).
    pub fn uninitialised(cfg: &LatteConfig, device: &Device, dtype: DType) -> Result<Self> {
        crate::runtime::configure_runtime();
        cfg.validate()?;
        let store = ParamStore::new(device, dtype)?;
        let network = store.build(false, |vb| Latte::new(cfg, vb))?;
        Ok(Self {
            cfg: cfg.clone(),
            store,
            network,
            teacache: Arc::default(),
        })
    }

    pub fn config(&self) -> &LatteConfig {
        &self.cfg
    }

    /// Sets (or clears) the TeaCache polynomial this model carries (see [`crate::cache`]).
    pub fn set_teacache_fit(&self, fit: Option<TeaCacheFit>) {
        *self.teacache.write().unwrap_or_else(PoisonError::into_inner) = fit;
    }

    /// The network, for callers that checked their inputs themselves.
    pub fn network(&self) -> &Latte {
        &self.network
    }

    /// Number of parameters; with `trainable_only`, without the fixed sin-cos tables.
    pub fn num_parameters(&self, trainable_only: bool) -> usize {
        self.store.num_values(|n| !trainable_only || is_trainable(n))
    }

    /// Every parameter by its official name.
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.store.state_dict()
    }

    /// Loads parameters by name. Shape mismatches are always an error; with `strict`, missing and unexpected keys
    /// are too. The message lists every offending key.
    pub fn load_state_dict(&self, state: &HashMap<String, Tensor>, strict: bool) -> Result<LoadReport> {
        self.store.load(state, LoadPolicy::strict(strict), None, "model")
    }

    /// Writes the parameters and the config as one safetensors file, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_model_file(path, &self.state_dict(), self.cfg.to_json()?)
    }

    /// Reads a file written by [`LatteModel::save`].
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let model = Self::from_model_file(&crate::io::read(path)?, path, device)?;
        model.set_teacache_fit(crate::model::teacache_fit::read_fit_beside(path)?);
        Ok(model)
    }

    /// Parses the bytes of a file written by [`LatteModel::save`]; `path` only names the file in errors.
    pub fn from_model_file(bytes: &[u8], path: &Path, device: &Device) -> Result<Self> {
        let (config, tensors) = read_model_file(bytes, path)?;
        let cfg = LatteConfig::from_json(&config)?;
        Self::from_state(&cfg, &tensors, path, device)
    }

    /// A model of `cfg` holding `state` (in the dtype of its tensors), strictly: `path` names the file in errors.
    pub(crate) fn from_state(
        cfg: &LatteConfig,
        state: &HashMap<String, Tensor>,
        path: &Path,
        device: &Device,
    ) -> Result<Self> {
        let dtype = state
            .values()
            .next()
            .map(|t| t.dtype())
            .filter(|d| d.is_float() && *d != DType::F8E4M3)
            .unwrap_or(DType::F32);
        let model = Self::uninitialised(cfg, device, dtype)?;
        let source = path.display().to_string();
        model.store.load(state, LoadPolicy::STRICT, Some(&source), "model")?;
        Ok(model)
    }

    /// Loads trained weights from any of the files users have (see [`crate::model::open_model`]): official
    /// checkpoints, safetensors files (ours, with the config, or a bare state dict), our trainer's checkpoint folders.
    /// EMA weights are used when present and `use_ema`. Options the file does not record are inferred from the
    /// tensor shapes (see [`super::infer::infer_config`]).
    pub fn from_checkpoint(
        path: &Path,
        preset: Option<&str>,
        use_ema: bool,
        overrides: &serde_json::Map<String, serde_json::Value>,
        device: &Device,
    ) -> Result<(Self, CheckpointInfo)> {
        let opts = OpenOptions {
            use_ema,
            preset: preset.map(String::from),
            overrides: overrides.clone(),
            kind: Some(ModelKind::Latte),
            device: device.clone(),
        };
        let opened = open_model(path, &opts)?;
        match opened.model {
            AnyModel::Latte(m) => Ok((m, opened.info)),
            other => Err(wrong_kind(path, ModelKind::Latte, other.kind())),
        }
    }

    /// Classifier-free guidance as the official `forward_with_cfg`: the batch is [cond half | uncond half]
    /// (labels for the second half should be the null class); the model runs on the first half of `x` twice, and
    /// the first `in_channels` output channels become uncond + scale · (cond − uncond) for both halves.
    pub fn forward_with_cfg(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>, cfg_scale: f64) -> Result<Tensor> {
        let b = x.dims().first().copied().unwrap_or(0);
        if b % 2 != 0 {
            return Err(value_error(
                "x",
                "an even batch (conditional half, then unconditional half)",
                format!("batch {b}"),
            ));
        }
        if !cfg_scale.is_finite() {
            return Err(value_error("cfg_scale", "a finite number", cfg_scale));
        }
        let x = self.check_latents(x)?;
        if x.dim(1)? != self.cfg.num_frames {
            return Err(value_error(
                "x",
                format!("{} frames for guided sampling", self.cfg.num_frames),
                x.dim(1)?,
            ));
        }
        let t = self.check_timesteps(t, b)?;
        let cond = self.check_condition(&Condition::from_labels(y, None)?, x.dims())?;
        let half = x.narrow(0, 0, b / 2)?;
        let out = self.denoise(&Tensor::cat(&[&half, &half], 0)?, &t, &cond, false)?;
        crate::finite::check_output(&out)?;
        let guided = apply_guidance(
            &out,
            cfg_scale,
            GuidanceRule::PredictionChannels,
            LatentLayout::FramesFirst.channel_axis(),
            self.cfg.in_channels,
        )?;
        // Both halves carry the guided prediction; the variance values stay each branch's own.
        let c = self.cfg.in_channels;
        let eps = guided.narrow(2, 0, c)?;
        let eps = Tensor::cat(&[&eps, &eps], 0)?;
        let channels = out.dim(2)?;
        Ok(if channels > c {
            Tensor::cat(&[&eps, &out.narrow(2, c, channels - c)?], 2)?
        } else {
            eps
        })
    }
}

impl Condition {
    /// Class labels `y` (B,) with the image frames' labels `y_image` (B, images), or no condition without `y`.
    pub fn from_labels(y: Option<&Tensor>, y_image: Option<&Tensor>) -> Result<Self> {
        match (y, y_image) {
            (Some(labels), _) => Ok(Self::Classes {
                labels: labels.clone(),
                image_labels: y_image.cloned(),
            }),
            (None, None) => Ok(Self::Unconditional),
            (None, Some(_)) => Err(LatteError::Value(
                "y_image: given without y (unconditional model?)".into(),
            )),
        }
    }
}

impl Denoiser for LatteModel {
    fn spec(&self) -> DenoiserSpec {
        DenoiserSpec {
            layout: LatentLayout::FramesFirst,
            latent_channels: self.cfg.in_channels,
            output_channels: self.cfg.out_channels(),
            guidance_rule: GuidanceRule::PredictionChannels,
        }
    }

    fn store(&self) -> &ParamStore {
        &self.store
    }

    fn latent_shape(&self, batch: usize) -> Vec<usize> {
        let c = &self.cfg;
        vec![batch, c.num_frames, c.in_channels, c.input_size, c.input_size]
    }

    /// Tokens × width for the live activations, plus the attention scores of the larger of the spatial
    /// attention (the N patches of each frame: N² per head) and the temporal one (the video's frames at each
    /// patch: frames² per head), as the configured kernel holds them.
    fn activation_elements(&self, dims: &[usize], grad: bool) -> u128 {
        let c = &self.cfg;
        let numel = dims.iter().fold(1u128, |a, &d| a.saturating_mul(d as u128));
        let tokens = numel / (c.in_channels.max(1) * c.patch_size * c.patch_size * c.temporal_patch()) as u128;
        let live = if grad { 2 * c.depth as u128 + 6 } else { 6 };
        let activations = tokens.saturating_mul(c.hidden_size as u128).saturating_mul(live);
        let (batch, frames) = (dims.first().copied().unwrap_or(0), dims.get(1).copied().unwrap_or(0));
        let (patches, video) = (c.num_spatial_tokens(), c.num_temporal_tokens());
        // Image frames (after the video's) are one temporal token each.
        let temporal_tokens = video + frames.saturating_sub(c.num_frames);
        // Split-head blocks give half of the heads to each kind of attention.
        let heads = if c.variant == Variant::V4 {
            c.num_heads / 2
        } else {
            c.num_heads
        };
        let kernel = AttentionKernel::from_config(c.attention, c.attention_chunk_size);
        let scores = |groups: usize, len: usize| {
            let shape = AttentionShape {
                groups,
                heads,
                queries: len,
                keys: len,
                head_dim: c.hidden_size / c.num_heads.max(1),
            };
            score_elements(kernel, self.device(), self.dtype(), shape, grad)
        };
        let spatial = scores(batch.saturating_mul(temporal_tokens), patches);
        let temporal = scores(batch.saturating_mul(patches), video);
        activations.saturating_add(spatial.max(temporal))
    }

    fn null_condition(&self, cond: &Condition) -> Result<Condition> {
        let cfg = &self.cfg;
        let no_null = || {
            LatteError::Value(
                "cfg_scale > 1 needs a class-conditional model with a null class (num_classes > 0, \
                 class_dropout_prob > 0)"
                    .into(),
            )
        };
        match cond {
            Condition::Classes { labels, image_labels } if cfg.label_table_rows() > cfg.num_classes => {
                let null = |l: &Tensor| -> Result<Tensor> {
                    Ok(Tensor::full(cfg.num_classes as i64, l.dims(), l.device())?.to_dtype(l.dtype())?)
                };
                Ok(Condition::Classes {
                    labels: null(labels)?,
                    image_labels: image_labels.as_ref().map(null).transpose()?,
                })
            }
            Condition::Classes { .. } | Condition::Unconditional => Err(no_null()),
            Condition::Text { .. } => Err(self.refuse_text()),
        }
    }

    fn check_latents(&self, x: &Tensor) -> Result<Tensor> {
        inputs::check_latents(&self.cfg, x, self.dtype(), self.device())
    }

    fn check_timesteps(&self, t: &Tensor, batch: usize) -> Result<Tensor> {
        inputs::check_timesteps(&self.cfg, t, batch, self.device())
    }

    fn frames_per_timestep(&self) -> Result<usize> {
        inputs::frame_timesteps(&self.cfg)
    }

    fn check_condition(&self, cond: &Condition, x_dims: &[usize]) -> Result<Condition> {
        let (y, y_image) = match cond {
            Condition::Unconditional => (None, None),
            Condition::Classes { labels, image_labels } => (Some(labels), image_labels.as_ref()),
            Condition::Text { .. } => return Err(self.refuse_text()),
        };
        let (y, y_image) = inputs::check_class_labels(&self.cfg, y, y_image, x_dims, self.device())?;
        Ok(match y {
            Some(labels) => Condition::Classes {
                labels,
                image_labels: y_image,
            },
            None => Condition::Unconditional,
        })
    }

    fn denoise(&self, x: &Tensor, t: &Tensor, cond: &Condition, grad: bool) -> Result<Tensor> {
        let _reading = self.store.read_access();
        let (y, y_image) = labels_of(cond)?;
        let out = self.network.forward(x, t, y, y_image, grad)?;
        // Without a graph to keep, the output must not hold the activations its ops reference.
        Ok(if grad { out } else { out.detach() })
    }

    fn staged<'a>(&'a self, x: &Tensor, t: &Tensor, cond: &Condition) -> Result<Box<dyn StagedPass + 'a>> {
        let _reading = self.store.read_access();
        let (y, y_image) = labels_of(cond)?;
        let pass = self.network.staged(x, t, y, y_image)?;
        Ok(Box::new(LockedPass { _reading, pass }))
    }

    fn teacache_fit(&self) -> Option<TeaCacheFit> {
        self.teacache.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.store.vars(is_trainable)
    }

    fn loss_and_grads(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Condition,
        checkpoint: bool,
        loss_fn: &mut LossFn<'_>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (y, y_image) = labels_of(cond)?;
        let params = param_tensors(&self.trainable_vars());
        if checkpoint {
            loss_and_grads_by(&params, loss_fn, |loss_fn| {
                self.network
                    .loss_and_grads_checkpointed(x, t, y, y_image, &params, loss_fn)
            })
        } else {
            backprop(&params, loss_fn, || self.network.forward(x, t, y, y_image, true))
        }
    }
}

impl LatteModel {
    fn refuse_text(&self) -> LatteError {
        LatteError::Value(if self.cfg.num_classes > 0 {
            format!(
                "prompt: this Latte model takes class labels (0..{}), not a prompt",
                self.cfg.num_classes - 1
            )
        } else {
            "prompt: this Latte model is unconditional; it takes no prompt".into()
        })
    }
}

/// The labels of a checked condition.
fn labels_of(cond: &Condition) -> Result<(Option<&Tensor>, Option<&Tensor>)> {
    match cond {
        Condition::Unconditional => Ok((None, None)),
        Condition::Classes { labels, image_labels } => Ok((Some(labels), image_labels.as_ref())),
        Condition::Text { .. } => Err(LatteError::Value("a Latte model takes no text condition".into())),
    }
}

impl LatteConfig {
    /// Parameter count of a model with this config (`trainable_only`: without the sin-cos tables), computed by
    /// building it with zero parameters (lazily committed zero pages, so even XL costs little).
    pub fn num_parameters(&self, trainable_only: bool) -> Result<usize> {
        Ok(LatteModel::uninitialised(self, &Device::Cpu, DType::F32)?.num_parameters(trainable_only))
    }
}
