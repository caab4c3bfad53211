//! The Latte model: embeddings, the variant's arrangement of spatial and temporal attention, the final layer.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::block::{Cond, FactorisedBlock, FinalLayer, SplitHeadBlock, TransformerBlock};
use super::embed::{LabelEmbedder, PatchEmbedder, TimestepEmbedder};
use crate::config::{Injection, LatteConfig, TemporalPos, Variant};
use crate::nn::Rope;

/// The blocks of each variant (all are stored as `blocks.{i}`).
#[derive(Clone, Debug)]
enum Blocks {
    /// V1 (alternating spatial, temporal) and V2 (first half spatial, second half temporal).
    Separate(Vec<TransformerBlock>),
    Factorised(Vec<FactorisedBlock>),
    SplitHead(Vec<SplitHeadBlock>),
}

/// The conditioning of one forward pass, built once from t, y and the image labels.
struct Conditioning {
    /// Per frame: (B, F, 1, D) for adaLN, (B, F, K, D) tokens.
    spatial: Tensor,
    /// Per clip: (B, 1, 1, D) for adaLN, (B, 1, K, D) tokens.
    temporal: Tensor,
    injection: Injection,
}

impl Conditioning {
    fn wrap<'a>(&self, t: &'a Tensor) -> Cond<'a> {
        match self.injection {
            Injection::Adaln => Cond::Adaln(t),
            Injection::Tokens => Cond::Tokens(t),
        }
    }
    fn spatial(&self) -> Cond<'_> {
        self.wrap(&self.spatial)
    }
    fn temporal(&self) -> Cond<'_> {
        self.wrap(&self.temporal)
    }
}

/// Latte: a latent video diffusion transformer.
#[derive(Clone, Debug)]
pub struct Latte {
    cfg: LatteConfig,
    x_embedder: PatchEmbedder,
    t_embedder: TimestepEmbedder,
    y_embedder: Option<LabelEmbedder>,
    pos_embed: Tensor,
    temp_embed: Option<Tensor>,
    rope: Option<Rope>,
    blocks: Blocks,
    final_layer: FinalLayer,
}

impl Latte {
    /// Builds the model from `vb`, whose paths mirror the official checkpoints' names.
    pub fn new(cfg: &LatteConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let tokens_t = cfg.num_temporal_tokens();
        let block_vb = vb.pp("blocks");
        let blocks = match cfg.variant {
            Variant::V1 | Variant::V2 => Blocks::Separate(
                (0..cfg.num_blocks())
                    .map(|i| TransformerBlock::new(cfg, block_vb.pp(i)))
                    .collect::<Result<_>>()?,
            ),
            Variant::V3 => Blocks::Factorised(
                (0..cfg.num_blocks())
                    .map(|i| FactorisedBlock::new(cfg, block_vb.pp(i)))
                    .collect::<Result<_>>()?,
            ),
            Variant::V4 => Blocks::SplitHead(
                (0..cfg.num_blocks())
                    .map(|i| SplitHeadBlock::new(cfg, block_vb.pp(i)))
                    .collect::<Result<_>>()?,
            ),
        };
        let (temp_embed, rope) = match cfg.temporal_position {
            TemporalPos::Absolute => (Some(vb.get((1, tokens_t, d), "temp_embed")?), None),
            TemporalPos::Rope => (
                None,
                Some(Rope::new(tokens_t, d / cfg.num_heads, vb.dtype(), vb.device())?),
            ),
        };
        Ok(Self {
            cfg: cfg.clone(),
            x_embedder: PatchEmbedder::new(cfg, vb.pp("x_embedder"))?,
            t_embedder: TimestepEmbedder::new(d, vb.pp("t_embedder"))?,
            y_embedder: match cfg.label_table_rows() {
                0 => None,
                rows => Some(LabelEmbedder::new(rows, d, vb.pp("y_embedder"))?),
            },
            pos_embed: vb.get((1, cfg.num_spatial_tokens(), d), "pos_embed")?,
            temp_embed,
            rope,
            blocks,
            final_layer: FinalLayer::new(cfg, vb.pp("final_layer"))?,
        })
    }

    pub fn config(&self) -> &LatteConfig {
        &self.cfg
    }

