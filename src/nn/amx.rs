//! bf16 GEMM on Intel AMX (`tdpbf16ps`: a 16×32 by 32×16 bf16 tile product accumulated into a 16×16 f32 tile),
//! chosen at run time where the CPU has AMX-BF16 and the kernel grants the process its tile state: the
//! autocast linear layers' forward and backward GEMMs on such CPUs (Sapphire Rapids and later Xeons).
//!
//! The f32 operands are rounded to bf16 while they are packed (rows padded to 32 and depth to 32 with zeros; the
//! right-hand side in AMX's pair-interleaved layout), each thread computes 32×32 output blocks as four
//! accumulator tiles over the whole depth, and the f32 accumulators are written out as they are (with the bias
//! added): f32 accumulation and one rounding per operand, as `vdpbf16ps` gives, without rounding the product.
//! No AMX intrinsics are stable in Rust, so the six instructions used are written as inline assembly.

use std::sync::OnceLock;

use candle_core::Result;
use rayon::prelude::*;

use crate::limits::{try_filled, try_uninit};

/// Output rows (and columns) per block: two 16-row tiles each way.
const BLOCK: usize = 32;
/// Depth per tile: 32 bf16 (64 bytes) per tile row.
const DEPTH: usize = 32;

/// Whether this CPU has AMX-BF16 and the kernel let this process use the tile registers (asked once).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var_os("LATTE_RS_NO_AMX").is_some_and(|v| v != "0") {
            return false;
        }
        detect()
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    let has = leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0;
    if !has || !std::is_x86_feature_detected!("avx512bw") || !std::is_x86_feature_detected!("avx512vl") {
        return false;
    }
    // Linux hands out the tile data state (XTILEDATA, feature 18) only on request, process-wide.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes the process's permitted extended state.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN): the rounding of [`super::autocast`].
#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if (bits & 0x7fff_ffff) > 0x7f80_0000 {
        ((bits >> 16) as u16) | 0x0040
    } else {
        rounded
    }
}

fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

/// A strided f32 matrix: element (i, j) at `data[i * rows + j * cols]` (`rows`, `cols` the strides).
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Strided<'_> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row_stride + j * self.col_stride]
    }
}

/// `C = A · B (+ bias per column)`, C (m × n) row-major f32, A (m × k) and B (k × n) strided f32 rounded to bf16.
/// Call only where [`available`].
pub(crate) fn gemm(
    (m, n, k): (usize, usize, usize),
    a: Strided<'_>,
    b: Strided<'_>,
    bias: Option<&[f32]>,
    what: &str,
) -> Result<Vec<f32>> {
    // SAFETY: every band below writes all of its rows' n columns (the blocks cover 0..n).
    let mut c = unsafe { try_uninit(m * n, what)? };
    if m == 0 || n == 0 {
        return Ok(c);
    }
    let (mp, np, kp) = (round_up(m, BLOCK), round_up(n, BLOCK), round_up(k.max(1), DEPTH));
    // A: (mp, kp) row-major bf16, zero padded. Packed in bands of rows, in parallel.
    let mut ap = try_filled(mp * kp, 0u16, "an AMX GEMM's packed left operand")?;
    ap.par_chunks_mut(BLOCK * kp).enumerate().for_each(|(band, rows)| {
        let first = band * BLOCK;
        let live = (rows.len() / kp).min(m.saturating_sub(first));
        // SAFETY: AMX CPUs have AVX-512 F/BW/VL (checked in `available`, the caller's contract).
        unsafe { pack_a_band(rows, kp, a, first, live, k) };
    });
    // B: per 16-column strip, kp/2 rows of 16 (column) × 2 (depth pair) bf16: the tile layout tdpbf16ps reads.
    let strip = kp * 16;
    let mut bp = try_filled((np / 16) * strip, 0u16, "an AMX GEMM's packed right operand")?;
    bp.par_chunks_mut(strip).enumerate().for_each(|(s, out)| {
        let first = s * 16;
        let cols = 16.min(n.saturating_sub(first));
        // SAFETY: as above.
        unsafe { pack_b_strip(out, b, first, cols, k) };
    });
    let (ap, bp) = (&ap[..], &bp[..]);
    c.par_chunks_mut(BLOCK * n).enumerate().for_each(|(band, out)| {
        let mut tile = [0f32; BLOCK * BLOCK];
        let a_band = &ap[band * BLOCK * kp..(band + 1) * BLOCK * kp];
        // SAFETY: `available()` held (the caller's contract), so the CPU has AMX-BF16 and the process may use the
        // tile state; the packed operands cover every tile read (mp × kp and np/16 strips of kp × 16), and the
        // block buffer every tile written.
        unsafe { tile_config() };
        for jb in 0..np / BLOCK {
            let b_strips = &bp[2 * jb * strip..(2 * jb + 2) * strip];
            unsafe { block(a_band, kp, b_strips, strip, &mut tile) };
            let rows = out.len() / n;
            for r in 0..rows {
                let cols = (n - jb * BLOCK).min(BLOCK);
                let dst = &mut out[r * n + jb * BLOCK..r * n + jb * BLOCK + cols];
                let src = &tile[r * BLOCK..r * BLOCK + cols];
                match bias {
                    Some(bias) => {
                        let bias = &bias[jb * BLOCK..jb * BLOCK + cols];
                        for ((d, &s), &bc) in dst.iter_mut().zip(src).zip(bias) {
                            *d = s + bc;
                        }
                    }
                    None => dst.copy_from_slice(src),
                }
            }
        }
        unsafe { tile_release() };
    });
    Ok(c)
}

