//! The text-to-video Latte transformer of Latte-1, as diffusers' `LatteTransformer3DModel`.
//!
//! Per layer, a spatial block (self-attention over the patches of each frame, cross-attention to the projected
//! caption, feed-forward) then a temporal block (self-attention over the frames at each patch position,
//! feed-forward), both PixArt-style adaLN-single: one timestep embedding → 6·D modulation shared by every block,
//! plus each block's learned `scale_shift_table` (6, D). The caption's 4096-d T5 features are projected to D
//! (`caption_projection`). Positions: 2D sin-cos per frame (diffusers' `get_2d_sincos_pos_embed`, rescaled to
//! the base grid), and a 1D sin-cos table over `video_length` frames added before the first temporal block.
//! Input and output are `(B, C, F, H, W)`, as in diffusers. The patch and timestep embeddings, norms, GELU and
//! modulation are the layers Latte uses ([`crate::nn`]).

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::TransformerBlock;
use super::config::LatteT2VConfig;
use crate::model::attention_hook::{AttentionHook, AttentionKind, AttentionSite};
use crate::model::checkpointing::checkpointed_backprop;
use crate::nn::embed::{PatchEmbedder, TimestepEmbedder};
use crate::nn::pos::{sincos_1d, sincos_2d_at};
use crate::nn::{gelu::gelu, LayerNorm, Linear};

/// `repeat_interleave(n, dim=0)`: every row of `x` n times in a row.
fn repeat_rows(x: &Tensor, n: usize) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let mut expanded = vec![dims[0], n];
    expanded.extend_from_slice(&dims[1..]);
    dims[0] *= n;
    x.unsqueeze(1)?.broadcast_as(expanded)?.contiguous()?.reshape(dims)
}

/// The network (parameters under diffusers' names).
pub struct LatteT2V {
    cfg: LatteT2VConfig,
    patch_embed: PatchEmbedder,
    timestep_embedder: TimestepEmbedder,
    adaln_linear: Linear,
    caption_linear_1: Linear,
    caption_linear_2: Linear,
    spatial_blocks: Vec<TransformerBlock>,
    temporal_blocks: Vec<TransformerBlock>,
    scale_shift_table: Tensor,
    proj_out: Linear,
    /// The fixed 1D sin-cos table (1, video_length, D) in f32, added before the first temporal block.
    temp_pos: Tensor,
    /// The 2D tables by patch grid and dtype, made on first use.
    pos_2d: Mutex<HashMap<(usize, usize, DType), Tensor>>,
}