    /// Timestep and label conditioning. `y_frames` (B, F) holds each frame's label (the clip's for video frames).
    fn conditioning(&self, t: &Tensor, y_frames: Option<&Tensor>, frames: usize) -> Result<Conditioning> {
        let t_emb = self.t_embedder.forward(t)?; // (B, D)
        let (b, d) = t_emb.dims2()?;
        let y_emb = match (&self.y_embedder, y_frames) {
            (Some(e), Some(y)) => Some(e.forward(y)?), // (B, F, D)
            (Some(_), None) => candle_core::bail!("class-conditional model called without labels"),
            (None, _) => None,
        };
        let (spatial, temporal) = match self.cfg.injection {
            Injection::Adaln => {
                let t_frames = t_emb.unsqueeze(1)?.broadcast_as((b, frames, d))?;
                let (spatial, temporal) = match &y_emb {
                    Some(y) => ((&t_frames + y)?, (&t_emb + y.narrow(1, 0, 1)?.squeeze(1)?)?),
                    None => (t_frames.contiguous()?, t_emb.clone()),
                };
                (spatial.unsqueeze(2)?, temporal.reshape((b, 1, 1, d))?)
            }
            Injection::Tokens => {
                let t_tok = t_emb.reshape((b, 1, 1, d))?;
                match &y_emb {
                    Some(y) => {
                        let y_tok = y.unsqueeze(2)?; // (B, F, 1, D)
                        let spatial = Tensor::cat(&[&t_tok.broadcast_as((b, frames, 1, d))?.contiguous()?, &y_tok], 2)?;
                        let temporal = Tensor::cat(&[&t_tok, &y_tok.narrow(1, 0, 1)?], 2)?;
                        (spatial, temporal)
                    }
                    None => (t_tok.broadcast_as((b, frames, 1, d))?.contiguous()?, t_tok),
                }
            }
        };
        Ok(Conditioning {
            spatial,
            temporal,
            injection: self.cfg.injection,
        })
    }

