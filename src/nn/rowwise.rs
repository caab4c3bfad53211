//! Softmax and LayerNorm over the last dimension as differentiable CPU kernels.
//!
//! candle's fused `softmax_last_dim` and `layer_norm` have no backward (they silently drop gradients), and the
//! same functions written with tensor ops keep four to six intermediate tensors alive for the backward pass and
//! walk memory once per op. These kernels do one parallel pass over the rows forward and one backward, and save
//! only what the derivative needs: softmax its output, LayerNorm its input. For the training path of Latte-S/2
//! that halves the activation memory of attention and normalisation.
//!
//! Derivatives (per row, with n the row length):
//! - softmax p = softmax(x): dx = p ⊙ (g − Σ g⊙p)
//! - x̂ = (x − mean) · r with r = 1/√(var + eps): dx = r · (g − mean(g) − x̂ · mean(g⊙x̂))

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Rows per parallel work item are chosen so that one item holds about this many values.
const ITEM: usize = 1 << 14;

use crate::float::{moments, Float};

fn slice<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Runs `row(out_row, in_rows...)` over every row of length `n` in parallel.
fn rows_map<T: Float>(n: usize, len: usize, f: impl Fn(usize, &mut [T]) + Sync) -> Result<Vec<T>> {
    let mut out = crate::limits::try_filled(len, T::ZERO, "a row-wise kernel's output")?;
    let per_item = (ITEM / n.max(1)).max(1) * n;
    out.par_chunks_mut(per_item).enumerate().for_each(|(item, chunk)| {
        for (r, row) in chunk.chunks_mut(n).enumerate() {
            f(item * (per_item / n) + r, row);
        }
    });
    Ok(out)
}

fn softmax_fwd<T: Float>(x: &[T], n: usize) -> Result<Vec<T>> {
    rows_map(n, x.len(), |r, out| {
        let row = &x[r * n..(r + 1) * n];
        let max = row.iter().fold(T::NEG_INF, |m, &v| if v > m { v } else { m });
        let mut sum = T::ZERO;
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (v - max).exp();
            sum += *o;
        }
        let inv = T::ONE / sum;
        out.iter_mut().for_each(|o| *o *= inv);
    })
}

fn softmax_bwd<T: Float>(p: &[T], g: &[T], n: usize) -> Result<Vec<T>> {
    rows_map(n, p.len(), |r, out| {
        let (pr, gr) = (&p[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
        let dot = pr.iter().zip(gr).fold(T::ZERO, |s, (&a, &b)| s + a * b);
        for ((o, &pi), &gi) in out.iter_mut().zip(pr).zip(gr) {
            *o = pi * (gi - dot);
        }
    })
}

fn layer_norm_fwd<T: Float>(x: &[T], n: usize, eps: f64) -> Result<Vec<T>> {
    let eps = T::of(eps);
    rows_map(n, x.len(), |r, out| {
        let row = &x[r * n..(r + 1) * n];
        let (mean, rstd) = moments(row, eps);
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (v - mean) * rstd;
        }
    })
}

fn layer_norm_bwd<T: Float>(x: &[T], g: &[T], n: usize, eps: f64) -> Result<Vec<T>> {
    let eps = T::of(eps);
    let nf = T::from_usize(n);
    rows_map(n, x.len(), |r, out| {
        let (xr, gr) = (&x[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
        let (mean, rstd) = moments(xr, eps);
        let (mut sum_g, mut sum_gx) = (T::ZERO, T::ZERO);
        for (&xi, &gi) in xr.iter().zip(gr) {
            sum_g += gi;
            sum_gx += gi * (xi - mean) * rstd;
        }
        let (mean_g, mean_gx) = (sum_g / nf, sum_gx / nf);
        for ((o, &xi), &gi) in out.iter_mut().zip(xr).zip(gr) {
            *o = rstd * (gi - mean_g - (xi - mean) * rstd * mean_gx);
        }
    })
}

fn last_dim(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1)
}

struct Softmax;
struct SoftmaxBackward;
struct LayerNormOp(f64);
struct LayerNormBackward(f64);

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-rows"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l);
        let out = match s {
            CpuStorage::F32(d) => CpuStorage::F32(softmax_fwd(slice(d, l, "softmax")?, n)?),
            CpuStorage::F64(d) => CpuStorage::F64(softmax_fwd(slice(d, l, "softmax")?, n)?),
            other => candle_core::bail!("softmax: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)?))
    }
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-rows-backward"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l1);
        let out = match (s1, s2) {
            (CpuStorage::F32(p), CpuStorage::F32(g)) => {
                CpuStorage::F32(softmax_bwd(slice(p, l1, "softmax")?, slice(g, l2, "softmax")?, n)?)
            }
            (CpuStorage::F64(p), CpuStorage::F64(g)) => {
                CpuStorage::F64(softmax_bwd(slice(p, l1, "softmax")?, slice(g, l2, "softmax")?, n)?)
            }
            _ => candle_core::bail!("softmax backward: mismatched or unsupported dtypes"),
        };
        Ok((out, l1.shape().clone()))
    }
}

impl CustomOp1 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-rows"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l);
        let out = match s {
            CpuStorage::F32(d) => CpuStorage::F32(layer_norm_fwd(slice(d, l, "layer_norm")?, n, self.0)?),
            CpuStorage::F64(d) => CpuStorage::F64(layer_norm_fwd(slice(d, l, "layer_norm")?, n, self.0)?),
            other => candle_core::bail!("layer_norm: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &LayerNormBackward(self.0))?,
        ))
    }
}

