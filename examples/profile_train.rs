use candle_core::{DType, Device, Tensor};
use latte_rs::{LatteConfig, LatteModel};
fn main() -> latte_rs::Result<()> {
    let cfg = LatteConfig {
        num_frames: 4,
        input_size: 16,
        num_classes: 0,
        ..LatteConfig::preset("Latte-S/2")?
    };
    let model = LatteModel::new(&cfg, &Device::Cpu, DType::F32, 0)?;
    let x = Tensor::randn(0f32, 1., (1, 4, 4, 16, 16), &Device::Cpu)?;
    let t = Tensor::new(&[500f32], &Device::Cpu)?;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let out = model.forward_train(&x, &t, None, None)?;
        let loss = out.sqr()?.mean_all()?;
        let t1 = t0.elapsed();
        let g = loss.backward()?;
        let t2 = t0.elapsed();
        drop(g);
        let t3 = t0.elapsed();
        let _ = model.forward(&x, &t, None, None)?;
        eprintln!(
            "fwd(grad) {t1:?} bwd {:?} drop {:?} fwd(infer) {:?}",
            t2 - t1,
            t3 - t2,
            t0.elapsed() - t3
        );
    }
    Ok(())
}
