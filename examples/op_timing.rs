use candle_core::{DType, Device, Tensor};
use std::time::Instant;

fn time<F: FnMut() -> Tensor>(name: &str, mut f: F) {
    let _ = f();
    let t0 = Instant::now();
    for _ in 0..3 {
        let _ = f();
    }
    println!(
        "{name}: {:.1} ms",
        t0.elapsed().as_secs_f64() * 1000.0 / 3.0
    );
}

fn main() {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (8192, 384), &d).unwrap();
    let w1 = Tensor::randn(0f32, 1., (1536, 384), &d).unwrap();
    let h = Tensor::randn(0f32, 1., (8192, 1536), &d).unwrap();
    let s = Tensor::randn(0f32, 1., (32 * 6, 256, 256), &d).unwrap();
    let q = Tensor::randn(0f32, 1., (32 * 6, 256, 64), &d).unwrap();
    let ones = Tensor::ones(384, DType::F32, &d).unwrap();
    let zeros = Tensor::zeros(384, DType::F32, &d).unwrap();
    time("fc1 matmul 8192x384x1536", || {
        x.matmul(&w1.t().unwrap()).unwrap()
    });
    time("gelu 8192x1536", || h.gelu().unwrap());
    time("parallel gelu 8192x1536", || {
        latte_rs::nn::gelu::gelu(&h).unwrap()
    });
    time("affine 8192x1536", || h.affine(2.0, 1.0).unwrap());
    time("add 8192x1536", || (&h + &h).unwrap());
    time("layer_norm 8192x384", || {
        candle_nn::ops::layer_norm(&x, &ones, &zeros, 1e-6).unwrap()
    });
    time("softmax 192x256x256", || {
        candle_nn::ops::softmax_last_dim(&s).unwrap()
    });
    time("qk^T 192x256x64", || q.matmul(&q.t().unwrap()).unwrap());
    time("transpose copy 8192x384", || {
        x.reshape((2, 16, 256, 384))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    });
    let xb = x.reshape((2, 16, 256, 384)).unwrap();
    let c = Tensor::randn(0f32, 1., (2, 16, 1, 384), &d).unwrap();
    time("broadcast_mul mod 8192x384", || {
        xb.broadcast_mul(&c).unwrap()
    });
}
