//! Beta schedules.

use crate::error::{LatteError, Result};

/// The noise schedules Latte and diffusers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    /// Ho et al.'s linear schedule 1e-4 → 0.02, scaled by 1000 / T so it stays similar for any T (DiT's "linear").
    Linear,
    /// Linear in √β between `beta_start` and `beta_end` (Stable Diffusion's "scaled_linear").
    ScaledLinear,
    /// The cosine schedule of Nichol & Dhariwal, β capped at 0.999 ("squaredcos_cap_v2").
    SquaredcosCapV2,
}

impl BetaSchedule {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "linear" => Ok(Self::Linear),
            "scaled_linear" => Ok(Self::ScaledLinear),
            "squaredcos_cap_v2" | "cosine" => Ok(Self::SquaredcosCapV2),
            other => Err(LatteError::Value(format!(
                "noise_schedule: expected \"linear\", \"scaled_linear\" or \"squaredcos_cap_v2\", got {other:?}"
            ))),
        }
    }
}

/// `n` evenly spaced values from `start` to `end` inclusive (NumPy's `linspace`).
pub fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            (0..n)
                .map(|i| if i == n - 1 { end } else { start + step * i as f64 })
                .collect()
        }
    }
}

/// Betas discretising the cumulative product `alpha_bar(t)`, t ∈ [0, 1], each capped at `max_beta`.
pub fn betas_for_alpha_bar(num_timesteps: usize, alpha_bar: impl Fn(f64) -> f64, max_beta: f64) -> Vec<f64> {
    (0..num_timesteps)
        .map(|i| {
            let t1 = i as f64 / num_timesteps as f64;
            let t2 = (i + 1) as f64 / num_timesteps as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta)
        })
        .collect()
}

/// The betas of a named schedule. `Linear` uses DiT's fixed endpoints (scaled by 1000/T); `ScaledLinear` uses
/// `beta_start`/`beta_end` (Stable Diffusion: 0.00085, 0.012).
pub fn named_beta_schedule(
    schedule: BetaSchedule,
    num_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
) -> Result<Vec<f64>> {
    if num_timesteps == 0 {
        return Err(LatteError::Value("diffusion_steps: expected at least 1, got 0".into()));
    }
    if num_timesteps > MAX_DIFFUSION_STEPS {
        return Err(LatteError::Value(format!(
            "diffusion_steps: expected at most {MAX_DIFFUSION_STEPS}, got {num_timesteps}"
        )));
    }
    if schedule == BetaSchedule::ScaledLinear {
        for (name, b) in [("beta_start", beta_start), ("beta_end", beta_end)] {
            if !(b > 0.0 && b < 1.0) {
                return Err(LatteError::Value(format!(
                    "{name}: expected a value in (0, 1), got {b}"
                )));
            }
        }
    }
    // The betas are checked where every process is made (`GaussianDiffusion::new`).
    Ok(match schedule {
        BetaSchedule::Linear => {
            let scale = 1000.0 / num_timesteps as f64;
            linspace(scale * 0.0001, scale * 0.02, num_timesteps)
        }
        BetaSchedule::ScaledLinear => linspace(beta_start.sqrt(), beta_end.sqrt(), num_timesteps)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar(
            num_timesteps,
            |t| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2),
            0.999,
        ),
    })
}

/// The most diffusion steps a schedule may have (the paper's models use 1000).
pub const MAX_DIFFUSION_STEPS: usize = 1_000_000;

/// Refuses betas outside (0, 1] or non-finite (each gives NaN or infinite tables downstream); `what` names them.
pub fn check_betas(betas: &[f64], what: &str) -> Result<()> {
    if let Some((i, b)) = betas.iter().enumerate().find(|(_, b)| !(**b > 0.0 && **b <= 1.0)) {
        return Err(LatteError::Value(format!(
            "{what}: expected every beta in (0, 1], got {b} at step {i} of {}",
            betas.len()
        )));
    }
    Ok(())
}
