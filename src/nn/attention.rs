//! Multi-head attention (timm's layout: one `qkv` linear, one `proj`) with interchangeable kernels.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::{fused_attention, Linear, Rope};
use crate::config::AttentionBackend;

/// The kernel that computes softmax(QKᵀ/√d)V, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// FlashAttention-2 where it applies (see [`choose`]), else the math composition.
    Auto,
    Math,
    /// Queries in chunks of this many, so the score matrix never exceeds chunk × keys.
    Chunked(usize),
    /// FlashAttention-2 for inference; an error where it cannot run. Training uses the math composition (the
    /// flash kernel has no backward).
    Flash,
}

impl AttentionKernel {
    pub fn from_config(backend: AttentionBackend, chunk: usize) -> Self {
        match backend {
            AttentionBackend::Auto => Self::Auto,
            AttentionBackend::Math => Self::Math,
            AttentionBackend::Chunked => Self::Chunked(chunk),
            AttentionBackend::Flash => Self::Flash,
        }
    }
}

/// What decides whether FlashAttention-2 can run one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashFacts {
    /// latte-rs was built with the `flash-attn` feature.
    pub built: bool,
    /// The compute capability of the CUDA device the operands live on (major × 10 + minor); None off CUDA.
    pub compute_capability: Option<u32>,
    pub dtype: DType,
    pub head_dim: usize,
    /// Sequences × heads: the kernel's grid dimension, at most 65535.
    pub groups: usize,
    /// A backward pass will run through this call.
    pub grad: bool,
}

impl FlashFacts {
    fn of(q: &Tensor, grad: bool) -> Result<Self> {
        let (g, h, _, hd) = q.dims4()?;
        Ok(Self {
            built: cfg!(feature = "flash-attn"),
            compute_capability: compute_capability(q.device())?,
            dtype: q.dtype(),
            head_dim: hd,
            groups: g * h,
            grad,
        })
    }

    /// Why FlashAttention-2 cannot run here (None: it can).
    pub fn obstacle(&self) -> Option<String> {
        if !self.built {
            return Some(
                "latte-rs was built without the `flash-attn` feature; rebuild with `maturin develop --release \
                 --features python,flash-attn`"
                    .into(),
            );
        }
        let Some(cap) = self.compute_capability else {
            return Some("it runs on CUDA devices only; the operands are on the CPU".into());
        };
        if cap < 80 {
            return Some(format!(
                "it needs compute capability 8.0 or newer (Ampere, Hopper), got {}.{}",
                cap / 10,
                cap % 10
            ));
        }
        if !matches!(self.dtype, DType::F16 | DType::BF16) {
            return Some(format!(
                "it computes in float16/bfloat16 only, got {:?} (use dtype=\"bfloat16\")",
                self.dtype
            ));
        }
        if self.head_dim % 8 != 0 || self.head_dim > 256 {
            return Some(format!(
                "it needs a head dimension that is a multiple of 8 and at most 256, got {}",
                self.head_dim
            ));
        }
        if self.groups > 65535 {
            return Some(format!(
                "it takes at most 65535 sequences × heads in one call, got {}",
                self.groups
            ));
        }
        if self.grad {
            return Some("it has no backward pass".into());
        }
        None
    }
}

/// The one rule for the kernel of an attention call: `Auto` takes FlashAttention-2 wherever it can run (inference
/// in f16/bf16 on an sm80+ GPU with the `flash-attn` build) and the math composition elsewhere (training, f32,
/// the CPU, older GPUs, a build without the feature); `Flash` is the same for training and an error naming the
/// obstacle for inference; `Math` and `Chunked` are taken as they are. (On the CPU the math composition is the
/// fused kernel where it applies, see `nn::kernels`.)
pub fn choose(kernel: AttentionKernel, facts: &FlashFacts) -> std::result::Result<AttentionKernel, String> {
    match kernel {
        AttentionKernel::Auto => Ok(if facts.obstacle().is_none() {
            AttentionKernel::Flash
        } else {
            AttentionKernel::Math
        }),
        AttentionKernel::Flash if facts.grad => Ok(AttentionKernel::Math),
        AttentionKernel::Flash => match facts.obstacle() {
            None => Ok(AttentionKernel::Flash),
            Some(why) => Err(format!(
                "attention = \"flash\" cannot run: {why}; or use \"auto\" or \"math\""
            )),
        },
        other => Ok(other),
    }
}

#[cfg(feature = "flash-attn")]
fn compute_capability(device: &candle_core::Device) -> Result<Option<u32>> {
    match device {
        candle_core::Device::Cuda(dev) => {
            let (major, minor) = dev
                .cuda_stream()
                .context()
                .compute_capability()
                .map_err(|e| candle_core::Error::Msg(format!("compute capability: {e}")))?;
            Ok(Some((major * 10 + minor) as u32))
        }
        _ => Ok(None),
    }
}

