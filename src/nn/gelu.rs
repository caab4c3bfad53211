//! GELU (tanh approximation) as a parallel CPU kernel with a real backward.
//!
//! candle's `gelu` runs on one thread and costs as much as the MLP's matmul it follows; this op splits the work
//! over rayon's threads and keeps gradients (its backward is the exact derivative, as a second parallel kernel).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::fastmath::{exp_f32, map_wide, zip_map_wide};
use crate::float::contiguous;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const COEF: f64 = 0.044_715;
const CHUNK: usize = 1 << 14;

#[inline(always)]
fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + COEF * x * x * x)).tanh())
}

/// sigmoid(2u) = 0.5 (1 + tanh u), with u the GELU's inner polynomial.
#[inline(always)]
fn gelu_gate_f32(x: f32) -> f32 {
    let (c, k) = (SQRT_2_OVER_PI as f32, COEF as f32);
    1.0 / (1.0 + exp_f32(-2.0 * c * (x + k * x * x * x)))
}

#[inline(always)]
fn gelu_f32(x: f32) -> f32 {
    x * gelu_gate_f32(x)
}

#[inline(always)]
fn dgelu_f64(x: f64) -> f64 {
    let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
    let th = u.tanh();
    0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x)
}

#[inline(always)]
fn dgelu_f32(x: f32) -> f32 {
    // With s = sigmoid(2u): 0.5 (1 + tanh u) = s and 1 - tanh² u = 4 s (1 - s).
    let (c, k) = (SQRT_2_OVER_PI as f32, COEF as f32);
    let s = gelu_gate_f32(x);
    s + 2.0 * x * s * (1.0 - s) * c * (1.0 + 3.0 * k * x * x)
}

fn map_parallel<T: Copy + Send + Sync>(src: &[T], f: impl Fn(T) -> T + Sync) -> Result<Vec<T>> {
    // SAFETY: the chunks below cover the whole output, each element written by the map.
    let mut out = unsafe { crate::limits::try_uninit(src.len(), "a GELU's output")? };
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(o, s)| map_wide(o, s, &f));
    Ok(out)
}

/// Applies `f32`/`f64` element functions to a CPU tensor in parallel.
/// (Generic rather than `fn` pointers, so the element functions inline and the loops vectorise.)
fn cpu_map<F32: Fn(f32) -> f32 + Sync, F64: Fn(f64) -> f64 + Sync>(
    storage: &CpuStorage,
    layout: &Layout,
    f32_fn: F32,
    f64_fn: F64,
) -> Result<(CpuStorage, Shape)> {
    let out = match storage {
        CpuStorage::F32(d) => CpuStorage::F32(map_parallel(contiguous(d, layout, "gelu")?, f32_fn)?),
        CpuStorage::F64(d) => CpuStorage::F64(map_parallel(contiguous(d, layout, "gelu")?, f64_fn)?),
        other => candle_core::bail!("gelu: unsupported dtype {:?} on CPU", other.dtype()),
    };
    Ok((out, layout.shape().clone()))
}

struct GeluTanh;
struct GeluTanhDerivative;
/// The backward pass in one pass over memory: `g · GELU'(x)` for the input x and the output's gradient g (the
/// derivative times the gradient as two ops would write and read the derivative once more).
struct GeluTanhBackward;

fn zip_map_parallel<T: Copy + Send + Sync>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Result<Vec<T>> {
    if a.len() != b.len() {
        candle_core::bail!(
            "gelu backward: input {} and gradient {} differ in size",
            a.len(),
            b.len()
        );
    }
    // SAFETY: the chunks below cover the whole output, each element written by the map.
    let mut out = unsafe { crate::limits::try_uninit(a.len(), "a GELU's input gradient")? };
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| zip_map_wide(o, a, b, &f));
    Ok(out)
}

