//! Opening any model file: the one place that decides what a path holds and builds the model from it.
//!
//! Users have official Latte checkpoints (`ffs.pt`, `ucf101.pt`, `train.py`'s `{"model", "ema"}` files: PyTorch
//! zip archives read without running pickled code), bare safetensors state dicts, latte-rs model files (config in
//! the metadata, class or text-to-video), latte-rs trainer checkpoint folders (each file verified against the
//! manifest by [`crate::weights::checkpoint`]), a model file inside such a folder, and diffusers folders of the
//! text-to-video transformer (`transformer/`, or the pipeline folder above it). [`open_model`] takes any of them
//! and returns the model, which weights it took, and the training process the checkpoint records, so that a
//! sampler can be told what the model predicts. `LatteModel::from_checkpoint` and `LatteT2VModel::from_checkpoint`
//! are this entry with the kind fixed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::any::{AnyModel, ModelKind};
use super::latte::infer::infer_config;
use super::{LatteModel, LatteT2VModel};
use crate::diffusion::{GaussianDiffusion, MeanType};
use crate::error::{LatteError, Result};
use crate::weights::checkpoint::{corrupt, read_checked, CheckpointFolder};
use crate::weights::format::{metadata_value, DIFFUSION_FILE, EMA_FILE, MODEL_FILE, T2V_CONFIG_KEY};
use crate::weights::{read_torch_state_dict, CheckpointInfo, Format};

/// How to open a model file.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Take the EMA weights where the file has them.
    pub use_ema: bool,
    /// A preset name for the options a bare state dict does not record ("Latte-XL/2").
    pub preset: Option<String>,
    /// Config overrides for a bare state dict (LatteConfig keys).
    pub overrides: serde_json::Map<String, serde_json::Value>,
    /// Refuse, before building anything, a file that holds another kind of model.
    pub kind: Option<ModelKind>,
    pub device: Device,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            use_ema: true,
            preset: None,
            overrides: serde_json::Map::new(),
            kind: None,
            device: Device::Cpu,
        }
    }
}

/// What [`open_model`] found.
pub struct OpenedModel {
    pub model: AnyModel,
    /// Which weights of the file were taken (`ema`, `model`, ... or none for a bare state dict).
    pub info: CheckpointInfo,
    /// The diffusion process the model was trained with, where the checkpoint records it (latte-rs trainer
    /// checkpoints and the model files inside them).
    pub process: Option<GaussianDiffusion>,
    /// What the model predicts where the file says so without a process (a diffusers pipeline folder's scheduler).
    declared: Option<MeanType>,
}

impl OpenedModel {
    pub fn kind(&self) -> ModelKind {
        self.model.kind()
    }

    /// What the model's output predicts: the recorded process's, else the pipeline folder's scheduler's, else the
    /// noise (what Latte, DiT and Latte-1 predict).
    pub fn prediction_type(&self) -> MeanType {
        self.process
            .as_ref()
            .map(|p| p.mean_type)
            .or(self.declared)
            .unwrap_or(MeanType::Epsilon)
    }
}

/// Where the weights of a path are, before any model is built.
enum Located {
    /// A latte-rs model file's bytes (its config in the metadata).
    ModelFile { bytes: Vec<u8>, file: PathBuf },
    /// A state dict without a config (official checkpoints, bare safetensors): a Latte whose options are inferred
    /// from the shapes.
    Bare(HashMap<String, Tensor>),
    /// A diffusers `transformer/` folder.
    Diffusers(PathBuf),
}

impl Located {
    fn kind(&self) -> Result<ModelKind> {
        Ok(match self {
            Self::ModelFile { bytes, file } => {
                if metadata_value(bytes, file, T2V_CONFIG_KEY)?.is_some() {
                    ModelKind::Text
                } else {
                    ModelKind::Latte
                }
            }
            Self::Bare(_) => ModelKind::Latte,
            Self::Diffusers(_) => ModelKind::Text,
        })
    }
}

