//! Linear layer over the last dimension (one GEMM for any number of leading dims, then the bias in one fused,
//! differentiable pass) and the transformer MLP.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::float::Float;

/// Rows per parallel work item of the bias kernels.
const ROWS_PER_ITEM: usize = 64;

/// `y + b` for y (rows, n) and b (n,). Backward: dy = g, db = the column sums of g, in one parallel pass (candle
/// sums a broadcast's gradient with a generic single-threaded strided reduction).
struct AddBias;

/// The column sums of a (rows, n) matrix.
struct ColumnSums;

fn add_bias<T: Float>(y: &[T], b: &[T]) -> Vec<T> {
    let n = b.len();
    let mut out = vec![T::ZERO; y.len()];
    out.par_chunks_mut(ROWS_PER_ITEM * n)
        .zip(y.par_chunks(ROWS_PER_ITEM * n))
        .for_each(|(out, y)| {
            for (o, yr) in out.chunks_mut(n).zip(y.chunks(n)) {
                for i in 0..n {
                    o[i] = yr[i] + b[i];
                }
            }
        });
    out
}

fn column_sums<T: Float>(g: &[T], n: usize) -> Vec<T> {
    let partial: Vec<Vec<T>> = g
        .par_chunks(ROWS_PER_ITEM * n)
        .map(|rows| {
            let mut acc = vec![T::ZERO; n];
            for r in rows.chunks(n) {
                acc.iter_mut().zip(r).for_each(|(a, &v)| *a += v);
            }
            acc
        })
        .collect();
    let mut out = vec![T::ZERO; n];
    for p in &partial {
        out.iter_mut().zip(p).for_each(|(o, &v)| *o += v);
    }
    out
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: operands must be contiguous"),
    }
}

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "add-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(y), CpuStorage::F32(b)) => CpuStorage::F32(add_bias(
                contiguous(y, l1, self.name())?,
                contiguous(b, l2, self.name())?,
            )),
            (CpuStorage::F64(y), CpuStorage::F64(b)) => CpuStorage::F64(add_bias(
                contiguous(y, l1, self.name())?,
                contiguous(b, l2, self.name())?,
            )),
            _ => candle_core::bail!("add-bias: operands must both be f32 or both f64"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, _y: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = grad.contiguous()?.apply_op1_no_bwd(&ColumnSums)?.reshape(b.shape())?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

impl candle_core::CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = l.dims().last().copied().unwrap_or(1);
        let out = match s {
            CpuStorage::F32(g) => CpuStorage::F32(column_sums(contiguous(g, l, self.name())?, n)),
            CpuStorage::F64(g) => CpuStorage::F64(column_sums(contiguous(g, l, self.name())?, n)),
            other => candle_core::bail!("column-sums: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, Shape::from_dims(&[n])))
    }
}

/// `y + b` over the rows of y (rows, n): the fused kernel on the CPU, a broadcast add elsewhere.
fn plus_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if super::rowwise::kernel_applies(y) && b.dtype() == y.dtype() && b.device().is_cpu() && b.rank() == 1 {
        y.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
    } else {
        y.broadcast_add(b)
    }
}

/// `y = x Wᵀ + b` with PyTorch's weight layout `(out, in)`.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Reads `weight` (out, in) and, if `bias`, `bias` (out,) under `vb`.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Ok(Self { weight, bias })
    }

    /// A layer from its weight `(out, in)` and optional bias (e.g. a patch convolution's weight, flattened).
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        // One 2D GEMM instead of a batched one: faster, and candle's matmul wants contiguous operands.
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => plus_bias(&y, b)?,
            None => y,
        };
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 1] = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}

/// The transformer MLP (timm's `Mlp`): fc1, GELU (tanh approximation), fc2.
#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(dim, hidden, true, vb.pp("fc1"))?,
            fc2: Linear::new(hidden, dim, true, vb.pp("fc2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&super::gelu::gelu(&self.fc1.forward(x)?)?)
    }
}

impl Linear {
    /// The parameters' dtype.
    pub fn dtype(&self) -> candle_core::DType {
        self.weight.dtype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use candle_core::{DType, Device, Var};

    /// The fused bias add equals the broadcast add, forward and both gradients, in f32 and f64, on odd sizes.
    #[test]
    fn bias_kernel_matches_the_broadcast_add() {
        for dtype in [DType::F64, DType::F32] {
            for (rows, n) in [(1usize, 1usize), (7, 13), (200, 97)] {
                let y = Tensor::randn(0f64, 1.0, (rows, n), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let b = Tensor::randn(0f64, 1.0, n, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let w = Tensor::randn(0f64, 1.0, (rows, n), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let run = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
                    let (vy, vb) = (Var::from_tensor(&y).unwrap(), Var::from_tensor(&b).unwrap());
                    let out = f(vy.as_tensor(), vb.as_tensor());
                    let g = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
                    [
                        out,
                        g.get(vy.as_tensor()).unwrap().clone(),
                        g.get(vb.as_tensor()).unwrap().clone(),
                    ]
                };
                let fused = run(&|y, b| plus_bias(y, b).unwrap());
                let plain = run(&|y, b| y.broadcast_add(b).unwrap());
                let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
                for (a, e) in fused.iter().zip(&plain) {
                    let scale = crate::test_util::max_abs(e).max(1.0);
                    assert!(max_abs_diff(a, e) <= tol * scale, "{dtype:?} {rows}x{n}");
                }
            }
        }
    }
}
