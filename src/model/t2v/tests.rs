//! Gradients of the text-to-video transformer: every parameter receives one, and they match finite differences.

use candle_core::{DType, Device, Tensor};

use super::{LatteT2VConfig, LatteT2VModel};
use crate::model::{Condition, Denoiser};
use crate::rng::Generator;

/// A tiny config (also the trainer tests').
pub(crate) fn tiny(activation: &str, affine: bool) -> LatteT2VConfig {
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

/// max |a - b| as f64.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
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

/// Activation checkpointing recomputes each layer in the backward pass; the gradients equal the plain path's.
#[test]
fn checkpointed_gradients_equal_the_plain_path() {
    let cfg = tiny("gelu-approximate", false);
    let model = perturbed(&cfg, DType::F64);
    let b = batch(DType::F64);
    let text = Condition::Text {
        embeddings: b.caption.clone(),
        mask: None,
    };
    let run = |checkpoint: bool| {
        let mut loss_fn = |out: &Tensor| Ok((out * &b.weights)?.sum_all()?);
        model
            .loss_and_grads(&b.x, &b.t, &text, checkpoint, &mut loss_fn)
            .unwrap()
    };
    let (l0, g0) = run(false);
    let (l1, g1) = run(true);
    assert_eq!(l0.to_scalar::<f64>().unwrap(), l1.to_scalar::<f64>().unwrap());
    for ((name, _), (a, b)) in model.trainable_vars().iter().zip(g0.iter().zip(&g1)) {
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(diff <= 1e-12 * scale.max(1.0), "{name}: {diff} (scale {scale})");
    }
}

/// Image-video joint clips: the image frames (after the video frames) see their own caption in the spatial
/// blocks and skip the temporal blocks, so an image frame's output depends on its caption and its own pixels only;
/// every parameter still gets a gradient that matches finite differences.
#[test]
fn joint_clips_route_captions_per_frame_and_skip_temporal_blocks() {
    let cfg = tiny("gelu-approximate", false);
    let model = perturbed(&cfg, DType::F64);
    let mut rng = Generator::new(4);
    let dev = Device::Cpu;
    // 3 video frames + 2 images, one caption for the video and one per image.
    let x = rng.randn(&[2, 3, 5, 4, 6], DType::F64, &dev).unwrap();
    let t = Tensor::new(&[3f32, 700.0], &dev).unwrap();
    let caption = rng.randn(&[2, 3, 4, 5], DType::F64, &dev).unwrap();
    let text = |c: &Tensor| Condition::Text {
        embeddings: c.clone(),
        mask: None,
    };
    let out = model.forward(&x, &t, &text(&caption)).unwrap();
    assert_eq!(out.dims(), &[2, 6, 5, 4, 6]);
    // Changing the last image's caption changes only that frame.
    let mut changed = caption.narrow(1, 0, 2).unwrap();
    changed = Tensor::cat(&[&changed, &(caption.narrow(1, 2, 1).unwrap() * 3.0).unwrap()], 1).unwrap();
    let out2 = model.forward(&x, &t, &text(&changed)).unwrap();
    let frame_diff = |f: usize| {
        let a = out.narrow(2, f, 1).unwrap();
        let b = out2.narrow(2, f, 1).unwrap();
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for f in 0..4 {
        assert_eq!(frame_diff(f), 0.0, "frame {f} changed with the last image's caption");
    }
    assert!(frame_diff(4) > 1e-6);
    // Changing an image's pixels changes only that image's output (no temporal attention across images).
    let mut pixels = x.narrow(2, 0, 3).unwrap();
    let img = (x.narrow(2, 3, 1).unwrap() + 1.0).unwrap();
    pixels = Tensor::cat(&[&pixels, &img, &x.narrow(2, 4, 1).unwrap()], 2).unwrap();
    let out3 = model.forward(&pixels, &t, &text(&caption)).unwrap();
    for f in [0, 1, 2, 4] {
        let d = max_diff(&out.narrow(2, f, 1).unwrap(), &out3.narrow(2, f, 1).unwrap());
        assert_eq!(d, 0.0, "frame {f} changed with image frame 3's pixels");
    }
    // Wrong caption counts are refused by name.
    let err = model
        .forward(&x, &t, &text(&caption.narrow(1, 0, 2).unwrap()))
        .err()
        .unwrap();
    assert!(err.to_string().contains("encoder_hidden_states"), "{err}");
    // Gradients against finite differences through the joint path.
    let weights = rng.randn(&[2, 6, 5, 4, 6], DType::F64, &dev).unwrap();
    let loss = || {
        let out = model.forward_train(&x, &t, &text(&caption)).unwrap();
        (out * &weights).unwrap().sum_all().unwrap()
    };
    let grads = loss().backward().unwrap();
    let vars = model.trainable_vars();
    crate::test_util::check_finite_differences(&vars, &grads, || loss().to_scalar::<f64>().unwrap(), 2, "joint");
}

/// The device-generic path (what CUDA runs) against the fused CPU kernels, forced on the CPU: the training
/// forward, every parameter's gradient and the inference forward, with and without a caption mask.
#[test]
fn the_device_generic_path_matches_the_fused_kernels() {
    for (act, affine) in [("gelu-approximate", false), ("geglu", true), ("gelu", true)] {
        let cfg = tiny(act, affine);
        let model = perturbed(&cfg, DType::F32);
        let b = batch(DType::F32);
        let mask = Tensor::new(&[[1f32, 1., 1., 0.], [1., 0., 0., 0.]], &Device::Cpu).unwrap();
        for mask in [None, Some(mask)] {
            let text = Condition::Text {
                embeddings: b.caption.clone(),
                mask,
            };
            crate::test_util::assert_generic_matches_fused(&format!("{act} {affine}"), 1e-5, || {
                let out = model.forward_train(&b.x, &b.t, &text).unwrap();
                let grads = (&out * &b.weights).unwrap().sum_all().unwrap().backward().unwrap();
                let mut all = vec![
                    ("forward_train".to_string(), out.detach()),
                    ("forward".to_string(), model.forward(&b.x, &b.t, &text).unwrap()),
                ];
                for (name, var) in model.trainable_vars() {
                    all.push((format!("grad {name}"), grads.get(var.as_tensor()).unwrap().clone()));
                }
                all
            });
        }
    }
}

/// Issue 30: the estimate counted tokens × width only, so latents of one row of many patches asked the attention
/// kernel for L² scores per (frame, head) unseen; the temporal blocks attend over frames² per patch.
#[test]
fn the_memory_estimate_holds_the_attention_scores_of_non_square_latents() {
    let model = LatteT2VModel::new(&tiny("gelu-approximate", false), &Device::Cpu, DType::F32, 0).unwrap();
    let threads = |problems: usize| rayon::current_num_threads().min(problems) as u128;
    // 3 frames of one row of 2^16 patches: 2^32 scores per (frame, head), one buffer per thread at once; the
    // activations alone (tokens × width × a few) are 2^16 · 3 · 8 · 6 values.
    let wide = model.activation_elements(&[1, 3, 3, 2, 1 << 17], false);
    assert!(wide >= threads(3 * 2) * (1u128 << 32), "{wide}");
    let e = model.check_memory(&[1, 3, 3, 2, 1 << 22], false).unwrap_err();
    assert!(matches!(e, crate::LatteError::Memory(_)), "{e}");
    // Many frames of one patch: frames² scores per patch and head in the temporal blocks, none without them.
    let long = LatteT2VConfig {
        video_length: 1 << 12,
        ..tiny("gelu-approximate", false)
    };
    let model = LatteT2VModel::new(&long, &Device::Cpu, DType::F32, 0).unwrap();
    let dims = [1, 3, 1 << 12, 2, 2];
    assert!(model.activation_elements(&dims, false) >= threads(2) * (1u128 << 24));
    assert!(model.with_temporal_attention(false).activation_elements(&dims, false) < 1 << 20);
}

#[test]
fn a_caption_too_long_for_memory_is_refused_with_the_caption() {
    let model = LatteT2VModel::new(&tiny("gelu-approximate", false), &Device::Cpu, DType::F32, 0).unwrap();
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 3, 4, 4), DType::F32, &dev).unwrap();
    let short = Tensor::zeros((1, 7, 5), DType::F32, &dev).unwrap();
    let text = |embeddings: Tensor| Condition::Text { embeddings, mask: None };
    assert!(model.check_condition(&text(short), x.dims()).is_ok());
    // The caption's length is checked against the memory before the per-frame copies and the cross-attention
    // scores are allocated.
    let e = model
        .check_caption_memory(x.dims(), &[1, 1 << 38, 5])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("encoder_hidden_states of shape [1, 274877906944, 5]") && e.contains("needs about"),
        "{e}"
    );
}

#[test]
fn a_config_that_is_not_a_json_object_is_refused_by_name() {
    for text in ["[]", "3", "null", "\"x\"", "[1]"] {
        let e = LatteT2VConfig::from_json(text).unwrap_err().to_string();
        assert!(
            e.contains("LatteTransformer3DModel config: expected a JSON object of config keys"),
            "{text}: {e}"
        );
    }
    assert_eq!(LatteT2VConfig::from_json("{}").unwrap(), LatteT2VConfig::default());
    let dir = std::env::temp_dir().join(format!("latte-rs-t2v-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, "[]").unwrap();
    let e = crate::weights::diffusers::read_config::<LatteT2VConfig>(&path)
        .unwrap_err()
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        e.contains("config.json: expected a JSON object of config keys, got an array of 0 values"),
        "{e}"
    );
}
