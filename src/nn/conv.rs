//! 2-D convolution (NCHW) for the convolutional networks that run frozen, such as the VAE.
//!
//! On the CPU, when neither the input nor the weight takes part in a backward pass (f32 or f64), the convolution is
//! an im2col + GEMM: per image and per band of output rows, the patch matrix (Cin·kh·kw, band) is gathered row by
//! row — for stride 1 each of its rows is a shifted copy of an input row, so the gather is contiguous copies — and
//! multiplied by the weight (Cout, Cin·kh·kw) straight into the output with the bias prefilled. 1×1 convolutions
//! skip the gather. candle's CPU convolution gathers its tiles one strided element at a time and took three
//! quarters of the VAE's time. Anywhere else (a GPU, half precision, or a graph being recorded for a gradient) the
//! layer is candle's `conv2d` plus a broadcast bias, which is also what the kernel is tested against.
//!
//! The residual sum after a ResNet block's second convolution is taken by [`Conv2d::forward_add`], which starts the
//! GEMM from `residual + bias` instead of adding afterwards. Group normalisation, the VAE's other layer, is in
//! [`super::group_norm`].

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{contiguous, gemm_into, gemm_raw, run_kernel3, Kernel3};
use crate::float::Float;
use crate::limits::{try_filled, try_with_capacity};

/// Floats one band of the patch matrix may hold (1 MiB of f32, so that it is still in the core's cache when the
/// GEMM reads it; measured best of 2^17..2^20 on the SD VAE's decoder): bands of output rows are sized to it.
const BAND_FLOATS: usize = 1 << 18;

/// The patch values one frozen `k`×`k` convolution of `batch` images with `cin` channels into an output of
/// `ho` × `wo` holds at once on `device` in `dtype` (beyond its input and output): the fast path gathers bands of
/// output rows (at least one whole row, `cin·k²·wo` values) on each thread, candle's convolution the whole patch
/// matrix (`batch·cin·k²·ho·wo`). For the memory estimates: a wide input gathers wide rows.
pub fn scratch_elements(
    device: &candle_core::Device,
    dtype: candle_core::DType,
    batch: usize,
    cin: usize,
    k: usize,
    (ho, wo): (usize, usize),
) -> u128 {
    let kk = cin.saturating_mul(k * k);
    if k == 1 {
        return 0;
    }
    if !super::kernels::fused_cpu_for(device, dtype, super::kernels::FULL) {
        return (batch as u128)
            .saturating_mul(kk as u128)
            .saturating_mul(ho as u128)
            .saturating_mul(wo as u128);
    }
    let band_rows = (BAND_FLOATS / kk.saturating_mul(wo).max(1)).clamp(1, ho.max(1));
    let bands = batch.saturating_mul(ho.div_ceil(band_rows));
    let threads = rayon::current_num_threads();
    let buffers = if bands >= 2 * threads { threads } else { 1 };
    (buffers as u128)
        .saturating_mul(kk as u128)
        .saturating_mul(band_rows as u128)
        .saturating_mul(wo as u128)
}

/// A 2-D convolution with square kernel, stride and symmetric zero padding, and a bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// `weight` (Cout, Cin, k, k) and `bias` (Cout,).
    pub fn new(weight: Tensor, bias: Tensor, stride: usize, padding: usize) -> Result<Self> {
        let (cout, _, kh, kw) = weight.dims4()?;
        if kh != kw || bias.dims() != [cout] || stride == 0 {
            candle_core::bail!(
                "conv2d: weight {:?}, bias {:?}, stride {stride} do not make a square convolution",
                weight.dims(),
                bias.dims()
            );
        }
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// The convolution of x (B, Cin, H, W): (B, Cout, Ho, Wo).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if super::kernels::frozen_cpu(&[x, &self.weight, &self.bias]) {
            let op = ConvOp {
                stride: self.stride,
                padding: self.padding,
                up: 1,
                residual: None,
            };
            return x
                .contiguous()?
                .apply_op3_no_bwd(&self.weight.contiguous()?, &self.bias, &op);
        }
        self.reference(x)
    }

    /// The convolution of x upsampled ×`up` by nearest neighbour (diffusers' `Upsample2D`), without
    /// materialising the upsampled input on the fast path.
    pub fn forward_upsampled(&self, x: &Tensor, up: usize) -> Result<Tensor> {
        if up == 0 {
            candle_core::bail!("conv2d: upsampling factor 0");
        }
        if super::kernels::frozen_cpu(&[x, &self.weight, &self.bias]) {
            let op = ConvOp {
                stride: self.stride,
                padding: self.padding,
                up,
                residual: None,
            };
            return x
                .contiguous()?
                .apply_op3_no_bwd(&self.weight.contiguous()?, &self.bias, &op);
        }
        let (_, _, h, w) = x.dims4()?;
        self.reference(&x.upsample_nearest2d(h * up, w * up)?)
    }

    /// `residual + conv(x)`, the residual (B, Cout, Ho, Wo) taken as the GEMM's starting value on the fast path.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if super::kernels::frozen_cpu(&[x, &self.weight, &self.bias, residual]) && residual.dtype() == x.dtype() {
            let op = ConvOp {
                stride: self.stride,
                padding: self.padding,
                up: 1,
                residual: Some(residual.contiguous()?),
            };
            return x
                .contiguous()?
                .apply_op3_no_bwd(&self.weight.contiguous()?, &self.bias, &op);
        }
        residual + self.reference(x)?
    }

    /// candle's convolution plus the broadcast bias: the composition the kernel replaces.
    pub fn reference(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}

