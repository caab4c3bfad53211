//! The Gaussian diffusion process of IDDPM/DiT, for video tensors (B, F, C, H, W).
//!
//! One file on purpose (over the ~600-line guide): it follows the reference `gaussian_diffusion.py` function by
//! function and in its order (tables, `q_sample`, `q_posterior_mean_variance`, `p_mean_variance`, the sampling
//! steps, `_vb_terms_bpd`, `training_losses`), so a reader can hold the two side by side; split, every function
//! would still need the same tables and each other.

use candle_core::{Tensor, D};

use crate::error::{value_error, LatteError, Result};

/// What the model's first `C` output channels predict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MeanType {
    /// The noise ε (Latte, DiT).
    Epsilon,
    /// The clean sample x₀.
    StartX,
    /// The velocity v = √ᾱ ε − √(1−ᾱ) x₀.
    Velocity,
}

impl MeanType {
    /// diffusers' `prediction_type` name of this mean type (what a sampler must be told).
    pub fn prediction_type(self) -> &'static str {
        match self {
            MeanType::Epsilon => "epsilon",
            MeanType::StartX => "sample",
            MeanType::Velocity => "v_prediction",
        }
    }

    /// The mean type of diffusers' `prediction_type` name.
    pub fn from_prediction_type(name: &str) -> Result<Self> {
        [MeanType::Epsilon, MeanType::StartX, MeanType::Velocity]
            .into_iter()
            .find(|m| m.prediction_type() == name)
            .ok_or_else(|| {
                value_error(
                    "prediction_type",
                    "\"epsilon\", \"sample\" or \"v_prediction\"",
                    format!("{name:?}"),
                )
            })
    }
}

/// How the variance of p(x_{t−1} | x_t) is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VarType {
    /// The posterior variance β̃_t.
    FixedSmall,
    /// β_t (with β̃_1 at t = 0 for a better decoder likelihood).
    FixedLarge,
    /// The model outputs log σ² in its second `C` channels.
    Learned,
    /// The model outputs v ∈ [−1, 1]: log σ² = frac · log β_t + (1 − frac) · log β̃_t, frac = (v + 1) / 2.
    LearnedRange,
}

impl VarType {
    pub fn is_learned(self) -> bool {
        matches!(self, Self::Learned | Self::LearnedRange)
    }

    /// Its name in diffusers' `variance_type` words ("fixed_small", "fixed_large", "learned", "learned_range").
    pub fn name(self) -> &'static str {
        match self {
            Self::FixedSmall => "fixed_small",
            Self::FixedLarge => "fixed_large",
            Self::Learned => "learned",
            Self::LearnedRange => "learned_range",
        }
    }
}

/// The training objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LossType {
    /// MSE on the prediction (+ the VB term for learned variance): the hybrid loss of IDDPM / DiT / Latte.
    Mse,
    /// As `Mse`, with the VB term scaled by T / 1000.
    RescaledMse,
    /// The variational bound alone.
    Kl,
    /// The variational bound times T.
    RescaledKl,
}

impl LossType {
    /// Its name as the reference code's `LossType` ("mse", "rescaled_mse", "kl", "rescaled_kl").
    pub fn name(self) -> &'static str {
        match self {
            Self::Mse => "mse",
            Self::RescaledMse => "rescaled_mse",
            Self::Kl => "kl",
            Self::RescaledKl => "rescaled_kl",
        }
    }
}

/// The model's predicted distribution p(x_{t−1} | x_t) and its x₀ estimate.
#[derive(Clone, Debug)]
pub struct PMeanVariance {
    pub mean: Tensor,
    pub variance: Tensor,
    pub log_variance: Tensor,
    pub pred_xstart: Tensor,
}

/// Per-sample loss terms, each of shape (B,).
#[derive(Clone, Debug)]
pub struct Losses {
    pub loss: Tensor,
    pub mse: Option<Tensor>,
    pub vb: Option<Tensor>,
}

/// A (possibly respaced) Gaussian diffusion process with its per-timestep tables in f64.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GaussianDiffusion {
    pub mean_type: MeanType,
    pub var_type: VarType,
    pub loss_type: LossType,
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    pub alphas_cumprod_next: Vec<f64>,
    pub sqrt_alphas_cumprod: Vec<f64>,
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    pub log_one_minus_alphas_cumprod: Vec<f64>,
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    pub posterior_variance: Vec<f64>,
    pub posterior_log_variance_clipped: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
    /// For a respaced process: the original timestep of each step (what the model is conditioned on).
    pub timestep_map: Vec<usize>,
    /// Steps of the process this one was respaced from (= `num_timesteps()` when not respaced).
    pub original_num_steps: usize,
}

fn cumprod(v: &[f64]) -> Vec<f64> {
    v.iter()
        .scan(1.0, |acc, x| {
            *acc *= x;
            Some(*acc)
        })
        .collect()
}

