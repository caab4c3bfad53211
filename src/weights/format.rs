//! The files latte-rs writes and the formats it tells apart, each defined once.
//!
//! - A model file is safetensors with the model's config as JSON in the metadata under [`LATTE_CONFIG_KEY`]
//!   (a text-to-video model's under [`T2V_CONFIG_KEY`]; readable by any safetensors reader; latte-rs rebuilds the
//!   model from it alone).
//! - A trainer checkpoint is a folder of [`MODEL_FILE`], [`EMA_FILE`], [`OPTIMIZER_FILE`], [`DIFFUSION_FILE`]
//!   and the manifest [`MANIFEST_FILE`] (read by [`super::checkpoint`], written by `train::checkpoint`).
//! - [`Format::detect`] names what a path holds, so every loader dispatches the same way.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;

use crate::error::{LatteError, Result};

/// The safetensors metadata key holding a model's config (JSON).
pub const LATTE_CONFIG_KEY: &str = "latte_config";
/// The safetensors metadata key holding a text-to-video model's config (diffusers' `config.json` keys).
pub const T2V_CONFIG_KEY: &str = "latte_t2v_config";
/// A trainer checkpoint's null caption (the empty prompt's features that caption dropout puts in), when it has one.
pub const NULL_CAPTION_FILE: &str = "null_caption.safetensors";
/// A trainer checkpoint's weights.
pub const MODEL_FILE: &str = "model.safetensors";
/// A trainer checkpoint's EMA weights.
pub const EMA_FILE: &str = "ema.safetensors";
/// A trainer checkpoint's optimiser state (AdamW moments, f32 master weights).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// A trainer checkpoint's diffusion process (its f64 tables).
pub const DIFFUSION_FILE: &str = "diffusion.json";
/// A trainer checkpoint's manifest: options, counters, RNG position, checksums; written last.
pub const MANIFEST_FILE: &str = "trainer.json";

/// What a path holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// A folder written by the trainer.
    TrainerCheckpoint,
    /// A diffusers model folder (`config.json` + `diffusion_pytorch_model.safetensors` or shards).
    DiffusersModel,
    /// A diffusers pipeline folder (with a `transformer/` model folder).
    DiffusersPipeline,
    /// A latte-rs model file: safetensors with a model config (class or text-to-video) in its metadata.
    ModelFile,
    /// A safetensors file without one (a bare state dict).
    Safetensors,
    /// Anything else that is a file: a PyTorch checkpoint (zip archive).
    Torch,
}

impl Format {
    pub fn detect(path: &Path) -> Result<Self> {
        if path.is_dir() {
            if path.join(MANIFEST_FILE).is_file() || path.join(MODEL_FILE).is_file() {
                return Ok(Self::TrainerCheckpoint);
            }
            if path.join("transformer").is_dir() {
                return Ok(Self::DiffusersPipeline);
            }
            if path.join("config.json").is_file() {
                return Ok(Self::DiffusersModel);
            }
            return Err(LatteError::NotFound(format!(
                "{}: a folder, but not a latte-rs checkpoint (no {MODEL_FILE}) nor a diffusers folder (no \
                 config.json)",
                path.display()
            )));
        }
        crate::io::open_regular(path)?;
        if path.extension().is_some_and(|e| e == "safetensors") {
            let bytes = crate::io::read(path)?;
            let has_config =
                config_metadata(&bytes, path)?.is_some() || metadata_value(&bytes, path, T2V_CONFIG_KEY)?.is_some();
            return Ok(if has_config { Self::ModelFile } else { Self::Safetensors });
        }
        Ok(Self::Torch)
    }
}

/// The config JSON stored under [`LATTE_CONFIG_KEY`] in the metadata of safetensors `bytes`, if any; `path`
/// names the file in errors.
pub fn config_metadata(bytes: &[u8], path: &Path) -> Result<Option<String>> {
    metadata_value(bytes, path, LATTE_CONFIG_KEY)
}

/// The value under `key` in the metadata of safetensors `bytes`, if any; `path` names the file in errors.
pub fn metadata_value(bytes: &[u8], path: &Path, key: &str) -> Result<Option<String>> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| LatteError::Value(format!("{}: not a readable safetensors file ({e})", path.display())))?;
    Ok(meta.metadata().as_ref().and_then(|m| m.get(key)).cloned())
}

/// The bytes of a safetensors file holding `state` and, when given, a config in the metadata.
pub fn safetensors_bytes(state: &BTreeMap<String, Tensor>, config_json: Option<String>) -> Result<Vec<u8>> {
    safetensors_bytes_with(state, config_json.map(|c| (LATTE_CONFIG_KEY, c)))
}

/// The bytes of a safetensors file holding `state` and, when given, one (key, value) pair of metadata.
pub fn safetensors_bytes_with(state: &BTreeMap<String, Tensor>, meta: Option<(&str, String)>) -> Result<Vec<u8>> {
    let metadata = meta.map(|(k, v)| HashMap::from([(k.to_string(), v)]));
    Ok(safetensors::serialize(
        state.iter().map(|(k, v)| (k.as_str(), v)),
        metadata,
    )?)
}

/// Writes a model file (state and config) atomically: a crash mid-write leaves any previous file intact.
pub fn write_model_file(path: &Path, state: &BTreeMap<String, Tensor>, config_json: String) -> Result<()> {
    let bytes = safetensors_bytes(state, Some(config_json))?;
    crate::io::write_atomic(path, |tmp| Ok(std::fs::write(tmp, &bytes)?))
}

/// Reads a model file written by [`write_model_file`]: its config JSON and tensors (on the CPU).
pub fn read_model_file(bytes: &[u8], path: &Path) -> Result<(String, HashMap<String, Tensor>)> {
    let config = config_metadata(bytes, path)?.ok_or_else(|| {
        if matches!(metadata_value(bytes, path, T2V_CONFIG_KEY), Ok(Some(_))) {
            return LatteError::Value(format!(
                "{}: a text-to-video model file; load it with LatteT2VTransformer.from_checkpoint",
                path.display()
            ));
        }
        LatteError::Value(format!(
            "{}: no {LATTE_CONFIG_KEY} in the safetensors metadata; not a file written by latte-rs",
            path.display()
        ))
    })?;
    let tensors = candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu)
        .map_err(|e| LatteError::Value(format!("{}: {e}", path.display())))?;
    Ok((config, tensors))
}
