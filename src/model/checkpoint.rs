//! Official Latte checkpoints (`ffs.pt`, `ucf101.pt`, ..., and `train.py`'s `{"model", "ema", ...}` files):
//! PyTorch zip archives read with candle's pickle reader, which interprets the pickle opcodes in Rust and never
//! runs Python code. Anything in the chosen state dict that is not a tensor (a pickled function call, a class) is
//! refused with an error naming it. The model's options are inferred from the tensor shapes.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::Path;

use candle_core::pickle::{Object, PthTensors, Stack};
use candle_core::Tensor;

use crate::config::{LatteConfig, PatchEmbed, PRESETS};
use crate::error::{LatteError, Result};

/// Which entry of a checkpoint file was loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The top-level key holding the state dict (`ema`, `model`, `state_dict`), or None for a bare state dict.
    pub key: Option<String>,
    /// Top-level keys of the file.
    pub keys: Vec<String>,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> LatteError {
    LatteError::Value(format!("{}: {msg}", path.display()))
}

/// A short description of a pickled object for error messages.
fn describe(obj: &Object) -> String {
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => format!("the global {module_name}.{class_name}"),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => match callable.as_ref() {
            Object::Class {
                module_name,
                class_name,
            } => format!("a call to {module_name}.{class_name}(...)"),
            other => format!("a call to {}", describe(other)),
        },
        Object::Dict(_) => "a dict".into(),
        Object::List(_) => "a list".into(),
        Object::Tuple(_) => "a tuple".into(),
        Object::Unicode(_) => "a string".into(),
        Object::Int(_) | Object::Long(_) => "an int".into(),
        Object::Float(_) => "a float".into(),
        Object::Bool(_) => "a bool".into(),
        Object::None => "None".into(),
        Object::Mark => "a mark".into(),
        Object::PersistentLoad(_) => "a storage reference".into(),
    }
}

fn is_tensor(value: &Object, dir: &Path) -> bool {
    matches!(
        value.clone().into_tensor_info(Object::Unicode("x".into()), dir),
        Ok(Some(_))
    )
}