impl GaussianDiffusion {
    /// A process saved as JSON (a trainer checkpoint's `diffusion.json`), checked by [`Self::validate`].
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let process: Self = crate::error::parse_json(bytes).map_err(LatteError::Value)?;
        process.validate()?;
        Ok(process)
    }

    /// Checks a process read from a file (a checkpoint's `diffusion.json` is data, not code): at least one step,
    /// every table the one its betas give (as long, and equal up to the last bits a platform's `ln` may round
    /// differently), and a timestep map that rises within the original process. An inconsistent file would
    /// otherwise index past a table's end, or train and sample with another process than the one it names.
    pub fn validate(&self) -> Result<()> {
        let n = self.betas.len();
        if n == 0 {
            return Err(value_error("diffusion betas", "at least one step", "none"));
        }
        super::schedule::check_betas(&self.betas, "diffusion betas")?;
        if n > super::schedule::MAX_DIFFUSION_STEPS {
            return Err(value_error("diffusion betas", "at most 1000000 steps", n));
        }
        let derived = Self::new(self.betas.clone(), self.mean_type, self.var_type, self.loss_type)?;
        let same = |a: f64, b: f64| a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
        for ((name, table), (_, want)) in self.tables().into_iter().zip(derived.tables()) {
            if table.len() != want.len() {
                return Err(value_error(
                    name,
                    format!("{} values (one per step)", want.len()),
                    table.len(),
                ));
            }
            if let Some(i) = (0..n).find(|&i| !same(table[i], want[i])) {
                return Err(value_error(
                    name,
                    format!("{} at step {i} (the value the betas give)", want[i]),
                    table[i],
                ));
            }
        }
        let map = &self.timestep_map;
        if map.len() != n {
            return Err(value_error(
                "timestep_map",
                format!("{n} entries (one per step)"),
                map.len(),
            ));
        }
        if self.original_num_steps < n || self.original_num_steps > super::schedule::MAX_DIFFUSION_STEPS {
            return Err(value_error(
                "original_num_steps",
                format!("a count from {n} to {}", super::schedule::MAX_DIFFUSION_STEPS),
                self.original_num_steps,
            ));
        }
        if map.windows(2).any(|w| w[0] >= w[1]) || map.last().is_some_and(|&t| t >= self.original_num_steps) {
            return Err(value_error(
                "timestep_map",
                format!("increasing timesteps below {}", self.original_num_steps),
                format!("{map:?}"),
            ));
        }
        Ok(())
    }

    /// The process with these betas (each in (0, 1]).
    pub fn new(betas: Vec<f64>, mean_type: MeanType, var_type: VarType, loss_type: LossType) -> Result<Self> {
        if betas.is_empty() {
            return Err(LatteError::Value(
                "betas: expected a non-empty list of values in (0, 1]".into(),
            ));
        }
        super::schedule::check_betas(&betas, "betas")?;
        let n = betas.len();
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let acp = cumprod(&alphas);
        let acp_prev: Vec<f64> = std::iter::once(1.0).chain(acp[..n - 1].iter().copied()).collect();
        let acp_next: Vec<f64> = acp[1..].iter().copied().chain(std::iter::once(0.0)).collect();
        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        let posterior_variance = map(&|i| betas[i] * (1.0 - acp_prev[i]) / (1.0 - acp[i]));
        // The posterior variance is 0 at t = 0: its log is clipped to the value at t = 1. A one-step process has no
        // t = 1; its t = 0 takes β_0, the variance the fixed-large choice uses there too (the reference, which
        // indexes t = 1, cannot make one-step processes at all).
        let posterior_log_variance_clipped = if n > 1 {
            map(&|i| posterior_variance[i.max(1)].ln())
        } else {
            vec![betas[0].ln()]
        };
        Ok(Self {
            mean_type,
            var_type,
            loss_type,
            sqrt_alphas_cumprod: map(&|i| acp[i].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|i| (1.0 - acp[i]).sqrt()),
            log_one_minus_alphas_cumprod: map(&|i| (1.0 - acp[i]).ln()),
            sqrt_recip_alphas_cumprod: map(&|i| (1.0 / acp[i]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|i| (1.0 / acp[i] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|i| betas[i] * acp_prev[i].sqrt() / (1.0 - acp[i])),
            posterior_mean_coef2: map(&|i| (1.0 - acp_prev[i]) * alphas[i].sqrt() / (1.0 - acp[i])),
            posterior_variance,
            posterior_log_variance_clipped,
            timestep_map: (0..n).collect(),
            original_num_steps: n,
            alphas_cumprod: acp,
            alphas_cumprod_prev: acp_prev,
            alphas_cumprod_next: acp_next,
            betas,
        })
    }

    /// The process that keeps only `use_timesteps` of the one with `base_betas`, with betas re-derived so that
    /// the kept steps have the same ᾱ as in the base process.
    pub fn spaced(
        base_betas: Vec<f64>,
        use_timesteps: &[usize],
        mean_type: MeanType,
        var_type: VarType,
        loss_type: LossType,
    ) -> Result<Self> {
        let n = base_betas.len();
        let base = Self::new(base_betas, mean_type, var_type, loss_type)?;
        let mut keep = vec![false; n];
        for &t in use_timesteps {
            if t >= n {
                return Err(value_error("use_timesteps", format!("steps in [0, {n})"), t));
            }
            keep[t] = true;
        }
        let mut last = 1.0;
        let mut betas = Vec::new();
        let mut timestep_map = Vec::new();
        for (i, &acp) in base.alphas_cumprod.iter().enumerate() {
            if keep[i] {
                betas.push(1.0 - acp / last);
                last = acp;
                timestep_map.push(i);
            }
        }
        let mut spaced = Self::new(betas, mean_type, var_type, loss_type)?;
        spaced.timestep_map = timestep_map;
        spaced.original_num_steps = n;
        Ok(spaced)
    }

    pub fn num_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// The per-step tables derived from the betas, by name.
    fn tables(&self) -> [(&'static str, &Vec<f64>); 12] {
        [
            ("alphas_cumprod", &self.alphas_cumprod),
            ("alphas_cumprod_prev", &self.alphas_cumprod_prev),
            ("alphas_cumprod_next", &self.alphas_cumprod_next),
            ("sqrt_alphas_cumprod", &self.sqrt_alphas_cumprod),
            ("sqrt_one_minus_alphas_cumprod", &self.sqrt_one_minus_alphas_cumprod),
            ("log_one_minus_alphas_cumprod", &self.log_one_minus_alphas_cumprod),
            ("sqrt_recip_alphas_cumprod", &self.sqrt_recip_alphas_cumprod),
            ("sqrt_recipm1_alphas_cumprod", &self.sqrt_recipm1_alphas_cumprod),
            ("posterior_variance", &self.posterior_variance),
            ("posterior_log_variance_clipped", &self.posterior_log_variance_clipped),
            ("posterior_mean_coef1", &self.posterior_mean_coef1),
            ("posterior_mean_coef2", &self.posterior_mean_coef2),
        ]
    }

    fn check_t(&self, t: &[usize], x: &Tensor) -> Result<()> {
        let b = x.dims().first().copied().unwrap_or(0);
        if t.len() != b {
            return Err(value_error("t", format!("{b} timesteps (one per sample)"), t.len()));
        }
        if let Some(bad) = t.iter().find(|&&i| i >= self.num_timesteps()) {
            return Err(value_error("t", format!("steps in [0, {})", self.num_timesteps()), bad));
        }
        Ok(())
    }

    /// `table[t]` per sample as a (B, 1, …, 1) tensor shaped to broadcast over `like`.
    fn extract(&self, table: &[f64], t: &[usize], like: &Tensor) -> Result<Tensor> {
        let mut shape = vec![1usize; like.rank()];
        shape[0] = t.len();
        // Every caller checks `t` against the process's steps, and a loaded process has tables as long as its
        // steps; a step past a table is still an error, never a panic.
        let values = t
            .iter()
            .map(|&i| {
                table
                    .get(i)
                    .copied()
                    .ok_or_else(|| value_error("t", format!("steps in [0, {})", table.len()), i))
            })
            .collect::<Result<Vec<f64>>>()?;
        Ok(Tensor::from_vec(values, shape, like.device())?.to_dtype(like.dtype())?)
    }

    fn same_shape(name: &str, a: &Tensor, b: &Tensor) -> Result<()> {
        if a.dims() != b.dims() {
            return Err(value_error(
                name,
                format!("shape {:?}", b.dims()),
                format!("shape {:?}", a.dims()),
            ));
        }
        Ok(())
    }

    /// Samples x_t ~ q(x_t | x₀) with the given noise: √ᾱ_t x₀ + √(1−ᾱ_t) ε.
    pub fn q_sample(&self, x_start: &Tensor, t: &[usize], noise: &Tensor) -> Result<Tensor> {
        self.check_t(t, x_start)?;
        Self::same_shape("noise", noise, x_start)?;
        let a = self.extract(&self.sqrt_alphas_cumprod, t, x_start)?;
        let b = self.extract(&self.sqrt_one_minus_alphas_cumprod, t, x_start)?;
        Ok((x_start.broadcast_mul(&a)? + noise.broadcast_mul(&b)?)?)
    }

    /// Mean, variance and clipped log-variance of the posterior q(x_{t−1} | x_t, x₀).
    pub fn q_posterior_mean_variance(
        &self,
        x_start: &Tensor,
        x_t: &Tensor,
        t: &[usize],
    ) -> Result<(Tensor, Tensor, Tensor)> {
        self.check_t(t, x_t)?;
        Self::same_shape("x_start", x_start, x_t)?;
        let c1 = self.extract(&self.posterior_mean_coef1, t, x_t)?;
        let c2 = self.extract(&self.posterior_mean_coef2, t, x_t)?;
        let mean = (x_start.broadcast_mul(&c1)? + x_t.broadcast_mul(&c2)?)?;
        let var = self
            .extract(&self.posterior_variance, t, x_t)?
            .broadcast_as(x_t.shape())?
            .contiguous()?;
        let log_var = self
            .extract(&self.posterior_log_variance_clipped, t, x_t)?
            .broadcast_as(x_t.shape())?
            .contiguous()?;
        Ok((mean, var, log_var))
    }

    /// x₀ from a noise prediction: √(1/ᾱ) x_t − √(1/ᾱ − 1) ε.
    pub fn predict_xstart_from_eps(&self, x_t: &Tensor, t: &[usize], eps: &Tensor) -> Result<Tensor> {
        let a = self.extract(&self.sqrt_recip_alphas_cumprod, t, x_t)?;
        let b = self.extract(&self.sqrt_recipm1_alphas_cumprod, t, x_t)?;
        Ok((x_t.broadcast_mul(&a)? - eps.broadcast_mul(&b)?)?)
    }

    /// ε from an x₀ prediction (the inverse of [`Self::predict_xstart_from_eps`]).
    pub fn predict_eps_from_xstart(&self, x_t: &Tensor, t: &[usize], pred_xstart: &Tensor) -> Result<Tensor> {
        let a = self.extract(&self.sqrt_recip_alphas_cumprod, t, x_t)?;
        let b = self.extract(&self.sqrt_recipm1_alphas_cumprod, t, x_t)?;
        Ok(x_t.broadcast_mul(&a)?.sub(pred_xstart)?.broadcast_div(&b)?)
    }

    /// x₀ from a velocity prediction: √ᾱ x_t − √(1−ᾱ) v.
    fn predict_xstart_from_v(&self, x_t: &Tensor, t: &[usize], v: &Tensor) -> Result<Tensor> {
        let a = self.extract(&self.sqrt_alphas_cumprod, t, x_t)?;
        let b = self.extract(&self.sqrt_one_minus_alphas_cumprod, t, x_t)?;
        Ok((x_t.broadcast_mul(&a)? - v.broadcast_mul(&b)?)?)
    }

    /// Splits a model output (B, F, C or 2C, H, W) into the prediction and the variance values, checking the
    /// channel count against the variance type.
    pub fn split_output(&self, model_output: &Tensor, x: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let (xd, od) = (x.dims(), model_output.dims());
        if xd.len() < 3 {
            return Err(value_error("x", "shape (B, F, C, ...)", format!("shape {xd:?}")));
        }
        let c = xd[2];
        let want_c = if self.var_type.is_learned() { 2 * c } else { c };
        let mut want = xd.to_vec();
        want[2] = want_c;
        if od != want.as_slice() {
            let why = if self.var_type.is_learned() {
                " (learned variance: 2C channels)"
            } else {
                ""
            };
            return Err(value_error(
                "model_output",
                format!("shape {want:?}{why}"),
                format!("shape {od:?}"),
            ));
        }
        if self.var_type.is_learned() {
            Ok((model_output.narrow(2, 0, c)?, Some(model_output.narrow(2, c, c)?)))
        } else {
            Ok((model_output.clone(), None))
        }
    }

    /// p(x_{t−1} | x_t) from the model's output at x_t. With `clip_denoised`, x₀ is clipped to [−1, 1].
    pub fn p_mean_variance(
        &self,
        model_output: &Tensor,
        x: &Tensor,
        t: &[usize],
        clip_denoised: bool,
    ) -> Result<PMeanVariance> {
        self.check_t(t, x)?;
        let (prediction, var_values) = self.split_output(model_output, x)?;
        let (variance, log_variance) = match (self.var_type, var_values) {
            (VarType::Learned, Some(v)) => (v.exp()?, v),
            (VarType::LearnedRange, Some(v)) => {
                let min_log = self.extract(&self.posterior_log_variance_clipped, t, x)?;
                let log_betas: Vec<f64> = self.betas.iter().map(|b| b.ln()).collect();
                let max_log = self.extract(&log_betas, t, x)?;
                let frac = ((v + 1.0)? / 2.0)?;
                let log_var = (frac.broadcast_mul(&max_log)? + (1.0 - &frac)?.broadcast_mul(&min_log)?)?;
                (log_var.exp()?, log_var)
            }
            (VarType::FixedLarge, _) => {
                let var: Vec<f64> = (0..self.num_timesteps())
                    .map(|i| {
                        if i == 0 {
                            self.posterior_variance.get(1).copied().unwrap_or(self.betas[0])
                        } else {
                            self.betas[i]
                        }
                    })
                    .collect();
                let log: Vec<f64> = var.iter().map(|v| v.ln()).collect();
                let full = |table: &[f64]| -> Result<Tensor> {
                    Ok(self.extract(table, t, x)?.broadcast_as(x.shape())?.contiguous()?)
                };
                (full(&var)?, full(&log)?)
            }
            (VarType::FixedSmall, _) => {
                let full = |table: &[f64]| -> Result<Tensor> {
                    Ok(self.extract(table, t, x)?.broadcast_as(x.shape())?.contiguous()?)
                };
                (
                    full(&self.posterior_variance)?,
                    full(&self.posterior_log_variance_clipped)?,
                )
            }
            (_, None) => {
                return Err(LatteError::Value(
                    "model_output: learned variance values missing".into(),
                ))
            }
        };
        let pred_xstart = match self.mean_type {
            MeanType::StartX => prediction,
            MeanType::Epsilon => self.predict_xstart_from_eps(x, t, &prediction)?,
            MeanType::Velocity => self.predict_xstart_from_v(x, t, &prediction)?,
        };
        let pred_xstart = if clip_denoised {
            pred_xstart.clamp(-1.0, 1.0)?
        } else {
            pred_xstart
        };
        let (mean, _, _) = self.q_posterior_mean_variance(&pred_xstart, x, t)?;
        Ok(PMeanVariance {
            mean,
            variance,
            log_variance,
            pred_xstart,
        })
    }

    /// The variational-bound term in bits per dimension, (B,): KL(q(x_{t−1}|x_t,x₀) ‖ p(x_{t−1}|x_t)) for t > 0,
    /// the discretised decoder NLL at t = 0.
    pub fn vb_terms_bpd(
        &self,
        model_output: &Tensor,
        x_start: &Tensor,
        x_t: &Tensor,
        t: &[usize],
        clip_denoised: bool,
    ) -> Result<Tensor> {
        let (true_mean, _, true_log_var) = self.q_posterior_mean_variance(x_start, x_t, t)?;
        let out = self.p_mean_variance(model_output, x_t, t, clip_denoised)?;
        let ln2 = std::f64::consts::LN_2;
        let kl = (mean_flat(&normal_kl(&true_mean, &true_log_var, &out.mean, &out.log_variance)?)? / ln2)?;
        if !t.contains(&0) {
            // The decoder likelihood only counts at t = 0; without such a sample it would be computed to be
            // discarded (the selection below gives its branch zero gradient too).
            return Ok(kl);
        }
        let nll = discretized_gaussian_log_likelihood(x_start, &out.mean, &(&out.log_variance * 0.5)?)?;
        let decoder_nll = (mean_flat(&nll.neg()?)? / ln2)?;
        let at_zero: Vec<u8> = t.iter().map(|&i| u8::from(i == 0)).collect();
        let at_zero = Tensor::from_vec(at_zero, t.len(), x_t.device())?;
        Ok(at_zero.where_cond(&decoder_nll, &kl)?)
    }

    /// The training losses for a model output at x_t = q_sample(x₀, t, noise): MSE on the prediction plus, with
    /// learned variance, the VB term computed with the predicted mean detached (it trains only the variance).
    /// On the CPU the MSE loss types run as one fused kernel (`fused_loss.rs`) where it applies, with the values
    /// of the composition below.
    pub fn training_losses(
        &self,
        model_output: &Tensor,
        x_start: &Tensor,
        t: &[usize],
        noise: &Tensor,
    ) -> Result<Losses> {
        self.check_t(t, x_start)?;
        Self::same_shape("noise", noise, x_start)?;
        match self.fused_training_losses(model_output, x_start, t, noise)? {
            Some(losses) => Ok(losses),
            None => self.composed_training_losses(model_output, x_start, t, noise),
        }
    }

    /// [`Self::training_losses`] as tensor ops (every device, dtype and loss type; the reference's order).
    pub(crate) fn composed_training_losses(
        &self,
        model_output: &Tensor,
        x_start: &Tensor,
        t: &[usize],
        noise: &Tensor,
    ) -> Result<Losses> {
        self.check_t(t, x_start)?;
        Self::same_shape("noise", noise, x_start)?;
        let x_t = self.q_sample(x_start, t, noise)?;
        let scale = self.num_timesteps() as f64;
        match self.loss_type {
            LossType::Kl | LossType::RescaledKl => {
                self.split_output(model_output, &x_t)?;
                let mut vb = self.vb_terms_bpd(model_output, x_start, &x_t, t, false)?;
                if self.loss_type == LossType::RescaledKl {
                    vb = (vb * scale)?;
                }
                // The whole loss is the bound; like the reference, no separate terms.
                Ok(Losses {
                    loss: vb,
                    mse: None,
                    vb: None,
                })
            }
            LossType::Mse | LossType::RescaledMse => {
                let (prediction, var_values) = self.split_output(model_output, &x_t)?;
                let vb = match var_values {
                    Some(v) => {
                        let frozen = Tensor::cat(&[&prediction.detach(), &v], 2)?;
                        let vb = self.vb_terms_bpd(&frozen, x_start, &x_t, t, false)?;
                        Some(if self.loss_type == LossType::RescaledMse {
                            (vb * (scale / 1000.0))?
                        } else {
                            vb
                        })
                    }
                    None => None,
                };
                let target = match self.mean_type {
                    MeanType::Epsilon => noise.clone(),
                    MeanType::StartX => x_start.clone(),
                    MeanType::Velocity => {
                        let a = self.extract(&self.sqrt_alphas_cumprod, t, x_start)?;
                        let b = self.extract(&self.sqrt_one_minus_alphas_cumprod, t, x_start)?;
                        (noise.broadcast_mul(&a)? - x_start.broadcast_mul(&b)?)?
                    }
                };
                let mse = mean_flat(&(target - &prediction)?.sqr()?)?;
                let loss = match &vb {
                    Some(vb) => (&mse + vb)?,
                    None => mse.clone(),
                };
                Ok(Losses {
                    loss,
                    mse: Some(mse),
                    vb,
                })
            }
        }
    }

    /// One ancestral step x_t → x_{t−1}: mean + σ · noise (no noise at t = 0).
    pub fn p_sample(
        &self,
        model_output: &Tensor,
        x: &Tensor,
        t: &[usize],
        noise: &Tensor,
        clip_denoised: bool,
    ) -> Result<(Tensor, Tensor)> {
        Self::same_shape("noise", noise, x)?;
        let out = self.p_mean_variance(model_output, x, t, clip_denoised)?;
        let nonzero = self.nonzero_mask(t, x)?;
        let std = (&out.log_variance * 0.5)?.exp()?;
        let sample = (&out.mean + noise.mul(&std)?.broadcast_mul(&nonzero)?)?;
        Ok((sample, out.pred_xstart))
    }

    /// One DDIM step x_t → x_{t−1} with stochasticity `eta` (0: deterministic).
    pub fn ddim_sample(
        &self,
        model_output: &Tensor,
        x: &Tensor,
        t: &[usize],
        noise: &Tensor,
        eta: f64,
        clip_denoised: bool,
    ) -> Result<(Tensor, Tensor)> {
        Self::same_shape("noise", noise, x)?;
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(value_error("eta", "a finite number >= 0", eta));
        }
        let out = self.p_mean_variance(model_output, x, t, clip_denoised)?;
        let eps = self.predict_eps_from_xstart(x, t, &out.pred_xstart)?;
        let ab: Vec<f64> = t.iter().map(|&i| self.alphas_cumprod[i]).collect();
        let abp: Vec<f64> = t.iter().map(|&i| self.alphas_cumprod_prev[i]).collect();
        let sigma: Vec<f64> = ab
            .iter()
            .zip(&abp)
            .map(|(a, p)| eta * ((1.0 - p) / (1.0 - a)).sqrt() * (1.0 - a / p).sqrt())
            .collect();
        let idx: Vec<usize> = (0..t.len()).collect();
        let sqrt_abp: Vec<f64> = abp.iter().map(|p| p.sqrt()).collect();
        // The direction to x_t has variance 1 − ᾱ_prev − σ²: an eta above 1 can make it negative (no such step).
        if let Some((i, _)) = abp
            .iter()
            .zip(&sigma)
            .enumerate()
            .find(|(_, (p, s))| 1.0 - *p - *s * *s < -1e-12)
        {
            return Err(LatteError::Value(format!(
                "eta: {eta} makes the DDIM noise variance exceed 1 - alphas_cumprod_prev at timestep {} (expected \
                 eta in [0, 1], the range DDIM is defined for)",
                t[i]
            )));
        }
        let dir: Vec<f64> = abp
            .iter()
            .zip(&sigma)
            .map(|(p, s)| (1.0 - p - s * s).max(0.0).sqrt())
            .collect();
        let mean = (out.pred_xstart.broadcast_mul(&self.extract(&sqrt_abp, &idx, x)?)?
            + eps.broadcast_mul(&self.extract(&dir, &idx, x)?)?)?;
        let nonzero = self.nonzero_mask(t, x)?;
        let sample = (mean
            + noise
                .broadcast_mul(&self.extract(&sigma, &idx, x)?)?
                .broadcast_mul(&nonzero)?)?;
        Ok((sample, out.pred_xstart))
    }

    fn nonzero_mask(&self, t: &[usize], x: &Tensor) -> Result<Tensor> {
        let m: Vec<f64> = t.iter().map(|&i| if i == 0 { 0.0 } else { 1.0 }).collect();
        let idx: Vec<usize> = (0..t.len()).collect();
        self.extract(&m, &idx, x)
    }
}

/// The options of the official `create_diffusion` (DiT / Latte), each as its keyword argument.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffusionOptions {
    /// "" (every step), "250", "ddim50", "10,15,20" (see [`crate::diffusion::space_timesteps`]).
    pub timestep_respacing: String,
    /// "linear" (DiT's), "scaled_linear" or "squaredcos_cap_v2" / "cosine".
    pub noise_schedule: String,
    /// The model predicts the variance interpolation too (learned-range variance).
    pub learn_sigma: bool,
    /// Without a learned variance: the posterior variance (true) or β (false).
    pub sigma_small: bool,
    /// "epsilon", "sample" or "v_prediction".
    pub prediction_type: String,
    /// Scale the VB term by T / 1000.
    pub rescale_learned_sigmas: bool,
    /// Train on the variational bound alone (rescaled).
    pub use_kl: bool,
    pub diffusion_steps: usize,
    /// The endpoints of the "scaled_linear" schedule.
    pub beta_start: f64,
    pub beta_end: f64,
}

