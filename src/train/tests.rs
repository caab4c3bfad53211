//! Trainer tests: exact resume, atomic and verified checkpoints, non-finite handling, accumulation, precision.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::config::LatteConfig;
use crate::diffusion::GaussianDiffusion;
use crate::diffusion::{named_beta_schedule, BetaSchedule, LossType, MeanType, VarType};
use crate::error::LatteError;
use crate::model::{AnyModel, Condition, Denoiser};
use crate::model::{LatteModel, LatteT2VModel};
use crate::rng::Generator;
use optim::AdamWConfig;
use trainer::State;

fn tiny(classes: usize, images: usize) -> LatteConfig {
    LatteConfig {
        depth: 2,
        hidden_size: 16,
        num_heads: 2,
        patch_size: 2,
        input_size: 4,
        in_channels: 2,
        num_frames: 3,
        num_classes: classes,
        use_image_num: images,
        ..LatteConfig::default()
    }
}

fn diffusion() -> GaussianDiffusion {
    let betas = named_beta_schedule(BetaSchedule::Linear, 1000, 1e-4, 0.02).unwrap();
    GaussianDiffusion::new(betas, MeanType::Epsilon, VarType::LearnedRange, LossType::Mse).unwrap()
}

fn data(cfg: &LatteConfig, b: usize, dtype: DType, seed: u64) -> Tensor {
    let frames = cfg.num_frames + cfg.use_image_num;
    Generator::new(seed)
        .randn(
            &[b, frames, cfg.in_channels, cfg.input_size, cfg.input_size],
            dtype,
            &Device::Cpu,
        )
        .unwrap()
}

fn opts() -> TrainerOptions {
    TrainerOptions {
        optimizer: AdamWConfig {
            lr: 1e-3,
            weight_decay: 0.01,
            ..Default::default()
        },
        warmup_steps: 3,
        ema_decay: 0.9,
        grad_clip: Some(1.0),
        clip_start_step: 2,
        seed: 7,
        ..Default::default()
    }
}

