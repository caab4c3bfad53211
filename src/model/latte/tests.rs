//! Tests of the model's structure and gradients (numerical parity with the official code is tested from Python
//! against golden files, see tests/model/test_parity.py).

use candle_core::{DType, Device, Tensor};

use crate::config::*;
use crate::model::{Condition, Denoiser, LatteModel};
use crate::test_util::{max_abs, max_abs_diff};

fn counts(classes: usize) -> Vec<usize> {
    ["S", "B", "L", "XL"]
        .iter()
        .map(|s| {
            let cfg = LatteConfig {
                num_classes: classes,
                ..LatteConfig::preset(&format!("Latte-{s}/2")).unwrap()
            };
            cfg.num_parameters(true).unwrap()
        })
        .collect()
}

#[test]
fn preset_parameter_counts_equal_the_official_implementation() {
    assert_eq!(counts(0), [32_480_672, 129_547_040, 456_815_648, 673_681_568]);
    assert_eq!(counts(101), [32_519_840, 129_625_376, 456_920_096, 673_799_072]);
}

use crate::rng::Generator;

/// A tiny config for gradient tests: 4 frames (+2 images), 4×4 latents with patch 2, width 16, 4 heads.
fn tiny(variant: Variant, injection: Injection, pos: TemporalPos, tubelet: bool) -> LatteConfig {
    LatteConfig {
        depth: 4,
        hidden_size: 16,
        num_heads: 4,
        patch_size: 2,
        input_size: 4,
        in_channels: 2,
        num_frames: 4,
        num_classes: 3,
        variant,
        injection,
        temporal_position: pos,
        patch_embed: if tubelet {
            PatchEmbed::Tubelet
        } else {
            PatchEmbed::Frame
        },
        tubelet_size: if tubelet { 2 } else { 1 },
        use_image_num: if tubelet { 0 } else { 2 },
        ..LatteConfig::default()
    }
}

fn all_configs() -> Vec<LatteConfig> {
    let mut out = Vec::new();
    for variant in [Variant::V1, Variant::V2, Variant::V3, Variant::V4] {
        for injection in [Injection::Adaln, Injection::Tokens] {
            for pos in [TemporalPos::Absolute, TemporalPos::Rope] {
                for tubelet in [false, true] {
                    out.push(tiny(variant, injection, pos, tubelet));
                }
            }
        }
    }
    out
}

fn randn(rng: &mut Generator, dims: &[usize], dtype: DType) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(rng.normal(n, 0.0, 1.0), dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Adds N(0, 0.1²) to every trainable parameter, so the zero-initialised layers pass gradients on.
fn perturb(model: &LatteModel, seed: u64) {
    let mut rng = Generator::new(seed);
    for (_, var) in model.trainable_vars() {
        let noise = (randn(&mut rng, var.dims(), var.dtype()) * 0.1).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
}

struct Batch {
    x: Tensor,
    t: Tensor,
    y: Tensor,
    y_image: Option<Tensor>,
    weights: Tensor,
}

/// A batch of 2 clips whose labels include the null class (so its table row gets a gradient too).
fn batch(cfg: &LatteConfig, dtype: DType, seed: u64) -> Batch {
    let mut rng = Generator::new(seed);
    let frames = cfg.num_frames + cfg.use_image_num;
    let x = randn(
        &mut rng,
        &[2, frames, cfg.in_channels, cfg.input_size, cfg.input_size],
        dtype,
    );
    let out_dims = [2, frames, cfg.out_channels(), cfg.input_size, cfg.input_size];
    let weights = randn(&mut rng, &out_dims, dtype);
    let t = Tensor::new(&[17u32, 640], &Device::Cpu).unwrap();
    let y = Tensor::new(&[1u32, cfg.num_classes as u32], &Device::Cpu).unwrap();
    let y_image = (cfg.use_image_num > 0).then(|| Tensor::new(&[[0u32, 2], [2, 1]], &Device::Cpu).unwrap());
    Batch {
        x,
        t,
        y,
        y_image,
        weights,
    }
}

impl Batch {
    fn cond(&self) -> Condition {
        Condition::from_labels(Some(&self.y), self.y_image.as_ref()).unwrap()
    }
}

fn loss(model: &LatteModel, b: &Batch) -> Tensor {
    let out = model.forward_train(&b.x, &b.t, &b.cond()).unwrap();
    (out * &b.weights).unwrap().sum_all().unwrap()
}

#[test]
fn every_parameter_of_every_variant_receives_a_gradient() {
    for cfg in all_configs() {
        let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
        perturb(&model, 1);
        let b = batch(&cfg, DType::F32, 2);
        let grads = loss(&model, &b).backward().unwrap();
        for (name, var) in model.trainable_vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient ({cfg:?})"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm} ({cfg:?})");
        }
    }
}

