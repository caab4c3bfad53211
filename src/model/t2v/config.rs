//! The config of the text-to-video transformer: diffusers' `LatteTransformer3DModel` `config.json` keys.

use serde::{Deserialize, Serialize};

use crate::error::{LatteError, Result};

/// diffusers' `LatteTransformer3DModel` config (the keys of its `config.json`; others are ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatteT2VConfig {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    pub num_layers: usize,
    pub cross_attention_dim: Option<usize>,
    pub attention_bias: bool,
    pub sample_size: usize,
    pub patch_size: usize,
    pub activation_fn: String,
    pub num_embeds_ada_norm: Option<usize>,
    pub norm_type: String,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    pub caption_channels: usize,
    pub video_length: usize,
}

impl Default for LatteT2VConfig {
    /// Latte-1 (`maxin-cn/Latte-1`'s `transformer/config.json`).
    fn default() -> Self {
        Self {
            num_attention_heads: 16,
            attention_head_dim: 72,
            in_channels: 4,
            out_channels: Some(8),
            num_layers: 28,
            cross_attention_dim: Some(1152),
            attention_bias: true,
            sample_size: 64,
            patch_size: 2,
            activation_fn: "gelu-approximate".into(),
            num_embeds_ada_norm: Some(1000),
            norm_type: "ada_norm_single".into(),
            norm_elementwise_affine: false,
            norm_eps: 1e-6,
            caption_channels: 4096,
            video_length: 16,
        }
    }
}

impl LatteT2VConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Parses a diffusers `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = crate::error::parse_json_object(text.as_bytes())
            .map_err(|e| LatteError::Config(format!("LatteTransformer3DModel config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(LatteError::Config(m));
        if self.norm_type != "ada_norm_single" {
            return err(format!(
                "norm_type {:?}: only \"ada_norm_single\" (Latte-1's adaLN-single) is supported",
                self.norm_type
            ));
        }
        if !matches!(self.activation_fn.as_str(), "gelu" | "gelu-approximate" | "geglu") {
            return err(format!(
                "activation_fn {:?}: expected \"gelu\", \"gelu-approximate\" or \"geglu\"",
                self.activation_fn
            ));
        }
        crate::limits::sizes(&[
            ("num_attention_heads", self.num_attention_heads, 1, 1 << 12),
            ("attention_head_dim", self.attention_head_dim, 1, 1 << 12),
            ("in_channels", self.in_channels, 1, 1 << 12),
            ("out_channels", self.out_channels(), 1, 1 << 12),
            ("num_layers", self.num_layers, 1, 1 << 12),
            ("patch_size", self.patch_size, 1, 1 << 10),
            ("sample_size", self.sample_size, 1, 1 << 14),
            ("caption_channels", self.caption_channels, 1, 1 << 16),
            ("video_length", self.video_length, 1, 1 << 14),
            ("num_embeds_ada_norm", self.num_embeds_ada_norm.unwrap_or(0), 0, 1 << 24),
            ("num_attention_heads × attention_head_dim", self.inner_dim(), 1, 1 << 16),
        ])?;
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return err(format!(
                "norm_eps: expected a positive finite value, got {}",
                self.norm_eps
            ));
        }
        if self.inner_dim() % 2 != 0 {
            return err(format!("inner dim {} must be even (sin-cos tables)", self.inner_dim()));
        }
        if let Some(c) = self.cross_attention_dim {
            if c != self.inner_dim() {
                return err(format!(
                    "cross_attention_dim {c} must equal num_attention_heads × attention_head_dim = {} (the caption \
                     is projected to that width)",
                    self.inner_dim()
                ));
            }
        }
        Ok(())
    }
}
