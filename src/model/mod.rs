//! The Latte model and its owner [`LatteModel`]: parameters, validated forward, state dicts, files.

pub mod block;
pub mod checkpoint;
pub mod embed;
pub mod latte;
pub mod t2v;
pub mod t5;

pub use checkpoint::CheckpointInfo;
pub use latte::Latte;
pub use t2v::{LatteT2VConfig, LatteT2VModel};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::config::LatteConfig;
use crate::error::{value_error, LatteError, Result};
use crate::nn::init::{init_weights, is_trainable};

/// Timesteps the model is trained on: t must lie in [0, NUM_TRAIN_TIMESTEPS).
pub const NUM_TRAIN_TIMESTEPS: f64 = 1000.0;

/// What `load_state_dict` found besides the matching keys (PyTorch's `_IncompatibleKeys`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
}

/// A Latte model with its parameters: the entry point for forward passes, state dicts and files.
///
/// Clones share their parameters (like two references to one `torch.nn.Module`): a trainer holding a clone
/// updates the weights every other clone sees.
#[derive(Clone)]
pub struct LatteModel {
    cfg: LatteConfig,
    varmap: VarMap,
    model: Latte,
    device: Device,
}

/// Parses "cpu", "cuda", "cuda:N"; CUDA needs the `cuda` feature.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec {
        "cuda" => Some(0),
        s => s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()),
    };
    match ordinal {
        None => Err(value_error("device", "\"cpu\", \"cuda\" or \"cuda:N\"", format!("{spec:?}"))),
        Some(_) if !cfg!(feature = "cuda") => Err(LatteError::Unsupported(
            "device: latte-rs was built without CUDA support; rebuild with `maturin develop --release --features cuda` \
             (or `pip install . --config-settings=build-args='--features cuda'`)"
                .into(),
        )),
        Some(n) => Ok(Device::new_cuda(n)?),
    }
}

/// Models keep their parameters in one of the float dtypes.
pub(crate) fn check_float_dtype(dtype: DType) -> Result<()> {
    if matches!(dtype, DType::F32 | DType::F64 | DType::BF16 | DType::F16) {
        Ok(())
    } else {
        Err(LatteError::Type(format!(
            "dtype: expected a float dtype, got {dtype:?}"
        )))
    }
}