impl candle_core::CustomOp2 for GeluTanhBackward {
    fn name(&self) -> &'static str {
        "gelu-tanh-backward"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(zip_map_parallel(
                contiguous(x, l1, "gelu")?,
                contiguous(g, l2, "gelu")?,
                |x, g| g * dgelu_f32(x),
            )?),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(zip_map_parallel(
                contiguous(x, l1, "gelu")?,
                contiguous(g, l2, "gelu")?,
                |x, g| g * dgelu_f64(x),
            )?),
            _ => candle_core::bail!("gelu backward: input and gradient must both be f32 or both f64"),
        };
        Ok((out, l1.shape().clone()))
    }
}

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh-parallel"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_map(storage, layout, gelu_f32, gelu_f64)
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (x, g) = (arg.contiguous()?, grad_res.contiguous()?);
        if x.dtype() == g.dtype() && x.device().is_cpu() && g.device().is_cpu() {
            return Ok(Some(x.apply_op2_no_bwd(&g, &GeluTanhBackward)?));
        }
        let slope = x.apply_op1_no_bwd(&GeluTanhDerivative)?;
        Ok(Some(grad_res.mul(&slope)?))
    }
}

impl CustomOp1 for GeluTanhDerivative {
    fn name(&self) -> &'static str {
        "gelu-tanh-derivative"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_map(storage, layout, dgelu_f32, dgelu_f64)
    }
}

/// GELU with the tanh approximation (PyTorch's `approximate="tanh"`), differentiable. On CPU in f32/f64 it runs
/// the parallel kernel; elsewhere candle's own `gelu`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if super::kernels::fused_cpu(&[x], super::kernels::FULL) {
        x.contiguous()?.apply_op1(GeluTanh)
    } else {
        x.gelu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn grid(dtype: candle_core::DType) -> Tensor {
        let x = Tensor::arange(-1000i64, 1000, &Device::Cpu)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        (x / 100.0).unwrap().to_dtype(dtype).unwrap()
    }

    fn max_abs(t: Tensor) -> f64 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn matches_candle_gelu_in_f64_and_f32() {
        let x = grid(candle_core::DType::F64);
        assert!(max_abs((gelu(&x).unwrap() - x.gelu().unwrap()).unwrap()) < 1e-12);
        let x32 = grid(candle_core::DType::F32);
        let err = (gelu(&x32).unwrap().to_dtype(candle_core::DType::F64).unwrap() - x.gelu().unwrap()).unwrap();
        assert!(max_abs(err) < 2e-6);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for dtype in [candle_core::DType::F64, candle_core::DType::F32] {
            let x = grid(dtype);
            let var = candle_core::Var::from_tensor(&x).unwrap();
            let grads = gelu(var.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            let analytic = grads
                .get(var.as_tensor())
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap();
            let x64 = x.to_dtype(candle_core::DType::F64).unwrap();
            let h = 1e-6;
            let numeric = ((gelu(&(&x64 + h).unwrap()).unwrap() - gelu(&(&x64 - h).unwrap()).unwrap()).unwrap()
                / (2.0 * h))
                .unwrap();
            let tol = if dtype == candle_core::DType::F64 { 1e-8 } else { 1e-5 };
            assert!(max_abs((analytic - numeric).unwrap()) < tol, "{dtype:?}");
        }
    }

    /// The fused backward (`g · GELU'(x)` in one pass) equals the derivative op times g, for a non-uniform g.
    #[test]
    fn fused_backward_equals_the_derivative_times_the_gradient() {
        for dtype in [candle_core::DType::F64, candle_core::DType::F32] {
            let x = grid(dtype);
            let g = Tensor::randn(0f64, 1.0, x.shape(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let var = candle_core::Var::from_tensor(&x).unwrap();
            let grads = (gelu(var.as_tensor()).unwrap() * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let fused = grads.get(var.as_tensor()).unwrap().clone();
            let plain = (x.apply_op1_no_bwd(&GeluTanhDerivative).unwrap() * &g).unwrap();
            assert_eq!(max_abs((fused - plain).unwrap()), 0.0, "{dtype:?}");
        }
    }
}