fn weights(model: impl Into<AnyModel>) -> Vec<Vec<f32>> {
    let model: AnyModel = model.into();
    model
        .state_dict()
        .values()
        .map(|t| {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect()
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("latte-rs-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn resume_is_bit_exact() {
    let cfg = LatteConfig {
        class_dropout_prob: 0.3,
        ..tiny(3, 1)
    };
    let x = data(&cfg, 2, DType::F32, 1);
    let y = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
    let yi = Tensor::new(&[[1u32], [0]], &Device::Cpu).unwrap();
    let run = |trainer: &mut Trainer, n: usize| -> Vec<StepStats> {
        (0..n)
            .map(|_| {
                trainer
                    .step(&x, &Condition::from_labels(Some(&y), Some(&yi)).unwrap())
                    .unwrap()
            })
            .collect()
    };
    let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
    let mut straight = Trainer::new(&model, &diffusion(), opts()).unwrap();
    let all = run(&mut straight, 5);

    let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
    let mut first = Trainer::new(&model, &diffusion(), opts()).unwrap();
    let mut losses = run(&mut first, 2);
    let dir = tmpdir("resume").join("ckpt");
    first.save(&dir).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&dir, &Device::Cpu).unwrap();
    assert_eq!(resumed.step_count(), 2);
    losses.extend(run(&mut resumed, 3));
    assert_eq!(all, losses, "per-step statistics differ after resume");
    assert_eq!(weights(straight.model().clone()), weights(resumed.model().clone()));
    assert_eq!(
        weights(straight.ema_model().unwrap()),
        weights(resumed.ema_model().unwrap())
    );
    // The checkpoint's weights load for sampling.
    let loaded = LatteModel::load(&dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(loaded.config(), &cfg);
    // Saving over an existing checkpoint replaces it whole.
    resumed.save(&dir).unwrap();
    assert_eq!(Trainer::resume(&dir, &Device::Cpu).unwrap().step_count(), 5);
    let leftovers: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["ckpt"]);
}

#[test]
fn corrupt_or_truncated_checkpoints_are_reported_by_file() {
    let cfg = tiny(0, 0);
    let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
    let mut trainer = Trainer::new(&model, &diffusion(), opts()).unwrap();
    trainer
        .step(&data(&cfg, 2, DType::F32, 1), &Condition::Unconditional)
        .unwrap();
    let root = tmpdir("corrupt");
    let good = root.join("good");
    trainer.save(&good).unwrap();
    for file in [
        "model.safetensors",
        "optimizer.safetensors",
        "ema.safetensors",
        "diffusion.json",
        "trainer.json",
    ] {
        for mode in ["truncate", "flip"] {
            let bad = root.join(format!("bad-{file}-{mode}"));
            trainer.save(&bad).unwrap();
            let path = bad.join(file);
            let mut bytes = std::fs::read(&path).unwrap();
            match mode {
                "truncate" => bytes.truncate(bytes.len() / 2),
                _ => {
                    let i = bytes.len() - 3;
                    bytes[i] ^= 0x55;
                }
            }
            std::fs::write(&path, bytes).unwrap();
            let err = Trainer::resume(&bad, &Device::Cpu)
                .err()
                .expect("corrupt checkpoint accepted")
                .to_string();
            assert!(err.contains(file), "{file} {mode}: {err}");
        }
    }
    let missing = Trainer::resume(&root.join("nope"), &Device::Cpu).err().unwrap();
    assert!(matches!(missing, LatteError::NotFound(_)), "{missing}");
    // The good one is untouched.
    assert_eq!(Trainer::resume(&good, &Device::Cpu).unwrap().step_count(), 1);
}

#[test]
fn non_finite_steps_raise_or_skip_without_touching_the_weights() {
    let cfg = tiny(0, 0);
    let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
    let mut trainer = Trainer::new(&model, &diffusion(), opts()).unwrap();
    let before = weights(&model);
    let mut grads: HashMap<String, Tensor> = model
        .trainable_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().ones_like().unwrap()))
        .collect();
    let (name, g) = grads.iter_mut().next().unwrap();
    let name = name.clone();
    *g = (g.clone() * f64::NAN).unwrap();
    let err = trainer
        .apply_gradients(&grads)
        .expect_err("NaN gradient accepted")
        .to_string();
    assert!(err.contains("non-finite gradient"), "{err}");
    assert_eq!(weights(&model), before);
    assert_eq!(trainer.step_count(), 0);

    let mut skipping = Trainer::new(
        &model,
        &diffusion(),
        TrainerOptions {
            skip_nonfinite: true,
            ..opts()
        },
    )
    .unwrap();
    let stats = skipping.apply_gradients(&grads).unwrap();
    assert!(stats.skipped && stats.skipped_steps == 1 && stats.step == 0);
    assert_eq!(weights(&model), before);
    // A finite step after a skipped one proceeds normally.
    grads.insert(name, model.trainable_vars()[0].1.as_tensor().ones_like().unwrap());
    let grads: HashMap<String, Tensor> = model
        .trainable_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().ones_like().unwrap()))
        .collect();
    assert_eq!(skipping.apply_gradients(&grads).unwrap().step, 1);
    assert_ne!(weights(&model), before);

    // A NaN in the data gives a clear error before any work.
    let x = (data(&cfg, 2, DType::F32, 1) * f64::NAN).unwrap();
    let err = trainer.step(&x, &Condition::Unconditional).err().unwrap().to_string();
    assert!(err.contains("NaN") || err.contains("non-finite"), "{err}");
}

