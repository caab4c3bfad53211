//! Inference forward passes of Latte-S/2 (batch 1, 16 frames of 32×32 latents), timed, in f32 or under bf16
//! autocast: the harness for profiling the sampling path (`perf record ./target/release/examples/profile_forward
//! bf16 10`).

use candle_core::{DType, Device, Tensor};
use latte_rs::{Condition, Denoiser, LatteConfig, LatteModel};

fn main() -> latte_rs::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bf16 = args.first().is_some_and(|a| a == "bf16");
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let cfg = LatteConfig {
        num_frames: 16,
        input_size: 32,
        ..LatteConfig::preset("Latte-S/2")?
    };
    let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0)?;
    let x = Tensor::randn(0f32, 1., (1, 16, 4, 32, 32), &Device::Cpu)?;
    let t = Tensor::new(&[500f32], &Device::Cpu)?;
    let cond = model.check_condition(&Condition::Unconditional, x.dims())?;
    latte_rs::nn::autocast::set_bf16(bf16);
    model.denoise(&x, &t, &cond, false)?;
    let start = std::time::Instant::now();
    for _ in 0..steps {
        model.denoise(&x, &t, &cond, false)?;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
    eprintln!(
        "Latte-S/2 forward, batch 1, {}: {ms:.1} ms",
        if bf16 { "bf16 autocast" } else { "f32" }
    );
    Ok(())
}
