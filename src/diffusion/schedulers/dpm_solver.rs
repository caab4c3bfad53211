//! DPM-Solver and DPM-Solver++ multistep (orders 1–2, midpoint or Heun), and their SDE forms, as diffusers'
//! `DPMSolverMultistepScheduler`: Karras sigmas, the lower-order final steps, final sigma "zero" or "sigma_min".

use candle_core::Tensor;
use serde::Deserialize;

use super::config::{check_num_inference_steps, extra_options, one_of};
use super::spacing::{alpha_sigma, alphas_cumprod, interp_on_index, karras_sigmas, sigma_to_t, trailing_timesteps};
use super::{mix, Scheduler, SchedulerConfig, StepOptions, StepOutput};
use crate::diffusion::respace::round_half_even;
use crate::diffusion::schedule::linspace;
use crate::error::{value_error, LatteError, Result};

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

/// diffusers' `DPMSolverMultistepScheduler`.
#[derive(Clone, Debug)]
pub struct DpmSolverMultistepScheduler {
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

impl DpmSolverMultistepScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        config.validate()?;
        let opts: DpmOptions = extra_options(&config)?;
        one_of(
            "algorithm_type",
            &opts.algorithm_type,
            &["dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"],
        )?;
        one_of("solver_type", &opts.solver_type, &["midpoint", "heun"])?;
        one_of("final_sigmas_type", &opts.final_sigmas_type, &["zero", "sigma_min"])?;
        if !(1..=2).contains(&opts.solver_order) {
            return Err(value_error(
                "solver_order",
                "1 or 2 (order 3 is not supported by latte-rs yet)",
                opts.solver_order,
            ));
        }
        if !opts.algorithm_type.ends_with("++") && opts.final_sigmas_type == "zero" {
            return Err(LatteError::Value(format!(
                "final_sigmas_type: \"zero\" needs algorithm_type \"dpmsolver++\" or \"sde-dpmsolver++\" (got {:?}); \
                 use \"sigma_min\"",
                opts.algorithm_type
            )));
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

    fn choose_timesteps(&mut self, n: usize) -> Result<()> {
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
                let pts = linspace(0.0, (total - 1) as f64, n + 1);
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
        Ok(if self.predicts_data() {
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

    /// DPM-Solver++ (and its SDE form) solve for x₀; DPM-Solver for ε.
    fn predicts_data(&self) -> bool {
        self.opts.algorithm_type.ends_with("++")
    }

    fn is_sde(&self) -> bool {
        self.opts.algorithm_type.starts_with("sde-")
    }

    /// The step index for `timestep` on the first step (diffusers' `_init_step_index`): its place in the
    /// schedule, the second of two, or the last step for a timestep the schedule lacks.
    fn first_index(&self, timestep: i64) -> usize {
        self.index_for_timestep(timestep)
            .unwrap_or(self.timesteps.len().saturating_sub(1))
    }

    /// The place of `timestep` in the schedule (the second of two), as diffusers' `index_for_timestep`.
    fn index_for_timestep(&self, timestep: i64) -> Option<usize> {
        let hits: Vec<usize> = self
            .timesteps
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == timestep)
            .map(|(k, _)| k)
            .collect();
        hits.get(usize::from(hits.len() > 1)).copied()
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.choose_timesteps(n)
    }

    fn timesteps(&self) -> Vec<f64> {
        self.timesteps.iter().map(|&t| t as f64).collect()
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// One multistep update; `pred_original_sample` is the converted model output (x₀ for DPM-Solver++, ε for
    /// DPM-Solver). The SDE forms take noise from `opts.noise` at every step.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        opts: &mut StepOptions,
    ) -> Result<StepOutput> {
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
            None => self.first_index(timestep as i64),
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
        let noise = if self.is_sde() {
            Some(opts.noise.take(&converted, "the SDE forms of DPM-Solver")?)
        } else {
            None
        };

        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let lambda = |a: f32, s: f32| a.ln() - s.ln();
        let (lambda_t, lambda_s0) = (lambda(alpha_t, sigma_t), lambda(alpha_s0, sigma_s0));
        let h = lambda_t - lambda_s0;
        let (plus, sde) = (self.predicts_data(), self.is_sde());
        // x_t = c_sample · sample + c_d0 · D0 (+ c_noise · noise), the first-order update of each form.
        let (c_sample, c_d0, c_noise) = match (plus, sde) {
            (true, false) => (sigma_t / sigma_s0, -(alpha_t * ((-h).exp() - 1.0)), 0.0),
            (false, false) => (alpha_t / alpha_s0, -(sigma_t * (h.exp() - 1.0)), 0.0),
            (true, true) => (
                sigma_t / sigma_s0 * (-h).exp(),
                alpha_t * (1.0 - (-2.0 * h).exp()),
                sigma_t * (1.0 - (-2.0 * h).exp()).sqrt(),
            ),
            (false, true) => (
                alpha_t / alpha_s0,
                -2.0 * (sigma_t * (h.exp() - 1.0)),
                sigma_t * ((2.0 * h).exp() - 1.0).sqrt(),
            ),
        };
        let base = |d0: &Tensor| -> Result<Tensor> { Ok(((sample * c_sample as f64)? + (d0 * c_d0 as f64)?)?) };
        let use_first = self.opts.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final;
        let mut prev_sample = if use_first {
            base(&converted)?
        } else {
            let m0 = &converted;
            let m1 = self.model_outputs[last - 1]
                .as_ref()
                .ok_or_else(|| LatteError::Value("step: missing the previous model output".into()))?;
            let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
            let h0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
            let r0 = h0 / h;
            let d1 = ((m0 - m1)? * (1.0 / r0) as f64)?;
            let heun = self.opts.solver_type == "heun";
            let c_d1 = match (plus, sde, heun) {
                (true, false, false) => -0.5 * (alpha_t * ((-h).exp() - 1.0)),
                (true, false, true) => alpha_t * (((-h).exp() - 1.0) / h + 1.0),
                (false, false, false) => -0.5 * (sigma_t * (h.exp() - 1.0)),
                (false, false, true) => -(sigma_t * ((h.exp() - 1.0) / h - 1.0)),
                (true, true, false) => 0.5 * (alpha_t * (1.0 - (-2.0 * h).exp())),
                (true, true, true) => alpha_t * ((1.0 - (-2.0 * h).exp()) / (-2.0 * h) + 1.0),
                (false, true, false) => -(sigma_t * (h.exp() - 1.0)),
                (false, true, true) => -2.0 * (sigma_t * ((h.exp() - 1.0) / h - 1.0)),
            };
            (base(m0)? + (&d1 * c_d1 as f64)?)?
        };
        if let Some(z) = noise {
            prev_sample = (prev_sample + (z * c_noise as f64)?)?;
        }
        if self.lower_order_nums < self.opts.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: converted,
        })
    }

    /// α_t x₀ + σ_t noise at each timestep's σ in the current schedule (call `set_timesteps` first).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &[f64]) -> Result<Tensor> {
        if self.num_inference_steps.is_none() {
            return Err(LatteError::Value(
                "DPMSolverMultistepScheduler.add_noise: call set_timesteps(num_inference_steps) first (the noise \
                 levels are the schedule's)"
                    .into(),
            ));
        }
        let mut a = Vec::with_capacity(timesteps.len());
        let mut b = Vec::with_capacity(timesteps.len());
        for &t in timesteps {
            let i = Some(t)
                .filter(|t| t.fract() == 0.0)
                .and_then(|t| self.index_for_timestep(t as i64))
                .ok_or_else(|| value_error("timesteps", "timesteps of the scheduler's schedule (see .timesteps)", t))?;
            let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
            a.push(alpha);
            b.push(sigma);
        }
        mix(original, noise, a, b)
    }

    fn name(&self) -> &'static str {
        "DPMSolverMultistepScheduler"
    }

    fn config(&self) -> Option<&SchedulerConfig> {
        Some(&self.config)
    }

    fn num_inference_steps(&self) -> Option<usize> {
        self.num_inference_steps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
}