/// The model any path holds (see the module docs).
pub fn open_model(path: &Path, opts: &OpenOptions) -> Result<OpenedModel> {
    let mut process = None;
    let mut declared = None;
    let (located, info) = match Format::detect(path)? {
        Format::TrainerCheckpoint => {
            let name = if opts.use_ema && path.join(EMA_FILE).is_file() {
                EMA_FILE
            } else {
                MODEL_FILE
            };
            let file = path.join(name);
            if !file.is_file() {
                return Err(LatteError::NotFound(format!(
                    "{}: a folder, but not a latte-rs checkpoint (no {name})",
                    path.display()
                )));
            }
            let bytes = read_checked(path, name)?;
            process = recorded_process(path)?;
            let info = CheckpointInfo {
                key: Some(name.trim_end_matches(".safetensors").into()),
                keys: vec!["model".into(), "ema".into()],
            };
            (Located::ModelFile { bytes, file }, info)
        }
        Format::ModelFile => {
            // A model file inside a trainer checkpoint is that checkpoint's model: its process is the folder's.
            // (A bare file name's folder is the working directory.)
            let folder = match path.parent() {
                Some(p) if p.as_os_str().is_empty() => Path::new("."),
                Some(p) => p,
                None => Path::new("/"),
            };
            process = recorded_process(folder)?;
            let bytes = crate::io::read(path)?;
            let file = path.to_path_buf();
            (Located::ModelFile { bytes, file }, CheckpointInfo::bare())
        }
        Format::Safetensors => (
            Located::Bare(crate::weights::diffusers::read_safetensors(path)?),
            CheckpointInfo::bare(),
        ),
        Format::Torch => {
            let (state, info) = read_torch_state_dict(path, opts.use_ema)?;
            (Located::Bare(state), info)
        }
        Format::DiffusersModel => (Located::Diffusers(path.to_path_buf()), CheckpointInfo::bare()),
        Format::DiffusersPipeline => {
            declared = crate::weights::diffusers::scheduler_prediction_type(path)?
                .map(|p| MeanType::from_prediction_type(&p))
                .transpose()?;
            (Located::Diffusers(path.join("transformer")), CheckpointInfo::bare())
        }
    };
    let kind = located.kind()?;
    if let Some(want) = opts.kind.filter(|&w| w != kind) {
        return Err(wrong_kind(path, want, kind));
    }
    let model = match located {
        Located::ModelFile { bytes, file } => AnyModel::from_model_file(&bytes, &file, &opts.device)?,
        Located::Bare(state) => {
            let cfg = infer_config(&state, opts.preset.as_deref(), &opts.overrides, path)?;
            AnyModel::Latte(LatteModel::from_state(&cfg, &state, path, &opts.device)?)
        }
        Located::Diffusers(dir) => AnyModel::Text(LatteT2VModel::from_pretrained(&dir, &opts.device, None)?),
    };
    if let Some(fit) = crate::model::teacache_fit::read_fit_beside(path)? {
        model.set_teacache_fit(Some(fit));
    }
    Ok(OpenedModel {
        model,
        info,
        process,
        declared,
    })
}

/// The process a trainer checkpoint folder records (verified), if it has one.
fn recorded_process(dir: &Path) -> Result<Option<GaussianDiffusion>> {
    if !CheckpointFolder::has_manifest(dir) {
        return Ok(None);
    }
    let folder = CheckpointFolder::open(dir)?;
    if !folder.lists(DIFFUSION_FILE) {
        return Ok(None);
    }
    let bytes = folder.read(DIFFUSION_FILE)?;
    GaussianDiffusion::from_json(&bytes)
        .map(Some)
        .map_err(|e| corrupt(&dir.join(DIFFUSION_FILE), e))
}

/// The error for a file that holds the other kind of model than the caller wants.
pub(crate) fn wrong_kind(path: &Path, want: ModelKind, found: ModelKind) -> LatteError {
    debug_assert_ne!(want, found);
    LatteError::Value(match want {
        ModelKind::Latte => format!(
            "{}: a text-to-video model (Latte-1's transformer); load it with LatteT2VTransformer.from_checkpoint, \
             LatteT2VTransformer.from_pretrained or LatteT2VPipeline.from_pretrained",
            path.display()
        ),
        ModelKind::Text => format!(
            "{}: a class-conditional or unconditional Latte checkpoint; load it with LatteModel.from_checkpoint",
            path.display()
        ),
    })
}
