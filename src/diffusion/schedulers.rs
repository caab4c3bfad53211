//! Schedulers with diffusers' semantics (`DDPMScheduler`, `DDIMScheduler`): the same config keys, the same
//! `set_timesteps` spacings, the same `step` arithmetic in f32, so diffusers code swaps them in unchanged.
//!
//! The per-timestep tables are built as torch builds them (f32 `linspace`, a cumulative product accumulated in
//! f64 and stored in f32), which keeps full denoising loops within f32 rounding of diffusers'.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::respace::round_half_even;
use super::schedule::betas_for_alpha_bar;
use crate::error::{value_error, LatteError, Result};
use crate::rng::Generator;

/// Which diffusers scheduler this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddpm,
    Ddim,
}

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

fn one_of(arg: &str, value: &str, allowed: &[&str]) -> Result<()> {
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
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                return Err(value_error(
                    "trained_betas",
                    format!("{} values (num_train_timesteps)", self.num_train_timesteps),
                    b.len(),
                ));
            }
        }
        Ok(())
    }
}

/// `num_inference_steps` must lie in 1..=num_train_timesteps.
fn check_num_inference_steps(n: usize, total: usize) -> Result<()> {
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
fn extra_options<T: serde::de::DeserializeOwned>(config: &SchedulerConfig) -> Result<T> {
    let map = config.other.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok(serde_json::from_value(serde_json::Value::Object(map))?)
}

/// Checks `noise` against `original` and one timestep per sample; returns the (B, 1, …, 1) shape that per-sample
/// coefficients take to broadcast over `original`.
fn per_sample_shape(original: &Tensor, noise: &Tensor, num_timesteps: usize) -> Result<Vec<usize>> {
    if noise.dims() != original.dims() {
        return Err(value_error(
            "noise",
            format!("shape {:?}", original.dims()),
            format!("shape {:?}", noise.dims()),
        ));
    }
    let b = original.dims().first().copied().unwrap_or(0);
    if num_timesteps != b {
        return Err(value_error(
            "timesteps",
            format!("{b} values (one per sample)"),
            num_timesteps,
        ));
    }
    let mut shape = vec![1usize; original.rank()];
    shape[0] = b;
    Ok(shape)
}

/// The "trailing" spacing: `np.round(np.arange(total, 0, -total / n)) - 1`.
fn trailing_timesteps(total: usize, n: usize) -> Vec<i64> {
    let ratio = total as f64 / n as f64;
    let len = (total as f64 / ratio).ceil() as usize;
    (0..len)
        .map(|i| round_half_even(total as f64 - i as f64 * ratio) - 1)
        .collect()
}

/// Karras et al.'s spacing (ρ = 7) of `n` sigmas from `sigma_max` down to `sigma_min`.
fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    super::schedule::linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// torch.linspace in f32: the first half counts up from `start`, the second half down from `end`.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
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
fn alphas_cumprod(cfg: &SchedulerConfig) -> Vec<f32> {
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

/// A DDPM or DDIM scheduler.
#[derive(Clone, Debug)]
pub struct Scheduler {
    pub kind: SchedulerKind,
    pub config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    /// ᾱ before the first step (DDIM: 1 with `set_alpha_to_one`, else ᾱ₀; DDPM: 1).
    final_alpha_cumprod: f32,
    timesteps: Vec<i64>,
    num_inference_steps: Option<usize>,
}

/// One step's result, with diffusers' field names.
#[derive(Clone, Debug)]
pub struct StepOutput {
    pub prev_sample: Tensor,
    pub pred_original_sample: Tensor,
}

impl Scheduler {
    pub fn new(kind: SchedulerKind, config: SchedulerConfig) -> Result<Self> {
        config.validate()?;
        let alphas_cumprod = alphas_cumprod(&config);
        let final_alpha_cumprod = match kind {
            SchedulerKind::Ddim if !config.set_alpha_to_one => alphas_cumprod[0],
            _ => 1.0,
        };
        let timesteps = (0..config.num_train_timesteps as i64).rev().collect();
        Ok(Self {
            kind,
            config,
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps,
            num_inference_steps: None,
        })
    }

    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// The timesteps of the current schedule, descending.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    pub fn num_inference_steps(&self) -> Option<usize> {
        self.num_inference_steps
    }

    /// The standard deviation of the initial noise (1 for DDPM and DDIM).
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Chooses `n` of the training timesteps with the configured spacing ("leading" adds `steps_offset`).
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let total = self.config.num_train_timesteps;
        check_num_inference_steps(n, total)?;
        let timesteps: Vec<i64> = match self.config.timestep_spacing.as_str() {
            "linspace" => {
                let pts = super::schedule::linspace(0.0, (total - 1) as f64, n);
                pts.iter().rev().map(|v| round_half_even(*v)).collect()
            }
            "trailing" => trailing_timesteps(total, n),
            _ => {
                let ratio = (total / n) as i64;
                (0..n as i64)
                    .rev()
                    .map(|i| i * ratio + self.config.steps_offset as i64)
                    .collect()
            }
        };
        if let Some(bad) = timesteps.iter().find(|&&t| t < 0 || t as usize >= total) {
            return Err(value_error(
                "steps_offset",
                format!("timesteps inside [0, {total}) after the offset"),
                format!("timestep {bad}"),
            ));
        }
        self.timesteps = timesteps;
        self.num_inference_steps = Some(n);
        Ok(())
    }

    fn check_timestep(&self, t: i64) -> Result<usize> {
        if t < 0 || t as usize >= self.config.num_train_timesteps {
            return Err(value_error(
                "timestep",
                format!("a value in [0, {})", self.config.num_train_timesteps),
                t,
            ));
        }
        Ok(t as usize)
    }

    /// The timestep after `t` in the schedule (−1 after the last), as diffusers' `previous_timestep`.
    pub fn previous_timestep(&self, t: i64) -> Result<i64> {
        match (self.kind, self.num_inference_steps) {
            (SchedulerKind::Ddim, Some(n)) => Ok(t - (self.config.num_train_timesteps / n) as i64),
            (SchedulerKind::Ddpm, Some(_)) => {
                let i =
                    self.timesteps.iter().position(|&s| s == t).ok_or_else(|| {
                        value_error("timestep", "one of the scheduler's timesteps (see .timesteps)", t)
                    })?;
                Ok(self.timesteps.get(i + 1).copied().unwrap_or(-1))
            }
            (SchedulerKind::Ddim, None) => Err(LatteError::Value(
                "DDIMScheduler.step: call set_timesteps(num_inference_steps) first".into(),
            )),
            (SchedulerKind::Ddpm, None) => Ok(t - 1),
        }
    }

    fn alpha_prev(&self, prev: i64) -> f32 {
        if prev >= 0 {
            self.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// The sample's channel axis that a learned variance doubles: diffusers' axis 1 (B, C, …), or axis 2 for
    /// latte-rs's video layout (B, F, C, H, W).
    fn split_learned(&self, model_output: &Tensor, sample: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let learned = matches!(self.config.variance_type.as_str(), "learned" | "learned_range");
        let (o, s) = (model_output.dims(), sample.dims());
        for axis in [1usize, 2] {
            if learned && o.len() == s.len() && o.len() > axis && o[axis] == 2 * s[axis] {
                let c = s[axis];
                return Ok((model_output.narrow(axis, 0, c)?, Some(model_output.narrow(axis, c, c)?)));
            }
        }
        if o != s {
            return Err(value_error(
                "model_output",
                format!("the sample's shape {s:?}"),
                format!("shape {o:?}"),
            ));
        }
        Ok((model_output.clone(), None))
    }

    /// x₀ and ε predictions from the model output, as f32 scalars applied to tensors.
    fn predictions(&self, out: &Tensor, sample: &Tensor, a: f32) -> Result<(Tensor, Tensor)> {
        let b = 1.0 - a;
        let (sa, sb) = (a.sqrt() as f64, b.sqrt() as f64);
        let (x0, eps) = match self.config.prediction_type.as_str() {
            "epsilon" => (((sample - (out * sb)?)? / sa)?, out.clone()),
            "sample" => (out.clone(), ((sample - (out * sa)?)? / sb)?),
            _ => (((sample * sa)? - (out * sb)?)?, ((out * sa)? + (sample * sb)?)?),
        };
        Ok((x0, eps))
    }

    fn clip(&self, x0: Tensor) -> Result<Tensor> {
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            Ok(x0.clamp(-r, r)?)
        } else {
            Ok(x0)
        }
    }

    /// One reverse step from `sample` at `timestep`. `noise` is the standard normal draw for the stochastic part
    /// (DDPM at t > 0, DDIM with eta > 0); it is required then and ignored otherwise.
    pub fn step(
        &self,
        model_output: &Tensor,
        timestep: i64,
        sample: &Tensor,
        noise: Option<&Tensor>,
        eta: f64,
        use_clipped_model_output: bool,
    ) -> Result<StepOutput> {
        let t = self.check_timestep(timestep)?;
        let prev = self.previous_timestep(timestep)?;
        let (out, predicted_variance) = self.split_learned(model_output, sample)?;
        let a = self.alphas_cumprod[t];
        let a_prev = self.alpha_prev(prev);
        let (x0, eps) = self.predictions(&out, sample, a)?;
        let x0 = self.clip(x0)?;
        let need_noise = |what: &str| {
            noise.ok_or_else(|| LatteError::Value(format!("noise: required for {what} (pass a generator or noise)")))
        };
        let check_noise = |n: &Tensor| -> Result<()> {
            if n.dims() != x0.dims() {
                return Err(value_error(
                    "noise",
                    format!("shape {:?}", x0.dims()),
                    format!("shape {:?}", n.dims()),
                ));
            }
            Ok(())
        };
        let prev_sample = match self.kind {
            SchedulerKind::Ddpm => {
                let (b, b_prev) = (1.0 - a, 1.0 - a_prev);
                let current_alpha = a / a_prev;
                let current_beta = 1.0 - current_alpha;
                let x0_coeff = (a_prev.sqrt() * current_beta / b) as f64;
                let sample_coeff = (current_alpha.sqrt() * b_prev / b) as f64;
                let mean = ((&x0 * x0_coeff)? + (sample * sample_coeff)?)?;
                if t > 0 {
                    let z = need_noise("DDPM steps with t > 0")?;
                    check_noise(z)?;
                    let variance = (b_prev / b * current_beta).max(1e-20);
                    let scaled = match (self.config.variance_type.as_str(), predicted_variance) {
                        ("fixed_small_log", _) => (z * (0.5 * variance.ln()).exp() as f64)?,
                        ("fixed_large", _) => (z * current_beta.sqrt() as f64)?,
                        ("fixed_large_log", _) => {
                            // diffusers takes the square root of log β here, which is NaN; refuse instead.
                            return Err(LatteError::Value(
                                "variance_type: \"fixed_large_log\" cannot sample (diffusers gives NaN); use \"fixed_large\""
                                    .into(),
                            ));
                        }
                        ("learned", Some(v)) => z.mul(&v.sqrt()?)?,
                        ("learned_range", Some(v)) => {
                            let (min_log, max_log) = (variance.ln() as f64, current_beta.ln() as f64);
                            let frac = ((v + 1.0)? / 2.0)?;
                            let log_var = ((&frac * max_log)? + ((1.0 - &frac)? * min_log)?)?;
                            z.mul(&(log_var * 0.5)?.exp()?)?
                        }
                        ("learned" | "learned_range", None) => {
                            return Err(LatteError::Value(format!(
                                "model_output: variance_type {:?} needs twice the sample's channels",
                                self.config.variance_type
                            )))
                        }
                        _ => (z * variance.sqrt() as f64)?,
                    };
                    (mean + scaled)?
                } else {
                    mean
                }
            }
            SchedulerKind::Ddim => {
                let b = 1.0 - a;
                let variance = (1.0 - a_prev) / b * (1.0 - a / a_prev);
                let std = eta as f32 * variance.sqrt();
                let eps = if use_clipped_model_output {
                    ((sample - (&x0 * a.sqrt() as f64)?)? / b.sqrt() as f64)?
                } else {
                    eps
                };
                let direction = (eps * ((1.0 - a_prev - std * std) as f64).sqrt())?;
                let mut prev_sample = ((&x0 * a_prev.sqrt() as f64)? + direction)?;
                if eta > 0.0 {
                    let z = need_noise("DDIM steps with eta > 0")?;
                    check_noise(z)?;
                    prev_sample = (prev_sample + (z * std as f64)?)?;
                }
                prev_sample
            }
        };
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }

    /// q(x_t | x₀) at per-sample `timesteps`: √ᾱ x₀ + √(1−ᾱ) noise.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &[i64]) -> Result<Tensor> {
        let shape = per_sample_shape(original, noise, timesteps.len())?;
        let mut sa = Vec::with_capacity(timesteps.len());
        let mut sb = Vec::with_capacity(timesteps.len());
        for &t in timesteps {
            let a = self.alphas_cumprod[self.check_timestep(t)?];
            sa.push(a.sqrt());
            sb.push((1.0 - a).sqrt());
        }
        let dev = original.device();
        let sa = Tensor::from_vec(sa, shape.clone(), dev)?.to_dtype(original.dtype())?;
        let sb = Tensor::from_vec(sb, shape, dev)?.to_dtype(original.dtype())?;
        Ok((original.broadcast_mul(&sa)? + noise.broadcast_mul(&sb)?)?)
    }
}

