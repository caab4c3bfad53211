//! The layers of the text-to-video transformer that are diffusers' own: its attention (separate `to_q`, `to_k`,
//! `to_v`), its feed-forward with the GELU variants, and `BasicTransformerBlock` with adaLN-single.

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::LatteT2VConfig;
use crate::model::attention_hook::{attend, AttentionHook, AttentionKind, AttentionSite};
use crate::nn::attention::{scaled_dot_product, AttentionKernel};
use crate::nn::modulation::gated_add;
use crate::nn::{gelu::gelu, LayerNorm, Linear};

/// diffusers' `Attention` (to_q, to_k, to_v, to_out.0), self- or cross-attention.
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn new(cfg: &LatteT2VConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.inner_dim();
        let bias = cfg.attention_bias;
        Ok(Self {
            to_q: Linear::new(d, d, bias, vb.pp("to_q"))?,
            to_k: Linear::new(d, d, bias, vb.pp("to_k"))?,
            to_v: Linear::new(d, d, bias, vb.pp("to_v"))?,
            to_out: Linear::new(d, d, true, vb.pp("to_out").pp("0"))?,
            heads: cfg.num_attention_heads,
        })
    }

    /// x: (G, Lq, D) queries; `context` (G, Lk, D) keys and values (None: self-attention).
    fn forward(&self, x: &Tensor, context: Option<&Tensor>, grad: bool) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let (groups, queries, dim) = x.dims3()?;
        let keys = context.dim(1)?;
        let head_dim = dim / self.heads;
        let split = |t: Tensor, len: usize| t.reshape((groups, len, self.heads, head_dim))?.transpose(1, 2);
        let q = split(self.to_q.forward(x)?, queries)?;
        let k = split(self.to_k.forward(context)?, keys)?;
        let v = split(self.to_v.forward(context)?, keys)?;
        let out = scaled_dot_product(&q, &k, &v, AttentionKernel::Auto, grad)?
            .contiguous()?
            .reshape((groups, queries, dim))?;
        self.to_out.forward(&out)
    }
}

/// The feed-forward's activation (`activation_fn`).
#[derive(Clone, Copy)]
enum Activation {
    /// `"gelu"`: exact GELU.
    Gelu,
    /// `"gelu-approximate"`: tanh GELU.
    GeluTanh,
    /// `"geglu"`: a gated exact GELU over a doubled projection.
    Geglu,
}

/// diffusers' `FeedForward`: `net.0` (the activation's projection), `net.2`.
struct FeedForward {
    proj: Linear,
    out: Linear,
    activation: Activation,
}

