//! Gradients of the text-to-video transformer: every parameter receives one, and they match finite differences.

use candle_core::{DType, Device, Tensor};

use super::{LatteT2VConfig, LatteT2VModel};
use crate::model::{Condition, Denoiser};
use crate::rng::Generator;

fn tiny(activation: &str, affine: bool) -> LatteT2VConfig {
    LatteT2VConfig {
        num_attention_heads: 2,
        attention_head_dim: 4,
        in_channels: 3,
        out_channels: Some(6),
        num_layers: 2,
        cross_attention_dim: Some(8),
        sample_size: 4,
        patch_size: 2,
        activation_fn: activation.into(),
        norm_elementwise_affine: affine,
        caption_channels: 5,
        video_length: 3,
        ..LatteT2VConfig::default()
    }
}

struct Batch {
    x: Tensor,
    t: Tensor,
    caption: Tensor,
    weights: Tensor,
}

fn batch(dtype: DType) -> Batch {
    let mut rng = Generator::new(9);
    let dev = Device::Cpu;
    Batch {
        x: rng.randn(&[2, 3, 3, 4, 6], dtype, &dev).unwrap(),
        t: Tensor::new(&[3f32, 700.0], &dev).unwrap(),
        caption: rng.randn(&[2, 4, 5], dtype, &dev).unwrap(),
        weights: rng.randn(&[2, 6, 3, 4, 6], dtype, &dev).unwrap(),
    }
}

fn loss(model: &LatteT2VModel, b: &Batch) -> Tensor {
    let text = Condition::Text {
        embeddings: b.caption.clone(),
        mask: None,
    };
    let out = model.forward_train(&b.x, &b.t, &text).unwrap();
    (out * &b.weights).unwrap().sum_all().unwrap()
}

/// Random weights of a larger scale than `new`'s, so no path is negligible.
fn perturbed(cfg: &LatteT2VConfig, dtype: DType) -> LatteT2VModel {
    let model = LatteT2VModel::new(cfg, &Device::Cpu, dtype, 1).unwrap();
    for (k, v) in model.state_dict() {
        let var = model.store().vars(|n| n == k).remove(0).1;
        var.set(&(v * 10.0).unwrap()).unwrap();
    }
    model
}

#[test]
fn every_parameter_receives_a_gradient() {
    for (act, affine) in [("gelu-approximate", false), ("geglu", true), ("gelu", true)] {
        let cfg = tiny(act, affine);
        let model = perturbed(&cfg, DType::F32);
        let grads = loss(&model, &batch(DType::F32)).backward().unwrap();
        for (name, var) in model.trainable_vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient ({act})"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm} ({act})");
        }
    }
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    for (act, affine) in [("gelu-approximate", false), ("geglu", true), ("gelu", true)] {
        let cfg = tiny(act, affine);
        let model = perturbed(&cfg, DType::F64);
        let b = batch(DType::F64);
        let grads = loss(&model, &b).backward().unwrap();
        let vars = model.trainable_vars();
        let lossf = || loss(&model, &b).to_scalar::<f64>().unwrap();
        crate::test_util::check_finite_differences(&vars, &grads, lossf, 2, act);
    }
}
