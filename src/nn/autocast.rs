//! bf16 autocast on the CPU, as `torch.autocast("cpu", dtype=torch.bfloat16)` does for linear layers: inference
//! and training (mixed precision).
//!
//! While it is on, every [`super::Linear`] whose input, weight and bias are f32 CPU tensors multiplies in bf16:
//! the input rows and the weight are rounded to bf16, gemmkit's AVX512-BF16 kernel (`vdpbf16ps`: pairs of bf16
//! products accumulated in f32) computes `x Wᵀ` into bf16, and the bias is added as the result is widened back to
//! f32. Its backward pass does the same for `dx = g W` and `dW = gᵀ x`; the bias gradient, the weights, the
//! optimiser and every reduction stay f32. Everything else (norms, attention's softmax and products, activations,
//! the sampler, the loss) stays f32, so the only rounding is that of the GEMMs' operands and outputs — the
//! precision PyTorch's autocast gives its linear layers, forward and backward, with f32 master weights.
//!
//! It takes effect only where the CPU has AVX512-BF16: elsewhere gemmkit would widen bf16 back to f32 and the path
//! would be slower than f32, so the layers stay in f32 ([`effective`] tells which).

use std::cell::Cell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemmkit::{bf16, MatMut, MatRef, Parallelism};
use rayon::prelude::*;

use super::amx::Strided;
use super::gemm::{contiguous, linear_dims};
use crate::limits::{try_uninit, try_with_capacity};

thread_local! {
    /// Per thread, as torch's autocast state: the models run on their caller's thread (rayon only inside kernels).
    static BF16: Cell<bool> = const { Cell::new(false) };
}

/// Values per parallel work item of the conversions.
const CHUNK: usize = 1 << 14;

/// Turns bf16 autocast on or off for the calling thread; returns whether it was on.
pub fn set_bf16(enabled: bool) -> bool {
    BF16.with(|c| c.replace(enabled))
}

/// Whether bf16 autocast is on in this thread (see [`effective`] for whether it changes anything on this CPU).
pub fn bf16_enabled() -> bool {
    BF16.with(|c| c.get())
}

/// Whether this CPU multiplies bf16 natively (AVX512-BF16).
pub fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether autocast is on and this CPU has the instructions that make it pay.
pub fn effective() -> bool {
    bf16_enabled() && bf16_supported()
}

/// Whether a linear layer on these operands takes the bf16 path now.
pub(crate) fn applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let operands: Vec<&Tensor> = [x, weight].into_iter().chain(bias).collect();
    effective() && super::kernels::fused_cpu(&operands, super::kernels::F32)
}

/// `x Wᵀ + b` with bf16 operands and f32 accumulation, for x (rows, in), W (out, in), b (out,) in f32; without
/// looking at the autocast switch or the CPU (on one without AVX512-BF16 gemmkit widens, slowly but exactly so).
///
/// Differentiable, as a linear layer under `torch.autocast` is: the backward pass's two GEMMs take bf16 operands
/// too (`dx = g W` and `dW = gᵀ x`, each operand rounded to bf16, f32 accumulation, the product rounded to bf16 as
/// PyTorch's bf16 GEMM outputs are), and the bias gradient is the f32 column sums of g. The gradients come out in
/// f32, for the f32 master weights.
pub fn linear_bf16(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, Bf16Linear)
}

struct Bf16Linear;

/// f32 → bf16 of a tensor (a CPU op with no gradient): the operands of the backward pass's GEMMs.
struct ToBf16;

/// The product of two bf16 matrices (or of two f32 ones AMX rounds as it packs them), widened to f32: `dx = g W`
/// (`transpose_lhs` false: g (rows, out), W (out, in)) or `dW = gᵀ x` (true: g (rows, out), x (rows, in)).
struct Bf16Product {
    transpose_lhs: bool,
}

/// f32 → bf16, rounding to nearest even as `half::bf16::from_f32` does (NaN stays a quiet NaN), written without
/// branches so that it vectorises: `from_f32` itself runs one element at a time.
#[inline(always)]
fn round_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    if nan {
        ((bits >> 16) as u16) | 0x0040
    } else {
        rounded
    }
}

