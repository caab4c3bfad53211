//! adaLN's two elementwise steps as fused, differentiable CPU kernels:
//!
//! - `norm_modulate(x, shift, scale)` = LayerNorm(x) · (1 + scale) + shift (no affine LayerNorm, as adaLN-Zero),
//! - `gated_add(x, y, gate)` = x + y · gate (the gated residual),
//!
//! with the conditioning vectors (one row of D per sequence, or one per clip) broadcast over the tokens. Written
//! with tensor ops, each is two or three broadcast ops forward, and backward candle sums the broadcast gradients
//! with its generic strided reduction, one value at a time on one thread: a sixth of a small model's train step.
//! Here each is one parallel pass forward and one backward, the backward computing every input's gradient at
//! once; the LayerNorm statistics are recomputed from the saved input instead of saving the normalised tensor.
//!
//! Derivatives (per row of n values, h = (x − mean) · r, r = 1/√(var + eps), m = 1 + scale):
//! - d shift = Σ g, d scale = Σ g ⊙ h (over the rows sharing the vector), dx = r · (gm − mean(gm) − h · mean(gm ⊙ h))
//!   with gm = g ⊙ m;
//! - gated_add: dx = g, dy = g ⊙ gate, d gate = Σ g ⊙ y.
//!
//! Elsewhere (another device or dtype) the same functions run as the tensor-op compositions, which the tests check
//! the kernels against.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::fastmath::wide;
use crate::float::{lane_sums2, moments, run_kernel3, Float, Kernel3};
use crate::limits::{try_uninit, try_with_capacity};

/// How rows of x (its last dimension) map to the rows of a broadcast conditioning tensor.
#[derive(Clone, Debug)]
struct Broadcast {
    /// Values per row (D).
    dim: usize,
    /// Rows of x per group (the second-to-last dimension, L); a group shares one conditioning row.
    rows: usize,
    /// The conditioning row of each group.
    cond_row: Vec<usize>,
    /// Rows of the conditioning tensor.
    cond_rows: usize,
}

impl Broadcast {
    /// x (…, L, D); cond (…, 1, D) with each leading dimension equal to x's or 1.
    fn new(x: &[usize], cond: &[usize], op: &str) -> Result<Self> {
        let r = x.len();
        let fits = r >= 2
            && cond.len() == r
            && cond[r - 2] == 1
            && cond[r - 1] == x[r - 1]
            && x[..r - 2].iter().zip(&cond[..r - 2]).all(|(&a, &c)| c == a || c == 1);
        if !fits {
            candle_core::bail!("{op}: conditioning of shape {cond:?} does not broadcast over {x:?} as (…, 1, D)");
        }
        let lead = &x[..r - 2];
        let groups: usize = lead.iter().product();
        // Row-major strides of the conditioning tensor's leading dims, 0 where it broadcasts.
        let mut strides = vec![0usize; lead.len()];
        let mut acc = 1;
        for i in (0..lead.len()).rev() {
            strides[i] = if cond[i] == 1 { 0 } else { acc };
            acc *= cond[i];
        }
        let cond_row = (0..groups)
            .map(|mut g| {
                let mut row = 0;
                for i in (0..lead.len()).rev() {
                    row += (g % lead[i]) * strides[i];
                    g /= lead[i];
                }
                row
            })
            .collect();
        Ok(Self {
            dim: x[r - 1],
            rows: x[r - 2],
            cond_row,
            cond_rows: acc,
        })
    }

    fn group_len(&self) -> usize {
        self.rows * self.dim
    }

    /// Sums per-group partial vectors (groups × k·D) into the conditioning rows (cond_rows × k·D).
    fn reduce<T: Float>(&self, partial: &[T], k: usize) -> Vec<T> {
        let width = k * self.dim;
        let mut out = vec![T::ZERO; self.cond_rows * width];
        for (g, part) in partial.chunks(width).enumerate() {
            let row = &mut out[self.cond_row[g] * width..(self.cond_row[g] + 1) * width];
            row.iter_mut().zip(part).for_each(|(o, &p)| *o += p);
        }
        out
    }
}

