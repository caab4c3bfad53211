//! # latte-rs
//!
//! [Latte](https://arxiv.org/abs/2401.03048) (Latent Diffusion Transformer for video generation) on candle:
//! every model variant of the paper (interleaved, late-fusion, factorised-attention and split-head blocks; frame
//! or tubelet patches; adaLN or token conditioning; absolute or rotary temporal positions), with parameter names
//! that match the official checkpoints.
//!
//! ```no_run
//! use latte_rs::{Condition, Denoiser, LatteConfig, LatteModel};
//! use candle_core::{DType, Device, Tensor};
//! let cfg = LatteConfig { num_frames: 16, ..LatteConfig::preset("Latte-S/2")? };
//! let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0)?;
//! let x = Tensor::zeros((2, 16, 4, 32, 32), DType::F32, &Device::Cpu)?;
//! let t = Tensor::new(&[10u32, 500], &Device::Cpu)?;
//! let eps = model.forward(&x, &t, &Condition::Unconditional)?; // (2, 16, 8, 32, 32)
//! # Ok::<(), latte_rs::LatteError>(())
//! ```

pub mod cache;
pub mod config;
pub mod diffusion;
pub mod error;
pub mod fastmath;
pub mod finite;
pub mod float;
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod limits;
pub mod long_video;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod rng;
pub mod runtime;
pub mod sampling;
pub mod train;
pub mod vae;
pub mod weights;

#[cfg(test)]
mod test_util;

#[cfg(feature = "python")]
mod python;

pub use config::{AttentionBackend, Injection, LatteConfig, PatchEmbed, TemporalPos, Variant};
pub use error::{LatteError, Result};
pub use model::{parse_device, Condition, Denoiser, Latte, LatteModel, LatteT2VModel};
pub use train::{StepStats, Trainer, TrainerOptions};
pub use weights::LoadReport;
