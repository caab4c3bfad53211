//! Linear layer over the last dimension and the transformer MLP.
//!
//! On the CPU (f32, f64) the layer is one differentiable op: `y = x Wᵀ + b` as one GEMM over the rows (the bias
//! written first, the product accumulated onto it), and a backward pass of two GEMMs (`dx = g W`, `dW = gᵀ x`)
//! and the column sums of g (`db`). Written as candle ops (a matmul, then a broadcast add) the layer would keep
//! both the product and the biased output alive for the backward pass — a second copy of every linear output —
//! and sum the bias gradient with candle's single-threaded strided reduction.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::gemm::{contiguous, gemm_into, linear_dims, run_kernel3, Kernel3};
use crate::float::Float;
use crate::limits::{try_filled, try_uninit};

/// Rows per parallel work item of the bias kernels.
const ROWS_PER_ITEM: usize = 64;

/// `y + b` for y (rows, n) and b (n,). Backward: dy = g, db = the column sums of g, in one parallel pass (candle
/// sums a broadcast's gradient with a generic single-threaded strided reduction).
struct AddBias;

/// The column sums of a (rows, n) matrix.
struct ColumnSums;

fn add_bias<T: Float>(y: &[T], b: &[T]) -> Result<Vec<T>> {
    let n = b.len();
    if n == 0 {
        return try_filled(y.len(), T::ZERO, "a biased linear output");
    }
    // SAFETY: every row of `out` is written below (rows of y and out have the same lengths, n each).
    let mut out = unsafe { try_uninit(y.len(), "a biased linear output")? };
    out.par_chunks_mut(ROWS_PER_ITEM * n)
        .zip(y.par_chunks(ROWS_PER_ITEM * n))
        .for_each(|(out, y)| {
            for (o, yr) in out.chunks_mut(n).zip(y.chunks(n)) {
                for ((o, &v), &bias) in o.iter_mut().zip(yr).zip(b) {
                    *o = v + bias;
                }
            }
        });
    Ok(out)
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

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "add-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(y), CpuStorage::F32(b)) => CpuStorage::F32(add_bias(
                contiguous(y, l1, self.name())?,
                contiguous(b, l2, self.name())?,
            )?),
            (CpuStorage::F64(y), CpuStorage::F64(b)) => CpuStorage::F64(add_bias(
                contiguous(y, l1, self.name())?,
                contiguous(b, l2, self.name())?,
            )?),
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

/// The column sums of g (rows, n): a linear layer's bias gradient (no gradient of its own).
pub(crate) fn column_sums_of(g: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op1_no_bwd(&ColumnSums)
}

/// `x Wᵀ + b` for x (rows, in), W (out, in), b (out,).
struct LinearOp;
/// `g W` (rows, in) for g (rows, out), W (out, in).
struct LinearInputGrad;
/// `gᵀ x` (out, in) for g (rows, out), x (rows, in).
struct LinearWeightGrad;

/// Rows of bias per task of the output's fill (a few hundred KB at the usual widths).
const BIAS_FILL_ROWS: usize = 256;

fn linear_fwd<T: Float + 'static>(
    x: &[T],
    w: &[T],
    b: &[T],
    (rows, input, out): (usize, usize, usize),
) -> Result<Vec<T>> {
    // SAFETY: every row is set to the bias below before the GEMM reads it.
    let mut y = unsafe { try_uninit(rows * out, "a linear layer's output")? };
    // The bias rows on rayon's threads: a serial fill was 5 ms of the demo model's 165 ms step, on one core.
    if out > 0 {
        y.par_chunks_mut(out * BIAS_FILL_ROWS)
            .for_each(|block| block.chunks_exact_mut(out).for_each(|row| row.copy_from_slice(b)));
    }
    // SAFETY: y is rows × out, x rows × in and W out × in, all contiguous; Wᵀ is W read with swapped strides.
    unsafe {
        gemm_into(
            (rows, out, input),
            (&mut y, out, 1),
            (x, input, 1),
            (w, 1, input),
            T::ONE,
            T::ONE,
        )
    };
    Ok(y)
}

fn linear_dx<T: Float + 'static>(g: &[T], w: &[T], (rows, input, out): (usize, usize, usize)) -> Result<Vec<T>> {
    if out == 0 {
        return try_filled(rows * input, T::ZERO, "a linear layer's input gradient");
    }
    // SAFETY: the GEMM below overwrites every element (alpha = 0: the destination is not read).
    let mut dx = unsafe { try_uninit(rows * input, "a linear layer's input gradient")? };
    // SAFETY: dx rows × in, g rows × out, W out × in, all contiguous.
    unsafe {
        gemm_into(
            (rows, input, out),
            (&mut dx, input, 1),
            (g, out, 1),
            (w, input, 1),
            T::ZERO,
            T::ONE,
        )
    };
    Ok(dx)
}

fn linear_dw<T: Float + 'static>(g: &[T], x: &[T], (rows, input, out): (usize, usize, usize)) -> Result<Vec<T>> {
    if rows == 0 {
        return try_filled(out * input, T::ZERO, "a linear layer's weight gradient");
    }
    // SAFETY: the GEMM below overwrites every element (alpha = 0: the destination is not read).
    let mut dw = unsafe { try_uninit(out * input, "a linear layer's weight gradient")? };
    // SAFETY: dW out × in, gᵀ is g (rows × out) read with swapped strides, x rows × in; all contiguous.
    unsafe {
        gemm_into(
            (out, input, rows),
            (&mut dw, input, 1),
            (g, 1, out),
            (x, input, 1),
            T::ZERO,
            T::ONE,
        )
    };
    Ok(dw)
}

/// x·Wᵀ + b for these (rows, in, out).
struct LinearDims((usize, usize, usize));