impl LatteT2V {
    pub fn new(cfg: &LatteT2VConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.inner_dim();
        let timesteps = vb.pp("adaln_single").pp("emb").pp("timestep_embedder");
        let captions = vb.pp("caption_projection");
        let blocks = |prefix: &str, cross: bool| -> Result<Vec<TransformerBlock>> {
            (0..cfg.num_layers)
                .map(|i| TransformerBlock::new(cfg, cross, vb.pp(prefix).pp(i)))
                .collect()
        };
        let positions: Vec<f64> = (0..cfg.video_length).map(|k| k as f64).collect();
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed: PatchEmbedder::new(d, cfg.in_channels, cfg.patch_size, None, vb.pp("pos_embed"))?,
            timestep_embedder: TimestepEmbedder::with_layers(d, timesteps.pp("linear_1"), timesteps.pp("linear_2"))?,
            adaln_linear: Linear::new(d, 6 * d, true, vb.pp("adaln_single").pp("linear"))?,
            caption_linear_1: Linear::new(cfg.caption_channels, d, true, captions.pp("linear_1"))?,
            caption_linear_2: Linear::new(d, d, true, captions.pp("linear_2"))?,
            spatial_blocks: blocks("transformer_blocks", cfg.cross_attention_dim.is_some())?,
            temporal_blocks: blocks("temporal_transformer_blocks", false)?,
            scale_shift_table: vb.get((2, d), "scale_shift_table")?,
            proj_out: Linear::new(
                d,
                cfg.patch_size * cfg.patch_size * cfg.out_channels(),
                true,
                vb.pp("proj_out"),
            )?,
            temp_pos: Tensor::from_vec(sincos_1d(d, &positions), (1, cfg.video_length, d), vb.device())?
                .to_dtype(DType::F32)?,
            pos_2d: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &LatteT2VConfig {
        &self.cfg
    }

    /// diffusers' `get_2d_sincos_pos_embed` for an (h, w) patch grid, (1, h·w, D): coordinates `i / (n / base) /
    /// scale` in f32, base = sample_size / patch_size, scale = max(sample_size / 64, 1).
    fn pos_embed_2d(&self, h: usize, w: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
        let mut cache = self.pos_2d.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(t) = cache.get(&(h, w, dtype)) {
            return Ok(t.clone());
        }
        let d = self.cfg.inner_dim();
        let base = (self.cfg.sample_size / self.cfg.patch_size) as f32;
        let interp = ((self.cfg.sample_size / 64).max(1)) as f32;
        let coord = |i: usize, n: usize| (i as f32 / (n as f32 / base) / interp) as f64;
        let cols: Vec<f64> = (0..h * w).map(|k| coord(k % w, w)).collect();
        let rows: Vec<f64> = (0..h * w).map(|k| coord(k / w, h)).collect();
        let table = Tensor::from_vec(sincos_2d_at(d, &cols, &rows), (1, h * w, d), device)?
            .to_dtype(DType::F32)?
            .to_dtype(dtype)?;
        cache.insert((h, w, dtype), table.clone());
        Ok(table)
    }

    /// The embeddings of one pass: the tokens (B·F, L, D) and the conditioning every layer and the head read.
    fn embed(&self, x: &Tensor, t: &Tensor, caption: &Tensor, temporal: bool) -> Result<(Tensor, Pass, Vec<Tensor>)> {
        let (b, _, f, height, width) = x.dims5()?;
        let (p, d) = (self.cfg.patch_size, self.cfg.inner_dim());
        let (h, w) = (height / p, width / p);
        let l = h * w;
        let dtype = x.dtype();
        // Image-video joint clips: the frames after the first video_length are images, each with its own caption.
        let fv = if caption.rank() == 4 {
            f + 1 - caption.dim(1)?
        } else {
            f
        };
        // Every frame's patches: (B, F, L, D) → (B·F, L, D).
        let patches = self.patch_embed.forward(&x.permute((0, 2, 1, 3, 4))?)?;
        let hidden = patches
            .reshape((b * f, l, d))?
            .broadcast_add(&self.pos_embed_2d(h, w, dtype, x.device())?)?;

        // One timestep per clip, t (B,); or one per frame, t (B, F) (diagonal denoising), when every frame's
        // spatial block and the head see their frame's own, and the temporal blocks modulate each frame of a
        // sequence with it.
        let per_frame = t.rank() == 2;
        if per_frame && (t.dim(1)? != f || fv != f) {
            candle_core::bail!(
                "one timestep per frame needs {f} timesteps and no image frames, got {:?}",
                t.dims()
            );
        }
        let emb = self.timestep_embedder.forward(&t.flatten_all()?)?; // (B, D) or (B·F, D)
        let modulation = self.adaln_linear.forward(&emb.silu()?)?; // (B, 6D) or (B·F, 6D)
        let projected = self
            .caption_linear_2
            .forward(&gelu(&self.caption_linear_1.forward(caption)?)?)?;
        // One caption per frame: the video's over its frames, then each image's own.
        let caption = if projected.rank() == 4 {
            let (_, _, s, _) = projected.dims4()?;
            let video = projected.narrow(1, 0, 1)?.broadcast_as((b, fv, s, d))?;
            let images = projected.narrow(1, 1, f - fv)?;
            Tensor::cat(&[&video, &images], 1)?.reshape((b * f, s, d))?
        } else {
            repeat_rows(&projected, f)?
        };
        let cond = if per_frame {
            // Temporal sequences (B·L, F, D): each frame's six vectors, the same for every patch position.
            let six = modulation.dim(1)?;
            let temporal = modulation
                .reshape((b, 1, f, six))?
                .broadcast_as((b, l, f, six))?
                .reshape((b * l, f, six))?;
            vec![modulation, temporal, caption, emb.unsqueeze(1)?]
        } else {
            vec![
                repeat_rows(&modulation, f)?,
                repeat_rows(&modulation, l)?,
                caption,
                repeat_rows(&emb, f)?.unsqueeze(1)?,
            ]
        };
        let pass = Pass {
            b,
            f,
            fv,
            h,
            w,
            temporal,
        };
        Ok((hidden, pass, cond))
    }

    /// Layer `i`: its spatial block, then (when the pass runs them) its temporal block over the video frames.
    /// `cond` is [spatial modulation, temporal modulation, per-frame caption, final embedding]; the attentions
    /// go through `hook` when given.
    fn layer(
        &self,
        i: usize,
        hidden: &Tensor,
        pass: &Pass,
        cond: &[Tensor],
        grad: bool,
        hook: Option<&dyn AttentionHook>,
    ) -> Result<Tensor> {
        let d = self.cfg.inner_dim();
        let (b, f, fv, l) = (pass.b, pass.f, pass.fv, pass.h * pass.w);
        let spatial = AttentionSite::new(AttentionKind::Spatial, i);
        let hidden = self.spatial_blocks[i].forward(hidden, &cond[0], Some(&cond[2]), grad, spatial, hook)?;
        if !pass.temporal {
            return Ok(hidden);
        }
        // (B·F, L, D) → (B·L, F, D)
        let frames = hidden
            .reshape((b, f, l, d))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * l, f, d))?;
        let (mut video, images) = if fv < f {
            (frames.narrow(1, 0, fv)?, Some(frames.narrow(1, fv, f - fv)?))
        } else {
            (frames, None)
        };
        if i == 0 && fv > 1 {
            video = video.broadcast_add(&self.temp_pos.to_dtype(hidden.dtype())?)?;
        }
        let temporal = AttentionSite::new(AttentionKind::Temporal, i);
        let mut frames = self.temporal_blocks[i].forward(&video.contiguous()?, &cond[1], None, grad, temporal, hook)?;
        if let Some(images) = images {
            frames = Tensor::cat(&[&frames, &images], 1)?;
        }
        frames
            .reshape((b, l, f, d))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * f, l, d))
    }

    /// The final norm, modulation and projection, unpatchified to (B, out_channels, F, H, W).
    fn head(&self, hidden: &Tensor, pass: &Pass, cond: &[Tensor], grad: bool) -> Result<Tensor> {
        let (p, b, f, h, w) = (self.cfg.patch_size, pass.b, pass.f, pass.h, pass.w);
        let table = self.scale_shift_table.unsqueeze(0)?;
        let shift = table.narrow(1, 0, 1)?.broadcast_add(&cond[3])?;
        let scale = table.narrow(1, 1, 1)?.broadcast_add(&cond[3])?;
        let hidden = LayerNorm::plain(1e-6).modulated(hidden, &shift, &scale, grad)?;
        let out = self.proj_out.forward(&hidden)?; // (B·F, L, p·p·c_out)
        let c_out = self.cfg.out_channels();
        let out = out
            .reshape((b * f, h, w, p, p, c_out))?
            .permute((0, 5, 1, 3, 2, 4))?
            .contiguous()?;
        out.reshape((b, f, c_out, h * p, w * p))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }

    /// x: (B, C, F, H, W) latents; t: (B,) timesteps; caption: (B, S, caption_channels) T5 features, or for
    /// image-video joint clips (B, 1 + n, S, caption_channels): the video's caption, then one per image frame
    /// (the last n frames); `temporal`: run the temporal blocks (over the video frames). Returns (B,
    /// out_channels, F, H, W).
    pub fn forward(&self, x: &Tensor, t: &Tensor, caption: &Tensor, temporal: bool, grad: bool) -> Result<Tensor> {
        let (hidden, pass, cond) = self.embed(x, t, caption, temporal)?;
        let (hidden, _) = self.run_blocks(&hidden, &pass, &cond, grad, None)?;
        self.head(&hidden, &pass, &cond, grad)
    }

    /// The forward pass without gradients split into its stages (see [`crate::model::StagedPass`]).
    pub fn staged(&self, x: &Tensor, t: &Tensor, caption: &Tensor, temporal: bool) -> Result<T2VStages<'_>> {
        let (hidden, pass, cond) = self.embed(x, t, caption, temporal)?;
        Ok(T2VStages {
            network: self,
            hidden,
            pass,
            cond,
        })
    }

    /// Every layer on `hidden`, the attentions through `hook` when given: the stack's output and the number of
    /// blocks (spatial and temporal) that ran.
    fn run_blocks(
        &self,
        hidden: &Tensor,
        pass: &Pass,
        cond: &[Tensor],
        grad: bool,
        hook: Option<&dyn AttentionHook>,
    ) -> Result<(Tensor, usize)> {
        let mut hidden = hidden.clone();
        let mut ran = 0;
        for i in 0..self.spatial_blocks.len() {
            hidden = self.layer(i, &hidden, pass, cond, grad, hook)?;
            ran += self.blocks_per_layer(pass);
            if !grad {
                // Inference keeps no graph: each layer's activations go as the next one starts.
                hidden = hidden.detach();
            }
        }
        Ok((hidden, ran))
    }

    /// Blocks one layer runs: its spatial block, and its temporal block when the pass runs those.
    fn blocks_per_layer(&self, pass: &Pass) -> usize {
        1 + usize::from(pass.temporal)
    }

    /// [`LatteT2V::forward`]'s loss `loss_fn(out)` and the gradients of `params`, with activation checkpointing
    /// (one layer, spatial and temporal block, per stage).
    pub fn loss_and_grads_checkpointed(
        &self,
        x: &Tensor,
        t: &Tensor,
        caption: &Tensor,
        temporal: bool,
        params: &[Tensor],
        loss_fn: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Vec<Option<Tensor>>)> {
        let (h0, pass, cond) = self.embed(x, t, caption, temporal)?;
        checkpointed_backprop(
            params,
            &h0,
            &cond,
            self.spatial_blocks.len(),
            &|i, h, cond| self.layer(i, h, &pass, cond, true, None),
            &|h, cond| self.head(h, &pass, cond, true),
            loss_fn,
        )
    }
}