#[test]
fn accumulation_matches_the_whole_batch() {
    let cfg = tiny(0, 0);
    let x = data(&cfg, 4, DType::F64, 3);
    let run = |k: usize| {
        let model = LatteModel::new(&cfg, &Device::Cpu, DType::F64, 0).unwrap();
        let mut t = Trainer::new(
            &model,
            &diffusion(),
            TrainerOptions {
                grad_accumulation: k,
                ..opts()
            },
        )
        .unwrap();
        let stats: Vec<_> = (0..3).map(|_| t.step(&x, &Condition::Unconditional).unwrap()).collect();
        (stats, weights(&model))
    };
    let (s1, w1) = run(1);
    let (s2, w2) = run(2);
    for (a, b) in s1.iter().zip(&s2) {
        assert!(
            (a.loss - b.loss).abs() < 1e-12 * a.loss.abs().max(1.0),
            "{a:?} vs {b:?}"
        );
        assert!(
            (a.grad_norm - b.grad_norm).abs() < 1e-10 * a.grad_norm,
            "{a:?} vs {b:?}"
        );
    }
    for (a, b) in w1.iter().flatten().zip(w2.iter().flatten()) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    let model = LatteModel::new(&cfg, &Device::Cpu, DType::F64, 0).unwrap();
    let mut t = Trainer::new(
        &model,
        &diffusion(),
        TrainerOptions {
            grad_accumulation: 3,
            ..opts()
        },
    )
    .unwrap();
    let err = t.step(&x, &Condition::Unconditional).err().unwrap().to_string();
    assert!(err.contains("grad_accumulation = 3"), "{err}");
}