#[cfg(not(feature = "flash-attn"))]
fn compute_capability(_device: &candle_core::Device) -> Result<Option<u32>> {
    Ok(None)
}

/// q, k, v: (G, heads, L, head_dim), any strides with a contiguous last dimension. Returns the heads merged:
/// (G, Lq, heads, head_dim).
pub fn scaled_dot_product(q: &Tensor, k: &Tensor, v: &Tensor, kernel: AttentionKernel, grad: bool) -> Result<Tensor> {
    let scale = (q.dim(D::Minus1)? as f64).powf(-0.5);
    let kernel = choose(kernel, &FlashFacts::of(q, grad)?).map_err(candle_core::Error::Msg)?;
    if kernel == AttentionKernel::Flash {
        return sdpa_flash(q, k, v, scale);
    }
    if fused_attention::applicable(q) {
        return fused_attention::fused_attention(q, k, v, scale, grad);
    }
    let (q, k, v) = (&q.contiguous()?, &k.contiguous()?, &v.contiguous()?);
    let out = match kernel {
        AttentionKernel::Chunked(chunk) => {
            let len = q.dim(2)?;
            let parts = (0..len)
                .step_by(chunk)
                .map(|start| sdpa_math(&q.narrow(2, start, chunk.min(len - start))?, k, v, scale, grad))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&parts, 2)?
        }
        // Math: what `choose` resolves Auto to where flash is not taken above.
        _ => sdpa_math(q, k, v, scale, grad)?,
    };
    out.transpose(1, 2)
}

/// The shape of one attention call for [`score_elements`]: `groups` sequences of `queries` queries attending to
/// `keys` keys, each in `heads` heads of `head_dim` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub groups: usize,
    pub heads: usize,
    pub queries: usize,
    pub keys: usize,
    pub head_dim: usize,
}

