//! Group normalisation (NCHW), as the VAE uses it. Frozen on the CPU it is one kernel (per-group statistics in
//! f64, then one pass applying the affine transform and optionally the SiLU that follows every group norm of the
//! VAE) where candle-nn's composition makes eight passes over the tensor; elsewhere it is that composition, which
//! is also what the kernel is tested against.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{run_kernel3, Kernel3};
use super::kernels::frozen_cpu;
use crate::fastmath::map_wide;
use crate::float::Float;

/// Group normalisation of (B, C, …) over groups of C/G channels, with a per-channel affine transform.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// `weight` and `bias` (C,), `groups` dividing C.
    pub fn new(weight: Tensor, bias: Tensor, groups: usize, eps: f64) -> Result<Self> {
        let c = weight.dims1()?;
        if groups == 0 || c % groups != 0 || bias.dims() != [c] {
            candle_core::bail!("group_norm: {groups} groups of {c} channels, bias {:?}", bias.dims());
        }
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
        })
    }

    /// The normalised x, followed by SiLU when `silu`.
    pub fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if frozen_cpu(&[x, &self.weight, &self.bias]) && x.rank() >= 2 && x.dim(1)? == self.weight.dim(0)? {
            let op = GroupNormOp {
                groups: self.groups,
                eps: self.eps,
                silu,
            };
            return x.contiguous()?.apply_op3_no_bwd(&self.weight, &self.bias, &op);
        }
        self.reference(x, silu)
    }

    /// candle-nn's group norm (and SiLU): the composition the kernel replaces.
    pub fn reference(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        let norm = candle_nn::GroupNorm::new(self.weight.clone(), self.bias.clone(), c, self.groups, self.eps)?;
        let y = candle_core::Module::forward(&norm, x)?;
        if silu {
            y.silu()
        } else {
            Ok(y)
        }
    }
}

struct GroupNormOp {
    groups: usize,
    eps: f64,
    silu: bool,
}

fn group_norm_fwd<T: Float>(x: &[T], w: &[T], b: &[T], (c, plane): (usize, usize), op: &GroupNormOp) -> Result<Vec<T>> {
    let group_len = c / op.groups * plane;
    // Per (image, group): the mean and 1/σ, from an f64 sum and a second pass for the variance.
    let stats: Vec<(f64, f64)> = x
        .par_chunks(group_len)
        .map(|g| {
            let n = g.len() as f64;
            let mean = g.iter().map(|&v| v.to_f64()).sum::<f64>() / n;
            let var = g.iter().map(|&v| (v.to_f64() - mean).powi(2)).sum::<f64>() / n;
            (mean, 1.0 / (var + op.eps).sqrt())
        })
        .collect();
    let mut y = crate::limits::try_filled(x.len(), T::ZERO, "a group normalisation's output")?;
    y.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .for_each(|(i, (out, xs))| {
            let ch = i % c;
            let (mean, rstd) = stats[i / (c / op.groups)];
            let scale = w[ch].to_f64() * rstd;
            let (a, shift) = (T::of(scale), T::of(b[ch].to_f64() - mean * scale));
            if op.silu {
                map_wide(out, xs, &|v: T| {
                    let t = v * a + shift;
                    t / (T::ONE + (T::ZERO - t).fast_exp())
                });
            } else {
                for (o, &v) in out.iter_mut().zip(xs) {
                    *o = v * a + shift;
                }
            }
        });
    Ok(y)
}

impl Kernel3 for (&GroupNormOp, (usize, usize)) {
    fn run<T: Float + 'static>(&self, x: &[T], w: &[T], b: &[T]) -> Result<Vec<T>> {
        group_norm_fwd(x, w, b, self.1, self.0)
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "group-norm"
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
        let dims = xl.dims();
        let planes = (dims[1], dims[2..].iter().product::<usize>());
        let y = run_kernel3(&(self, planes), self.name(), (xs, xl), (ws, wl), (bs, bl))?;
        Ok((y, xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_rel_diff;
    use candle_core::{DType, Device};

    #[test]
    fn group_norm_kernel_matches_candle_nn() {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            for &(b, c, h, w, g) in &[(2, 6, 5, 7, 3), (1, 8, 4, 4, 8), (3, 4, 9, 1, 1), (2, 12, 3, 5, 4)] {
                let x = (Tensor::randn(0f32, 2., (b, c, h, w), &dev).unwrap() + 0.7)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let norm = GroupNorm::new(
                    Tensor::randn(0f32, 1., c, &dev).unwrap().to_dtype(dtype).unwrap(),
                    Tensor::randn(0f32, 1., c, &dev).unwrap().to_dtype(dtype).unwrap(),
                    g,
                    1e-6,
                )
                .unwrap();
                for silu in [false, true] {
                    let err = max_rel_diff(&norm.forward(&x, silu).unwrap(), &norm.reference(&x, silu).unwrap());
                    let tol = if dtype == DType::F32 { 1e-5 } else { 1e-7 };
                    assert!(err < tol, "{:?} silu {silu} {dtype:?}: rel err {err}", (b, c, h, w, g));
                }
            }
        }
    }
}
