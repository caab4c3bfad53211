//! Linear layer over the last dimension (one GEMM for any number of leading dims) and the transformer MLP.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

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
            Some(b) => y.broadcast_add(b)?,
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