/// Options only the Euler scheduler reads; they live in the config's extra keys (so DDPM/DDIM configs keep
/// exactly the keys they had).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
struct EulerOptions {
    interpolation_type: String,
    use_karras_sigmas: Option<bool>,
    use_exponential_sigmas: Option<bool>,
    use_beta_sigmas: Option<bool>,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    timestep_type: String,
    final_sigmas_type: String,
}

impl Default for EulerOptions {
    fn default() -> Self {
        Self {
            interpolation_type: "linear".into(),
            use_karras_sigmas: Some(false),
            use_exponential_sigmas: Some(false),
            use_beta_sigmas: Some(false),
            sigma_min: None,
            sigma_max: None,
            timestep_type: "discrete".into(),
            final_sigmas_type: "zero".into(),
        }
    }
}

/// NumPy's `interp` on an increasing grid 0, 1, …, n−1.
fn interp_on_index(x: f64, values: &[f64]) -> f64 {
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
fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // low = the last index whose log-sigma is <= log_sigma (argmax of the cumulative count), clipped to n - 2.
    let count = log_sigmas.iter().filter(|&&l| log_sigma - l >= 0.0).count();
    let low_idx = if count == 0 { 0 } else { (count - 1).min(n - 2) };
    let (low, high) = (log_sigmas[low_idx], log_sigmas[low_idx + 1]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
}

/// The Euler (Karras et al. Algorithm 2) scheduler with diffusers' `EulerDiscreteScheduler` semantics: sigmas
/// interpolated at the chosen timesteps (optionally Karras-spaced), inputs scaled by 1/√(σ²+1).
#[derive(Clone, Debug)]
pub struct EulerScheduler {
    pub config: SchedulerConfig,
    opts: EulerOptions,
    alphas_cumprod: Vec<f32>,
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    step_index: Option<usize>,
    num_inference_steps: Option<usize>,
}

impl EulerScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        config.validate()?;
        let opts: EulerOptions = extra_options(&config)?;
        one_of(
            "interpolation_type",
            &opts.interpolation_type,
            &["linear", "log_linear"],
        )?;
        one_of("final_sigmas_type", &opts.final_sigmas_type, &["zero", "sigma_min"])?;
        one_of("timestep_type", &opts.timestep_type, &["discrete"])?;
        if opts.use_exponential_sigmas == Some(true) || opts.use_beta_sigmas == Some(true) {
            return Err(LatteError::Unsupported(
                "use_exponential_sigmas / use_beta_sigmas are not supported by latte-rs's Euler scheduler yet".into(),
            ));
        }
        let alphas_cumprod = alphas_cumprod(&config);
        let n = config.num_train_timesteps;
        let mut sigmas: Vec<f32> = alphas_cumprod.iter().rev().map(|a| ((1.0 - a) / a).sqrt()).collect();
        sigmas.push(0.0);
        let timesteps = linspace_f32(0.0, (n - 1) as f32, n).into_iter().rev().collect();
        Ok(Self {
            config,
            opts,
            alphas_cumprod,
            sigmas,
            timesteps,
            step_index: None,
            num_inference_steps: None,
        })
    }

    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub fn num_inference_steps(&self) -> Option<usize> {
        self.num_inference_steps
    }

    pub fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().fold(0f32, |m, &s| m.max(s)) as f64;
        if self.config.timestep_spacing == "leading" {
            (max * max + 1.0).sqrt()
        } else {
            max
        }
    }

    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let total = self.config.num_train_timesteps;
        check_num_inference_steps(n, total)?;
        let mut timesteps: Vec<f64> = match self.config.timestep_spacing.as_str() {
            "leading" => {
                let ratio = total / n;
                (0..n)
                    .rev()
                    .map(|i| ((i * ratio) as f32 + self.config.steps_offset as f32) as f64)
                    .collect()
            }
            "trailing" => trailing_timesteps(total, n).into_iter().map(|t| t as f64).collect(),
            _ => linspace_f32(0.0, (total - 1) as f32, n)
                .into_iter()
                .rev()
                .map(|v| v as f64)
                .collect(),
        };
        let base: Vec<f64> = self
            .alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt() as f64)
            .collect();
        let log_sigmas: Vec<f64> = base.iter().map(|s| s.ln()).collect();
        let mut sigmas: Vec<f64> = match self.opts.interpolation_type.as_str() {
            "log_linear" => linspace_f32(base[total - 1].ln() as f32, base[0].ln() as f32, n + 1)
                .into_iter()
                .map(|v| (v.exp()) as f64)
                .collect(),
            _ => timesteps.iter().map(|&t| interp_on_index(t, &base)).collect(),
        };
        if self.opts.use_karras_sigmas == Some(true) {
            let sigma_min = self.opts.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let sigma_max = self.opts.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(sigma_min, sigma_max, n);
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
        }
        let last = if self.opts.final_sigmas_type == "sigma_min" {
            base[0]
        } else {
            0.0
        };
        sigmas.push(last);
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        self.timesteps = timesteps.into_iter().map(|t| t as f32).collect();
        self.step_index = None;
        self.num_inference_steps = Some(n);
        Ok(())
    }

    /// The step index of `timestep` (the second match if it appears twice, as diffusers).
    fn index_for_timestep(&self, timestep: f32) -> Result<usize> {
        let hits: Vec<usize> = self
            .timesteps
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == timestep)
            .map(|(i, _)| i)
            .collect();
        match hits.len() {
            0 => Err(value_error(
                "timestep",
                "one of the scheduler's timesteps (see .timesteps)",
                timestep,
            )),
            1 => Ok(hits[0]),
            _ => Ok(hits[1]),
        }
    }

    fn current_index(&mut self, timestep: f32) -> Result<usize> {
        match self.step_index {
            Some(i) if i + 1 < self.sigmas.len() => Ok(i),
            Some(_) => Err(LatteError::Value(
                "step: the schedule is finished; call set_timesteps again".into(),
            )),
            None => {
                let i = self.index_for_timestep(timestep)?;
                self.step_index = Some(i);
                Ok(i)
            }
        }
    }

    /// sample / √(σ² + 1) for the current step.
    pub fn scale_model_input(&mut self, sample: &Tensor, timestep: f32) -> Result<Tensor> {
        let i = self.current_index(timestep)?;
        let sigma = self.sigmas[i];
        Ok((sample / ((sigma * sigma + 1.0).sqrt() as f64))?)
    }

    /// One Euler step (with optional churn: `noise` is needed when s_churn > 0 applies at this sigma).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f32,
        sample: &Tensor,
        s_churn: f64,
        s_tmin: f64,
        s_tmax: f64,
        s_noise: f64,
        noise: Option<&Tensor>,
    ) -> Result<StepOutput> {
        if model_output.dims() != sample.dims() {
            return Err(value_error(
                "model_output",
                format!("the sample's shape {:?}", sample.dims()),
                format!("shape {:?}", model_output.dims()),
            ));
        }
        let i = self.current_index(timestep)?;
        let sigma = self.sigmas[i];
        let steps = (self.sigmas.len() - 1) as f64;
        let in_range = s_tmin <= sigma as f64 && sigma as f64 <= s_tmax;
        let gamma = if in_range {
            (s_churn / steps).min(2f64.sqrt() - 1.0) as f32
        } else {
            0.0
        };
        let sigma_hat = sigma * (gamma + 1.0);
        let mut sample = sample.clone();
        if gamma > 0.0 {
            let z = noise.ok_or_else(|| LatteError::Value("noise: required when s_churn > 0".into()))?;
            sample = (sample + (z * s_noise)? * ((sigma_hat * sigma_hat - sigma * sigma).sqrt() as f64))?;
        }
        let x0 = match self.config.prediction_type.as_str() {
            "sample" => model_output.clone(),
            "epsilon" => (&sample - (model_output * sigma_hat as f64)?)?,
            _ => {
                let s2 = sigma * sigma + 1.0;
                ((model_output * (-sigma / s2.sqrt()) as f64)? + (&sample / s2 as f64)?)?
            }
        };
        let derivative = ((&sample - &x0)? / sigma_hat as f64)?;
        let dt = self.sigmas[i + 1] - sigma_hat;
        let prev_sample = (&sample + (derivative * dt as f64)?)?;
        self.step_index = Some(i + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }

    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &[f32]) -> Result<Tensor> {
        let shape = per_sample_shape(original, noise, timesteps.len())?;
        let sig = timesteps
            .iter()
            .map(|&t| Ok(self.sigmas[self.index_for_timestep(t)?]))
            .collect::<Result<Vec<f32>>>()?;
        let sig = Tensor::from_vec(sig, shape, original.device())?.to_dtype(original.dtype())?;
        Ok((original + noise.broadcast_mul(&sig)?)?)
    }
}

