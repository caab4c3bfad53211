//! Inference attention on the CPU in one pass per (sequence, head): scores into a per-thread buffer, softmax in
//! place, then the weighted sum of values written straight into the merged-heads layout.
//!
//! Compared with three tensor ops (QKᵀ, softmax, ·V) this never materialises the (G, H, L, L) score tensor, reads
//! q, k and v through their strides (so the views cut from the qkv projection need no copies), and needs no
//! transpose to merge heads afterwards. Forward only: training uses the differentiable path.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fastmath::exp_f32;

struct FusedAttention {
    scale: f32,
}

/// Base pointer and strides of one operand, in elements.
struct Operand<'a> {
    data: &'a [f32],
    offset: usize,
    stride: [usize; 4],
}

impl<'a> Operand<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout) -> Result<Self> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fused attention: expected f32 storage")
        };
        let &[a, b, c, d] = layout.stride() else {
            candle_core::bail!(
                "fused attention: expected rank-4 operands, got strides {:?}",
                layout.stride()
            )
        };
        Ok(Self {
            data,
            offset: layout.start_offset(),
            stride: [a, b, c, d],
        })
    }

    fn ptr(&self, g: usize, h: usize) -> *const f32 {
        let at = self.offset + g * self.stride[0] + h * self.stride[1];
        // SAFETY (of later reads): `at` and every element the gemm calls reach through the strides lie inside the
        // storage, because the layout was produced by candle for a tensor of the checked shape.
        self.data[at..].as_ptr()
    }
}

/// A raw pointer that rayon workers may share: every (g, h) problem writes a disjoint set of output elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element at `offset`. (A method, so closures capture the whole `SharedOut`, which is `Send`.)
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention-cpu"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, h, lq, d) = ql.shape().dims4()?;
        let (g2, h2, lk, d2) = kl.shape().dims4()?;
        if (g2, h2, d2) != (g, h, d) || vl.shape().dims4()? != (g, h, lk, d) {
            candle_core::bail!(
                "fused attention: q {:?}, k {:?}, v {:?} do not fit",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        let (q, k, v) = (Operand::new(qs, ql)?, Operand::new(ks, kl)?, Operand::new(vs, vl)?);
        if q.stride[3] != 1 || k.stride[3] != 1 || v.stride[3] != 1 {
            candle_core::bail!("fused attention: the head dimension must be contiguous");
        }
        let mut out = vec![0f32; g * lq * h * d];
        let shared = SharedOut(out.as_mut_ptr());
        let scale = self.scale;
        (0..g * h).into_par_iter().for_each_init(
            || vec![0f32; lq * lk],
            |scores, problem| {
                let (gi, hi) = (problem / h, problem % h);
                // SAFETY: the pointers and strides describe in-bounds tensors (see `Operand::ptr`); `scores` has
                // lq·lk elements; the output block of (gi, hi) — rows gi·lq.., columns hi·d.. of the (G·L, H·d)
                // matrix — is written by this problem alone.
                unsafe {
                    // scores = scale · q kᵀ  (lq × lk)
                    gemm::gemm(
                        lq,
                        lk,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        lk as isize,
                        false,
                        q.ptr(gi, hi),
                        1,
                        q.stride[2] as isize,
                        k.ptr(gi, hi),
                        k.stride[2] as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    for row in scores.chunks_exact_mut(lk) {
                        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                        let mut sum = 0.0;
                        for x in row.iter_mut() {
                            *x = exp_f32(*x - max);
                            sum += *x;
                        }
                        let inv = 1.0 / sum;
                        row.iter_mut().for_each(|x| *x *= inv);
                    }
                    // out[gi, :, hi, :] = scores · v  (lq × d), rows strided by H·d in the merged layout
                    let dst = shared.at(gi * lq * h * d + hi * d);
                    gemm::gemm(
                        lq,
                        d,
                        lk,
                        dst,
                        1,
                        (h * d) as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        lk as isize,
                        v.ptr(gi, hi),
                        1,
                        v.stride[2] as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from_dims(&[g, lq, h, d])))
    }
}

/// Whether the fused kernel can run these operands.
pub fn applicable(q: &Tensor, grad: bool) -> bool {
    !grad && q.device().is_cpu() && q.dtype() == DType::F32
}

/// softmax(q kᵀ · scale) v for q (G, H, Lq, d), k and v (G, H, Lk, d), any strides with a contiguous last
/// dimension. Returns the heads merged: (G, Lq, H, d). Inference only (no gradient).
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    q.apply_op3_no_bwd(k, v, &FusedAttention { scale: scale as f32 })
}
