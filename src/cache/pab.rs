//! **Pyramid Attention Broadcast** (Zhao et al. 2024, "Real-Time Video Generation with Pyramid Attention
//! Broadcast"): attention outputs change little between neighbouring steps in the middle of sampling, cross
//! attention least, then temporal, then spatial; so each attention layer's output is computed at some steps and
//! broadcast (reused as it is) to the next ones, with a longer range for the kinds that change less (the
//! "pyramid").
//!
//! The rule, per attention layer (one per block and kind), with `n` its kind's skip range and `(low, high)` its
//! kind's timestep range: the layer's `i`-th call (one per step) computes when `i == 0`, or `i % n == 0`, or the
//! step's timestep `t` is outside `low < t < high`; otherwise it returns the output of its last call. A kind
//! whose skip range is None always computes. These are diffusers' `PyramidAttentionBroadcastHook` semantics,
//! defaults included: spatial 2, temporal and cross None, every timestep range (100, 800). One call covers the
//! whole guided batch, as in diffusers.
//!
//! Where the layers are: Latte's spatial and temporal blocks (variant 3's two attentions; variant 4's spatial and
//! temporal heads, each half before the shared output projection), the text model's spatial self-attention
//! (`transformer_blocks.*.attn1`), cross-attention (`attn2`) and temporal self-attention
//! (`temporal_transformer_blocks.*.attn1`). One difference to diffusers on Latte-1: diffusers' default spatial
//! identifiers (`"blocks"`, matched anywhere in the layer's name) also match `temporal_transformer_blocks`, so
//! its spatial setting broadcasts the temporal attention too; here each kind follows its own setting (set
//! `temporal_attention_block_skip_range` to the spatial value for diffusers' behaviour).

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::Tensor;

use super::{bytes, check_skip_range, check_timestep_range, within, AttentionLog, CacheReport, StepInfo, StepRecord};
use crate::error::Result;
use crate::model::{AttentionHook, AttentionKind, AttentionSite, Condition, Denoiser};

/// diffusers' default timestep range for every kind.
pub const DEFAULT_TIMESTEP_RANGE: (f64, f64) = (100.0, 800.0);

/// Pyramid Attention Broadcast's settings, under diffusers' names: per attention kind, every how many calls the
/// output is computed (`None`: always) and the timesteps in which it may be broadcast.
#[derive(Clone, Debug, PartialEq)]
pub struct PabConfig {
    /// Compute the spatial attention every `n` steps inside its timestep range (diffusers' default 2).
    pub spatial_attention_block_skip_range: Option<usize>,
    pub temporal_attention_block_skip_range: Option<usize>,
    pub cross_attention_block_skip_range: Option<usize>,
    pub spatial_attention_timestep_skip_range: (f64, f64),
    pub temporal_attention_timestep_skip_range: (f64, f64),
    pub cross_attention_timestep_skip_range: (f64, f64),
}

impl Default for PabConfig {
    fn default() -> Self {
        Self {
            spatial_attention_block_skip_range: Some(2),
            temporal_attention_block_skip_range: None,
            cross_attention_block_skip_range: None,
            spatial_attention_timestep_skip_range: DEFAULT_TIMESTEP_RANGE,
            temporal_attention_timestep_skip_range: DEFAULT_TIMESTEP_RANGE,
            cross_attention_timestep_skip_range: DEFAULT_TIMESTEP_RANGE,
        }
    }
}

impl PabConfig {
    /// Checked settings: skip ranges None or >= 1, timestep ranges finite with low < high.
    pub fn new(skip_ranges: [Option<usize>; 3], timestep_ranges: [(f64, f64); 3]) -> Result<Self> {
        let [s, t, c] = skip_ranges;
        let [rs, rt, rc] = timestep_ranges;
        Ok(Self {
            spatial_attention_block_skip_range: check_skip_range(s, "spatial_attention_block_skip_range")?,
            temporal_attention_block_skip_range: check_skip_range(t, "temporal_attention_block_skip_range")?,
            cross_attention_block_skip_range: check_skip_range(c, "cross_attention_block_skip_range")?,
            spatial_attention_timestep_skip_range: check_timestep_range(rs, "spatial_attention_timestep_skip_range")?,
            temporal_attention_timestep_skip_range: check_timestep_range(rt, "temporal_attention_timestep_skip_range")?,
            cross_attention_timestep_skip_range: check_timestep_range(rc, "cross_attention_timestep_skip_range")?,
        })
    }

