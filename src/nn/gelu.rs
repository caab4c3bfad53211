//! GELU (tanh approximation) as a parallel CPU kernel with a real backward.
//!
//! candle's `gelu` runs on one thread and costs as much as the MLP's matmul it follows; this op splits the work
//! over rayon's threads and keeps gradients (its backward is the exact derivative, as a second parallel kernel).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const COEF: f64 = 0.044_715;
const CHUNK: usize = 1 << 14;

fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + COEF * x * x * x)).tanh())
}

/// e^x for f32 in straight-line arithmetic (no libm call), so the loops around it vectorise: x = n ln2 + r with
/// |r| <= ln2/2, e^r by its Taylor series to degree 7 (relative error < 1e-8 on that range), 2^n from the exponent
/// bits. Inputs are clamped to [-87, 88], where f32 neither overflows nor goes subnormal.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// sigmoid(2u) = 0.5 (1 + tanh u), with u the GELU's inner polynomial.
#[inline(always)]
fn gelu_gate_f32(x: f32) -> f32 {
    let (c, k) = (SQRT_2_OVER_PI as f32, COEF as f32);
    1.0 / (1.0 + exp_f32(-2.0 * c * (x + k * x * x * x)))
}

fn gelu_f32(x: f32) -> f32 {
    x * gelu_gate_f32(x)
}

fn dgelu_f64(x: f64) -> f64 {
    let u = SQRT_2_OVER_PI * (x + COEF * x * x * x);
    let th = u.tanh();
    0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * COEF * x * x)
}

fn dgelu_f32(x: f32) -> f32 {
    // With s = sigmoid(2u): 0.5 (1 + tanh u) = s and 1 - tanh² u = 4 s (1 - s).
    let (c, k) = (SQRT_2_OVER_PI as f32, COEF as f32);
    let s = gelu_gate_f32(x);
    s + 2.0 * x * s * (1.0 - s) * c * (1.0 + 3.0 * k * x * x)
}

fn map_parallel<T: Copy + Send + Sync + Default>(src: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(o, s)| {
            for (o, s) in o.iter_mut().zip(s) {
                *o = f(*s);
            }
        });
    out
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("gelu: input must be contiguous"),
    }
}

/// Applies `f32`/`f64` element functions to a CPU tensor in parallel.
fn cpu_map(
    storage: &CpuStorage,
    layout: &Layout,
    f32_fn: fn(f32) -> f32,
    f64_fn: fn(f64) -> f64,
) -> Result<(CpuStorage, Shape)> {
    let out = match storage {
        CpuStorage::F32(d) => CpuStorage::F32(map_parallel(contiguous(d, layout)?, f32_fn)),
        CpuStorage::F64(d) => CpuStorage::F64(map_parallel(contiguous(d, layout)?, f64_fn)),
        other => candle_core::bail!("gelu: unsupported dtype {:?} on CPU", other.dtype()),
    };
    Ok((out, layout.shape().clone()))
}

struct GeluTanh;
struct GeluTanhDerivative;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh-parallel"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_map(storage, layout, gelu_f32, gelu_f64)
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let slope = arg.contiguous()?.apply_op1_no_bwd(&GeluTanhDerivative)?;
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
    if x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
    {
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
        let err = (gelu(&x32)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            - x.gelu().unwrap())
        .unwrap();
        assert!(max_abs(err) < 2e-6);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for dtype in [candle_core::DType::F64, candle_core::DType::F32] {
            let x = grid(dtype);
            let var = candle_core::Var::from_tensor(&x).unwrap();
            let grads = gelu(var.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let analytic = grads
                .get(var.as_tensor())
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap();
            let x64 = x.to_dtype(candle_core::DType::F64).unwrap();
            let h = 1e-6;
            let numeric = ((gelu(&(&x64 + h).unwrap()).unwrap()
                - gelu(&(&x64 - h).unwrap()).unwrap())
            .unwrap()
                / (2.0 * h))
                .unwrap();
            let tol = if dtype == candle_core::DType::F64 {
                1e-8
            } else {
                1e-5
            };
            assert!(max_abs((analytic - numeric).unwrap()) < tol, "{dtype:?}");
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in -870..880 {
            let x = i as f32 / 10.0;
            let (ours, exact) = (exp_f32(x) as f64, (x as f64).exp());
            assert!(
                ((ours - exact) / exact).abs() < 3e-7,
                "exp({x}): {ours} vs {exact}"
            );
        }
    }
}