#[test]
fn half_precision_models_train_with_f32_master_weights() {
    for dtype in [DType::BF16, DType::F16] {
        let cfg = tiny(0, 0);
        let model = LatteModel::new(&cfg, &Device::Cpu, dtype, 0).unwrap();
        let mut t = Trainer::new(&model, &diffusion(), opts()).unwrap();
        let x = data(&cfg, 2, DType::F32, 1);
        for _ in 0..3 {
            let s = t.step(&x, &Condition::Unconditional).unwrap();
            assert!(s.loss.is_finite() && !s.skipped, "{dtype:?}: {s:?}");
            assert_eq!(s.loss_scale.is_some(), dtype == DType::F16);
        }
        assert_eq!(model.dtype(), dtype);
        match &t.state {
            State::F32(b) => {
                let master = b.master.as_ref().expect("master weights for a half model");
                // The model holds the rounded master weights.
                let (_, var) = &model.trainable_vars()[0];
                let rounded = Tensor::from_slice(&master[0], var.shape(), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                assert_eq!(crate::test_util::max_abs_diff(&rounded, var.as_tensor()), 0.0);
            }
            State::F64(_) | State::Device(_) => panic!("f64 or device state for a half model on the host path"),
        }
        // Resume keeps the master weights (not the rounded ones).
        let dir = tmpdir(&format!("half-{dtype:?}")).join("c");
        t.save(&dir).unwrap();
        let r = Trainer::resume(&dir, &Device::Cpu).unwrap();
        match (&t.state, &r.state) {
            (State::F32(a), State::F32(b)) => assert_eq!(a.master, b.master),
            _ => panic!("state precision changed"),
        }
    }
}

#[test]
fn bad_options_and_inputs_are_named() {
    let cfg = tiny(3, 0);
    let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
    let bad = |o: TrainerOptions, name: &str| {
        let err = Trainer::new(&model, &diffusion(), o).err().unwrap().to_string();
        assert!(err.contains(name), "{err}");
    };
    let mut o = opts();
    o.optimizer.lr = -1.0;
    bad(o, "lr");
    bad(
        TrainerOptions {
            grad_clip: Some(0.0),
            ..opts()
        },
        "grad_clip",
    );
    bad(
        TrainerOptions {
            ema_decay: 1.5,
            ..opts()
        },
        "ema_decay",
    );
    let mut t = Trainer::new(&model, &diffusion(), opts()).unwrap();
    let x = data(&cfg, 2, DType::F32, 1);
    let err = t.step(&x, &Condition::Unconditional).err().unwrap().to_string();
    assert!(err.contains("labels are required"), "{err}");
    let y = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
    let err = t
        .step(&x, &Condition::from_labels(Some(&y), None).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("labels") && err.contains("[2]"), "{err}");
    let y = Tensor::new(&[0u32, 7], &Device::Cpu).unwrap();
    let err = t
        .step(&x, &Condition::from_labels(Some(&y), None).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("labels in"), "{err}");
    assert_eq!(t.step_count(), 0);
}

/// A step equals its two halves (forward_backward, then apply_gradient_list), and given draws replace the
/// trainer's: the same draws give the same step from any trainer state.
#[test]
fn step_equals_forward_backward_then_apply_and_draws_replace_the_stream() {
    let cfg = tiny(0, 0);
    let x = data(&cfg, 4, DType::F32, 1);
    let whole = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
    let halves = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
    let mut a = Trainer::new(&whole, &diffusion(), opts()).unwrap();
    let mut b = Trainer::new(&halves, &diffusion(), opts()).unwrap();
    for _ in 0..3 {
        let sa = a.step(&x, &Condition::Unconditional).unwrap();
        let g = b
            .forward_backward(&x, &Condition::Unconditional, &Draws::default())
            .unwrap();
        assert_eq!(g.grads.len(), b.parameter_names().len());
        let sb = b.apply_gradient_list(&g.grads, Some(g.loss), g.mse, g.vb).unwrap();
        assert_eq!(sa, sb);
    }
    assert_eq!(weights(&whole), weights(&halves));

    // Given draws: two trainers with different seeds take the same step.
    let noise = data(&cfg, 4, DType::F32, 9);
    let draws = Draws {
        timesteps: Some(vec![0, 17, 500, 999]),
        noise: Some(noise),
    };
    let (m1, m2) = (
        LatteModel::new(&cfg, &Device::Cpu, DType::F32, 3).unwrap(),
        LatteModel::new(&cfg, &Device::Cpu, DType::F32, 3).unwrap(),
    );
    let mut t1 = Trainer::new(&m1, &diffusion(), TrainerOptions { seed: 1, ..opts() }).unwrap();
    let mut t2 = Trainer::new(&m2, &diffusion(), TrainerOptions { seed: 2, ..opts() }).unwrap();
    assert_eq!(
        t1.step_with(&x, &Condition::Unconditional, &draws).unwrap(),
        t2.step_with(&x, &Condition::Unconditional, &draws).unwrap()
    );
    assert_eq!(weights(&m1), weights(&m2));
    // Bad draws are refused by name.
    let bad = Draws {
        timesteps: Some(vec![0, 1, 2, 1000]),
        noise: None,
    };
    assert!(t1
        .step_with(&x, &Condition::Unconditional, &bad)
        .unwrap_err()
        .to_string()
        .contains("timesteps"));
    let bad = Draws {
        timesteps: None,
        noise: Some(data(&cfg, 2, DType::F32, 9)),
    };
    assert!(t1
        .step_with(&x, &Condition::Unconditional, &bad)
        .unwrap_err()
        .to_string()
        .contains("noise"));
}

/// The cheap overflow bound never lets an overflowing step through: wherever it says "cannot overflow", the exact
/// dry run agrees.
#[test]
fn overflow_bound_is_conservative() {
    use optim::{adamw_cannot_overflow, adamw_stays_finite, max_abs, max_nonnegative, Magnitudes, Update};
    let cfg = AdamWConfig::default();
    let mut rng = Generator::new(5);
    for case in 0..400 {
        let scale = 10f64.powi((case % 80) - 40);
        let p: Vec<f32> = rng.normal(64, 0.0, 1.0).iter().map(|v| (v * scale) as f32).collect();
        let g: Vec<f32> = rng.normal(64, 0.0, scale * 1e3).iter().map(|&v| v as f32).collect();
        let m: Vec<f32> = rng.normal(64, 0.0, scale).iter().map(|&v| v as f32).collect();
        let v: Vec<f32> = m.iter().map(|x| x * x).collect();
        let update = Update {
            step: 1 + case as u64 % 5,
            lr: 10f64.powi(case % 13 - 4),
            grad_scale: 1.0,
        };
        let mag = Magnitudes {
            param: max_abs(&p),
            grad: max_abs(&g),
            m: max_abs(&m),
            v: max_nonnegative(&v),
        };
        if adamw_cannot_overflow::<f32>(mag, update, &cfg) {
            assert!(adamw_stays_finite(&p, &g, &m, &v, update, &cfg), "case {case}");
        }
    }
    assert_eq!(max_abs(&[1.0f32, -3.0, 2.0]), 3.0);
    assert!(max_abs(&[1.0f32, f32::NAN]).is_nan());
}

/// A negative second moment (no AdamW step makes one; an edited checkpoint could, before loads checked it) never
/// passes the cheap bound, and the dry run refuses the step it would turn into NaN: the trainer reports it with
/// the weights unchanged instead of returning normally with every parameter NaN.
#[test]
fn a_negative_second_moment_never_passes_the_overflow_guard() {
    use optim::{adamw_cannot_overflow, adamw_stays_finite, max_abs, max_nonnegative, Magnitudes, Update};
    let cfg = AdamWConfig::default();
    let update = Update {
        step: 3,
        lr: 1e-3,
        grad_scale: 1.0,
    };
    let (p, g, m, v) = ([1.0f32, 2.0], [0.0f32, 1e-3], [0.0f32, 0.0], [-1.0f32, 0.5]);
    assert!(max_nonnegative(&v).is_nan());
    assert_eq!(max_nonnegative(&[0.5f32, 0.0, 2.0]), 2.0);
    assert!(max_nonnegative(&[0.5f32, f32::INFINITY]).is_nan());
    let mag = Magnitudes {
        param: max_abs(&p),
        grad: max_abs(&g),
        m: max_abs(&m),
        v: max_nonnegative(&v),
    };
    assert!(!adamw_cannot_overflow::<f32>(mag, update, &cfg));
    assert!(!adamw_stays_finite(&p, &g, &m, &v, update, &cfg));

    let tc = tiny(0, 0);
    let model = LatteModel::new(&tc, &Device::Cpu, DType::F32, 0).unwrap();
    let mut trainer = Trainer::new(&model, &diffusion(), opts()).unwrap();
    let State::F32(buffers) = &mut trainer.state else {
        panic!("a float32 CPU model keeps its optimiser state on the host")
    };
    buffers.v[0][0] = -1.0;
    let before = weights(&model);
    let err = trainer
        .step(&data(&tc, 2, DType::F32, 1), &Condition::Unconditional)
        .expect_err("a step through a negative second moment was taken")
        .to_string();
    assert!(err.contains("non-finite"), "{err}");
    assert_eq!(weights(&model), before);
    assert_eq!(trainer.step_count(), 0);
}

/// The text-to-video trainer: caption dropout to the null caption, image-video joint captions, the resume
/// (null caption included) bit-exact, and checkpointing equal to the plain path.
#[test]
fn text_to_video_resume_is_bit_exact() {
    let cfg = crate::model::t2v::tests::tiny("gelu-approximate", false);
    let dev = Device::Cpu;
    let mut rng = Generator::new(2);
    // (B, F + 1 image, C, H, W) in the datasets' layout; a video caption and an image caption per clip.
    let x = rng.randn(&[2, 4, 3, 4, 4], DType::F32, &dev).unwrap();
    let caption = rng.randn(&[2, 2, 6, 5], DType::F32, &dev).unwrap();
    let mask = Tensor::new(&[[[1f32, 1., 1., 0., 0., 0.], [1., 1., 0., 0., 0., 0.]]; 2], &dev).unwrap();
    let null = rng.randn(&[1, 6, 5], DType::F32, &dev).unwrap();
    let null_mask = Tensor::new(&[[1f32, 0., 0., 0., 0., 0.]], &dev).unwrap();
    let cond = Condition::Text {
        embeddings: caption,
        mask: Some(mask),
    };
    let options = TrainerOptions {
        caption_dropout_prob: 0.5,
        ..opts()
    };
    let new = |checkpointing: bool| {
        let model = LatteT2VModel::new(&cfg, &dev, DType::F32, 0).unwrap();
        let o = TrainerOptions {
            gradient_checkpointing: checkpointing,
            ..options.clone()
        };
        let mut t = Trainer::new(&model, &diffusion(), o).unwrap();
        t.set_null_caption(&null, Some(&null_mask)).unwrap();
        t
    };
    // Without a null caption, caption dropout is refused by name.
    let model = LatteT2VModel::new(&cfg, &dev, DType::F32, 0).unwrap();
    let err = Trainer::new(&model, &diffusion(), options.clone())
        .unwrap()
        .step(&x, &cond)
        .err()
        .unwrap();
    assert!(err.to_string().contains("null_caption"), "{err}");

    let mut straight = new(false);
    let all: Vec<_> = (0..5).map(|_| straight.step(&x, &cond).unwrap()).collect();
    let mut checkpointed = new(true);
    let with_ckpt: Vec<_> = (0..5).map(|_| checkpointed.step(&x, &cond).unwrap()).collect();
    for (a, b) in all.iter().zip(&with_ckpt) {
        assert!((a.loss - b.loss).abs() <= 1e-6 * a.loss.abs(), "{a:?} vs {b:?}");
    }
    let mut first = new(false);
    let mut losses: Vec<_> = (0..2).map(|_| first.step(&x, &cond).unwrap()).collect();
    let dir = tmpdir("t2v-resume").join("ckpt");
    first.save(&dir).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&dir, &dev).unwrap();
    assert!(resumed.model().is_text());
    assert!(resumed.null_caption().is_some());
    losses.extend((0..3).map(|_| resumed.step(&x, &cond).unwrap()));
    assert_eq!(all, losses, "per-step statistics differ after resume");
    assert_eq!(weights(straight.model().clone()), weights(resumed.model().clone()));
    assert_eq!(
        weights(straight.ema_model().unwrap()),
        weights(resumed.ema_model().unwrap())
    );
    // A class-model loader refuses the text checkpoint by name.
    let err = LatteModel::load(&dir.join("model.safetensors"), &dev).err().unwrap();
    assert!(err.to_string().contains("LatteT2VTransformer"), "{err}");
}

