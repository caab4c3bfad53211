//! Timestep spacings and noise tables as diffusers (and torch) compute them.

use super::SchedulerConfig;
use crate::diffusion::respace::round_half_even;
use crate::diffusion::schedule::{betas_for_alpha_bar, linspace};

/// The "trailing" spacing: `np.round(np.arange(total, 0, -total / n)) - 1`.
pub(super) fn trailing_timesteps(total: usize, n: usize) -> Vec<i64> {
    let ratio = total as f64 / n as f64;
    let len = (total as f64 / ratio).ceil() as usize;
    (0..len)
        .map(|i| round_half_even(total as f64 - i as f64 * ratio) - 1)
        .collect()
}

/// Karras et al.'s spacing (ρ = 7) of `n` sigmas from `sigma_max` down to `sigma_min`.
pub(super) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// torch.linspace in f32: the first half counts up from `start`, the second half down from `end`.
pub(super) fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// ᾱ as diffusers computes it: betas in f32, cumulative product accumulated in f64, stored in f32.
pub(super) fn alphas_cumprod(cfg: &SchedulerConfig) -> Vec<f32> {
    let n = cfg.num_train_timesteps;
    let betas: Vec<f32> = match (&cfg.trained_betas, cfg.beta_schedule.as_str()) {
        (Some(b), _) => b.iter().map(|&v| v as f32).collect(),
        (None, "scaled_linear") => linspace_f32((cfg.beta_start as f32).sqrt(), (cfg.beta_end as f32).sqrt(), n)
            .iter()
            .map(|b| b * b)
            .collect(),
        (None, "squaredcos_cap_v2") => betas_for_alpha_bar(
            n,
            |t| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2),
            0.999,
        )
        .into_iter()
        .map(|b| b as f32)
        .collect(),
        _ => linspace_f32(cfg.beta_start as f32, cfg.beta_end as f32, n),
    };
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|b| {
            acc *= (1.0f32 - b) as f64;
            acc as f32
        })
        .collect()
}

/// NumPy's `interp` on an increasing grid 0, 1, …, n−1.
pub(super) fn interp_on_index(x: f64, values: &[f64]) -> f64 {
    let last = values.len() - 1;
    if x <= 0.0 {
        return values[0];
    }
    if x >= last as f64 {
        return values[last];
    }
    let i = x.floor() as usize;
    let w = x - i as f64;
    values[i] + w * (values[i + 1] - values[i])
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma is `sigma`'s.
pub(super) fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // low = the last index whose log-sigma is <= log_sigma (argmax of the cumulative count), clipped to n - 2.
    let count = log_sigmas.iter().filter(|&&l| log_sigma - l >= 0.0).count();
    let low_idx = if count == 0 { 0 } else { (count - 1).min(n - 2) };
    let (low, high) = (log_sigmas[low_idx], log_sigmas[low_idx + 1]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
}

/// (α_t, σ_t) of the VP process at noise level `sigma` (= σ/α).
pub(super) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}