impl Kernel3 for LinearDims {
    fn run<T: Float + 'static>(&self, x: &[T], w: &[T], b: &[T]) -> Result<Vec<T>> {
        linear_fwd(x, w, b, self.0)
    }
}

impl candle_core::CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = linear_dims(xl, wl)?;
        let y = run_kernel3(&LinearDims(dims), self.name(), (xs, xl), (ws, wl), (bs, bl))?;
        Ok((y, Shape::from_dims(&[dims.0, dims.2])))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let dx = g.apply_op2_no_bwd(w, &LinearInputGrad)?;
        let dw = g.apply_op2_no_bwd(x, &LinearWeightGrad)?;
        let db = g.apply_op1_no_bwd(&ColumnSums)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp2 for LinearInputGrad {
    fn name(&self) -> &'static str {
        "linear-input-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, out) = gl.shape().dims2()?;
        let (out2, input) = wl.shape().dims2()?;
        if out != out2 {
            candle_core::bail!(
                "linear backward: gradient {:?} and weight {:?} do not fit",
                gl.dims(),
                wl.dims()
            );
        }
        let (n, dims) = (self.name(), (rows, input, out));
        let dx = match (gs, ws) {
            (CpuStorage::F32(g), CpuStorage::F32(w)) => {
                CpuStorage::F32(linear_dx(contiguous(g, gl, n)?, contiguous(w, wl, n)?, dims)?)
            }
            (CpuStorage::F64(g), CpuStorage::F64(w)) => {
                CpuStorage::F64(linear_dx(contiguous(g, gl, n)?, contiguous(w, wl, n)?, dims)?)
            }
            _ => candle_core::bail!("linear backward: operands must both be f32 or both f64"),
        };
        Ok((dx, Shape::from_dims(&[rows, input])))
    }
}

impl CustomOp2 for LinearWeightGrad {
    fn name(&self) -> &'static str {
        "linear-weight-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, out) = gl.shape().dims2()?;
        let (rows2, input) = xl.shape().dims2()?;
        if rows != rows2 {
            candle_core::bail!(
                "linear backward: gradient {:?} and input {:?} do not fit",
                gl.dims(),
                xl.dims()
            );
        }
        let (n, dims) = (self.name(), (rows, input, out));
        let dw = match (gs, xs) {
            (CpuStorage::F32(g), CpuStorage::F32(x)) => {
                CpuStorage::F32(linear_dw(contiguous(g, gl, n)?, contiguous(x, xl, n)?, dims)?)
            }
            (CpuStorage::F64(g), CpuStorage::F64(x)) => {
                CpuStorage::F64(linear_dw(contiguous(g, gl, n)?, contiguous(x, xl, n)?, dims)?)
            }
            _ => candle_core::bail!("linear backward: operands must both be f32 or both f64"),
        };
        Ok((dw, Shape::from_dims(&[out, input])))
    }
}

/// `y + b` over the rows of y (rows, n): the fused kernel on the CPU, a broadcast add elsewhere.
fn plus_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if super::kernels::fused_same_dtype(&[y, b], super::kernels::FULL) && b.rank() == 1 {
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
        let x = x.reshape((rows, in_dim))?;
        let fused = |b: &Tensor| super::kernels::fused_same_dtype(&[&x, &self.weight, b], super::kernels::FULL);
        let y = match &self.bias {
            b if super::autocast::applies(&x, &self.weight, b.as_ref()) => {
                let zeros;
                let b = match b {
                    Some(b) => b,
                    None => {
                        zeros = Tensor::zeros(self.weight.dim(0)?, x.dtype(), x.device())?;
                        &zeros
                    }
                };
                super::autocast::linear_bf16(&x, &self.weight, b)?
            }
            Some(b) if fused(b) => x
                .contiguous()?
                .apply_op3(&self.weight.contiguous()?, &b.contiguous()?, LinearOp)?,
            Some(b) => plus_bias(&x.matmul(&self.weight.t()?)?, b)?,
            None => x.matmul(&self.weight.t()?)?,
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

    /// The fused layer equals matmul + broadcast add, forward and the gradients of x, W and b, in f32 and f64.
    #[test]
    fn linear_kernel_matches_matmul_and_bias() {
        for dtype in [DType::F64, DType::F32] {
            for (rows, input, out) in [(1usize, 1usize, 1usize), (7, 5, 13), (130, 33, 97)] {
                let randn = |dims: &[usize]| {
                    Tensor::randn(0f64, 1.0, dims, &Device::Cpu)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let (x, w, b) = (randn(&[rows, input]), randn(&[out, input]), randn(&[out]));
                let weights = randn(&[rows, out]);
                let run = |fused: bool| {
                    let vars: Vec<Var> = [&x, &w, &b].iter().map(|t| Var::from_tensor(t).unwrap()).collect();
                    let layer = Linear::from_parts(vars[1].as_tensor().clone(), Some(vars[2].as_tensor().clone()));
                    let out = if fused {
                        layer.forward(vars[0].as_tensor()).unwrap()
                    } else {
                        plus_bias(
                            &vars[0].as_tensor().matmul(&vars[1].as_tensor().t().unwrap()).unwrap(),
                            vars[2].as_tensor(),
                        )
                        .unwrap()
                    };
                    let g = (&out * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                    let mut all = vec![out];
                    all.extend(vars.iter().map(|v| g.get(v.as_tensor()).unwrap().clone()));
                    all
                };
                let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
                for (a, e) in run(true).iter().zip(&run(false)) {
                    let scale = crate::test_util::max_abs(e).max(1.0);
                    assert!(max_abs_diff(a, e) <= tol * scale, "{dtype:?} {rows}x{input}x{out}");
                }
            }
        }
    }

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