/// Options of the DPM-Solver scheduler (extra config keys).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
struct DpmOptions {
    solver_order: usize,
    algorithm_type: String,
    solver_type: String,
    lower_order_final: bool,
    euler_at_final: bool,
    use_karras_sigmas: Option<bool>,
    use_exponential_sigmas: Option<bool>,
    use_beta_sigmas: Option<bool>,
    use_lu_lambdas: Option<bool>,
    use_flow_sigmas: Option<bool>,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    final_sigmas_type: String,
    lambda_min_clipped: Option<f64>,
}

impl Default for DpmOptions {
    fn default() -> Self {
        Self {
            solver_order: 2,
            algorithm_type: "dpmsolver++".into(),
            solver_type: "midpoint".into(),
            lower_order_final: true,
            euler_at_final: false,
            use_karras_sigmas: Some(false),
            use_exponential_sigmas: Some(false),
            use_beta_sigmas: Some(false),
            use_lu_lambdas: Some(false),
            use_flow_sigmas: Some(false),
            sigma_min: None,
            sigma_max: None,
            final_sigmas_type: "zero".into(),
            lambda_min_clipped: None,
        }
    }
}

/// DPM-Solver / DPM-Solver++ multistep (orders 1–2, midpoint or Heun) with diffusers'
/// `DPMSolverMultistepScheduler` semantics, including Karras sigmas and the lower-order final steps.
#[derive(Clone, Debug)]
pub struct DpmSolverScheduler {
    pub config: SchedulerConfig,
    opts: DpmOptions,
    alphas_cumprod: Vec<f32>,
    sigmas: Vec<f32>,
    timesteps: Vec<i64>,
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    step_index: Option<usize>,
    num_inference_steps: Option<usize>,
}

