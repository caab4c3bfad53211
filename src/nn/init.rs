//! The one home of initialisation: the DiT/Latte recipe, applied by parameter name from a seeded generator.
//!
//! - every linear weight (and the patch embedding, viewed as a linear): xavier-uniform; biases: 0
//! - timestep MLP weights and the label table: N(0, 0.02)
//! - adaLN modulation and the final linear: 0 (adaLN-Zero: every block starts as the identity)
//! - LayerNorm weights 1, biases 0
//! - `pos_embed` / `temp_embed`: the fixed sin-cos tables

use candle_core::Tensor;

use crate::config::LatteConfig;
use crate::error::Result;
use crate::nn::pos::{sincos_1d, sincos_2d};
use crate::rng::Generator;
use crate::weights::ParamStore;

/// Names of the fixed (non-trainable) tables.
pub const FIXED_TABLES: [&str; 2] = ["pos_embed", "temp_embed"];

/// Whether the parameter `name` is trained (the sin-cos tables are not).
pub fn is_trainable(name: &str) -> bool {
    !FIXED_TABLES.contains(&name)
}

/// The initial value of parameter `name` with shape `dims`, as f64.
fn initial_value(name: &str, dims: &[usize], cfg: &LatteConfig, rng: &mut Generator) -> Vec<f64> {
    let n: usize = dims.iter().product();
    let is_weight = name.ends_with(".weight");
    if name == "pos_embed" {
        return sincos_2d(cfg.hidden_size, cfg.input_size / cfg.patch_size);
    }
    if name == "temp_embed" {
        let positions: Vec<f64> = (0..dims[1]).map(|p| p as f64).collect();
        return sincos_1d(cfg.hidden_size, &positions);
    }
    if name.contains("adaLN_modulation") || name.starts_with("final_layer.linear") {
        return vec![0.0; n];
    }
    if name.starts_with("t_embedder.mlp.") && is_weight || name == "y_embedder.embedding_table.weight" {
        return rng.normal(n, 0.0, 0.02);
    }
    if name.contains("norm") {
        // LayerNorm affine parameters of the token-injection blocks.
        return vec![if is_weight { 1.0 } else { 0.0 }; n];
    }
    if is_weight && dims.len() >= 2 {
        return xavier_uniform(dims, rng);
    }
    vec![0.0; n]
}

/// Xavier-uniform on the (out, in) view of a weight; a conv/tubelet kernel counts all its input elements.
fn xavier_uniform(dims: &[usize], rng: &mut Generator) -> Vec<f64> {
    let n: usize = dims.iter().product();
    let fan_out = dims[0];
    let fan_in = n / fan_out;
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
    rng.uniform(n, -bound, bound)
}

/// Initialises every parameter of `store` by the recipe above, drawing from a generator seeded with `seed`.
/// Names are visited in sorted order, so the same seed gives the same weights whatever the map's order.
pub fn init_weights(store: &ParamStore, cfg: &LatteConfig, seed: u64) -> Result<()> {
    let mut rng = Generator::new(seed);
    store.initialise(|name, var| {
        let dims = var.dims().to_vec();
        let values = initial_value(name, &dims, cfg, &mut rng);
        Ok(Tensor::from_vec(values, dims, var.device())?)
    })
}

/// The initial value of the text-to-video transformer's parameter `name` (diffusers' names) for training from
/// scratch, PixArt-α's recipe: linear weights (and the patch embedding as a linear) xavier-uniform, biases 0; the
/// timestep MLP, adaLN-single's linear and the caption projection N(0, 0.02); the cross-attention output
/// projections and `proj_out` 0 (each block's cross-attention and the output start silent); the
/// `scale_shift_table`s N(0, 1/D); norm weights 1.
fn t2v_initial_value(name: &str, dims: &[usize], rng: &mut Generator) -> Vec<f64> {
    let n: usize = dims.iter().product();
    let is_weight = name.ends_with(".weight");
    if name.ends_with("scale_shift_table") {
        let d = *dims.last().unwrap_or(&1) as f64;
        return rng.normal(n, 0.0, 1.0 / d.sqrt());
    }
    if name.starts_with("proj_out.") || name.contains(".attn2.to_out.") {
        return vec![0.0; n];
    }
    if is_weight && (name.starts_with("adaln_single.") || name.starts_with("caption_projection.")) {
        return rng.normal(n, 0.0, 0.02);
    }
    if name.contains("norm") {
        return vec![if is_weight { 1.0 } else { 0.0 }; n];
    }
    if is_weight && dims.len() >= 2 {
        return xavier_uniform(dims, rng);
    }
    vec![0.0; n]
}

/// Initialises a text-to-video transformer's `store` for training from scratch (see [`t2v_initial_value`]'s
/// recipe), from a generator seeded with `seed`, names in sorted order.
pub fn init_t2v_weights(store: &ParamStore, seed: u64) -> Result<()> {
    let mut rng = Generator::new(seed);
    store.initialise(|name, var| {
        let dims = var.dims().to_vec();
        let values = t2v_initial_value(name, &dims, &mut rng);
        Ok(Tensor::from_vec(values, dims, var.device())?)
    })
}
