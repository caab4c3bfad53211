//! PyTorch checkpoints (the official `ffs.pt`, `ucf101.pt`, ..., and `train.py`'s `{"model", "ema", ...}` files):
//! zip archives read with candle's pickle reader, which interprets the pickle opcodes in Rust and never runs Python
//! code. Anything in the chosen state dict that is not a tensor (a pickled function call, a class) is refused with
//! an error naming it.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::Path;

use candle_core::pickle::{Object, PthTensors, Stack};
use candle_core::Tensor;

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
    let file = crate::io::open_regular(path)?;
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

impl CheckpointInfo {
    /// A file that is a state dict itself.
    pub fn bare() -> Self {
        Self {
            key: None,
            keys: vec![],
        }
    }
}
