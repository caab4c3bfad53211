//! diffusers' scheduler config (`scheduler_config.json`), shared by every scheduler.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{value_error, LatteError, Result};

/// diffusers' scheduler config (`scheduler_config.json`). Keys this crate does not use are kept as they are,
/// so a config round-trips.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub variance_type: String,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub prediction_type: String,
    pub timestep_spacing: String,
    pub steps_offset: usize,
    pub set_alpha_to_one: bool,
    pub thresholding: bool,
    pub rescale_betas_zero_snr: bool,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            variance_type: "fixed_small".into(),
            clip_sample: true,
            clip_sample_range: 1.0,
            prediction_type: "epsilon".into(),
            timestep_spacing: "leading".into(),
            steps_offset: 0,
            set_alpha_to_one: true,
            thresholding: false,
            rescale_betas_zero_snr: false,
            other: BTreeMap::new(),
        }
    }
}

pub(crate) fn one_of(arg: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        let list = allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
        Err(value_error(arg, format!("one of {list}"), format!("{value:?}")))
    }
}

impl SchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        if self.num_train_timesteps == 0 {
            return Err(value_error("num_train_timesteps", "at least 1", 0));
        }
        one_of(
            "beta_schedule",
            &self.beta_schedule,
            &["linear", "scaled_linear", "squaredcos_cap_v2"],
        )?;
        one_of(
            "prediction_type",
            &self.prediction_type,
            &["epsilon", "sample", "v_prediction"],
        )?;
        one_of(
            "timestep_spacing",
            &self.timestep_spacing,
            &["leading", "trailing", "linspace"],
        )?;
        let variances = [
            "fixed_small",
            "fixed_small_log",
            "fixed_large",
            "fixed_large_log",
            "learned",
            "learned_range",
        ];
        one_of("variance_type", &self.variance_type, &variances)?;
        if self.thresholding || self.rescale_betas_zero_snr {
            return Err(LatteError::Unsupported(
                "thresholding and rescale_betas_zero_snr are not supported by latte-rs's schedulers yet".into(),
            ));
        }
        if self.num_train_timesteps > crate::diffusion::schedule::MAX_DIFFUSION_STEPS {
            return Err(value_error(
                "num_train_timesteps",
                format!("at most {}", crate::diffusion::schedule::MAX_DIFFUSION_STEPS),
                self.num_train_timesteps,
            ));
        }
        for (name, b) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if !(0.0..1.0).contains(&b) {
                return Err(value_error(name, "a value in [0, 1)", b));
            }
        }
        if let Some(b) = &self.trained_betas {
            crate::diffusion::schedule::check_betas(b, "trained_betas")?;
            if b.len() == self.num_train_timesteps {
                self.check_alphas_cumprod()?;
            }
            if b.len() != self.num_train_timesteps {
                return Err(value_error(
                    "trained_betas",
                    format!("{} values (num_train_timesteps)", self.num_train_timesteps),
                    b.len(),
                ));
            }
        }
        if self.trained_betas.is_none() {
            self.check_alphas_cumprod()?;
        }
        Ok(())
    }

    /// Refuses a schedule whose ᾱ reaches 0 in float32 (betas this large underflow the cumulative product): every
    /// scheduler divides by ᾱ or its root somewhere, so such a schedule gives NaN latents, in diffusers too.
    fn check_alphas_cumprod(&self) -> Result<()> {
        let acp = super::spacing::alphas_cumprod(self);
        if let Some(i) = acp
            .iter()
            .position(|a| a.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
        {
            return Err(LatteError::Value(format!(
                "beta_end / beta_schedule: alphas_cumprod reaches 0 in float32 at step {i} of {} (the betas are too \
                 large); expected a schedule whose signal never vanishes (e.g. beta_end <= 0.02 for \"linear\")",
                acp.len()
            )));
        }
        Ok(())
    }
}

/// `num_inference_steps` must lie in 1..=num_train_timesteps.
pub(crate) fn check_num_inference_steps(n: usize, total: usize) -> Result<()> {
    if n == 0 || n > total {
        return Err(value_error(
            "num_inference_steps",
            format!("1..={total} (num_train_timesteps)"),
            n,
        ));
    }
    Ok(())
}

/// The options one scheduler reads from the config's extra keys.
pub(crate) fn extra_options<T: serde::de::DeserializeOwned>(config: &SchedulerConfig) -> Result<T> {
    let map = config.other.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    crate::error::from_json_value(serde_json::Value::Object(map))
        .map_err(|e| LatteError::Value(format!("scheduler config: {e}")))
}
