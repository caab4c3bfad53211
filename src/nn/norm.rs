//! Layer normalisation with a differentiable path.

use candle_core::{DType, Result, Tensor, D};

use super::rowwise::normalize_last_dim;
use candle_nn::VarBuilder;

/// LayerNorm over the last dimension, with or without an affine transform (adaLN blocks use none).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    affine: Option<(Tensor, Tensor)>,
    eps: f64,
}

impl LayerNorm {
    /// A LayerNorm without learned parameters (adaLN-Zero blocks).
    pub fn plain(eps: f64) -> Self {
        Self { affine: None, eps }
    }

    /// A LayerNorm with `weight` and `bias` under `vb`.
    pub fn affine(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            affine: Some((vb.get(dim, "weight")?, vb.get(dim, "bias")?)),
            eps,
        })
    }

    /// adaLN: `norm(x) · (1 + scale) + shift` with (…, 1, D) conditioning broadcast over the tokens; one fused
    /// kernel for a norm without affine parameters.
    pub fn modulated(&self, x: &Tensor, shift: &Tensor, scale: &Tensor, grad: bool) -> Result<Tensor> {
        match &self.affine {
            None => super::modulation::norm_modulate(x, shift, scale, self.eps, grad),
            Some(_) => super::modulate(&self.forward(x, grad)?, shift, scale),
        }
    }

    pub fn forward(&self, x: &Tensor, grad: bool) -> Result<Tensor> {
        if grad {
            let normed = normalize_last_dim(x, self.eps)?;
            match &self.affine {
                Some((w, b)) => normed.broadcast_mul(w)?.broadcast_add(b),
                None => Ok(normed),
            }
        } else {
            let dim = x.dim(D::Minus1)?;
            let (w, b) = match &self.affine {
                Some((w, b)) => (w.clone(), b.clone()),
                None => (
                    Tensor::ones(dim, x.dtype(), x.device())?,
                    Tensor::zeros(dim, x.dtype(), x.device())?,
                ),
            };
            if x.dtype() == DType::F64 {
                // The fused kernel has no f64 path; f64 is for gradient checks, where speed does not matter.
                return Self {
                    affine: Some((w, b)),
                    eps: self.eps,
                }
                .forward(x, true);
            }
            candle_nn::ops::layer_norm(&x.contiguous()?, &w, &b, self.eps as f32)
        }
    }
}