impl Default for DiffusionOptions {
    fn default() -> Self {
        Self {
            timestep_respacing: String::new(),
            noise_schedule: "linear".into(),
            learn_sigma: true,
            sigma_small: false,
            prediction_type: "epsilon".into(),
            rescale_learned_sigmas: false,
            use_kl: false,
            diffusion_steps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
        }
    }
}

impl GaussianDiffusion {
    /// The process the official `create_diffusion(**options)` makes: betas of the schedule, the mean, variance
    /// and loss types its flags select, respaced to `timestep_respacing`.
    pub fn create(opts: &DiffusionOptions) -> Result<Self> {
        let schedule = super::BetaSchedule::parse(&opts.noise_schedule)?;
        let betas = super::named_beta_schedule(schedule, opts.diffusion_steps, opts.beta_start, opts.beta_end)?;
        let mean_type = MeanType::from_prediction_type(&opts.prediction_type)?;
        let var_type = match (opts.learn_sigma, opts.sigma_small) {
            (true, _) => VarType::LearnedRange,
            (false, true) => VarType::FixedSmall,
            (false, false) => VarType::FixedLarge,
        };
        let loss_type = match (opts.use_kl, opts.rescale_learned_sigmas) {
            (true, _) => LossType::RescaledKl,
            (false, true) => LossType::RescaledMse,
            (false, false) => LossType::Mse,
        };
        let keep = super::space_timesteps(opts.diffusion_steps, &opts.timestep_respacing)?;
        Self::spaced(betas, &keep, mean_type, var_type, loss_type)
    }
}