/// Central finite differences on a few elements of every parameter of a tiny f64 model.
fn finite_difference_check(cfg: &LatteConfig) {
    let model = LatteModel::new(cfg, &Device::Cpu, DType::F64, 0).unwrap();
    perturb(&model, 3);
    let b = batch(cfg, DType::F64, 4);
    let grads = loss(&model, &b).backward().unwrap();
    let lossf = || loss(&model, &b).to_scalar::<f64>().unwrap();
    crate::test_util::check_finite_differences(&model.trainable_vars(), &grads, lossf, 3, &format!("{cfg:?}"));
}

#[test]
fn finite_differences_variant_1() {
    finite_difference_check(&tiny(Variant::V1, Injection::Adaln, TemporalPos::Absolute, false));
}

#[test]
fn finite_differences_variant_2() {
    finite_difference_check(&tiny(Variant::V2, Injection::Tokens, TemporalPos::Rope, false));
}

#[test]
fn finite_differences_variant_3() {
    finite_difference_check(&tiny(Variant::V3, Injection::Adaln, TemporalPos::Rope, true));
}

#[test]
fn finite_differences_variant_4() {
    finite_difference_check(&tiny(Variant::V4, Injection::Tokens, TemporalPos::Absolute, false));
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let cfg = tiny(Variant::V1, Injection::Adaln, TemporalPos::Absolute, false);
    let sd = |seed| {
        LatteModel::new(&cfg, &Device::Cpu, DType::F32, seed)
            .unwrap()
            .state_dict()
    };
    let (a, b, c) = (sd(7), sd(7), sd(8));
    let w = "blocks.0.attn.qkv.weight";
    let v = |m: &std::collections::BTreeMap<String, Tensor>| m[w].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v(&a), v(&b));
    assert_ne!(v(&a), v(&c));
}

/// The f64 gradients are checked by finite differences above; f32 runs kernels that f64 lacks (fused
/// LayerNorm), so its gradients must agree with the f64 ones — a gradient-dropping kernel on the f32 path fails here.
#[test]
fn f32_gradients_agree_with_the_checked_f64_gradients() {
    for cfg in [
        tiny(Variant::V1, Injection::Adaln, TemporalPos::Absolute, false),
        tiny(Variant::V2, Injection::Tokens, TemporalPos::Rope, false),
        tiny(Variant::V3, Injection::Adaln, TemporalPos::Rope, true),
        tiny(Variant::V4, Injection::Tokens, TemporalPos::Absolute, false),
    ] {
        let grads_of = |dtype: DType| {
            let model = LatteModel::new(&cfg, &Device::Cpu, dtype, 0).unwrap();
            perturb(&model, 3);
            let b = batch(&cfg, dtype, 4);
            let grads = loss(&model, &b).backward().unwrap();
            model
                .trainable_vars()
                .into_iter()
                .map(|(n, v)| {
                    let g = grads.get(v.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
                    (n, g.flatten_all().unwrap().to_vec1::<f64>().unwrap())
                })
                .collect::<Vec<_>>()
        };
        for ((name, g32), (_, g64)) in grads_of(DType::F32).iter().zip(grads_of(DType::F64)) {
            let scale = g64.iter().fold(0f64, |m, v| m.max(v.abs()));
            let err = g32.iter().zip(&g64).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= 1e-3 * scale + 1e-6,
                "{name}: f32 vs f64 gradient error {err} (scale {scale}) ({cfg:?})"
            );
        }
    }
}

#[test]
fn inference_path_equals_differentiable_path_and_chunked_equals_math() {
    for cfg in all_configs() {
        let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
        perturb(&model, 1);
        let b = batch(&cfg, DType::F32, 2);
        let fast = model.forward(&b.x, &b.t, &b.cond()).unwrap();
        let exact = model.forward_train(&b.x, &b.t, &b.cond()).unwrap();
        let chunked_cfg = LatteConfig {
            attention: AttentionBackend::Chunked,
            attention_chunk_size: 3,
            ..cfg.clone()
        };
        let chunked = LatteModel::uninitialised(&chunked_cfg, &Device::Cpu, DType::F32).unwrap();
        let state: std::collections::HashMap<_, _> = model.state_dict().into_iter().collect();
        chunked.load_state_dict(&state, true).unwrap();
        let via_chunks = chunked.forward_train(&b.x, &b.t, &b.cond()).unwrap();
        let scale = max_abs(&exact);
        for other in [&fast, &via_chunks] {
            let err = max_abs_diff(other, &exact);
            assert!(err <= 1e-5 * scale, "error {err} (scale {scale}) for {cfg:?}");
        }
    }
}

