//! Positional embeddings: sin-cos tables (MAE/DiT), sinusoidal timestep features (GLIDE), rotary embedding.

use candle_core::{DType, Device, Result, Tensor, D};

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