/// A trainer whose optimiser state is chosen under the device-generic path: the flat device buffers that CUDA
/// parameters get, here on the CPU.
fn device_trainer(model: impl Into<AnyModel>, o: TrainerOptions) -> Trainer {
    let _g = crate::nn::kernels::force_generic();
    let t = Trainer::new(model, &diffusion(), o).unwrap();
    assert!(
        matches!(t.state, State::Device(_)),
        "the generic path keeps the optimiser on the device"
    );
    t
}

/// Random gradients of every parameter's shape (of the given scale).
fn random_grads(t: &Trainer, seed: u64, scale: f64) -> Vec<Tensor> {
    let mut rng = Generator::new(seed);
    t.parameter_shapes()
        .iter()
        .map(|s| (rng.randn(s, DType::F32, &Device::Cpu).unwrap() * scale).unwrap())
        .collect()
}

/// The device optimiser (tensor ops) takes the host kernels' steps to the last bit: AdamW with weight decay,
/// warmup, clipping from a start step, the EMA, f32 master weights of half models, f64 models; and its
/// checkpoints resume exactly, on either path.
#[test]
fn the_device_optimizer_equals_the_host_kernels_bit_for_bit() {
    let cfg = tiny(0, 0);
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        let (a, b) = (
            LatteModel::new(&cfg, &Device::Cpu, dtype, 0).unwrap(),
            LatteModel::new(&cfg, &Device::Cpu, dtype, 0).unwrap(),
        );
        let mut host = Trainer::new(&a, &diffusion(), opts()).unwrap();
        assert!(!matches!(host.state, State::Device(_)));
        let mut device = device_trainer(&b, opts());
        for step in 0..4u64 {
            // Large gradients at the later steps, so clipping acts.
            let g = random_grads(&host, step, if step < 2 { 0.1 } else { 10.0 });
            let sa = host.apply_gradient_list(&g, Some(1.0), None, None).unwrap();
            let sb = device.apply_gradient_list(&g, Some(1.0), None, None).unwrap();
            assert_eq!(sa.step, sb.step);
            assert!(
                (sa.grad_norm - sb.grad_norm).abs() <= 1e-12 * sa.grad_norm,
                "{sa:?} vs {sb:?}"
            );
        }
        assert_eq!(weights(&a), weights(&b), "{dtype:?}: weights");
        assert_eq!(
            weights(host.ema_model().unwrap()),
            weights(device.ema_model().unwrap()),
            "{dtype:?}: EMA"
        );
        // A checkpoint of the device state resumes on the host path and on the device path alike.
        let dir = tmpdir(&format!("device-opt-{dtype:?}")).join("c");
        device.save(&dir).unwrap();
        let mut on_host = Trainer::resume(&dir, &Device::Cpu).unwrap();
        let mut on_device = {
            let _g = crate::nn::kernels::force_generic();
            Trainer::resume(&dir, &Device::Cpu).unwrap()
        };
        assert!(matches!(on_device.state, State::Device(_)));
        let g = random_grads(&host, 99, 1.0);
        for t in [&mut host, &mut on_host, &mut on_device] {
            t.apply_gradient_list(&g, Some(1.0), None, None).unwrap();
        }
        let w = weights(host.model().clone());
        assert_eq!(w, weights(on_host.model().clone()), "{dtype:?}: resumed on the host");
        assert_eq!(
            w,
            weights(on_device.model().clone()),
            "{dtype:?}: resumed on the device"
        );
    }
}

