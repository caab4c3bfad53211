//! Inference attention on the CPU in one pass per (sequence, head): scores into a per-thread buffer, softmax in
//! place, then the weighted sum of values written straight into the merged-heads layout.
//!
//! Compared with three tensor ops (QKᵀ, softmax, ·V) this never materialises the (G, H, L, L) score tensor, reads
//! q, k and v through their strides (so the views cut from the qkv projection need no copies), and needs no
//! transpose to merge heads afterwards.
//!
//! The backward pass works the same way (as FlashAttention does): per (sequence, head) it recomputes the
//! probabilities P from q and k, then dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = scale · dS K and
//! dK = scale · dSᵀ Q. Nothing beyond q, k, v and the output (which the projections around it keep anyway) is
//! saved for it, so attention adds no activation memory to training.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::fastmath::softmax_rows;
use crate::limits::{try_filled, try_uninit};

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

    /// Part `part` (0: q, 1: k, 2: v) of a packed projection (G, L, 3, H, d), viewed as (G, H, L, d).
    fn part(storage: &'a CpuStorage, layout: &Layout, part: usize) -> Result<Self> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fused attention: expected f32 storage")
        };
        let &[sg, sl, sp, sh, sd] = layout.stride() else {
            candle_core::bail!(
                "fused attention: expected a rank-5 qkv projection, got strides {:?}",
                layout.stride()
            )
        };
        Ok(Self {
            data,
            offset: layout.start_offset() + part * sp,
            stride: [sg, sh, sl, sd],
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

/// `scores` (lq × lk) = softmax(scale · q kᵀ) of problem (gi, hi).
///
/// # Safety
/// The operands must describe in-bounds tensors with a contiguous last dimension (see `Operand::ptr`), and
/// `scores` must hold lq·lk elements.
unsafe fn probabilities(
    q: &Operand,
    k: &Operand,
    gi: usize,
    hi: usize,
    dims: (usize, usize, usize),
    scale: f32,
    scores: &mut [f32],
) {
    let (lq, lk, d) = dims;
    matmul(
        (lq, lk, d),
        (scores.as_mut_ptr(), lk, 1),
        (q.ptr(gi, hi), q.stride[2], 1),
        (k.ptr(gi, hi), 1, k.stride[2]),
        scale,
    );
    softmax_rows(scores, lk);
}

/// dst (m × n) = beta · lhs (m × k) · rhs (k × n), every matrix given by its pointer and (row, column) strides.
///
/// # Safety
/// Every element reached through the pointers and strides must be in bounds; `dst` is written, not read.
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0,
        dst.2 as isize,
        dst.1 as isize,
        false,
        lhs.0,
        lhs.2 as isize,
        lhs.1 as isize,
        rhs.0,
        rhs.2 as isize,
        rhs.1 as isize,
        0.0,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// softmax(scale · q kᵀ) v of every (g, h) problem, in the merged-heads layout (G, Lq, H, d).
fn attention_forward(
    q: &Operand,
    k: &Operand,
    v: &Operand,
    (g, h, lq, lk, d): (usize, usize, usize, usize, usize),
    scale: f32,
) -> Result<Vec<f32>> {
    let mut out = output_buffer(g * lq * h * d, lq, lk, "an attention output")?;
    let shared = SharedOut(out.as_mut_ptr());
    (0..g * h)
        .into_par_iter()
        .try_for_each_init(
            || try_filled(lq * lk, 0f32, SCORES).ok(),
            |scores, problem| {
                let scores = scores.as_mut().ok_or(())?;
                let (gi, hi) = (problem / h, problem % h);
                // SAFETY: the pointers and strides describe in-bounds tensors (see `Operand::ptr`); `scores` has
                // lq·lk elements; the output block of (gi, hi) — rows gi·lq.., columns hi·d.. of the (G·L, H·d)
                // matrix — is written by this problem alone.
                unsafe {
                    probabilities(q, k, gi, hi, (lq, lk, d), scale, scores);
                    // out[gi, :, hi, :] = scores · v  (lq × d), rows strided by H·d in the merged layout
                    let dst = shared.at(gi * lq * h * d + hi * d);
                    matmul(
                        (lq, d, lk),
                        (dst, h * d, 1),
                        (scores.as_ptr(), lk, 1),
                        (v.ptr(gi, hi), v.stride[2], 1),
                        1.0,
                    );
                }
                Ok(())
            },
        )
        .map_err(|()| scores_refused(lq, lk))?;
    Ok(out)
}

/// Checks q (G, H, Lq, d), k and v (G, H, Lk, d) and returns (g, h, lq, lk, d).
fn problem_dims(ql: &Layout, kl: &Layout, vl: &Layout) -> Result<(usize, usize, usize, usize, usize)> {
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
    if [ql, kl, vl].iter().any(|l| l.stride().last() != Some(&1)) {
        candle_core::bail!("fused attention: the head dimension must be contiguous");
    }
    Ok((g, h, lq, lk, d))
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
        let (g, h, lq, lk, d) = problem_dims(ql, kl, vl)?;
        let (q, k, v) = (Operand::new(qs, ql)?, Operand::new(ks, kl)?, Operand::new(vs, vl)?);
        let out = attention_forward(&q, &k, &v, (g, h, lq, lk, d), self.scale)?;
        Ok((CpuStorage::F32(out), Shape::from_dims(&[g, lq, h, d])))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (g, h, lq, d) = q.dims4()?;
        let lk = k.dim(2)?;
        let op = FusedAttentionBackward {
            scale: self.scale,
            grad_out: grad_out.contiguous()?,
        };
        let packed = q.apply_op3_no_bwd(k, v, &op)?;
        let (nq, nk) = (g * h * lq * d, g * h * lk * d);
        let dq = packed.narrow(0, 0, nq)?.reshape((g, h, lq, d))?;
        let dk = packed.narrow(0, nq, nk)?.reshape((g, h, lk, d))?;
        let dv = packed.narrow(0, nq + nk, nk)?.reshape((g, h, lk, d))?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The gradients of q, k and v given the output's (see the module docs), packed as one flat buffer
/// [dq (G, H, Lq, d) | dk (G, H, Lk, d) | dv (G, H, Lk, d)].
struct FusedAttentionBackward {
    scale: f32,
    /// dO in the merged-heads layout (G, Lq, H, d), contiguous.
    grad_out: Tensor,
}

impl CustomOp3 for FusedAttentionBackward {
    fn name(&self) -> &'static str {
        "fused-attention-cpu-backward"
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
        let (g, h, lq, lk, d) = problem_dims(ql, kl, vl)?;
        let (q, k, v) = (Operand::new(qs, ql)?, Operand::new(ks, kl)?, Operand::new(vs, vl)?);
        let (go_storage, go_layout) = self.grad_out.storage_and_layout();
        let candle_core::Storage::Cpu(CpuStorage::F32(go_data)) = &*go_storage else {
            candle_core::bail!("fused attention backward: expected an f32 CPU output gradient")
        };
        if go_layout.shape().dims() != [g, lq, h, d] || !go_layout.is_contiguous() {
            candle_core::bail!(
                "fused attention backward: output gradient of shape {:?}",
                go_layout.shape()
            );
        }
        let go = &go_data[go_layout.start_offset()..];
        let (nq, nk) = (g * h * lq * d, g * h * lk * d);
        let mut out = output_buffer(nq + 2 * nk, lq, lk, "the attention gradients")?;
        // dq, dk, dv blocks of problem (g, h): contiguous (L, d) blocks one after the other.
        let dest = Destinations {
            base: [0, nq, nq + nk],
            problem: [lq * d, lk * d, lk * d],
            group: [h * lq * d, h * lk * d, h * lk * d],
            row: d,
        };
        attention_backward([&q, &k, &v], go, (g, h, lq, lk, d), self.scale, &mut out, &dest)?;
        Ok((CpuStorage::F32(out), Shape::from_dims(&[nq + 2 * nk])))
    }
}

/// Where the backward pass writes dq, dk and dv: element (g, h, l, ·) of part p starts at
/// `base[p] + g·group[p] + h·problem[p] + l·row`... for packed (G, H, L, d) blocks; see [`Destinations::at`].
struct Destinations {
    base: [usize; 3],
    /// Offset between heads of one group.
    problem: [usize; 3],
    /// Offset between groups.
    group: [usize; 3],
    /// Offset between the rows (positions) of one (g, h) block.
    row: usize,
}

impl Destinations {
    fn at(&self, part: usize, gi: usize, hi: usize) -> usize {
        self.base[part] + gi * self.group[part] + hi * self.problem[part]
    }
}

/// dq, dk, dv of every (g, h) problem given dO in the merged-heads layout (G, Lq, H, d), written into `out` at
/// `dest` (see the module docs for the arithmetic).
fn attention_backward(
    [q, k, v]: [&Operand; 3],
    go: &[f32],
    (g, h, lq, lk, d): (usize, usize, usize, usize, usize),
    scale: f32,
    out: &mut [f32],
    dest: &Destinations,
) -> Result<()> {
    let shared = SharedOut(out.as_mut_ptr());
    let row = dest.row;
    let scratch = || {
        Some((
            try_filled(lq * lk, 0f32, SCORES).ok()?,
            try_filled(lq * lk, 0f32, SCORES).ok()?,
        ))
    };
    (0..g * h)
        .into_par_iter()
        .try_for_each_init(scratch, |buffers, problem| {
            let (p, dp) = buffers.as_mut().ok_or(())?;
            let (gi, hi) = (problem / h, problem % h);
            // SAFETY: as in the forward pass; `p` and `dp` have lq·lk elements; the dq, dk and dv blocks of
            // `problem` are disjoint from every other problem's and inside `out` (see `Destinations`).
            unsafe {
                probabilities(q, k, gi, hi, (lq, lk, d), scale, p);
                let d_out = go[gi * lq * h * d + hi * d..].as_ptr();
                let (dq, dk, dv) = (
                    shared.at(dest.at(0, gi, hi)),
                    shared.at(dest.at(1, gi, hi)),
                    shared.at(dest.at(2, gi, hi)),
                );
                // dV = Pᵀ dO  (lk × d)
                matmul((lk, d, lq), (dv, row, 1), (p.as_ptr(), 1, lk), (d_out, h * d, 1), 1.0);
                // dP = dO Vᵀ  (lq × lk)
                matmul(
                    (lq, lk, d),
                    (dp.as_mut_ptr(), lk, 1),
                    (d_out, h * d, 1),
                    (v.ptr(gi, hi), 1, v.stride[2]),
                    1.0,
                );
                // dS = P ⊙ (dP − rowsum(dP ⊙ P)), in place of dP
                for (pr, dr) in p.chunks_exact(lk).zip(dp.chunks_exact_mut(lk)) {
                    let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                    for (x, &pi) in dr.iter_mut().zip(pr) {
                        *x = pi * (*x - dot);
                    }
                }
                // dQ = scale · dS K  (lq × d);  dK = scale · dSᵀ Q  (lk × d)
                matmul(
                    (lq, d, lk),
                    (dq, row, 1),
                    (dp.as_ptr(), lk, 1),
                    (k.ptr(gi, hi), k.stride[2], 1),
                    scale,
                );
                matmul(
                    (lk, d, lq),
                    (dk, row, 1),
                    (dp.as_ptr(), 1, lk),
                    (q.ptr(gi, hi), q.stride[2], 1),
                    scale,
                );
            }
            Ok(())
        })
        .map_err(|()| scores_refused(lq, lk))
}

/// An output every (g, h) problem's GEMMs overwrite in full (each problem its own blocks), left unfilled: a serial
/// zero fill of it was 2% of the demo model's train step. With an empty sequence (a GEMM of inner length 0 may
/// leave its output as it was) it is zeros.
fn output_buffer(n: usize, lq: usize, lk: usize, what: &str) -> Result<Vec<f32>> {
    if lq == 0 || lk == 0 {
        return try_filled(n, 0f32, what);
    }
    // SAFETY: with lq, lk > 0 the callers' GEMMs write every element (dst written, not read; see `matmul`).
    unsafe { try_uninit(n, what) }
}

/// The per-thread score buffers of one attention call.
const SCORES: &str = "the attention scores of one sequence and head";

/// The memory error of a refused score buffer of `lq` × `lk`.
fn scores_refused(lq: usize, lk: usize) -> candle_core::Error {
    crate::limits::allocation_refused(lq as u128 * lk as u128 * 4, SCORES)
}

/// Self-attention of a packed projection (G, L, 3, H, d) read through its strides; the output in the
/// merged-heads layout (G, L, H, d). Its backward gives the projection's gradient as one (G, L, 3, H, d) tensor,
/// where three q, k, v views would each come back through candle's narrow (zeros, then an add).
struct FusedQkvAttention {
    scale: f32,
}

/// The backward of [`FusedQkvAttention`]: d(qkv) (G, L, 3, H, d) from qkv and dO.
struct FusedQkvAttentionBackward {
    scale: f32,
}

fn qkv_dims(layout: &Layout) -> Result<(usize, usize, usize, usize)> {
    let &[g, l, three, h, d] = layout.dims() else {
        candle_core::bail!("fused attention: expected qkv of rank 5, got {:?}", layout.dims())
    };
    if three != 3 || layout.stride().last() != Some(&1) {
        candle_core::bail!("fused attention: expected qkv (G, L, 3, H, d) with a contiguous head dimension");
    }
    Ok((g, l, h, d))
}

impl candle_core::CustomOp1 for FusedQkvAttention {
    fn name(&self) -> &'static str {
        "fused-qkv-attention-cpu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, len, h, d) = qkv_dims(l)?;
        let (q, k, v) = (
            Operand::part(s, l, 0)?,
            Operand::part(s, l, 1)?,
            Operand::part(s, l, 2)?,
        );
        let out = attention_forward(&q, &k, &v, (g, h, len, len, d), self.scale)?;
        Ok((CpuStorage::F32(out), Shape::from_dims(&[g, len, h, d])))
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, grad_out: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(qkv.apply_op2_no_bwd(
            &grad_out.contiguous()?,
            &FusedQkvAttentionBackward { scale: self.scale },
        )?))
    }
}

