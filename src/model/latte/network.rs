//! The Latte model: embeddings, the variant's arrangement of spatial and temporal attention, the final layer.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::block::{Cond, FactorisedBlock, FinalLayer, Hook, SplitHeadBlock, TransformerBlock};
use crate::config::{Injection, LatteConfig, TemporalPos, Variant};
use crate::model::attention_hook::{AttentionHook, AttentionKind};
use crate::model::checkpointing::checkpointed_backprop;
use crate::nn::embed::{LabelEmbedder, PatchEmbedder, TimestepEmbedder};
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
#[derive(Clone)]
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

/// What every stage of one pass shares: the conditioning and the input geometry.
#[derive(Clone)]
struct Pass {
    b: usize,
    h: usize,
    w: usize,
    /// Video frames in tokens (frames / tubelet size); image frames follow them.
    fv: usize,
    cond: Conditioning,
}

/// One checkpointable unit of the network body.
#[derive(Clone, Copy)]
enum Stage<'a> {
    Spatial(&'a TransformerBlock),
    Temporal { block: &'a TransformerBlock, first: bool },
    Factorised { block: &'a FactorisedBlock, first: bool },
    SplitHead(&'a SplitHeadBlock),
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
            x_embedder: PatchEmbedder::new(
                d,
                cfg.in_channels,
                cfg.patch_size,
                (cfg.patch_embed == crate::config::PatchEmbed::Tubelet).then_some(cfg.tubelet_size),
                vb.pp("x_embedder"),
            )?,
            t_embedder: TimestepEmbedder::new(d, vb.pp("t_embedder"))?,
            y_embedder: match cfg.label_table_rows() {
                0 => None,
                rows => Some(LabelEmbedder::new(rows, d, vb.pp("y_embedder"))?),
            },
            // The sin-cos tables are fixed: detached, so the backward pass computes no gradient for them.
            pos_embed: vb.get((1, cfg.num_spatial_tokens(), d), "pos_embed")?.detach(),
            temp_embed: temp_embed.map(|t| t.detach()),
            rope,
            blocks,
            final_layer: FinalLayer::new(cfg, vb.pp("final_layer"))?,
        })
    }

    pub fn config(&self) -> &LatteConfig {
        &self.cfg
    }

    /// Timestep and label conditioning. `y_frames` (B, F) holds each frame's label (the clip's for video frames).
    /// `t` is (B,), one timestep per clip, or (B, Fv), one per temporal token (per frame, or per tubelet), for
    /// diagonal denoising (FIFO): each frame's spatial blocks and final layer then see its own timestep, and the
    /// temporal blocks modulate each frame of a sequence with it. Token injection has one timestep token per
    /// sequence and takes one timestep per clip only (the model's input checks refuse the other).
    fn conditioning(&self, t: &Tensor, y_frames: Option<&Tensor>, frames: usize) -> Result<Conditioning> {
        let y_emb = match (&self.y_embedder, y_frames) {
            (Some(e), Some(y)) => Some(e.forward(y)?), // (B, F, D)
            (Some(_), None) => candle_core::bail!("class-conditional model called without labels"),
            (None, _) => None,
        };
        if t.rank() == 2 {
            return self.frame_conditioning(t, y_emb.as_ref(), frames);
        }
        let t_emb = self.t_embedder.forward(t)?; // (B, D)
        let (b, d) = t_emb.dims2()?;
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

    /// [`Latte::conditioning`] with one timestep per temporal token: `t` (B, Fv) with Fv = `frames` (no image
    /// frames), adaLN only. Spatial: (B, Fv, 1, D); temporal: (B, 1, Fv, D), each frame of a temporal sequence
    /// modulated by its own timestep (and the clip's label).
    fn frame_conditioning(&self, t: &Tensor, y_emb: Option<&Tensor>, frames: usize) -> Result<Conditioning> {
        let (b, fv) = t.dims2()?;
        if fv != frames || self.cfg.injection != Injection::Adaln {
            candle_core::bail!("one timestep per frame needs adaLN injection and no image frames");
        }
        let d = self.cfg.hidden_size;
        let t_emb = self.t_embedder.forward(&t.flatten_all()?)?.reshape((b, fv, d))?;
        let (spatial, temporal) = match y_emb {
            Some(y) => ((&t_emb + y)?, t_emb.broadcast_add(&y.narrow(1, 0, 1)?)?),
            None => (t_emb.clone(), t_emb),
        };
        Ok(Conditioning {
            spatial: spatial.unsqueeze(2)?,
            temporal: temporal.unsqueeze(1)?,
            injection: Injection::Adaln,
        })
    }

    /// Forward pass. x: (B, F, C, H, W) with F = num_frames + use_image_num; t: (B,) timesteps (any float or int
    /// dtype); y: (B,) u32 labels; y_image: (B, use_image_num) u32 labels of the image frames (default: y).
    /// Inputs must already be checked (see [`crate::model::Denoiser`]). With `grad` the pass is
    /// differentiable; without, it uses fused kernels and frees activations block by block.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        y_image: Option<&Tensor>,
        grad: bool,
    ) -> Result<Tensor> {
        let (h, pass) = self.embed(x, t, y, y_image)?;
        let (h, _) = self.run_blocks(&h, &pass, grad, None)?;
        self.head(&h, &pass, grad)
    }

    /// The forward pass without gradients split into its stages (see [`crate::model::StagedPass`]).
    pub fn staged(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        y_image: Option<&Tensor>,
    ) -> Result<LatteStages<'_>> {
        let (hidden, pass) = self.embed(x, t, y, y_image)?;
        Ok(LatteStages {
            network: self,
            hidden,
            pass,
        })
    }

    /// Every stage of the body on `h`, the attentions through `hook` when given: the stack's output and the
    /// number of stages (blocks) that ran.
    fn run_blocks(
        &self,
        h: &Tensor,
        pass: &Pass,
        grad: bool,
        hook: Option<&dyn AttentionHook>,
    ) -> Result<(Tensor, usize)> {
        let mut h = h.clone();
        let mut ran = 0;
        // Stages of each kind so far ([spatial, temporal, both]): a stage's number among its kind numbers its
        // attention sites.
        let mut seen = [0usize; 3];
        for stage in self.stages() {
            let kind = match stage {
                Stage::Spatial(_) => 0,
                Stage::Temporal { .. } => 1,
                Stage::Factorised { .. } | Stage::SplitHead(_) => 2,
            };
            h = self.run_stage(stage, &h, pass, grad, hook.map(|hook| (hook, seen[kind])))?;
            seen[kind] += 1;
            ran += 1;
            if !grad {
                h = h.detach();
            }
        }
        Ok((h, ran))
    }

    /// The first stage's modulated attention input (every variant starts with a spatial or split-head block).
    fn first_block_input(&self, h: &Tensor, pass: &Pass) -> Result<Tensor> {
        let cond = pass.cond.spatial();
        match self.stages().first() {
            Some(Stage::Spatial(block)) => block.modulated_input(h, cond),
            Some(Stage::Factorised { block, .. }) => block.modulated_input(h, cond),
            Some(Stage::SplitHead(block)) => block.modulated_input(h, cond),
            Some(Stage::Temporal { .. }) | None => candle_core::bail!("the model has no spatial first block"),
        }
    }

    /// The loss `loss_fn(forward(x, ...))` and its gradient with respect to every tensor in `params`, computed
    /// with activation checkpointing: the forward pass keeps only each stage's input; the backward pass recomputes
    /// one stage at a time from it and back-propagates through that stage alone. Peak memory is one stage's
    /// activations plus one hidden state per stage instead of every activation of the network; the cost is a
    /// second forward pass. The gradients equal the plain path's (same ops, same order within each stage).
    pub fn loss_and_grads_checkpointed(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        y_image: Option<&Tensor>,
        params: &[Tensor],
        loss_fn: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Vec<Option<Tensor>>)> {
        // Embeddings and conditioning keep their graph (they are small); everything after starts from leaves.
        let (h0, pass) = self.embed(x, t, y, y_image)?;
        let stages = self.stages();
        let with = |cond: &[Tensor]| Pass {
            cond: Conditioning {
                spatial: cond[0].clone(),
                temporal: cond[1].clone(),
                injection: pass.cond.injection,
            },
            ..pass.clone()
        };
        checkpointed_backprop(
            params,
            &h0,
            &[pass.cond.spatial.clone(), pass.cond.temporal.clone()],
            stages.len(),
            &|i, h, cond| self.run_stage(stages[i], h, &with(cond), true, None),
            &|h, cond| self.head(h, &with(cond), true),
            loss_fn,
        )
    }

    /// The checkpointable stages of the network body, in order; each maps (B, F, N, D) to (B, F, N, D).
    fn stages(&self) -> Vec<Stage<'_>> {
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
                let temporal = temporal
                    .into_iter()
                    .enumerate()
                    .map(|(i, block)| Stage::Temporal { block, first: i == 0 });
                let spatial = spatial.into_iter().map(Stage::Spatial);
                if self.cfg.variant == Variant::V1 {
                    spatial.zip(temporal).flat_map(|(s, t)| [s, t]).collect()
                } else {
                    spatial.chain(temporal).collect()
                }
            }
            Blocks::Factorised(blocks) => blocks
                .iter()
                .enumerate()
                .map(|(i, block)| Stage::Factorised { block, first: i == 0 })
                .collect(),
            Blocks::SplitHead(blocks) => blocks.iter().map(Stage::SplitHead).collect(),
        }
    }

    /// Patch embedding (plus the fixed tables) and the conditioning of one pass.
    fn embed(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>, y_image: Option<&Tensor>) -> Result<(Tensor, Pass)> {
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
        let cond = self.conditioning(t, y_frames.as_ref(), fv + images)?;
        let mut x = self
            .x_embedder
            .forward(x)?
            .broadcast_add(&self.pos_embed.unsqueeze(0)?)?; // (B, F', N, D)
        if let (Blocks::SplitHead(_), Some(te)) = (&self.blocks, &self.temp_embed) {
            // One attention mixes space and time, so the absolute time table is added up front.
            x = add_to_video(&x, fv, &te.unsqueeze(2)?)?;
        }
        Ok((x, Pass { b, h, w, fv, cond }))
    }

    /// One stage on `x`; `hook` holds the attention hook and the stage's number among its kind.
    fn run_stage(&self, stage: Stage, x: &Tensor, pass: &Pass, grad: bool, hook: Hook) -> Result<Tensor> {
        let cond = &pass.cond;
        match stage {
            Stage::Spatial(block) => block.forward(x, cond.spatial(), None, grad, AttentionKind::Spatial, hook),
            Stage::Temporal { block, first } => self.temporal_stage(x, pass.fv, first, |v| {
                block.forward(
                    v,
                    cond.temporal(),
                    self.rope.as_ref(),
                    grad,
                    AttentionKind::Temporal,
                    hook,
                )
            }),
            Stage::Factorised { block, first } => {
                let x = block.spatial(x, cond.spatial(), grad, hook)?;
                let x = self.temporal_stage(&x, pass.fv, first, |v| {
                    block.temporal(v, cond.temporal(), self.rope.as_ref(), grad, hook)
                })?;
                block.feed_forward(&x, cond.spatial(), grad)
            }
            Stage::SplitHead(block) => block.forward(
                x,
                cond.spatial(),
                cond.temporal(),
                pass.fv,
                self.rope.as_ref(),
                grad,
                hook,
            ),
        }
    }

    /// Attention layers of each kind in one pass: a spatial or temporal block has one; variants 3 and 4 have
    /// one of each per block (variant 4's spatial and temporal heads).
    fn attention_sites(&self) -> [usize; 3] {
        let mut sites = [0; 3];
        for stage in self.stages() {
            match stage {
                Stage::Spatial(_) => sites[0] += 1,
                Stage::Temporal { .. } => sites[1] += 1,
                Stage::Factorised { .. } | Stage::SplitHead(_) => {
                    sites[0] += 1;
                    sites[1] += 1;
                }
            }
        }
        sites
    }

    /// Final layer and unpatchify: (B, F', N, D) → (B, F, C_out, H, W).
    fn head(&self, x: &Tensor, pass: &Pass, grad: bool) -> Result<Tensor> {
        let out = self.final_layer.forward(x, pass.cond.spatial(), grad)?;
        self.unpatchify(&out, pass.b, pass.h, pass.w)
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

    /// The dtype of the parameters.
    pub fn dtype(&self) -> DType {
        self.pos_embed.dtype()
    }
}

/// One pass of [`Latte`] split into embeddings, block stack and final layer.
pub struct LatteStages<'a> {
    network: &'a Latte,
    hidden: Tensor,
    pass: Pass,
}

impl crate::model::StagedPass for LatteStages<'_> {
    fn hidden(&self) -> &Tensor {
        &self.hidden
    }

    fn first_block_input(&self) -> crate::Result<Tensor> {
        Ok(self.network.first_block_input(&self.hidden, &self.pass)?)
    }

    fn num_blocks(&self) -> usize {
        self.network.stages().len()
    }

    fn attention_sites(&self) -> [usize; 3] {
        self.network.attention_sites()
    }

    fn blocks(&self, hidden: &Tensor, hook: Option<&dyn AttentionHook>) -> crate::Result<(Tensor, usize)> {
        Ok(self.network.run_blocks(hidden, &self.pass, false, hook)?)
    }

    fn head(&self, hidden: &Tensor) -> crate::Result<Tensor> {
        Ok(self.network.head(hidden, &self.pass, false)?)
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
