//! Embedding layers: video patches or tubelets, timesteps, class labels.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::pos::timestep_features;
use crate::nn::Linear;

/// Cuts a video into tokens: p×p patches per frame (a Conv2d with kernel = stride = p, as ViT) or p×p×s
/// tubelets (a Conv3d with kernel = stride = (s, p, p)). Both are one GEMM over the flattened patches.
#[derive(Clone, Debug)]
pub struct PatchEmbedder {
    weight: Tensor,
    bias: Tensor,
    patch: usize,
    tubelet: usize,
}

impl PatchEmbedder {
    /// `hidden` outputs per token from `in_channels` latent channels; `tubelet` frames deep (a Conv3d kernel) or,
    /// with None, per frame (a Conv2d kernel). Reads `proj.weight` and `proj.bias` under `vb`.
    pub fn new(
        hidden: usize,
        in_channels: usize,
        patch: usize,
        tubelet: Option<usize>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (d, c, p) = (hidden, in_channels, patch);
        let vb = vb.pp("proj");
        let weight = match tubelet {
            None => vb.get((d, c, p, p), "weight")?,
            Some(s) => vb.get(vec![d, c, s, p, p], "weight")?,
        };
        Ok(Self {
            weight,
            bias: vb.get(d, "bias")?,
            patch: p,
            tubelet: tubelet.unwrap_or(1),
        })
    }

    /// (B, F, C, H, W) → (B, F/s, (H/p)·(W/p), D), tokens in row-major patch order.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, f, c, h, w) = x.dims5()?;
        let (p, s) = (self.patch, self.tubelet);
        let (gh, gw, ft) = (h / p, w / p, f / s);
        // (B, F', s, C, gh, p, gw, p) → (B, F', gh, gw, C, s, p, p): the kernel's (C, s, p, p) order.
        let patches = x
            .reshape(vec![b, ft, s, c, gh, p, gw, p])?
            .permute(vec![0, 1, 4, 6, 3, 2, 5, 7])?
            .reshape((b * ft * gh * gw, c * s * p * p))?;
        let d = self.weight.dim(0)?;
        let w = self.weight.reshape((d, c * s * p * p))?;
        patches
            .matmul(&w.t()?)?
            .broadcast_add(&self.bias)?
            .reshape((b, ft, gh * gw, d))
    }
}

/// Embeds scalar timesteps into vector representations: sinusoidal features, then a 2-layer MLP with SiLU.
#[derive(Clone, Debug)]
pub struct TimestepEmbedder {
    linear_1: Linear,
    linear_2: Linear,
    frequency_embedding_size: usize,
}

impl TimestepEmbedder {
    pub const FREQUENCY_EMBEDDING_SIZE: usize = 256;

    /// DiT's names: `mlp.0` and `mlp.2` under `vb`.
    pub fn new(hidden: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("mlp");
        Self::with_layers(hidden, vb.pp("0"), vb.pp("2"))
    }

    /// The two linears under any names (diffusers: `linear_1`, `linear_2`).
    pub fn with_layers(hidden: usize, first: VarBuilder, second: VarBuilder) -> Result<Self> {
        let f = Self::FREQUENCY_EMBEDDING_SIZE;
        Ok(Self {
            linear_1: Linear::new(f, hidden, true, first)?,
            linear_2: Linear::new(hidden, hidden, true, second)?,
            frequency_embedding_size: f,
        })
    }

    /// t: (B,) → (B, D).
    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let dtype = self.linear_1.dtype();
        let feats = timestep_features(t, self.frequency_embedding_size)?.to_dtype(dtype)?;
        self.linear_2.forward(&self.linear_1.forward(&feats)?.silu()?)
    }
}

/// Embeds class labels into vectors; row `num_classes` is the null class used for classifier-free guidance.
#[derive(Clone, Debug)]
pub struct LabelEmbedder {
    embedding_table: Tensor,
}

impl LabelEmbedder {
    pub fn new(rows: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            embedding_table: vb.get((rows, hidden), "embedding_table.weight")?,
        })
    }

    /// labels: any shape of u32 → (..., D).
    pub fn forward(&self, labels: &Tensor) -> Result<Tensor> {
        let dims = labels.dims().to_vec();
        let flat = labels.flatten_all()?;
        let emb = self.embedding_table.index_select(&flat, 0)?;
        let mut out = dims;
        out.push(self.embedding_table.dim(1)?);
        emb.reshape(out)
    }
}