impl candle_core::CustomOp2 for FusedQkvAttentionBackward {
    fn name(&self) -> &'static str {
        "fused-qkv-attention-cpu-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, len, h, d) = qkv_dims(l)?;
        let (q, k, v) = (
            Operand::part(s, l, 0)?,
            Operand::part(s, l, 1)?,
            Operand::part(s, l, 2)?,
        );
        let CpuStorage::F32(go) = gs else {
            candle_core::bail!("fused attention backward: expected an f32 output gradient")
        };
        if gl.dims() != [g, len, h, d] || !gl.is_contiguous() {
            candle_core::bail!("fused attention backward: output gradient of shape {:?}", gl.dims());
        }
        let go = &go[gl.start_offset()..];
        let mut out = output_buffer(g * len * 3 * h * d, len, len, "the attention gradients")?;
        // The gradient in qkv's own contiguous layout: part p of (g, h) starts at g·L·3Hd + p·Hd + h·d, and its
        // rows are 3Hd apart.
        let dest = Destinations {
            base: [0, h * d, 2 * h * d],
            problem: [d; 3],
            group: [len * 3 * h * d; 3],
            row: 3 * h * d,
        };
        attention_backward([&q, &k, &v], go, (g, h, len, len, d), self.scale, &mut out, &dest)?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// softmax(q kᵀ · scale) v of a packed projection qkv (G, L, 3, H, d) (any strides with a contiguous last
/// dimension), f32 on the CPU. Returns the heads merged: (G, L, H, d). With `grad`, differentiable in qkv.
pub fn fused_qkv_attention(qkv: &Tensor, scale: f64, grad: bool) -> Result<Tensor> {
    let op = FusedQkvAttention { scale: scale as f32 };
    if grad {
        qkv.apply_op1(op)
    } else {
        qkv.apply_op1_no_bwd(&op)
    }
}

/// Whether the fused kernel can run these operands (f32 on the CPU).
pub fn applicable(q: &Tensor) -> bool {
    super::kernels::fused_cpu(&[q], super::kernels::F32)
}

/// softmax(q kᵀ · scale) v for q (G, H, Lq, d), k and v (G, H, Lk, d), any strides with a contiguous last
/// dimension. Returns the heads merged: (G, Lq, H, d). With `grad`, differentiable in q, k and v.
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, grad: bool) -> Result<Tensor> {
    let op = FusedAttention { scale: scale as f32 };
    if grad {
        q.apply_op3(k, v, op)
    } else {
        q.apply_op3_no_bwd(k, v, &op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use candle_core::{DType, Device, Var};

    /// The packed-projection kernel equals the three-view kernel, forward and d(qkv), on a strided projection.
    #[test]
    fn packed_qkv_attention_matches_the_three_views() {
        let (g, l, h, d) = (5, 7, 3, 4);
        let wide = Tensor::randn(0f32, 1.0, (g, l, 3, h + 1, d), &Device::Cpu).unwrap();
        let qkv = wide.narrow(3, 1, h).unwrap(); // strided: every head axis skips one
        let w = Tensor::randn(0f32, 1.0, (g, l, h, d), &Device::Cpu).unwrap();
        let scale = (d as f64).powf(-0.5);
        let run = |f: &dyn Fn(&Tensor) -> Tensor| {
            let var = Var::from_tensor(&qkv.contiguous().unwrap()).unwrap();
            let view = var.as_tensor();
            let out = f(view);
            let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
            (out, grads.get(view).unwrap().clone())
        };
        let (packed, d_packed) = run(&|qkv| fused_qkv_attention(qkv, scale, true).unwrap());
        let (views, d_views) = run(&|qkv| {
            let (q, k, v) = crate::nn::attention::unbind_qkv(qkv).unwrap();
            fused_attention(&q, &k, &v, scale, true).unwrap()
        });
        assert!(max_abs_diff(&packed, &views) < 1e-6);
        assert!(max_abs_diff(&d_packed, &d_views) < 1e-5);
        let strided = fused_qkv_attention(&qkv, scale, false).unwrap();
        assert!(max_abs_diff(&strided, &views) < 1e-6);
    }

    /// Output and q/k/v gradients against softmax(q kᵀ s) v written with tensor ops in f64, on strided views
    /// (as cut from a qkv projection) with more keys than queries (conditioning tokens).
    #[test]
    fn backward_matches_the_tensor_op_definition() {
        let (g, h, lq, lk, d) = (3, 2, 5, 9, 4);
        let scale = (d as f64).powf(-0.5);
        let qkv = Tensor::randn(0f32, 1.0, (g, lq, 3, h, d), &Device::Cpu).unwrap();
        let q = qkv
            .narrow(2, 0, 1)
            .unwrap()
            .squeeze(2)
            .unwrap()
            .transpose(1, 2)
            .unwrap(); // strided view
        let k = Tensor::randn(0f32, 1.0, (g, h, lk, d), &Device::Cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (g, h, lk, d), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (g, lq, h, d), &Device::Cpu).unwrap();
        let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor, dtype: DType| {
            let vars: Vec<Var> = [&q, &k, &v]
                .iter()
                .map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap())
                .collect();
            let out = f(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor());
            let grads = (&out * w.to_dtype(dtype).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut all = vec![out];
            all.extend(vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()));
            all
        };
        let fused = run(&|q, k, v| fused_attention(q, k, v, scale, true).unwrap(), DType::F32);
        let reference = run(
            &|q, k, v| {
                let s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
                let p = crate::nn::rowwise::softmax_last_dim(&s).unwrap();
                p.matmul(v).unwrap().transpose(1, 2).unwrap()
            },
            DType::F64,
        );
        for (name, (a, b)) in ["out", "dq", "dk", "dv"].iter().zip(fused.iter().zip(&reference)) {
            assert_eq!(a.dims(), b.dims(), "{name}");
            let err = max_abs_diff(a, b);
            assert!(err < 1e-5, "{name}: max abs diff {err}");
        }
    }
}