fn norm_modulate_fwd<T: Float>(x: &[T], shift: &[T], scale: &[T], b: &Broadcast, eps: f64) -> Result<Vec<T>> {
    let (d, eps) = (b.dim, T::of(eps));
    // SAFETY: the loop below writes every element (each group's rows, all d values of each).
    let mut out = unsafe { try_uninit(x.len(), "a modulated LayerNorm's output")? };
    out.par_chunks_mut(b.group_len())
        .zip(x.par_chunks(b.group_len()))
        .enumerate()
        .for_each(|(g, (out, x))| {
            let c = b.cond_row[g] * d;
            let (sh, sc) = (&shift[c..c + d], &scale[c..c + d]);
            wide(
                #[inline(always)]
                || {
                    // Zipped iterators, not indices: the rows' lengths are then known, so the loops carry no
                    // bounds checks and vectorise.
                    for (o, xr) in out.chunks_mut(d).zip(x.chunks(d)) {
                        let (mean, rstd) = moments(xr, eps);
                        for (((o, &x), &s), &h) in o.iter_mut().zip(xr).zip(sc).zip(sh) {
                            *o = (x - mean) * rstd * (T::ONE + s) + h;
                        }
                    }
                },
            )
        });
    Ok(out)
}

/// The gradients of x, shift and scale, packed one after the other.
fn norm_modulate_bwd<T: Float>(x: &[T], scale: &[T], g: &[T], b: &Broadcast, eps: f64) -> Result<Vec<T>> {
    let (d, eps) = (b.dim, T::of(eps));
    let nf = T::from_usize(d);
    let groups = b.cond_row.len();
    // Room for the packed shift and scale gradients after dx.
    let mut dx = try_with_capacity(x.len() + 2 * b.cond_rows * d, GRADIENTS)?;
    // SAFETY: within the capacity; T is Copy, and the loop below writes all x.len() elements before any is read.
    unsafe { dx.set_len(x.len()) };
    // Per group: Σ g (d shift) then Σ g ⊙ h (d scale).
    let mut partial = vec![T::ZERO; groups * 2 * d];
    dx.par_chunks_mut(b.group_len())
        .zip(partial.par_chunks_mut(2 * d))
        .enumerate()
        .for_each(|(grp, (dx, part))| {
            let c = b.cond_row[grp] * d;
            let sc = &scale[c..c + d];
            let start = grp * b.group_len();
            let (xg, gg) = (&x[start..start + b.group_len()], &g[start..start + b.group_len()]);
            let (d_shift, d_scale) = part.split_at_mut(d);
            wide(
                #[inline(always)]
                || {
                    for ((dxr, xr), gr) in dx.chunks_mut(d).zip(xg.chunks(d)).zip(gg.chunks(d)) {
                        let (mean, rstd) = moments(xr, eps);
                        for (((ds, dc), &g), &x) in d_shift.iter_mut().zip(d_scale.iter_mut()).zip(gr).zip(xr) {
                            *ds += g;
                            *dc += g * ((x - mean) * rstd);
                        }
                        // Σ g(1 + scale) and Σ g(1 + scale)·h in lanes (a single running sum is a serial chain).
                        let (sum_gm, sum_gmh) = lane_sums2(gr, xr, sc, |g, x, s| {
                            let gm = g * (T::ONE + s);
                            (gm, gm * ((x - mean) * rstd))
                        });
                        let (mean_gm, mean_gmh) = (sum_gm / nf, sum_gmh / nf);
                        for (((dx, &g), &x), &s) in dxr.iter_mut().zip(gr).zip(xr).zip(sc) {
                            let h = (x - mean) * rstd;
                            *dx = rstd * (g * (T::ONE + s) - mean_gm - h * mean_gmh);
                        }
                    }
                },
            )
        });
    let sums = b.reduce(&partial, 2);
    let (d_shift, d_scale): (Vec<T>, Vec<T>) = {
        let mut shift = Vec::with_capacity(b.cond_rows * d);
        let mut scale = Vec::with_capacity(b.cond_rows * d);
        for row in sums.chunks(2 * d) {
            shift.extend_from_slice(&row[..d]);
            scale.extend_from_slice(&row[d..]);
        }
        (shift, scale)
    };
    dx.extend(d_shift);
    dx.extend(d_scale);
    Ok(dx)
}

