//! Caching policies of the sampling loop: work skipped from one denoising step to the next, without retraining.
//!
//! **TeaCache** (Liu et al. 2024, "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model"):
//! the first block's modulated input (the timestep-modulated tokens, cheap to compute) changes from step to step
//! roughly as the model's output does. Each step measures its relative L1 change, `mean|m_t − m_{t−1}| /
//! mean|m_{t−1}|`, rescales it by a polynomial fitted on uncached runs (highest power first, as `numpy.polyval`)
//! and accumulates it; while the sum stays below the threshold the step reuses the residual of the whole block
//! stack (its output minus its input) cached at the last computed step instead of running the blocks; otherwise
//! the blocks run, the residual is refreshed and the sum restarts at zero. The first and the last step always
//! compute. With classifier-free guidance the decision is made once per step on the batched [cond | uncond]
//! input. A threshold of 0 skips nothing: the output is then the uncached loop's, bit for bit.
//!
//! **Pyramid Attention Broadcast** ([`pab`]) and **FasterCache** ([`faster_cache`]) reuse attention outputs
//! instead of whole steps: the staged pass hands each attention layer's computation to an
//! [`crate::model::AttentionHook`], which runs it or returns a cached (PAB) or extrapolated (FasterCache) output.
//! FasterCache also runs only the conditional half of a guided batch at most steps and approximates the
//! unconditional output from the last computed difference of the two.
//!
//! The loop ([`crate::sampling::sample_with_report`]) drives a policy through the model's staged pass
//! ([`crate::model::StagedPass`]), so every denoiser, scheduler and face gets it at once.

pub mod faster_cache;
pub mod pab;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

pub use faster_cache::FasterCacheConfig;
pub use pab::PabConfig;

use crate::error::{value_error, LatteError, Result};
use crate::model::teacache_fit::{check_coefficients, check_range};
pub use crate::model::teacache_fit::{coefficients_file, polyval, read_fit_beside, TeaCacheFit, COEFFICIENTS_FILE};
use crate::model::{Condition, Denoiser};

/// TeaCache's published rescaling polynomial for Latte-1 (TeaCache repository, `eval/teacache/experiments/
/// latte.py`), highest power first. It was fitted on Latte-1, not on other models: fit one for yours.
pub const LATTE1_COEFFICIENTS: [f64; 5] = [-2.46434137e3, 3.08044764e2, 8.07447667e1, -4.11385132, 1.11001402e-1];

/// TeaCache's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeaCacheConfig {
    /// The accumulated rescaled change below which a step reuses the cached residual; 0 skips nothing.
    pub threshold: f64,
    /// The rescaling polynomial, highest power first; None: the model's own (from its `teacache.json`), else
    /// [`LATTE1_COEFFICIENTS`].
    pub coefficients: Option<Vec<f64>>,
    /// The input changes the polynomial holds for (changes outside are clamped into it); None: the model's
    /// fitted range when its coefficients are used, else no clamping.
    pub input_range: Option<[f64; 2]>,
}

impl TeaCacheConfig {
    /// Checked settings: a finite threshold >= 0, when given at least one finite coefficient, and a finite range
    /// `[low, high]` with low <= high.
    pub fn new(threshold: f64, coefficients: Option<Vec<f64>>, input_range: Option<[f64; 2]>) -> Result<Self> {
        if !(threshold.is_finite() && threshold >= 0.0) {
            return Err(value_error(
                "threshold",
                "a finite number >= 0 (0.1 is TeaCache's default)",
                threshold,
            ));
        }
        if let Some(c) = &coefficients {
            check_coefficients(c, "coefficients")?;
        }
        check_range(input_range, "input_range")?;
        Ok(Self {
            threshold,
            coefficients,
            input_range,
        })
    }
}

/// A caching policy for the sampling loop.
#[derive(Clone, Debug, PartialEq)]
pub enum CachePolicy {
    TeaCache(TeaCacheConfig),
    PyramidAttentionBroadcast(PabConfig),
    FasterCache(FasterCacheConfig),
}

