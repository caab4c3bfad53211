//! The checks of the text-to-video transformer's inputs against its config, made once at the boundary (as Latte's
//! in `latte::inputs`): every message names the argument (diffusers' names), what was expected and what came.

use candle_core::{DType, Device, Tensor};

use super::config::LatteT2VConfig;
use crate::error::{value_error, LatteError, Result};
use crate::model::Condition;

/// Latents `(B, C, F, H, W)`: F = video_length, 1 (an image), or more for image-video joint clips; H, W
/// multiples of the patch size; finite, in `dtype` on `device`.
pub fn check_latents(cfg: &LatteT2VConfig, x: &Tensor, dtype: DType, device: &Device) -> Result<Tensor> {
    let dims = x.dims();
    let p = cfg.patch_size;
    if !x.dtype().is_float() {
        return Err(LatteError::Type(format!(
            "hidden_states: expected a floating-point array, got {:?}",
            x.dtype()
        )));
    }
    if dims.len() != 5 || dims[1] != cfg.in_channels || dims[3] % p != 0 || dims[4] % p != 0 || dims.contains(&0) {
        return Err(value_error(
            "hidden_states",
            format!("shape (B, {}, F, H, W) with H, W multiples of {p}", cfg.in_channels),
            format!("{dims:?}"),
        ));
    }
    let frames = dims[2];
    // More frames than video_length: image-video joint clips (images after the video frames, each with its
    // own caption; checked with the condition).
    if frames != 1 && frames < cfg.video_length {
        return Err(value_error(
            "hidden_states",
            format!(
                "{} frames (video_length), 1 (an image), or more for image-video joint clips",
                cfg.video_length
            ),
            format!("{frames} frames"),
        ));
    }
    crate::finite::to_model_finite(x, "hidden_states", dtype, device)
}

/// Timesteps: one for all, one per clip, or (for diagonal denoising) one per frame of a `video_length` clip, as
/// f32 on `device`.
pub fn check_timesteps(cfg: &LatteT2VConfig, t: &Tensor, batch: usize, device: &Device) -> Result<Tensor> {
    let t = match t.dims() {
        [] | [1] => t.broadcast_as(batch)?.contiguous()?,
        [n] if *n == batch => t.clone(),
        [n, f] if *n == batch && *f == cfg.video_length => t.clone(),
        _ => {
            return Err(value_error(
                "timestep",
                format!(
                    "a scalar, shape ({batch},) or ({batch}, {}) (one per frame)",
                    cfg.video_length
                ),
                format!("{:?}", t.dims()),
            ))
        }
    };
    Ok(t.to_dtype(DType::F32)?.to_device(device)?)
}

/// Caption features `(B, S, caption_channels)` (joint clips: `(B, 1 + images, S, caption_channels)`), finite,
/// with padding zeroed by the 0/1 `mask`.
pub fn check_caption(
    cfg: &LatteT2VConfig,
    embeddings: &Tensor,
    mask: Option<&Tensor>,
    x_dims: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Condition> {
    let (batch, frames) = (x_dims[0], x_dims[2]);
    let images = frames.saturating_sub(cfg.video_length);
    let dims = embeddings.dims();
    if !embeddings.dtype().is_float() {
        return Err(LatteError::Type(format!(
            "encoder_hidden_states: expected a floating-point array, got {:?}",
            embeddings.dtype()
        )));
    }
    let c = cfg.caption_channels;
    let ok = match dims {
        [b, s, cc] => *b == batch && *s > 0 && *cc == c && images == 0,
        [b, n, s, cc] => *b == batch && *n == 1 + images && *s > 0 && *cc == c && images > 0,
        _ => false,
    };
    if !ok {
        let want = if images == 0 {
            format!("shape ({batch}, S, {c})")
        } else {
            format!(
                "shape ({batch}, {}, S, {c}): the video's caption, then one per image frame ({frames} frames \
                 are {} video frames and {images} images)",
                1 + images,
                cfg.video_length
            )
        };
        return Err(value_error("encoder_hidden_states", want, format!("{dims:?}")));
    }
    let embeddings = crate::finite::to_model_finite(embeddings, "encoder_hidden_states", dtype, device)?;
    // Latte-1 was trained with padded caption features zeroed (LattePipeline's `mask_feature`), not with a
    // masked cross-attention: a mask zeroes the padding.
    let embeddings = match mask {
        None => embeddings,
        Some(m) if m.dims() == &dims[..dims.len() - 1] => {
            let m = m.to_dtype(dtype)?.to_device(device)?;
            embeddings.broadcast_mul(&m.unsqueeze(m.rank())?)?
        }
        Some(m) => {
            return Err(value_error(
                "encoder_attention_mask",
                format!("shape {:?}", &dims[..dims.len() - 1]),
                format!("{:?}", m.dims()),
            ))
        }
    };
    Ok(Condition::Text { embeddings, mask: None })
}
