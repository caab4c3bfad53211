//! Whole `Trainer::step`s of a model given by a config file, timed: the harness for profiling the training step
//! end to end (`perf record -g ./target/release/examples/profile_step tiny 20`).
//!
//! Arguments: a workload ("tiny": the demo's model, Latte-S/4 at depth 4 and width 96, 8 frames of 16×16 pixels,
//! batch 32, 4 classes; "s2": Latte-S/2, 16 frames of 32×32 latents, batch 2), the number of timed steps, and
//! optionally "ckpt" for activation checkpointing.

use candle_core::{DType, Device, Tensor};
use latte_rs::diffusion::{DiffusionOptions, GaussianDiffusion};
use latte_rs::{Condition, Denoiser, LatteConfig, LatteModel, Trainer, TrainerOptions};

fn main() -> latte_rs::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workload = args.first().map(String::as_str).unwrap_or("tiny");
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let checkpoint = args.iter().any(|a| a == "ckpt");
    let (cfg, batch) = match workload {
        "tiny" => (
            LatteConfig {
                depth: 4,
                hidden_size: 96,
                num_heads: 4,
                num_frames: 8,
                input_size: 16,
                in_channels: 3,
                num_classes: 4,
                ..LatteConfig::preset("Latte-S/4")?
            },
            32,
        ),
        _ => (
            LatteConfig {
                num_frames: 16,
                input_size: 32,
                ..LatteConfig::preset("Latte-S/2")?
            },
            2,
        ),
    };
    let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0)?;
    let diffusion = GaussianDiffusion::create(&DiffusionOptions::default())?;
    let opts = TrainerOptions {
        gradient_checkpointing: checkpoint,
        grad_clip: Some(1.0),
        ..TrainerOptions::default()
    };
    let mut trainer = Trainer::new(&model, &diffusion, opts)?;
    let dims = (batch, cfg.num_frames, cfg.in_channels, cfg.input_size, cfg.input_size);
    let x = Tensor::randn(0f32, 1., dims, &Device::Cpu)?;
    let labels = (cfg.num_classes > 0)
        .then(|| Tensor::new((0..batch as u32).map(|i| i % 4).collect::<Vec<_>>(), &Device::Cpu))
        .transpose()?;
    let cond = Condition::from_labels(labels.as_ref(), None)?;
    trainer.step(&x, &cond)?;
    let start = std::time::Instant::now();
    for _ in 0..steps {
        trainer.step(&x, &cond)?;
    }
    let per_step = start.elapsed().as_secs_f64() / steps as f64;
    eprintln!("{workload}: {:.1} ms per step ({steps} steps)", per_step * 1e3);
    if args.iter().any(|a| a == "phases") {
        // The model alone: forward with the graph, forward + backward of a plain loss, inference forward.
        let t = Tensor::new(vec![500f32; batch], &Device::Cpu)?;
        let cond = Condition::from_labels(labels.as_ref(), None)?;
        let cond = model.check_condition(&cond, x.dims())?;
        let time = |f: &mut dyn FnMut() -> latte_rs::Result<()>| -> latte_rs::Result<f64> {
            f()?;
            let start = std::time::Instant::now();
            for _ in 0..steps {
                f()?;
            }
            Ok(start.elapsed().as_secs_f64() * 1e3 / steps as f64)
        };
        let fwd = time(&mut || model.denoise(&x, &t, &cond, true).map(|_| ()))?;
        let both = time(&mut || {
            model
                .loss_and_grads(&x, &t, &cond, checkpoint, &mut |out| Ok(out.sqr()?.mean_all()?))
                .map(|_| ())
        })?;
        let inference = time(&mut || model.denoise(&x, &t, &cond, false).map(|_| ()))?;
        eprintln!(
            "  forward (graph) {fwd:.1} ms, forward + backward {both:.1} ms (backward {:.1}), inference {inference:.1} ms",
            both - fwd
        );
    }
    Ok(())
}
