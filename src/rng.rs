//! The seeded generator behind every random draw of the crate (candle's CPU device cannot be seeded).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A reproducible random stream: the same seed gives the same numbers on every platform.
#[derive(Clone, Debug)]
pub struct Generator {
    rng: ChaCha8Rng,
}

/// A serialisable snapshot of a [`Generator`] (the ChaCha8 key, stream and word position).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GeneratorState {
    /// The 32-byte key as hex.
    pub seed: String,
    pub stream: u64,
    /// The word position (a u128) as a decimal string.
    pub word_pos: String,
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

    /// `n` integers drawn uniformly from [0, high).
    pub fn below(&mut self, n: usize, high: usize) -> Vec<usize> {
        (0..n).map(|_| self.rng.random_range(0..high)).collect()
    }

    /// The position of the stream, to be restored by [`Generator::from_state`] (for resumable training).
    pub fn state(&self) -> GeneratorState {
        GeneratorState {
            seed: self.rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos().to_string(),
        }
    }

    /// The generator at a position saved by [`Generator::state`].
    pub fn from_state(state: &GeneratorState) -> crate::Result<Self> {
        let bad = || crate::LatteError::Value(format!("generator state: malformed {state:?}"));
        if state.seed.len() != 64 {
            return Err(bad());
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&state.seed[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(state.word_pos.parse::<u128>().map_err(|_| bad())?);
        Ok(Self { rng })
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
        // The f64 draws and their cast live at once.
        let n = crate::limits::ensure_tensor_fits("shape", dims, 8 + dtype.size_in_bytes())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        candle_core::Tensor::from_vec(self.normal(n, 0.0, 1.0), dims, device)?.to_dtype(dtype)
    }
}