/// What a policy saw and decided at one step.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StepRecord {
    /// The step's timestep, as the model saw it.
    pub timestep: f64,
    /// The step ran the block stack (attention policies always run it).
    pub computed: bool,
    /// Per attention kind ("spatial", "temporal", "cross"), per site in the order the pass runs them: whether the
    /// attention was computed (false: its output was reused or extrapolated). Empty for TeaCache.
    pub attention: BTreeMap<String, Vec<bool>>,
    /// FasterCache with guidance: whether the unconditional branch ran (false: approximated from the conditional
    /// one); None otherwise.
    pub uncond_computed: Option<bool>,
    /// The relative L1 change of the first block's modulated input from the previous step (None at the first).
    pub input_change: Option<f64>,
    /// `polyval(coefficients, input_change)`, the change clamped into the input range.
    pub rescaled: Option<f64>,
    /// The accumulated rescaled change after this step's decision (0 after a computed step).
    pub accumulated: f64,
    /// The relative L1 change of the model's output from the previous step's (None at the first).
    pub output_change: Option<f64>,
}

/// What a cached sampling run computed and skipped.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CacheReport {
    /// The policy's name ("teacache", "pab", "fastercache").
    pub policy: String,
    /// TeaCache's threshold (0 for the other policies).
    pub threshold: f64,
    /// TeaCache's rescaling polynomial (empty for the other policies).
    pub coefficients: Vec<f64>,
    /// The input range its argument was clamped into (None: not clamped).
    pub input_range: Option<[f64; 2]>,
    /// Where TeaCache's coefficients came from: "argument", "model" (its `teacache.json`) or "latte-1" (the
    /// published default); empty for the other policies.
    pub coefficients_source: String,
    /// One record per denoising step.
    pub steps: Vec<StepRecord>,
    /// Blocks in one pass of the model (what a skipped step saves).
    pub blocks_per_pass: usize,
    /// Block calls that ran, counted as they ran.
    pub blocks_computed: usize,
    /// Block calls skipped.
    pub blocks_skipped: usize,
    /// Attention layers of each kind in one pass (attention policies).
    pub attentions_per_pass: BTreeMap<String, usize>,
    /// Attention calls of each kind that ran, counted where they ran.
    pub attention_computed: BTreeMap<String, usize>,
    /// Attention calls of each kind whose output was reused or extrapolated instead.
    pub attention_skipped: BTreeMap<String, usize>,
    /// The most bytes the policy's cached tensors held at once (TeaCache: residual, previous modulated input and
    /// output; PAB: the broadcast attention outputs; FasterCache: two attention outputs per reused layer and the
    /// guidance difference's two frequency bands).
    pub cache_bytes: usize,
}

impl CacheReport {
    pub fn steps_computed(&self) -> usize {
        self.steps.iter().filter(|s| s.computed).count()
    }

    pub fn steps_skipped(&self) -> usize {
        self.steps.len() - self.steps_computed()
    }
}

/// `mean|a − b| / mean|b|`, in f64.
pub(crate) fn relative_l1(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
    let diff = (&a - &b)?.abs()?.sum_all()?.to_scalar::<f64>()?;
    let base = b.abs()?.sum_all()?.to_scalar::<f64>()?;
    Ok(diff / base)
}

pub(crate) fn bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// TeaCache's state over one sampling run.
pub(crate) struct TeaCacheState {
    threshold: f64,
    fit: TeaCacheFit,
    num_steps: usize,
    accumulated: f64,
    previous_input: Option<Tensor>,
    previous_output: Option<Tensor>,
    residual: Option<Tensor>,
    report: CacheReport,
}

impl TeaCacheState {
    /// The state for a run of `num_steps` steps of `model`; coefficients from the config, else the model's own,
    /// else Latte-1's.
    pub(crate) fn new(cfg: &TeaCacheConfig, model: &dyn Denoiser, num_steps: usize) -> Result<Self> {
        let model_fit = model.teacache_fit();
        let (coefficients, model_range, source) = match (&cfg.coefficients, model_fit) {
            (Some(c), _) => (c.clone(), None, "argument"),
            (None, Some(fit)) => (fit.coefficients, fit.input_range, "model"),
            (None, None) => (LATTE1_COEFFICIENTS.to_vec(), None, "latte-1"),
        };
        let fit = TeaCacheFit::new(coefficients, cfg.input_range.or(model_range), "coefficients")?;
        Ok(Self {
            threshold: cfg.threshold,
            num_steps,
            accumulated: 0.0,
            previous_input: None,
            previous_output: None,
            residual: None,
            report: CacheReport {
                policy: "teacache".into(),
                threshold: cfg.threshold,
                coefficients: fit.coefficients.clone(),
                input_range: fit.input_range,
                coefficients_source: source.into(),
                ..CacheReport::default()
            },
            fit,
        })
    }

