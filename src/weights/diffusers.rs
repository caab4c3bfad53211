//! Folders in the layout of diffusers and transformers (`transformer/`, `vae/`, `text_encoder/`): a
//! `config.json` and the weights as `<stem>.safetensors`, or as shards listed in `<stem>.safetensors.index.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;

use crate::error::{LatteError, Result};

/// The weight file stem of diffusers models (`diffusion_pytorch_model.safetensors`).
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model";
/// The weight file stem of transformers models (`model.safetensors`).
pub const TRANSFORMERS_WEIGHTS: &str = "model";

/// A model folder: its `config.json` parsed as `T`, and its tensors (on the CPU, in the file's dtype).
pub struct Folder<T> {
    pub config: T,
    pub tensors: HashMap<String, Tensor>,
    /// The weight files, for error messages.
    pub source: String,
}

/// Reads a model folder; `kind` names what the folder should be in errors (e.g. "a diffusers transformer/
/// folder"), `stem` is the weight file stem.
pub fn read_folder<T: DeserializeOwned>(dir: &Path, kind: &str, stem: &str) -> Result<Folder<T>> {
    if !dir.is_dir() {
        return Err(LatteError::NotFound(format!(
            "{} (expected {kind})",
            dir.join("config.json").display()
        )));
    }
    let config = read_config(&dir.join("config.json"))?;
    let (tensors, source) = read_weights(dir, stem)?;
    Ok(Folder {
        config,
        tensors,
        source,
    })
}

/// Parses a `config.json`; errors name the file.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = crate::io::read(path)?;
    crate::error::parse_json_object(&bytes).map_err(|e| LatteError::Config(format!("{}: {e}", path.display())))
}

/// Reads `<stem>.safetensors`, or the shards listed in `<stem>.safetensors.index.json`, from `dir`. Returns
/// the tensors and a description of the files for error messages.
pub fn read_weights(dir: &Path, stem: &str) -> Result<(HashMap<String, Tensor>, String)> {
    let single = dir.join(format!("{stem}.safetensors"));
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if single.is_file() {
        return Ok((read_safetensors(&single)?, single.display().to_string()));
    }
    if !index.is_file() {
        return Err(LatteError::NotFound(format!(
            "{} (nor {}); a diffusers folder holds one or the other",
            single.display(),
            index.display()
        )));
    }
    let json: serde_json::Value = serde_json::from_slice(&crate::io::read(&index)?)
        .map_err(|e| LatteError::Value(format!("{}: not JSON ({e})", index.display())))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| LatteError::Value(format!("{}: no \"weight_map\" object", index.display())))?;
    let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| LatteError::Value(format!("{}: weight_map[{key:?}] is not a file name", index.display())))?;
        by_file.entry(file.to_string()).or_default().push(key.clone());
    }
    let mut tensors = HashMap::new();
    for (file, keys) in by_file {
        let path = dir.join(&file);
        if !path.is_file() {
            return Err(LatteError::NotFound(format!(
                "{} (a shard listed in {} for {} keys, e.g. {:?})",
                path.display(),
                index.display(),
                keys.len(),
                keys[0]
            )));
        }
        let mut shard = read_safetensors(&path)?;
        for key in keys {
            let t = shard.remove(&key).ok_or_else(|| {
                LatteError::StateDict(format!(
                    "{}: tensor {key:?} is listed in {} but not in the shard",
                    path.display(),
                    index.display()
                ))
            })?;
            tensors.insert(key, t);
        }
    }
    Ok((tensors, format!("{} and its shards", index.display())))
}

/// Every tensor of a safetensors file, on the CPU; errors name the file.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load_buffer(&crate::io::read(path)?, &Device::Cpu)
        .map_err(|e| LatteError::Value(format!("{}: {e}", path.display())))
}

/// The `prediction_type` of a diffusers pipeline folder's `scheduler/scheduler_config.json`, where it has one
/// (what the pipeline's transformer predicts).
pub fn scheduler_prediction_type(pipeline: &Path) -> Result<Option<String>> {
    #[derive(serde::Deserialize)]
    struct SchedulerConfig {
        prediction_type: Option<String>,
    }
    let path = pipeline.join("scheduler").join("scheduler_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    Ok(read_config::<SchedulerConfig>(&path)?.prediction_type)
}