/// Mean over every dimension but the first.
fn mean_flat(x: &Tensor) -> candle_core::Result<Tensor> {
    let b = x.dim(0)?;
    x.reshape((b, ()))?.mean(D::Minus1)
}

/// KL divergence between two Gaussians given means and log-variances, elementwise.
pub fn normal_kl(mean1: &Tensor, logvar1: &Tensor, mean2: &Tensor, logvar2: &Tensor) -> candle_core::Result<Tensor> {
    let term = ((logvar2 - logvar1)? + (logvar1 - logvar2)?.exp()?)?;
    let sq = (mean1 - mean2)?.sqr()?.mul(&logvar2.neg()?.exp()?)?;
    ((term + sq)? - 1.0)? * 0.5
}

/// A fast approximation of the standard normal CDF (as the reference).
fn approx_standard_normal_cdf(x: &Tensor) -> candle_core::Result<Tensor> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * c)?;
    (inner.tanh()? + 1.0)? * 0.5
}

/// Log-likelihood of x (data in [−1, 1] quantised to 256 levels) under a discretised Gaussian, elementwise, nats.
pub fn discretized_gaussian_log_likelihood(
    x: &Tensor,
    means: &Tensor,
    log_scales: &Tensor,
) -> candle_core::Result<Tensor> {
    let centred = (x - means)?;
    let inv_stdv = log_scales.neg()?.exp()?;
    let cdf_plus = approx_standard_normal_cdf(&(&centred + 1.0 / 255.0)?.mul(&inv_stdv)?)?;
    let cdf_min = approx_standard_normal_cdf(&(&centred - 1.0 / 255.0)?.mul(&inv_stdv)?)?;
    let log_cdf_plus = cdf_plus.clamp(1e-12, f64::INFINITY)?.log()?;
    let log_one_minus_cdf_min = (1.0 - &cdf_min)?.clamp(1e-12, f64::INFINITY)?.log()?;
    let log_cdf_delta = (&cdf_plus - &cdf_min)?.clamp(1e-12, f64::INFINITY)?.log()?;
    let low = x.lt(-0.999)?;
    let high = x.gt(0.999)?;
    low.where_cond(&log_cdf_plus, &high.where_cond(&log_one_minus_cdf_min, &log_cdf_delta)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::named_beta_schedule;
    use crate::diffusion::BetaSchedule;
    use crate::rng::Generator;
    use candle_core::{Device, Var};

    fn randn(rng: &mut Generator, dims: &[usize], scale: f64) -> Tensor {
        let n = dims.iter().product();
        (Tensor::from_vec(rng.normal(n, 0.0, 1.0), dims, &Device::Cpu).unwrap() * scale).unwrap()
    }

    /// A batch without a t = 0 sample skips the decoder likelihood; its samples' VB terms (and their gradients)
    /// are those the full computation gives them in a batch that has one.
    #[test]
    fn vb_terms_without_a_first_step_equal_the_full_computation() {
        let betas = named_beta_schedule(BetaSchedule::Linear, 1000, 0.0, 0.0).unwrap();
        let d = GaussianDiffusion::new(betas, MeanType::Epsilon, VarType::LearnedRange, LossType::Mse).unwrap();
        let mut rng = Generator::new(1);
        let x0 = randn(&mut rng, &[3, 2, 2, 2, 2], 0.5).tanh().unwrap();
        let xt = randn(&mut rng, &[3, 2, 2, 2, 2], 1.0);
        let out = Var::from_tensor(&randn(&mut rng, &[3, 2, 4, 2, 2], 0.5)).unwrap();
        let run = |rows: &[usize], t: &[usize]| {
            let idx = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
            let pick = |x: &Tensor| x.index_select(&idx, 0).unwrap();
            let vb = d
                .vb_terms_bpd(&pick(out.as_tensor()), &pick(&x0), &pick(&xt), t, false)
                .unwrap();
            let grad = vb.sum_all().unwrap().backward().unwrap();
            (vb.to_vec1::<f64>().unwrap(), grad.get(out.as_tensor()).unwrap().clone())
        };
        let (full, full_grad) = run(&[0, 1, 2], &[0, 3, 700]);
        let (skipped, skipped_grad) = run(&[1, 2], &[3, 700]);
        assert_eq!(&full[1..], &skipped[..]);
        let rows = |g: &Tensor| {
            g.narrow(0, 1, 2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        };
        assert_eq!(rows(&full_grad), rows(&skipped_grad));
    }

    /// The hybrid loss is differentiable in the model output: the MSE trains the mean channels, the VB term the
    /// variance channels (with the mean detached). Checked against central finite differences in f64.
    #[test]
    fn hybrid_loss_gradient_matches_finite_differences() {
        let betas = named_beta_schedule(BetaSchedule::Linear, 1000, 0.0, 0.0).unwrap();
        let d = GaussianDiffusion::new(betas, MeanType::Epsilon, VarType::LearnedRange, LossType::Mse).unwrap();
        let mut rng = Generator::new(0);
        let dims = [3, 2, 2, 2, 2];
        let x0 = randn(&mut rng, &dims, 0.5).tanh().unwrap();
        let noise = randn(&mut rng, &dims, 1.0);
        let out = randn(&mut rng, &[3, 2, 4, 2, 2], 0.5);
        let t = [0, 3, 700];
        let losses = |o: &Tensor| d.training_losses(o, &x0, &t, &noise).unwrap();
        let loss = |o: &Tensor| losses(o).loss.sum_all().unwrap();
        let var = Var::from_tensor(&out).unwrap();
        let grads = loss(var.as_tensor()).backward().unwrap();
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = out.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let eps = 1e-6;
        // Element i of (3, 2, 4, 2, 2) is a mean channel when its channel index is < 2. The mean gets the MSE's
        // gradient only (it is detached in the VB term), the variance values the VB term's.
        for i in (0..base.len()).step_by(5) {
            let is_mean = (i / 4) % 4 < 2;
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let l = losses(&Tensor::from_vec(v, out.dims(), &Device::Cpu).unwrap());
                let term = if is_mean { l.mse.unwrap() } else { l.loss };
                term.sum_all().unwrap().to_scalar::<f64>().unwrap()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - g[i]).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                "[{i}]: {} vs {numeric}",
                g[i]
            );
        }
        assert!(g.iter().any(|v| *v != 0.0));
    }

    /// A one-step process (`diffusion_steps=1`, or "1" respaced) has every table, so training with each variance
    /// and loss type and an ancestral step work instead of indexing an empty table.
    #[test]
    fn a_one_step_process_trains_and_samples() {
        let mut rng = Generator::new(3);
        let dims = [2, 2, 2, 2, 2];
        let x0 = randn(&mut rng, &dims, 0.5).tanh().unwrap();
        let noise = randn(&mut rng, &dims, 1.0);
        for (var_type, loss_type, respaced) in [
            (VarType::LearnedRange, LossType::Mse, true),
            (VarType::LearnedRange, LossType::Mse, false),
            (VarType::FixedSmall, LossType::Mse, false),
            (VarType::FixedLarge, LossType::RescaledKl, false),
            (VarType::Learned, LossType::Kl, true),
        ] {
            let opts = DiffusionOptions {
                timestep_respacing: if respaced { "1".into() } else { String::new() },
                diffusion_steps: if respaced { 1000 } else { 1 },
                ..Default::default()
            };
            let base = GaussianDiffusion::create(&opts).unwrap();
            let d = GaussianDiffusion::new(base.betas.clone(), MeanType::Epsilon, var_type, loss_type).unwrap();
            assert_eq!(d.num_timesteps(), 1);
            assert_eq!(d.posterior_log_variance_clipped, [d.betas[0].ln()]);
            d.validate().unwrap();
            let c = if var_type.is_learned() { 4 } else { 2 };
            let out = randn(&mut rng, &[2, 2, c, 2, 2], 0.5);
            let losses = d.training_losses(&out, &x0, &[0, 0], &noise).unwrap();
            let loss = losses.loss.to_vec1::<f64>().unwrap();
            assert!(
                loss.iter().all(|v| v.is_finite()),
                "{var_type:?} {loss_type:?}: {loss:?}"
            );
            let (sample, _) = d.p_sample(&out, &x0, &[0, 0], &noise, false).unwrap();
            let sample = sample.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert!(sample.iter().all(|v| v.is_finite()), "{var_type:?}");
        }
    }

    /// A saved process is checked against its betas: no steps, a table of another length and a table with other
    /// values are refused by name; the saved process itself reads back.
    #[test]
    fn a_saved_process_whose_tables_disagree_with_its_betas_is_refused() {
        let d = GaussianDiffusion::create(&DiffusionOptions {
            timestep_respacing: "25".into(),
            ..Default::default()
        })
        .unwrap();
        let json = serde_json::to_value(&d).unwrap();
        GaussianDiffusion::from_json(json.to_string().as_bytes()).unwrap();
        let refused = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut bad = json.clone();
            edit(&mut bad);
            GaussianDiffusion::from_json(bad.to_string().as_bytes())
                .expect_err("an inconsistent process was accepted")
                .to_string()
        };
        let empty = refused(&|v| {
            for (_, table) in v.as_object_mut().unwrap().iter_mut().filter(|(_, t)| t.is_array()) {
                *table = serde_json::json!([]);
            }
        });
        assert!(empty.contains("at least one step"), "{empty}");
        let short = refused(&|v| v["posterior_variance"] = serde_json::json!([0.1]));
        assert!(
            short.contains("posterior_variance") && short.contains("25 values"),
            "{short}"
        );
        let other = refused(&|v| v["sqrt_alphas_cumprod"][7] = serde_json::json!(0.5));
        assert!(
            other.contains("sqrt_alphas_cumprod") && other.contains("step 7"),
            "{other}"
        );
    }
}