    /// The model's output at step `step` (of `num_steps`) on checked inputs, the block stack run or its cached
    /// residual reused as the rule decides.
    pub(crate) fn denoise(
        &mut self,
        model: &dyn Denoiser,
        x: &Tensor,
        t: &Tensor,
        cond: &Condition,
        info: StepInfo,
    ) -> Result<Tensor> {
        let step = info.index;
        let pass = model.staged(x, t, cond)?;
        let modulated = pass.first_block_input()?.detach();
        let input_change = match &self.previous_input {
            Some(previous) => Some(relative_l1(&modulated, previous)?),
            None => None,
        };
        let rescaled = input_change.map(|c| self.fit.rescale(c));
        let always = step == 0 || step + 1 == self.num_steps || self.residual.is_none();
        let compute = match rescaled {
            Some(r) if !always => {
                self.accumulated += r;
                !(self.threshold > 0.0 && self.accumulated < self.threshold)
            }
            _ => true,
        };
        if compute {
            self.accumulated = 0.0;
        }
        let hidden = pass.hidden();
        self.report.blocks_per_pass = pass.num_blocks();
        let stack_out = if compute {
            let (out, blocks_run) = pass.blocks(hidden, None)?;
            self.report.blocks_computed += blocks_run;
            self.residual = Some((&out - hidden)?.detach());
            out
        } else {
            self.report.blocks_skipped += pass.num_blocks();
            let residual = self
                .residual
                .as_ref()
                .ok_or_else(|| LatteError::Value("TeaCache: no residual cached before a skipped step".into()))?;
            (hidden + residual)?
        };
        let out = pass.head(&stack_out)?.detach();
        let output_change = match &self.previous_output {
            Some(previous) => Some(relative_l1(&out, previous)?),
            None => None,
        };
        self.report.steps.push(StepRecord {
            timestep: info.timestep,
            computed: compute,
            input_change,
            rescaled,
            accumulated: self.accumulated,
            output_change,
            ..StepRecord::default()
        });
        let held = bytes(&modulated) + bytes(&out) + self.residual.as_ref().map_or(0, bytes);
        self.report.cache_bytes = self.report.cache_bytes.max(held);
        self.previous_input = Some(modulated);
        self.previous_output = Some(out.clone());
        Ok(out)
    }

    pub(crate) fn finish(self) -> CacheReport {
        self.report
    }
}

/// The state of a caching policy over one sampling run.
pub(crate) enum CacheState {
    TeaCache(TeaCacheState),
    Pab(pab::PabState),
    FasterCache(faster_cache::FasterCacheState),
}

/// Where the sampling loop is: the step's number and timestep, and whether the batch is a guided [cond | uncond]
/// one (its first half the conditional branch).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepInfo {
    pub(crate) index: usize,
    pub(crate) timestep: f64,
    pub(crate) guided: bool,
}

impl CacheState {
    pub(crate) fn new(policy: &CachePolicy, model: &dyn Denoiser, num_steps: usize) -> Result<Self> {
        match policy {
            CachePolicy::TeaCache(cfg) => Ok(Self::TeaCache(TeaCacheState::new(cfg, model, num_steps)?)),
            CachePolicy::PyramidAttentionBroadcast(cfg) => Ok(Self::Pab(pab::PabState::new(cfg))),
            CachePolicy::FasterCache(cfg) => Ok(Self::FasterCache(faster_cache::FasterCacheState::new(cfg))),
        }
    }