/// (α_t, σ_t) of the VP process at noise level `sigma` (= σ/α).
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

impl DpmSolverScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        config.validate()?;
        let opts: DpmOptions = extra_options(&config)?;
        one_of("algorithm_type", &opts.algorithm_type, &["dpmsolver++", "dpmsolver"])?;
        one_of("solver_type", &opts.solver_type, &["midpoint", "heun"])?;
        one_of("final_sigmas_type", &opts.final_sigmas_type, &["zero", "sigma_min"])?;
        if !(1..=2).contains(&opts.solver_order) {
            return Err(value_error(
                "solver_order",
                "1 or 2 (order 3 is not supported by latte-rs yet)",
                opts.solver_order,
            ));
        }
        if opts.algorithm_type == "dpmsolver" && opts.final_sigmas_type == "zero" {
            return Err(LatteError::Value(
                "final_sigmas_type: \"zero\" needs algorithm_type \"dpmsolver++\"; use \"sigma_min\"".into(),
            ));
        }
        let unsupported = [
            opts.use_exponential_sigmas,
            opts.use_beta_sigmas,
            opts.use_lu_lambdas,
            opts.use_flow_sigmas,
        ];
        if unsupported.contains(&Some(true)) || opts.lambda_min_clipped.is_some_and(|l| l.is_finite()) {
            return Err(LatteError::Unsupported(
                "exponential/beta/lu/flow sigmas and lambda_min_clipped are not supported by latte-rs yet".into(),
            ));
        }
        let alphas_cumprod = alphas_cumprod(&config);
        let order = opts.solver_order;
        Ok(Self {
            config,
            opts,
            alphas_cumprod,
            sigmas: vec![],
            timesteps: vec![],
            model_outputs: vec![None; order],
            lower_order_nums: 0,
            step_index: None,
            num_inference_steps: None,
        })
    }

    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub fn num_inference_steps(&self) -> Option<usize> {
        self.num_inference_steps
    }

    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let total = self.config.num_train_timesteps;
        check_num_inference_steps(n, total)?;
        let mut timesteps: Vec<f64> = match self.config.timestep_spacing.as_str() {
            "leading" => {
                let ratio = total / (n + 1);
                (1..=n)
                    .rev()
                    .map(|i| (i * ratio + self.config.steps_offset) as f64)
                    .collect::<Vec<_>>()
            }
            "trailing" => trailing_timesteps(total, n).into_iter().map(|t| t as f64).collect(),
            _ => {
                let pts = super::schedule::linspace(0.0, (total - 1) as f64, n + 1);
                pts.iter().rev().take(n).map(|v| round_half_even(*v) as f64).collect()
            }
        };
        let base: Vec<f64> = self
            .alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt() as f64)
            .collect();
        let log_sigmas: Vec<f64> = base.iter().map(|s| s.ln()).collect();
        let mut sigmas: Vec<f64> = if self.opts.use_karras_sigmas == Some(true) {
            let sigma_min = self.opts.sigma_min.unwrap_or(base[0]);
            let sigma_max = self.opts.sigma_max.unwrap_or(base[total - 1]);
            let s = karras_sigmas(sigma_min, sigma_max, n);
            timesteps = s.iter().map(|&v| sigma_to_t(v, &log_sigmas)).collect();
            if self.config.beta_schedule != "squaredcos_cap_v2" {
                timesteps = timesteps.iter().map(|t| round_half_even(*t) as f64).collect();
            }
            s
        } else {
            timesteps.iter().map(|&t| interp_on_index(t, &base)).collect()
        };
        let last = if self.opts.final_sigmas_type == "sigma_min" {
            base[0]
        } else {
            0.0
        };
        sigmas.push(last);
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        // Karras timesteps are fractional before rounding (cosine schedule); the schedule stores them as int64.
        self.timesteps = timesteps.into_iter().map(|t| t as i64).collect();
        self.num_inference_steps = Some(self.timesteps.len());
        self.model_outputs = vec![None; self.opts.solver_order];
        self.lower_order_nums = 0;
        self.step_index = None;
        Ok(())
    }

    /// The model output as x₀ (DPM-Solver++) or ε (DPM-Solver) at the current step.
    fn convert_model_output(&self, out: &Tensor, sample: &Tensor, i: usize) -> Result<Tensor> {
        let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
        let (alpha, sigma) = (alpha as f64, sigma as f64);
        let pred = self.config.prediction_type.as_str();
        Ok(if self.opts.algorithm_type == "dpmsolver++" {
            match pred {
                "epsilon" => ((sample - (out * sigma)?)? / alpha)?,
                "sample" => out.clone(),
                _ => ((sample * alpha)? - (out * sigma)?)?,
            }
        } else {
            match pred {
                "epsilon" => out.clone(),
                "sample" => ((sample - (out * alpha)?)? / sigma)?,
                _ => ((out * alpha)? + (sample * sigma)?)?,
            }
        })
    }

    /// One multistep update; returns (prev_sample, the converted model output).
    pub fn step(&mut self, model_output: &Tensor, timestep: i64, sample: &Tensor) -> Result<StepOutput> {
        let n = self.num_inference_steps.ok_or_else(|| {
            LatteError::Value("DPMSolverMultistepScheduler.step: call set_timesteps(num_inference_steps) first".into())
        })?;
        let i = match self.step_index {
            Some(i) if i < n => i,
            Some(_) => {
                return Err(LatteError::Value(
                    "step: the schedule is finished; call set_timesteps again".into(),
                ))
            }
            None => {
                let hits: Vec<usize> = self
                    .timesteps
                    .iter()
                    .enumerate()
                    .filter(|(_, &t)| t == timestep)
                    .map(|(k, _)| k)
                    .collect();
                match hits.len() {
                    0 => n - 1,
                    1 => hits[0],
                    _ => hits[1],
                }
            }
        };
        // A learned variance doubles the channels; the solver uses the prediction half.
        let learned = matches!(self.config.variance_type.as_str(), "learned" | "learned_range");
        let out = if learned && self.config.prediction_type == "epsilon" {
            let (o, s) = (model_output.dims(), sample.dims());
            match [1usize, 2]
                .into_iter()
                .find(|&a| o.len() > a && o.len() == s.len() && o[a] == 2 * s[a])
            {
                Some(axis) => model_output.narrow(axis, 0, s[axis])?,
                None => model_output.clone(),
            }
        } else {
            model_output.clone()
        };
        if out.dims() != sample.dims() {
            return Err(value_error(
                "model_output",
                format!("the sample's shape {:?}", sample.dims()),
                format!("shape {:?}", model_output.dims()),
            ));
        }
        let lower_order_final = i == n - 1
            && (self.opts.euler_at_final
                || (self.opts.lower_order_final && n < 15)
                || self.opts.final_sigmas_type == "zero");
        let converted = self.convert_model_output(&out, sample, i)?;
        self.model_outputs.rotate_left(1);
        let last = self.model_outputs.len() - 1;
        self.model_outputs[last] = Some(converted.clone());

        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let lambda = |a: f32, s: f32| a.ln() - s.ln();
        let (lambda_t, lambda_s0) = (lambda(alpha_t, sigma_t), lambda(alpha_s0, sigma_s0));
        let h = lambda_t - lambda_s0;
        let plus = self.opts.algorithm_type == "dpmsolver++";
        let first = |d0: &Tensor| -> Result<Tensor> {
            Ok(if plus {
                ((sample * (sigma_t / sigma_s0) as f64)? - (d0 * (alpha_t * ((-h).exp() - 1.0)) as f64)?)?
            } else {
                ((sample * (alpha_t / alpha_s0) as f64)? - (d0 * (sigma_t * (h.exp() - 1.0)) as f64)?)?
            })
        };
        let use_first = self.opts.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final;
        let prev_sample = if use_first {
            first(&converted)?
        } else {
            let m0 = &converted;
            let m1 = self.model_outputs[last - 1]
                .as_ref()
                .ok_or_else(|| LatteError::Value("step: missing the previous model output".into()))?;
            let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
            let h0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
            let r0 = h0 / h;
            let d1 = ((m0 - m1)? * (1.0 / r0) as f64)?;
            let base = first(m0)?;
            let correction = match (plus, self.opts.solver_type.as_str()) {
                (true, "midpoint") => (&d1 * (-0.5 * (alpha_t * ((-h).exp() - 1.0))) as f64)?,
                (true, _) => (&d1 * (alpha_t * (((-h).exp() - 1.0) / h + 1.0)) as f64)?,
                (false, "midpoint") => (&d1 * (-0.5 * (sigma_t * (h.exp() - 1.0))) as f64)?,
                (false, _) => (&d1 * (-(sigma_t * ((h.exp() - 1.0) / h - 1.0))) as f64)?,
            };
            (base + correction)?
        };
        if self.lower_order_nums < self.opts.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: converted,
        })
    }
}