struct ConvOp {
    stride: usize,
    padding: usize,
    /// The nearest-neighbour upsampling factor the convolution reads its input through (1: none).
    up: usize,
    /// Added to the output (the GEMM starts from it plus the bias).
    residual: Option<Tensor>,
}

/// The sizes of one convolution.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    cin: usize,
    /// The input's size after the nearest-neighbour upsampling by `up` that the convolution reads through.
    h: usize,
    w: usize,
    up: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Dims {
    fn new(xl: &Layout, wl: &Layout, stride: usize, pad: usize, up: usize) -> Result<Self> {
        let (batch, cin, h, w) = xl.shape().dims4()?;
        let (h, w) = (h * up, w * up);
        let (cout, cin2, k, k2) = wl.shape().dims4()?;
        if cin != cin2 || k != k2 || h + 2 * pad < k || w + 2 * pad < k {
            candle_core::bail!("conv2d: input {:?} and weight {:?} do not fit", xl.dims(), wl.dims());
        }
        let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
        Ok(Self {
            batch,
            cin,
            h,
            w,
            up,
            cout,
            k,
            stride,
            pad,
            ho,
            wo,
        })
    }

    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0 && self.up == 1
    }

    /// Values in one channel of the input as stored (before the upsampling).
    fn src_plane(&self) -> usize {
        self.h * self.w / (self.up * self.up)
    }
}

/// Fills `row` (the band's `rows` output rows from `oy0`) of patch-matrix row (c, i, j) from image plane `x` (H, W).
fn gather_row<T: Float>(row: &mut [T], plane: &[T], d: &Dims, (i, j): (usize, usize), oy0: usize) {
    for (r, out) in row.chunks_mut(d.wo).enumerate() {
        let iy = ((oy0 + r) * d.stride + i) as isize - d.pad as isize;
        if iy < 0 || iy >= d.h as isize {
            out.fill(T::ZERO);
            continue;
        }
        let (src_y, src_w) = (iy as usize / d.up, d.w / d.up);
        let src = &plane[src_y * src_w..(src_y + 1) * src_w];
        if d.stride == 1 {
            // ix = ox + j - pad must lie in [0, W): ox in [pad - j, W + pad - j).
            let lo = d.pad.saturating_sub(j).min(d.wo);
            let hi = (d.w + d.pad).saturating_sub(j).clamp(lo, d.wo);
            out[..lo].fill(T::ZERO);
            out[hi..].fill(T::ZERO);
            if hi > lo {
                let start = lo + j - d.pad;
                upsampled_copy(&mut out[lo..hi], src, start, d.up);
            }
        } else {
            for (ox, o) in out.iter_mut().enumerate() {
                let ix = (ox * d.stride + j) as isize - d.pad as isize;
                *o = if ix >= 0 && (ix as usize) < d.w {
                    src[ix as usize / d.up]
                } else {
                    T::ZERO
                };
            }
        }
    }
}

/// `out[o] = src[(start + o) / up]`: a run of a nearest-upsampled row, as contiguous copies (up = 1) or each
/// source value written `up` times.
fn upsampled_copy<T: Float>(out: &mut [T], src: &[T], start: usize, up: usize) {
    if up == 1 {
        out.copy_from_slice(&src[start..start + out.len()]);
        return;
    }
    // The partial run of the first source value, then whole runs, then the partial last one.
    let head = ((up - start % up) % up).min(out.len());
    let (first, rest) = out.split_at_mut(head);
    first.fill(src[start / up]);
    let s0 = start.div_ceil(up);
    let whole = rest.len() / up;
    let mut runs = rest.chunks_exact_mut(up);
    for (run, &v) in (&mut runs).zip(&src[s0..]) {
        run.fill(v);
    }
    let tail = runs.into_remainder();
    if !tail.is_empty() {
        tail.fill(src[s0 + whole]);
    }
}