/// Rows `first..first + live` of A into `rows` (32 × kp, row-major bf16), reading the source in the order its
/// memory runs.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VL.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw,avx512vl"))]
unsafe fn pack_a_band(rows: &mut [u16], kp: usize, a: Strided<'_>, first: usize, live: usize, k: usize) {
    if live == 0 {
        return;
    }
    if a.col_stride == 1 {
        // Rows contiguous in the source.
        for (r, row) in rows.chunks_mut(kp).take(live).enumerate() {
            let src = &a.data[(first + r) * a.row_stride..][..k];
            for (d, &v) in row[..k].iter_mut().zip(src) {
                *d = bf16_bits(v);
            }
        }
    } else if a.row_stride == 1 {
        // Columns contiguous (a transposed operand, e.g. gᵀ): 32×32 blocks, each source segment rounded as it is
        // read (one pass over the source for the whole band), then written transposed.
        let mut tmp = [[0u16; BLOCK]; BLOCK];
        for k0 in (0..k).step_by(BLOCK) {
            let depth = BLOCK.min(k - k0);
            for (i, t) in tmp.iter_mut().take(depth).enumerate() {
                let src = &a.data[first + (k0 + i) * a.col_stride..][..live];
                for (d, &v) in t[..live].iter_mut().zip(src) {
                    *d = bf16_bits(v);
                }
            }
            for r in 0..live {
                let dst = &mut rows[r * kp + k0..r * kp + k0 + depth];
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = tmp[i][r];
                }
            }
        }
    } else {
        for (r, row) in rows.chunks_mut(kp).take(live).enumerate() {
            for (kk, v) in row.iter_mut().take(k).enumerate() {
                *v = bf16_bits(a.at(first + r, kk));
            }
        }
    }
}

/// Columns `first..first + cols` of B into one packed strip (kp/2 rows of 16 columns × 2 depths).
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VL.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw,avx512vl"))]
unsafe fn pack_b_strip(out: &mut [u16], b: Strided<'_>, first: usize, cols: usize, k: usize) {
    if cols == 0 {
        return;
    }
    if b.col_stride == 1 && cols == 16 {
        // Rows of B contiguous: two source rows (a depth pair) interleaved column by column.
        for pair in 0..k / 2 {
            let r0: &[f32; 16] = b.data[2 * pair * b.row_stride + first..][..16].try_into().unwrap();
            let r1: &[f32; 16] = b.data[(2 * pair + 1) * b.row_stride + first..][..16]
                .try_into()
                .unwrap();
            let dst: &mut [u16; 32] = (&mut out[pair * 32..pair * 32 + 32]).try_into().unwrap();
            for c in 0..16 {
                dst[2 * c] = bf16_bits(r0[c]);
                dst[2 * c + 1] = bf16_bits(r1[c]);
            }
        }
        if k % 2 == 1 {
            let kk = k - 1;
            for c in 0..16 {
                out[(kk / 2) * 32 + 2 * c] = bf16_bits(b.data[kk * b.row_stride + first + c]);
            }
        }
    } else if b.row_stride == 1 {
        // Columns of B contiguous (a weight read transposed): a column's depth pairs are adjacent in both.
        for c in 0..cols {
            let src = &b.data[(first + c) * b.col_stride..][..k];
            for (pair, v) in src.chunks(2).enumerate() {
                out[pair * 32 + 2 * c] = bf16_bits(v[0]);
                if let Some(&v1) = v.get(1) {
                    out[pair * 32 + 2 * c + 1] = bf16_bits(v1);
                }
            }
        }
    } else {
        for kk in 0..k {
            for c in 0..cols {
                out[(kk / 2) * 32 + 2 * c + kk % 2] = bf16_bits(b.at(kk, first + c));
            }
        }
    }
}

