//! Building blocks that candle lacks or gets wrong for training.
//!
//! Every op here has two paths chosen by `grad`: with `grad = true` it is written in differentiable primitives
//! (candle's fused `layer_norm` and `softmax_last_dim` have no backward and silently drop gradients); with
//! `grad = false` it uses the fused kernels, which are faster for inference.

pub(crate) mod amx;
pub mod attention;
pub mod autocast;
pub mod conv;
pub mod embed;
pub mod fused_attention;
pub mod gelu;
pub(crate) mod gemm;
pub mod group_norm;
pub mod init;
pub mod kernels;
pub mod linear;
pub mod modulation;
pub mod norm;
pub mod pos;
pub mod rowwise;

pub use attention::{Attention, AttentionKernel};
pub use linear::{Linear, Mlp};
pub use norm::LayerNorm;
pub use pos::Rope;

use candle_core::{Result, Tensor};

/// adaLN's modulation: `x * (1 + scale) + shift`, broadcasting the conditioning over tokens.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}
