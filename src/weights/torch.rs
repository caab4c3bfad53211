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

#[cfg(test)]
mod tests {
    use candle_core::pickle::{Object, Stack, MAX_DEPTH};

    fn read(stack: Stack, pickle: &[u8]) -> candle_core::Result<Object> {
        let mut stack = stack;
        stack.read_loop(&mut std::io::Cursor::new(pickle))?;
        stack.finalize()
    }

    fn unicode(s: &str) -> Vec<u8> {
        let mut out = vec![b'X'];
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
        out
    }

    /// Lists, one-tuples and dicts nested `n` deep (protocol 2, as torch.save writes).
    fn nested(kind: &str, n: usize) -> Vec<u8> {
        let mut p = b"\x80\x02".to_vec();
        match kind {
            "list" => {
                p.extend(std::iter::repeat_n(b']', n));
                p.extend(std::iter::repeat_n(b'a', n - 1));
            }
            "tuple" => {
                p.push(b'N');
                p.extend(std::iter::repeat_n(0x85u8, n - 1));
            }
            _ => {
                p.push(b'}');
                for _ in 1..n {
                    p.push(b'(');
                    p.extend(unicode("k"));
                    p.push(b'}');
                }
                p.extend(std::iter::repeat_n(b'u', n - 1));
            }
        }
        p.push(b'.');
        p
    }

    /// A pickle nested deeper than any checkpoint is refused as it is read, not by a stack overflow when the
    /// tree is dropped; one at the limit reads (and drops) fine.
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        for kind in ["list", "tuple", "dict"] {
            let err = read(Stack::empty(), &nested(kind, 300_000)).unwrap_err().to_string();
            assert!(err.contains("nested deeper than 1000"), "{kind}: {err}");
            read(Stack::empty(), &nested(kind, MAX_DEPTH)).unwrap();
            assert!(read(Stack::empty(), &nested(kind, MAX_DEPTH + 1)).is_err(), "{kind}");
        }
    }

    /// `{"model": d, "ema": d}` with one dict `d`: pickle memoizes `d` empty and fills it in afterwards, so the
    /// second reference must see it filled (as `torch.load` does), not the empty dict of the moment it was put.
    #[test]
    fn a_memoized_dict_filled_after_it_was_put_reads_whole() {
        let mut p = b"\x80\x02}q\x00(".to_vec();
        p.extend(unicode("model"));
        p.extend(b"}q\x01(");
        p.extend(unicode("w"));
        p.extend(b"K\x07u");
        p.extend(unicode("ema"));
        p.extend(b"h\x01u.");
        let d = Object::Dict(vec![(Object::Unicode("w".into()), Object::Int(7))]);
        let expected = Object::Dict(vec![
            (Object::Unicode("ema".into()), d.clone()),
            (Object::Unicode("model".into()), d),
        ]);
        let Object::Dict(mut got) = read(Stack::empty(), &p).unwrap() else {
            panic!("not a dict")
        };
        got.sort_by_key(|(k, _)| format!("{k:?}"));
        assert_eq!(Object::Dict(got), expected);
    }

    /// Fetching a memoized object copies it: a pickle that doubles a list 40 times (a few hundred bytes) would ask
    /// for 2^40 objects. The copies are counted, and refused before they are made.
    #[test]
    fn copies_of_memoized_objects_are_bounded() {
        let mut p = b"\x80\x02]q\x00K\x01a".to_vec();
        for i in 0..40u8 {
            // [prev, prev], memoized as the next id
            p.extend([b'(', b'h', i, b'h', i, b't', b'q', i + 1]);
        }
        p.push(b'.');
        let err = read(Stack::empty().with_max_objects(100_000), &p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 100000 objects"), "{err}");
        // A string's declared length is not allocated before its bytes arrive.
        let err = read(Stack::empty(), b"\x80\x02X\xff\xff\xff\xffab.")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cut short"), "{err}");
    }
}
