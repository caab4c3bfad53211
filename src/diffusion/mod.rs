//! Gaussian diffusion as Latte trains and samples it (IDDPM / DiT): beta schedules, the forward process, the
//! posterior, the model's predicted distribution with learned variance, the hybrid loss, timestep respacing; and
//! the diffusers-style schedulers. Nothing here knows a model: the sampling loop that drives a model with a
//! scheduler is [`crate::sampling`], the train step is [`crate::train`].
//!
//! Names follow the reference code (`q_sample`, `q_posterior_mean_variance`, `p_mean_variance`, `_vb_terms_bpd`)
//! so a reader can hold the two side by side. Per-timestep tables are f64; tensor math runs in the inputs' dtype.

mod fused_loss;
pub mod gaussian;
pub mod respace;
pub mod sampler;
pub mod schedule;
pub mod schedulers;

pub use gaussian::{DiffusionOptions, GaussianDiffusion, LossType, Losses, MeanType, PMeanVariance, VarType};
pub use respace::space_timesteps;
pub use sampler::{DiffusionSampler, SamplerKind};
pub use schedule::{betas_for_alpha_bar, named_beta_schedule, BetaSchedule};
pub use schedulers::{
    Churn, DdimScheduler, DdpmScheduler, DpmSolverMultistepScheduler, EulerDiscreteScheduler, Noise, NoiseSource,
    Scheduler, SchedulerConfig, StepOptions, StepOutput,
};
