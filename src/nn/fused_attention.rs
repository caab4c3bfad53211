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
                    probabilities(&q, &k, gi, hi, (lq, lk, d), scale, scores);
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
            },
        );
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
        let mut out = vec![0f32; nq + 2 * nk];
        let shared = SharedOut(out.as_mut_ptr());
        let scale = self.scale;
        (0..g * h).into_par_iter().for_each_init(
            || (vec![0f32; lq * lk], vec![0f32; lq * lk]),
            |(p, dp), problem| {
                let (gi, hi) = (problem / h, problem % h);
                // SAFETY: as in the forward pass; `p` and `dp` have lq·lk elements; the dq, dk and dv blocks of
                // `problem` are contiguous, disjoint from every other problem's, and inside `out`.
                unsafe {
                    probabilities(&q, &k, gi, hi, (lq, lk, d), scale, p);
                    let d_out = go[gi * lq * h * d + hi * d..].as_ptr();
                    let (dq, dk, dv) = (
                        shared.at(problem * lq * d),
                        shared.at(nq + problem * lk * d),
                        shared.at(nq + nk + problem * lk * d),
                    );
                    // dV = Pᵀ dO  (lk × d)
                    matmul((lk, d, lq), (dv, d, 1), (p.as_ptr(), 1, lk), (d_out, h * d, 1), 1.0);
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
                        (dq, d, 1),
                        (dp.as_ptr(), lk, 1),
                        (k.ptr(gi, hi), k.stride[2], 1),
                        scale,
                    );
                    matmul(
                        (lk, d, lq),
                        (dk, d, 1),
                        (dp.as_ptr(), 1, lk),
                        (q.ptr(gi, hi), q.stride[2], 1),
                        scale,
                    );
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from_dims(&[nq + 2 * nk])))
    }
}

/// Whether the fused kernel can run these operands (f32 on the CPU).
pub fn applicable(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == DType::F32
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
    use candle_core::{Device, Var};

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