fn to_bf16(v: &[f32]) -> Result<Vec<bf16>> {
    let mut out = try_with_capacity::<bf16>(v.len(), "a bfloat16 copy of a linear layer's operand")?;
    out.spare_capacity_mut()
        .par_chunks_mut(CHUNK)
        .zip(v.par_chunks(CHUNK))
        .for_each(|(o, v)| {
            for (o, &v) in o.iter_mut().zip(v) {
                o.write(bf16::from_bits(round_bf16(v)));
            }
        });
    // SAFETY: every element up to len was written above (the chunks cover the whole spare capacity of len).
    unsafe { out.set_len(v.len()) };
    Ok(out)
}

/// `lhs · rhs` of bf16 matrices (gemmkit's `vdpbf16ps` kernel: f32 accumulation, the result rounded to bf16 once),
/// then widened to f32 with `bias` (one value per output column) added. Each matrix is given with its (rows,
/// columns, row stride, column stride).
fn bf16_product(
    lhs: (&[bf16], usize, usize, isize, isize),
    rhs: (&[bf16], usize, usize, isize, isize),
    bias: Option<&[f32]>,
    what: &str,
) -> Result<Vec<f32>> {
    let (m, k, n) = (lhs.1, lhs.2, rhs.2);
    if k == 0 {
        // An empty contraction: the product is zero (the bias alone).
        let mut y = try_with_capacity::<f32>(m * n, what)?;
        y.extend((0..m * n).map(|i| bias.map_or(0.0, |b| b[i % n])));
        return Ok(y);
    }
    // SAFETY: gemmkit overwrites every element (beta = 0: the destination is not read).
    let mut yb = unsafe { try_uninit(m * n, what)? };
    if m > 0 && n > 0 {
        gemmkit::gemm(
            bf16::ONE,
            MatRef::new(lhs.0, m, k, lhs.3, lhs.4),
            MatRef::new(rhs.0, k, n, rhs.3, rhs.4),
            bf16::ZERO,
            MatMut::from_row_major(&mut yb, m, n),
            Parallelism::Rayon(0),
        );
    }
    let mut y = try_with_capacity::<f32>(m * n, what)?;
    let band = n.max(1) * 64;
    y.spare_capacity_mut()
        .par_chunks_mut(band)
        .zip(yb.par_chunks(band))
        .for_each(|(y, yb)| {
            for (yr, ybr) in y.chunks_mut(n.max(1)).zip(yb.chunks(n.max(1))) {
                match bias {
                    Some(b) => {
                        for ((o, &v), &bc) in yr.iter_mut().zip(ybr).zip(b) {
                            o.write(f32::from_bits((v.to_bits() as u32) << 16) + bc);
                        }
                    }
                    None => {
                        for (o, &v) in yr.iter_mut().zip(ybr) {
                            o.write(f32::from_bits((v.to_bits() as u32) << 16));
                        }
                    }
                }
            }
        });
    // SAFETY: the bands cover all m * n elements, each written above.
    unsafe { y.set_len(m * n) };
    Ok(y)
}

impl CustomOp3 for Bf16Linear {
    fn name(&self) -> &'static str {
        "linear-bf16"
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
        let (rows, input, out) = linear_dims(xl, wl)?;
        if bl.dims() != [out] {
            candle_core::bail!("linear-bf16: bias {:?} for weight {:?}", bl.dims(), wl.dims());
        }
        let (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) = (xs, ws, bs) else {
            candle_core::bail!("linear-bf16: operands must be f32");
        };
        let n = self.name();
        let (x, w, b) = (contiguous(x, xl, n)?, contiguous(w, wl, n)?, contiguous(b, bl, n)?);
        if super::amx::available() {
            let y = super::amx::gemm(
                (rows, out, input),
                Strided {
                    data: x,
                    row_stride: input,
                    col_stride: 1,
                },
                // Wᵀ (in, out): W (out, in) read with swapped strides.
                Strided {
                    data: w,
                    row_stride: 1,
                    col_stride: input,
                },
                Some(b),
                "a bfloat16 linear layer's output",
            )?;
            return Ok((CpuStorage::F32(y), Shape::from_dims(&[rows, out])));
        }
        let (xb, wb) = (to_bf16(x)?, to_bf16(w)?);
        // Wᵀ (in, out): W (out, in) row-major read with swapped strides.
        let y = bf16_product(
            (&xb, rows, input, input as isize, 1),
            (&wb, input, out, 1, input as isize),
            Some(b),
            "a bfloat16 linear layer's output",
        )?;
        Ok((CpuStorage::F32(y), Shape::from_dims(&[rows, out])))
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
        // AMX packs (and rounds) the f32 operands itself; gemmkit takes them rounded to bf16 first.
        let operand = |t: &Tensor| -> Result<Tensor> {
            if super::amx::available() {
                Ok(t.clone())
            } else {
                t.apply_op1_no_bwd(&ToBf16)
            }
        };
        let gb = operand(&g)?;
        let dx = gb.apply_op2_no_bwd(&operand(w)?, &Bf16Product { transpose_lhs: false })?;
        let dw = gb.apply_op2_no_bwd(&operand(x)?, &Bf16Product { transpose_lhs: true })?;
        let db = super::linear::column_sums_of(&g)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl candle_core::CustomOp1 for ToBf16 {
    fn name(&self) -> &'static str {
        "to-bf16"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("to-bf16: expected f32, got {:?}", s.dtype());
        };
        Ok((
            CpuStorage::BF16(to_bf16(contiguous(v, l, self.name())?)?),
            l.shape().clone(),
        ))
    }
}