/// Activation checkpointing recomputes each stage in the backward pass; the gradients must equal the plain path's.
#[test]
fn checkpointed_gradients_equal_the_plain_path() {
    for cfg in all_configs() {
        let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
        perturb(&model, 1);
        let b = batch(&cfg, DType::F32, 2);
        let run = |checkpoint: bool| {
            model
                .loss_and_grads(&b.x, &b.t, &b.cond(), checkpoint, &mut |out| {
                    Ok((out * &b.weights)?.sum_all()?)
                })
                .unwrap()
        };
        let (loss_plain, plain) = run(false);
        let (loss_ckpt, ckpt) = run(true);
        assert_eq!(
            loss_plain.to_scalar::<f32>().unwrap(),
            loss_ckpt.to_scalar::<f32>().unwrap()
        );
        for ((name, _), (p, c)) in model.trainable_vars().iter().zip(plain.iter().zip(&ckpt)) {
            let (scale, diff) = (max_abs(p), max_abs_diff(p, c));
            assert!(scale > 0.0, "{name}: zero gradient ({cfg:?})");
            assert!(
                diff <= 1e-6 * scale,
                "{name}: max diff {diff} vs scale {scale} ({cfg:?})"
            );
        }
    }
}

/// The device-generic path (what CUDA runs) against the fused CPU kernels, forced on the CPU: the training
/// forward, every parameter's gradient and the inference forward, for every variant and option.
#[test]
fn the_device_generic_path_matches_the_fused_kernels() {
    for cfg in all_configs() {
        let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
        perturb(&model, 1);
        let b = batch(&cfg, DType::F32, 2);
        crate::test_util::assert_generic_matches_fused(&format!("{cfg:?}"), 1e-5, || {
            let out = model.forward_train(&b.x, &b.t, &b.cond()).unwrap();
            let grads = (&out * &b.weights).unwrap().sum_all().unwrap().backward().unwrap();
            let mut all = vec![
                ("forward_train".to_string(), out.detach()),
                ("forward".to_string(), model.forward(&b.x, &b.t, &b.cond()).unwrap()),
            ];
            for (name, var) in model.trainable_vars() {
                all.push((format!("grad {name}"), grads.get(var.as_tensor()).unwrap().clone()));
            }
            all
        });
    }
}

/// Issue 30: the estimate counted tokens × width only; the spatial attention holds N² scores per (frame, head)
/// and the temporal one frames² per (patch, head), as the kernel allocates them (a buffer per thread on the CPU).
#[test]
fn the_memory_estimate_holds_the_attention_scores() {
    let threads = |problems: usize| rayon::current_num_threads().min(problems) as u128;
    let spatial = LatteConfig {
        input_size: 64,
        patch_size: 1,
        ..tiny(Variant::V1, Injection::Adaln, TemporalPos::Absolute, false)
    };
    let model = LatteModel::new(&spatial, &Device::Cpu, DType::F32, 0).unwrap();
    // 4096 patches per frame: 2^24 scores per (frame, head).
    let dims = [1, 4, 2, 64, 64];
    assert!(model.activation_elements(&dims, false) >= threads(4 * 4) * (1 << 24));
    // Split heads: half of them for each kind of attention, no fewer buffers with enough problems.
    let split = LatteModel::new(
        &LatteConfig {
            variant: Variant::V4,
            depth: 2,
            ..spatial.clone()
        },
        &Device::Cpu,
        DType::F32,
        0,
    )
    .unwrap();
    assert!(split.activation_elements(&dims, false) >= threads(4 * 2) * (1 << 24));
    let temporal = LatteConfig {
        num_frames: 2048,
        ..tiny(Variant::V1, Injection::Adaln, TemporalPos::Absolute, false)
    };
    let model = LatteModel::new(&temporal, &Device::Cpu, DType::F32, 0).unwrap();
    // 2048 frames at each of 4 patches: 2^22 scores per (patch, head).
    assert!(model.activation_elements(&[1, 2048, 2, 4, 4], false) >= threads(4 * 4) * (1 << 22));
}