fn entries(obj: &Object) -> Option<Vec<(String, &Object)>> {
    match obj {
        Object::Dict(items) => Some(
            items
                .iter()
                .filter_map(|(k, v)| match k {
                    Object::Unicode(k) => Some((k.clone(), v)),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Reads a PyTorch zip checkpoint's state dict: `ema` (when `use_ema` and present), else `model`, else
/// `state_dict`, else the file itself when it is a dict of tensors. `module.` / `_orig_mod.` prefixes (DDP,
/// `torch.compile`) are removed.
pub fn read_torch_state_dict(path: &Path, use_ema: bool) -> Result<(HashMap<String, Tensor>, CheckpointInfo)> {
    if !path.is_file() {
        return Err(LatteError::NotFound(path.display().to_string()));
    }
    let file = std::fs::File::open(path)?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|_| {
        bad(
            path,
            "not a PyTorch zip checkpoint (torch.save since PyTorch 1.6); re-save it with a recent torch",
        )
    })?;
    let pkl: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .filter(|n| n.ends_with("data.pkl"))
        .collect();
    let [pkl] = pkl.as_slice() else {
        return Err(bad(
            path,
            format!("expected one data.pkl in the archive, found {}", pkl.len()),
        ));
    };
    let dir = Path::new(pkl.strip_suffix(".pkl").unwrap_or(pkl)).to_path_buf();
    let mut stack = Stack::empty();
    {
        let mut reader = BufReader::new(zip.by_name(pkl).map_err(|e| bad(path, e))?);
        stack
            .read_loop(&mut reader)
            .map_err(|e| bad(path, format!("unreadable pickle ({e})")))?;
    }
    let root = stack
        .finalize()
        .map_err(|e| bad(path, format!("unreadable pickle ({e})")))?;
    let refused = "refused; latte-rs reads pickles without running them, and loads only tensors";
    let top = entries(&root).ok_or_else(|| {
        bad(
            path,
            format!("the file holds {}, not a checkpoint dict; {refused}", describe(&root)),
        )
    })?;
    let keys: Vec<String> = top.iter().map(|(k, _)| k.clone()).collect();
    let order: &[&str] = if use_ema {
        &["ema", "model", "state_dict"]
    } else {
        &["model", "state_dict", "ema"]
    };
    let chosen = order
        .iter()
        .find(|k| keys.iter().any(|x| x == *k))
        .map(|k| k.to_string());
    let (state, prefix) = match &chosen {
        Some(k) => {
            let obj = top
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| *v)
                .expect("key exists");
            let state = entries(obj).ok_or_else(|| {
                bad(
                    path,
                    format!("entry {k:?} holds {}, not a state dict; {refused}", describe(obj)),
                )
            })?;
            (state, format!("{k}/"))
        }
        None => (top, String::new()),
    };
    let mut names = Vec::new();
    for (name, value) in &state {
        if name == "_metadata" && matches!(value, Object::Dict(_)) {
            continue; // the OrderedDict's version metadata
        }
        if !is_tensor(value, &dir) {
            return Err(bad(
                path,
                format!(
                    "entry {prefix}{name} holds {}, not a tensor; {refused}",
                    describe(value)
                ),
            ));
        }
        names.push(name.clone());
    }
    if names.is_empty() {
        return Err(bad(path, format!("no tensors found (top-level keys: {keys:?})")));
    }
    let pth = PthTensors::new(path, chosen.as_deref()).map_err(|e| bad(path, e))?;
    let mut tensors = HashMap::new();
    for name in names {
        let t = pth
            .get(&name)
            .map_err(|e| bad(path, format!("tensor {name}: {e}")))?
            .ok_or_else(|| bad(path, format!("tensor {name} could not be read")))?;
        let clean = name.strip_prefix("module.").unwrap_or(&name);
        let clean = clean.strip_prefix("_orig_mod.").unwrap_or(clean);
        tensors.insert(clean.to_string(), t);
    }
    Ok((tensors, CheckpointInfo { key: chosen, keys }))
}

/// The model options implied by an official (variant 1) state dict. `preset` supplies what shapes cannot say
/// (the number of heads); without it, the width picks the preset's head count (S 6, B 12, L 16, XL 16).
/// `overrides` (LatteConfig fields) win over both; the class count is the label table's rows less the
/// classifier-free-guidance row, which exists when `class_dropout_prob > 0` (the official default 0.1).
pub fn infer_config(
    state: &HashMap<String, Tensor>,
    preset: Option<&str>,
    overrides: &serde_json::Map<String, serde_json::Value>,
    source: &Path,
) -> Result<LatteConfig> {
    let num_heads = overrides.get("num_heads").and_then(|v| v.as_u64()).map(|v| v as usize);
    let get = |name: &str| {
        state.get(name).ok_or_else(|| {
            bad(
                source,
                format!(
                    "no tensor {name:?}; not a Latte state dict (keys: {})",
                    sample_keys(state)
                ),
            )
        })
    };
    if state
        .keys()
        .any(|k| k.starts_with("text_embedding_projection") || k.contains("caption_projection"))
    {
        return Err(bad(
            source,
            "a text-to-video Latte checkpoint; latte-rs does not load the text-conditioned model yet",
        ));
    }
    let proj = get("x_embedder.proj.weight")?.dims().to_vec();
    let (hidden, in_channels) = (proj[0], proj[1]);
    let (patch_embed, tubelet_size, patch_size) = match proj.len() {
        4 => (PatchEmbed::Frame, 1, proj[2]),
        5 => (PatchEmbed::Tubelet, proj[2], proj[3]),
        _ => return Err(bad(source, format!("x_embedder.proj.weight has shape {proj:?}"))),
    };
    let depth = state
        .keys()
        .filter_map(|k| k.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let fc1 = get("blocks.0.mlp.fc1.weight")?.dims()[0];
    let pos = get("pos_embed")?.dims()[1];
    let side = (pos as f64).sqrt().round() as usize;
    if side * side != pos {
        return Err(bad(source, format!("pos_embed has {pos} positions, not a square grid")));
    }
    let num_frames = get("temp_embed")?.dims()[1] * tubelet_size;
    let out = get("final_layer.linear.weight")?.dims()[0];
    let per_patch = patch_size * patch_size * tubelet_size;
    let learn_sigma = out == 2 * in_channels * per_patch;
    let label_rows = state.get("y_embedder.embedding_table.weight").map(|t| t.dims()[0]);
    let cfg = match preset {
        Some(p) => LatteConfig::preset(p)?,
        None => LatteConfig::default(),
    };
    let heads = num_heads
        .or(preset.map(|_| cfg.num_heads))
        .or_else(|| PRESETS.iter().find(|p| p.2 == hidden).map(|p| p.3));
    let num_heads = heads.ok_or_else(|| {
        bad(
            source,
            format!("hidden size {hidden} is not a Latte preset's; pass num_heads= (or preset=)"),
        )
    })?;
    let cfg = LatteConfig {
        depth,
        hidden_size: hidden,
        num_heads,
        patch_size,
        mlp_ratio: fc1 as f64 / hidden as f64,
        input_size: side * patch_size,
        in_channels,
        num_frames,
        learn_sigma,
        patch_embed,
        tubelet_size,
        ..cfg
    };
    let mut json: serde_json::Value = serde_json::from_str(&cfg.to_json()?)?;
    for (k, v) in overrides {
        json[k] = v.clone();
    }
    let mut cfg = LatteConfig::from_json(&json.to_string())?;
    if !overrides.contains_key("num_classes") {
        cfg.num_classes = label_rows.map_or(0, |rows| rows - usize::from(cfg.class_dropout_prob > 0.0));
    }
    cfg.validate()?;
    Ok(cfg)
}

fn sample_keys(state: &HashMap<String, Tensor>) -> String {
    let mut keys: Vec<&String> = state.keys().collect();
    keys.sort();
    let shown: Vec<&str> = keys.iter().take(5).map(|k| k.as_str()).collect();
    format!("{}{}", shown.join(", "), if keys.len() > 5 { ", ..." } else { "" })
}
