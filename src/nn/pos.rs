//! Positional embeddings: sin-cos tables (MAE/DiT), sinusoidal timestep features (GLIDE), rotary embedding.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::float::Float;

/// 1D sin-cos table (len, dim) for positions 0..len: `[sin(p ω), cos(p ω)]`, ω_i = 10000^(-2i/dim), in f64.
pub fn sincos_1d(dim: usize, positions: &[f64]) -> Vec<f64> {
    let half = dim / 2;
    let omega: Vec<f64> = (0..half).map(|i| 1.0 / 10000f64.powf(i as f64 / half as f64)).collect();
    let mut out = Vec::with_capacity(positions.len() * dim);
    for &p in positions {
        out.extend(omega.iter().map(|w| (p * w).sin()));
        out.extend(omega.iter().map(|w| (p * w).cos()));
    }
    out
}

/// 2D sin-cos table (grid², dim): the first half of each row encodes the column, the second half the row,
/// exactly as MAE's `get_2d_sincos_pos_embed` (which meshes w first).
pub fn sincos_2d(dim: usize, grid: usize) -> Vec<f64> {
    let cols: Vec<f64> = (0..grid * grid).map(|i| (i % grid) as f64).collect();
    let rows: Vec<f64> = (0..grid * grid).map(|i| (i / grid) as f64).collect();
    sincos_2d_at(dim, &cols, &rows)
}

/// 2D sin-cos rows (len, dim) for positions with column coordinates `cols` and row coordinates `rows`: the
/// first half of each row encodes the column, the second half the row.
pub fn sincos_2d_at(dim: usize, cols: &[f64], rows: &[f64]) -> Vec<f64> {
    let half = dim / 2;
    let (a, b) = (sincos_1d(half, cols), sincos_1d(half, rows));
    (0..cols.len())
        .flat_map(|i| {
            a[i * half..(i + 1) * half]
                .iter()
                .chain(&b[i * half..(i + 1) * half])
                .copied()
        })
        .collect()
}

/// Sinusoidal timestep features (B, dim) = `[cos(t f), sin(t f)]`, f_i = exp(-ln(10000) i / half), computed in f32
/// like the reference.
pub fn timestep_features(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs)?;
    let mut emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
    if dim % 2 == 1 {
        emb = Tensor::cat(&[&emb, &emb.narrow(1, 0, 1)?.zeros_like()?], 1)?;
    }
    Ok(emb)
}

/// Rotary position embedding (rotate-half form, base 10000) for a sequence of fixed length, written with
/// differentiable ops (candle's `rotary_emb::rope` has no backward).
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// Tables for positions 0..len and head dimension `head_dim` (even).
    pub fn new(len: usize, head_dim: usize, dtype: DType, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(len * head_dim);
        let mut sin = Vec::with_capacity(len * head_dim);
        for p in 0..len {
            // The two halves share frequencies (rotate-half layout).
            for _ in 0..2 {
                for i in 0..half {
                    let angle = p as f64 / 10000f64.powf(2.0 * i as f64 / head_dim as f64);
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, (len, head_dim), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (len, head_dim), device)?.to_dtype(dtype)?;
        Ok(Self { cos, sin })
    }

    /// Rotates the query and key parts of a packed projection `qkv` (G, len, 3, heads, head_dim) by position along
    /// axis 1 and passes the values through, in one pass: what attention's fused kernel then takes. f32/f64 on
    /// the CPU (see [`Self::qkv_applies`]); differentiable (the backward pass rotates the gradient back). The same
    /// bits as [`Self::apply`] on the unbound q and k.
    pub fn apply_qkv(&self, qkv: &Tensor) -> Result<Tensor> {
        qkv.contiguous()?
            .apply_op3(&self.cos, &self.sin, RopeQkv { inverse: false })
    }

    /// Whether [`Self::apply_qkv`] runs `qkv`: CPU tensors of the tables' float dtype, f32 or f64, with the
    /// tables' length and head dimension.
    pub fn qkv_applies(&self, qkv: &Tensor) -> bool {
        super::kernels::fused_same_dtype(&[qkv, &self.cos], super::kernels::FULL)
            && qkv.rank() == 5
            && qkv.dim(1).ok() == self.cos.dim(0).ok()
            && qkv.dim(2).ok() == Some(3)
            && qkv.dim(4).ok() == self.cos.dim(1).ok()
    }

    /// Rotates `x` (..., len, head_dim) by position along the second-to-last axis.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&self.cos)?
            .broadcast_add(&rotated.broadcast_mul(&self.sin)?)
    }
}

/// [`Rope::apply_qkv`]'s kernel: q and k of each (sequence, position, head) rotated (by minus the angle for the
/// backward pass, `inverse`), v copied.
struct RopeQkv {
    inverse: bool,
}

fn rope_qkv<T: Float>(
    qkv: &[T],
    cos: &[T],
    sin: &[T],
    (len, heads, hd): (usize, usize, usize),
    inverse: bool,
) -> Result<Vec<T>> {
    let half = hd / 2;
    let per_seq = len * 3 * heads * hd;
    let mut out = crate::limits::try_with_capacity::<T>(qkv.len(), "a rotary-embedded projection")?;
    out.extend_from_slice(qkv);
    if per_seq == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(per_seq).for_each(|seq| {
        for (p, pos) in seq.chunks_mut(3 * heads * hd).enumerate() {
            let (c, s) = (&cos[p * hd..(p + 1) * hd], &sin[p * hd..(p + 1) * hd]);
            // q and k; v (the third part) stays.
            for head in pos[..2 * heads * hd].chunks_mut(hd) {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    // Rotate-half: [a, b] -> [a cos - b sin, b cos + a sin], written as apply's x·cos + rot(x)·sin.
                    let (rot_a, rot_b) = if inverse { (b, -a) } else { (-b, a) };
                    head[i] = a * c[i] + rot_a * s[i];
                    head[i + half] = b * c[i + half] + rot_b * s[i + half];
                }
            }
        }
    });
    Ok(out)
}

