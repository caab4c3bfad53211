//! `LatteConfig`: every architectural option of the Latte paper, presets by name, JSON round-trip.

use serde::{Deserialize, Serialize};

use crate::error::{LatteError, Result};

/// How the spatial and temporal attention are arranged (paper §3.1, Fig. 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Variant {
    /// Interleaved spatial and temporal transformer blocks (the official code's model).
    V1,
    /// Late fusion: all spatial blocks, then all temporal blocks.
    V2,
    /// Factorised attention in one block: spatial MHA, temporal MHA, then the MLP.
    V3,
    /// Split heads: half of the heads attend over space, half over time, in one attention.
    V4,
}

impl TryFrom<u8> for Variant {
    type Error = String;
    fn try_from(v: u8) -> std::result::Result<Self, String> {
        match v {
            1 => Ok(Self::V1),
            2 => Ok(Self::V2),
            3 => Ok(Self::V3),
            4 => Ok(Self::V4),
            _ => Err(format!("variant must be 1, 2, 3 or 4, got {v}")),
        }
    }
}

impl From<Variant> for u8 {
    fn from(v: Variant) -> u8 {
        match v {
            Variant::V1 => 1,
            Variant::V2 => 2,
            Variant::V3 => 3,
            Variant::V4 => 4,
        }
    }
}

/// How a video is cut into tokens (paper §3.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchEmbed {
    /// Uniform frame patch embedding: 2D p×p patches of every frame.
    Frame,
    /// Compression frame patch embedding: p×p×s tubelets, `tubelet_size` frames deep.
    Tubelet,
}

/// How the timestep and class reach the blocks (paper §3.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Injection {
    /// Scalable adaptive layer norm (adaLN-Zero): shift, scale and gate regressed from t + y.
    Adaln,
    /// "All tokens": the timestep and class embeddings join every attention as extra tokens.
    Tokens,
}

/// How the temporal attention knows frame order (paper §3.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemporalPos {
    /// Sin-cos table added once before the first temporal attention.
    Absolute,
    /// Rotary embedding of queries and keys inside every temporal attention.
    Rope,
}

/// Which attention kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionBackend {
    /// FlashAttention-2 wherever it can run (inference in float16/bfloat16 on a CUDA GPU of compute capability
    /// 8.0+, with the `flash-attn` build), the math composition elsewhere (training, float32, the CPU).
    Auto,
    /// Plain softmax(QKᵀ/√d)V over the whole sequence.
    Math,
    /// The same, over chunks of `attention_chunk_size` queries to bound memory.
    Chunked,
    /// FlashAttention-2 on CUDA (f16/bf16, sm80+, needs the `flash-attn` feature): an error where it cannot run
    /// for inference; training uses the math composition (the kernel has no backward).
    Flash,
}

/// The size presets of the paper: (name, depth, hidden size, heads). `depth` counts blocks as the official code.
pub const PRESETS: [(&str, usize, usize, usize); 4] = [
    ("S", 12, 384, 6),
    ("B", 12, 768, 12),
    ("L", 24, 1024, 16),
    ("XL", 28, 1152, 16),
];

/// The spatial downsampling of the Stable Diffusion VAE Latte encodes frames with: latents are image size / 8.
pub const VAE_DOWNSAMPLE: usize = 8;

/// The latent size (`input_size`) of frames of `image_size` pixels.
pub fn latent_size(image_size: usize) -> Result<usize> {
    if image_size == 0 || image_size % VAE_DOWNSAMPLE != 0 {
        return Err(LatteError::Value(format!(
            "image_size: expected a positive multiple of {VAE_DOWNSAMPLE} (the VAE downsamples by \
             {VAE_DOWNSAMPLE}), got {image_size}"
        )));
    }
    Ok(image_size / VAE_DOWNSAMPLE)
}

/// Every option of a Latte model. Field names follow the official code where it has one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatteConfig {
    /// Number of attention blocks as the official code counts them (spatial and temporal together).
    pub depth: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    /// Spatial patch size p (tokens cover p×p latent pixels).
    pub patch_size: usize,
    pub mlp_ratio: f64,
    /// Latent height and width (image size / 8 for the SD VAE).
    pub input_size: usize,
    pub in_channels: usize,
    /// Video frames per clip (not counting the `use_image_num` image frames).
    pub num_frames: usize,
    /// Predict the variance interpolation too: output channels = 2 × `in_channels`.
    pub learn_sigma: bool,
    /// Number of classes; 0 is unconditional.
    pub num_classes: usize,
    /// Label dropout for classifier-free guidance; > 0 adds the null class `num_classes`.
    pub class_dropout_prob: f64,
    pub variant: Variant,
    pub patch_embed: PatchEmbed,
    /// Frames per tubelet for `patch_embed = tubelet` (the temporal stride s); 1 for frame embedding.
    pub tubelet_size: usize,
    pub injection: Injection,
    pub temporal_position: TemporalPos,
    /// Image frames appended to each clip for image-video joint training.
    pub use_image_num: usize,
    pub attention: AttentionBackend,
    /// Queries per chunk for `attention = chunked`.
    pub attention_chunk_size: usize,
}

