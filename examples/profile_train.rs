//! A forward + backward of Latte-S/2 on random latents, timed per phase: the harness for profiling the training
//! path (`perf record ./target/release/examples/profile_train 16 32 1`). Arguments: frames, latent size, batch.

use candle_core::{DType, Device, Tensor};
use latte_rs::{Condition, Denoiser, LatteConfig, LatteModel};

fn main() -> latte_rs::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer arguments"))
        .collect();
    let (frames, size, batch) = (
        args.first().copied().unwrap_or(4),
        args.get(1).copied().unwrap_or(16),
        args.get(2).copied().unwrap_or(1),
    );
    let cfg = LatteConfig {
        num_frames: frames,
        input_size: size,
        num_classes: 0,
        ..LatteConfig::preset("Latte-S/2")?
    };
    let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0)?;
    let x = Tensor::randn(0f32, 1., (batch, frames, 4, size, size), &Device::Cpu)?;
    let t = Tensor::new(vec![500f32; batch], &Device::Cpu)?;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let out = model.forward_train(&x, &t, &Condition::Unconditional)?;
        let loss = out.sqr()?.mean_all()?;
        let t1 = t0.elapsed();
        let grads = loss.backward()?;
        let t2 = t0.elapsed();
        drop(grads);
        let _ = model.forward(&x, &t, &Condition::Unconditional)?;
        eprintln!(
            "forward (grad) {t1:?}, backward {:?}, forward (inference) {:?}",
            t2 - t1,
            t0.elapsed() - t2
        );
    }
    Ok(())
}
