//! Gaussian diffusion as Latte trains and samples it (IDDPM / DiT): beta schedules, the forward process, the
//! posterior, the model's predicted distribution with learned variance, the hybrid loss, and timestep respacing.
//!
//! Names follow the reference code (`q_sample`, `q_posterior_mean_variance`, `p_mean_variance`, `_vb_terms_bpd`)
//! so a reader can hold the two side by side. Per-timestep tables are f64; tensor math runs in the inputs' dtype.

pub mod gaussian;
pub mod respace;
pub mod sampling;
pub mod schedule;
pub mod schedulers;

pub use gaussian::{GaussianDiffusion, LossType, Losses, MeanType, PMeanVariance, VarType};
pub use respace::space_timesteps;
pub use sampling::Sampler;
pub use schedule::{betas_for_alpha_bar, named_beta_schedule, BetaSchedule};
pub use schedulers::{
    sample_with_scheduler, DpmSolverScheduler, EulerScheduler, NoiseScheduler, Scheduler, SchedulerConfig,
    SchedulerKind, StepOutput,
};