    /// Forward pass. x: (B, F, C, H, W) with F = num_frames + use_image_num; t: (B,) timesteps (any float or int
    /// dtype); y: (B,) u32 labels; y_image: (B, use_image_num) u32 labels of the image frames (default: y).
    /// Inputs must already be validated (see [`crate::model::LatteModel::forward`]). With `grad` the pass is
    /// differentiable; without, it uses fused kernels and frees activations block by block.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        y_image: Option<&Tensor>,
        grad: bool,
    ) -> Result<Tensor> {
        let (b, frames, _, h, w) = x.dims5()?;
        let images = frames - self.cfg.num_frames;
        let fv = self.cfg.num_temporal_tokens();
        let y_frames = match y {
            Some(y) => {
                let video = y.unsqueeze(1)?.broadcast_as((b, fv))?;
                let all = match (images, y_image) {
                    (0, _) => video.contiguous()?,
                    (_, Some(yi)) => Tensor::cat(&[&video, yi], 1)?,
                    (n, None) => y.unsqueeze(1)?.broadcast_as((b, fv + n))?.contiguous()?,
                };
                Some(all)
            }
            None => None,
        };
        let f_tokens = fv + images;
        let cond = self.conditioning(t, y_frames.as_ref(), f_tokens)?;
        let step = |x: Tensor| if grad { x } else { x.detach() };

        let mut x = self
            .x_embedder
            .forward(x)?
            .broadcast_add(&self.pos_embed.unsqueeze(0)?)?; // (B, F', N, D)
        match &self.blocks {
            Blocks::Separate(blocks) => {
                let half = blocks.len() / 2;
                let (spatial, temporal): (Vec<_>, Vec<_>) = match self.cfg.variant {
                    Variant::V2 => (blocks[..half].iter().collect(), blocks[half..].iter().collect()),
                    _ => (
                        blocks.iter().step_by(2).collect(),
                        blocks.iter().skip(1).step_by(2).collect(),
                    ),
                };
                let interleaved = self.cfg.variant == Variant::V1;
                let stage = |x: Tensor, blk: &TransformerBlock, first: bool| -> Result<Tensor> {
                    self.temporal_stage(&x, fv, first, |v| {
                        blk.forward(v, cond.temporal(), self.rope.as_ref(), grad)
                    })
                };
                if interleaved {
                    for (i, (s, tb)) in spatial.iter().zip(&temporal).enumerate() {
                        x = step(s.forward(&x, cond.spatial(), None, grad)?);
                        x = step(stage(x, tb, i == 0)?);
                    }
                } else {
                    for s in &spatial {
                        x = step(s.forward(&x, cond.spatial(), None, grad)?);
                    }
                    for (i, tb) in temporal.iter().enumerate() {
                        x = step(stage(x, tb, i == 0)?);
                    }
                }
            }
            Blocks::Factorised(blocks) => {
                for (i, blk) in blocks.iter().enumerate() {
                    x = blk.spatial(&x, cond.spatial(), grad)?;
                    x = self.temporal_stage(&x, fv, i == 0, |v| {
                        blk.temporal(v, cond.temporal(), self.rope.as_ref(), grad)
                    })?;
                    x = step(blk.feed_forward(&x, cond.spatial(), grad)?);
                }
            }
            Blocks::SplitHead(blocks) => {
                // One attention mixes space and time, so the absolute time table is added up front.
                if let Some(te) = &self.temp_embed {
                    x = add_to_video(&x, fv, &te.unsqueeze(2)?)?;
                }
                for blk in blocks {
                    x = step(blk.forward(&x, cond.spatial(), cond.temporal(), fv, self.rope.as_ref(), grad)?);
                }
            }
        }
        let out = self.final_layer.forward(&x, cond.spatial(), grad)?;
        self.unpatchify(&out, b, h, w)
    }

    /// Runs `f` on the video frames in temporal layout (B, N, Fv, D), adding the absolute time table first when
    /// `first`; image frames pass through untouched. Returns the spatial layout (B, F, N, D).
    fn temporal_stage(
        &self,
        x: &Tensor,
        fv: usize,
        first: bool,
        f: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let frames = x.dim(1)?;
        let mut video = x.narrow(1, 0, fv)?.transpose(1, 2)?.contiguous()?; // (B, N, Fv, D)
        if first {
            if let Some(te) = &self.temp_embed {
                video = video.broadcast_add(te)?;
            }
        }
        let video = f(&video)?.transpose(1, 2)?;
        if frames > fv {
            Tensor::cat(&[&video, &x.narrow(1, fv, frames - fv)?], 1)
        } else {
            video.contiguous()
        }
    }

    /// (B, F', N, p·p·s·C) → (B, F'·s, C, H, W), inverting the patch order of [`PatchEmbedder`].
    fn unpatchify(&self, x: &Tensor, b: usize, h: usize, w: usize) -> Result<Tensor> {
        let (p, s, c) = (self.cfg.patch_size, self.cfg.temporal_patch(), self.cfg.out_channels());
        let ft = x.dim(1)?;
        let (gh, gw) = (h / p, w / p);
        x.reshape(vec![b, ft, gh, gw, s, p, p, c])?
            .permute(vec![0, 1, 4, 7, 2, 5, 3, 6])?
            .reshape((b, ft * s, c, h, w))
    }

    /// Classifier-free guidance as the official code: the batch is [cond half | uncond half] (labels for the
    /// second half should be the null class); the model runs on the first half of `x` twice, and the first
    /// `in_channels` output channels become uncond + scale · (cond − uncond) for both halves.
    pub fn forward_with_cfg(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>, cfg_scale: f64) -> Result<Tensor> {
        let b = x.dim(0)?;
        let half = x.narrow(0, 0, b / 2)?;
        let combined = Tensor::cat(&[&half, &half], 0)?;
        let out = self.forward(&combined, t, y, None, false)?;
        let c = self.cfg.in_channels;
        let eps = out.narrow(2, 0, c)?;
        let cond = eps.narrow(0, 0, b / 2)?;
        let uncond = eps.narrow(0, b / 2, b / 2)?;
        let guided = (&uncond + ((cond - &uncond)? * cfg_scale)?)?;
        let eps = Tensor::cat(&[&guided, &guided], 0)?;
        let channels = out.dim(2)?;
        if channels > c {
            Tensor::cat(&[&eps, &out.narrow(2, c, channels - c)?], 2)
        } else {
            Ok(eps)
        }
    }

    /// The dtype of the parameters.
    pub fn dtype(&self) -> DType {
        self.pos_embed.dtype()
    }
}

/// `x[:, :fv] += table` for x (B, F, N, D), table broadcastable to (B, fv, N, D).
fn add_to_video(x: &Tensor, fv: usize, table: &Tensor) -> Result<Tensor> {
    let frames = x.dim(1)?;
    let video = x.narrow(1, 0, fv)?.broadcast_add(table)?;
    if frames > fv {
        Tensor::cat(&[&video, &x.narrow(1, fv, frames - fv)?], 1)
    } else {
        Ok(video)
    }
}