impl FeedForward {
    fn new(cfg: &LatteT2VConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.inner_dim();
        let inner = 4 * d;
        let activation = match cfg.activation_fn.as_str() {
            "gelu" => Activation::Gelu,
            "geglu" => Activation::Geglu,
            _ => Activation::GeluTanh,
        };
        let proj_out = match activation {
            Activation::Geglu => 2 * inner,
            _ => inner,
        };
        Ok(Self {
            proj: Linear::new(d, proj_out, true, vb.pp("net").pp("0").pp("proj"))?,
            out: Linear::new(inner, d, true, vb.pp("net").pp("2"))?,
            activation,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?;
        let h = match self.activation {
            Activation::Gelu => h.gelu_erf()?,
            Activation::GeluTanh => gelu(&h)?,
            Activation::Geglu => {
                let half = h.dim(D::Minus1)? / 2;
                let (hidden, gate) = (h.narrow(D::Minus1, 0, half)?, h.narrow(D::Minus1, half, half)?);
                (hidden * gate.gelu_erf()?)?
            }
        };
        self.out.forward(&h)
    }
}

/// diffusers' norms: affine or not, by `norm_elementwise_affine`.
pub(super) fn layer_norm(cfg: &LatteT2VConfig, vb: VarBuilder) -> Result<LayerNorm> {
    if cfg.norm_elementwise_affine {
        LayerNorm::affine(cfg.inner_dim(), cfg.norm_eps, vb)
    } else {
        Ok(LayerNorm::plain(cfg.norm_eps))
    }
}

/// `BasicTransformerBlock` with `norm_type="ada_norm_single"`: self-attention, cross-attention to the caption
/// (spatial blocks only), feed-forward; modulated by the shared timestep embedding plus the block's own
/// `scale_shift_table` (6, D).
pub struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    attn2: Option<Attention>,
    norm2: LayerNorm,
    ff: FeedForward,
    scale_shift_table: Tensor,
}

impl TransformerBlock {
    pub fn new(cfg: &LatteT2VConfig, cross_attention: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: layer_norm(cfg, vb.pp("norm1"))?,
            attn1: Attention::new(cfg, vb.pp("attn1"))?,
            attn2: if cross_attention {
                Some(Attention::new(cfg, vb.pp("attn2"))?)
            } else {
                None
            },
            norm2: layer_norm(cfg, vb.pp("norm2"))?,
            ff: FeedForward::new(cfg, vb.pp("ff"))?,
            scale_shift_table: vb.get((6, cfg.inner_dim()), "scale_shift_table")?,
        })
    }

    /// The block's six modulation vectors, its table plus the shared adaLN-single ones: per sequence, (G, 6, D),
    /// from `modulation` (G, 6·D); or per token, (G, L, 6, D), from `modulation` (G, L, 6·D) (one timestep per
    /// frame in a temporal sequence). [`TransformerBlock::vector`] takes the `i`-th as x broadcasts it.
    fn modulation(&self, x: &Tensor, modulation: &Tensor) -> Result<Tensor> {
        let (groups, len, dim) = x.dims3()?;
        if modulation.rank() == 3 {
            return self
                .scale_shift_table
                .reshape((1, 1, 6, dim))?
                .broadcast_add(&modulation.reshape((groups, len, 6, dim))?);
        }
        self.scale_shift_table
            .unsqueeze(0)?
            .broadcast_add(&modulation.reshape((groups, 6, dim))?)
    }

    /// The `i`-th modulation vector of [`TransformerBlock::modulation`]'s: (G, 1, D) per sequence, (G, L, D) per
    /// token.
    fn vector(mods: &Tensor, i: usize) -> Result<Tensor> {
        if mods.rank() == 4 {
            mods.narrow(2, i, 1)?.squeeze(2)
        } else {
            mods.narrow(1, i, 1)
        }
    }

    /// The self-attention's input `norm1(x) · (1 + scale_msa) + shift_msa` (what TeaCache watches).
    pub fn modulated_input(&self, x: &Tensor, modulation: &Tensor) -> Result<Tensor> {
        let mods = self.modulation(x, modulation)?;
        self.norm1
            .modulated(x, &Self::vector(&mods, 0)?, &Self::vector(&mods, 1)?, false)
    }

    /// x: (G, L, D) sequences; `modulation`: (G, 6·D) adaLN-single vectors, or (G, L, 6·D) per token;
    /// `caption`: (G, S, D) projected. `site`: the self-attention's site (the cross-attention's is the cross site
    /// of the same number), through `hook` when given.
    pub fn forward(
        &self,
        x: &Tensor,
        modulation: &Tensor,
        caption: Option<&Tensor>,
        grad: bool,
        site: AttentionSite,
        hook: Option<&dyn AttentionHook>,
    ) -> Result<Tensor> {
        let mods = self.modulation(x, modulation)?;
        let m = |i: usize| Self::vector(&mods, i);
        let (shift_msa, scale_msa, gate_msa) = (m(0)?, m(1)?, m(2)?);
        let (shift_mlp, scale_mlp, gate_mlp) = (m(3)?, m(4)?, m(5)?);
        let h = self.norm1.modulated(x, &shift_msa, &scale_msa, grad)?;
        let attn1 = attend(hook, site, || self.attn1.forward(&h, None, grad))?;
        let x = gated_add(x, &attn1, &gate_msa, grad)?;
        // PixArt: no normalisation before the cross-attention.
        let x = match (&self.attn2, caption) {
            (Some(attn), Some(caption)) => {
                let cross = AttentionSite::new(AttentionKind::Cross, site.index);
                (&x + attend(hook, cross, || attn.forward(&x, Some(caption), grad))?)?
            }
            _ => x,
        };
        let h = self.norm2.modulated(&x, &shift_mlp, &scale_mlp, grad)?;
        gated_add(&x, &self.ff.forward(&h)?, &gate_mlp, grad)
    }
}