/// What a sampling loop needs from any scheduler: the schedule, input scaling and one step. Every random draw
/// comes from the loop's generator.
pub trait NoiseScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()>;
    /// The schedule's timesteps as the model sees them (fractional for Euler with Karras sigmas).
    fn model_timesteps(&self) -> Vec<f64>;
    fn init_noise_sigma(&self) -> f64;
    fn scale_model_input(&mut self, sample: &Tensor, t: f64) -> Result<Tensor>;
    fn step_with_rng(&mut self, eps: &Tensor, t: f64, sample: &Tensor, rng: &mut Generator) -> Result<Tensor>;
}

impl NoiseScheduler for Scheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        Scheduler::set_timesteps(self, n)
    }
    fn model_timesteps(&self) -> Vec<f64> {
        self.timesteps.iter().map(|&t| t as f64).collect()
    }
    fn init_noise_sigma(&self) -> f64 {
        Scheduler::init_noise_sigma(self)
    }
    fn scale_model_input(&mut self, sample: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(sample.clone())
    }
    fn step_with_rng(&mut self, eps: &Tensor, t: f64, sample: &Tensor, rng: &mut Generator) -> Result<Tensor> {
        let t = t as i64;
        let noise = match self.kind {
            SchedulerKind::Ddpm if t > 0 => Some(rng.randn(sample.dims(), sample.dtype(), sample.device())?),
            _ => None,
        };
        Ok(self.step(eps, t, sample, noise.as_ref(), 0.0, false)?.prev_sample)
    }
}

