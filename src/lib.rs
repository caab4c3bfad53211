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

/// Tensors here are large and short-lived (tens of MB per op); the system allocator maps and unmaps them each
/// time, paying a page fault per 4 KiB on every op. mimalloc keeps freed memory for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_t`, the same in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets up the process for latte-rs's workloads, once, before the first model is built:
///
/// - mimalloc keeps freed memory for reuse instead of returning it to the OS after 10 ms (its default). The
///   training path allocates and frees hundreds of MB per op; returning them made the kernel zero fresh pages for
///   every op, a quarter of the run time of a train step. The process keeps its peak resident memory instead, as
///   PyTorch's caching allocators do. `MIMALLOC_PURGE_DELAY` in the environment overrides this.
/// - candle's own elementwise thread pool is left at one thread (`CANDLE_NUM_THREADS=1`). latte-rs's kernels and
///   the GEMMs run on rayon's pool; a second pool of pinned, spinning threads competing for the same cores made
///   the demo's train step 14% slower (and a Latte-S/2 step 1.6% faster). `CANDLE_NUM_THREADS` in the environment
///   overrides this.
pub fn configure_runtime() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: sets an integer option; mimalloc reads options atomically.
            unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
        }
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            // Read by candle once, when its pool is first used (after this, before any tensor op of ours).
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    });
}

pub mod config;
pub mod diffusion;
pub mod error;
pub mod float;
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod rng;
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