/// The attention scores one call of shape `s` holds at once on `device` in `dtype`, with the kernel that
/// [`scaled_dot_product`] would choose: the fused CPU kernel keeps a `queries × keys` buffer per thread (two for a
/// backward pass), the math composition the whole (groups, heads, queries, keys) score and probability tensors
/// (`Chunked` a chunk of queries at a time), FlashAttention none. For the memory estimates, which must see what a
/// pass allocates beyond its activations: a sequence of L tokens has L² scores per head.
pub fn score_elements(kernel: AttentionKernel, device: &Device, dtype: DType, s: AttentionShape, grad: bool) -> u128 {
    let facts = FlashFacts {
        built: cfg!(feature = "flash-attn"),
        compute_capability: compute_capability(device).ok().flatten(),
        dtype,
        head_dim: s.head_dim,
        groups: s.groups.saturating_mul(s.heads),
        grad,
    };
    let per_problem = (s.queries as u128).saturating_mul(s.keys as u128);
    let problems = (s.groups as u128).saturating_mul(s.heads as u128);
    match choose(kernel, &facts) {
        Ok(AttentionKernel::Flash) | Err(_) => 0,
        _ if super::kernels::fused_cpu_for(device, dtype, super::kernels::F32) => {
            let threads = (rayon::current_num_threads() as u128).min(problems);
            threads
                .saturating_mul(per_problem)
                .saturating_mul(if grad { 2 } else { 1 })
        }
        Ok(AttentionKernel::Chunked(chunk)) => problems
            .saturating_mul(chunk.min(s.queries) as u128)
            .saturating_mul(s.keys as u128)
            .saturating_mul(2),
        // The scores and the probabilities.
        _ => problems.saturating_mul(per_problem).saturating_mul(2),
    }
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

/// FlashAttention-2 (only where [`choose`] picked it: f16/bf16 on CUDA) of q, k, v (G, heads, L, head_dim).
/// Returns the heads merged: (G, Lq, heads, head_dim), contiguous.
#[cfg(feature = "flash-attn")]
fn sdpa_flash(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    // candle-flash-attn wants (batch, seq, heads, head_dim).
    let prep = |t: &Tensor| t.transpose(1, 2)?.contiguous();
    candle_flash_attn::flash_attn(&prep(q)?, &prep(k)?, &prep(v)?, scale as f32, false)
}

#[cfg(not(feature = "flash-attn"))]
fn sdpa_flash(_q: &Tensor, _k: &Tensor, _v: &Tensor, _scale: f64) -> Result<Tensor> {
    candle_core::bail!("flash attention needs the `flash-attn` feature (choose() does not pick it without)")
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
    if rope.is_none_or(|r| r.qkv_applies(qkv))
        && extra_qkv.is_none()
        && matches!(
            kernel,
            AttentionKernel::Auto | AttentionKernel::Math | AttentionKernel::Chunked(_)
        )
        && fused_attention::applicable(qkv)
    {
        let scale = (qkv.dim(D::Minus1)? as f64).powf(-0.5);
        // RoPE rotates q and k in the packed projection, so the fused kernel takes it as it takes any other.
        let rotated;
        let qkv = match rope {
            Some(r) => {
                rotated = r.apply_qkv(qkv)?;
                &rotated
            }
            None => qkv,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> FlashFacts {
        FlashFacts {
            built: true,
            compute_capability: Some(90),
            dtype: DType::BF16,
            head_dim: 72,
            groups: 16 * 256,
            grad: false,
        }
    }

    #[test]
    fn auto_takes_flash_exactly_where_it_can_run() {
        assert_eq!(choose(AttentionKernel::Auto, &facts()), Ok(AttentionKernel::Flash));
        assert_eq!(
            choose(
                AttentionKernel::Auto,
                &FlashFacts {
                    dtype: DType::F16,
                    compute_capability: Some(80),
                    ..facts()
                }
            ),
            Ok(AttentionKernel::Flash)
        );
        let fallbacks = [
            FlashFacts {
                built: false,
                ..facts()
            },
            FlashFacts {
                compute_capability: None,
                ..facts()
            },
            FlashFacts {
                compute_capability: Some(75),
                ..facts()
            },
            FlashFacts {
                dtype: DType::F32,
                ..facts()
            },
            FlashFacts {
                head_dim: 20,
                ..facts()
            },
            FlashFacts {
                head_dim: 264,
                ..facts()
            },
            FlashFacts {
                groups: 70_000,
                ..facts()
            },
            FlashFacts { grad: true, ..facts() },
        ];
        for f in fallbacks {
            assert!(f.obstacle().is_some(), "{f:?}");
            assert_eq!(choose(AttentionKernel::Auto, &f), Ok(AttentionKernel::Math), "{f:?}");
        }
    }

    #[test]
    fn flash_trains_with_math_and_refuses_what_it_cannot_run() {
        assert_eq!(choose(AttentionKernel::Flash, &facts()), Ok(AttentionKernel::Flash));
        assert_eq!(
            choose(AttentionKernel::Flash, &FlashFacts { grad: true, ..facts() }),
            Ok(AttentionKernel::Math)
        );
        let err = choose(
            AttentionKernel::Flash,
            &FlashFacts {
                dtype: DType::F32,
                ..facts()
            },
        )
        .unwrap_err();
        assert!(err.contains("float16/bfloat16") && err.contains("F32"), "{err}");
        let err = choose(
            AttentionKernel::Flash,
            &FlashFacts {
                compute_capability: Some(75),
                ..facts()
            },
        )
        .unwrap_err();
        assert!(err.contains("got 7.5"), "{err}");
        for kernel in [AttentionKernel::Math, AttentionKernel::Chunked(8)] {
            assert_eq!(choose(kernel, &facts()), Ok(kernel));
        }
    }

    #[test]
    fn score_buffers_are_counted_as_the_chosen_kernel_allocates_them() {
        let cpu = Device::Cpu;
        let s = AttentionShape {
            groups: 6,
            heads: 4,
            queries: 1000,
            keys: 300,
            head_dim: 8,
        };
        let per = 1000 * 300;
        // The fused CPU kernel: one buffer per thread (two for the backward pass), at most one per problem.
        let threads = rayon::current_num_threads().min(24) as u128;
        assert_eq!(
            score_elements(AttentionKernel::Auto, &cpu, DType::F32, s, false),
            threads * per
        );
        assert_eq!(
            score_elements(AttentionKernel::Math, &cpu, DType::F32, s, true),
            2 * threads * per
        );
        // The math composition (here: bf16 on the CPU, or the generic path forced): every score and
        // probability at once; chunked: a chunk of queries at a time.
        assert_eq!(
            score_elements(AttentionKernel::Auto, &cpu, DType::BF16, s, false),
            24 * per * 2
        );
        let chunked = score_elements(AttentionKernel::Chunked(100), &cpu, DType::BF16, s, false);
        assert_eq!(chunked, 24 * 100 * 300 * 2);
        let _generic = crate::nn::kernels::force_generic();
        assert_eq!(
            score_elements(AttentionKernel::Auto, &cpu, DType::F32, s, false),
            24 * per * 2
        );
        // A kernel that cannot run holds none (the call is an error).
        assert_eq!(score_elements(AttentionKernel::Flash, &cpu, DType::F32, s, false), 0);
    }

    #[test]
    fn auto_is_the_math_kernel_on_the_cpu_to_the_bit() {
        let dev = candle_core::Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, 3, 7, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (2, 3, 7, 8), &dev).unwrap();
        for grad in [false, true] {
            let auto = scaled_dot_product(&q, &k, &v, AttentionKernel::Auto, grad).unwrap();
            let math = scaled_dot_product(&q, &k, &v, AttentionKernel::Math, grad).unwrap();
            assert_eq!(crate::test_util::max_abs_diff(&auto, &math), 0.0);
        }
        let err = scaled_dot_product(&q, &k, &v, AttentionKernel::Flash, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("attention = \"flash\" cannot run"), "{err}");
    }
}