/// One pass of [`LatteT2V`] split into embeddings, block stack and final layer.
pub struct T2VStages<'a> {
    network: &'a LatteT2V,
    hidden: Tensor,
    pass: Pass,
    cond: Vec<Tensor>,
}

impl crate::model::StagedPass for T2VStages<'_> {
    fn hidden(&self) -> &Tensor {
        &self.hidden
    }

    fn first_block_input(&self) -> crate::Result<Tensor> {
        let first = self
            .network
            .spatial_blocks
            .first()
            .ok_or_else(|| crate::LatteError::Value("the transformer has no blocks".into()))?;
        Ok(first.modulated_input(&self.hidden, &self.cond[0])?)
    }

    fn num_blocks(&self) -> usize {
        self.network.spatial_blocks.len() * self.network.blocks_per_layer(&self.pass)
    }

    fn attention_sites(&self) -> [usize; 3] {
        let layers = self.network.spatial_blocks.len();
        let cross = self.network.cfg.cross_attention_dim.is_some();
        [
            layers,
            layers * usize::from(self.pass.temporal),
            layers * usize::from(cross),
        ]
    }

    fn blocks(&self, hidden: &Tensor, hook: Option<&dyn AttentionHook>) -> crate::Result<(Tensor, usize)> {
        Ok(self.network.run_blocks(hidden, &self.pass, &self.cond, false, hook)?)
    }

    fn head(&self, hidden: &Tensor) -> crate::Result<Tensor> {
        Ok(self.network.head(hidden, &self.pass, &self.cond, false)?)
    }
}

/// The geometry of one pass: batch, frames (video frames first, then images), the patch grid, and whether the
/// temporal blocks run.
struct Pass {
    b: usize,
    f: usize,
    fv: usize,
    h: usize,
    w: usize,
    temporal: bool,
}