/// A pointer that may cross to rayon's threads: each writes a disjoint part of what it points to.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: the users write disjoint elements only (see conv_fwd).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer `n` elements on (a method, so closures capture the whole Send wrapper).
    fn offset(self, n: usize) -> *mut T {
        // SAFETY: callers stay within the allocation.
        unsafe { self.0.add(n) }
    }
}

/// The patch matrix (Cin·k·k, rows·Wo) of the band of `rows` output rows from `oy0` of one image.
fn gather_band<T: Float>(col: &mut [T], image: &[T], d: &Dims, oy0: usize, parallel: bool) {
    let width = col.len() / (d.cin * d.k * d.k);
    let plane = d.src_plane();
    let fill = |(r, row): (usize, &mut [T])| {
        let (c, ij) = (r / (d.k * d.k), r % (d.k * d.k));
        gather_row(row, &image[c * plane..(c + 1) * plane], d, (ij / d.k, ij % d.k), oy0);
    };
    if parallel {
        col.par_chunks_mut(width).enumerate().for_each(fill);
    } else {
        col.chunks_mut(width).enumerate().for_each(fill);
    }
}

/// out[:, band] += W · col for one band: `out` points at the band's first output row in channel 0 (row stride
/// Ho·Wo between channels).
///
/// # Safety
/// `out` must point into an output of Cout planes of Ho·Wo values with at least `rows` rows left in each, and no
/// other thread may touch those rows meanwhile.
unsafe fn band_gemm<T: Float + 'static>(col: &[T], w: &[T], out: *mut T, d: &Dims, rows: usize, parallel: bool) {
    let kk = d.cin * d.k * d.k;
    let width = rows * d.wo;
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: W is Cout × kk and the band's patch matrix kk × width, both contiguous; the caller vouches for out.
    unsafe {
        gemm_raw(
            (d.cout, width, kk),
            (out, d.ho * d.wo, 1),
            (w, kk, 1),
            (col, width, 1),
            (T::ONE, T::ONE),
            parallelism,
        )
    }
}

fn conv_fwd<T: Float + 'static>(x: &[T], w: &[T], b: &[T], residual: Option<&[T]>, d: Dims) -> Result<Vec<T>> {
    let (plane, out_plane) = (d.src_plane(), d.ho * d.wo);
    let kk = d.cin * d.k * d.k;
    let mut y = match residual {
        Some(r) => {
            let mut y = try_with_capacity(r.len(), OUTPUT)?;
            y.extend_from_slice(r);
            y
        }
        None => try_filled(d.batch * d.cout * out_plane, T::ZERO, OUTPUT)?,
    };
    y.par_chunks_mut(out_plane).enumerate().for_each(|(i, p)| {
        let bc = b[i % d.cout];
        p.iter_mut().for_each(|v| *v += bc);
    });
    let band_rows = (BAND_FLOATS / (kk * d.wo).max(1)).clamp(1, d.ho);
    let bands: Vec<(usize, usize, usize)> = (0..d.batch)
        .flat_map(|n| {
            (0..d.ho)
                .step_by(band_rows)
                .map(move |oy0| (n, oy0, band_rows.min(d.ho - oy0)))
        })
        .collect();
    if d.pointwise() {
        for n in 0..d.batch {
            let image = &x[n * d.cin * plane..(n + 1) * d.cin * plane];
            let out = &mut y[n * d.cout * out_plane..(n + 1) * d.cout * out_plane];
            // SAFETY: out is Cout × HW, W Cout × Cin and the image Cin × HW, all contiguous.
            unsafe {
                gemm_into(
                    (d.cout, out_plane, d.cin),
                    (out, out_plane, 1),
                    (w, d.cin, 1),
                    (image, plane, 1),
                    T::ONE,
                    T::ONE,
                )
            };
        }
    } else if bands.len() >= 2 * rayon::current_num_threads() {
        // Enough bands to keep every thread busy: one band per thread at a time, each gathered and multiplied on
        // its thread (a serial GEMM into its own output rows), instead of a fork-join of every thread for each
        // band's gather and again for its GEMM.
        let out = SendPtr(y.as_mut_ptr());
        bands
            .par_iter()
            .try_for_each_init(
                || try_filled(kk * band_rows * d.wo, T::ZERO, PATCHES).ok(),
                |col, &(n, oy0, rows)| {
                    let col = &mut col.as_mut().ok_or(())?[..kk * rows * d.wo];
                    gather_band(col, &x[n * d.cin * plane..(n + 1) * d.cin * plane], &d, oy0, false);
                    // SAFETY: as below; the bands' output rows are disjoint, so each is written by one thread only.
                    unsafe { band_gemm(col, w, out.offset(n * d.cout * out_plane + oy0 * d.wo), &d, rows, false) };
                    Ok(())
                },
            )
            .map_err(|()| {
                crate::limits::allocation_refused((kk * band_rows * d.wo * std::mem::size_of::<T>()) as u128, PATCHES)
            })?;
    } else {
        let mut col = try_filled(kk * band_rows * d.wo, T::ZERO, PATCHES)?;
        for &(n, oy0, rows) in &bands {
            let col = &mut col[..kk * rows * d.wo];
            gather_band(col, &x[n * d.cin * plane..(n + 1) * d.cin * plane], &d, oy0, true);
            let out = &mut y[n * d.cout * out_plane + oy0 * d.wo..];
            // SAFETY: as in band_gemm; `out` starts at the band's first output row of channel 0.
            unsafe { band_gemm(col, w, out.as_mut_ptr(), &d, rows, true) };
        }
    }
    Ok(y)
}

