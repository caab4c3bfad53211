//! The options of a Latte model read off the tensor shapes of an official checkpoint, which records no config.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::config::{LatteConfig, PatchEmbed, PRESETS};
use crate::error::{LatteError, Result};

fn bad(path: &Path, msg: impl std::fmt::Display) -> LatteError {
    LatteError::Value(format!("{}: {msg}", path.display()))
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
            "a text-to-video Latte checkpoint; load it with LatteT2VTransformer (diffusers names) instead",
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