impl Default for LatteConfig {
    /// The official defaults: Latte-XL/2, 16 frames of 32×32×4 latents, learn_sigma, unconditional.
    fn default() -> Self {
        Self {
            depth: 28,
            hidden_size: 1152,
            num_heads: 16,
            patch_size: 2,
            mlp_ratio: 4.0,
            input_size: 32,
            in_channels: 4,
            num_frames: 16,
            learn_sigma: true,
            num_classes: 0,
            class_dropout_prob: 0.1,
            variant: Variant::V1,
            patch_embed: PatchEmbed::Frame,
            tubelet_size: 1,
            injection: Injection::Adaln,
            temporal_position: TemporalPos::Absolute,
            use_image_num: 0,
            attention: AttentionBackend::Auto,
            attention_chunk_size: 1024,
        }
    }
}

impl LatteConfig {
    /// The preset `name` ("Latte-S/2" ... "Latte-XL/8"; "LatteIMG-..." is accepted too) with default options.
    pub fn preset(name: &str) -> Result<Self> {
        let bad = || {
            LatteError::Config(format!(
                "unknown preset {name:?}; expected Latte-{{S,B,L,XL}}/{{2,4,8}}, e.g. \"Latte-XL/2\""
            ))
        };
        let rest = name
            .strip_prefix("LatteIMG-")
            .or_else(|| name.strip_prefix("Latte-"))
            .ok_or_else(bad)?;
        let (size, patch) = rest.split_once('/').ok_or_else(bad)?;
        let patch_size: usize = match patch {
            "2" | "4" | "8" => patch.parse().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        let &(_, depth, hidden_size, num_heads) = PRESETS.iter().find(|p| p.0 == size).ok_or_else(bad)?;
        Ok(Self {
            depth,
            hidden_size,
            num_heads,
            patch_size,
            ..Self::default()
        })
    }

    /// All preset names.
    pub fn preset_names() -> Vec<String> {
        PRESETS
            .iter()
            .flat_map(|(s, ..)| [2, 4, 8].map(|p| format!("Latte-{s}/{p}")))
            .collect()
    }

    /// Output channels: 2 × in_channels with learned variance.
    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }

    /// Frames per token along time (1 for frame embedding).
    pub fn temporal_patch(&self) -> usize {
        match self.patch_embed {
            PatchEmbed::Frame => 1,
            PatchEmbed::Tubelet => self.tubelet_size,
        }
    }

    /// Token positions along time for the video part.
    pub fn num_temporal_tokens(&self) -> usize {
        self.num_frames / self.temporal_patch()
    }

    /// Token positions per frame: (input_size / patch_size)².
    pub fn num_spatial_tokens(&self) -> usize {
        (self.input_size / self.patch_size).pow(2)
    }

    /// Rows of the label table: the null class exists when labels can be dropped.
    pub fn label_table_rows(&self) -> usize {
        if self.num_classes == 0 {
            0
        } else {
            self.num_classes + usize::from(self.class_dropout_prob > 0.0)
        }
    }

    /// Blocks in `blocks.{i}`: V1/V2 count spatial and temporal blocks; V3/V4 hold both in one block.
    pub fn num_blocks(&self) -> usize {
        match self.variant {
            Variant::V1 | Variant::V2 => self.depth,
            Variant::V3 | Variant::V4 => self.depth / 2,
        }
    }

