//! Transformer blocks for every variant, with adaLN-Zero or token conditioning.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::{Injection, LatteConfig};
use crate::model::attention_hook::{attend, AttentionHook, AttentionKind, AttentionSite};
use crate::nn::attention::attend_heads;
use crate::nn::modulation::gated_add;
use crate::nn::{Attention, AttentionKernel, LayerNorm, Linear, Mlp, Rope};

const LN_EPS: f64 = 1e-6;

/// The attention hook of one pass and the block's number (which numbers its attention sites), or None.
pub type Hook<'a> = Option<(&'a dyn AttentionHook, usize)>;

/// `compute()` at the site of kind `kind` of the block `hook` numbers, through its hook.
fn hooked(hook: Hook, kind: AttentionKind, compute: impl FnMut() -> Result<Tensor>) -> Result<Tensor> {
    match hook {
        Some((h, block)) => attend(Some(h), AttentionSite::new(kind, block), compute),
        None => attend(None, AttentionSite::new(kind, 0), compute),
    }
}

/// The conditioning one attention stage sees, shaped to broadcast over its (B, S, L, D) sequences.
#[derive(Clone, Copy, Debug)]
pub enum Cond<'a> {
    /// adaLN: the vector t + y per sequence, (B, S or 1, 1, D).
    Adaln(&'a Tensor),
    /// Token injection: K conditioning tokens per sequence, (B, S or 1, K, D).
    Tokens(&'a Tensor),
}

/// adaLN-Zero's regression of shift/scale/gate vectors: SiLU, then a linear to `chunks` × D.
#[derive(Clone, Debug)]
struct Modulation {
    linear: Linear,
    chunks: usize,
}

impl Modulation {
    fn new(hidden: usize, chunks: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear: Linear::new(hidden, chunks * hidden, true, vb.pp("adaLN_modulation").pp("1"))?,
            chunks,
        })
    }

    fn forward(&self, c: &Tensor) -> Result<Vec<Tensor>> {
        self.linear
            .forward(&c.silu()?)?
            .chunk(self.chunks, candle_core::D::Minus1)
    }
}

fn norm(cfg: &LatteConfig, vb: VarBuilder) -> Result<LayerNorm> {
    match cfg.injection {
        Injection::Adaln => Ok(LayerNorm::plain(LN_EPS)),
        Injection::Tokens => LayerNorm::affine(cfg.hidden_size, LN_EPS, vb),
    }
}

fn modulation(cfg: &LatteConfig, chunks: usize, vb: VarBuilder) -> Result<Option<Modulation>> {
    match cfg.injection {
        Injection::Adaln => Ok(Some(Modulation::new(cfg.hidden_size, chunks, vb)?)),
        Injection::Tokens => Ok(None),
    }
}

fn mlp(cfg: &LatteConfig, vb: VarBuilder) -> Result<Mlp> {
    Mlp::new(cfg.hidden_size, cfg.mlp_hidden(), vb.pp("mlp"))
}

fn attention(cfg: &LatteConfig, vb: VarBuilder) -> Result<Attention> {
    let kernel = AttentionKernel::from_config(cfg.attention, cfg.attention_chunk_size);
    Attention::new(cfg.hidden_size, cfg.num_heads, kernel, vb)
}

/// Shift, scale and gate of one sub-layer, or none with token injection.
type Mods<'a> = Option<&'a [Tensor]>;

/// `x + gate · f(modulate(norm(x), shift, scale))`: a residual sub-layer, adaLN-modulated when `mods` is given.
fn residual(
    x: &Tensor,
    norm: &LayerNorm,
    mods: Mods,
    grad: bool,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    match mods {
        Some(m) => gated_add(x, &f(&norm.modulated(x, &m[0], &m[1], grad)?)?, &m[2], grad),
        None => x + f(&norm.forward(x, grad)?)?,
    }
}

/// The modulation vectors for `cond` (adaLN) or `None` (tokens), checking the block was built for it.
fn mods_for(ada: &Option<Modulation>, cond: Cond) -> Result<Option<Vec<Tensor>>> {
    match (ada, cond) {
        (Some(m), Cond::Adaln(c)) => Ok(Some(m.forward(c)?)),
        (None, Cond::Tokens(_)) => Ok(None),
        _ => candle_core::bail!("conditioning does not match the block's injection mode"),
    }
}