/// The buffers a convolution allocates, for memory errors.
const OUTPUT: &str = "a convolution's output";
const PATCHES: &str = "a convolution's band of patch rows";

/// The residual's values, contiguous, as `T`.
fn residual_slice<'a, T: Float>(
    residual: Option<(&'a candle_core::Storage, &Layout)>,
    op: &str,
) -> Result<Option<&'a [T]>> {
    match residual {
        Some((candle_core::Storage::Cpu(s), l)) => Ok(Some(contiguous(s.as_slice::<T>()?, l, op)?)),
        Some(_) => candle_core::bail!("{op}: the residual must be on the CPU"),
        None => Ok(None),
    }
}

/// One convolution's sizes and its residual's storage.
struct ConvKernel<'a> {
    d: Dims,
    residual: Option<(&'a candle_core::Storage, &'a Layout)>,
    op: &'a str,
}

impl Kernel3 for ConvKernel<'_> {
    fn run<T: Float + 'static>(&self, x: &[T], w: &[T], b: &[T]) -> Result<Vec<T>> {
        conv_fwd(x, w, b, residual_slice(self.residual, self.op)?, self.d)
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::new(xl, wl, self.stride, self.padding, self.up)?;
        let n = self.name();
        let residual = match &self.residual {
            Some(r) if r.dims() != [d.batch, d.cout, d.ho, d.wo] => {
                candle_core::bail!("conv2d: residual {:?} is not the output's shape", r.dims())
            }
            Some(r) => Some(r.storage_and_layout()),
            None => None,
        };
        let residual = residual.as_ref().map(|(s, l)| (&**s, *l));
        let y = run_kernel3(&ConvKernel { d, residual, op: n }, n, (xs, xl), (ws, wl), (bs, bl))?;
        Ok((y, Shape::from_dims(&[d.batch, d.cout, d.ho, d.wo])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn the_patch_buffers_of_wide_rows_are_counted() {
        let cpu = Device::Cpu;
        // At least one whole output row of patches per buffer: Cin·9·Wo values, however few rows.
        let one_row = 64 * 9 * (1 << 20);
        let wide = scratch_elements(&cpu, DType::F32, 1, 64, 3, (2, 1 << 20));
        assert!(wide >= one_row, "{wide}");
        // Square images: bands of about BAND_FLOATS values per thread.
        let threads = rayon::current_num_threads() as u128;
        let square = scratch_elements(&cpu, DType::F32, 1, 64, 3, (512, 512));
        assert!(square <= threads * (BAND_FLOATS as u128).max(64 * 9 * 512), "{square}");
        // candle's convolution (another dtype or device) gathers every patch at once; 1×1 gathers none.
        assert_eq!(scratch_elements(&cpu, DType::BF16, 2, 64, 3, (8, 8)), 2 * 64 * 9 * 64);
        assert_eq!(scratch_elements(&cpu, DType::F32, 2, 64, 1, (8, 8)), 0);
    }

    #[test]
    fn im2col_kernel_matches_candle_conv2d() {
        let dev = Device::Cpu;
        // (batch, cin, h, w, cout, k, stride, padding), odd sizes included.
        let cases = [
            (2, 3, 9, 7, 5, 3, 1, 1),
            (1, 4, 8, 8, 6, 3, 2, 0),
            (3, 5, 11, 6, 4, 3, 2, 1),
            (2, 7, 5, 9, 3, 1, 1, 0),
            (1, 3, 6, 6, 2, 1, 2, 0),
            (1, 2, 5, 5, 3, 5, 1, 2),
            (2, 6, 13, 4, 7, 3, 1, 0),
            (1, 2, 3, 3, 2, 3, 1, 3),
            // Several bands of output rows per image (Cin·k²·Wo large), with a short last band: the band-parallel
            // path when there are at least twice as many bands as threads.
            (2, 64, 66, 61, 5, 3, 1, 1),
            (3, 48, 130, 129, 3, 3, 2, 1),
        ];
        for dtype in [DType::F32, DType::F64] {
            for &(b, cin, h, w, cout, k, s, p) in &cases {
                let x = Tensor::randn(0f32, 1., (b, cin, h, w), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let wt = Tensor::randn(0f32, 1., (cout, cin, k, k), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let bias = Tensor::randn(0f32, 1., cout, &dev).unwrap().to_dtype(dtype).unwrap();
                let conv = Conv2d::new(wt, bias, s, p).unwrap();
                let fast = conv.forward(&x).unwrap();
                let want = conv.reference(&x).unwrap();
                assert_eq!(fast.dims(), want.dims(), "case {:?}", (b, cin, h, w, cout, k, s, p));
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                let err = crate::test_util::max_rel_diff(&fast, &want);
                assert!(
                    err < tol,
                    "case {:?} {dtype:?}: rel err {err}",
                    (b, cin, h, w, cout, k, s, p)
                );
            }
        }
    }

    #[test]
    fn upsampled_copy_is_the_nearest_upsampled_run() {
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        for up in 1..=4 {
            for start in 0..(src.len() * up) {
                for len in 0..=(src.len() * up - start) {
                    let mut out = vec![-1f32; len];
                    upsampled_copy(&mut out, &src, start, up);
                    let want: Vec<f32> = (0..len).map(|o| src[(start + o) / up]).collect();
                    assert_eq!(out, want, "up {up}, start {start}, len {len}");
                }
            }
        }
    }

    #[test]
    fn upsampling_conv_matches_upsample_then_conv() {
        let dev = Device::Cpu;
        for &(h, w, k, s, p, up) in &[
            (4, 5, 3, 1, 1, 2),
            (3, 3, 3, 1, 0, 3),
            (5, 2, 3, 2, 1, 2),
            (4, 4, 1, 1, 0, 2),
            (5, 7, 5, 1, 2, 3),
            (6, 9, 3, 1, 2, 2),
        ] {
            let x = Tensor::randn(0f32, 1., (2, 3, h, w), &dev).unwrap();
            let conv = Conv2d::new(
                Tensor::randn(0f32, 1., (4, 3, k, k), &dev).unwrap(),
                Tensor::randn(0f32, 1., 4, &dev).unwrap(),
                s,
                p,
            )
            .unwrap();
            let want = conv.reference(&x.upsample_nearest2d(h * up, w * up).unwrap()).unwrap();
            let got = conv.forward_upsampled(&x, up).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(
                crate::test_util::max_rel_diff(&got, &want) < 1e-5,
                "{:?}",
                (h, w, k, s, p, up)
            );
        }
    }

    #[test]
    fn residual_conv_matches_the_sum() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 7, 6), &dev).unwrap();
        let r = Tensor::randn(0f32, 1., (2, 4, 7, 6), &dev).unwrap();
        let conv = Conv2d::new(
            Tensor::randn(0f32, 1., (4, 3, 3, 3), &dev).unwrap(),
            Tensor::randn(0f32, 1., 4, &dev).unwrap(),
            1,
            1,
        )
        .unwrap();
        let want = (&r + conv.reference(&x).unwrap()).unwrap();
        assert!(crate::test_util::max_rel_diff(&conv.forward_add(&x, &r).unwrap(), &want) < 1e-5);
        assert!(
            conv.forward_add(&x, &r.narrow(3, 0, 5).unwrap()).is_err(),
            "a residual of another shape"
        );
    }

    #[test]
    fn a_recorded_graph_takes_the_differentiable_path() {
        let dev = Device::Cpu;
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1., (1, 2, 5, 5), &dev).unwrap()).unwrap();
        let conv = Conv2d::new(
            Tensor::randn(0f32, 1., (3, 2, 3, 3), &dev).unwrap(),
            Tensor::zeros(3, DType::F32, &dev).unwrap(),
            1,
            1,
        )
        .unwrap();
        let y = conv.forward(x.as_tensor()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).expect("the input receives a gradient");
        assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }
}