impl Bf16Product {
    /// The product's (m, k, n), the gradient's strides as its left operand, and the output shape: dW (out, in) =
    /// gᵀ (out, rows) · x (rows, in), or dx (rows, in) = g (rows, out) · W (out, in).
    #[allow(clippy::type_complexity)]
    fn dims(&self, l1: &Layout, l2: &Layout) -> Result<((usize, usize, usize), (usize, usize), [usize; 2])> {
        let (rows, out) = l1.shape().dims2()?;
        let (r2, c2) = l2.shape().dims2()?;
        let (inner, what) = if self.transpose_lhs {
            (rows, "input")
        } else {
            (out, "weight")
        };
        if r2 != inner {
            candle_core::bail!(
                "linear-bf16 backward: gradient {:?} and {what} {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        Ok(if self.transpose_lhs {
            ((out, rows, c2), (1, out), [out, c2])
        } else {
            ((rows, out, c2), (out, 1), [rows, c2])
        })
    }
}

impl candle_core::CustomOp2 for Bf16Product {
    fn name(&self) -> &'static str {
        "linear-bf16-backward"
    }

    /// bf16 operands (gemmkit), or f32 ones that AMX rounds as it packs them.
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let ((m, k, n), (rs, cs), shape) = self.dims(l1, l2)?;
        let what = if self.transpose_lhs {
            "a linear layer's weight gradient"
        } else {
            "a linear layer's input gradient"
        };
        let name = self.name();
        let y = match (s1, s2) {
            (CpuStorage::BF16(g), CpuStorage::BF16(other)) => {
                let (g, other) = (contiguous(g, l1, name)?, contiguous(other, l2, name)?);
                let lhs = (g, m, k, rs as isize, cs as isize);
                bf16_product(lhs, (other, k, n, n as isize, 1), None, what)?
            }
            (CpuStorage::F32(g), CpuStorage::F32(other)) => {
                let (g, other) = (contiguous(g, l1, name)?, contiguous(other, l2, name)?);
                let lhs = Strided {
                    data: g,
                    row_stride: rs,
                    col_stride: cs,
                };
                let rhs = Strided {
                    data: other,
                    row_stride: n,
                    col_stride: 1,
                };
                super::amx::gemm((m, n, k), lhs, rhs, None, what)?
            }
            _ => candle_core::bail!("linear-bf16 backward: operands must both be bf16 (or both f32, for AMX)"),
        };
        Ok((CpuStorage::F32(y), Shape::from_dims(&shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn bf16_linear_matches_the_f32_product_to_bf16_precision() {
        let dev = Device::Cpu;
        for &(rows, input, out) in &[(37, 19, 23), (256, 96, 288), (1, 7, 5), (130, 384, 64)] {
            let x = Tensor::randn(0f32, 1., (rows, input), &dev).unwrap();
            let w = (Tensor::randn(0f32, 1., (out, input), &dev).unwrap() / (input as f64).sqrt()).unwrap();
            let b = Tensor::randn(0f32, 1., out, &dev).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
            // The exact product of the bf16-rounded operands, in f32: what the kernel computes before its
            // output is rounded to bf16.
            let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
            let rounded = round(&x).matmul(&round(&w).t().unwrap()).unwrap();
            let got = linear_bf16(&x, &w, &b).unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let err = |a: &Tensor, c: &Tensor| {
                (a - c)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    / scale
            };
            let vs_rounded = err(&got, &rounded.broadcast_add(&b).unwrap());
            assert!(
                vs_rounded < 8e-3,
                "{:?}: {vs_rounded} from the bf16 operands' product",
                (rows, input, out)
            );
            let vs_f32 = err(&got, &want);
            assert!(vs_f32 < 2e-2, "{:?}: {vs_f32} from the f32 product", (rows, input, out));
            assert!(vs_f32 > 0.0, "the bf16 path rounds");
        }
    }

    /// The backward pass: dx, dW and db of the bf16 layer against the same products of the bf16-rounded operands
    /// in f32 (what the kernel computes before rounding its output) and against the f32 layer's gradients, on odd
    /// shapes and a deep contraction (dW sums over every row).
    #[test]
    fn bf16_linear_gradients_match_the_f32_ones_to_bf16_precision() {
        use candle_core::Var;
        let dev = Device::Cpu;
        let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let rel = |a: &Tensor, c: &Tensor| {
            let scale = c.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let d = (a - c)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            d / scale
        };
        for &(rows, input, out) in &[(37, 19, 23), (4096, 96, 288), (3, 384, 5)] {
            let x = Var::randn(0f32, 1., (rows, input), &dev).unwrap();
            let w = Var::from_tensor(
                &(Tensor::randn(0f32, 1., (out, input), &dev).unwrap() / (input as f64).sqrt()).unwrap(),
            )
            .unwrap();
            let b = Var::randn(0f32, 1., out, &dev).unwrap();
            let weights = Tensor::randn(0f32, 1., (rows, out), &dev).unwrap();
            let y = linear_bf16(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
            let grads = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let got = [x.as_tensor(), w.as_tensor(), b.as_tensor()].map(|v| grads.get(v).unwrap().clone());
            // The same gradients in f32 of the rounded operands: g = weights.
            let g = round(&weights);
            let want_rounded = [
                g.matmul(&round(w.as_tensor())).unwrap(),
                g.t().unwrap().matmul(&round(x.as_tensor())).unwrap(),
                weights.sum(0).unwrap(),
            ];
            let want_f32 = [
                weights.matmul(w.as_tensor()).unwrap(),
                weights.t().unwrap().matmul(x.as_tensor()).unwrap(),
                weights.sum(0).unwrap(),
            ];
            for (i, name) in ["dx", "dW", "db"].iter().enumerate() {
                let (vs_rounded, vs_f32) = (rel(&got[i], &want_rounded[i]), rel(&got[i], &want_f32[i]));
                let shape = (rows, input, out);
                assert!(
                    vs_rounded < 8e-3,
                    "{shape:?} {name}: {vs_rounded} from the bf16 operands' product"
                );
                assert!(vs_f32 < 2e-2, "{shape:?} {name}: {vs_f32} from the f32 gradient");
                if *name != "db" {
                    assert!(vs_f32 > 0.0, "{shape:?} {name}: the bf16 path rounds");
                }
            }
            assert!(rel(&got[2], &want_f32[2]) < 1e-5, "db is an f32 sum");
        }
    }

    #[test]
    fn the_rounding_is_half_s() {
        let mut vals = vec![
            0.0f32,
            -0.0,
            1.0,
            f32::MIN_POSITIVE,
            1e-40,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        vals.extend((0..20_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))));
        // ties: exactly halfway between two bf16 values, odd and even
        vals.extend([
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0xbf80_8000),
        ]);
        for v in vals {
            let (ours, theirs) = (round_bf16(v), bf16::from_f32(v));
            if v.is_nan() {
                assert!(bf16::from_bits(ours).is_nan(), "{v:e}");
            } else {
                assert_eq!(ours, theirs.to_bits(), "{v:e} ({:#x})", v.to_bits());
            }
        }
        assert!(
            bf16::from_bits(round_bf16(f32::from_bits(0x7f80_0001))).is_nan(),
            "a signalling NaN stays NaN"
        );
    }

    #[test]
    fn the_switch_turns_on_and_off() {
        let dev = Device::Cpu;
        let was = set_bf16(true);
        assert!(bf16_enabled());
        let x = Tensor::randn(0f32, 1., (4, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (3, 8), &dev).unwrap();
        assert_eq!(applies(&x, &w, None), bf16_supported());
        assert!(!applies(
            &x.to_dtype(DType::F64).unwrap(),
            &w.to_dtype(DType::F64).unwrap(),
            None
        ));
        set_bf16(false);
        assert!(!applies(&x, &w, None));
        set_bf16(was);
    }
}