/// The input of a block's first attention: `modulate(norm(x), shift, scale)` with the first sub-layer's adaLN
/// vectors, or `norm(x)` with token injection (what TeaCache watches).
fn first_modulated(x: &Tensor, norm: &LayerNorm, ada: &Option<Modulation>, cond: Cond) -> Result<Tensor> {
    match mods_for(ada, cond)? {
        Some(m) => norm.modulated(x, &m[0], &m[1], false),
        None => norm.forward(x, false),
    }
}

/// The conditioning tokens of `cond` after `norm` (token injection only).
fn extra_tokens(cond: Cond, norm: &LayerNorm, grad: bool) -> Result<Option<Tensor>> {
    match cond {
        Cond::Tokens(e) => Ok(Some(norm.forward(e, grad)?)),
        Cond::Adaln(_) => Ok(None),
    }
}

/// A Latte transformer block: self-attention within each sequence, then the MLP. Spatial or temporal is only a
/// matter of which tokens form the sequences (variants 1 and 2).
#[derive(Clone, Debug)]
pub struct TransformerBlock {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    ada: Option<Modulation>,
}

impl TransformerBlock {
    /// The modulated input of the block's first attention (see [`first_modulated`]).
    pub fn modulated_input(&self, x: &Tensor, cond: Cond) -> Result<Tensor> {
        first_modulated(x, &self.norm1, &self.ada, cond)
    }

    pub fn new(cfg: &LatteConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: norm(cfg, vb.pp("norm1"))?,
            attn: attention(cfg, vb.pp("attn"))?,
            norm2: norm(cfg, vb.pp("norm2"))?,
            mlp: mlp(cfg, vb.clone())?,
            ada: modulation(cfg, 6, vb)?,
        })
    }

    /// x: (B, S, L, D) sequences; the attention is of kind `kind` at `hook`'s site.
    pub fn forward(
        &self,
        x: &Tensor,
        cond: Cond,
        rope: Option<&Rope>,
        grad: bool,
        kind: AttentionKind,
        hook: Hook,
    ) -> Result<Tensor> {
        let mods = mods_for(&self.ada, cond)?;
        let extra = extra_tokens(cond, &self.norm1, grad)?;
        let x = residual(x, &self.norm1, mods.as_deref().map(|m| &m[0..3]), grad, |h| {
            hooked(hook, kind, || self.attn.forward(h, extra.as_ref(), rope, grad))
        })?;
        residual(&x, &self.norm2, mods.as_deref().map(|m| &m[3..6]), grad, |h| {
            self.mlp.forward(h)
        })
    }
}

/// Variant 3: spatial attention, temporal attention and the MLP in one block, with one adaLN regression of 9
/// vectors (spatial ones from the per-frame conditioning, temporal ones from the per-clip conditioning).
#[derive(Clone, Debug)]
pub struct FactorisedBlock {
    norm1: LayerNorm,
    attn: Attention,
    norm_temp: LayerNorm,
    attn_temp: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    ada: Option<Modulation>,
}

impl FactorisedBlock {
    /// The modulated input of the block's first attention (see [`first_modulated`]).
    pub fn modulated_input(&self, x: &Tensor, cond: Cond) -> Result<Tensor> {
        first_modulated(x, &self.norm1, &self.ada, cond)
    }

    pub fn new(cfg: &LatteConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: norm(cfg, vb.pp("norm1"))?,
            attn: attention(cfg, vb.pp("attn"))?,
            norm_temp: norm(cfg, vb.pp("norm_temp"))?,
            attn_temp: attention(cfg, vb.pp("attn_temp"))?,
            norm2: norm(cfg, vb.pp("norm2"))?,
            mlp: mlp(cfg, vb.clone())?,
            ada: modulation(cfg, 9, vb)?,
        })
    }

    /// Spatial attention on `x` (B, F, N, D). Returns the new `x`.
    pub fn spatial(&self, x: &Tensor, cond: Cond, grad: bool, hook: Hook) -> Result<Tensor> {
        let mods = mods_for(&self.ada, cond)?;
        let extra = extra_tokens(cond, &self.norm1, grad)?;
        residual(x, &self.norm1, mods.as_deref().map(|m| &m[0..3]), grad, |h| {
            hooked(hook, AttentionKind::Spatial, || {
                self.attn.forward(h, extra.as_ref(), None, grad)
            })
        })
    }

    /// Temporal attention on the video part in temporal layout (B, N, Fv, D).
    pub fn temporal(&self, x: &Tensor, cond: Cond, rope: Option<&Rope>, grad: bool, hook: Hook) -> Result<Tensor> {
        let mods = mods_for(&self.ada, cond)?;
        let extra = extra_tokens(cond, &self.norm_temp, grad)?;
        residual(x, &self.norm_temp, mods.as_deref().map(|m| &m[3..6]), grad, |h| {
            hooked(hook, AttentionKind::Temporal, || {
                self.attn_temp.forward(h, extra.as_ref(), rope, grad)
            })
        })
    }

    /// The MLP on `x` (B, F, N, D), modulated by the per-frame conditioning.
    pub fn feed_forward(&self, x: &Tensor, cond: Cond, grad: bool) -> Result<Tensor> {
        let mods = mods_for(&self.ada, cond)?;
        residual(x, &self.norm2, mods.as_deref().map(|m| &m[6..9]), grad, |h| {
            self.mlp.forward(h)
        })
    }
}