/// Palette 1, eight tiles of 16 rows × 64 bytes: tmm0–3 the accumulators, tmm4–5 A, tmm6–7 B.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_config() {
    #[repr(C, align(64))]
    struct Config([u8; 64]);
    let mut cfg = Config([0; 64]);
    cfg.0[0] = 1; // palette
    for t in 0..8 {
        cfg.0[16 + 2 * t] = 64; // bytes per row (little-endian u16)
        cfg.0[48 + t] = 16; // rows
    }
    std::arch::asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
}

#[cfg(target_arch = "x86_64")]
unsafe fn tile_release() {
    std::arch::asm!("tilerelease", options(nostack, nomem));
}

/// One 32×32 block of C into `tile` (row-major, 32 columns): rows of `a` (32 × kp, row-major bf16) times two
/// 16-column strips of packed B.
#[cfg(target_arch = "x86_64")]
unsafe fn block(a: &[u16], kp: usize, b: &[u16], strip: usize, tile: &mut [f32; BLOCK * BLOCK]) {
    use std::arch::asm;
    let a_stride = kp * 2; // bytes per A row
    let b_stride = 64usize; // bytes per packed B row (16 columns × 2 depths × 2 bytes)
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    let (a0, b0) = (a.as_ptr(), b.as_ptr());
    for kk in (0..kp).step_by(DEPTH) {
        let a_top = a0.add(kk);
        let a_bottom = a0.add(16 * kp + kk);
        let b_left = b0.add(kk * 16); // kk/2 pair rows of 32 values
        let b_right = b0.add(strip + kk * 16);
        asm!(
            "tileloadd tmm4, [{at} + {as_}*1]",
            "tileloadd tmm5, [{ab} + {as_}*1]",
            "tileloadd tmm6, [{bl} + {bs}*1]",
            "tileloadd tmm7, [{br} + {bs}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            at = in(reg) a_top,
            ab = in(reg) a_bottom,
            bl = in(reg) b_left,
            br = in(reg) b_right,
            as_ = in(reg) a_stride,
            bs = in(reg) b_stride,
            options(nostack, readonly),
        );
    }
    let c = tile.as_mut_ptr();
    let c_stride = BLOCK * 4;
    asm!(
        "tilestored [{c0} + {cs}*1], tmm0",
        "tilestored [{c1} + {cs}*1], tmm1",
        "tilestored [{c2} + {cs}*1], tmm2",
        "tilestored [{c3} + {cs}*1], tmm3",
        c0 = in(reg) c,
        c1 = in(reg) c.add(16),
        c2 = in(reg) c.add(16 * BLOCK),
        c3 = in(reg) c.add(16 * BLOCK + 16),
        cs = in(reg) c_stride,
        options(nostack),
    );
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_config() {}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_release() {}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn block(_: &[u16], _: usize, _: &[u16], _: usize, _: &mut [f32; BLOCK * BLOCK]) {
    unreachable!("AMX is x86_64 only and `available()` is false elsewhere")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounded(v: f32) -> f64 {
        f32::from_bits((bf16_bits(v) as u32) << 16) as f64
    }

    /// Against the f64 product of the bf16-rounded operands, on shapes with every kind of edge (rows, columns
    /// and depth not multiples of the tiles), transposed operands and a deep contraction.
    #[test]
    fn amx_gemm_is_the_product_of_the_rounded_operands() {
        if !available() {
            eprintln!("skipped: no AMX-BF16 here");
            return;
        }
        let mut seed = 1u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for &(m, n, k, transposed) in &[
            (1, 1, 1, false),
            (37, 19, 23, false),
            (64, 288, 96, false),
            (33, 17, 701, true),
            (50, 48, 33, false),
            (96, 40, 4100, true),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            // A transposed: stored (k, m); B stored (n, k) (as a weight, read transposed).
            let (sa, sb) = if transposed {
                (
                    Strided {
                        data: &a,
                        row_stride: 1,
                        col_stride: m,
                    },
                    Strided {
                        data: &b,
                        row_stride: 1,
                        col_stride: k,
                    },
                )
            } else {
                (
                    Strided {
                        data: &a,
                        row_stride: k,
                        col_stride: 1,
                    },
                    Strided {
                        data: &b,
                        row_stride: n,
                        col_stride: 1,
                    },
                )
            };
            let got = gemm((m, n, k), sa, sb, Some(&bias), "test").unwrap();
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|kk| rounded(sa.at(i, kk)) * rounded(sb.at(kk, j)))
                        .sum::<f64>()
                        + bias[j] as f64;
                    let g = got[i * n + j] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * (k as f64).sqrt() + 1e-6 * want.abs(),
                        "{m}x{n}x{k} t={transposed} ({i}, {j}): {g} vs {want}"
                    );
                }
            }
        }
    }
}