impl CustomOp2 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer-norm-rows-backward"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l1);
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(layer_norm_bwd(
                slice(x, l1, "layer_norm")?,
                slice(g, l2, "layer_norm")?,
                n,
                self.0,
            )?),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(layer_norm_bwd(
                slice(x, l1, "layer_norm")?,
                slice(g, l2, "layer_norm")?,
                n,
                self.0,
            )?),
            _ => candle_core::bail!("layer_norm backward: mismatched or unsupported dtypes"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Whether the CPU kernels of this module (and `modulation`) run `x`: on the CPU, in f32 or f64.
pub(crate) fn kernel_applies(x: &Tensor) -> bool {
    super::kernels::fused_cpu(&[x], super::kernels::FULL)
}

/// Differentiable softmax over the last dimension (the kernel on CPU f32/f64, tensor ops elsewhere).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if kernel_applies(x) {
        return x.contiguous()?.apply_op1(Softmax);
    }
    // The max is a constant shift, so it needs no gradient.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Differentiable (x − mean) / √(var + eps) over the last dimension, without an affine transform.
pub fn normalize_last_dim(x: &Tensor, eps: f64) -> Result<Tensor> {
    if kernel_applies(x) {
        return x.contiguous()?.apply_op1(LayerNormOp(eps));
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + eps)?.sqrt()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use candle_core::{DType, Device, Var};

    fn composite_softmax(x: &Tensor) -> Tensor {
        let max = x.max_keepdim(D::Minus1).unwrap().detach();
        let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
        e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
    }

    fn composite_norm(x: &Tensor, eps: f64) -> Tensor {
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let c = x.broadcast_sub(&mean).unwrap();
        let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        c.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap()
    }

    /// Values and gradients equal the tensor-op definitions (f64: to rounding; f32: to f32 rounding).
    #[test]
    fn kernels_match_their_definitions_forward_and_backward() {
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            // Rows of 7 and of 300 values (the second spans several work items), offset and scaled.
            for (rows, n) in [(33usize, 7usize), (129, 300)] {
                let x = ((Tensor::randn(0f64, 1.0, (rows, n), &Device::Cpu).unwrap() * 3.0).unwrap() + 1.5)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let w = Tensor::randn(0f64, 1.0, (rows, n), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                type Op = fn(&Tensor) -> Tensor;
                let cases: [(Op, Op); 2] = [
                    (|x| softmax_last_dim(x).unwrap(), composite_softmax),
                    (|x| normalize_last_dim(x, 1e-6).unwrap(), |x| composite_norm(x, 1e-6)),
                ];
                for (kernel, reference) in cases {
                    let grads = |f: Op| {
                        let v = Var::from_tensor(&x).unwrap();
                        let y = f(v.as_tensor());
                        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                        (y, g.get(v.as_tensor()).unwrap().clone())
                    };
                    let (yk, gk) = grads(kernel);
                    let (yr, gr) = grads(reference);
                    assert!(
                        max_abs_diff(&yk, &yr) < tol,
                        "{dtype:?} forward {}",
                        max_abs_diff(&yk, &yr)
                    );
                    assert!(
                        max_abs_diff(&gk, &gr) < tol * 10.0,
                        "{dtype:?} backward {}",
                        max_abs_diff(&gk, &gr)
                    );
                }
            }
        }
    }
}
