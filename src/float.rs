//! The one trait for code generic over f32 and f64 (CPU kernels, the optimiser's buffers).

use candle_core::{CpuStorage, Layout, Result};

/// f32 or f64, with the arithmetic the crate's CPU kernels need.
pub trait Float:
    candle_core::WithDType
    + Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    /// The largest finite value, as f64.
    const MAX_F64: f64;
    /// `v` rounded to this type.
    fn of(v: f64) -> Self;
    fn from_usize(n: usize) -> Self;
    fn exp(self) -> Self;
    /// e^x in straight-line arithmetic where that is accurate enough (f32: [`crate::fastmath::exp_f32`]),
    /// so that loops calling it vectorise; `exp` elsewhere.
    fn fast_exp(self) -> Self;
    fn sqrt(self) -> Self;
    fn is_finite(self) -> bool;
    /// The values of a CPU storage of this dtype, mutably (None for another dtype).
    fn storage_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
}

macro_rules! float {
    ($t:ty, $variant:ident, $fast_exp:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INF: Self = <$t>::NEG_INFINITY;
            const MAX_F64: f64 = <$t>::MAX as f64;
            #[inline(always)]
            fn of(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn from_usize(n: usize) -> Self {
                n as $t
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn fast_exp(self) -> Self {
                $fast_exp(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn storage_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

float!(f32, F32, crate::fastmath::exp_f32);
float!(f64, F64, f64::exp);

/// The values a contiguous layout covers in a CPU storage's data, or an error naming the op.
pub(crate) fn contiguous<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: operands must be contiguous"),
    }
}

/// The body of a three-operand CPU op, generic over the float type: see [`run_kernel3`].
pub(crate) trait Kernel3 {
    fn run<T: Float + 'static>(&self, a: &[T], b: &[T], c: &[T]) -> Result<Vec<T>>;
}

/// Runs `kernel` on the contiguous values of three CPU operands that are all f32 or all f64: the dtype dispatch
/// of every fused three-operand op's `cpu_fwd` (linear, convolution, norms, modulation, RoPE, the hybrid loss).
pub(crate) fn run_kernel3(
    kernel: &impl Kernel3,
    op: &str,
    (xs, xl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
    (bs, bl): (&CpuStorage, &Layout),
) -> Result<CpuStorage> {
    Ok(match (xs, ws, bs) {
        (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
            CpuStorage::F32(kernel.run(contiguous(x, xl, op)?, contiguous(w, wl, op)?, contiguous(b, bl, op)?)?)
        }
        (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
            CpuStorage::F64(kernel.run(contiguous(x, xl, op)?, contiguous(w, wl, op)?, contiguous(b, bl, op)?)?)
        }
        _ => candle_core::bail!("{op}: operands must all be f32 or all f64"),
    })
}

/// Lanes of [`moments`]'s partial sums: fixed, so that every instruction set adds in the same order and gives the
/// same bits.
const MOMENT_LANES: usize = 16;

/// The sum of `f(v)` over a row in [`MOMENT_LANES`] interleaved partial sums, combined in lane order: independent
/// add chains the compiler keeps in vector registers (a single running sum is one serial chain of dependent adds,
/// latency-bound).
#[inline(always)]
fn lane_sum<T: Float>(row: &[T], f: impl Fn(T) -> T) -> T {
    let mut lanes = [T::ZERO; MOMENT_LANES];
    let mut chunks = row.chunks_exact(MOMENT_LANES);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    let tail = chunks.remainder().iter().fold(T::ZERO, |s, &v| s + f(v));
    lanes.iter().fold(tail, |s, &l| s + l)
}

/// The two sums over i of `f(a[i], b[i], c[i])` (three rows of one length) in [`MOMENT_LANES`] interleaved
/// partial sums each, as [`lane_sum`]: independent add chains in vector registers, the same bits on every
/// instruction set.
#[inline(always)]
pub(crate) fn lane_sums2<T: Float>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> (T, T)) -> (T, T) {
    let (mut s1, mut s2) = ([T::ZERO; MOMENT_LANES], [T::ZERO; MOMENT_LANES]);
    let (mut ac, mut bc, mut cc) = (
        a.chunks_exact(MOMENT_LANES),
        b.chunks_exact(MOMENT_LANES),
        c.chunks_exact(MOMENT_LANES),
    );
    for ((a, b), c) in (&mut ac).zip(&mut bc).zip(&mut cc) {
        for j in 0..MOMENT_LANES {
            let (u, v) = f(a[j], b[j], c[j]);
            s1[j] += u;
            s2[j] += v;
        }
    }
    let (mut t1, mut t2) = (T::ZERO, T::ZERO);
    for ((&a, &b), &c) in ac.remainder().iter().zip(bc.remainder()).zip(cc.remainder()) {
        let (u, v) = f(a, b, c);
        t1 += u;
        t2 += v;
    }
    (s1.iter().fold(t1, |s, &l| s + l), s2.iter().fold(t2, |s, &l| s + l))
}

/// Mean and 1/√(var + eps) of a row (two passes, biased variance as torch's LayerNorm): the statistics of every
/// LayerNorm kernel.
#[inline(always)]
pub(crate) fn moments<T: Float>(row: &[T], eps: T) -> (T, T) {
    let n = T::from_usize(row.len());
    let mean = lane_sum(row, |v| v) / n;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
    (mean, T::ONE / (var + eps).sqrt())
}