fn gated_add_fwd<T: Float>(x: &[T], y: &[T], gate: &[T], b: &Broadcast) -> Result<Vec<T>> {
    let d = b.dim;
    // SAFETY: the loop below writes every element.
    let mut out = unsafe { try_uninit(x.len(), "a gated residual's output")? };
    out.par_chunks_mut(b.group_len()).enumerate().for_each(|(grp, out)| {
        let c = b.cond_row[grp] * d;
        let gt = &gate[c..c + d];
        let start = grp * b.group_len();
        let (xg, yg) = (&x[start..start + b.group_len()], &y[start..start + b.group_len()]);
        wide(
            #[inline(always)]
            || {
                for ((o, xr), yr) in out.chunks_mut(d).zip(xg.chunks(d)).zip(yg.chunks(d)) {
                    for (((o, &x), &y), &g) in o.iter_mut().zip(xr).zip(yr).zip(gt) {
                        *o = x + y * g;
                    }
                }
            },
        )
    });
    Ok(out)
}

/// The gradients of y and gate, packed one after the other (x's is the incoming gradient itself).
fn gated_add_bwd<T: Float>(y: &[T], gate: &[T], g: &[T], b: &Broadcast) -> Result<Vec<T>> {
    let d = b.dim;
    let groups = b.cond_row.len();
    // Room for the packed gate gradient after dy.
    let mut dy = try_with_capacity(y.len() + b.cond_rows * d, GRADIENTS)?;
    // SAFETY: within the capacity; T is Copy, and the loop below writes all y.len() elements before any is read.
    unsafe { dy.set_len(y.len()) };
    let mut partial = vec![T::ZERO; groups * d];
    dy.par_chunks_mut(b.group_len())
        .zip(partial.par_chunks_mut(d))
        .enumerate()
        .for_each(|(grp, (dy, d_gate))| {
            let c = b.cond_row[grp] * d;
            let gt = &gate[c..c + d];
            let start = grp * b.group_len();
            let (yg, gg) = (&y[start..start + b.group_len()], &g[start..start + b.group_len()]);
            wide(
                #[inline(always)]
                || {
                    for ((dyr, yr), gr) in dy.chunks_mut(d).zip(yg.chunks(d)).zip(gg.chunks(d)) {
                        for (((dy, dg), &g), (&y, &t)) in
                            dyr.iter_mut().zip(d_gate.iter_mut()).zip(gr).zip(yr.iter().zip(gt))
                        {
                            *dy = g * t;
                            *dg += g * y;
                        }
                    }
                },
            )
        });
    dy.extend(b.reduce(&partial, 1));
    Ok(dy)
}

/// The packed gradients of the backward kernels, for memory errors.
const GRADIENTS: &str = "the gradients of a modulation";

/// Which of the four kernels a [`ModulationKernel`] runs.
#[derive(Clone, Copy)]
enum Kind {
    NormFwd,
    NormBwd,
    GatedFwd,
    GatedBwd,
}

/// The modulation kernels with their broadcast (and LayerNorm eps), for [`run_kernel3`]'s dtype dispatch.
struct ModulationKernel<'a> {
    kind: Kind,
    b: &'a Broadcast,
    eps: f64,
}

impl Kernel3 for ModulationKernel<'_> {
    fn run<T: Float + 'static>(&self, a: &[T], b: &[T], c: &[T]) -> Result<Vec<T>> {
        match self.kind {
            Kind::NormFwd => norm_modulate_fwd(a, b, c, self.b, self.eps),
            Kind::NormBwd => norm_modulate_bwd(a, b, c, self.b, self.eps),
            Kind::GatedFwd => gated_add_fwd(a, b, c, self.b),
            Kind::GatedBwd => gated_add_bwd(a, b, c, self.b),
        }
    }
}

/// LayerNorm(x) · (1 + scale) + shift; arguments x, shift, scale.
struct NormModulate {
    eps: f64,
}

/// Its backward; arguments x, scale, grad. Output: dx, d shift, d scale packed.
struct NormModulateBackward {
    eps: f64,
    shift_dims: Vec<usize>,
}

impl CustomOp3 for NormModulate {
    fn name(&self) -> &'static str {
        "norm-modulate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = Broadcast::new(l1.dims(), l2.dims(), self.name())?;
        let eps = self.eps;
        let out = run_kernel3(
            &ModulationKernel {
                kind: Kind::NormFwd,
                b: &b,
                eps,
            },
            self.name(),
            (s1, l1),
            (s2, l2),
            (s3, l3),
        )?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = NormModulateBackward {
            eps: self.eps,
            shift_dims: shift.dims().to_vec(),
        };
        let packed = x.apply_op3_no_bwd(scale, &grad.contiguous()?, &op)?;
        let (nx, nc) = (x.elem_count(), shift.elem_count());
        let dx = packed.narrow(0, 0, nx)?.reshape(x.shape())?;
        let d_shift = packed.narrow(0, nx, nc)?.reshape(shift.shape())?;
        let d_scale = packed.narrow(0, nx + nc, nc)?.reshape(scale.shape())?;
        Ok((Some(dx), Some(d_shift), Some(d_scale)))
    }
}