/// Variant 4: one multi-head attention whose first half of heads attends over space (within a frame) and second
/// half over time (across the video frames at one position); the head outputs are concatenated into the token
/// layout, so the output projection sums the two halves' contributions.
#[derive(Clone, Debug)]
pub struct SplitHeadBlock {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    ada: Option<Modulation>,
}

impl SplitHeadBlock {
    /// The modulated input of the block's first attention (see [`first_modulated`]).
    pub fn modulated_input(&self, x: &Tensor, cond: Cond) -> Result<Tensor> {
        first_modulated(x, &self.norm1, &self.ada, cond)
    }

    pub fn new(cfg: &LatteConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: norm(cfg, vb.pp("norm1"))?,
            attn: attention(cfg, vb.pp("attn"))?,
            norm2: norm(cfg, vb.pp("norm2"))?,
            mlp: mlp(cfg, vb.clone())?,
            ada: modulation(cfg, 6, vb)?,
        })
    }

    /// x: (B, F, N, D) with the first `video_frames` frames mixed in time. `spatial` conditions the block;
    /// with token injection, `temporal` holds the tokens the temporal heads see. With a hook, the spatial and
    /// the temporal heads' outputs (before the shared output projection) are its two sites.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        spatial: Cond,
        temporal: Cond,
        video_frames: usize,
        rope: Option<&Rope>,
        grad: bool,
        hook: Hook,
    ) -> Result<Tensor> {
        let mods = mods_for(&self.ada, spatial)?;
        let extra_s = extra_tokens(spatial, &self.norm1, grad)?;
        let extra_t = extra_tokens(temporal, &self.norm1, grad)?;
        let x = residual(x, &self.norm1, mods.as_deref().map(|m| &m[0..3]), grad, |h| {
            self.split_head_attention(h, extra_s.as_ref(), extra_t.as_ref(), video_frames, rope, grad, hook)
        })?;
        residual(&x, &self.norm2, mods.as_deref().map(|m| &m[3..6]), grad, |h| {
            self.mlp.forward(h)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn split_head_attention(
        &self,
        h: &Tensor,
        extra_s: Option<&Tensor>,
        extra_t: Option<&Tensor>,
        fv: usize,
        rope: Option<&Rope>,
        grad: bool,
        hook: Hook,
    ) -> Result<Tensor> {
        let (b, f, n, d) = h.dims4()?;
        let heads = self.attn.num_heads();
        let (half, hd) = (heads / 2, d / heads);
        let kernel = self.attn.kernel();
        // The projection serves both halves; made on first use, so that a hook reusing both skips it too.
        let projected = std::cell::RefCell::new(None::<Tensor>);
        let qkv = || -> Result<Tensor> {
            let mut slot = projected.borrow_mut();
            if slot.is_none() {
                *slot = Some(self.attn.project_qkv(h)?); // (B, F, N, 3, H, hd)
            }
            slot.clone()
                .ok_or_else(|| candle_core::Error::Msg("qkv projection missing".into()))
        };
        let heads_of = |t: &Tensor, start: usize| t.narrow(4, start, half);
        let project_extra = |e: Option<&Tensor>, start: usize| -> Result<Option<Tensor>> {
            e.map(|e| heads_of(&self.attn.project_qkv(e)?, start)).transpose()
        };

        // Spatial heads: sequences of N tokens within each frame.
        let out_s = hooked(hook, AttentionKind::Spatial, || {
            let spatial = heads_of(&qkv()?, 0)?.reshape((b * f, n, 3, half, hd))?;
            let out_s = attend_heads(
                &spatial,
                project_extra(extra_s, 0)?.as_ref(),
                (b, f),
                None,
                kernel,
                grad,
            )?;
            out_s.reshape((b, f, n, half * hd))
        })?;

        // Temporal heads: sequences of the video frames at each position.
        let out_t = hooked(hook, AttentionKind::Temporal, || {
            let temporal = heads_of(&qkv()?, half)?;
            let video = temporal
                .narrow(1, 0, fv)?
                .transpose(1, 2)?
                .reshape((b * n, fv, 3, half, hd))?;
            let out_t = attend_heads(
                &video,
                project_extra(extra_t, half)?.as_ref(),
                (b, n),
                rope,
                kernel,
                grad,
            )?;
            let out_t = out_t.reshape((b, n, fv, half * hd))?.transpose(1, 2)?;
            if f > fv {
                // Image frames have no time axis: their temporal heads attend to themselves alone, giving their
                // value.
                let images = temporal
                    .narrow(1, fv, f - fv)?
                    .narrow(3, 2, 1)?
                    .reshape((b, f - fv, n, half * hd))?;
                Tensor::cat(&[&out_t, &images], 1)
            } else {
                Ok(out_t)
            }
        })?;
        self.attn.project_out(&Tensor::cat(&[&out_s, &out_t], 3)?)
    }
}

/// The final layer: norm, (adaLN modulation,) linear to p·p·s·C_out values per token.
#[derive(Clone, Debug)]
pub struct FinalLayer {
    norm_final: LayerNorm,
    linear: Linear,
    ada: Option<Modulation>,
}

impl FinalLayer {
    pub fn new(cfg: &LatteConfig, vb: VarBuilder) -> Result<Self> {
        let p = cfg.patch_size;
        let out = p * p * cfg.temporal_patch() * cfg.out_channels();
        Ok(Self {
            norm_final: norm(cfg, vb.pp("norm_final"))?,
            linear: Linear::new(cfg.hidden_size, out, true, vb.pp("linear"))?,
            ada: modulation(cfg, 2, vb)?,
        })
    }

    pub fn forward(&self, x: &Tensor, cond: Cond, grad: bool) -> Result<Tensor> {
        let h = match mods_for(&self.ada, cond)? {
            Some(m) => self.norm_final.modulated(x, &m[0], &m[1], grad)?,
            None => self.norm_final.forward(x, grad)?,
        };
        self.linear.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PatchEmbed, Variant};
    use crate::rng::Generator;
    use candle_core::{DType, Device, D};
    use candle_nn::VarMap;

    fn randn(rng: &mut Generator, dims: &[usize]) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_vec(rng.normal(n, 0.0, 1.0), dims, &Device::Cpu).unwrap()
    }

    /// Plain single-head attention of x (L, D) with weights (hd, D) and biases (hd,): softmax(QKᵀ/√hd)V.
    fn one_head(x: &Tensor, w: [&Tensor; 3], b: [&Tensor; 3]) -> Tensor {
        let p = |i: usize| x.matmul(&w[i].t().unwrap()).unwrap().broadcast_add(b[i]).unwrap();
        let (q, k, v) = (p(0), p(1), p(2));
        let hd = q.dim(1).unwrap() as f64;
        let s = (q.matmul(&k.t().unwrap()).unwrap() / hd.sqrt()).unwrap();
        candle_nn::ops::softmax(&s, D::Minus1).unwrap().matmul(&v).unwrap()
    }

    /// Variant 4's split-head attention equals a spatial attention over the first half of the heads plus a
    /// temporal attention over the second half, each through its slice of the output projection.
    #[test]
    fn split_heads_equal_separate_spatial_and_temporal_attentions_on_half_the_heads() {
        let cfg = LatteConfig {
            depth: 2,
            hidden_size: 16,
            num_heads: 4,
            variant: Variant::V4,
            patch_embed: PatchEmbed::Frame,
            ..LatteConfig::default()
        };
        let varmap = VarMap::new();
        let block = SplitHeadBlock::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu)).unwrap();
        let mut rng = Generator::new(11);
        for var in varmap.all_vars() {
            var.set(&(randn(&mut rng, var.dims()) * 0.3).unwrap()).unwrap();
        }
        let get = |n: &str| varmap.data().lock().unwrap()[n].as_tensor().clone();
        let (qkv_w, qkv_b) = (get("attn.qkv.weight"), get("attn.qkv.bias"));
        let (proj_w, proj_b) = (get("attn.proj.weight"), get("attn.proj.bias"));

        let (b, f, fv, n, d, heads) = (2, 5, 3, 4, 16, 4);
        let hd = d / heads;
        let h = randn(&mut rng, &[b, f, n, d]);
        let out = block
            .split_head_attention(&h, None, None, fv, None, false, None)
            .unwrap();

        // Weights of head j: rows of q, k, v in the qkv projection; its columns of the output projection.
        let head_w = |j: usize| -> [Tensor; 3] { [0, 1, 2].map(|p| qkv_w.narrow(0, p * d + j * hd, hd).unwrap()) };
        let head_b = |j: usize| -> [Tensor; 3] { [0, 1, 2].map(|p| qkv_b.narrow(0, p * d + j * hd, hd).unwrap()) };
        let proj_cols = |j: usize| proj_w.narrow(1, j * hd, hd).unwrap();
        let mut expected = proj_b.broadcast_as((b, f, n, d)).unwrap().to_dense();
        for bi in 0..b {
            for j in 0..heads {
                let (w, bias) = (head_w(j), head_b(j));
                let wr = [&w[0], &w[1], &w[2]];
                let br = [&bias[0], &bias[1], &bias[2]];
                if j < heads / 2 {
                    for fi in 0..f {
                        let x = h.get(bi).unwrap().get(fi).unwrap(); // (N, D)
                        let o = one_head(&x, wr, br).matmul(&proj_cols(j).t().unwrap()).unwrap();
                        expected.add(bi, Frames::One(fi), &o);
                    }
                } else {
                    for ni in 0..n {
                        let x = h
                            .get(bi)
                            .unwrap()
                            .narrow(0, 0, fv)
                            .unwrap()
                            .narrow(1, ni, 1)
                            .unwrap()
                            .squeeze(1)
                            .unwrap();
                        let o = one_head(&x, wr, br).matmul(&proj_cols(j).t().unwrap()).unwrap(); // (fv, D)
                        expected.add(bi, Frames::Position(ni), &o);
                        for fi in fv..f {
                            // An image frame attends to itself alone: its value.
                            let xi = h.get(bi).unwrap().get(fi).unwrap().narrow(0, ni, 1).unwrap();
                            let v = xi.matmul(&w[2].t().unwrap()).unwrap().broadcast_add(&bias[2]).unwrap();
                            let o = v.matmul(&proj_cols(j).t().unwrap()).unwrap(); // (1, D)
                            expected.add_token(bi, fi, ni, &o);
                        }
                    }
                }
            }
        }
        let got = out.to_dense();
        let max_err = got
            .0
            .iter()
            .zip(&expected.0)
            .fold(0f64, |m, (a, e)| m.max((a - e).abs()));
        assert!(
            max_err < 1e-10,
            "split-head attention differs from separate attentions by {max_err}"
        );
    }

    /// A dense (B, F, N, D) accumulator for the reference computation.
    struct Dense(Vec<f64>, [usize; 4]);
    enum Frames {
        One(usize),
        Position(usize),
    }
    trait ToDense {
        fn to_dense(&self) -> Dense;
    }
    impl ToDense for Tensor {
        fn to_dense(&self) -> Dense {
            let d = self.dims4().unwrap();
            Dense(
                self.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                [d.0, d.1, d.2, d.3],
            )
        }
    }
    impl Dense {
        fn idx(&self, b: usize, f: usize, n: usize, c: usize) -> usize {
            let [_, fs, ns, ds] = self.1;
            ((b * fs + f) * ns + n) * ds + c
        }
        /// Adds o: (N, D) to frame f (`One`) or (Fv, D) to position n across the first frames (`Position`).
        fn add(&mut self, b: usize, at: Frames, o: &Tensor) {
            let rows = o.to_vec2::<f64>().unwrap();
            for (r, row) in rows.iter().enumerate() {
                let (f, n) = match at {
                    Frames::One(f) => (f, r),
                    Frames::Position(n) => (r, n),
                };
                for (c, v) in row.iter().enumerate() {
                    let i = self.idx(b, f, n, c);
                    self.0[i] += v;
                }
            }
        }
        fn add_token(&mut self, b: usize, f: usize, n: usize, o: &Tensor) {
            let row = o.squeeze(0).unwrap().to_vec1::<f64>().unwrap();
            for (c, v) in row.iter().enumerate() {
                let i = self.idx(b, f, n, c);
                self.0[i] += v;
            }
        }
    }
}
