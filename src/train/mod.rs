//! Training: the [`Trainer`] and what it is made of, one job per file.
//!
//! - [`options`]: [`TrainerOptions`], the recipe and its learning-rate schedule;
//! - [`trainer`]: the step (draws, condition dropout, loss, backward, accumulation, the optimiser update);
//! - [`dropout`]: condition dropout for classifier-free guidance;
//! - [`optim`]: AdamW, the EMA and clipping as torch computes them, on flat buffers;
//! - [`host_state`] / [`device_state`]: the optimiser's state in host memory (fused CPU kernels) or as tensors on
//!   the parameters' device (the generic path, GPUs);
//! - [`checkpoint`]: resumable checkpoint folders, written atomically and read back through the verified reader
//!   of [`crate::weights::checkpoint`].

pub mod checkpoint;
mod device_state;
mod dropout;
mod host_state;
pub mod optim;
pub mod options;
#[cfg(test)]
mod tests;
pub mod trainer;

pub use device_state::host_values_read;
pub use options::TrainerOptions;
pub use trainer::{BatchGradients, Draws, LossScale, StepStats, Trainer};