impl CustomOp3 for NormModulateBackward {
    fn name(&self) -> &'static str {
        "norm-modulate-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = Broadcast::new(l1.dims(), &self.shift_dims, self.name())?;
        let eps = self.eps;
        let out = run_kernel3(
            &ModulationKernel {
                kind: Kind::NormBwd,
                b: &b,
                eps,
            },
            self.name(),
            (s1, l1),
            (s2, l2),
            (s3, l3),
        )?;
        let len = l1.shape().elem_count() + 2 * b.cond_rows * b.dim;
        Ok((out, Shape::from_dims(&[len])))
    }
}

/// x + y · gate; arguments x, y, gate.
struct GatedAdd;

/// Its backward; arguments y, gate, grad. Output: dy, d gate packed.
struct GatedAddBackward;

impl CustomOp3 for GatedAdd {
    fn name(&self) -> &'static str {
        "gated-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = Broadcast::new(l1.dims(), l3.dims(), self.name())?;
        let out = run_kernel3(
            &ModulationKernel {
                kind: Kind::GatedFwd,
                b: &b,
                eps: 0.0,
            },
            self.name(),
            (s1, l1),
            (s2, l2),
            (s3, l3),
        )?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        y: &Tensor,
        gate: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let packed = y.apply_op3_no_bwd(gate, &grad, &GatedAddBackward)?;
        let n = y.elem_count();
        let dy = packed.narrow(0, 0, n)?.reshape(y.shape())?;
        let d_gate = packed.narrow(0, n, gate.elem_count())?.reshape(gate.shape())?;
        Ok((Some(grad), Some(dy), Some(d_gate)))
    }
}

impl CustomOp3 for GatedAddBackward {
    fn name(&self) -> &'static str {
        "gated-add-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = Broadcast::new(l1.dims(), l2.dims(), self.name())?;
        let out = run_kernel3(
            &ModulationKernel {
                kind: Kind::GatedBwd,
                b: &b,
                eps: 0.0,
            },
            self.name(),
            (s1, l1),
            (s2, l2),
            (s3, l3),
        )?;
        let len = l1.shape().elem_count() + b.cond_rows * b.dim;
        Ok((out, Shape::from_dims(&[len])))
    }
}

/// Whether the kernels run `x` with conditioning `cond` (CPU, f32/f64, the same dtype, a (…, 1, D) broadcast).
fn fused(x: &Tensor, cond: &[&Tensor]) -> bool {
    let operands: Vec<&Tensor> = std::iter::once(x).chain(cond.iter().copied()).collect();
    super::kernels::fused_same_dtype(&operands, super::kernels::FULL)
        && cond.iter().all(|c| Broadcast::new(x.dims(), c.dims(), "").is_ok())
}

/// LayerNorm(x) (no affine) · (1 + scale) + shift, with shift and scale (…, 1, D) broadcast over x's tokens
/// (…, L, D). With `grad`, differentiable in all three.
pub fn norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64, grad: bool) -> Result<Tensor> {
    if !fused(x, &[shift, scale]) {
        return super::modulate(&super::LayerNorm::plain(eps).forward(x, grad)?, shift, scale);
    }
    let (x, shift, scale) = (x.contiguous()?, shift.contiguous()?, scale.contiguous()?);
    let op = NormModulate { eps };
    if grad {
        x.apply_op3(&shift, &scale, op)
    } else {
        x.apply_op3_no_bwd(&shift, &scale, &op)
    }
}