    /// Reject values and combinations that cannot work, with a message that says why.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(LatteError::Config(m));
        // Bounds far beyond every published model (Latte-XL: depth 28, width 1152) that keep every size product
        // below overflow; a larger value is a typo or a hostile file, refused before anything is allocated.
        crate::limits::sizes(&[
            ("depth", self.depth, 1, 1 << 12),
            ("hidden_size", self.hidden_size, 1, 1 << 16),
            ("num_heads", self.num_heads, 1, 1 << 12),
            ("patch_size", self.patch_size, 1, 1 << 10),
            ("input_size", self.input_size, 1, 1 << 14),
            ("in_channels", self.in_channels, 1, 1 << 12),
            ("num_frames", self.num_frames, 1, 1 << 14),
            ("num_classes", self.num_classes, 0, 1 << 24),
            ("tubelet_size", self.tubelet_size, 1, 1 << 10),
            ("use_image_num", self.use_image_num, 0, 1 << 10),
            ("attention_chunk_size", self.attention_chunk_size, 1, usize::MAX),
        ])?;
        if self.depth % 2 != 0 {
            return err(format!(
                "depth counts spatial and temporal blocks together and must be even, got {}",
                self.depth
            ));
        }
        if self.hidden_size % self.num_heads != 0 {
            return err(format!(
                "hidden_size ({}) must be divisible by num_heads ({})",
                self.hidden_size, self.num_heads
            ));
        }
        if self.hidden_size % 4 != 0 {
            return err(format!(
                "hidden_size must be a multiple of 4 for the 2D sin-cos position table, got {}",
                self.hidden_size
            ));
        }
        if self.input_size % self.patch_size != 0 {
            return err(format!(
                "input_size ({}) must be divisible by patch_size ({})",
                self.input_size, self.patch_size
            ));
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 256.0) {
            return err(format!("mlp_ratio must be in (0, 256], got {}", self.mlp_ratio));
        }
        if self.mlp_hidden() == 0 {
            return err(format!(
                "mlp_ratio ({}) × hidden_size ({}) gives an MLP of width 0; expected at least 1",
                self.mlp_ratio, self.hidden_size
            ));
        }
        if !(0.0..1.0).contains(&self.class_dropout_prob) {
            return err(format!(
                "class_dropout_prob must be in [0, 1), got {}",
                self.class_dropout_prob
            ));
        }
        match self.patch_embed {
            PatchEmbed::Frame if self.tubelet_size != 1 => {
                return err(format!(
                    "tubelet_size = {} needs patch_embed = \"tubelet\" (frame embedding has tubelet_size 1)",
                    self.tubelet_size
                ))
            }
            PatchEmbed::Tubelet => {
                if self.num_frames % self.tubelet_size != 0 {
                    return err(format!(
                        "num_frames ({}) must be divisible by tubelet_size ({})",
                        self.num_frames, self.tubelet_size
                    ));
                }
                if self.use_image_num > 0 {
                    return err(
                        "use_image_num > 0 needs patch_embed = \"frame\": single images cannot be cut into tubelets"
                            .into(),
                    );
                }
            }
            PatchEmbed::Frame => {}
        }
        if self.variant == Variant::V4 && self.num_heads % 2 != 0 {
            return err(format!(
                "variant 4 splits the heads in half between space and time: num_heads must be even, got {}",
                self.num_heads
            ));
        }
        if self.temporal_position == TemporalPos::Rope && (self.hidden_size / self.num_heads) % 2 != 0 {
            return err(format!(
                "temporal_position = \"rope\" needs an even head dimension, got {}",
                self.hidden_size / self.num_heads
            ));
        }
        if self.attention == AttentionBackend::Flash && !cfg!(feature = "flash-attn") {
            return Err(LatteError::Unsupported(
                "attention = \"flash\" needs latte-rs built with the `flash-attn` feature; rebuild with \
                 `maturin develop --release --features python,flash-attn` (CUDA, sm80+), or use \"math\" / \"chunked\""
                    .into(),
            ));
        }
        Ok(())
    }

    /// The MLP's hidden width, `int(hidden_size * mlp_ratio)` as the official code computes it.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Parse from JSON and validate.
    pub fn from_json(s: &str) -> Result<Self> {
        let cfg: Self = crate::error::parse_json_object(s.as_bytes())
            .map_err(|e| LatteError::Config(format!("LatteConfig: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Serialise to pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_round_trip() {
        for name in LatteConfig::preset_names() {
            let cfg = LatteConfig::preset(&name).unwrap();
            cfg.validate().unwrap();
            let back = LatteConfig::from_json(&cfg.to_json().unwrap()).unwrap();
            assert_eq!(cfg, back);
        }
        assert!(LatteConfig::preset("Latte-M/2").is_err());
        assert!(LatteConfig::preset("Latte-S/3").is_err());
    }

    #[test]
    fn invalid_combinations_are_rejected() {
        let base = LatteConfig::preset("Latte-S/2").unwrap();
        let bad = [
            LatteConfig {
                depth: 3,
                ..base.clone()
            },
            LatteConfig {
                num_heads: 5,
                ..base.clone()
            },
            LatteConfig {
                patch_embed: PatchEmbed::Tubelet,
                tubelet_size: 3,
                ..base.clone()
            },
            LatteConfig {
                patch_embed: PatchEmbed::Tubelet,
                tubelet_size: 2,
                use_image_num: 4,
                ..base.clone()
            },
            LatteConfig {
                variant: Variant::V4,
                num_heads: 3,
                hidden_size: 384,
                ..base.clone()
            },
            LatteConfig {
                class_dropout_prob: 1.0,
                ..base.clone()
            },
            LatteConfig {
                input_size: 33,
                ..base.clone()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
        assert!(serde_json::from_str::<LatteConfig>(r#"{"variant": 5}"#).is_err());
        assert!(serde_json::from_str::<LatteConfig>(r#"{"depht": 4}"#).is_err());
    }
}