    /// The skip range and timestep range of `kind`.
    pub fn of(&self, kind: AttentionKind) -> (Option<usize>, (f64, f64)) {
        match kind {
            AttentionKind::Spatial => (
                self.spatial_attention_block_skip_range,
                self.spatial_attention_timestep_skip_range,
            ),
            AttentionKind::Temporal => (
                self.temporal_attention_block_skip_range,
                self.temporal_attention_timestep_skip_range,
            ),
            AttentionKind::Cross => (
                self.cross_attention_block_skip_range,
                self.cross_attention_timestep_skip_range,
            ),
        }
    }
}

/// One attention layer's broadcast state: its calls so far and its last output.
#[derive(Default)]
struct Site {
    calls: usize,
    last: Option<Tensor>,
}

/// The hook of one pass: the per-layer states live across the run.
struct Hook {
    cfg: PabConfig,
    timestep: f64,
    sites: HashMap<AttentionSite, Site>,
    log: AttentionLog,
}

impl Hook {
    fn held_bytes(&self) -> usize {
        self.sites.values().filter_map(|s| s.last.as_ref()).map(bytes).sum()
    }
}

impl AttentionHook for RefCell<Hook> {
    fn attention(
        &self,
        site: AttentionSite,
        compute: &mut dyn FnMut() -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mut hook = self.borrow_mut();
        let (skip_range, range) = hook.cfg.of(site.kind);
        let Some(n) = skip_range else {
            hook.log.record(site, true);
            drop(hook);
            return compute();
        };
        let in_range = within(range, hook.timestep);
        let state = hook.sites.entry(site).or_default();
        let reuse = match &state.last {
            Some(last) if state.calls > 0 && in_range && state.calls % n != 0 => Some(last.clone()),
            _ => None,
        };
        state.calls += 1;
        let computed = reuse.is_none();
        hook.log.record(site, computed);
        if let Some(out) = reuse {
            return Ok(out);
        }
        // The computation may reach other sites' hooks (never in the models here), so the state is not held.
        drop(hook);
        let out = compute()?;
        if n > 1 {
            let mut hook = self.borrow_mut();
            if let Some(state) = hook.sites.get_mut(&site) {
                state.last = Some(out.detach());
            }
        }
        Ok(out)
    }
}

/// Pyramid Attention Broadcast's state over one sampling run.
pub(crate) struct PabState {
    hook: RefCell<Hook>,
    report: CacheReport,
}

impl PabState {
    pub(crate) fn new(cfg: &PabConfig) -> Self {
        Self {
            hook: RefCell::new(Hook {
                cfg: cfg.clone(),
                timestep: 0.0,
                sites: HashMap::new(),
                log: AttentionLog::default(),
            }),
            report: CacheReport {
                policy: "pab".into(),
                ..CacheReport::default()
            },
        }
    }

    /// The model's output at one step: the block stack runs, each attention computed or broadcast by the rule.
    pub(crate) fn denoise(
        &mut self,
        model: &dyn Denoiser,
        x: &Tensor,
        t: &Tensor,
        cond: &Condition,
        step: StepInfo,
    ) -> Result<Tensor> {
        self.hook.borrow_mut().timestep = step.timestep;
        let pass = model.staged(x, t, cond)?;
        let (out, ran) = pass.blocks(pass.hidden(), Some(&self.hook))?;
        let out = pass.head(&out)?.detach();
        let mut hook = self.hook.borrow_mut();
        self.report.blocks_per_pass = pass.num_blocks();
        self.report.blocks_computed += ran;
        hook.log.finish_into(&mut self.report, pass.attention_sites());
        self.report.cache_bytes = self.report.cache_bytes.max(hook.held_bytes());
        self.report.steps.push(StepRecord {
            timestep: step.timestep,
            computed: true,
            attention: hook.log.take_step(),
            ..StepRecord::default()
        });
        Ok(out)
    }

    pub(crate) fn finish(self) -> CacheReport {
        self.report
    }
}
