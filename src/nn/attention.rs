//! Multi-head attention (timm's layout: one `qkv` linear, one `proj`) with interchangeable kernels.

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

use super::{fused_attention, Linear, Rope};
use crate::config::AttentionBackend;

/// The kernel that computes softmax(QKᵀ/√d)V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    Math,
    /// Queries in chunks of this many, so the score matrix never exceeds chunk × keys.
    Chunked(usize),
    Flash,
}

impl AttentionKernel {
    pub fn from_config(backend: AttentionBackend, chunk: usize) -> Self {
        match backend {
            AttentionBackend::Math => Self::Math,
            AttentionBackend::Chunked => Self::Chunked(chunk),
            AttentionBackend::Flash => Self::Flash,
        }
    }
}

/// q, k, v: (G, heads, L, head_dim), any strides with a contiguous last dimension. Returns the heads merged:
/// (G, Lq, heads, head_dim).
pub fn scaled_dot_product(q: &Tensor, k: &Tensor, v: &Tensor, kernel: AttentionKernel, grad: bool) -> Result<Tensor> {
    let scale = (q.dim(D::Minus1)? as f64).powf(-0.5);
    if kernel != AttentionKernel::Flash && fused_attention::applicable(q) {
        return fused_attention::fused_attention(q, k, v, scale, grad);
    }
    let (q, k, v) = (&q.contiguous()?, &k.contiguous()?, &v.contiguous()?);
    let out = match kernel {
        AttentionKernel::Math => sdpa_math(q, k, v, scale, grad)?,
        AttentionKernel::Chunked(chunk) => {
            let len = q.dim(2)?;
            let parts = (0..len)
                .step_by(chunk)
                .map(|start| sdpa_math(&q.narrow(2, start, chunk.min(len - start))?, k, v, scale, grad))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&parts, 2)?
        }
        AttentionKernel::Flash => sdpa_flash(q, k, v, scale, grad)?,
    };
    out.transpose(1, 2)
}

fn sdpa_math(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, grad: bool) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let probs = if grad {
        super::rowwise::softmax_last_dim(&scores)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    probs.matmul(v)
}

#[cfg(feature = "flash-attn")]
fn sdpa_flash(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, grad: bool) -> Result<Tensor> {
    if grad {
        candle_core::bail!("attention = \"flash\" is forward-only (FlashAttention-2 has no backward in candle); train with \"math\" or \"chunked\"");
    }
    // candle-flash-attn wants (batch, seq, heads, head_dim) in f16/bf16.
    let dtype = q.dtype();
    let half = if dtype == candle_core::DType::BF16 {
        dtype
    } else {
        candle_core::DType::F16
    };
    let prep = |t: &Tensor| t.transpose(1, 2)?.contiguous()?.to_dtype(half);
    let out = candle_flash_attn::flash_attn(&prep(q)?, &prep(k)?, &prep(v)?, scale as f32, false)?;
    out.transpose(1, 2)?.contiguous()?.to_dtype(dtype)
}

#[cfg(not(feature = "flash-attn"))]
fn sdpa_flash(_q: &Tensor, _k: &Tensor, _v: &Tensor, _scale: f64, _grad: bool) -> Result<Tensor> {
    candle_core::bail!(
        "attention = \"flash\" needs latte-rs built with the `flash-attn` feature; rebuild with \
         `maturin develop --release --features flash-attn`"
    )
}

/// Splits a (G, L, 3, heads, head_dim) projection into q, k, v of shape (G, heads, L, head_dim).
pub fn unbind_qkv(qkv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2);
    Ok((part(0)?, part(1)?, part(2)?))
}

/// Multi-head self-attention. Sequences come as (B, S, L, D): S sequences of L tokens per batch element.
#[derive(Clone, Debug)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    kernel: AttentionKernel,
}

impl Attention {
    pub fn new(dim: usize, num_heads: usize, kernel: AttentionKernel, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            qkv: Linear::new(dim, 3 * dim, true, vb.pp("qkv"))?,
            proj: Linear::new(dim, dim, true, vb.pp("proj"))?,
            num_heads,
            kernel,
        })
    }

    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    pub fn kernel(&self) -> AttentionKernel {
        self.kernel
    }

    /// The qkv projection split into heads: (..., L, D) → (..., L, 3, heads, head_dim).
    pub fn project_qkv(&self, x: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let mut dims = x.dims().to_vec();
        let dim = dims.pop().unwrap_or(0);
        dims.extend([3, self.num_heads, dim / self.num_heads]);
        qkv.reshape(dims)
    }

    /// The output projection.
    pub fn project_out(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(x)
    }

    /// Self-attention within each of the S sequences of `x` (B, S, L, D). `extra` (B, S or 1, K, D) are
    /// conditioning tokens that join every sequence as keys and values only (their own outputs would be
    /// discarded, so their queries are never computed). `rope` rotates the queries and keys of `x` by position.
    pub fn forward(&self, x: &Tensor, extra: Option<&Tensor>, rope: Option<&Rope>, grad: bool) -> Result<Tensor> {
        let (b, s, l, d) = x.dims4()?;
        let qkv = self
            .project_qkv(x)?
            .reshape((b * s, l, 3, self.num_heads, d / self.num_heads))?;
        let extra_qkv = match extra {
            Some(e) => Some(self.project_qkv(e)?),
            None => None,
        };
        let out = attend_heads(&qkv, extra_qkv.as_ref(), (b, s), rope, self.kernel, grad)?;
        let out = out.reshape((b, s, l, d))?; // (B·S, L, heads, hd) → (B, S, L, D)
        self.proj.forward(&out)
    }
}

/// Attention of a (B·S, L, 3, h, hd) projection, with optional extra keys/values from a
/// (B, S or 1, K, 3, h, hd) projection of conditioning tokens. Returns (B·S, L, h, hd).
pub fn attend_heads(
    qkv: &Tensor,
    extra_qkv: Option<&Tensor>,
    (b, s): (usize, usize),
    rope: Option<&Rope>,
    kernel: AttentionKernel,
    grad: bool,
) -> Result<Tensor> {
    if rope.is_none() && extra_qkv.is_none() && kernel != AttentionKernel::Flash && fused_attention::applicable(qkv) {
        let scale = (qkv.dim(D::Minus1)? as f64).powf(-0.5);
        return fused_attention::fused_qkv_attention(qkv, scale, grad);
    }
    let (q, k, v) = unbind_qkv(qkv)?;
    let (q, k) = match rope {
        Some(r) => (r.apply(&q)?, r.apply(&k)?),
        None => (q, k),
    };
    let (k, v) = match extra_qkv {
        Some(e) => {
            let &[_, _, kx, three, h, hd] = e.dims() else {
                candle_core::bail!("extra qkv must have rank 6, got {:?}", e.dims())
            };
            let e = e
                .broadcast_as(vec![b, s, kx, three, h, hd])?
                .reshape((b * s, kx, three, h, hd))?;
            let (_, ek, ev) = unbind_qkv(&e)?;
            (Tensor::cat(&[&k, &ek], 2)?, Tensor::cat(&[&v, &ev], 2)?)
        }
        None => (k, v),
    };
    scaled_dot_product(&q, &k, &v, kernel, grad)
}
