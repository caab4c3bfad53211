//! Elementary functions in straight-line f32 arithmetic, so the loops that call them vectorise.

/// e^x for f32 in straight-line arithmetic (no libm call), so the loops around it vectorise: x = n ln2 + r with
/// |r| <= ln2/2, e^r by its Taylor series to degree 7 (relative error < 1e-8 on that range), 2^n from the exponent
/// bits. Inputs are clamped to [-87, 88], where f32 neither overflows nor goes subnormal.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    // 2^n from the integer in `shifted`'s low mantissa bits (n in [-126, 127]: every `shifted` has the exponent
    // of ROUND, one unit per ulp), all in integer lanes: `n as i32` (a saturating cast) does not vectorise.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    p * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// `out[i] = f(src[i])`, compiled for the widest vectors this CPU has (AVX-512 or AVX2, chosen at run time; `f`
/// must be `#[inline(always)]` straight-line arithmetic for the loop to vectorise). Every path computes the same
/// operations, without FMA contraction, so the results are the same bits.
pub fn map_wide<T: Copy, F: Fn(T) -> T>(out: &mut [T], src: &[T], f: &F) {
    #[inline(always)]
    fn body<T: Copy, F: Fn(T) -> T>(out: &mut [T], src: &[T], f: &F) {
        for (o, &s) in out.iter_mut().zip(src) {
            *o = f(s);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<T: Copy, F: Fn(T) -> T>(out: &mut [T], src: &[T], f: &F) {
            body(out, src, f)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<T: Copy, F: Fn(T) -> T>(out: &mut [T], src: &[T], f: &F) {
            body(out, src, f)
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the instructions the function was compiled for.
            return unsafe { avx512(out, src, f) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { avx2(out, src, f) };
        }
    }
    body(out, src, f)
}

/// Runs `f` compiled for the widest vectors this CPU has (AVX-512 or AVX2, chosen at run time), for kernels whose
/// loops are more than an element map: `f`'s body is inlined into a function built for those instructions, so its
/// loops vectorise at that width. `f` must be a closure marked `#[inline(always)]`: a closure is a function of its
/// own, and one with loops is too large for the compiler to inline unasked, so it stays compiled for the baseline
/// SSE2 (the profile of the modulation kernels showed only xmm registers until they were marked). Rust never contracts `a * b + c` into an FMA nor reorders a float sum, so every
/// path computes the same bits.
#[inline(always)]
pub fn wide<R, F: FnOnce() -> R>(f: F) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<R, F: FnOnce() -> R>(f: F) -> R {
            f()
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R, F: FnOnce() -> R>(f: F) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the instructions the function was compiled for.
            return unsafe { avx512(f) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// `out[i] = f(a[i], b[i])`, compiled as [`map_wide`] is (AVX-512 or AVX2 chosen at run time, the same bits on
/// every path).
pub fn zip_map_wide<T: Copy, F: Fn(T, T) -> T>(out: &mut [T], a: &[T], b: &[T], f: &F) {
    #[inline(always)]
    fn body<T: Copy, F: Fn(T, T) -> T>(out: &mut [T], a: &[T], b: &[T], f: &F) {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<T: Copy, F: Fn(T, T) -> T>(out: &mut [T], a: &[T], b: &[T], f: &F) {
            body(out, a, b, f)
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<T: Copy, F: Fn(T, T) -> T>(out: &mut [T], a: &[T], b: &[T], f: &F) {
            body(out, a, b, f)
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the instructions the function was compiled for.
            return unsafe { avx512(out, a, b, f) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { avx2(out, a, b, f) };
        }
    }
    body(out, a, b, f)
}

/// Lanes of the softmax's partial maxima and sums: fixed, so every instruction set sums in the same order and
/// gives the same bits.
const LANES: usize = 16;

/// `lanes` folded by `op` as a tree (lane i with lane i + w for w = 8, 4, 2, 1): a fixed order the compiler keeps
/// in vector registers, where a running fold over the lanes is a chain of sixteen dependent scalar steps (which
/// dominated the softmax of attention rows of 8 or 16 keys).
#[inline(always)]
fn tree_fold(mut lanes: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            lanes[i] = op(lanes[i], lanes[i + w]);
        }
        w /= 2;
    }
    lanes[0]
}

#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in lane_max.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    for (m, &x) in lane_max.iter_mut().zip(chunks.remainder()) {
        *m = m.max(x);
    }
    let max = tree_fold(lane_max, f32::max);
    let mut lane_sum = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, x) in lane_sum.iter_mut().zip(c) {
            *x = exp_f32(*x - max);
            *s += *x;
        }
    }
    // The last partial chunk as a full vector of lanes (the lanes past the row add zero).
    let rest = chunks.into_remainder();
    let mut tail = [0f32; LANES];
    tail[..rest.len()].copy_from_slice(rest);
    for (i, (s, x)) in lane_sum.iter_mut().zip(tail.iter_mut()).enumerate() {
        let e = exp_f32(*x - max);
        *x = e;
        *s += if i < rest.len() { e } else { 0.0 };
    }
    rest.copy_from_slice(&tail[..rest.len()]);
    let inv = 1.0 / tree_fold(lane_sum, |a, b| a + b);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

#[inline(always)]
fn softmax_rows_generic(values: &mut [f32], len: usize) {
    // Plain loops, not `for_each`: `for_each` is `fold`, a function of its own that the compiler may leave
    // outside the AVX-512 caller, compiled for the baseline SSE2 (the profile showed exactly that).
    for row in values.chunks_exact_mut(len) {
        softmax_row(row);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_rows_avx512(values: &mut [f32], len: usize) {
    softmax_rows_generic(values, len)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_rows_avx2(values: &mut [f32], len: usize) {
    softmax_rows_generic(values, len)
}

/// Softmax of each row of `len` values, in place, compiled for the widest vectors this CPU has (chosen at run
/// time; the arithmetic, and so the result, is the same on every path: no FMA contraction, fixed lane order).
pub fn softmax_rows(values: &mut [f32], len: usize) {
    if len == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the instructions the function was compiled for.
            return unsafe { softmax_rows_avx512(values, len) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { softmax_rows_avx2(values, len) };
        }
    }
    softmax_rows_generic(values, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_wide_gives_the_scalar_loop_s_bits() {
        let src: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let f = |x: f32| exp_f32(x * 0.1) / (1.0 + x * x);
        let mut out = vec![0f32; src.len()];
        map_wide(&mut out, &src, &f);
        let want: Vec<f32> = src.iter().map(|&x| f(x)).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn wide_runs_the_body_once_with_the_scalar_loop_s_bits() {
        // A modulation-like body: per row a running sum (kept in order) and an element map with a broadcast row.
        let (rows, d) = (37usize, 19usize);
        let x: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.0137 - 6.0)
            .collect();
        let scale: Vec<f32> = (0..d).map(|i| i as f32 * 0.05 - 0.4).collect();
        let body = |out: &mut Vec<f32>| {
            for row in x.chunks(d) {
                let mean = row.iter().fold(0f32, |a, &v| a + v) / d as f32;
                out.extend(row.iter().zip(&scale).map(|(&v, &s)| (v - mean) * (1.0 + s) + s * v));
            }
        };
        let mut plain = Vec::new();
        body(&mut plain);
        let mut calls = 0;
        let mut fast = Vec::new();
        wide(
            #[inline(always)]
            || {
                calls += 1;
                body(&mut fast)
            },
        );
        assert_eq!(calls, 1);
        assert_eq!(
            fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn softmax_rows_is_the_softmax_and_the_same_on_every_path() {
        let mut state = 7u32;
        for &(rows, len) in &[(3usize, 1usize), (5, 15), (4, 16), (7, 33), (2, 256), (1, 1000)] {
            let v: Vec<f32> = (0..rows * len)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1u32 << 24) as f32 * 40.0 - 20.0
                })
                .collect();
            let mut ours = v.clone();
            softmax_rows(&mut ours, len);
            let mut generic = v.clone();
            softmax_rows_generic(&mut generic, len);
            assert_eq!(ours, generic, "dispatch changes no bit ({rows}x{len})");
            for (r, o) in v.chunks(len).zip(ours.chunks(len)) {
                let m = r.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
                let e: Vec<f64> = r.iter().map(|&x| (x as f64 - m).exp()).collect();
                let s: f64 = e.iter().sum();
                for (&p, &want) in o.iter().zip(&e) {
                    assert!(
                        (p as f64 - want / s).abs() <= 1e-6 * (want / s) + 1e-9,
                        "{p} vs {}",
                        want / s
                    );
                }
            }
        }
    }

    /// The integer-lane 2^n gives the bits of the saturating-cast form it replaced, on every input class.
    #[test]
    fn the_vectorisable_exponent_is_the_cast_one() {
        fn cast_form(x: f32) -> f32 {
            const ROUND: f32 = 12_582_912.0;
            let x = x.clamp(-87.0, 88.0);
            let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
            let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
            let mut p = 1.0 / 5040.0;
            for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = p * r + c;
            }
            p * f32::from_bits(((n as i32 + 127) as u32) << 23)
        }
        let mut xs: Vec<f32> = (-200_000..200_000).map(|i| i as f32 * 5e-4).collect();
        xs.extend([
            -1e30,
            -88.5,
            -87.0,
            88.0,
            88.7,
            1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
        ]);
        for x in xs {
            assert_eq!(exp_f32(x).to_bits(), cast_form(x).to_bits(), "{x}");
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in -870..880 {
            let x = i as f32 / 10.0;
            let (ours, exact) = (exp_f32(x) as f64, (x as f64).exp());
            assert!(((ours - exact) / exact).abs() < 3e-7, "exp({x}): {ours} vs {exact}");
        }
    }
}
