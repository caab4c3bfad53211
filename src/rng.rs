//! The seeded generator behind every random draw of the crate (candle's CPU device cannot be seeded).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A reproducible random stream: the same seed gives the same numbers on every platform.
#[derive(Clone, Debug)]
pub struct Generator {
    rng: ChaCha8Rng,
}

impl Generator {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// `n` draws from N(mean, std²).
    pub fn normal(&mut self, n: usize, mean: f64, std: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut self.rng);
                mean + std * z
            })
            .collect()
    }

    /// `n` draws from U[low, high).
    pub fn uniform(&mut self, n: usize, low: f64, high: f64) -> Vec<f64> {
        (0..n).map(|_| self.rng.random_range(low..high)).collect()
    }
}

impl Generator {
    /// A tensor of standard normal draws (drawn in f64, then cast), e.g. the noise of a sampling step.
    pub fn randn(
        &mut self,
        dims: &[usize],
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        let n = dims.iter().product();
        candle_core::Tensor::from_vec(self.normal(n, 0.0, 1.0), dims, device)?.to_dtype(dtype)
    }
}