/// [`rope_qkv`] as a three-operand kernel (projection, cos, sin) for the dtype dispatch.
struct RopeKernel {
    dims: (usize, usize, usize),
    inverse: bool,
}

impl super::gemm::Kernel3 for RopeKernel {
    fn run<T: Float + 'static>(&self, x: &[T], cos: &[T], sin: &[T]) -> Result<Vec<T>> {
        rope_qkv(x, cos, sin, self.dims, self.inverse)
    }
}

impl CustomOp3 for RopeQkv {
    fn name(&self) -> &'static str {
        "rope-qkv"
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
        let (_, len, three, heads, hd) = l1.shape().dims5()?;
        if three != 3 || l2.dims() != [len, hd] || l3.dims() != [len, hd] || hd % 2 != 0 {
            candle_core::bail!(
                "rope-qkv: projection {:?} and tables {:?} do not fit",
                l1.dims(),
                l2.dims()
            );
        }
        let kernel = RopeKernel {
            dims: (len, heads, hd),
            inverse: self.inverse,
        };
        let out = super::gemm::run_kernel3(&kernel, self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _qkv: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The rotation is orthogonal: its transpose is the rotation by minus the angle.
        let back = RopeQkv { inverse: !self.inverse };
        Ok((Some(grad.contiguous()?.apply_op3_no_bwd(cos, sin, &back)?), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sincos_2d_matches_mae_layout() {
        // Position (row 1, col 2) of a 3×3 grid with dim 8: first half encodes the column.
        let t = sincos_2d(8, 3);
        let row = &t[(3 + 2) * 8..(3 + 3) * 8];
        let col_part = sincos_1d(4, &[2.0]);
        let row_part = sincos_1d(4, &[1.0]);
        assert_eq!(&row[..4], &col_part[..]);
        assert_eq!(&row[4..], &row_part[..]);
    }
}

#[cfg(test)]
mod rope_tests {
    use super::*;
    use crate::rng::Generator;

    /// With the same query at every position and the same key at every position, RoPE makes the score of
    /// (m, n) depend on m - n only.
    /// The packed kernel equals `apply` on the unbound q and k (bit for bit) and leaves v alone; its gradient is
    /// the composition's.
    #[test]
    fn the_packed_kernel_is_apply_on_q_and_k() {
        for dtype in [DType::F64, DType::F32] {
            let (g, len, heads, hd) = (3, 5, 2, 8);
            let rope = Rope::new(len, hd, dtype, &Device::Cpu).unwrap();
            let qkv = Tensor::randn(0f64, 1.0, (g, len, 3, heads, hd), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let w = Tensor::randn(0f64, 1.0, (g, len, 3, heads, hd), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            assert!(rope.qkv_applies(&qkv));
            let composed = |x: &Tensor| -> Tensor {
                let part = |i: usize| x.narrow(2, i, 1).unwrap().squeeze(2).unwrap().transpose(1, 2).unwrap();
                let (q, k, v) = (rope.apply(&part(0)).unwrap(), rope.apply(&part(1)).unwrap(), part(2));
                let back = |t: Tensor| t.transpose(1, 2).unwrap().unsqueeze(2).unwrap();
                Tensor::cat(&[back(q), back(k), back(v)], 2).unwrap()
            };
            let run = |f: &dyn Fn(&Tensor) -> Tensor| {
                let var = candle_core::Var::from_tensor(&qkv).unwrap();
                let out = f(var.as_tensor());
                let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
                (out, grads.get(var.as_tensor()).unwrap().clone())
            };
            let (fused, fused_grad) = run(&|x| rope.apply_qkv(x).unwrap());
            let (plain, plain_grad) = run(&|x| composed(x));
            let diff = |a: &Tensor, b: &Tensor| {
                (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            assert_eq!(diff(&fused, &plain), 0.0, "{dtype:?} forward");
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            assert!(diff(&fused_grad, &plain_grad) < tol, "{dtype:?} gradient");
        }
    }

    #[test]
    fn rope_scores_depend_only_on_relative_position() {
        let (len, hd) = (7, 8);
        let mut rng = Generator::new(0);
        let row = |rng: &mut Generator| {
            let v = rng.normal(hd, 0.0, 1.0);
            Tensor::from_vec(v.repeat(len), (1, 1, len, hd), &Device::Cpu).unwrap()
        };
        let (q, k) = (row(&mut rng), row(&mut rng));
        let rope = Rope::new(len, hd, DType::F64, &Device::Cpu).unwrap();
        let scores = rope
            .apply(&q)
            .unwrap()
            .matmul(&rope.apply(&k).unwrap().t().unwrap())
            .unwrap();
        let s = scores.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2::<f64>().unwrap();
        for m in 0..len - 1 {
            for n in 0..len - 1 {
                assert!((s[m][n] - s[m + 1][n + 1]).abs() < 1e-12, "({m},{n})");
            }
        }
        // And it does depend on the offset: position 0 vs 3 differs from 0 vs 0.
        assert!((s[0][0] - s[0][3]).abs() > 1e-6);
        // Rotation preserves norms.
        let qn = q.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let rn = rope
            .apply(&q)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((qn - rn).abs() < 1e-9 * qn);
    }
}
