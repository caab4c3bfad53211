//! Gaussian diffusion as Latte trains and samples it (IDDPM / DiT): beta schedules, the forward process, the
//! posterior, the model's predicted distribution with learned variance, the hybrid loss, timestep respacing; the
//! diffusers-style schedulers; and the one sampling loop over any model and any of them.
//!
//! Names follow the reference code (`q_sample`, `q_posterior_mean_variance`, `p_mean_variance`, `_vb_terms_bpd`)
//! so a reader can hold the two side by side. Per-timestep tables are f64; tensor math runs in the inputs' dtype.

pub mod gaussian;
pub mod respace;
pub mod sampler;
pub mod sampling;
pub mod schedule;
pub mod schedulers;

pub use gaussian::{DiffusionOptions, GaussianDiffusion, LossType, Losses, MeanType, PMeanVariance, VarType};
pub use respace::space_timesteps;
pub use sampler::{DiffusionSampler, SamplerKind};
pub use sampling::{draw_noise, sample, state_dtype, SamplingOptions};
pub use schedule::{betas_for_alpha_bar, named_beta_schedule, BetaSchedule};
pub use schedulers::{
    Churn, DdimScheduler, DdpmScheduler, DpmSolverMultistepScheduler, EulerDiscreteScheduler, Noise, NoiseSource,
    Scheduler, SchedulerConfig, StepOptions, StepOutput,
};
