//! The checks of Latte's inputs against its config, made once at the boundary: every message names the argument,
//! what was expected and what came.

use candle_core::{DType, Device, Tensor};

use crate::config::LatteConfig;
use crate::error::{value_error, LatteError, Result};

/// Timesteps the model is trained on: t must lie in [0, NUM_TRAIN_TIMESTEPS).
pub const NUM_TRAIN_TIMESTEPS: f64 = 1000.0;

/// Latents `(B, F, C, H, W)` with F = num_frames (+ up to use_image_num image frames), finite, in `dtype` on
/// `device`.
pub fn check_latents(cfg: &LatteConfig, x: &Tensor, dtype: DType, device: &Device) -> Result<Tensor> {
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
    crate::finite::to_model_finite(x, "x", dtype, device)
}

/// One timestep per clip, (B,), or, for diagonal denoising, one per temporal token, (B, num_frames / tubelet
/// size) (adaLN injection only: token injection has one timestep token per sequence), each in [0, 1000), as f32
/// on `device`.
pub fn check_timesteps(cfg: &LatteConfig, t: &Tensor, batch: usize, device: &Device) -> Result<Tensor> {
    let per_token = cfg.num_temporal_tokens();
    let fits = match t.dims() {
        [b] => *b == batch,
        [b, f] => *b == batch && *f == per_token && frame_timesteps(cfg).is_ok(),
        _ => false,
    };
    if !fits {
        let also = match frame_timesteps(cfg) {
            Ok(s) => format!(
                " or ({batch}, {per_token}) (one per {})",
                if s == 1 {
                    "frame".to_string()
                } else {
                    format!("tubelet of {s} frames")
                }
            ),
            Err(_) => String::new(),
        };
        return Err(value_error(
            "t",
            format!("shape ({batch},) (one timestep per clip){also}"),
            format!("shape {:?}", t.dims()),
        ));
    }
    let values = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if let Some(bad) = values.iter().find(|v| !(**v >= 0.0 && **v < NUM_TRAIN_TIMESTEPS)) {
        return Err(value_error(
            "t",
            format!("timesteps in [0, {NUM_TRAIN_TIMESTEPS})"),
            bad,
        ));
    }
    Ok(t.to_dtype(DType::F32)?.to_device(device)?)
}

/// Frames that share one timestep when the model takes one per temporal token (1, or the tubelet size); an error
/// saying why for token injection, whose sequences carry one timestep token each.
pub fn frame_timesteps(cfg: &LatteConfig) -> Result<usize> {
    match cfg.injection {
        crate::config::Injection::Adaln => Ok(cfg.temporal_patch()),
        crate::config::Injection::Tokens => Err(LatteError::Value(
            "this model injects the timestep as one token per sequence (injection \"tokens\"), so it takes one \
             timestep per clip; one per frame (diagonal denoising, long_video=\"fifo\") needs adaLN injection"
                .into(),
        )),
    }
}

/// Class labels of `shape` for the model's label table (the null class included when it has one), as u32 on
/// `device`; `arg` names the argument in errors.
fn check_labels(cfg: &LatteConfig, arg: &str, labels: &Tensor, shape: &[usize], device: &Device) -> Result<Tensor> {
    if labels.dtype().is_float() {
        return Err(LatteError::Type(format!(
            "{arg}: expected integer class labels, got {:?}",
            labels.dtype()
        )));
    }
    if labels.dims() != shape {
        return Err(value_error(
            arg,
            format!("shape {shape:?}"),
            format!("shape {:?}", labels.dims()),
        ));
    }
    let rows = cfg.label_table_rows();
    let values = labels.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
    if let Some(bad) = values.iter().find(|v| **v < 0 || **v as usize >= rows) {
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
    Ok(labels.to_dtype(DType::U32)?.to_device(device)?)
}

/// The labels `y` (B,) and `y_image` (B, image frames) of latents with `x_dims`, checked against the config.
pub fn check_class_labels(
    cfg: &LatteConfig,
    y: Option<&Tensor>,
    y_image: Option<&Tensor>,
    x_dims: &[usize],
    device: &Device,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (b, frames) = (x_dims[0], x_dims[1]);
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
        (Some(l), _) => Some(check_labels(cfg, "y", l, &[b], device)?),
        (None, _) => None,
    };
    let images = frames.saturating_sub(cfg.num_frames);
    let y_image = match (y_image, &y) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(LatteError::Value(
                "y_image: given without y (unconditional model?)".into(),
            ))
        }
        (Some(l), Some(_)) => Some(check_labels(cfg, "y_image", l, &[b, images], device)?),
    };
    Ok((y, y_image))
}