/// x + y · gate, with gate (…, 1, D) broadcast over the tokens of x and y (…, L, D). With `grad`, differentiable
/// in all three.
pub fn gated_add(x: &Tensor, y: &Tensor, gate: &Tensor, grad: bool) -> Result<Tensor> {
    if !(fused(x, &[gate]) && y.dims() == x.dims() && y.dtype() == x.dtype()) {
        return x + y.broadcast_mul(gate)?;
    }
    let (x, y, gate) = (x.contiguous()?, y.contiguous()?, gate.contiguous()?);
    if grad {
        x.apply_op3(&y, &gate, GatedAdd)
    } else {
        x.apply_op3_no_bwd(&y, &gate, &GatedAdd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::rowwise::normalize_last_dim;
    use crate::test_util::max_abs;
    use candle_core::{DType, Device, Var};

    fn randn(dims: &[usize], dtype: DType) -> Tensor {
        Tensor::randn(0f64, 1.0, dims, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    /// Output and every input's gradient of `f` on `inputs`, weighted by `w`.
    fn run(f: &dyn Fn(&[&Tensor]) -> Tensor, inputs: &[Tensor], w: &Tensor) -> Vec<Tensor> {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let out = f(&tensors);
        let grads = (&out * w).unwrap().sum_all().unwrap().backward().unwrap();
        let mut all = vec![out];
        all.extend(vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()));
        all
    }

    fn assert_close(a: &[Tensor], b: &[Tensor], tol: f64, what: &str) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(x.dims(), y.dims(), "{what} [{i}]");
            let diff = max_abs(&(x.to_dtype(DType::F64).unwrap() - y.to_dtype(DType::F64).unwrap()).unwrap());
            let scale = max_abs(y).max(1e-30);
            assert!(diff <= tol * scale, "{what} [{i}]: max diff {diff}, scale {scale}");
        }
    }

    /// The kernels against their tensor-op compositions, forward and every gradient, on odd shapes with the
    /// conditioning broadcast per sequence, per clip, and per sample of a rank-3 layout.
    #[test]
    fn kernels_match_the_compositions_they_replace() {
        let cases: [(&[usize], &[usize]); 4] = [
            (&[2, 3, 5, 7], &[2, 3, 1, 7]),
            (&[3, 4, 5, 9], &[3, 1, 1, 9]),
            (&[5, 13, 11], &[5, 1, 11]),
            (&[2, 1, 33, 130], &[2, 1, 1, 130]),
        ];
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            for (x_dims, c_dims) in cases {
                let x = randn(x_dims, dtype).affine(2.0, 0.5).unwrap();
                let (shift, scale) = (randn(c_dims, dtype), randn(c_dims, dtype));
                let y = randn(x_dims, dtype);
                let w = randn(x_dims, dtype);
                let what = format!("{dtype:?} {x_dims:?} / {c_dims:?}");

                let fused = run(
                    &|t| norm_modulate(t[0], t[1], t[2], 1e-6, true).unwrap(),
                    &[x.clone(), shift.clone(), scale.clone()],
                    &w,
                );
                let plain = run(
                    &|t| {
                        super::super::modulate(
                            &normalize_last_dim(&t[0].to_dtype(DType::F64).unwrap(), 1e-6).unwrap(),
                            &t[1].to_dtype(DType::F64).unwrap(),
                            &t[2].to_dtype(DType::F64).unwrap(),
                        )
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                    },
                    &[x.clone(), shift.clone(), scale.clone()],
                    &w,
                );
                assert_close(&fused, &plain, tol, &format!("norm_modulate {what}"));
                let inference = norm_modulate(&x, &shift, &scale, 1e-6, false).unwrap();
                assert_close(
                    &[inference],
                    &plain[..1],
                    tol,
                    &format!("norm_modulate inference {what}"),
                );

                let fused = run(
                    &|t| gated_add(t[0], t[1], t[2], true).unwrap(),
                    &[x.clone(), y.clone(), shift.clone()],
                    &w,
                );
                let plain = run(
                    &|t| (t[0] + t[1].broadcast_mul(t[2]).unwrap()).unwrap(),
                    &[x.clone(), y.clone(), shift.clone()],
                    &w,
                );
                assert_close(&fused, &plain, tol, &format!("gated_add {what}"));
            }
        }
    }

    #[test]
    fn shapes_that_do_not_broadcast_as_rows_take_the_composition() {
        let x = randn(&[2, 3, 4], DType::F32);
        let odd = randn(&[2, 3, 1], DType::F32); // not (…, 1, D)
        assert!(!fused(&x, &[&odd]));
        let out = gated_add(&x, &x, &odd, true).unwrap();
        assert_eq!(out.dims(), x.dims());
    }
}