/// On the device path a step reads back scalars only (the gradient norm and one finiteness flag), never the
/// parameters or the gradients; it refuses a step that would overflow, and a non-finite gradient, with the weights
/// unchanged, as the host path does.
#[test]
fn the_device_optimizer_takes_no_host_copy_of_parameters_or_gradients() {
    let cfg = tiny(3, 0);
    let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
    let params: usize = model.trainable_vars().iter().map(|(_, v)| v.elem_count()).sum();
    let mut t = device_trainer(&model, opts());
    let x = data(&cfg, 2, DType::F32, 1);
    let y = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
    let before = super::host_values_read();
    let steps = 3;
    for _ in 0..steps {
        let _g = crate::nn::kernels::force_generic();
        t.step(&x, &Condition::from_labels(Some(&y), None).unwrap()).unwrap();
    }
    let read = super::host_values_read() - before;
    assert_eq!(
        read,
        2 * steps,
        "values read back per step (the model has {params} parameters)"
    );

    let w = weights(&model);
    let huge = TrainerOptions {
        optimizer: AdamWConfig {
            lr: 1e300,
            ..Default::default()
        },
        grad_clip: None,
        warmup_steps: 0,
        ..opts()
    };
    let mut t = device_trainer(&model, huge);
    let g = random_grads(&t, 1, 1.0);
    let err = t
        .apply_gradient_list(&g, Some(1.0), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite"), "{err}");
    let nan: Vec<Tensor> = g.iter().map(|g| (g * f64::NAN).unwrap()).collect();
    let err = t
        .apply_gradient_list(&nan, Some(1.0), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite gradient"), "{err}");
    assert_eq!(weights(&model), w, "a refused step changed the weights");
}

/// The whole train step on the device-generic path, with activation checkpointing and accumulation, gives the
/// fused kernels' loss and gradients (f32, 1e-5 relative).
#[test]
fn the_generic_train_step_matches_the_fused_one_with_checkpointing() {
    let cfg = tiny(3, 1);
    let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
    // Away from the zero init, so that every path carries gradient.
    let mut rng = Generator::new(5);
    for (_, var) in model.trainable_vars() {
        let noise = (rng.randn(var.dims(), DType::F32, &Device::Cpu).unwrap() * 0.1).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
    let x = data(&cfg, 4, DType::F32, 1);
    let y = Tensor::new(&[0u32, 2, 1, 3], &Device::Cpu).unwrap();
    let cond = Condition::from_labels(
        Some(&y),
        Some(&Tensor::new(&[[1u32], [0], [2], [1]], &Device::Cpu).unwrap()),
    )
    .unwrap();
    let draws = Draws {
        timesteps: Some(vec![3, 250, 600, 999]),
        noise: Some(data(&cfg, 4, DType::F32, 2)),
    };
    let o = TrainerOptions {
        gradient_checkpointing: true,
        grad_accumulation: 2,
        ..opts()
    };
    let mut t = Trainer::new(&model, &diffusion(), o).unwrap();
    // The same label dropout on both runs.
    let rng = t.rng_state();
    crate::test_util::assert_generic_matches_fused("train step", 1e-5, || {
        t.set_rng_state(&rng).unwrap();
        let g = t.forward_backward(&x, &cond, &draws).unwrap();
        let mut all = vec![("loss".to_string(), Tensor::new(g.loss, &Device::Cpu).unwrap())];
        all.extend(t.parameter_names().iter().cloned().zip(g.grads));
        all
    });
}