impl NoiseScheduler for EulerScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        EulerScheduler::set_timesteps(self, n)
    }
    fn model_timesteps(&self) -> Vec<f64> {
        self.timesteps.iter().map(|&t| t as f64).collect()
    }
    fn init_noise_sigma(&self) -> f64 {
        EulerScheduler::init_noise_sigma(self)
    }
    fn scale_model_input(&mut self, sample: &Tensor, t: f64) -> Result<Tensor> {
        EulerScheduler::scale_model_input(self, sample, t as f32)
    }
    fn step_with_rng(&mut self, eps: &Tensor, t: f64, sample: &Tensor, _rng: &mut Generator) -> Result<Tensor> {
        Ok(self
            .step(eps, t as f32, sample, 0.0, 0.0, f64::INFINITY, 1.0, None)?
            .prev_sample)
    }
}

impl NoiseScheduler for DpmSolverScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        DpmSolverScheduler::set_timesteps(self, n)
    }
    fn model_timesteps(&self) -> Vec<f64> {
        self.timesteps.iter().map(|&t| t as f64).collect()
    }
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn scale_model_input(&mut self, sample: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(sample.clone())
    }
    fn step_with_rng(&mut self, eps: &Tensor, t: f64, sample: &Tensor, _rng: &mut Generator) -> Result<Tensor> {
        Ok(self.step(eps, t as i64, sample)?.prev_sample)
    }
}

/// Runs a whole denoising loop with any scheduler: x_T = init_noise_sigma · noise, then for each timestep the
/// model's prediction (`model(x, t)`, already reduced to the prediction channels) and a scheduler step.
/// `progress(done, total)` after each step; an error from it stops the loop.
pub fn sample_with_scheduler(
    scheduler: &mut dyn NoiseScheduler,
    num_inference_steps: usize,
    noise: Tensor,
    mut model: impl FnMut(&Tensor, f64) -> Result<Tensor>,
    rng: &mut Generator,
    mut progress: impl FnMut(usize, usize) -> Result<()>,
) -> Result<Tensor> {
    scheduler.set_timesteps(num_inference_steps)?;
    let timesteps = scheduler.model_timesteps();
    let mut x = (noise * scheduler.init_noise_sigma())?;
    for (done, &t) in timesteps.iter().enumerate() {
        let input = scheduler.scale_model_input(&x, t)?;
        let eps = model(&input, t)?;
        x = scheduler.step_with_rng(&eps, t, &x, rng)?;
        progress(done + 1, timesteps.len())?;
    }
    Ok(x)
}
