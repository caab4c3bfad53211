//! Where an attention layer's output may come from elsewhere than its computation: the hook step caches that
//! reuse attention outputs across denoising steps ([`crate::cache`]: Pyramid Attention Broadcast, FasterCache) hand
//! to a staged pass. Every attention of a pass is a numbered [`AttentionSite`] of one [`AttentionKind`]; without a
//! hook the attention runs as it always does.

use candle_core::{Result, Tensor};

/// What an attention layer attends over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttentionKind {
    /// Self-attention over the patches of each frame (Latte's spatial blocks, variant 3's first attention,
    /// variant 4's spatial heads; the text model's `transformer_blocks.*.attn1`).
    Spatial,
    /// Self-attention over the frames at each patch position (temporal blocks, variant 3's second attention,
    /// variant 4's temporal heads; `temporal_transformer_blocks.*.attn1`).
    Temporal,
    /// Cross-attention from the patches to the caption (`transformer_blocks.*.attn2`).
    Cross,
}

impl AttentionKind {
    pub const ALL: [AttentionKind; 3] = [Self::Spatial, Self::Temporal, Self::Cross];

    /// The kind's name in reports and settings ("spatial", "temporal", "cross").
    pub fn name(self) -> &'static str {
        match self {
            Self::Spatial => "spatial",
            Self::Temporal => "temporal",
            Self::Cross => "cross",
        }
    }

    /// The kind's position in per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One attention layer of a pass: its kind and its number among the pass's attentions of that kind, in the
/// order they run (0 = the first block's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionSite {
    pub kind: AttentionKind,
    pub index: usize,
}

impl AttentionSite {
    pub fn new(kind: AttentionKind, index: usize) -> Self {
        Self { kind, index }
    }
}

/// Decides, per attention site, whether `compute` runs or a stand-in is returned (a cached or extrapolated
/// output of the same shape). Called once per site per pass, in the order the sites run. Implementations keep
/// their state behind interior mutability, so that a shared reference can travel through the blocks.
pub trait AttentionHook {
    fn attention(&self, site: AttentionSite, compute: &mut dyn FnMut() -> Result<Tensor>) -> Result<Tensor>;
}

/// `compute()` through `hook` at `site`, or `compute()` itself without a hook.
pub(crate) fn attend(
    hook: Option<&dyn AttentionHook>,
    site: AttentionSite,
    mut compute: impl FnMut() -> Result<Tensor>,
) -> Result<Tensor> {
    match hook {
        Some(h) => h.attention(site, &mut compute),
        None => compute(),
    }
}

/// A hook seen through an offset per kind: the sites of one window of a long video numbered after the earlier
/// windows' (so that a cache keeps one entry per layer per window).
pub(crate) struct OffsetHook<'a> {
    pub(crate) inner: &'a dyn AttentionHook,
    pub(crate) offset: [usize; 3],
}

impl AttentionHook for OffsetHook<'_> {
    fn attention(&self, site: AttentionSite, compute: &mut dyn FnMut() -> Result<Tensor>) -> Result<Tensor> {
        let index = site.index + self.offset[site.kind.index()];
        self.inner.attention(AttentionSite::new(site.kind, index), compute)
    }
}
