//! The CPU plumbing the fused layers share: one GEMM entry over rayon's threads (strided operands, accumulate or
//! overwrite), contiguous views of a custom op's operands, and the f32/f64 dispatch of three-operand ops. Linear,
//! convolution and the bf16 autocast GEMM all sit on it.

use candle_core::{Layout, Result};

use crate::float::Float;
pub(crate) use crate::float::{contiguous, run_kernel3, Kernel3};

/// `dst (m × n) = alpha · dst + beta · lhs (m × k) · rhs (k × n)` (read_dst when alpha ≠ 0), each matrix given by
/// its (row, column) strides, on rayon's threads.
///
/// # Safety
/// Every element reached through the slices' strides must be in bounds.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_into<T: Float + 'static>(
    dims: (usize, usize, usize),
    dst: (&mut [T], usize, usize),
    lhs: (&[T], usize, usize),
    rhs: (&[T], usize, usize),
    alpha: T,
    beta: T,
) {
    let dst = (dst.0.as_mut_ptr(), dst.1, dst.2);
    gemm_raw(dims, dst, lhs, rhs, (alpha, beta), gemm::Parallelism::Rayon(0))
}

/// [`gemm_into`] with the destination as a pointer and the threading chosen by the caller (`Parallelism::None`
/// where the caller already runs one GEMM per thread, on disjoint parts of one destination).
///
/// # Safety
/// Every element reached through the pointer, the slices and their strides must be in bounds, and no other
/// thread may touch the destination's elements meanwhile.
pub(crate) unsafe fn gemm_raw<T: Float + 'static>(
    (m, n, k): (usize, usize, usize),
    dst: (*mut T, usize, usize),
    lhs: (&[T], usize, usize),
    rhs: (&[T], usize, usize),
    (alpha, beta): (T, T),
    parallelism: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0,
        dst.2 as isize,
        dst.1 as isize,
        alpha != T::ZERO,
        lhs.0.as_ptr(),
        lhs.2 as isize,
        lhs.1 as isize,
        rhs.0.as_ptr(),
        rhs.2 as isize,
        rhs.1 as isize,
        alpha,
        beta,
        false,
        false,
        false,
        parallelism,
    );
}

/// The shapes of x (rows, in) and W (out, in).
pub(crate) fn linear_dims(xl: &Layout, wl: &Layout) -> Result<(usize, usize, usize)> {
    let (rows, input) = xl.shape().dims2()?;
    let (out, input2) = wl.shape().dims2()?;
    if input != input2 {
        candle_core::bail!("linear: x {:?} and weight {:?} do not fit", xl.dims(), wl.dims());
    }
    Ok((rows, input, out))
}
