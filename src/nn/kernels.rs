//! The one rule that picks an implementation: the fused CPU kernels of this crate (linear, bias, softmax,
//! LayerNorm, adaLN modulation, GELU, attention, bf16 autocast GEMM, the VAE's convolutions, the optimiser's
//! in-place update) or the device-generic path, written in candle tensor ops that every backend runs (CUDA takes
//! it, with candle's CUDA kernels and cuBLAS underneath).
//!
//! The fused kernels run when every operand lives on the CPU in a dtype they handle and the generic path is not
//! forced. Forcing it ([`KernelPath::Generic`]) runs, on the CPU, exactly the code a GPU runs, so that the tests
//! check the device path's forward and gradients against the fused kernels without a GPU.
//!
//! The choice is read when an op is built (forward) and the op carries its own backward, so a scope that forces
//! the generic path around a forward also decides its backward. It is per thread ([`force_generic`]) over a
//! process-wide default ([`set_default`], or the environment variable `LATTE_RS_KERNELS=generic`).

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Tensor};

/// Which implementation the building blocks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// The fused CPU kernels where they apply (CPU operands of a dtype they handle), else the generic path.
    Auto,
    /// The device-generic tensor-op path everywhere, also on the CPU.
    Generic,
}

impl KernelPath {
    /// Parses "auto" or "generic".
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(Self::Auto),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }
}

/// 0: not read yet, 1: auto, 2: generic.
static DEFAULT: AtomicU8 = AtomicU8::new(0);

thread_local! {
    static OVERRIDE: Cell<Option<KernelPath>> = const { Cell::new(None) };
}

fn encode(path: KernelPath) -> u8 {
    match path {
        KernelPath::Auto => 1,
        KernelPath::Generic => 2,
    }
}

/// The process-wide default: `LATTE_RS_KERNELS` ("auto" or "generic") until [`set_default`] is called.
pub fn default_path() -> KernelPath {
    match DEFAULT.load(Ordering::Relaxed) {
        1 => KernelPath::Auto,
        2 => KernelPath::Generic,
        _ => {
            let path = std::env::var("LATTE_RS_KERNELS")
                .ok()
                .and_then(|v| KernelPath::parse(v.trim()))
                .unwrap_or(KernelPath::Auto);
            // A racing set_default wins over the environment.
            let _ = DEFAULT.compare_exchange(0, encode(path), Ordering::Relaxed, Ordering::Relaxed);
            default_path()
        }
    }
}

/// Sets the process-wide default (threads inside a [`force_generic`] scope keep theirs).
pub fn set_default(path: KernelPath) {
    DEFAULT.store(encode(path), Ordering::Relaxed);
}

/// The path this thread runs now.
pub fn current() -> KernelPath {
    OVERRIDE.with(|o| o.get()).unwrap_or_else(default_path)
}

/// Restores the thread's previous choice when dropped.
#[must_use = "the generic path is forced only while the guard lives"]
pub struct Scope(Option<KernelPath>);

impl Drop for Scope {
    fn drop(&mut self) {
        OVERRIDE.with(|o| o.set(self.0));
    }
}

/// This thread's own choice (None: it follows the process-wide default).
pub fn current_override() -> Option<KernelPath> {
    OVERRIDE.with(|o| o.get())
}

/// Runs the calling thread on `path`, or on the process-wide default for None, until the returned guard is
/// dropped (carries another thread's [`current_override`] over).
pub fn scope_or_default(path: Option<KernelPath>) -> Scope {
    Scope(OVERRIDE.with(|o| o.replace(path)))
}

/// Runs the calling thread on `path` until the returned guard is dropped.
pub fn scope(path: KernelPath) -> Scope {
    Scope(OVERRIDE.with(|o| o.replace(Some(path))))
}

/// Forces the device-generic path on the calling thread until the returned guard is dropped.
pub fn force_generic() -> Scope {
    scope(KernelPath::Generic)
}

/// The rule: whether the fused CPU kernels run these operands — every one on the CPU with a dtype in `dtypes`,
/// and the generic path not forced.
pub fn fused_cpu(operands: &[&Tensor], dtypes: &[DType]) -> bool {
    current() == KernelPath::Auto
        && operands
            .iter()
            .all(|t| t.device().is_cpu() && dtypes.contains(&t.dtype()))
}

/// [`fused_cpu`] for operands that do not exist yet: whether tensors on `device` in `dtype` would run the fused
/// kernels (the memory estimates ask before a pass starts).
pub fn fused_cpu_for(device: &candle_core::Device, dtype: DType, dtypes: &[DType]) -> bool {
    current() == KernelPath::Auto && device.is_cpu() && dtypes.contains(&dtype)
}

/// Full precision: the dtypes of most kernels.
pub const FULL: &[DType] = &[DType::F32, DType::F64];
/// f32 only: the attention and bf16 GEMM kernels.
pub const F32: &[DType] = &[DType::F32];

/// Whether these operands run the fused kernels with one dtype among all of them.
pub fn fused_same_dtype(operands: &[&Tensor], dtypes: &[DType]) -> bool {
    fused_cpu(operands, dtypes) && operands.windows(2).all(|w| w[0].dtype() == w[1].dtype())
}

/// Whether the fast kernels apply: CPU tensors of f32 or f64 that no backward pass will reach.
pub(crate) fn frozen_cpu(ts: &[&Tensor]) -> bool {
    fused_cpu(ts, FULL) && ts.iter().all(|t| !t.track_op())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_scope_forces_and_restores() {
        let x = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let auto = fused_cpu(&[&x], FULL);
        {
            let _g = force_generic();
            assert!(!fused_cpu(&[&x], FULL));
            {
                let _a = scope(KernelPath::Auto);
                assert!(fused_cpu(&[&x], FULL));
            }
            assert!(!fused_cpu(&[&x], FULL));
        }
        assert_eq!(fused_cpu(&[&x], FULL), auto);
        let h = x.to_dtype(DType::BF16).unwrap();
        let _a = scope(KernelPath::Auto);
        assert!(!fused_cpu(&[&h], FULL));
        assert!(!fused_same_dtype(&[&x, &x.to_dtype(DType::F64).unwrap()], FULL));
    }
}