    pub(crate) fn denoise(
        &mut self,
        model: &dyn Denoiser,
        x: &Tensor,
        t: &Tensor,
        cond: &Condition,
        step: StepInfo,
    ) -> Result<Tensor> {
        match self {
            Self::TeaCache(s) => s.denoise(model, x, t, cond, step),
            Self::Pab(s) => s.denoise(model, x, t, cond, step),
            Self::FasterCache(s) => s.denoise(model, x, t, cond, step),
        }
    }

    pub(crate) fn finish(self) -> CacheReport {
        match self {
            Self::TeaCache(s) => s.finish(),
            Self::Pab(s) => s.finish(),
            Self::FasterCache(s) => s.finish(),
        }
    }
}

/// A timestep range `(low, high)` of a setting named `arg`: finite, low < high. A timestep `t` is in it when
/// `low < t < high` (both ends excluded, as diffusers' hooks compare).
pub(crate) fn check_timestep_range(range: (f64, f64), arg: &str) -> Result<(f64, f64)> {
    let (low, high) = range;
    if !(low.is_finite() && high.is_finite() && low < high) {
        return Err(value_error(
            arg,
            "a pair (low, high) of finite timesteps with low < high",
            format!("({low}, {high})"),
        ));
    }
    Ok(range)
}

/// A skip range (compute every `n`-th call) of a setting named `arg`: None or an integer >= 1.
pub(crate) fn check_skip_range(n: Option<usize>, arg: &str) -> Result<Option<usize>> {
    match n {
        Some(0) => Err(value_error(arg, "None or an integer >= 1 (1 skips nothing)", 0)),
        other => Ok(other),
    }
}

/// Whether `t` lies strictly inside `range`.
pub(crate) fn within(range: (f64, f64), t: f64) -> bool {
    range.0 < t && t < range.1
}

/// The counts an attention hook keeps for the report: per step, per kind, per site, whether it was computed.
#[derive(Default)]
pub(crate) struct AttentionLog {
    step: BTreeMap<String, Vec<bool>>,
    computed: BTreeMap<String, usize>,
    skipped: BTreeMap<String, usize>,
}

impl AttentionLog {
    pub(crate) fn record(&mut self, site: crate::model::AttentionSite, computed: bool) {
        let name = site.kind.name().to_string();
        let flags = self.step.entry(name.clone()).or_default();
        if flags.len() <= site.index {
            flags.resize(site.index + 1, true);
        }
        flags[site.index] = computed;
        let count = if computed {
            &mut self.computed
        } else {
            &mut self.skipped
        };
        *count.entry(name).or_default() += 1;
    }

    /// This step's flags (the log starts the next step empty).
    pub(crate) fn take_step(&mut self) -> BTreeMap<String, Vec<bool>> {
        std::mem::take(&mut self.step)
    }

    /// Writes the totals into `report`, with `sites` attention layers of each kind per pass.
    pub(crate) fn finish_into(&self, report: &mut CacheReport, sites: [usize; 3]) {
        for kind in crate::model::AttentionKind::ALL {
            let name = kind.name().to_string();
            report.attentions_per_pass.insert(name.clone(), sites[kind.index()]);
            report
                .attention_computed
                .insert(name.clone(), self.computed.get(&name).copied().unwrap_or(0));
            let skipped = self.skipped.get(&name).copied().unwrap_or(0);
            report.attention_skipped.insert(name, skipped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_by_name() {
        let e = TeaCacheConfig::new(-0.1, None, None).unwrap_err().to_string();
        assert!(e.starts_with("threshold: expected") && e.contains("-0.1"), "{e}");
        let e = TeaCacheConfig::new(0.1, Some(vec![]), None).unwrap_err().to_string();
        assert!(e.starts_with("coefficients: expected"), "{e}");
        assert!(TeaCacheConfig::new(f64::NAN, None, None).is_err());
        assert!(TeaCacheConfig::new(0.1, Some(vec![1.0, f64::INFINITY]), None).is_err());
        let e = TeaCacheConfig::new(0.1, None, Some([0.5, 0.2]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("input_range: expected"), "{e}");
        assert!(TeaCacheConfig::new(0.0, Some(vec![1.0]), Some([0.1, 0.1])).is_ok());
    }
}