/// Sets every variable of `varmap` from `state` by name, after checking all of them: missing and mis-shaped keys
/// (and unexpected ones unless `allow_unexpected`) are listed in one error that names `source` and the model.
pub(crate) fn load_vars_strict(
    varmap: &VarMap,
    state: &HashMap<String, Tensor>,
    device: &Device,
    source: &str,
    model: &str,
    allow_unexpected: bool,
) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| LatteError::StateDict("lock poisoned".into()))?;
    let mut missing: Vec<&str> = data
        .keys()
        .filter(|k| !state.contains_key(*k))
        .map(String::as_str)
        .collect();
    let mut unexpected: Vec<&str> = if allow_unexpected {
        vec![]
    } else {
        state
            .keys()
            .filter(|k| !data.contains_key(*k))
            .map(String::as_str)
            .collect()
    };
    let mut shapes: Vec<String> = data
        .iter()
        .filter_map(|(k, v)| {
            let t = state.get(k)?;
            (t.dims() != v.dims()).then(|| format!("{k}: expected {:?}, got {:?}", v.dims(), t.dims()))
        })
        .collect();
    missing.sort();
    unexpected.sort();
    shapes.sort();
    if !missing.is_empty() || !unexpected.is_empty() || !shapes.is_empty() {
        let mut msg = format!("{source}: state dict does not match the {model} config:");
        if !missing.is_empty() {
            msg += &format!("\n  missing keys ({}): {}", missing.len(), missing.join(", "));
        }
        if !unexpected.is_empty() {
            msg += &format!("\n  unexpected keys ({}): {}", unexpected.len(), unexpected.join(", "));
        }
        if !shapes.is_empty() {
            msg += &format!("\n  mis-shaped keys ({}): {}", shapes.len(), shapes.join("; "));
        }
        return Err(LatteError::StateDict(msg));
    }
    for (name, var) in data.iter() {
        var.set(&state[name].to_device(device)?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

impl LatteModel {
    /// A freshly initialised model (the DiT/Latte recipe, from `seed`).
    pub fn new(cfg: &LatteConfig, device: &Device, dtype: DType, seed: u64) -> Result<Self> {
        let me = Self::uninitialised(cfg, device, dtype)?;
        init_weights(&me.varmap, cfg, seed)?;
        Ok(me)
    }

    /// The model with every parameter zero (to be loaded into).
    pub fn uninitialised(cfg: &LatteConfig, device: &Device, dtype: DType) -> Result<Self> {
        crate::configure_allocator();
        cfg.validate()?;
        check_float_dtype(dtype)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, device);
        let model = Latte::new(cfg, vb)?;
        Ok(Self {
            cfg: cfg.clone(),
            varmap,
            model,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &LatteConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.model.dtype()
    }

    /// The inner network, for callers that validate their own inputs (e.g. the trainer).
    pub fn network(&self) -> &Latte {
        &self.model
    }

    /// The parameter map (all parameters, including the fixed sin-cos tables).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The trainable variables, sorted by name.
    pub fn trainable_vars(&self) -> Vec<(String, candle_core::Var)> {
        let data = self
            .varmap
            .data()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut vars: Vec<_> = data
            .iter()
            .filter(|(n, _)| is_trainable(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Number of parameters; with `trainable_only`, without the fixed sin-cos tables.
    pub fn num_parameters(&self, trainable_only: bool) -> usize {
        let data = self
            .varmap
            .data()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        data.iter()
            .filter(|(n, _)| !trainable_only || is_trainable(n))
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// Every parameter by its official name.
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        let data = self
            .varmap
            .data()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        data.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
    }

    /// Loads parameters by name. Shape mismatches are always an error; with `strict`, missing and unexpected keys
    /// are too. The message lists every offending key.
    pub fn load_state_dict(&self, state: &HashMap<String, Tensor>, strict: bool) -> Result<LoadReport> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| LatteError::StateDict("parameter map lock poisoned".into()))?;
        let mut report = LoadReport::default();
        let mut mismatched = Vec::new();
        for (name, var) in data.iter() {
            match state.get(name) {
                None => report.missing.push(name.clone()),
                Some(t) if t.dims() != var.dims() => {
                    mismatched.push(format!("{name}: expected {:?}, got {:?}", var.dims(), t.dims()))
                }
                Some(_) => {}
            }
        }
        report.unexpected = state.keys().filter(|k| !data.contains_key(*k)).cloned().collect();
        report.missing.sort();
        report.unexpected.sort();
        mismatched.sort();
        if !mismatched.is_empty() || (strict && (!report.missing.is_empty() || !report.unexpected.is_empty())) {
            let mut msg = String::from("state dict does not match the model:");
            if !report.missing.is_empty() {
                msg += &format!(
                    "\n  missing keys ({}): {}",
                    report.missing.len(),
                    report.missing.join(", ")
                );
            }
            if !report.unexpected.is_empty() {
                msg += &format!(
                    "\n  unexpected keys ({}): {}",
                    report.unexpected.len(),
                    report.unexpected.join(", ")
                );
            }
            if !mismatched.is_empty() {
                msg += &format!("\n  mis-shaped keys ({}): {}", mismatched.len(), mismatched.join("; "));
            }
            return Err(LatteError::StateDict(msg));
        }
        for (name, var) in data.iter() {
            if let Some(t) = state.get(name) {
                var.set(&t.to_device(&self.device)?.to_dtype(var.dtype())?)?;
            }
        }
        Ok(report)
    }

    /// Writes the parameters and the config (in the metadata, key `latte_config`) as safetensors, atomically:
    /// a crash mid-write leaves any previous file at `path` intact.
    pub fn save(&self, path: &Path) -> Result<()> {
        let state = self.state_dict();
        let metadata = HashMap::from([("latte_config".to_string(), self.cfg.to_json()?)]);
        crate::io::write_atomic(path, |tmp| {
            safetensors::serialize_to_file(state.iter().map(|(k, v)| (k.as_str(), v)), Some(metadata), tmp)?;
            Ok(())
        })
    }

    /// Reads a file written by [`LatteModel::save`].
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::from_safetensors(&crate::io::read(path)?, path, device)
    }

    /// Parses the bytes of a file written by [`LatteModel::save`]; `path` only names the file in errors.
    pub fn from_safetensors(bytes: &[u8], path: &Path, device: &Device) -> Result<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| LatteError::Value(format!("{}: not a readable safetensors file ({e})", path.display())))?;
        let cfg_json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("latte_config"))
            .ok_or_else(|| {
                LatteError::Value(format!(
                    "{}: no latte_config in the safetensors metadata; not a file written by LatteModel.save",
                    path.display()
                ))
            })?;
        let cfg = LatteConfig::from_json(cfg_json)?;
        let tensors = candle_core::safetensors::load_buffer(bytes, device)?;
        let dtype = tensors.values().next().map(|t| t.dtype()).unwrap_or(DType::F32);
        let model = Self::uninitialised(&cfg, device, dtype)?;
        model.load_state_dict(&tensors, true)?;
        Ok(model)
    }

    /// Loads trained weights from any of the files users have: an official Latte checkpoint (`ffs.pt`,
    /// `ucf101.pt`, ..., or `train.py`'s `{"model", "ema"}` files; PyTorch zip archives read without running any
    /// pickled code), a safetensors file (ours, with its config, or a bare state dict), or one of our trainer's
    /// checkpoint folders. EMA weights are used when present and `use_ema`. Options the file does not record are
    /// inferred from the tensor shapes (see [`checkpoint::infer_config`]).
    pub fn from_checkpoint(
        path: &Path,
        preset: Option<&str>,
        use_ema: bool,
        overrides: &serde_json::Map<String, serde_json::Value>,
        device: &Device,
    ) -> Result<(Self, CheckpointInfo)> {
        if path.is_dir() {
            let name = if use_ema && path.join("ema.safetensors").is_file() {
                "ema"
            } else {
                "model"
            };
            let file = path.join(format!("{name}.safetensors"));
            if !file.is_file() {
                return Err(LatteError::NotFound(format!(
                    "{}: a folder, but not a latte-rs checkpoint (no {name}.safetensors)",
                    path.display()
                )));
            }
            let info = CheckpointInfo {
                key: Some(name.into()),
                keys: vec!["model".into(), "ema".into()],
            };
            return Ok((Self::load(&file, device)?, info));
        }
        if !path.is_file() {
            return Err(LatteError::NotFound(path.display().to_string()));
        }
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        let (state, info) = if is_safetensors {
            let bytes = crate::io::read(path)?;
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
                .map_err(|e| LatteError::Value(format!("{}: not a readable safetensors file ({e})", path.display())))?;
            if meta.metadata().as_ref().is_some_and(|m| m.contains_key("latte_config")) {
                let info = CheckpointInfo {
                    key: None,
                    keys: vec![],
                };
                return Ok((Self::from_safetensors(&bytes, path, device)?, info));
            }
            let state = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
            (
                state,
                CheckpointInfo {
                    key: None,
                    keys: vec![],
                },
            )
        } else {
            checkpoint::read_torch_state_dict(path, use_ema)?
        };
        let cfg = checkpoint::infer_config(&state, preset, overrides, path)?;
        let dtype = state.values().next().map(|t| t.dtype()).unwrap_or(DType::F32);
        let dtype = if matches!(dtype, DType::F32 | DType::F64 | DType::BF16 | DType::F16) {
            dtype
        } else {
            DType::F32
        };
        let model = Self::uninitialised(&cfg, device, dtype)?;
        model.load_state_dict(&state, true).map_err(|e| match e {
            LatteError::StateDict(msg) => LatteError::StateDict(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        Ok((model, info))
    }

    /// Validated forward pass (no gradient). x: (B, F, C, H, W) float; t: (B,) timesteps; y: (B,) labels;
    /// y_image: (B, F - num_frames) labels of the image frames.
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>, y_image: Option<&Tensor>) -> Result<Tensor> {
        let (x, t, y, y_image) = self.prepare(x, t, y, y_image)?;
        Ok(self.model.forward(&x, &t, y.as_ref(), y_image.as_ref(), false)?)
    }

    /// Validated forward pass that keeps the autograd graph (for training and gradient checks).
    pub fn forward_train(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        y_image: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (x, t, y, y_image) = self.prepare(x, t, y, y_image)?;
        Ok(self.model.forward(&x, &t, y.as_ref(), y_image.as_ref(), true)?)
    }

    /// The scalar `loss_fn(model(x, t, y, y_image))` and the gradient of every trainable parameter, in the order
    /// of [`LatteModel::trainable_vars`] (zero for a parameter the loss does not reach). With `checkpoint`, block
    /// activations are recomputed in the backward pass instead of stored (see
    /// [`Latte::loss_and_grads_checkpointed`]).
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grads(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        y_image: Option<&Tensor>,
        checkpoint: bool,
        loss_fn: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (x, t, y, y_image) = self.prepare(x, t, y, y_image)?;
        let vars = self.trainable_vars();
        let params: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().clone()).collect();
        // The loss function's own error (e.g. a bad label) is passed through unchanged, not as a candle error.
        let failure = std::cell::RefCell::new(None);
        let wrapped = |out: &Tensor| -> candle_core::Result<Tensor> {
            let loss = loss_fn(out).map_err(|e| {
                let msg = e.to_string();
                *failure.borrow_mut() = Some(e);
                candle_core::Error::Msg(msg)
            })?;
            loss.dims0()
                .map_err(|_| candle_core::Error::Msg("loss_fn: expected a scalar loss".into()))?;
            Ok(loss)
        };
        let result = if checkpoint {
            self.model
                .loss_and_grads_checkpointed(&x, &t, y.as_ref(), y_image.as_ref(), &params, wrapped)
        } else {
            (|| {
                let out = self.model.forward(&x, &t, y.as_ref(), y_image.as_ref(), true)?;
                let loss = wrapped(&out)?;
                let store = loss.backward()?;
                let grads = params.iter().map(|p| store.get(p).cloned()).collect();
                Ok((loss.detach(), grads))
            })()
        };
        let (loss, grads) = match (result, failure.into_inner()) {
            (Ok(r), _) => r,
            (Err(_), Some(e)) => return Err(e),
            (Err(e), None) => return Err(e.into()),
        };
        let grads = grads
            .into_iter()
            .zip(&params)
            .map(|(g, p)| match g {
                Some(g) => Ok(g),
                None => p.zeros_like(),
            })
            .collect::<candle_core::Result<_>>()?;
        Ok((loss, grads))
    }

    /// Classifier-free guidance as the official `forward_with_cfg` (see [`Latte::forward_with_cfg`]).
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
        let (x, t, y, _) = self.prepare(x, t, y, None)?;
        if x.dim(1)? != self.cfg.num_frames {
            return Err(value_error(
                "x",
                format!("{} frames for guided sampling", self.cfg.num_frames),
                x.dim(1)?,
            ));
        }
        Ok(self.model.forward_with_cfg(&x, &t, y.as_ref(), cfg_scale)?)
    }

    /// Checks every input against the config and converts it to the device and dtype the network wants.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        y_image: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Option<Tensor>, Option<Tensor>)> {
        let cfg = &self.cfg;
        if !x.dtype().is_float() {
            return Err(LatteError::Type(format!(
                "x: expected a floating-point array, got {:?}",
                x.dtype()
            )));
        }
        let dims = x.dims();
        let (f_min, f_max) = (cfg.num_frames, cfg.num_frames + cfg.use_image_num);
        let frames_desc = if cfg.use_image_num > 0 {
            format!("{f_min}..={f_max} (num_frames + up to use_image_num image frames)")
        } else {
            format!("{f_min}")
        };
        let expected = format!(
            "shape (B, F, C, H, W) = (B, {frames_desc}, {}, {}, {})",
            cfg.in_channels, cfg.input_size, cfg.input_size
        );
        if dims.len() != 5 {
            return Err(value_error(
                "x",
                expected,
                format!("shape {dims:?} (rank {})", dims.len()),
            ));
        }
        let (b, f) = (dims[0], dims[1]);
        if b == 0
            || f < f_min
            || f > f_max
            || dims[2] != cfg.in_channels
            || dims[3] != cfg.input_size
            || dims[4] != cfg.input_size
        {
            return Err(value_error("x", expected, format!("shape {dims:?}")));
        }
        let sum = x.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        if !sum.is_finite() {
            return Err(LatteError::Value(
                "x: expected finite values, got NaN or infinity".into(),
            ));
        }
        // Timesteps.
        if t.dims() != [b] {
            return Err(value_error(
                "t",
                format!("shape ({b},) (one timestep per clip)"),
                format!("shape {:?}", t.dims()),
            ));
        }
        let tv = t.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if let Some(bad) = tv.iter().find(|v| !(**v >= 0.0 && **v < NUM_TRAIN_TIMESTEPS)) {
            return Err(value_error(
                "t",
                format!("timesteps in [0, {NUM_TRAIN_TIMESTEPS})"),
                bad,
            ));
        }
        let t = t.to_dtype(DType::F32)?.to_device(&self.device)?;
        // Labels.
        let rows = cfg.label_table_rows();
        let labels = |arg: &str, l: &Tensor, shape: &[usize]| -> Result<Tensor> {
            if l.dtype().is_float() {
                return Err(LatteError::Type(format!(
                    "{arg}: expected integer class labels, got {:?}",
                    l.dtype()
                )));
            }
            if l.dims() != shape {
                return Err(value_error(
                    arg,
                    format!("shape {shape:?}"),
                    format!("shape {:?}", l.dims()),
                ));
            }
            let v = l.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
            if let Some(bad) = v.iter().find(|v| **v < 0 || **v as usize >= rows) {
                let range = if rows > cfg.num_classes {
                    format!(
                        "labels in [0, {}] ({} is the null class)",
                        cfg.num_classes, cfg.num_classes
                    )
                } else {
                    format!(
                        "labels in [0, {}) (class_dropout_prob = 0: no null class)",
                        cfg.num_classes
                    )
                };
                return Err(value_error(arg, range, bad));
            }
            Ok(l.to_dtype(DType::U32)?.to_device(&self.device)?)
        };
        let y = match (y, cfg.num_classes) {
            (Some(_), 0) => {
                return Err(LatteError::Value(
                    "y: the model is unconditional (num_classes = 0); pass y=None".into(),
                ))
            }
            (None, n) if n > 0 => {
                return Err(LatteError::Value(format!(
                    "y: the model is class-conditional ({n} classes); labels are required"
                )))
            }
            (Some(l), _) => Some(labels("y", l, &[b])?),
            (None, _) => None,
        };
        let images = f - f_min;
        let y_image = match (y_image, &y) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(LatteError::Value(
                    "y_image: given without y (unconditional model?)".into(),
                ))
            }
            (Some(l), Some(_)) => Some(labels("y_image", l, &[b, images])?),
        };
        let x = x.to_dtype(self.dtype())?.to_device(&self.device)?;
        Ok((x, t, y, y_image))
    }
}

impl LatteConfig {
    /// Parameter count of a model with this config (`trainable_only`: without the sin-cos tables), computed by
    /// building it with zero parameters (lazily committed zero pages, so even XL costs little).
    pub fn num_parameters(&self, trainable_only: bool) -> Result<usize> {
        Ok(LatteModel::uninitialised(self, &Device::Cpu, DType::F32)?.num_parameters(trainable_only))
    }
}

#[cfg(test)]
mod tests;
