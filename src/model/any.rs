//! [`AnyModel`]: either kind of model latte-rs builds, seen through the [`Denoiser`] interface plus what a file
//! needs (the weights with the config that rebuilds them) and what a train step needs (the condition dropout of
//! classifier-free guidance). What [`super::open_model`] returns and what the trainer trains.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{LatteError, Result};
use crate::model::{Denoiser, LatteModel, LatteT2VConfig, LatteT2VModel};
use crate::weights::format::{metadata_value, safetensors_bytes_with, LATTE_CONFIG_KEY, T2V_CONFIG_KEY};

/// The two kinds of model latte-rs builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// Latte, class-conditional or unconditional, any variant ([`LatteModel`]).
    Latte,
    /// The text-to-video transformer of Latte-1 ([`LatteT2VModel`]).
    Text,
}

impl ModelKind {
    /// The name Python sees ("latte", "text").
    pub fn name(self) -> &'static str {
        match self {
            Self::Latte => "latte",
            Self::Text => "text",
        }
    }
}

/// A class-conditional or unconditional Latte, or the text-to-video transformer. Clones share the parameters.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per trainer, cloned rarely; boxing would only add indirection
pub enum AnyModel {
    Latte(LatteModel),
    Text(LatteT2VModel),
}

impl From<LatteModel> for AnyModel {
    fn from(m: LatteModel) -> Self {
        Self::Latte(m)
    }
}

impl From<&LatteModel> for AnyModel {
    fn from(m: &LatteModel) -> Self {
        Self::Latte(m.clone())
    }
}

impl From<&LatteT2VModel> for AnyModel {
    fn from(m: &LatteT2VModel) -> Self {
        Self::Text(m.clone())
    }
}

impl From<LatteT2VModel> for AnyModel {
    fn from(m: LatteT2VModel) -> Self {
        Self::Text(m)
    }
}

impl AnyModel {
    pub fn denoiser(&self) -> &dyn Denoiser {
        match self {
            Self::Latte(m) => m,
            Self::Text(m) => m,
        }
    }

    pub fn dtype(&self) -> DType {
        self.denoiser().dtype()
    }

    /// Sets (or clears) the TeaCache polynomial the model carries (see [`crate::cache`]).
    pub fn set_teacache_fit(&self, fit: Option<crate::model::teacache_fit::TeaCacheFit>) {
        match self {
            Self::Latte(m) => m.set_teacache_fit(fit),
            Self::Text(m) => m.set_teacache_fit(fit),
        }
    }

    pub fn device(&self) -> &Device {
        self.denoiser().device()
    }

    /// Video frames per clip (image frames of joint clips come after them).
    pub fn video_frames(&self) -> usize {
        match self {
            Self::Latte(m) => m.config().num_frames,
            Self::Text(m) => m.config().video_length,
        }
    }

    /// Every parameter and fixed table by name.
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        match self {
            Self::Latte(m) => m.state_dict(),
            Self::Text(m) => m.state_dict(),
        }
    }

    /// The metadata (key, config JSON) a model file of this model carries.
    fn config_metadata(&self) -> Result<(&'static str, String)> {
        Ok(match self {
            Self::Latte(m) => (LATTE_CONFIG_KEY, m.config().to_json()?),
            Self::Text(m) => (T2V_CONFIG_KEY, m.config().to_json()?),
        })
    }

    /// The bytes of a model file of `state` (this model's weights or their EMA) with this model's config.
    pub fn model_file_bytes(&self, state: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
        safetensors_bytes_with(state, Some(self.config_metadata()?))
    }

    /// The model a model file holds: a text-to-video one when its metadata has the text-to-video config.
    pub fn from_model_file(bytes: &[u8], path: &Path, device: &Device) -> Result<Self> {
        match metadata_value(bytes, path, T2V_CONFIG_KEY)? {
            Some(config) => {
                let cfg = LatteT2VConfig::from_json(&config)
                    .map_err(|e| LatteError::Value(format!("{}: {e}", path.display())))?;
                let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
                    .map_err(|e| LatteError::Value(format!("{}: {e}", path.display())))?;
                Ok(Self::Text(t2v_with_state(&cfg, &tensors, None, path, device)?))
            }
            None => Ok(Self::Latte(LatteModel::from_model_file(bytes, path, device)?)),
        }
    }

    /// A new model of the same architecture holding `state` in `dtype`, strictly.
    pub fn with_state(&self, state: &HashMap<String, Tensor>, dtype: DType) -> Result<Self> {
        Ok(match self {
            Self::Latte(m) => {
                let model = LatteModel::uninitialised(m.config(), m.device(), dtype)?;
                model.load_state_dict(state, true)?;
                Self::Latte(model)
            }
            Self::Text(m) => Self::Text(t2v_with_state(
                m.config(),
                state,
                Some(dtype),
                Path::new("state"),
                m.device(),
            )?),
        })
    }

    /// The classifier-free-guidance label dropout of a class-conditional Latte: (null class, probability).
    pub fn label_dropout(&self) -> Option<(i64, f64)> {
        match self {
            Self::Latte(m) => {
                let c = m.config();
                (c.num_classes > 0 && c.class_dropout_prob > 0.0)
                    .then_some((c.num_classes as i64, c.class_dropout_prob))
            }
            Self::Text(_) => None,
        }
    }

    pub fn is_text(&self) -> bool {
        matches!(self, Self::Text(_))
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            Self::Latte(_) => ModelKind::Latte,
            Self::Text(_) => ModelKind::Text,
        }
    }
}

fn t2v_with_state(
    cfg: &LatteT2VConfig,
    state: &HashMap<String, Tensor>,
    dtype: Option<DType>,
    path: &Path,
    device: &Device,
) -> Result<LatteT2VModel> {
    let dtype = dtype.unwrap_or_else(|| {
        state
            .values()
            .next()
            .map(|t| t.dtype())
            .filter(|d| d.is_float())
            .unwrap_or(DType::F32)
    });
    let model = LatteT2VModel::uninitialised(cfg, device, dtype)?;
    model.load_state_dict(state, Some(&path.display().to_string()))?;
    Ok(model)
}
